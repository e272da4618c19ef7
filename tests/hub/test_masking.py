"""Masking of addresses down to the district, against the GB/T 2260 table: unit cases and
properties over random addresses made of table names and arbitrary streets."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from hub.masking import mask_address, mask_patient
from mappers.address import fhir_address
from mappers.region import table


@pytest.mark.parametrize("text, masked", [
    ("江苏省南京市鼓楼区中山路1号", "江苏省南京市鼓楼区"),
    ("浙江省台州市路桥区路桥街道银安街8号", "浙江省台州市路桥区"),
    ("浙江省宁波市镇海区招宝山街道", "浙江省宁波市镇海区"),
    ("安徽省合肥市长江西路小区3栋402室", "安徽省合肥市"),  # was 长江西路小区: a leak
    ("上海市黄浦区南京东路1号", "上海市黄浦区"),
    ("嘉善县罗星街道施家南路9号", "浙江省嘉兴市嘉善县"),
    ("文三路小区5幢", None),
])
def test_mask_address_keeps_table_names_down_to_the_district(text, masked):
    got = mask_address(fhir_address(text, use="home", postalCode="230000"))
    assert got.get("text") == masked
    assert "line" not in got and "postalCode" not in got and got["use"] == "home"


def test_a_stored_compound_district_is_not_shown():
    # An address stored by the old Anhui mapper: the compound as its district.
    stored = {"text": "安徽省合肥市长江西路小区3栋402室", "state": "安徽省", "city": "合肥市",
              "district": "长江西路小区"}
    assert mask_address(stored) == {"state": "安徽省", "city": "合肥市", "text": "安徽省合肥市"}
    # No text: the fields alone, still only what the table names.
    assert mask_address({"city": "合肥市", "district": "长江西路小区", "line": ["3栋402室"]}) == {
        "state": "安徽省", "city": "合肥市", "text": "安徽省合肥市"}
    assert mask_address({"state": "Anhui", "line": ["3 Changjiang Rd"], "country": "CN"}) == {"country": "CN"}


def test_mask_patient_masks_every_address():
    patient = {"resourceType": "Patient", "address": [fhir_address("南京市鼓楼区中山路1号"),
                                                      fhir_address("长江西路小区3栋")]}
    assert mask_patient(patient)["address"] == [
        {"state": "江苏省", "city": "南京市", "district": "鼓楼区", "text": "江苏省南京市鼓楼区"}, {}]


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------

_COUNTIES = sorted((d for d in table().divisions if d.level == "county" and d.current), key=lambda d: d.code)
_COUNTY_NAMES = sorted({d.name for d in _COUNTIES})
_MUNICIPALITIES = {"110000", "120000", "310000", "500000"}
# Streets, compounds, communities, rooms: characters district names end with, and whole names.
_FRAGMENTS = ["小区", "社区", "新村", "路", "街", "街道", "镇", "乡", "村", "楼", "区", "县", "市", "号",
              "栋", "幢", "室", "弄", "长江西", "鼓楼", "路桥", "镇海", "中山", "南京", "花园", "1", "28",
              "402"]
_streets = st.lists(st.one_of(st.sampled_from(_FRAGMENTS), st.sampled_from(_COUNTY_NAMES),
                              st.text(alphabet="东西南北中山水花园新华人民解放建设0123456789",
                                      min_size=1, max_size=4)),
                    min_size=1, max_size=6).map("".join)


def _chain(d):
    """(province, city or None, district) of a current county-level division."""
    parent = table().parent(d)
    return (table().parent(parent), parent, d) if parent.level == "city" else (parent, None, d)


def _written(chain, form: str) -> str:
    province, city, district = chain
    parts = {"full": (province, city, district), "city": (city or province, district),
             "bare": (district,)}[form]
    return "".join(p.name for p in parts if p)


def _extends_a_longer_name(district, street: str) -> bool:
    """The street continues the district's name into another one (县 + 城 ...): the text then
    really names that other district, so it is no case of the property."""
    text = district.name + street
    return any(n != district.name and n.startswith(district.name) and text.startswith(n)
               for n in _COUNTY_NAMES)


def _unique(district) -> bool:
    return len({d.code for d in _COUNTIES if d.name == district.name}) == 1


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(_COUNTIES), st.sampled_from(["full", "city", "bare"]), _streets)
def test_masked_address_is_the_table_names_and_nothing_of_the_street(district, form, street):
    assume(not _extends_a_longer_name(district, street))
    assume(form != "bare" or _unique(district))
    chain = _chain(district)
    province, city, _ = chain
    masked = mask_address(fhir_address(_written(chain, form) + street, use="home"))
    expected = "".join(d.name for d in chain if d)
    # A municipality is its own city; a county-level city under a province (石河子市) has none.
    shown_city = city or (province if province.code in _MUNICIPALITIES else None)
    assert masked == {"use": "home", "state": province.name, "district": district.name, "text": expected,
                      **({"city": shown_city.name} if shown_city else {})}
    shown = "\n".join(masked.values())
    pieces = {street[i:j] for i in range(len(street)) for j in range(i + 1, len(street) + 1)}
    assert not [p for p in pieces if p not in expected and p in shown]


@settings(max_examples=300, deadline=None)
@given(st.one_of(_streets, st.text(max_size=30),
                 st.lists(st.sampled_from(sorted({d.name for d in table().divisions}) + _FRAGMENTS),
                          max_size=5).map("".join)))
def test_whatever_the_text_the_masked_form_is_a_composition_of_table_names(text):
    masked = mask_address({"text": text, "district": text[:6], "line": [text]})
    names = {level: {d.name for d in table().divisions if d.level == level} for level in ("province", "city", "county")}
    state, city, district = (masked.get(k) for k in ("state", "city", "district"))
    assert state is None or state in names["province"]
    assert city is None or city in names["city"] or city == state
    assert district is None or district in names["county"]
    assert masked.get("text", "") == "".join(p for p in (state, city if city != state else None, district) if p)
    assert set(masked) <= {"state", "city", "district", "text"}
