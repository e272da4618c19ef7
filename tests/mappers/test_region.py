"""The region's facts (``mappers.region``): one contract each, for mappers, settlement and hub."""

from decimal import Decimal

import pytest

from mappers import region


@pytest.mark.parametrize("code, prefix", [
    ("310000", "31"), ("320100", "3201"), ("310110", "310110"), ("330400", "3304"), ("000000", ""),
    ("310100", "3101"),
])
def test_area_prefix(code, prefix):
    assert region.area_prefix(code) == prefix


@pytest.mark.parametrize("value, rounded", [
    ("0.225", "0.23"), ("0.235", "0.24"), ("1.6665", "1.67"), ("9.999", "10.00"), ("3091.515", "3091.52"),
    ("2.004", "2.00"), ("-0.001", "0.00"), ("12", "12.00"),
])
def test_money_rounds_half_up(value, rounded):
    result = region.round_money(Decimal(value))
    assert str(result) == rounded


@pytest.mark.parametrize("value, text", [("18.6", "18.60"), ("0.005", "0.01"), ("-0.001", "0.00"), (12, "12.00")])
def test_money_is_written_with_two_places_half_up(value, text):
    assert region.money_text(Decimal(value) if isinstance(value, str) else value) == text


def test_money_never_passes_through_a_float():
    with pytest.raises(TypeError):
        region.money_text(18.6)


@pytest.mark.parametrize("code, province", [
    ("ZJ", "ZJ"), ("330421", "ZJ"), ("310000", "SH"), ("H31010100001", "SH"), ("H34010400001", "AH"),
    ("320509", "JS"), ("110000", None), ("000000", None), ("", None), ("XY", None), ("H", None),
])
def test_province_of_a_province_area_or_hospital_code(code, province):
    assert region.province_of(code) == province


def test_the_provinces_agree_with_their_area_codes_and_names():
    assert region.PROVINCES == tuple(region.PROVINCE_ADMDVS) == tuple(region.PROVINCE_NAMES)
    assert all(region.full_name(code) == region.PROVINCE_NAMES[p] for p, code in region.PROVINCE_ADMDVS.items())
