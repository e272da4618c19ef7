"""The settlement rules (world/settlement-rules.md), checked by hand-calculated tables.

Each row's comment is its hand calculation. Unless a row says otherwise: the hospital is
H31011800012 (青浦区中心医院, 310118, SH, level 2), the visit 2024-03-15 09:30 +08:00, one line of
amoxicillin XJ01CAA040A001 (SH: category A) 2 x 18.60 = 37.20, ZJ 2024 employees (310): deductible
800, annual cap 10000, ratio L1 0.80 / L2 0.75 / L3 0.70, and the person's totals of 2024 are
800.00 deductible paid (met) and 3200.00 fund paid.

People (fictional, valid resident ID numbers):
  JIASHAN  33042119850412002X  嘉善 330421 (demonstration zone), the 1101 example of insurer-api.md
  HANGZHOU 330106199208080021  杭州西湖 330106, not in the zone
  XUHUI    310104197903150022  上海徐汇 310104, born 1979-03-15 (SH bands 0-44 / 45+)
  QINGPU   310118198503150050  上海青浦 310118 (zone)
  HEFEI    340104200001010047  合肥蜀山 340104
  NANJING  32010619900707001X  南京鼓楼 320106
  LEAP     310104198002290065  上海徐汇, born 29 February 1980
"""

from __future__ import annotations

import shutil
from dataclasses import fields
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from settlement import rules
from settlement.reference import CatalogueItem, default_reference, load_reference
from settlement.errors import (REQUEST_ERRORS, PersonInfoInvalid, ReferenceDataError, RequestInvalid)
from mappers.region import province_of
from settlement.rules import REFUSALS, FeeLine, PersonInfo, Refusal, SettleRequest, Split, compute_split

REF = default_reference()
WORLD_DATA = Path("/work/shared/world/data")
PACKAGE_DATA = Path(rules.__file__).parent / "data"

AMOX = "XJ01CAA040A001"  # 阿莫西林胶囊: A in every province
SPLIT_FIELDS = ("medfee_sumamt", "fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt",
                "inscp_scp_amt", "act_pay_dedc", "hifp_pay", "fund_pay_sumamt", "acct_pay",
                "psn_cash_pay")


# ---------------------------------------------------------------------------------------------
# Builders of the two JSON inputs
# ---------------------------------------------------------------------------------------------


def line(code: str = AMOX, cnt: str = "2", pric: str = "18.60", amount: str = "37.20") -> dict:
    return {"med_list_codg": code, "cnt": cnt, "pric": pric, "det_item_fee_sumamt": amount}


def request(**fields: Any) -> dict:
    """The hub-interface example request, with fields replaced."""
    body = {"request_key": "K-20240315-000123", "fixmedins_code": "H31011800012",
            "mdtrt_id": "MZ2024031500077", "mdtrt_cert_type": "02",
            "mdtrt_cert_no": "33042119850412002X", "insuplc_admdvs": "330421", "insutype": "310",
            "visit_type": "outpatient", "visit_time": "2024-03-15T09:30:00+08:00",
            "use_personal_account": True, "lines": [line()]}
    body.update(fields)
    return body


def coverage(place: str, insutype: str = "310", stas: str = "1", balc: str | None = "1234.56",
             since: str = "2010-07-01") -> dict:
    entry = {"insutype": insutype, "psn_type": "11", "insuplc_admdvs": place,
             "psn_insu_stas": stas, "psn_insu_date": since}
    if balc is not None:
        entry["balc"] = balc
    return entry


def filing(kind: str, area: str, begn: str = "2024-01-01", end: str = "2024-06-30") -> dict:
    return {"type": kind, "mdtrtarea_admvs": area, "begndate": begn, "enddate": end}


def accum(dedc: str = "800.00", fund: str = "3200.00", year: int = 2024, version: int = 17) -> dict:
    return {"year": year, "dedc_accu": dedc, "fund_pay_accu": fund, "version": version}


PEOPLE = {  # certno, name, birth date, insured place
    "JIASHAN": ("33042119850412002X", "李四", "1985-04-12", "330421"),
    "HANGZHOU": ("330106199208080021", "王芳", "1992-08-08", "330106"),
    "XUHUI": ("310104197903150022", "陈静", "1979-03-15", "310104"),
    "QINGPU": ("310118198503150050", "周强", "1985-03-15", "310118"),
    "HEFEI": ("340104200001010047", "吴敏", "2000-01-01", "340104"),
    "NANJING": ("32010619900707001X", "赵磊", "1990-07-07", "320106"),
    "LEAP": ("310104198002290065", "孙丽", "1980-02-29", "310104"),
}


def person(who: str = "JIASHAN", insuinfo: list | None = None, totals: dict | None = None,
           filings: list | None = None, brdy: str | None = None, balc: str = "1234.56") -> dict:
    """A 1101 output. Default: JIASHAN exactly as insurer-api.md shows (filing 310000 temporary)."""
    certno, name, birth, place = PEOPLE[who]
    return {"baseinfo": {"psn_no": "P" + certno[:13], "psn_name": name, "gend": "2",
                         "brdy": brdy or birth, "certno": certno, "psn_cert_type": "01"},
            "insuinfo": insuinfo if insuinfo is not None else [coverage(place, balc=balc)],
            "accum": totals or accum(),
            "filing": filings if filings is not None else [filing("temporary", "310000")]}


def split(*amounts: str) -> dict[str, str]:
    """The ten amounts in the interface's order."""
    assert len(amounts) == 10
    return dict(zip(SPLIT_FIELDS, amounts))


def settle(req: dict, psn: dict) -> Split | Refusal:
    return compute_split(SettleRequest.from_json(req), PersonInfo.from_json(psn), REF)


# ---------------------------------------------------------------------------------------------
# The published example
# ---------------------------------------------------------------------------------------------

HUB_EXAMPLE_SPLIT = {"medfee_sumamt": "37.20", "fulamt_ownpay_amt": "0.00", "overlmt_selfpay": "0.00",
                     "preselfpay_amt": "0.00", "inscp_scp_amt": "37.20", "act_pay_dedc": "0.00",
                     "hifp_pay": "27.90", "fund_pay_sumamt": "27.90", "acct_pay": "9.30",
                     "psn_cash_pay": "0.00"}


def test_hub_interface_example_gives_exactly_the_published_split():
    # Qingpu and Jiashan are both in the zone: no filing needed, ratio 0.75 unadjusted (the
    # person's temporary filing, -0.10, does not get a say: rule 3 decides before rule 4).
    # Deductible met (800 of 800); 37.20 x 0.75 = 27.90; share 9.30 <= balance 1234.56.
    result = settle(request(), person())
    assert isinstance(result, Split)
    assert result.as_json() == HUB_EXAMPLE_SPLIT
    assert list(result.as_json()) == list(HUB_EXAMPLE_SPLIT)  # the interface's order


# ---------------------------------------------------------------------------------------------
# compute_split: settled rows
# ---------------------------------------------------------------------------------------------

TEMP_SH = filing("temporary", "310000")  # 2024-01-01 .. 2024-06-30
SIX_LINES = [
    line("001109000010000", "1", "100.00", "100.00"),  # SH C 特需门诊诊查费
    line("XX99ZZZ999Z999", "2", "5.50", "11.00"),  # not in SH's catalogue
    line("001102000020000", "1", "30.00", "30.00"),  # SH A, cap 25.00
    line("C03100120010000", "3", "18.50", "55.50"),  # SH B 0.20, cap 15.00
    line("XR05CBA010A001", "1", "12.25", "12.25"),  # SH B 0.10 (ZJ would say C)
    line("XL01XEA010A001", "1", "4500.00", "4500.00"),  # SH B 0.10, cap 4800.00 above the price
]

SETTLED = [
    pytest.param(
        request(fixmedins_code="H32050900012", insuplc_admdvs="310118", mdtrt_cert_no=PEOPLE["QINGPU"][0]),
        person("QINGPU", totals=accum("1500.00", "0.00"), filings=[], balc="10.00"),
        # zone both ends (吴江 320509, 青浦 310118): adj 0. SH policy 2024 310, age 39 on
        # 2024-03-15 (born 1985-03-15, the birthday itself) -> band 0-44, L2 0.60; deductible
        # 1500 met. JS catalogue: amoxicillin A. 37.20 x 0.60 = 22.32; share 14.88;
        # account 10.00 -> cash 4.88
        split("37.20", "0.00", "0.00", "0.00", "37.20", "0.00", "22.32", "22.32", "10.00", "4.88"),
        id="zone-wujiang-hospital-qingpu-insured"),
    pytest.param(
        request(insuplc_admdvs="330106", use_personal_account=False, mdtrt_cert_no=PEOPLE["HANGZHOU"][0]),
        person("HANGZHOU", filings=[TEMP_SH]),
        # temporary filing 310000 covers 310118: 0.75 - 0.10 = 0.65; 37.20 x 0.65 = 24.18;
        # share 13.02, account not asked for -> cash 13.02
        split("37.20", "0.00", "0.00", "0.00", "37.20", "0.00", "24.18", "24.18", "0.00", "13.02"),
        id="temporary-filing-minus-ten-points-no-account"),
    pytest.param(
        request(insuplc_admdvs="330106"),
        person("HANGZHOU", filings=[TEMP_SH, filing("resident", "310100")]),
        # two filings cover (310100 -> prefix 3101 begins 310118): resident (0) is more
        # favourable than temporary (-0.10): 37.20 x 0.75 = 27.90; account pays 9.30
        split("37.20", "0.00", "0.00", "0.00", "37.20", "0.00", "27.90", "27.90", "9.30", "0.00"),
        id="resident-filing-beats-temporary"),
    pytest.param(
        request(insuplc_admdvs="330106", fixmedins_code="H31010400007"),
        person("HANGZHOU", filings=[filing("temporary", "310104")]),
        # 徐汇 hospital 310104, level 3: filing 310104 covers it; 0.70 - 0.10 = 0.60;
        # 37.20 x 0.60 = 22.32; share 14.88 from the account
        split("37.20", "0.00", "0.00", "0.00", "37.20", "0.00", "22.32", "22.32", "14.88", "0.00"),
        id="district-filing-at-its-district-level-3"),
    pytest.param(
        request(insuplc_admdvs="330106"),
        person("HANGZHOU", filings=[filing("temporary", "310000", end="2024-03-15")]),
        # the filing ends on the visit day (both ends included): 0.65 -> 24.18; account 13.02
        split("37.20", "0.00", "0.00", "0.00", "37.20", "0.00", "24.18", "24.18", "13.02", "0.00"),
        id="filing-ending-on-the-visit-day"),
    pytest.param(
        request(insuplc_admdvs="330106"),
        person("HANGZHOU", filings=[filing("temporary", "310000", begn="2024-03-15", end="")]),
        # begins on the visit day, open end: 0.65 -> 24.18; account 13.02
        split("37.20", "0.00", "0.00", "0.00", "37.20", "0.00", "24.18", "24.18", "13.02", "0.00"),
        id="filing-beginning-on-the-visit-day-open-end"),
    pytest.param(
        request(insuplc_admdvs="330106"),
        person("HANGZHOU", filings=[filing("resident", "310000", begn="2019-05-01", end="")]),
        # resident since 2019, never ending: 0.75 -> 27.90; account 9.30
        split("37.20", "0.00", "0.00", "0.00", "37.20", "0.00", "27.90", "27.90", "9.30", "0.00"),
        id="resident-filing-open-ended"),
    pytest.param(
        request(insuplc_admdvs="330106", visit_type="emergency"),
        person("HANGZHOU", filings=[]),
        # no filing but 急诊: 0.75 - 0.10 = 0.65 -> 24.18; account 13.02
        split("37.20", "0.00", "0.00", "0.00", "37.20", "0.00", "24.18", "24.18", "13.02", "0.00"),
        id="emergency-without-filing"),
    pytest.param(
        request(insuplc_admdvs="330106", visit_type="emergency"),
        person("HANGZHOU", filings=[filing("resident", "310000")]),
        # a filing applies (rule 4) before the emergency rule (5): resident, 0 -> 27.90
        split("37.20", "0.00", "0.00", "0.00", "37.20", "0.00", "27.90", "27.90", "9.30", "0.00"),
        id="emergency-with-resident-filing-filing-decides"),
    pytest.param(
        request(fixmedins_code="H31010100001"),
        person("JIASHAN"),
        # zone person at 黄浦 (not in the zone): the temporary filing 310000 is needed and
        # covers: L3 0.70 - 0.10 = 0.60 -> 22.32; account 14.88
        split("37.20", "0.00", "0.00", "0.00", "37.20", "0.00", "22.32", "22.32", "14.88", "0.00"),
        id="zone-person-outside-zone-with-filing"),
    pytest.param(
        request(fixmedins_code="H31010100001", insuplc_admdvs="310104", mdtrt_cert_no=PEOPLE["XUHUI"][0],
                lines=[line(), line("002103010010000", "1", "600.00", "600.00")]),
        person("XUHUI", totals=accum("1000.00", "0.00"), filings=[], balc="300.00"),
        # same province (黄浦 310101 / 徐汇 310104): no filing, adj 0. SH 2024 310, age 45 on
        # his birthday -> band 45+, L3 0.60, deductible 1500 of which 1000 paid -> 500 left.
        # MR (SH B 0.10): pre 60.00, in scope 540.00. In scope 37.20 + 540.00 = 577.20,
        # medfee 637.20. dedc min(577.20, 500) = 500.00; fund (577.20 - 500) x 0.60 = 46.32;
        # share 637.20 - 46.32 = 590.88; account 300.00; cash 290.88
        split("637.20", "0.00", "0.00", "60.00", "577.20", "500.00", "46.32", "46.32", "300.00", "290.88"),
        id="same-province-band-45-deductible-partly-met"),
    pytest.param(
        request(fixmedins_code="H31010100001", insuplc_admdvs="310104", mdtrt_cert_no=PEOPLE["XUHUI"][0],
                visit_time="2024-03-14T09:30:00+08:00",
                lines=[line(), line("002103010010000", "1", "600.00", "600.00")]),
        person("XUHUI", totals=accum("1000.00", "0.00"), filings=[], balc="300.00"),
        # the day before his 45th birthday: age 44, band 0-44, L3 0.50: 77.20 x 0.50 = 38.60;
        # share 598.60; account 300.00; cash 298.60
        split("637.20", "0.00", "0.00", "60.00", "577.20", "500.00", "38.60", "38.60", "300.00", "298.60"),
        id="same-province-band-0-44-day-before-birthday"),
    pytest.param(
        request(fixmedins_code="H31010100001", insuplc_admdvs="340104", mdtrt_cert_no=PEOPLE["HEFEI"][0],
                use_personal_account=False),
        person("HEFEI", totals=accum("0.00", "0.00"), filings=[filing("resident", "310000")]),
        # AH 2024 310: deductible 1200, nothing paid: dedc = min(37.20, 1200) = 37.20;
        # fund (37.20 - 37.20) x 0.65 = 0.00; cash 37.20
        split("37.20", "0.00", "0.00", "0.00", "37.20", "37.20", "0.00", "0.00", "0.00", "37.20"),
        id="deductible-takes-everything"),
    pytest.param(
        request(insuplc_admdvs="320106", mdtrt_cert_no=PEOPLE["NANJING"][0]),
        person("NANJING", totals=accum("1000.00", "4990.00"), filings=[filing("resident", "310118")],
               balc="20.00"),
        # JS 2024 310: cap 5000 - 4990 paid = 10.00 left; filing 310118 (whole code) covers;
        # deductible 1000 met; 37.20 x 0.75 = 27.90 -> capped 10.00; share 27.20;
        # account 20.00; cash 7.20
        split("37.20", "0.00", "0.00", "0.00", "37.20", "0.00", "10.00", "10.00", "20.00", "7.20"),
        id="annual-cap-nearly-used"),
    pytest.param(
        request(insuplc_admdvs="320106", mdtrt_cert_no=PEOPLE["NANJING"][0]),
        person("NANJING", totals=accum("1000.00", "5200.00"), filings=[filing("resident", "310118")],
               balc="1000.00"),
        # fund paid 5200 > cap 5000 (a void elsewhere, say): max(0, -200) = 0 -> fund 0.00;
        # share 37.20 from the account
        split("37.20", "0.00", "0.00", "0.00", "37.20", "0.00", "0.00", "0.00", "37.20", "0.00"),
        id="annual-cap-exceeded"),
    pytest.param(
        request(insutype="390"),
        person(insuinfo=[coverage("330421", insutype="390", balc="500.00")], totals=accum("400.00", "0.00")),
        # ZJ 2024 residents (390): deductible 400 met, L2 0.50: 37.20 x 0.50 = 18.60;
        # residents have no personal account: account 0.00 though asked and a balance shown
        split("37.20", "0.00", "0.00", "0.00", "37.20", "0.00", "18.60", "18.60", "0.00", "18.60"),
        id="residents-390-never-use-an-account"),
    pytest.param(
        request(), person(balc="-50.00"),
        # overdrawn account: max(0, -50.00) = 0 -> account 0.00, cash 9.30
        split("37.20", "0.00", "0.00", "0.00", "37.20", "0.00", "27.90", "27.90", "0.00", "9.30"),
        id="overdrawn-account-pays-nothing"),
    pytest.param(
        request(), person(balc="5.00"),
        # account 5.00 < share 9.30: account 5.00, cash 4.30
        split("37.20", "0.00", "0.00", "0.00", "37.20", "0.00", "27.90", "27.90", "5.00", "4.30"),
        id="account-smaller-than-share"),
    pytest.param(
        request(),
        person(insuinfo=[coverage("330421", balc=None)]),
        # no balc in the 1101 entry: balance 0 -> account 0.00, cash 9.30
        split("37.20", "0.00", "0.00", "0.00", "37.20", "0.00", "27.90", "27.90", "0.00", "9.30"),
        id="no-balance-given"),
    pytest.param(
        request(lines=SIX_LINES), person(),
        # SH catalogue, line by line:
        #   特需 C 100.00 -> fulamt 100.00;  unlisted 2 x 5.50 -> fulamt 11.00
        #   副主任 A, cap 25 < 30: overlmt (30 - 25) x 1 = 5.00, in scope 25.00
        #   输液器 B 0.20, cap 15 < 18.50: amount 55.50, overlmt 3.50 x 3 = 10.50, base 45.00,
        #       pre 45.00 x 0.20 = 9.00, in scope 36.00
        #   氨溴索 B 0.10: pre 12.25 x 0.10 = 1.225 -> 1.23 (half up), in scope 11.02
        #   伊马替尼 B 0.10, cap 4800 above 4500: overlmt 0, pre 450.00, in scope 4050.00
        # medfee 4708.75 = fulamt 111.00 + overlmt 15.50 + pre 460.23 + in scope 4122.02.
        # fund 4122.02 x 0.75 = 3091.515 -> 3091.52 (under 6800 left); share 1617.23;
        # account 1234.56 (all of it); cash 382.67
        split("4708.75", "111.00", "15.50", "460.23", "4122.02", "0.00", "3091.52", "3091.52",
              "1234.56", "382.67"),
        id="catalogue-categories-caps-and-rounding"),
    pytest.param(
        request(lines=[line("002501040010000", "1", "0.30", "0.30")]), person(),
        # 0.30 x 0.75 = 0.225 -> 0.23 half up (half even would give 0.22); share 0.07
        split("0.30", "0.00", "0.00", "0.00", "0.30", "0.00", "0.23", "0.23", "0.07", "0.00"),
        id="fund-rounds-half-up"),
    pytest.param(
        request(lines=[line("001102000020000", "0.3333", "30.00", "10.00")]), person(),
        # amount 0.3333 x 30.00 = 9.999 -> 10.00; cap 25: overlmt 5 x 0.3333 = 1.6665 -> 1.67;
        # in scope 10.00 - 1.67 = 8.33 (A); fund 8.33 x 0.75 = 6.2475 -> 6.25; share 3.75
        split("10.00", "0.00", "1.67", "0.00", "8.33", "0.00", "6.25", "6.25", "3.75", "0.00"),
        id="four-place-quantity-under-a-cap"),
    pytest.param(
        request(fixmedins_code="H33042100015", insuplc_admdvs="310104", mdtrt_cert_no=PEOPLE["XUHUI"][0],
                use_personal_account=False,
                lines=[line("XR05CBA010A001", "1", "12.25", "12.25"), line()]),
        person("XUHUI", totals=accum("1500.00", "0.00"), filings=[filing("resident", "330000")]),
        # treated in 嘉善 (ZJ, L2) though insured in 徐汇 (not zone-to-zone): filing 330000 covers.
        # ZJ's catalogue: 氨溴索 is C there -> fulamt 12.25 (SH would say B); amoxicillin A.
        # SH's policy: age 45, band 45+, L2 0.70; deductible 1500 met: 37.20 x 0.70 = 26.04;
        # medfee 49.45; share 23.41, cash (no account asked)
        split("49.45", "12.25", "0.00", "0.00", "37.20", "0.00", "26.04", "26.04", "0.00", "23.41"),
        id="treatment-place-catalogue-insured-place-policy"),
    pytest.param(
        request(fixmedins_code="H31010100001", insuplc_admdvs="310104", mdtrt_cert_no=PEOPLE["LEAP"][0],
                visit_time="2025-02-28T10:00:00+08:00"),
        person("LEAP", totals=accum("1500.00", "0.00", year=2025), filings=[], balc="0.00"),
        # born 1980-02-29; on 2025-02-28: 45 - 1 = 44 (the birthday falls on 1 March) ->
        # SH 2025 band 0-44, L3 0.50: 37.20 x 0.50 = 18.60; no balance: cash 18.60
        split("37.20", "0.00", "0.00", "0.00", "37.20", "0.00", "18.60", "18.60", "0.00", "18.60"),
        id="leap-day-birthday-not-yet-on-28-february"),
    pytest.param(
        request(fixmedins_code="H31010100001", insuplc_admdvs="310104", mdtrt_cert_no=PEOPLE["LEAP"][0],
                visit_time="2025-03-01T10:00:00+08:00"),
        person("LEAP", totals=accum("1500.00", "0.00", year=2025), filings=[], balc="0.00"),
        # on 2025-03-01: 45 -> band 45+, L3 0.60: 37.20 x 0.60 = 22.32; cash 14.88
        split("37.20", "0.00", "0.00", "0.00", "37.20", "0.00", "22.32", "22.32", "0.00", "14.88"),
        id="leap-day-birthday-on-1-march"),
    pytest.param(
        request(insuplc_admdvs="330106", visit_time="2024-06-30T15:59:59Z"),
        person("HANGZHOU", filings=[TEMP_SH]),
        # 15:59:59 UTC is 23:59:59 +08:00 on 30 June: the filing still covers: 0.65 -> 24.18
        split("37.20", "0.00", "0.00", "0.00", "37.20", "0.00", "24.18", "24.18", "13.02", "0.00"),
        id="utc-time-still-30-june-in-cst"),
    pytest.param(
        request(insuplc_admdvs="330106", visit_time="2024-06-30T23:59:59"),
        person("HANGZHOU", filings=[TEMP_SH]),
        # no offset means +08:00: 30 June, covered: 24.18
        split("37.20", "0.00", "0.00", "0.00", "37.20", "0.00", "24.18", "24.18", "13.02", "0.00"),
        id="time-without-offset-is-cst"),
    pytest.param(
        request(visit_time="2024-12-31T16:30:00Z"),
        person(totals=accum("0.00", "0.00", year=2025)),
        # 16:30 UTC on 31 Dec is 00:30 +08:00 on 1 Jan 2025: ZJ 2025 policy, deductible 700,
        # none paid: dedc 37.20, fund 0.00, account 37.20
        split("37.20", "0.00", "0.00", "0.00", "37.20", "37.20", "0.00", "0.00", "37.20", "0.00"),
        id="utc-new-years-eve-is-next-year-in-cst"),
    pytest.param(
        request(),
        person(insuinfo=[coverage("330421", stas="4", since="2001-01-01", balc="0.00"), coverage("330421")]),
        # an old terminated entry beside the active one: the active one is used -> the example
        split(*HUB_EXAMPLE_SPLIT.values()),
        id="active-entry-preferred-over-old-terminated-one"),
]


@pytest.mark.parametrize("req, psn, expected", SETTLED)
def test_settled_splits(req, psn, expected):
    result = settle(req, psn)
    assert isinstance(result, Split), result
    assert result.as_json() == expected


# ---------------------------------------------------------------------------------------------
# compute_split: refusals
# ---------------------------------------------------------------------------------------------

REFUSED = [
    pytest.param(request(), person(insuinfo=[coverage("330421", stas="2")]), "NOT_ACTIVE",
                 id="suspended"),
    pytest.param(request(fixmedins_code="H31010100001", insuplc_admdvs="310104"),
                 person("XUHUI", insuinfo=[coverage("310104", stas="4")], filings=[]), "NOT_ACTIVE",
                 id="terminated-even-in-own-province"),
    pytest.param(request(insutype="390"), person(), "NOT_ACTIVE", id="no-entry-of-that-insutype"),
    pytest.param(request(), person(insuinfo=[coverage("330421", since="2024-04-01")]), "NOT_ACTIVE",
                 id="coverage-begins-after-the-visit"),
    pytest.param(request(insuplc_admdvs="330106"), person("HANGZHOU", insuinfo=[coverage("330106", stas="2")],
                                                          filings=[]),
                 "NOT_ACTIVE", id="not-active-decides-before-not-filed"),
    pytest.param(request(insuplc_admdvs="330106"), person("HANGZHOU", filings=[]), "NOT_FILED",
                 id="zone-hospital-insured-outside-zone-no-filing"),
    pytest.param(request(fixmedins_code="H31010100001"), person(filings=[]), "NOT_FILED",
                 id="zone-insured-hospital-outside-zone-no-filing"),
    pytest.param(request(insuplc_admdvs="330106"), person("HANGZHOU", filings=[filing("resident", "310104")]),
                 "NOT_FILED", id="filing-for-another-district"),
    pytest.param(request(insuplc_admdvs="330106"),
                 person("HANGZHOU", filings=[filing("resident", "320000")]), "NOT_FILED",
                 id="filing-for-another-province"),
    pytest.param(request(insuplc_admdvs="330106"),
                 person("HANGZHOU", filings=[filing("temporary", "310000", end="2024-03-14")]),
                 "NOT_FILED", id="filing-ended-the-day-before"),
    pytest.param(request(insuplc_admdvs="330106"),
                 person("HANGZHOU", filings=[filing("temporary", "310000", begn="2024-03-16", end="")]),
                 "NOT_FILED", id="filing-begins-the-day-after"),
    pytest.param(request(insuplc_admdvs="330106"),
                 person("HANGZHOU", filings=[filing("permanent", "310000")]), "NOT_FILED",
                 id="unknown-filing-type-ignored"),
    pytest.param(request(insuplc_admdvs="330106"),
                 person("HANGZHOU", filings=[filing("resident", "000000")]), "NOT_FILED",
                 id="all-zero-filing-area-covers-nothing"),
    pytest.param(request(insuplc_admdvs="330106", visit_time="2024-06-30T17:00:00Z"),
                 person("HANGZHOU", filings=[TEMP_SH]), "NOT_FILED",
                 id="utc-evening-is-1-july-in-cst-filing-over"),
    pytest.param(request(visit_time="2023-06-01T09:00:00+08:00"),
                 person(totals=accum(year=2023)), "NO_POLICY", id="no-policy-for-2023"),
    pytest.param(request(), person(brdy="2024-05-01"), "NO_POLICY", id="born-after-the-visit-no-band"),
]


@pytest.mark.parametrize("req, psn, code", REFUSED)
def test_refusals(req, psn, code):
    result = settle(req, psn)
    assert isinstance(result, Refusal), result
    assert result.code == code
    assert result.message.startswith(REFUSALS[code])
    assert result.as_json() == {"code": code, "message": result.message}
    certno = psn["baseinfo"]["certno"]
    assert certno not in result.message


# ---------------------------------------------------------------------------------------------
# 422: the request's own rules
# ---------------------------------------------------------------------------------------------


def with_line(**fields: Any) -> dict:
    return request(lines=[{**line(), **fields}])


def without(name: str) -> dict:
    body = request()
    del body[name]
    return body


INVALID = [
    (with_line(det_item_fee_sumamt="37.21"), "LINE_AMOUNT_MISMATCH", "lines[0].det_item_fee_sumamt"),
    # 0.3333 x 30.00 = 9.999, which rounds half up to 10.00, not 9.99 (truncated)
    (with_line(cnt="0.3333", pric="30.00", det_item_fee_sumamt="9.99"), "LINE_AMOUNT_MISMATCH",
     "lines[0].det_item_fee_sumamt"),
    (request(lines=[line(), line(amount="3.72")]), "LINE_AMOUNT_MISMATCH", "lines[1].det_item_fee_sumamt"),
    (request(fixmedins_code="H31099900001"), "UNKNOWN_HOSPITAL", "fixmedins_code"),
    (with_line(pric=18.6), "INVALID_AMOUNT", "lines[0].pric"),  # a JSON number
    (with_line(pric="18.605"), "INVALID_AMOUNT", "lines[0].pric"),
    (with_line(pric="-18.60"), "INVALID_AMOUNT", "lines[0].pric"),
    (with_line(pric="1.86E1"), "INVALID_AMOUNT", "lines[0].pric"),
    (with_line(pric=" 18.60"), "INVALID_AMOUNT", "lines[0].pric"),
    (with_line(det_item_fee_sumamt="三十七"), "INVALID_AMOUNT", "lines[0].det_item_fee_sumamt"),
    (with_line(pric=None), "MISSING_FIELD", "lines[0].pric"),
    (with_line(cnt="0"), "INVALID_QUANTITY", "lines[0].cnt"),
    (with_line(cnt="-2"), "INVALID_QUANTITY", "lines[0].cnt"),
    (with_line(cnt="2.00001"), "INVALID_QUANTITY", "lines[0].cnt"),
    (with_line(cnt=2.0), "INVALID_QUANTITY", "lines[0].cnt"),
    (with_line(cnt=True), "INVALID_QUANTITY", "lines[0].cnt"),
    (with_line(med_list_codg=""), "MISSING_FIELD", "lines[0].med_list_codg"),
    (request(lines=[]), "NO_LINES", "lines"),
    (request(lines="XJ01CAA040A001"), "INVALID_FIELD", "lines"),
    (request(lines=["XJ01CAA040A001"]), "INVALID_FIELD", "lines[0]"),
    (without("lines"), "MISSING_FIELD", "lines"),
    (without("request_key"), "MISSING_FIELD", "request_key"),
    (request(mdtrt_id=""), "MISSING_FIELD", "mdtrt_id"),
    (request(visit_type="inpatient"), "INVALID_FIELD", "visit_type"),
    (request(insutype="320"), "INVALID_FIELD", "insutype"),
    (request(insutype=310), "INVALID_FIELD", "insutype"),
    (request(mdtrt_cert_type="04"), "INVALID_FIELD", "mdtrt_cert_type"),
    (request(use_personal_account="true"), "INVALID_FIELD", "use_personal_account"),
    (request(visit_time="2024-03-15"), "INVALID_VISIT_TIME", "visit_time"),
    (request(visit_time="2024-02-30T09:00:00+08:00"), "INVALID_VISIT_TIME", "visit_time"),
    (request(visit_time="昨天上午"), "INVALID_VISIT_TIME", "visit_time"),
    (without("visit_time"), "MISSING_FIELD", "visit_time"),
    (request(mdtrt_cert_no="330421198504120021"), "INVALID_CERT_NO", "mdtrt_cert_no"),
    (request(insuplc_admdvs="110000"), "UNKNOWN_INSUPLC", "insuplc_admdvs"),
    (request(insuplc_admdvs="3304"), "UNKNOWN_INSUPLC", "insuplc_admdvs"),
]


@pytest.mark.parametrize("body, code, location", INVALID,
                         ids=[f"{c}-{i}" for i, (_, c, _) in enumerate(INVALID)])
def test_invalid_requests_are_422(body, code, location):
    with pytest.raises(RequestInvalid) as info:
        settle(body, person())
    assert (info.value.code, info.value.location) == (code, location)
    assert code in REQUEST_ERRORS


def test_body_that_is_not_an_object():
    with pytest.raises(RequestInvalid) as info:
        SettleRequest.from_json([request()])
    assert info.value.code == "INVALID_BODY"


def test_insured_place_must_agree_with_the_platform_at_province_level():
    # the request routes to JS (320509) but the platform's coverage is ZJ's (330421): 422
    with pytest.raises(RequestInvalid) as info:
        settle(request(insuplc_admdvs="320509"), person())
    assert info.value.code == "INSUPLC_MISMATCH"
    # another district of the same province is fine (the province is what routes)
    assert settle(request(insuplc_admdvs="330106"), person()).as_json() == HUB_EXAMPLE_SPLIT


def test_equal_amount_written_differently_is_accepted():
    # 37.2 and 37.20 are the same amount; an int quantity is exact
    assert settle(with_line(det_item_fee_sumamt="37.2", cnt=2), person()).as_json() == HUB_EXAMPLE_SPLIT


def test_cert_number_is_normalised_and_never_echoed():
    req = SettleRequest.from_json(request(mdtrt_cert_no="330421850412002"))  # 15-digit legacy form
    assert req.mdtrt_cert_no == "33042119850412002X"  # 19 inserted, check character computed
    assert "33042119850412002X" not in repr(req)  # a logged request never shows it
    with pytest.raises(RequestInvalid) as info:
        SettleRequest.from_json(request(mdtrt_cert_no="330421198504120021"))
    assert "330421198504120021" not in str(info.value)


def test_lowercase_x_is_folded():
    req = SettleRequest.from_json(request(mdtrt_cert_no="33042119850412002x"))
    assert req.mdtrt_cert_no == "33042119850412002X"


def test_other_certificate_types_are_kept_as_sent():
    req = SettleRequest.from_json(request(mdtrt_cert_type="01", mdtrt_cert_no="ECTOKEN-abc123"))
    assert req.mdtrt_cert_no == "ECTOKEN-abc123"


def test_use_personal_account_absent_means_false():
    body = request()
    del body["use_personal_account"]
    # share 9.30 then goes to cash
    assert settle(body, person()).as_json() == {**HUB_EXAMPLE_SPLIT, "acct_pay": "0.00", "psn_cash_pay": "9.30"}


def test_totals_of_another_year_are_the_platforms_fault():
    with pytest.raises(PersonInfoInvalid):
        settle(request(), person(totals=accum(year=2023)))


def test_validation_precedes_eligibility():
    # an unknown hospital is 422 even for a person who would be refused
    with pytest.raises(RequestInvalid) as info:
        settle(request(fixmedins_code="H31099900001"), person(insuinfo=[coverage("330421", stas="2")]))
    assert info.value.code == "UNKNOWN_HOSPITAL"


# ---------------------------------------------------------------------------------------------
# PersonInfo from the 1101 output
# ---------------------------------------------------------------------------------------------


def test_person_info_parses_the_insurer_api_example():
    info = PersonInfo.from_json(person())
    assert info.brdy == date(1985, 4, 12)
    assert info.coverages[0].balc == Decimal("1234.56")
    assert (info.accum.year, info.accum.dedc_accu, info.accum.fund_pay_accu, info.accum.version) == (
        2024, Decimal("800.00"), Decimal("3200.00"), 17)
    assert info.filings[0].enddate == date(2024, 6, 30)
    assert "33042119850412002X" not in repr(info) and "李四" not in repr(info)


def test_person_info_tolerates_numbers_but_not_three_places():
    raw = person()
    raw["insuinfo"][0]["balc"] = 1234.56  # a float from another implementation: read by its repr
    raw["accum"]["dedc_accu"] = 800
    info = PersonInfo.from_json(raw)
    assert info.coverages[0].balc == Decimal("1234.56") and info.accum.dedc_accu == Decimal("800")
    raw["accum"]["fund_pay_accu"] = "3200.005"
    with pytest.raises(PersonInfoInvalid):
        PersonInfo.from_json(raw)


@pytest.mark.parametrize("mutate", [
    lambda p: p.pop("accum"),
    lambda p: p.pop("baseinfo"),
    lambda p: p["accum"].update(version="v17"),
    lambda p: p["insuinfo"][0].update(insuplc_admdvs="3304"),
    lambda p: p["filing"][0].update(enddate="2024-06-31"),
    lambda p: p.update(filing={"type": "temporary"}),
], ids=["no-accum", "no-baseinfo", "version-not-int", "bad-area", "impossible-date", "filing-not-list"])
def test_person_info_refuses_unusable_answers(mutate):
    raw = person()
    mutate(raw)
    with pytest.raises(PersonInfoInvalid):
        PersonInfo.from_json(raw)


def test_birth_date_from_certno_when_brdy_absent():
    raw = person()
    del raw["baseinfo"]["brdy"]
    assert PersonInfo.from_json(raw).brdy == date(1985, 4, 12)
    raw["baseinfo"]["certno"] = "33042119850412002Y"
    with pytest.raises(PersonInfoInvalid) as info:
        PersonInfo.from_json(raw)
    assert "33042119850412002" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# The pieces, one by one
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("birth, day, age", [
    ("1985-04-12", "2024-04-11", 38),  # day before the birthday
    ("1985-04-12", "2024-04-12", 39),  # the birthday
    ("1980-02-29", "2024-02-28", 43),
    ("1980-02-29", "2024-02-29", 44),  # a leap year: the birthday itself
    ("1980-02-29", "2025-02-28", 44),  # other years: not yet on 28 Feb
    ("1980-02-29", "2025-03-01", 45),  # ... but on 1 March
    ("2024-03-15", "2024-03-15", 0),
    ("2024-05-01", "2024-03-15", -1),  # before birth: no band will cover it
])
def test_age_on(birth, day, age):
    assert rules.age_on(date.fromisoformat(birth), date.fromisoformat(day)) == age


@pytest.mark.parametrize("ratio, adjustment, effective", [
    ("0.75", "0.00", "0.75"), ("0.75", "-0.10", "0.65"), ("0.05", "-0.10", "0"), ("0.10", "-0.10", "0.00"),
])
def test_effective_ratio_never_below_zero(ratio, adjustment, effective):
    assert rules.effective_ratio(Decimal(ratio), Decimal(adjustment)) == Decimal(effective)


@pytest.mark.parametrize("inscp, deductible, paid, dedc", [
    ("37.20", "800.00", "800.00", "0.00"),  # met
    ("37.20", "800.00", "900.00", "0.00"),  # overpaid: max(0, -100) = 0
    ("37.20", "800.00", "780.00", "20.00"),  # 20 left, less than in scope
    ("37.20", "800.00", "0.00", "37.20"),  # all of it
    ("0.00", "800.00", "0.00", "0.00"),  # nothing in scope
])
def test_deductible_paid(inscp, deductible, paid, dedc):
    assert rules.deductible_paid(Decimal(inscp), Decimal(deductible), Decimal(paid)) == Decimal(dedc)


@pytest.mark.parametrize("inscp, dedc, ratio, cap, paid, hifp", [
    ("37.20", "0.00", "0.75", "10000.00", "3200.00", "27.90"),  # 37.20 x 0.75
    ("57.20", "20.00", "0.75", "10000.00", "3200.00", "27.90"),  # (57.20 - 20) x 0.75
    ("37.20", "0.00", "0.75", "5000.00", "4990.00", "10.00"),  # capped at 10 left
    ("37.20", "0.00", "0.75", "5000.00", "5000.00", "0.00"),  # cap exactly used
    ("0.30", "0.00", "0.75", "5000.00", "0.00", "0.23"),  # 0.225 half up
    ("0.30", "0.00", "0", "5000.00", "0.00", "0.00"),  # ratio 0
])
def test_fund_payment(inscp, dedc, ratio, cap, paid, hifp):
    result = rules.fund_payment(*(Decimal(v) for v in (inscp, dedc, ratio, cap, paid)))
    assert result == Decimal(hifp)


@pytest.mark.parametrize("share, balc, use, insutype, acct", [
    ("9.30", "1234.56", True, "310", "9.30"),
    ("9.30", "5.00", True, "310", "5.00"),
    ("9.30", "-5.00", True, "310", "0.00"),
    ("9.30", "1234.56", False, "310", "0.00"),
    ("9.30", "1234.56", True, "390", "0.00"),
    ("0.00", "1234.56", True, "310", "0.00"),
])
def test_account_payment(share, balc, use, insutype, acct):
    assert rules.account_payment(Decimal(share), Decimal(balc), use, insutype) == Decimal(acct)


def item(category: str, ratio: str = "0", cap: str | None = None) -> CatalogueItem:
    return CatalogueItem("SH", "X", "测试", "drug", "盒", category, Decimal(ratio),
                         Decimal(cap) if cap else None, date(2024, 1, 1), None)


@pytest.mark.parametrize("cnt, pric, amount, catalogue_item, parts", [
    # parts: fulamt, overlmt, pre, in scope
    ("2", "18.60", "37.20", None, ("37.20", "0", "0", "0")),  # unlisted
    ("2", "18.60", "37.20", item("C"), ("37.20", "0", "0", "0")),  # 丙类
    ("2", "18.60", "37.20", item("C", cap="10.00"), ("37.20", "0", "0", "0")),  # C: a cap is moot
    ("2", "18.60", "37.20", item("A"), ("0", "0", "0", "37.20")),
    ("2", "18.60", "37.20", item("A", "0.10"), ("0", "0", "0", "37.20")),  # A ignores a stray ratio
    ("2", "18.60", "37.20", item("A", cap="18.60"), ("0", "0", "0", "37.20")),  # cap = price
    ("2", "18.60", "37.20", item("A", cap="15.00"), ("0", "7.20", "0", "30.00")),  # 3.60 x 2
    ("2", "18.60", "37.20", item("B", "0.10"), ("0", "0", "3.72", "33.48")),
    ("3", "18.50", "55.50", item("B", "0.20", "15.00"), ("0", "10.50", "9.00", "36.00")),
    ("1", "12.25", "12.25", item("B", "0.10"), ("0", "0", "1.23", "11.02")),  # 1.225 half up
    ("1", "0.00", "0.00", item("B", "0.10"), ("0", "0", "0", "0")),  # a free item
])
def test_split_line(cnt, pric, amount, catalogue_item, parts):
    fee = FeeLine("X", Decimal(cnt), Decimal(pric), Decimal(amount))
    result = rules.split_line(fee, catalogue_item)
    assert (result.fulamt_ownpay_amt, result.overlmt_selfpay, result.preselfpay_amt,
            result.inscp_scp_amt) == tuple(Decimal(p) for p in parts)
    assert result.amount == Decimal(amount)


def test_split_rejects_floats_and_renders_two_places():
    with pytest.raises(TypeError):
        Split(*([Decimal("1.00")] * 9), 1.0)
    s = Split(*([Decimal("0")] * 10))
    assert set(s.as_json().values()) == {"0.00"}


# ---------------------------------------------------------------------------------------------
# Reference data
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["hospitals.csv", "catalogue.csv", "policy.json"])
def test_package_data_is_the_worlds_unchanged(name):
    if not (WORLD_DATA / name).exists():
        pytest.skip("the world's data folder is not on this machine")
    assert (PACKAGE_DATA / name).read_bytes() == (WORLD_DATA / name).read_bytes()


def test_reference_lookups():
    h = REF.hospital("H31011800012")
    assert (h.admdvs, h.level, h.province) == ("310118", 2, "SH")
    assert REF.hospital("H00000000000") is None
    assert REF.policy("330421", 2024, "310") is REF.policy("ZJ", 2024, "310")
    assert REF.policy("ZJ", 2024, "310").annual_cap == Decimal("10000.00")
    assert REF.policy("ZJ", 2023, "310") is None and REF.policy("110000", 2024, "310") is None
    assert REF.catalogue_item("ZJ", "XR05CBA010A001", date(2024, 3, 15)).category == "C"
    assert REF.catalogue_item("SH", "XR05CBA010A001", date(2023, 12, 31)) is None  # before begndate
    assert province_of("330421") == "ZJ" and province_of("ZJ") == "ZJ" and province_of("110000") is None


def write_reference(folder: Path, catalogue_rows: list[str]) -> Path:
    for name in ("hospitals.csv", "policy.json"):
        shutil.copy(PACKAGE_DATA / name, folder / name)
    header = "province,med_list_codg,name,kind,unit,category,preselfpay_ratio,price_cap,begndate,enddate"
    (folder / "catalogue.csv").write_text("\n".join([header, *catalogue_rows]) + "\n", encoding="utf-8")
    return folder


@pytest.mark.parametrize("day, category", [
    ("2023-12-31", None),  # before the first row
    ("2024-01-01", "A"),  # first day of the first row
    ("2024-06-30", "A"),  # its last day, included
    ("2024-07-01", "B"),  # the second row
    ("2024-08-31", "B"),
    ("2024-09-01", "C"),  # second and third both valid: the later begndate wins
    ("2030-01-01", "C"),  # open end
])
def test_catalogue_row_by_visit_date(tmp_path, day, category):
    ref = load_reference(write_reference(tmp_path, [
        "SH,XJ01CAA040A001,阿莫西林胶囊,drug,盒,A,,,2024-01-01,2024-06-30",
        "SH,XJ01CAA040A001,阿莫西林胶囊,drug,盒,B,0.10,,2024-07-01,",
        "SH,XJ01CAA040A001,阿莫西林胶囊,drug,盒,C,,,2024-09-01,",
    ]))
    found = ref.catalogue_item("SH", "XJ01CAA040A001", date.fromisoformat(day))
    assert (found.category if found else None) == category


def test_catalogue_row_by_visit_date_decides_the_split(tmp_path):
    ref = load_reference(write_reference(tmp_path, [
        "SH,XJ01CAA040A001,阿莫西林胶囊,drug,盒,A,,,2024-01-01,2024-03-14",
        "SH,XJ01CAA040A001,阿莫西林胶囊,drug,盒,B,0.10,,2024-03-15,",
    ]))
    result = compute_split(SettleRequest.from_json(request()), PersonInfo.from_json(person()), ref)
    # B from the visit day: pre 37.20 x 0.10 = 3.72, in scope 33.48; fund 33.48 x 0.75 = 25.11;
    # share 37.20 - 25.11 = 12.09 from the account
    assert result.as_json() == split("37.20", "0.00", "0.00", "3.72", "33.48", "0.00", "25.11", "25.11",
                                     "12.09", "0.00")


@pytest.mark.parametrize("row", [
    "SH,X1,名,drug,盒,D,,,2024-01-01,",  # category D
    "SH,X1,名,drug,盒,B,1.10,,2024-01-01,",  # ratio above 1
    "SH,X1,名,drug,盒,B,0.1x,,2024-01-01,",  # not a number
    "SH,X1,名,drug,盒,A,,-5.00,2024-01-01,",  # negative cap
    "SH,X1,名,drug,盒,A,,,2024-07-01,2024-06-30",  # reversed dates
    "SH,X1,名,drug,盒,A,,,,",  # no begndate
    "BJ,X1,名,drug,盒,A,,,2024-01-01,",  # not a province of the region
])
def test_broken_catalogue_fails_at_load(tmp_path, row):
    with pytest.raises(ReferenceDataError):
        load_reference(write_reference(tmp_path, [row]))


def test_broken_policy_fails_at_load(tmp_path):
    write_reference(tmp_path, [])
    text = (tmp_path / "policy.json").read_text(encoding="utf-8")
    (tmp_path / "policy.json").write_text(text.replace('"0.65"', '"1.65"', 1), encoding="utf-8")
    with pytest.raises(ReferenceDataError):
        load_reference(tmp_path)


def test_policy_json_numbers_are_read_as_decimal(tmp_path):
    write_reference(tmp_path, [])
    text = (tmp_path / "policy.json").read_text(encoding="utf-8")
    # a publication with JSON numbers instead of strings: still exact, never a float
    (tmp_path / "policy.json").write_text(text.replace('"annual_cap": "50000.00"', '"annual_cap": 50000.10'),
                                          encoding="utf-8")
    cap = load_reference(tmp_path).policy("SH", 2024, "310").annual_cap
    assert isinstance(cap, Decimal) and cap == Decimal("50000.10")


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------

CODES = sorted({code for _, code in REF.catalogue}) + ["XX00UNLISTED0001"]
HOSPITALS = sorted(REF.hospitals)
PLACES = sorted({h.admdvs for h in REF.hospitals.values()} | {"330106", "320106", "340104", "310104"})
AREAS = PLACES + ["310000", "320000", "330000", "340000", "310100", "320500"]


def cents(max_value: int) -> st.SearchStrategy[Decimal]:
    return st.integers(0, max_value * 100).map(lambda c: Decimal(c) / 100)


@st.composite
def fee_lines(draw) -> dict:
    cnt = Decimal(draw(st.integers(1, 500_000))) / Decimal(10) ** draw(st.integers(0, 4))
    pric = draw(cents(6000))
    return line(draw(st.sampled_from(CODES)), str(cnt), f"{pric:.2f}", f"{rules.line_amount(cnt, pric):.2f}")


@st.composite
def cases(draw) -> tuple[dict, dict]:
    day = draw(st.dates(date(2024, 1, 1), date(2026, 12, 31)))
    place, insutype = draw(st.sampled_from(PLACES)), draw(st.sampled_from(["310", "390"]))
    body = request(fixmedins_code=draw(st.sampled_from(HOSPITALS)), insuplc_admdvs=place,
                   insutype=insutype, visit_type=draw(st.sampled_from(["outpatient", "emergency"])),
                   visit_time=f"{day.isoformat()}T10:00:00+08:00",
                   use_personal_account=draw(st.booleans()),
                   lines=draw(st.lists(fee_lines(), min_size=1, max_size=6)))
    filings = draw(st.lists(st.builds(
        lambda kind, area, start, days: filing(
            kind, area, start.isoformat(),
            "" if days is None else date.fromordinal(start.toordinal() + days).isoformat()),
        st.sampled_from(["resident", "temporary", "other"]), st.sampled_from(AREAS),
        st.dates(date(2023, 1, 1), date(2026, 12, 31)), st.none() | st.integers(0, 400)), max_size=3))
    balc = draw(cents(6000).map(lambda d: d - 100))  # -100.00 .. 5900.00
    psn = person(insuinfo=[coverage(place, insutype, stas=draw(st.sampled_from(["1", "1", "1", "2", "4"])),
                                    balc=f"{balc:.2f}")],
                 totals=accum(f"{draw(cents(2000)):.2f}", f"{draw(cents(60000)):.2f}", year=day.year),
                 filings=filings, brdy=draw(st.dates(date(1920, 1, 1), day)).isoformat())
    return body, psn


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_split_properties(case):
    body, psn = case
    req, info = SettleRequest.from_json(body), PersonInfo.from_json(psn)
    result = compute_split(req, info, REF)
    if isinstance(result, Refusal):
        assert result.code in REFUSALS
        return
    s = result
    amounts = [getattr(s, f.name) for f in fields(s)]
    assert all(a >= 0 for a in amounts), s  # no negative amounts
    assert all(a.as_tuple().exponent == -2 for a in amounts), s  # exactly two places
    assert all(len(v.split(".")[1]) == 2 for v in s.as_json().values())
    # the two identities of the rules and of 2207
    assert s.medfee_sumamt == s.fulamt_ownpay_amt + s.overlmt_selfpay + s.preselfpay_amt + s.inscp_scp_amt
    assert s.medfee_sumamt == s.fund_pay_sumamt + s.acct_pay + s.psn_cash_pay
    assert s.fund_pay_sumamt == s.hifp_pay
    assert s.medfee_sumamt == sum((Decimal(ln["det_item_fee_sumamt"]) for ln in body["lines"]), Decimal(0))
    # never more than the cap's remainder, the account's balance, or the deductible left
    coverage_ = info.coverages[0]
    policy = REF.policy(coverage_.insuplc_admdvs, req.visit_date.year, req.insutype)
    band = policy.band(rules.age_on(info.brdy, req.visit_date))
    assert s.hifp_pay <= max(Decimal(0), policy.annual_cap - info.accum.fund_pay_accu)
    assert s.hifp_pay <= s.inscp_scp_amt - s.act_pay_dedc
    assert s.acct_pay <= max(Decimal(0), coverage_.balc)
    assert s.act_pay_dedc <= max(Decimal(0), band.deductible - info.accum.dedc_accu)
    if req.insutype == "390" or not req.use_personal_account:
        assert s.acct_pay == 0


@given(st.sampled_from(["A", "B", "C"]), cents(1).filter(lambda r: r <= 1), st.none() | cents(500),
       st.integers(1, 99_999).map(lambda n: Decimal(n) / 1000), cents(1000))
def test_split_line_properties(category, ratio, cap, cnt, pric):
    fee = FeeLine("X", cnt, pric, rules.line_amount(cnt, pric))
    parts = rules.split_line(fee, item(category, str(ratio), None if cap is None else str(cap)))
    values = (parts.fulamt_ownpay_amt, parts.overlmt_selfpay, parts.preselfpay_amt, parts.inscp_scp_amt)
    assert parts.amount == fee.det_item_fee_sumamt
    assert all(v >= 0 and v.as_tuple().exponent >= -2 for v in values)
