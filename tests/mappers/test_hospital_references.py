"""Every reference to a hospital in everything the four mappers make, from every fixture and every
peer message, carries the hospital's code as ``identifier`` beside its literal reference
(world/README.md "Identifiers": an identifier's assigner, an Encounter's serviceProvider, a
report's performer, ...)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from mappers import anhui_csv, jiangsu_cda, shanghai_hl7v2, zhejiang_json
from mappers.common import Record, UnreadableUpload, validate
from tests.support.common import FIXTURES, PEERS
from tests.support.references import hospital_code_problems, organization_references

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
    for message in shanghai_hl7v2.split_messages(path.read_bytes()):
        sender = shanghai_hl7v2.map_message(message, "").sending_facility
        records += shanghai_hl7v2.map_message(message, sender).result.records
    return records


def _ah(path: Path) -> list[Record]:
    return anhui_csv.map_upload(path.read_bytes(), "H34010400001", path.name).records


CHANNELS = {
    "zj": (_zj, _files(FIXTURES / "zj", pattern="*.json")),
    "js": (_js, _files(FIXTURES / "js", PEERS / "cda")),
    "sh": (_sh, _files(FIXTURES / "sh", PEERS / "hl7v2")),
    "ah": (_ah, _files(FIXTURES / "ah")),
}


def _resources(records: list[Record]) -> list[dict]:
    return [resource for record in records for resource in [record.patient, *record.resources]]


@pytest.mark.parametrize("channel", CHANNELS)
def test_every_hospital_reference_carries_the_hospital_code(channel):
    mapper, paths = CHANNELS[channel]
    assert paths
    problems, seen = [], Counter()
    for path in paths:
        for resource in _resources(mapper(path)):
            problems += [f"{path.name}: {p}" for p in hospital_code_problems(resource)]
            seen.update(p.rsplit(".", 1)[-1].split("[")[0]
                        for p, _ in organization_references(resource))
            validate(resource)
    assert problems == []
    # Not vacuous: every channel's output names hospitals in each of these places.
    assert {"assigner", "serviceProvider", "performer"} <= set(seen), seen


def test_the_check_finds_a_reference_without_the_code():
    encounter = {"resourceType": "Encounter",
                 "serviceProvider": {"reference": "Organization/x", "display": "某医院"},
                 "identifier": [{"value": "MZ1", "assigner": {"reference": "Organization/y"}}]}
    assert [p.split(":")[0] for p in hospital_code_problems(encounter)] == [
        "Encounter.serviceProvider", "Encounter.identifier[0].assigner"]
