"""Shanghai HL7 v2 mapper: every quirk of world/formats/shanghai-hl7v2.md, the ACKs, the peers."""

from __future__ import annotations

import base64
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mappers import er7, hl7_ack
from mappers import shanghai_hl7v2 as sh
from mappers.common import (DICOM_UID_SYSTEM, HOSPITAL_PATIENT_NO_SYSTEM, ICD10_SYSTEM, IMAGING_REPORT_SYSTEM, INSURANCE_CARD_SYSTEM, LAB_REPORT_SYSTEM, LOINC_SYSTEM, OUTPATIENT_NO_SYSTEM, PATIENT_REF, RESIDENT_ID_SYSTEM, hospital_reference, make_id, validate)
from mappers.errors import ForeignSender, UnreadableUpload
from tests.support.hl7 import ack_segments

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures" / "sh"
PEERS = ROOT.parent / "shared" / "peers" / "hl7v2"
HP = "H31010100001"  # 上海市黄浦区第一医院
XH = "H31010400007"  # 上海市徐汇区中心医院
QP = "H31011800012"  # 上海市青浦区中心医院
PD = "H31011500003"  # 上海市浦东新区花木社区卫生服务中心
NOW = datetime(2024, 3, 15, 9, 30, 5)


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def mapped(name: str, sender: str = HP) -> sh.MessageResult:
    return sh.map_message(fixture(name), sender)


def only_record(result: sh.MessageResult):
    assert result.ack_code == "AA", result.errors
    assert len(result.result.records) == 1
    return result.result.records[0]


def of_type(record, kind: str) -> list[dict]:
    return [r for r in record.resources if r["resourceType"] == kind]


def by_code(record, code: str) -> dict:
    return next(o for o in of_type(record, "Observation")
                if any(c.get("code") == code for c in o["code"].get("coding", [])))


# ---------------------------------------------------------------------------------------------
# ADT
# ---------------------------------------------------------------------------------------------


def test_a04_format_example_maps_patient_encounter_condition_allergy():
    result = mapped("adt_a04.hl7")
    record = only_record(result)
    assert (result.control_id, result.sending_facility, result.message_type, result.version) == (
        "MSG0000123", HP, "ADT^A04", "2.5")
    assert record.key == f"{HP}|MZ2024031500077"
    assert record.hospital == HP
    patient = record.patient
    assert "id" not in patient and "managingOrganization" not in patient
    assert {"system": RESIDENT_ID_SYSTEM, "value": "310101199003071230"} in patient["identifier"]
    assert {"system": HOSPITAL_PATIENT_NO_SYSTEM, "value": "000123456",
            "assigner": hospital_reference(HP)} in patient["identifier"]
    assert patient["name"] == [{"text": "张三", "family": "张", "given": ["三"]}]
    assert patient["gender"] == "male" and patient["birthDate"] == "1990-03-07"
    assert patient["telecom"] == [{"system": "phone", "value": "13900000000", "use": "home"}]
    address = patient["address"][0]
    assert address["text"] == "上海市黄浦区南京东路1号"
    assert (address["city"], address["district"], address["postalCode"]) == (
        "上海市", "黄浦区", "200001")

    [encounter] = of_type(record, "Encounter")
    assert encounter["id"] == make_id("Encounter", HP, "MZ2024031500077")
    assert encounter["class"]["code"] == "AMB"
    assert encounter["identifier"] == [{"system": OUTPATIENT_NO_SYSTEM, "value": "MZ2024031500077",
                                        "assigner": hospital_reference(HP)}]
    assert encounter["period"] == {"start": "2024-03-15T09:30:00+08:00"}
    assert encounter["serviceProvider"] == hospital_reference(HP)
    assert encounter["serviceType"]["coding"][0]["code"] == "0301"
    assert encounter["serviceType"]["text"] == "呼吸内科"
    assert encounter["subject"] == {"reference": PATIENT_REF}
    [doctor] = of_type(record, "Practitioner")
    assert doctor["identifier"][0]["value"] == "D0456"
    assert encounter["participant"][0]["individual"]["reference"] == f"Practitioner/{doctor['id']}"

    [condition] = of_type(record, "Condition")
    assert condition["code"]["coding"][0] == {"code": "J06.900", "system": ICD10_SYSTEM,
                                              "display": "急性上呼吸道感染"}
    assert condition["recordedDate"] == "2024-03-15"
    assert condition["verificationStatus"]["coding"][0]["code"] == "confirmed"
    assert condition["encounter"]["reference"] == f"Encounter/{encounter['id']}"
    assert encounter["diagnosis"][0]["rank"] == 1
    assert encounter["diagnosis"][0]["condition"]["reference"] == f"Condition/{condition['id']}"

    [allergy] = of_type(record, "AllergyIntolerance")
    assert allergy["code"] == {"text": "青霉素"}
    assert allergy["category"] == ["medication"] and allergy["criticality"] == "high"
    assert allergy["reaction"] == [{"manifestation": [{"text": "皮疹"}], "severity": "severe"}]
    assert of_type(record, "Organization")[0]["identifier"][0]["value"] == HP
    for resource in [patient, *record.resources]:
        validate(resource)


def test_a08_updates_the_same_visit_with_the_same_ids():
    first, update = only_record(mapped("adt_a04.hl7")), only_record(mapped("adt_a08.hl7"))
    assert first.key == update.key
    assert of_type(first, "Encounter")[0]["id"] == of_type(update, "Encounter")[0]["id"]
    assert of_type(first, "Condition")[0]["id"] == of_type(update, "Condition")[0]["id"]
    assert {"system": INSURANCE_CARD_SYSTEM, "value": "SH0031201888"} in update.patient["identifier"]
    assert update.patient["telecom"] == [{"system": "phone", "value": "13900000001",
                                          "use": "mobile"}]
    conditions = of_type(update, "Condition")
    assert len(conditions) == 2
    assert conditions[1]["verificationStatus"]["coding"][0]["code"] == "provisional"  # W
    food = [a for a in of_type(update, "AllergyIntolerance") if a["category"] == ["food"]][0]
    assert food["criticality"] == "low" and food["reaction"][0]["severity"] == "mild"


def test_a01_inpatient_with_five_encoding_characters():
    record = only_record(mapped("adt_a01.hl7", XH))
    [encounter] = of_type(record, "Encounter")
    assert encounter["class"]["code"] == "IMP"
    assert record.key == f"{XH}|ZY2024040200015"
    assert {"system": RESIDENT_ID_SYSTEM, "value": "33042119850412002X"} in record.patient["identifier"]
    assert record.patient["gender"] == "female"
    assert [d["rank"] for d in encounter["diagnosis"]] == [1, 2]
    assert encounter["diagnosis"][0]["use"]["coding"][0]["code"] == "AD"  # A admitting
    allergy = of_type(record, "AllergyIntolerance")[0]
    assert "criticality" not in allergy and allergy["reaction"][0]["severity"] == "moderate"


def test_full_name_in_first_component_is_never_split():
    record = only_record(mapped("adt_fullname.hl7", QP))
    assert record.patient["name"] == [{"text": "欧阳娜娜"}]
    assert of_type(record, "Encounter")[0]["class"]["code"] == "EMER"


@pytest.mark.parametrize("xad, parts, line", [
    # XAD-1 starting with the district (the fixtures' form).
    ("黄浦区南京东路1号^^上海市^^200001^CHN", ("上海市", "上海市", "黄浦区"), "南京东路1号"),
    # A compound or community is never a district (the old regex took 曹杨新村小区 for one).
    ("曹杨新村小区12号^^上海市^^200062^CHN", ("上海市", "上海市", None), "曹杨新村小区12号"),
    ("安徽省合肥市长江西路小区3栋402室^^^^230000^CHN", ("安徽省", "合肥市", None), "长江西路小区3栋402室"),
    # District names holding 楼/路/镇, a patient from another province.
    ("鼓楼区中山路1号^^南京市^江苏省^210009^CHN", ("江苏省", "南京市", "鼓楼区"), "中山路1号"),
    ("路桥区银安街8号^^台州市^浙江省^^CHN", ("浙江省", "台州市", "路桥区"), "银安街8号"),
    ("镇海区招宝山街道^^宁波市^浙江省^^CHN", ("浙江省", "宁波市", "镇海区"), "招宝山街道"),
    # XAD-9 as a GB/T 2260 code or as a name, the street without the district.
    ("华新镇淮海路12号^^上海市^^201708^CHN^H^^310118", ("上海市", "上海市", "青浦区"), "华新镇淮海路12号"),
    ("华新镇淮海路12号^^上海市^^201708^CHN^H^^青浦区", ("上海市", "上海市", "青浦区"), "华新镇淮海路12号"),
])
def test_address_read_against_gb2260(xad, parts, line):
    message = fixture("adt_a04.hl7").replace("黄浦区南京东路1号^^上海市^^200001^CHN".encode(), xad.encode())
    address = only_record(sh.map_message(message, HP)).patient["address"][0]
    assert (address.get("state"), address.get("city"), address.get("district")) == parts
    assert address["line"] == [line]


def test_latin_address_keeps_its_parts_and_has_no_district():
    message = fixture("adt_a04.hl7").replace("黄浦区南京东路1号^^上海市^^200001^CHN".encode(),
                                             b"1 Nanjing Road East^Huangpu^Shanghai^^200001^CHN^H^^Huangpu")
    address = only_record(sh.map_message(message, HP)).patient["address"][0]
    assert address == {"text": "1 Nanjing Road East, Huangpu, Shanghai, 200001", "city": "Shanghai",
                       "line": ["1 Nanjing Road East", "Huangpu"], "postalCode": "200001", "country": "CHN",
                       "use": "home"}


@pytest.mark.parametrize("code, gender", sorted(sh.GENDERS.items()))
def test_gender_table_0001(code, gender):
    message = fixture("adt_a04.hl7").replace(b"|19900307|M|", f"|19900307|{code}|".encode())
    assert only_record(sh.map_message(message, HP)).patient["gender"] == gender


def test_unknown_gender_is_left_out_with_a_note():
    message = fixture("adt_a04.hl7").replace(b"|19900307|M|", b"|19900307|Q|")
    result = sh.map_message(message, HP)
    assert "gender" not in only_record(result).patient
    assert any("PID[1]-8" in n for n in result.result.notes)


@pytest.mark.parametrize("cls, code", [("O", "AMB"), ("E", "EMER"), ("I", "IMP")])
def test_patient_class(cls, code):
    message = fixture("adt_a04.hl7").replace(b"PV1|1|O|", f"PV1|1|{cls}|".encode())
    assert of_type(only_record(sh.map_message(message, HP)), "Encounter")[0]["class"]["code"] == code


def test_unknown_patient_class_is_ae_naming_pv1_2():
    result = sh.map_message(fixture("adt_a04.hl7").replace(b"PV1|1|O|", b"PV1|1|ff|"), HP)
    assert result.ack_code == "AE" and result.result.records == []
    assert result.errors[0][:3] == ("PV1", 1, 2) and result.errors[0].code == "103"


def test_visit_without_pv1_19_is_keyed_by_mr_number_and_visit_time():
    message = fixture("adt_a04.hl7").replace(b"|MZ2024031500077|", b"||")
    record = only_record(sh.map_message(message, HP))
    assert record.key == f"{HP}|MR:000123456|20240315093000"
    encounter = of_type(record, "Encounter")[0]
    assert encounter["id"] == make_id("Encounter", HP, "MR", "000123456", "20240315093000")
    assert "identifier" not in encounter


def test_adt_without_pv1_is_ae():
    message = b"\r".join(l for l in fixture("adt_a04.hl7").split(b"\r") if not l.startswith(b"PV1"))
    result = sh.map_message(message, HP)
    assert result.ack_code == "AE" and result.errors[0].segment == "PV1"


def test_bad_resident_id_is_ae_and_the_number_never_appears():
    result = mapped("bad_id.hl7")
    assert result.ack_code == "AE" and result.result.records == []
    error = result.errors[0]
    assert error[:3] == ("PID", 1, 3) and "check character" in error.reason
    ack = hl7_ack.build_ack(fixture("bad_id.hl7"), "AE", result.errors, "A1", now=NOW)
    assert b"310101199003071231" not in ack
    for rejection in result.result.rejected:
        assert "310101199003071231" not in rejection.reason + rejection.location


def test_a_reason_quoting_an_id_shaped_value_is_masked():
    message = fixture("adt_a04.hl7").replace(b"PV1|1|O|", b"PV1|1|310101199003071230|")
    result = sh.map_message(message, HP)
    assert result.ack_code == "AE"
    assert "310101199003071230" not in result.errors[0].reason
    assert "3101**********1230" in result.errors[0].reason


def test_pid3_without_any_keyable_identifier_is_ae():
    message = fixture("adt_a04.hl7").replace(
        b"310101199003071230^^^&2.16.156.10011.1.3&ISO^NNCHN~000123456^^^H31010100001^MR",
        b"X1^^^OTHER^PI")
    result = sh.map_message(message, HP)
    assert result.ack_code == "AE" and result.errors[0][:3] == ("PID", 1, 3)


def test_other_identifier_types_are_kept_with_a_generic_system():
    message = fixture("adt_a04.hl7").replace(b"^MR||", b"^MR~P1234567^^^GA^PI||")
    ids = only_record(sh.map_message(message, HP)).patient["identifier"]
    assert {"system": "urn:yrdhub:hl7v2-identifier:GA", "value": "P1234567",
            "type": {"coding": [{"system": sh.V2_0203, "code": "PI"}]}} in ids


def test_legacy_15_digit_resident_id_is_widened():
    message = fixture("adt_a04.hl7").replace(b"310101199003071230^", b"310101900307123^")
    ids = only_record(sh.map_message(message, HP)).patient["identifier"]
    assert {"system": RESIDENT_ID_SYSTEM, "value": "310101199003071230"} in ids


# ---------------------------------------------------------------------------------------------
# ORU lab
# ---------------------------------------------------------------------------------------------


def test_lab_report_and_every_value_type():
    result = mapped("oru_r01_lab.hl7")
    record = only_record(result)
    assert record.key == f"{HP}|LIS20240315001"
    [report] = of_type(record, "DiagnosticReport")
    assert report["id"] == make_id("DiagnosticReport", HP, "LIS20240315001")
    assert report["status"] == "final"
    assert report["category"][0]["coding"][0]["code"] == "LAB"
    assert report["identifier"][0]["system"] == LAB_REPORT_SYSTEM
    assert report["identifier"][0]["value"] == "LIS20240315001"
    assert report["effectiveDateTime"] == "2024-03-15T09:45:00+08:00"
    assert report["encounter"] == {"reference": f"Encounter/{make_id('Encounter', HP, 'MZ2024031500077')}"}
    observations = of_type(record, "Observation")
    assert len(observations) == 10
    assert report["result"] == [{"reference": f"Observation/{o['id']}"} for o in observations]

    glucose = by_code(record, "14749-6")
    assert glucose["code"]["coding"][0]["system"] == LOINC_SYSTEM
    assert glucose["valueQuantity"] == {"value": 7.8, "unit": "mmol/L"}
    assert glucose["referenceRange"][0]["low"]["value"] == 3.9
    assert glucose["interpretation"][0]["coding"][0]["code"] == "H"
    assert glucose["status"] == "final"
    assert glucose["effectiveDateTime"] == "2024-03-15T09:45:00+08:00"
    assert glucose["category"][0]["coding"][0]["code"] == "laboratory"
    wbc = by_code(record, "6690-2")
    assert wbc["valueQuantity"]["system"] == "http://unitsofmeasure.org"
    assert by_code(record, "2160-0")["interpretation"][0]["coding"][0]["code"] == "HH"
    assert by_code(record, "1988-5")["valueQuantity"] == {"value": 0.5, "unit": "mg/L",
                                                          "comparator": "<"}
    assert by_code(record, "U-RBC")["valueRange"] == {"low": {"value": 0, "unit": "/HPF"},
                                                      "high": {"value": 3, "unit": "/HPF"}}
    titre = by_code(record, "22322-2")
    assert titre["valueRatio"] == {"numerator": {"value": 1}, "denominator": {"value": 320}}
    assert titre["interpretation"] == [{"text": "W"}]  # unknown flag tolerated
    assert any("OBX[6]-8" in n for n in result.result.notes)
    assert by_code(record, "5195-3")["valueCodeableConcept"]["coding"][0]["code"] == "260385009"
    assert by_code(record, "L-ABO")["valueString"] == "A型 Rh(D)阳性"
    assert by_code(record, "L-NOTE")["valueString"] == "标本轻度溶血\n结果仅供参考"  # FT \.br\
    assert by_code(record, "L-SPEC")["valueDateTime"] == "2024-03-15"
    for resource in record.resources:
        validate(resource)


def test_corrected_report_has_the_same_key_and_ids_and_replaces_values():
    original, corrected = only_record(mapped("oru_r01_lab.hl7")), only_record(
        mapped("oru_r01_lab_corrected.hl7"))
    assert original.key == corrected.key
    assert [r["id"] for r in original.resources] == [r["id"] for r in corrected.resources]
    assert of_type(corrected, "DiagnosticReport")[0]["status"] == "corrected"
    glucose = by_code(corrected, "14749-6")
    assert glucose["status"] == "corrected" and glucose["valueQuantity"]["value"] == 6.8


@pytest.mark.parametrize("code, status", [("F", "final"), ("C", "corrected"),
                                          ("P", "preliminary"), ("X", "cancelled")])
def test_report_status_table(code, status):
    message = fixture("oru_r01_lab.hl7").replace(b"||LAB|F", f"||LAB|{code}".encode())
    assert of_type(only_record(sh.map_message(message, HP)), "DiagnosticReport")[0]["status"] == status


def test_unknown_report_status_is_ae_naming_obr_25():
    message = fixture("oru_r01_lab.hl7").replace(b"||LAB|F", b"||LAB|Q")
    result = sh.map_message(message, HP)
    assert result.ack_code == "AE" and result.errors[0][:3] == ("OBR", 1, 25)


def obx_message(value_type: str, value: str, unit: str = "", flags: str = "") -> bytes:
    head = b"\r".join(fixture("oru_r01_lab.hl7").split(b"\r")[:5])
    obx = f"OBX|1|{value_type}|T1^测试^L||{value}|{unit}||{flags}|||F"
    return head + b"\r" + obx.encode() + b"\r"


@pytest.mark.parametrize("value_type, value, expected", [
    ("NM", "5.6", {"valueQuantity": {"value": 5.6, "unit": "g/L"}}),
    ("NM", "阴性", {"valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct",
                                                          "code": "260385009",
                                                          "display": "Negative"}],
                                              "text": "阴性"}}),
    ("SN", ">^1000", {"valueQuantity": {"value": 1000, "unit": "g/L", "comparator": ">"}}),
    ("SN", "^7.2", {"valueQuantity": {"value": 7.2, "unit": "g/L"}}),
    ("SN", "=^7.2", {"valueQuantity": {"value": 7.2, "unit": "g/L"}}),
    ("SN", "<=^3", {"valueQuantity": {"value": 3, "unit": "g/L", "comparator": "<="}}),
    ("SN", "^10^-^20", {"valueRange": {"low": {"value": 10, "unit": "g/L"},
                                       "high": {"value": 20, "unit": "g/L"}}}),
    ("SN", "^2^+", {"valueString": "2+"}),
    ("SN", "<>^5", {"valueString": "<>^5"}),
    ("SN", "^abc", {"valueString": "^abc"}),
    ("NR", "3^9", {"valueRange": {"low": {"value": 3, "unit": "g/L"},
                                  "high": {"value": 9, "unit": "g/L"}}}),
    ("CE", "A01^阳性^L", {"valueCodeableConcept": {
        "coding": [{"code": "A01", "system": "urn:yrdhub:local-lab-code", "display": "阳性"}],
        "text": "阳性"}}),
    ("TX", "第一行~第二行", {"valueString": "第一行\n第二行"}),
    ("TS", "202403150930+0100", {"valueDateTime": "2024-03-15T09:30:00+01:00"}),
    ("DT", "20240230", {"valueString": "20240230"}),
    ("TM", "0930", {"valueTime": "09:30:00"}),
    ("ED", "^text^plain^Base64^SGVsbG8=", {"valueString": "^text^plain^Base64^SGVsbG8="}),
    ("ZZ", "任何^内容", {"valueString": "任何^内容"}),
])
def test_value_types(value_type, value, expected):
    record = only_record(sh.map_message(obx_message(value_type, value, "g/L"), HP))
    observation = of_type(record, "Observation")[0]
    values = {k: v for k, v in observation.items() if k.startswith("value")}
    assert values == expected
    validate(observation)


def test_empty_value_gives_an_observation_without_value():
    observation = of_type(only_record(sh.map_message(obx_message("NM", ""), HP)), "Observation")[0]
    assert not [k for k in observation if k.startswith("value")]


@pytest.mark.parametrize("flags", ["XYZ", "<", "A~ZZ", "H^High^HL70078"])
def test_odd_flags_are_tolerated(flags):
    result = sh.map_message(obx_message("NM", "1", flags=flags), HP)
    assert result.ack_code == "AA"


def test_bad_obr_is_rejected_but_good_obr_maps():
    lines = fixture("oru_r01_lab.hl7").rstrip(b"\r").split(b"\r")
    second = [b"OBR|2|||LAB9^x^L|||20240315||||||||||||||||||LAB|F", b"OBX|1|NM|A^a^L||1||||||F"]
    result = sh.map_message(b"\r".join(lines + second) + b"\r", HP)
    assert result.ack_code == "AE"
    assert len(result.result.records) == 1
    assert result.errors[0][:3] == ("OBR", 2, 3)


# ---------------------------------------------------------------------------------------------
# ORU imaging
# ---------------------------------------------------------------------------------------------


def test_rad_report_text_and_study_uid_110180():
    record = only_record(mapped("oru_r01_rad.hl7"))
    [report] = of_type(record, "DiagnosticReport")
    assert report["category"][0]["coding"][0]["code"] == "RAD"
    assert report["identifier"][0]["system"] == IMAGING_REPORT_SYSTEM
    assert report["conclusion"] == "右肺下叶少许炎症，建议抗炎治疗后复查。"
    text = base64.b64decode(report["presentedForm"][0]["data"]).decode("utf-8")
    assert text.startswith("双肺纹理增多") and "纵隔内" in text and text.endswith("复查。")
    assert not of_type(record, "Observation")
    [study] = of_type(record, "ImagingStudy")
    assert study["identifier"] == [{"system": DICOM_UID_SYSTEM,
                                    "value": "urn:oid:1.2.156.112605.14038013507.20240315140000.1"}]
    assert study["status"] == "available"
    assert report["imagingStudy"] == [{"reference": f"ImagingStudy/{study['id']}"}]
    validate(study)


def test_rad_report_with_older_113014_and_zone_and_modality():
    record = only_record(mapped("oru_r01_rad_113014.hl7", XH))
    [study] = of_type(record, "ImagingStudy")
    assert study["identifier"][0]["value"] == "urn:oid:1.2.156.112605.14038013507.20240403083000.7"
    assert study["modality"][0]["code"] == "CT"
    [report] = of_type(record, "DiagnosticReport")
    assert report["status"] == "preliminary"
    assert report["conclusion"].endswith("余冠状动脉未见明显狭窄。")
    assert "\n" in report["conclusion"]
    assert report["effectiveDateTime"] == "2024-04-03T08:30:00+08:00"


def test_rad_inferred_from_study_uid_when_obr24_is_empty():
    message = fixture("oru_r01_rad.hl7").replace(b"||RAD|F", b"|||F")
    report = of_type(only_record(sh.map_message(message, HP)), "DiagnosticReport")[0]
    assert report["category"][0]["coding"][0]["code"] == "RAD"


def test_bad_study_uid_is_ae():
    message = fixture("oru_r01_rad.hl7").replace(b"1.2.156.112605", b"1.2.abc.112605")
    result = sh.map_message(message, HP)
    assert result.ack_code == "AE" and result.errors[0][:3] == ("OBX", 3, 5)


# ---------------------------------------------------------------------------------------------
# Quirks: escapes, line ends, BOM, batches, encoding characters, versions
# ---------------------------------------------------------------------------------------------


def test_escapes_in_text():
    record = only_record(mapped("escapes.hl7"))
    observations = of_type(record, "Observation")
    assert observations[0]["valueString"] == (
        "平均血压 128^82 mmHg\n管道|符号 子&分量 重复~符 转义\\符 中文编码")
    assert observations[1]["valueString"] == "A&B 正常"


def test_bom_and_crlf():
    assert fixture("crlf_bom.hl7").startswith(er7.BOM) and b"\r\n" in fixture("crlf_bom.hl7")
    record = only_record(mapped("crlf_bom.hl7", QP))
    assert record.patient["name"][0]["text"] == "赵敏"


def test_a_batch_maps_every_message_in_it():
    results = [sh.map_message(m, PD) for m in er7.split_messages(fixture("batch.hl7"))]
    assert [r.ack_code for r in results] == ["AA", "AA", "AA"]
    assert [r.message_type for r in results] == ["ADT^A04", "ORU^R01", "ADT^A08"]


def test_leading_garbage_is_ar():
    assert sh.map_message(b"hello\r", HP).ack_code == "AR"


def test_lf_only_segment_ends():
    message = fixture("adt_a04.hl7").replace(b"\r", b"\n")
    assert only_record(sh.map_message(message, HP)).key == f"{HP}|MZ2024031500077"


@pytest.mark.parametrize("version", ["2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.8"])
def test_versions_accepted(version):
    message = fixture("adt_a04.hl7").replace(b"|P|2.5|", f"|P|{version}|".encode())
    assert sh.map_message(message, HP).ack_code == "AA"


@pytest.mark.parametrize("version", ["2.2", "2.9", "3.0", ""])
def test_other_versions_are_ar(version):
    message = fixture("adt_a04.hl7").replace(b"|P|2.5|", f"|P|{version}|".encode())
    result = sh.map_message(message, HP)
    assert result.ack_code == "AR"
    assert result.errors[0][:3] == ("MSH", 1, 12) and result.errors[0].code == "203"


@pytest.mark.parametrize("body", [b"", b"hello world", b"\x00\xff\xfe", b"PID|1||x\r",
                                  b"MSH", b"MSH|^~|x", b"MSH|^~\\\\&|a|b|c|d|e||ADT^A01|1|P|2.5",
                                  b"MSH|^~\\&|A|" + HP.encode() + b"|\xff\xfe||"])
def test_not_hl7_is_ar(body):
    result = sh.map_message(body, HP)
    assert result.ack_code == "AR" and result.errors and result.errors[0].reason


def test_gb18030_declared_in_msh18_is_read():
    message = fixture("adt_a04.hl7").decode("utf-8").replace("UNICODE UTF-8", "GB 18030-2000")
    record = only_record(sh.map_message(message.encode("gb18030"), HP))
    assert record.patient["name"][0]["text"] == "张三"


@pytest.mark.parametrize("mtype", [b"RDE^O11^RDE_O11", b"BAR^P12", b"ORM^O01", b"ADT^A60"])
def test_unsupported_message_types_are_ae(mtype):
    message = fixture("adt_a04.hl7").replace(b"ADT^A04^ADT_A01", mtype)
    result = sh.map_message(message, HP)
    assert result.ack_code == "AE" and result.result.records == []
    assert result.errors[0][:3] == ("MSH", 1, 9) and "not supported" in result.errors[0].reason


def test_trigger_from_evn_when_msh9_has_none():
    message = fixture("adt_a04.hl7").replace(b"ADT^A04^ADT_A01", b"ADT")
    assert sh.map_message(message, HP).message_type == "ADT^A04"


def test_sending_facility_other_than_sender_is_ae():
    result = mapped("adt_a04.hl7", sender=XH)
    assert result.ack_code == "AE" and result.errors[0][:3] == ("MSH", 1, 4)
    assert result.result.records == []


def test_pv1_naming_another_hospital_is_ae():
    message = fixture("adt_a04.hl7").replace(b"0301^^^H31010100001", b"0301^^^H31010400007")
    result = sh.map_message(message, HP)
    assert result.ack_code == "AE" and result.errors[0][:3] == ("PV1", 1, 3)


def test_same_message_twice_maps_identically():
    assert mapped("oru_r01_lab.hl7").result.records == mapped("oru_r01_lab.hl7").result.records


def test_hl7_datetime():
    assert sh.hl7_datetime("20240315") == ("2024-03-15", False)
    assert sh.hl7_datetime("202403") == ("2024-03", False)
    assert sh.hl7_datetime("2024031509") == ("2024-03-15T09:00:00+08:00", True)
    assert sh.hl7_datetime("20240315093012.12-0500") == ("2024-03-15T09:30:12.12-05:00", True)
    for bad in ("20240230", "2024031", "20241315", "202403150960", "20240315+2500x"):
        with pytest.raises(sh.InvalidValue):
            sh.hl7_datetime(bad)


# ---------------------------------------------------------------------------------------------
# map_upload (the common contract)
# ---------------------------------------------------------------------------------------------


def test_map_upload_merges_a_batch():
    result = sh.map_upload(fixture("batch.hl7"), PD)
    assert len(result.records) == 3 and result.rejected == []
    assert result.records[0].key == result.records[2].key  # A04 then A08 of one visit


def test_map_upload_rejections_are_located():
    body = fixture("adt_a04.hl7") + fixture("bad_id.hl7")
    result = sh.map_upload(body, HP)
    assert len(result.records) == 1
    [rejection] = result.rejected
    assert rejection.location == "MSG0000199 PID[1]-3"


def test_map_upload_foreign_and_unreadable():
    with pytest.raises(ForeignSender):
        sh.map_upload(fixture("adt_a04.hl7"), XH)
    with pytest.raises(UnreadableUpload):
        sh.map_upload(b"not hl7 at all", HP)
    with pytest.raises(UnreadableUpload):
        sh.map_upload(b"", HP)


# ---------------------------------------------------------------------------------------------
# Peers: every file read without an exception
# ---------------------------------------------------------------------------------------------

PEER_FILES = sorted(p for p in PEERS.rglob("*") if p.is_file() and not p.name.startswith("LICENSE"))


def msh4(message: bytes) -> str:
    line = message.split(b"\r", 1)[0].decode("utf-8", "replace")
    if not line.startswith("MSH") or len(line) < 4:
        return ""
    fields = line.split(line[3])
    return fields[3].split("^")[0] if len(fields) > 3 else ""


def test_peer_folder_is_there():
    names = {p.parent.name for p in PEER_FILES}
    assert {"python-hl7", "linuxforhealth", "microsoft-fhir-converter", "hl7-v2-to-fhir"} <= names


@pytest.mark.parametrize("path", PEER_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_peer_file_is_read(path):
    messages = er7.split_messages(path.read_bytes())
    assert messages
    for message in messages:
        result = sh.map_message(message, msh4(message))
        assert result.ack_code in ("AA", "AE", "AR")
        if result.ack_code == "AA":
            assert result.result.records
            for record in result.result.records:
                validate(record.patient)
                for resource in record.resources:
                    validate(resource)
        else:
            assert result.errors and all(e.reason for e in result.errors)
            assert "internal error" not in result.errors[0].reason
        ack = hl7_ack.build_ack(message, result.ack_code, result.errors, "X1")
        assert ack_segments(ack)["MSA"][0][1] == result.ack_code


@pytest.mark.parametrize("name, code, records", [
    ("microsoft-fhir-converter/ADT-A01-01.hl7", "AA", 1),
    ("microsoft-fhir-converter/ADT04-251.hl7", "AA", 1),
    ("microsoft-fhir-converter/LAB-ORU-1.hl7", "AE", 0),  # MSH-4 empty
    ("microsoft-fhir-converter/LRI_2.0-NG_CBC_Typ_Message.hl7", "AA", 1),
    ("hl7-v2-to-fhir/hl7-v2tofhir_ORU_R01.hl7", "AA", 1),
    ("microsoft-fhir-converter/ADT-A60-01.hl7", "AE", 0),
    ("microsoft-fhir-converter/RDE-O11-01.hl7", "AE", 0),
    ("hl7-v2-to-fhir/hl7-v2tofhir_ORM_O01.hl7", "AE", 0),
    ("linuxforhealth/sample_unix.hl7", "AR", 0),  # MSH-2 "^~\\&": two escape characters
])
def test_peer_outcomes(name, code, records):
    [message] = er7.split_messages((PEERS / name).read_bytes())
    result = sh.map_message(message, msh4(message))
    assert result.ack_code == code
    assert len(result.result.records) == records


def test_python_hl7_batch_and_file_samples_split_to_one_message():
    for name in ("sample_batch.hl7", "sample_file.hl7"):
        [message] = er7.split_messages((PEERS / "python-hl7" / name).read_bytes())
        assert message.startswith(b"MSH|^~\\&||ABCHS|")


# ---------------------------------------------------------------------------------------------
# Hypothesis: never raise
# ---------------------------------------------------------------------------------------------

SAMPLES = [fixture(p.name) for p in sorted(FIXTURES.glob("*.hl7"))]


def never_raises(body: bytes) -> None:
    for message in er7.split_messages(body) or [body]:
        result = sh.map_message(message, HP)
        assert result.ack_code in ("AA", "AE", "AR")
        assert not any("internal error" in e.reason for e in result.errors), result.errors
        hl7_ack.build_ack(message, result.ack_code, result.errors, "H1")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_random_bytes_never_raise(body):
    never_raises(body)
    never_raises(b"MSH|^~\\&|" + body)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SAMPLES), st.data())
def test_mutated_fixtures_never_raise(sample, data):
    body = bytearray(sample)
    for _ in range(data.draw(st.integers(1, 6))):
        op = data.draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
        pos = data.draw(st.integers(0, max(len(body) - 1, 0)))
        if op == "flip" and body:
            body[pos] = data.draw(st.sampled_from(list(b"|^~\\&\r\n#0aX\x00\xff")))
        elif op == "delete" and body:
            del body[pos:pos + data.draw(st.integers(1, 20))]
        elif op == "insert":
            body[pos:pos] = data.draw(st.sampled_from(
                [b"|", b"^^", b"\\X\\", b"\\XZ", b"~", b"\r", "张".encode(), b"\\.br\\", b'""']))
        else:
            del body[pos:]
    never_raises(bytes(body))
