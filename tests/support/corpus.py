"""The valid corpus of the four mappers: every fixture and every peer message, mapped as its
sender would send it (shared by the tests that check everything the mappers make)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from mappers import anhui_csv, er7, jiangsu_cda, shanghai_hl7v2, zhejiang_json
from mappers.common import Record
from mappers.errors import UnreadableUpload
from tests.support.common import FIXTURES, PEERS

_CUSTODIAN_RE = re.compile(rb"<representedCustodianOrganization>\s*<id [^>]*extension=\"(H\d+)\"")


def _files(*folders: Path, pattern: str = "*") -> list[Path]:
    return sorted(p for folder in folders for p in folder.rglob(pattern)
                  if p.is_file() and not p.name.startswith("LICENSE"))


def _zj(path: Path) -> list[Record]:
    body = path.read_bytes()
    return zhejiang_json.map_upload(body, json.loads(body)["jgdm"]).records


def _js(path: Path) -> list[Record]:
    body = path.read_bytes()
    custodian = _CUSTODIAN_RE.search(body)
    try:
        return jiangsu_cda.map_upload(body, custodian.group(1).decode() if custodian else "").records
    except UnreadableUpload:  # the XML attacks and the C-CDA peers (not WS/T 500) map to nothing
        return []


def _sh(path: Path) -> list[Record]:
    """Each message as sent by the hospital its MSH-4 names (found by a first mapping)."""
    records = []
    for message in er7.split_messages(path.read_bytes()):
        sender = shanghai_hl7v2.map_message(message, "").sending_facility
        records += shanghai_hl7v2.map_message(message, sender).result.records
    return records


def _ah(path: Path) -> list[Record]:
    return anhui_csv.map_upload(path.read_bytes(), "H34010400001", path.name).records


# channel -> (the mapper of one file, the files)
CHANNELS: dict[str, tuple[Callable[[Path], list[Record]], list[Path]]] = {
    "zj": (_zj, _files(FIXTURES / "zj", pattern="*.json")),
    "js": (_js, _files(FIXTURES / "js", PEERS / "cda")),
    "sh": (_sh, _files(FIXTURES / "sh", PEERS / "hl7v2")),
    "ah": (_ah, _files(FIXTURES / "ah")),
}


def resources(records: list[Record]) -> list[dict]:
    """Every resource of the records, each record's patient first."""
    return [resource for record in records for resource in [record.patient, *record.resources]]
