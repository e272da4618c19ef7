"""The demo's shipped data: the copies of fixtures/ stay equal to them, a missing file is named,
today's visit template still maps, and a hub without the demo says so instead of a traceback."""

from __future__ import annotations

import shutil
import sys
from datetime import datetime

import pytest

from hub import cli
from mappers import shanghai_hl7v2
from mappers.region import CST
from tests.support.common import FIXTURES
from yrdhub_demo import shipped, story

DATA = shipped.data_root()


def shipped_files() -> list[str]:
    root = shipped.data_root()
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_every_copy_equals_its_fixture():
    copies = [name for name in shipped_files() if name != shipped.TODAY_VISIT]
    assert set(copies) == {shipped.PERSONS, *(u.name for u in shipped.UPLOADS)}
    drifted = [name for name in copies if shipped.read(name) != (FIXTURES / name).read_bytes()]
    assert drifted == [], f"copy these from fixtures/ to yrdhub_demo/data/: {drifted}"


def test_nothing_missing_when_installed():
    assert shipped.missing() == []
    assert shipped.require() == shipped.data_root()


def test_a_missing_file_is_named_with_where_it_was_looked_for(tmp_path):
    shutil.copytree(shipped.data_root(), tmp_path / "data")
    (tmp_path / "data" / "ah" / "visits_gbk.csv").unlink()
    (tmp_path / "data" / "persons.json").unlink()
    assert shipped.missing(tmp_path / "data") == ["persons.json", "ah/visits_gbk.csv"]
    with pytest.raises(shipped.MissingData) as caught:
        shipped.require(tmp_path / "data")
    assert "persons.json, ah/visits_gbk.csv not found in" in str(caught.value)
    assert str(tmp_path / "data") in str(caught.value)


def test_todays_visit_maps_to_an_encounter_of_today_at_qingpu():
    result = shanghai_hl7v2.map_upload(story.todays_visit(), story.QINGPU)
    assert result.rejected == []
    [record] = result.records
    [encounter] = [r for r in record.resources if r["resourceType"] == "Encounter"]
    assert encounter["period"]["start"][:10] == datetime.now(CST).date().isoformat()
    assert story.LISI[3] in str(record.patient)


def test_without_the_demo_package_the_cli_says_what_is_missing(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "yrdhub_demo", None)  # as in the hub's image: not installed
    assert cli.main(["demo", "--check"]) == 2
    assert cli.main(["simulate"]) == 2
    err = capsys.readouterr().err
    assert err.count("package yrdhub_demo missing") == 2 and "Traceback" not in err
