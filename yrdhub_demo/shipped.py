"""The demo's data, shipped inside this package (``yrdhub_demo/data``) and found with
``importlib.resources``, so that the demo runs from any folder after a plain ``pip install .``.

Every file but one is a byte-for-byte copy of the checkout's ``fixtures/`` (the tests' source):
``tests/demo/test_shipped.py`` fails when a copy drifts from its fixture. The one that is not,
``sh/today_visit.hl7``, is the template of a visit made at start (``$now``, ``$today``): it
makes a Shanghai hospital treat 李四 today, which the sharing rules ask of a lookup.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

PERSONS = "persons.json"
TODAY_VISIT = "sh/today_visit.hl7"
CONTENT_TYPES = {"zj": "application/json", "sh": "x-application/hl7-v2+er7", "js": "application/xml",
                 "ah": "text/csv"}


@dataclass(frozen=True)
class Upload:
    channel: str  # the /ingest/{channel} it is posted to
    name: str  # path under the data folder, as under fixtures/
    sender: str  # the hospital that sends it (the hub refuses one naming another sender)

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.channel]


# What the demo loads, in order (an Anhui patients file before the visits and labs that name them).
UPLOADS = [Upload(*row) for row in [
    ("zj", "zj/upload_basic.json", "H33042100015"),
    ("zj", "zj/upload_two_visits.json", "H33020300004"),
    ("zj", "zj/upload_other_hospital.json", "H33010600001"),
    ("sh", "sh/adt_a04.hl7", "H31010100001"),
    ("sh", "sh/adt_a01.hl7", "H31010400007"),
    ("sh", "sh/oru_r01_lab.hl7", "H31010100001"),
    ("sh", "sh/oru_r01_rad.hl7", "H31010100001"),
    ("js", "js/outpatient.xml", "H32050900012"),
    ("js", "js/lab_report.xml", "H32010600001"),
    ("js", "js/imaging_report.xml", "H32050800005"),
    ("ah", "ah/patients_gbk.csv", "H34010400001"),
    ("ah", "ah/visits_gbk.csv", "H34010400001"),
    ("ah", "ah/labs_gbk.csv", "H34010400001"),
]]
NEEDED = (PERSONS, TODAY_VISIT, *(u.name for u in UPLOADS))


class MissingData(Exception):
    """Some of the demo's files are not where the package keeps them (the message names them)."""


def data_root() -> Traversable:
    return resources.files(__package__) / "data"


def missing(root: Traversable | None = None) -> list[str]:
    """The needed files that ``root`` (default: the installed data folder) lacks."""
    root = root or data_root()
    return [name for name in NEEDED if not root.joinpath(*name.split("/")).is_file()]


def require(root: Traversable | None = None) -> Traversable:
    """The data folder, once every needed file is there; else MissingData naming each missing
    file and the folder it was looked for in."""
    root = root or data_root()
    lost = missing(root)
    if lost:
        raise MissingData(f"the demo's data is incomplete: {', '.join(lost)} not found in {root} "
                          "(reinstall yrdhub from its source: pip install .)")
    return root


def read(name: str, root: Traversable | None = None) -> bytes:
    return (root or data_root()).joinpath(*name.split("/")).read_bytes()
