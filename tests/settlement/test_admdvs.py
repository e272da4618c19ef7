"""Area codes are checked against the GB/T 2260 table (mappers.region): a settlement's
insuplc_admdvs (422 with a reason), a transfer's to_admdvs, the hospitals' areas."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mappers.region import division, is_current
from settlement import rules
from settlement.reference import default_reference
from settlement.transfer import check_request, region_places
from settlement.errors import TransferError

WORLD = Path("/work/shared/world")


def example_request(**fields) -> dict:
    """The settlement request of hub-interface.md, with fields replaced."""
    text = (WORLD / "hub-interface.md").read_text("utf-8")
    body = json.loads(text.split("`POST /settlement/presettle`", 1)[1].split("```json\n", 1)[1].split("```", 1)[0])
    return {**body, **fields}


def test_the_example_request_parses():
    assert rules.SettleRequest.from_json(example_request()).insuplc_admdvs == "330421"


@pytest.mark.parametrize("code, reason", [
    ("339999", "339999: not a GB/T 2260 area code"),       # accepted before: its prefix is Zhejiang's
    ("341400", "341400: retired in 2011 (巢湖市)"),
    ("330103", "330103: retired in 2021 (下城区)"),
    ("110105", "not an area code of the region"),          # current, but Beijing's
    ("3304", "not an area code of the region"),
])
def test_insuplc_admdvs_must_be_a_current_code_of_the_region(code, reason):
    with pytest.raises(rules.RequestInvalid) as info:
        rules.SettleRequest.from_json(example_request(insuplc_admdvs=code))
    assert (info.value.code, info.value.location) == ("UNKNOWN_INSUPLC", "insuplc_admdvs")
    assert reason in str(info.value)


@pytest.mark.parametrize("code", ["330421", "320509", "310118", "340104", "330000", "320500"])
def test_current_codes_of_the_region_are_insured_places(code):
    assert rules.SettleRequest.from_json(example_request(insuplc_admdvs=code)).insuplc_admdvs == code


@pytest.mark.parametrize("to, code", [("339999", "UNKNOWN_PLACE"), ("330103", "UNKNOWN_PLACE"),
                                      ("110105", "UNKNOWN_PLACE"), ("330000", "BAD_PLACE")])
def test_transfer_destination_must_be_a_current_code(to, code):
    with pytest.raises(TransferError) as info:
        check_request("310118", to, "310")
    assert info.value.code == code
    if code == "UNKNOWN_PLACE" and to.startswith("33"):
        assert to in info.value.message and "GB/T 2260" in info.value.message


def test_transfer_to_a_current_district_of_another_province_passes():
    check_request("310118", "330106", "310")


def test_every_hospital_area_and_the_demonstration_zone_are_current():
    world = {line.split(",")[2] for line in (WORLD / "data" / "hospitals.csv").read_text("utf-8").splitlines()[1:]}
    assert world == {h.admdvs for h in default_reference().hospitals.values()}
    for code in world | rules.DEMONSTRATION_ZONE:
        assert is_current(code), code
    assert [division(c).name for c in ("310118", "320509", "330421")] == ["青浦区", "吴江区", "嘉善县"]


def test_places_offered_for_a_transfer_are_named_by_the_table():
    names = {p["admdvs"]: p["name"] for p in region_places()}
    assert names["330421"] == "浙江省嘉兴市嘉善县" and names["310118"] == "上海市青浦区"
    assert all(is_current(code) for code in names)
