"""Shared mapper helpers: resident IDs (checked against the README's own algorithm), numbers,
times, lab values."""

from datetime import date, datetime

import pytest
from hypothesis import given, strategies as st

from mappers.common import lab_value, parse_decimal, parse_when, reference_range
from mappers.errors import InvalidValue
from mappers.region import CST, check_character, mask_resident_id, normalize_resident_id

WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def readme_check(first17: str) -> str:
    """world/README.md: ISO 7064 MOD 11-2, the sum mod 11 indexes '10X98765432'."""
    return "10X98765432"[sum(int(d) * w for d, w in zip(first17, WEIGHTS)) % 11]


@pytest.mark.parametrize("number", ["11010519491231002X", "440524188001010014", "33042119850412002X"])
def test_readme_vectors_are_valid(number):
    assert normalize_resident_id(number) == number


@given(st.text("0123456789", min_size=17, max_size=17))
def test_check_character_agrees_with_the_readme(first17):
    assert check_character(first17) == readme_check(first17)


def test_fifteen_digit_form_is_widened_with_a_computed_check():
    widened = normalize_resident_id("440524800101001")
    assert widened[:17] == "44052419800101001"
    assert widened[17] == readme_check(widened[:17])


@pytest.mark.parametrize("raw,expected", [
    ("11010519491231002x", "11010519491231002X"),
    ("１１０１０５１９４９１２３１００２Ｘ", "11010519491231002X"),
    (" 11010519491231002X ", "11010519491231002X"),
])
def test_folding(raw, expected):
    assert normalize_resident_id(raw) == expected


@pytest.mark.parametrize("raw,reason", [
    ("11010519491231002Y", "digits"),
    ("110105194912310021", "check character"),
    ("3.40104E+17", "characters"),
    ("110105194913310025", "birth date"),
    ("", "empty"),
])
def test_bad_numbers_are_refused_never_repaired(raw, reason):
    with pytest.raises(InvalidValue) as exc:
        normalize_resident_id(raw)
    assert reason in str(exc.value)
    assert "110105" not in str(exc.value)


def test_mask():
    assert mask_resident_id("33042119850412002X") == "3304**********002X"


@pytest.mark.parametrize("raw,expected", [("６.８", "6.8"), (6.8, "6.8"), (" 12 ", "12"), ("", None)])
def test_decimal(raw, expected):
    value = parse_decimal(raw)
    assert (str(value) if value is not None else None) == expected


def test_times():
    assert parse_when("2024-03-15 09:12:00") == datetime(2024, 3, 15, 9, 12, tzinfo=CST)
    assert parse_when("2024-03-15 09:12") == datetime(2024, 3, 15, 9, 12, tzinfo=CST)
    assert parse_when("20240315103000") == datetime(2024, 3, 15, 10, 30, tzinfo=CST)
    assert parse_when("20240315") == date(2024, 3, 15)
    with pytest.raises(InvalidValue):
        parse_when("2024-02-30")
    with pytest.raises(InvalidValue):
        parse_when("yesterday")


def test_lab_values():
    assert lab_value("<0.5", "mg/L") == {"valueQuantity": {"value": 0.5, "comparator": "<", "unit": "mg/L"}}
    assert lab_value("阴性")["valueCodeableConcept"]["coding"][0]["code"] == "260385009"
    assert lab_value("见报告") == {"valueString": "见报告"}
    assert reference_range("3.9-6.1")[0]["low"]["value"] == 3.9
    assert reference_range("<5.2")[0]["high"]["value"] == 5.2


@given(st.lists(st.text(max_size=20), min_size=1, max_size=4))
def test_make_id_is_uuid5(parts):
    import uuid

    from mappers.common import _NAMESPACE, make_id
    assert make_id(*parts) == str(uuid.uuid5(_NAMESPACE, "|".join(parts)))


@pytest.mark.parametrize("text", [
    "33042119850412002X", "id 33042119850412013857300000 (ID glued to a phone)",
    "33042119850412002X13857300000", "urn%3Aoid%3A2.16.156.10011.1.3%7C33042119850412002X",
    "440524800101001"])
def test_scrub_leaves_no_run_that_could_be_an_id(text):
    import re

    from mappers.region import scrub
    assert not re.search(r"\d{15}|\d{17}[Xx]", scrub(text))


def test_scrub_leaves_codes_and_times():
    from mappers.region import scrub
    assert scrub("H33042100015 at 20240315093000") == "H33042100015 at 20240315093000"
