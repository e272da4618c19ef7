"""Anhui spreadsheet mapper: fixtures of every kind, every quirk of anhui-csv.md, ZIP limits."""

from __future__ import annotations

import io
import re
import tracemalloc
import zipfile
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mappers import anhui_csv
from mappers.anhui_csv import ArchiveTooLarge, map_upload, spreadsheet_serial
from mappers.common import (INSURANCE_CARD_SYSTEM, LAB_REPORT_SYSTEM, OUTPATIENT_NO_SYSTEM, PATIENT_REF, RESIDENT_ID_SYSTEM, hospital_reference, make_id, validate)
from mappers.errors import ForeignSender, InvalidValue, UnreadableUpload
from mappers.region import CST

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "ah"
SENDER = "H34010400001"
VH = "就诊流水号,身份证号,姓名,就诊日期,就诊类型,医疗机构代码,医疗机构名称,医院等级,科室,医生,诊断编码,诊断名称,主诊断"
PH = "姓名,性别,出生日期,身份证号,联系电话,现住址,医保卡号,参保地"
LH = "报告单号,就诊流水号,身份证号,检验项目编码,检验项目名称,结果,单位,参考范围,异常标识,报告时间"
H = "H34010400001,合肥市蜀山区人民医院"
ZHANG = "340104197806150130"
LI_SI = "33042119850412002X"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def csv_bytes(*lines: str, encoding: str = "gbk", eol: str = "\r\n") -> bytes:
    return (eol.join(lines) + eol).encode(encoding)


def visit_row(visit_no: str = "MZ1", rid: str = ZHANG, when: str = "2024-03-05 09:30",
              kind: str = "门诊", hospital: str = H, code: str = "J06.900",
              name: str = "急性上呼吸道感染", principal: str = "是") -> str:
    return f"{visit_no},{rid},张伟,{when},{kind},{hospital},三级,呼吸内科,周明,{code},{name},{principal}"


def lab_row(report: str = "LIS1", item: str = "GLU", result: str = "6.8", flag: str = "",
            rid: str = ZHANG, visit: str = "MZ1", when: str = "2024-03-05 10:15") -> str:
    return f"{report},{visit},{rid},{item},葡萄糖,{result},mmol/L,3.9-6.1,{flag},{when}"


def by_type(record, rtype: str) -> list[dict]:
    return [r for r in record.resources if r["resourceType"] == rtype]


def one(record, rtype: str) -> dict:
    (resource,) = by_type(record, rtype)
    return resource


def record(result, key_part: str):
    (rec,) = [r for r in result.records if key_part in r.key]
    return rec


def locations(result) -> list[str]:
    return [r.location for r in result.rejected]


def make_zip(entries: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name, date_time=(2024, 3, 14, 18, 0, 0))
            info.compress_type = compression if not name.endswith("/") else zipfile.ZIP_STORED
            zf.writestr(info, data)
    return buf.getvalue()


GOOD_VISITS = csv_bytes(VH, visit_row())

# ---------------------------------------------------------------------------------------------
# Each kind, from the fixtures, with concrete values
# ---------------------------------------------------------------------------------------------


def test_patient_file_gbk():
    result = map_upload(fixture("patients_gbk.csv"), SENDER, "patients_gbk.csv")
    assert result.rejected == []
    assert len(result.records) == 4
    zhang = result.records[0]
    assert zhang.resources == []  # a patient row carries only the Patient
    assert zhang.location == "patients_gbk.csv:row 2"
    assert zhang.patient == {
        "resourceType": "Patient",
        "identifier": [
            {"system": RESIDENT_ID_SYSTEM, "value": ZHANG},
            {"system": INSURANCE_CARD_SYSTEM, "value": "A34010400012345",
             "assigner": {"identifier": {"value": "340104"}, "display": "参保地 340104"}}],
        "name": [{"text": "张伟"}], "gender": "male", "birthDate": "1978-06-15",
        "telecom": [{"system": "phone", "value": "13955110023"}],
        "address": [{"text": "安徽省合肥市蜀山区稻香村街道黄山路128号", "state": "安徽省",
                     "city": "合肥市", "district": "蜀山区", "line": ["稻香村街道黄山路128号"]}],
    }
    wang, li, zhao = (r.patient for r in result.records[1:])
    assert (wang["gender"], wang["birthDate"]) == ("female", "1952-11-03")  # sex digit 2, 1952/11/3
    assert wang["telecom"][0]["value"] == "0551-62881234"
    assert (li["birthDate"], li["identifier"][0]["value"]) == ("1985-04-12", LI_SI)  # 1985年4月12日
    assert li["address"][0]["district"] == "嘉善县"
    # No resident ID: keyed and identified by the insurance card; birth date a serial day number.
    assert zhao["identifier"] == [{"system": INSURANCE_CARD_SYSTEM, "value": "A34011100054321",
                                   "assigner": {"identifier": {"value": "340111"},
                                                "display": "参保地 340111"}}]
    assert zhao["birthDate"] == "1988-07-22"
    # No province written: the table knows 包河区 of 合肥市 is in 安徽省.
    assert zhao["address"] == [{"text": "合肥市包河区望湖街道", "state": "安徽省", "city": "合肥市",
                                "district": "包河区", "line": ["望湖街道"]}]
    keys = {r.key for r in result.records}
    assert len(keys) == 4 and all(k.startswith(f"{SENDER}|patient|") for k in keys)
    assert not any(ZHANG in k for k in keys)  # keys never carry the ID number itself


def test_visit_file_gbk():
    result = map_upload(fixture("visits_gbk.csv"), SENDER, "visits_gbk.csv")
    assert result.rejected == []
    assert [r.key for r in result.records] == [
        f"{SENDER}|visit|MZ2024030500017", f"{SENDER}|visit|JZ2024030600003",
        f"{SENDER}|visit|ZY2024030700001"]
    mz = result.records[0]
    assert mz.patient == {"resourceType": "Patient", "name": [{"text": "张伟"}],
                          "identifier": [{"system": RESIDENT_ID_SYSTEM, "value": ZHANG}]}
    enc = one(mz, "Encounter")
    assert enc["id"] == make_id("Encounter", SENDER, "MZ2024030500017")
    assert enc["identifier"] == [{"system": OUTPATIENT_NO_SYSTEM, "value": "MZ2024030500017",
                                  "assigner": hospital_reference(SENDER)}]
    assert enc["class"]["code"] == "AMB"
    assert enc["period"] == {"start": "2024-03-05T09:30:00+08:00"}
    assert enc["subject"] == {"reference": PATIENT_REF}
    assert enc["serviceProvider"] == hospital_reference(SENDER, "合肥市蜀山区人民医院")
    assert enc["serviceType"] == {"text": "呼吸内科"}
    assert one(mz, "Organization")["name"] == "合肥市蜀山区人民医院"
    first, second = by_type(mz, "Condition")
    assert first["code"]["coding"][0]["code"] == "J06.900"
    assert first["code"]["text"] == "急性上呼吸道感染"
    assert second["code"]["coding"][0]["code"] == "R05.x00"
    assert first["encounter"] == {"reference": f"Encounter/{enc['id']}"}
    assert first["recordedDate"] == "2024-03-05T09:30:00+08:00"
    principal, secondary = enc["diagnosis"]
    assert principal["condition"] == {"reference": f"Condition/{first['id']}"}
    assert principal["rank"] == 1 and principal["use"]["coding"][0]["code"] == "DD"
    assert "rank" not in secondary and secondary["use"]["coding"][0]["code"] == "CM"
    assert one(result.records[1], "Encounter")["class"]["code"] == "EMER"
    zy = one(result.records[2], "Encounter")
    assert zy["class"]["code"] == "IMP"
    assert zy["period"] == {"start": "2024-03-07"}  # a date without a time stays a date
    assert len(by_type(result.records[2], "Condition")) == 2


def test_lab_file_gbk():
    result = map_upload(fixture("labs_gbk.csv"), SENDER, "labs_gbk.csv")
    assert result.rejected == []
    assert [r.key for r in result.records] == [
        f"{SENDER}|lab|LIS20240305001|WBC", f"{SENDER}|lab|LIS20240305001|CRP",
        f"{SENDER}|lab|LIS20240306002|HBsAg", f"{SENDER}|lab|LIS20240306002|GLU"]
    wbc, crp, hbsag, glu = (one(r, "Observation") for r in result.records)
    assert wbc["id"] == make_id("Observation", SENDER, "lab", "LIS20240305001", "WBC")
    assert wbc["valueQuantity"] == {"value": 11.2, "unit": "10^9/L"}
    assert wbc["referenceRange"][0]["low"]["value"] == 3.5
    assert wbc["referenceRange"][0]["high"]["value"] == 9.5
    assert wbc["interpretation"][0]["coding"][0]["code"] == "H"
    assert wbc["effectiveDateTime"] == "2024-03-05T10:15:00+08:00"
    assert wbc["code"]["coding"][0] == {"system": "urn:yrdhub:local-lab-code", "code": "WBC",
                                        "display": "白细胞计数"}
    assert crp["valueQuantity"] == {"value": 0.5, "comparator": "<", "unit": "mg/L"}
    assert "interpretation" not in crp
    assert hbsag["valueCodeableConcept"]["coding"][0]["code"] == "260385009"
    assert hbsag["valueCodeableConcept"]["text"] == "阴性"
    assert glu["interpretation"][0]["coding"][0]["code"] == "H"  # ↑ is high
    # The lab rows point at the visit's Encounter from the visit file (another upload).
    visits = map_upload(fixture("visits_gbk.csv"), SENDER)
    assert wbc["encounter"] == {"reference": f"Encounter/{one(visits.records[0], 'Encounter')['id']}"}
    # One DiagnosticReport per report, the same resource in each of its rows' records.
    report_1 = one(result.records[0], "DiagnosticReport")
    assert report_1 == one(result.records[1], "DiagnosticReport")
    assert report_1["identifier"][0]["system"] == LAB_REPORT_SYSTEM
    assert report_1["identifier"][0]["value"] == "LIS20240305001"
    assert report_1["category"][0]["coding"][0]["code"] == "LAB"
    assert report_1["result"] == [{"reference": f"Observation/{crp['id']}"},
                                  {"reference": f"Observation/{wbc['id']}"}]  # sorted by item
    assert result.records[2].patient["identifier"] == [{"system": RESIDENT_ID_SYSTEM, "value": LI_SI}]


def test_utf8_with_bom():
    result = map_upload(fixture("visits_utf8_bom.csv"), SENDER, "visits_utf8_bom.csv")
    assert result.rejected == []
    (rec,) = result.records
    assert rec.patient["identifier"][0]["value"] == "34150219900120038X"
    assert rec.patient["name"] == [{"text": "刘芳"}]
    assert one(rec, "Encounter")["period"]["start"] == "2024-03-11T10:05:00+08:00"


@pytest.mark.parametrize("encoding", ["gbk", "gb18030", "utf-8", "utf-8-sig"])
def test_every_encoding_reads_the_same(encoding):
    base = map_upload(fixture("visits_gbk.csv"), SENDER)
    text = fixture("visits_gbk.csv").decode("gbk")
    other = map_upload(text.encode(encoding), SENDER)
    assert [(r.key, r.patient, r.resources) for r in other.records] == \
           [(r.key, r.patient, r.resources) for r in base.records]


def test_gb18030_only_character_and_lf_line_ends():
    # 䶮 is in GB18030 but not in GBK: a GB18030 file must read too.
    body = csv_bytes(VH, visit_row().replace("张伟", "王䶮"), encoding="gb18030", eol="\n")
    (rec,) = map_upload(body, SENDER).records
    assert rec.patient["name"] == [{"text": "王䶮"}]


def test_undecodable_as_utf8_or_gb18030_goes_to_charset_normalizer(monkeypatch):
    calls = []
    real = anhui_csv.from_bytes
    monkeypatch.setattr(anhui_csv, "from_bytes", lambda data: calls.append(data) or real(data))
    map_upload(fixture("visits_gbk.csv"), SENDER)
    assert calls == []  # strict UTF-8 / GB18030 decide; no guessing
    with pytest.raises(UnreadableUpload):
        map_upload(b"\xff\xfe\x00\x81\x30" * 50, SENDER)
    assert calls  # only the truly ambiguous bytes are guessed at (and then refused)

# ---------------------------------------------------------------------------------------------
# Quirks (anhui-csv.md, "What real files contain")
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quirks():
    return map_upload(fixture("quirks.csv"), SENDER, "quirks.csv")


def test_quirks_rejections_and_skips(quirks):
    assert sorted(locations(quirks)) == [
        "quirks.csv:row 12:column 医疗机构代码", "quirks.csv:row 13:column 就诊日期",
        "quirks.csv:row 7:column 身份证号", "quirks.csv:row 8:column 身份证号"]
    reasons = {r.location: r.reason for r in quirks.rejected}
    assert "scientific notation" in reasons["quirks.csv:row 7:column 身份证号"]
    assert "precision" in reasons["quirks.csv:row 8:column 身份证号"]
    assert "H34010300002" in reasons["quirks.csv:row 12:column 医疗机构代码"]
    assert "1900-02-29" in reasons["quirks.csv:row 13:column 就诊日期"]
    # blank row 9, commas row 10, repeated header row 11, 合计 row 15: neither stored nor rejected
    assert [r.location for r in quirks.records] == [
        "quirks.csv:row 2", "quirks.csv:row 3", "quirks.csv:row 4", "quirks.csv:row 5",
        "quirks.csv:row 6", "quirks.csv:row 14"]
    assert "quirks.csv: 4 rows without data skipped (blank, repeated header, 合计)" in quirks.notes


def test_quirk_full_width_characters_and_spaces(quirks):
    rec = quirks.records[0]
    assert rec.key == f"{SENDER}|visit|MZ2024031200101"
    assert rec.patient["identifier"][0]["value"] == ZHANG
    assert rec.patient["name"] == [{"text": "张伟"}]  # full-width spaces stripped
    assert one(rec, "Encounter")["class"]["code"] == "AMB"  # " 门诊 "
    assert one(rec, "Condition")["code"]["coding"][0]["code"] == "J20.900"


def test_quirk_lower_case_x_and_15_digit_id(quirks):
    assert quirks.records[1].patient["identifier"][0]["value"] == "34150219900120038X"
    assert quirks.records[2].patient["identifier"][0]["value"] == "340202196509080314"


def test_quirk_date_forms(quirks):
    starts = [one(r, "Encounter")["period"]["start"] for r in quirks.records]
    assert starts == ["2024-03-12T08:40:00+08:00", "2024-03-12", "2024-03-12", "2024-03-12",
                      "2024-03-12T16:30:00+08:00", "2024-03-12T15:00:00+08:00"]


def test_quirk_a_cell_with_a_line_break_is_one_spreadsheet_row(quirks):
    # Row 4 holds "腰痛\n慢性": the next row is still row 5, as a spreadsheet shows it.
    assert one(quirks.records[2], "Condition")["code"]["text"] == "腰痛\n慢性"
    assert quirks.records[3].location == "quirks.csv:row 5"


def test_quirk_trailing_commas_on_a_data_row(quirks):
    assert quirks.records[-1].key == f"{SENDER}|visit|MZ2024031200110"


def test_no_rejection_reason_or_location_holds_an_id_number(quirks):
    for rejection in quirks.rejected:
        assert not re.search(r"\d{15}", rejection.reason + rejection.location)


@pytest.mark.parametrize("cell,expected", [
    ("2024-03-05", "2024-03-05"), ("2024/3/5", "2024-03-05"), ("2024年3月5日", "2024-03-05"),
    ("2024-03-05 14:30", "2024-03-05T14:30:00+08:00"), ("45356", "2024-03-05"),
    ("４５３５６", "2024-03-05"), ("45356.5", "2024-03-05T12:00:00+08:00"),
    ("2024/3/5 14:30", "2024-03-05T14:30:00+08:00"),
    ("2024年3月5日 14:30", "2024-03-05T14:30:00+08:00"),
])
def test_every_listed_date_form(cell, expected):
    (rec,) = map_upload(csv_bytes(VH, visit_row(when=cell)), SENDER).records
    assert one(rec, "Encounter")["period"]["start"] == expected


@pytest.mark.parametrize("cell", ["2024-02-30", "60", "0", "2024年13月1日", "昨天", "2024.03.05"])
def test_impossible_dates_are_rejected_at_their_column(cell):
    result = map_upload(csv_bytes(VH, visit_row(when=cell)), SENDER, "v.csv")
    assert result.records == []
    assert locations(result) == ["v.csv:row 2:column 就诊日期"]


def test_spreadsheet_serial_1900_leap_year_bug():
    assert spreadsheet_serial(Decimal(1)) == date(1900, 1, 1)
    assert spreadsheet_serial(Decimal(59)) == date(1900, 2, 28)
    with pytest.raises(InvalidValue, match="1900-02-29"):
        spreadsheet_serial(Decimal(60))
    assert spreadsheet_serial(Decimal(61)) == date(1900, 3, 1)
    assert spreadsheet_serial(Decimal(45356)) == date(2024, 3, 5)
    assert spreadsheet_serial(Decimal("45356.75")) == datetime(2024, 3, 5, 18, 0, tzinfo=CST)
    with pytest.raises(InvalidValue):
        spreadsheet_serial(Decimal(0))


@pytest.mark.parametrize("cell,reason", [
    ("3.40104E+17", "scientific notation"), ("3.40104e17", "scientific notation"),
    ("340104197001010000", "precision"), ("340104197806150131", "check character"),
    ("34010419780615013", "17 characters"), ("", "empty"),
])
def test_bad_resident_ids_are_refused_never_repaired(cell, reason):
    result = map_upload(csv_bytes(VH, visit_row(rid=cell)), SENDER, "v.csv")
    assert result.records == []
    (rejection,) = result.rejected
    assert rejection.location == "v.csv:row 2:column 身份证号"
    assert reason in rejection.reason


def test_id_ending_in_000_that_passes_its_check_is_accepted():
    # 340104197001010000 fails; an ID whose real last digits are 000 passes its check: kept.
    from mappers.region import check_character
    body = next(f"3401041970010{d}000"[:17] for d in range(10, 99)
                if check_character(f"3401041970010{d}000"[:17]) == "0")
    assert (body + "0").endswith("000")
    (rec,) = map_upload(csv_bytes(VH, visit_row(rid=body + "0")), SENDER).records
    assert rec.patient["identifier"][0]["value"] == body + "0"


@pytest.mark.parametrize("cell", ['="340104197806150130"', "'340104197806150130",
                                  "\t340104197806150130", " 340104 197806 150130 "])
def test_spreadsheet_text_tricks_around_ids_are_undone(cell):
    (rec,) = map_upload(csv_bytes(VH, visit_row(rid=f'"{cell}"' if "," in cell else cell)),
                        SENDER).records
    assert rec.patient["identifier"][0]["value"] == ZHANG


def test_totals_row_repeated_header_blank_and_comma_rows_are_skipped_not_rejected():
    body = csv_bytes(VH, "", visit_row("MZ1"), ",,,,", VH, " , , ", visit_row("MZ2"),
                     "合计：2条,,,,,,,,,,,,", ",,,,,,,,,,,,")
    result = map_upload(body, SENDER)
    assert result.rejected == []
    assert [r.key for r in result.records] == [f"{SENDER}|visit|MZ1", f"{SENDER}|visit|MZ2"]


def test_lab_values_as_in_the_zhejiang_format():
    body = csv_bytes(LH, lab_row(item="A", result="６.８"), lab_row(item="B", result=">=1000"),
                     lab_row(item="C", result="弱阳性"), lab_row(item="D", result="见备注"),
                     lab_row(item="E", result="1.2", flag="↓"))
    obs = [one(r, "Observation") for r in map_upload(body, SENDER).records]
    assert obs[0]["valueQuantity"]["value"] == 6.8
    assert obs[1]["valueQuantity"]["comparator"] == ">="
    assert obs[2]["valueCodeableConcept"]["coding"][0]["code"] == "260408008"
    assert obs[3]["valueString"] == "见备注"
    assert obs[4]["interpretation"][0]["coding"][0]["code"] == "L"

# ---------------------------------------------------------------------------------------------
# Rows set aside: file, row, column, reason
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("row,column,reason", [
    (visit_row(hospital="H34020200003,芜湖市镜湖区医院"), "医疗机构代码", "H34020200003"),
    (visit_row(kind="出诊"), "就诊类型", "unknown visit type"),
    (visit_row(principal="可能"), "主诊断", "unknown"),
    (visit_row(code=""), "诊断编码", "empty"),
    (visit_row(code="感冒"), "诊断编码", "ICD-10"),
    (visit_row(visit_no=""), "就诊流水号", "empty"),
    (visit_row(visit_no="2.02403E+13"), "就诊流水号", "scientific notation"),
])
def test_visit_row_rejections(row, column, reason):
    result = map_upload(csv_bytes(VH, visit_row("MZ9"), row), SENDER, "v.csv")
    assert [r.key for r in result.records] == [f"{SENDER}|visit|MZ9"]  # the good row still maps
    (rejection,) = result.rejected
    assert rejection.location == f"v.csv:row 3:column {column}"
    assert reason in rejection.reason


@pytest.mark.parametrize("row,column", [
    ("张伟,男性?,1978-06-15,340104197806150130,13955110023,合肥市,,", "性别"),
    ("张伟,男,1978-06-16,340104197806150130,13955110023,合肥市,,", "出生日期"),
    ("张伟,男,1978-06-15,340104197806150130,1.39551E+10,合肥市,,", "联系电话"),
    ("张伟,男,1978-06-15,340104197806150130,13955110023,合肥市,A1,3401", "参保地"),
    ("张伟,男,1978-06-15,,13955110023,合肥市,,", "身份证号"),
])
def test_patient_row_rejections(row, column):
    result = map_upload(csv_bytes(PH, row), SENDER, "p.csv")
    assert result.records == []
    assert locations(result) == [f"p.csv:row 2:column {column}"]


@pytest.mark.parametrize("address, parts, line", [
    # A compound is never a district: the old regex made 长江西路小区 one, and masking kept it.
    ("安徽省合肥市长江西路小区3栋402室", ("安徽省", "合肥市", None), "长江西路小区3栋402室"),
    ("江苏省南京市鼓楼区中山北路8号", ("江苏省", "南京市", "鼓楼区"), "中山北路8号"),
    ("浙江省台州市路桥区路南街道", ("浙江省", "台州市", "路桥区"), "路南街道"),
    ("浙江省宁波市镇海区蛟川街道", ("浙江省", "宁波市", "镇海区"), "蛟川街道"),
    ("芜湖市镜湖区滨江社区", ("安徽省", "芜湖市", "镜湖区"), "滨江社区"),
    ("滨江社区5栋", (None, None, None), "滨江社区5栋"),
])
def test_address_read_against_gb2260(address, parts, line):
    row = f"张伟,男,1978-06-15,340104197806150130,13955110023,{address},,"
    (patient,) = (r.patient for r in map_upload(csv_bytes(PH, row), SENDER).records)
    got = patient["address"][0]
    assert got["text"] == address
    assert (got.get("state"), got.get("city"), got.get("district")) == parts
    assert got["line"] == [line]


def test_sex_codes_gb_t_2261():
    rows = [f"某,{code},,,,,A{i},340104" for i, code in enumerate(["0", "1", "2", "9", "未知", "女"])]
    genders = [r.patient["gender"] for r in map_upload(csv_bytes(PH, *rows), SENDER).records]
    assert genders == ["unknown", "male", "female", "unknown", "unknown", "female"]


def test_rows_of_one_visit_must_agree():
    body = csv_bytes(VH, visit_row("MZ1"), visit_row("MZ1", code="R05.x00", principal="否"),
                     visit_row("MZ1", when="2024-03-06", code="R50.900", principal="否"),
                     visit_row("MZ1", code="J06.900", principal="否"),   # same code, other values
                     visit_row("MZ1", code="J18.900", principal="是"),   # second principal
                     visit_row("MZ1"))                                    # exact repeat
    result = map_upload(body, SENDER, "v.csv")
    assert sorted(locations(result)) == ["v.csv:row 4:column 就诊日期", "v.csv:row 5",
                                         "v.csv:row 6:column 主诊断"]
    (rec,) = result.records
    assert [c["code"]["coding"][0]["code"] for c in by_type(rec, "Condition")] == ["J06.900",
                                                                                   "R05.x00"]


def test_lab_rows_of_one_report_must_agree_and_exact_repeats_count_once():
    body = csv_bytes(LH, lab_row(item="GLU"), lab_row(item="GLU"),
                     lab_row(item="GLU", result="7.0"), lab_row(item="K", rid=LI_SI))
    result = map_upload(body, SENDER, "l.csv")
    assert sorted(locations(result)) == ["l.csv:row 4", "l.csv:row 5:column 身份证号"]
    assert [r.key for r in result.records] == [f"{SENDER}|lab|LIS1|GLU"]


def test_records_list_a_digest_per_row_an_exact_repeat_again():
    body = csv_bytes(VH, visit_row("MZ1"), visit_row("MZ1", code="R05.x00", principal="否"),
                     visit_row("MZ1"))
    (rec,) = map_upload(body, SENDER).records
    first, copy, second = rec.row_digests  # a repeat beside the row it repeats
    assert first == copy != second


def test_a_row_written_another_way_has_the_same_digest():
    plain = visit_row("MZ1", when="2024-03-05 09:30")
    other = visit_row("ＭＺ１", when="2024/3/5 09:30").replace("张伟", "　张伟 ")
    digests = [map_upload(csv_bytes(VH, row), SENDER).records[0].row_digests
               for row in (plain, other)]
    changed = map_upload(csv_bytes(VH, visit_row("MZ1", when="2024-03-05 09:31")), SENDER)
    assert digests[0] == digests[1] != changed.records[0].row_digests


def test_unknown_flag_and_empty_result_are_rejected():
    result = map_upload(csv_bytes(LH, lab_row(item="A", flag="?!"), lab_row(item="B", result="")),
                        SENDER, "l.csv")
    assert sorted(locations(result)) == ["l.csv:row 2:column 异常标识", "l.csv:row 3:column 结果"]


def test_header_of_another_kind_and_too_many_values():
    body = csv_bytes(VH, visit_row("MZ1"), LH, visit_row("MZ2") + ",extra")
    result = map_upload(body, SENDER, "v.csv")
    assert sorted(locations(result)) == ["v.csv:row 3", "v.csv:row 4"]


def test_columns_in_another_order_and_extra_columns():
    header = "备注," + ",".join(reversed(VH.split(",")))
    row = "随访," + ",".join(reversed(visit_row().split(",")))
    result = map_upload(csv_bytes(header, row), SENDER, "v.csv")
    assert [r.key for r in result.records] == [f"{SENDER}|visit|MZ1"]
    assert "v.csv: columns ignored: 备注" in result.notes


@pytest.mark.parametrize("body,reason", [
    (b"", "empty"),
    (csv_bytes("姓名,性别,出生日期"), "not recognised"),
    (csv_bytes(VH + ",姓名"), "twice"),
    (csv_bytes(visit_row()), "not recognised"),  # the header is missing: first row is data
    (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, None),
])
def test_unreadable_csv(body, reason):
    with pytest.raises(UnreadableUpload, match=reason) as info:
        map_upload(body, SENDER)
    assert not isinstance(info.value, ArchiveTooLarge)
    assert ZHANG not in str(info.value)  # a data row read as a header is masked


def test_body_over_20_mb_is_too_large():
    with pytest.raises(ArchiveTooLarge):
        map_upload(GOOD_VISITS + b" " * (20 * 1024 * 1024), SENDER)

# ---------------------------------------------------------------------------------------------
# ZIP
# ---------------------------------------------------------------------------------------------


def test_zip_fixture_with_folder_and_a_report_split_across_files():
    result = map_upload(fixture("upload.zip"), SENDER, "upload.zip")
    assert result.rejected == []
    assert [r.key for r in result.records][2:] == [
        f"{SENDER}|visit|MZ2024031400031", f"{SENDER}|lab|LIS20240314009|ALT",
        f"{SENDER}|lab|LIS20240314009|AST", f"{SENDER}|lab|LIS20240314009|TBIL"]
    assert result.records[0].location == "upload.zip/2024-03/patients.csv:row 2"
    assert result.records[-1].location == "upload.zip/2024-03/labs_b.csv:row 3"  # AST repeat skipped
    reports = [one(r, "DiagnosticReport") for r in result.records[3:]]
    assert reports[0] == reports[1] == reports[2]
    assert [x["reference"] for x in reports[0]["result"]] == [
        f"Observation/{make_id('Observation', SENDER, 'lab', 'LIS20240314009', c)}"
        for c in ("ALT", "AST", "TBIL")]
    tbil = one(result.records[-1], "Observation")
    assert tbil["valueQuantity"] == {"value": 23.5, "unit": "μmol/L"}  # UTF-8 file in the ZIP


def test_zip_folders_nested_and_os_metadata_are_fine():
    body = make_zip({"a/": b"", "a/b/": b"", "a/b/visits.csv": GOOD_VISITS,
                     "__MACOSX/a/b/._visits.csv": b"\x00\x05\x16\x07junk", "a/.DS_Store": b"\x00"})
    result = map_upload(body, SENDER, "u.zip")
    assert [r.location for r in result.records] == ["u.zip/a/b/visits.csv:row 2"]
    assert result.rejected == []


def test_zip_file_that_is_not_a_known_csv_is_one_rejection():
    body = make_zip({"visits.csv": GOOD_VISITS, "说明.txt": "请查收".encode("gbk")})
    result = map_upload(body, SENDER, "u.zip")
    assert len(result.records) == 1
    assert locations(result) == ["u.zip/说明.txt"]


def test_zip_none_readable_is_unreadable():
    with pytest.raises(UnreadableUpload):
        map_upload(make_zip({"说明.txt": "请查收".encode("gbk")}), SENDER)
    with pytest.raises(UnreadableUpload, match="no files"):
        map_upload(make_zip({"a/": b""}), SENDER)
    with pytest.raises(UnreadableUpload):
        map_upload(fixture("upload.zip")[:700], SENDER)  # truncated


def test_zip_entry_without_a_name_is_unreadable():
    with pytest.raises(UnreadableUpload, match="no name"):
        map_upload(make_zip({"": GOOD_VISITS}), SENDER)


def test_rows_naming_only_other_hospitals_are_rejections_not_a_foreign_sender():
    other = "H34020200003,芜湖市镜湖区医院"
    result = map_upload(csv_bytes(VH, visit_row("MZ1", hospital=other),
                                  visit_row("MZ2", hospital=other)), SENDER, "v.csv")
    assert result.records == []
    assert locations(result) == ["v.csv:row 2:column 医疗机构代码", "v.csv:row 3:column 医疗机构代码"]


def test_zip_gbk_entry_names_are_read():
    info = zipfile.ZipInfo("x")
    info.filename = "检验/结果.csv".encode("gbk").decode("cp437")
    info.flag_bits = 0
    assert anhui_csv._entry_name(info) == "检验/结果.csv"


@pytest.mark.parametrize("name", ["../visits.csv", "a/../../visits.csv", "a\\..\\visits.csv",
                                  "/etc/visits.csv", "\\visits.csv", "C:\\visits.csv",
                                  "../"])
def test_zip_paths_climbing_out_or_absolute_are_refused(name):
    body = make_zip({"ok.csv": GOOD_VISITS, name: GOOD_VISITS})
    with pytest.raises(UnreadableUpload) as info:
        map_upload(body, SENDER)
    assert not isinstance(info.value, ArchiveTooLarge)


@pytest.mark.parametrize("name,data", [
    ("inner.zip", make_zip({"v.csv": GOOD_VISITS})),
    ("inner.csv", make_zip({"v.csv": GOOD_VISITS})),   # zip magic under a .csv name
    ("data.csv.gz", b"\x1f\x8b\x08\x00" + bytes(20)),
    ("data.csv", b"\x1f\x8b\x08\x00" + bytes(20)),
    ("x.rar", b"Rar!\x1a\x07\x00"), ("x.7z", b"7z\xbc\xaf\x27\x1c"),
])
def test_nested_archives_are_refused(name, data):
    body = make_zip({"ok.csv": GOOD_VISITS, name: data})
    with pytest.raises(UnreadableUpload, match="nested") as info:
        map_upload(body, SENDER)
    assert not isinstance(info.value, ArchiveTooLarge)


def test_zip_with_more_than_1000_files_is_too_large():
    assert anhui_csv.MAX_ARCHIVE_FILES == 1000
    ok = make_zip({f"d/{i}.csv": GOOD_VISITS for i in range(1000)})
    assert len(map_upload(ok, SENDER).records) == 1  # 1000 files: the same visit, once
    with pytest.raises(ArchiveTooLarge, match="1001 files"):
        map_upload(make_zip({f"d/{i}.csv": GOOD_VISITS for i in range(1001)}), SENDER)


def _incompressible_csv(size: int, seed: int) -> bytes:
    import random
    rng = random.Random(seed)
    lines = [VH]
    while sum(len(x.encode()) for x in lines) < size:
        lines.append(visit_row(f"MZ{rng.getrandbits(64):x}", code=f"J{rng.randint(10, 99)}.{rng.getrandbits(40):x}"))
    return csv_bytes(*lines, encoding="utf-8")


def test_zip_unpacking_past_the_total_limit_is_too_large(monkeypatch):
    # The real limit is 200 MB; a 300 KB stand-in keeps the test fast, the logic is the same.
    assert anhui_csv.MAX_UNPACKED_BYTES == 200 * 1024 * 1024
    monkeypatch.setattr(anhui_csv, "MAX_UNPACKED_BYTES", 300_000)
    entries = {"a.csv": _incompressible_csv(160_000, 1), "b.csv": _incompressible_csv(160_000, 2)}
    assert all(len(data) < 200_000 for data in entries.values())
    with pytest.raises(ArchiveTooLarge, match="200 MB"):
        map_upload(make_zip(entries), SENDER)
    # The same, with the central directory's sizes not consulted: the streamed count refuses it.
    monkeypatch.setattr(anhui_csv, "_check_declared", lambda infos: None)
    with pytest.raises(ArchiveTooLarge, match="200 MB"):
        map_upload(make_zip(entries), SENDER)
    assert len(map_upload(make_zip({"a.csv": entries["a.csv"]}), SENDER).records) > 100


def test_zip_entry_compressing_more_than_100_to_1_is_refused(monkeypatch):
    csv_then_blanks = GOOD_VISITS + b",,,,,,,,,,,,\r\n" * 200_000  # 2.8 MB of comma rows
    body = make_zip({"v.csv": csv_then_blanks})
    with pytest.raises(ArchiveTooLarge, match="100:1"):
        map_upload(body, SENDER)
    monkeypatch.setattr(anhui_csv, "_check_declared", lambda infos: None)
    with pytest.raises(ArchiveTooLarge, match="100:1"):
        map_upload(body, SENDER)
    stored = make_zip({"v.csv": csv_then_blanks}, zipfile.ZIP_STORED)
    assert len(map_upload(stored, SENDER).records) == 1  # same content at 1:1 is fine


def test_zip_entry_claiming_a_larger_compressed_size_is_measured_by_what_is_read():
    # The central directory says 60 KB compressed (47:1, fine); the bytes actually read are a
    # few KB, so the real ratio is far over 100:1 and the counted bytes refuse it.
    # An archive comment gives zipfile real bytes to read up to the claimed size.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("v.csv", GOOD_VISITS + b",,,,,,,,,,,,\r\n" * 200_000)
        zf.comment = bytes(range(256)) * 255
    body = bytearray(buf.getvalue())
    at = body.find(b"PK\x01\x02") + 20
    assert int.from_bytes(body[at:at + 4], "little") < 20_000
    body[at:at + 4] = (60_000).to_bytes(4, "little")
    with pytest.raises(ArchiveTooLarge, match="100:1"):
        map_upload(bytes(body), SENDER)


def test_zip_other_compression_is_refused():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_BZIP2) as zf:
        zf.writestr("v.csv", GOOD_VISITS)
    with pytest.raises(UnreadableUpload, match="compression"):
        map_upload(buf.getvalue(), SENDER)


@pytest.fixture(scope="module")
def zip_bomb(tmp_path_factory) -> bytes:
    """1 GB of zeros in one entry, written by streaming (never held in memory): ~4.7 MB."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.zip"
    zeros = bytes(1 << 20)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open("exports/visits.csv", "w") as entry:
            entry.write(GOOD_VISITS)
            for _ in range(1024):
                entry.write(zeros)
    return path.read_bytes()


def _refused_within(body: bytes, max_bytes: int) -> ArchiveTooLarge:
    tracemalloc.start()
    try:
        with pytest.raises(ArchiveTooLarge) as info:
            map_upload(body, SENDER, "bomb.zip")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < max_bytes, f"peak {peak} bytes"
    return info.value


def test_zip_bomb_is_refused_from_its_directory(zip_bomb):
    assert len(zip_bomb) < 20 * 1024 * 1024
    assert "200 MB" in str(_refused_within(zip_bomb, 16 * 1024 * 1024))


def test_zip_bomb_is_refused_while_streaming_when_sizes_are_not_trusted(zip_bomb, monkeypatch):
    # With the declared sizes ignored, the bytes actually decompressed are counted and the
    # upload is refused (at 200 MB: 100 x 4.7 MB compressed would allow more) without the
    # output ever being held.
    monkeypatch.setattr(anhui_csv, "_check_declared", lambda infos: None)
    assert "200 MB" in str(_refused_within(zip_bomb, 16 * 1024 * 1024))


def test_zip_bomb_with_lying_sizes_is_refused(zip_bomb):
    # Central directory and local header claim 1 MB unpacked: refused, never unpacked to 1 GB.
    lying = bytearray(zip_bomb)
    for sig, size_at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = lying.find(sig)
        lying[at + size_at:at + size_at + 4] = (1 << 20).to_bytes(4, "little")
    with pytest.raises(UnreadableUpload):
        map_upload(bytes(lying), SENDER)

# ---------------------------------------------------------------------------------------------
# Validity and determinism
# ---------------------------------------------------------------------------------------------

ALL_FIXTURES = ["patients_gbk.csv", "visits_gbk.csv", "labs_gbk.csv", "visits_utf8_bom.csv",
                "quirks.csv", "upload.zip"]


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_all_resources_are_valid_r4_with_deterministic_ids(name):
    result = map_upload(fixture(name), SENDER, name)
    assert result.records
    for rec in result.records:
        assert rec.hospital == SENDER
        assert "id" not in rec.patient
        validate(rec.patient)
        for resource in rec.resources:
            validate(resource)
            assert re.fullmatch(r"[0-9a-f-]{36}", resource["id"])


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_two_uploads_of_the_same_file_map_identically(name):
    first, second = (map_upload(fixture(name), SENDER, name) for _ in range(2))
    assert [(r.key, r.patient, r.resources) for r in first.records] == \
           [(r.key, r.patient, r.resources) for r in second.records]


def test_same_lab_result_in_two_different_uploads_has_one_key_and_id():
    whole = map_upload(fixture("labs_gbk.csv"), SENDER, "labs.csv")
    lines = fixture("labs_gbk.csv").decode("gbk").splitlines()
    re_export = csv_bytes(lines[0], lines[4], lines[1], encoding="utf-8")  # other order, other file
    again = map_upload(make_zip({"x/re.csv": re_export}), SENDER, "re.zip")
    old = {r.key: one(r, "Observation") for r in whole.records}
    for rec in again.records:
        assert one(rec, "Observation") == old[rec.key]

# ---------------------------------------------------------------------------------------------
# Robustness: nothing but the documented exceptions, whatever the bytes
# ---------------------------------------------------------------------------------------------

ALLOWED = (UnreadableUpload, ForeignSender)  # ArchiveTooLarge is an UnreadableUpload


def _map_or_refuse(body: bytes) -> None:
    try:
        result = map_upload(body, SENDER, "f.csv")
    except ALLOWED:
        return
    for rec in result.records:
        for resource in rec.resources:
            validate(resource)
    for rejection in result.rejected:
        assert not re.search(r"\d{15}", rejection.reason + rejection.location)


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_random_bytes(body):
    _map_or_refuse(body)


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(ALL_FIXTURES), st.lists(
    st.tuples(st.integers(0, 10_000), st.sampled_from(["flip", "insert", "delete"]),
              st.binary(min_size=1, max_size=4)), min_size=1, max_size=6))
def test_mutated_fixtures(name, mutations):
    body = bytearray(fixture(name))
    for at, how, data in mutations:
        at %= max(len(body), 1)
        if how == "flip":
            body[at:at + len(data)] = data
        elif how == "insert":
            body[at:at] = data
        else:
            del body[at:at + len(data)]
    _map_or_refuse(bytes(body))


CELLS = st.one_of(st.text(max_size=20), st.sampled_from([
    "3.40104E+17", ZHANG, LI_SI, "340202650908031", "45356", "60", "合计", "1e999999999",
    "<0.5", "阴性", "↑", "是", "否", "门诊", "２０２４年３月５日", "=\"1\"", "-", ",", '"', "\n"]))


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([VH, PH, LH]), st.lists(st.lists(CELLS, max_size=14), max_size=6))
def test_random_cells_under_a_real_header(header, rows):
    import csv as csvlib
    buf = io.StringIO()
    writer = csvlib.writer(buf)
    writer.writerow(header.split(","))
    writer.writerows(rows)
    _map_or_refuse(buf.getvalue().encode("utf-8"))
