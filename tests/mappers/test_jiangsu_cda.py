"""Jiangsu CDA R2 (WS/T 500) mapper: every quirk of world/formats/jiangsu-cda.md, each kind of
document with its values, the XML attacks, the C-CDA peers, and fuzzing."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mappers.common import (ICD10_SYSTEM, LOCAL_LAB_SYSTEM, LOINC_SYSTEM, PATIENT_REF, RESIDENT_ID_SYSTEM, MapResult, make_id)
from mappers.errors import ForeignSender, UnreadableUpload
from mappers.jiangsu_cda import CdaRecord, map_upload, stale_version_rejection

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "js"
PEERS = Path(__file__).resolve().parents[3] / "shared" / "peers" / "cda" / "ccda"

WUJIANG = "H32050900012"     # 苏州市吴江区第一人民医院
GULOU = "H32010600001"       # 南京市鼓楼区人民医院
GUSU_TCM = "H32050800005"    # 苏州市姑苏区中医医院
MOLING = "H32011500009"      # 南京市江宁区秣陵社区卫生服务中心

SENDERS = {
    "outpatient.xml": WUJIANG, "outpatient_v2.xml": WUJIANG, "narrative_only.xml": WUJIANG,
    "unknown_section.xml": WUJIANG, "lab_report.xml": GULOU, "nullflavor.xml": GULOU,
    "imaging_report.xml": GUSU_TCM, "gbk.xml": MOLING,
}
ATTACKS = ("xxe.xml", "billion_laughs.xml", "external_dtd.xml")


def raw(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def mapped(name: str) -> CdaRecord:
    result = map_upload(raw(name), SENDERS[name])
    assert result.rejected == [], result.rejected
    assert len(result.records) == 1
    return result.records[0]


def of_type(record: CdaRecord, resource_type: str) -> list[dict]:
    return [r for r in record.resources if r["resourceType"] == resource_type]


def one(record: CdaRecord, resource_type: str) -> dict:
    found = of_type(record, resource_type)
    assert len(found) == 1, [r["resourceType"] for r in record.resources]
    return found[0]


def by_id(record: CdaRecord, reference: dict) -> dict:
    rtype, rid = reference["reference"].split("/")
    return next(r for r in record.resources if r["resourceType"] == rtype and r["id"] == rid)


def variant(name: str, old: str, new: str, count: int = 1) -> bytes:
    text = raw(name).decode("utf-8")
    assert text.count(old) >= count, old
    return text.replace(old, new, count).encode("utf-8")


# ---------------------------------------------------------------------------------------------
# Outpatient record (C0002)
# ---------------------------------------------------------------------------------------------


def test_outpatient_patient_is_keyed_by_resident_id_without_the_visit_number():
    record = mapped("outpatient.xml")
    patient = record.patient
    assert "id" not in patient and "managingOrganization" not in patient
    assert patient["identifier"][0] == {"use": "official", "system": RESIDENT_ID_SYSTEM,
                                        "value": "320509197811230012"}
    assert {"system": "urn:oid:2.16.156.10011.1.19", "value": "JK3205090012345"} in \
        patient["identifier"]
    # In Jiangsu the outpatient number is per visit: it must not become a patient identifier.
    assert all(i["value"] != "MZ2024031500881" for i in patient["identifier"])
    assert patient["name"] == [{"text": "周建国"}]
    assert patient["gender"] == "male" and patient["birthDate"] == "1978-11-23"
    assert patient["telecom"] == [{"system": "phone", "value": "13951100000", "use": "mobile"}]
    assert patient["address"] == [{
        "text": "江苏省苏州市吴江区松陵镇流虹路88号3幢502室", "line": ["松陵镇流虹路88号3幢502室"],
        "district": "吴江区", "city": "苏州市", "state": "江苏省", "postalCode": "215200"}]


OUTPATIENT_ADDR = """<houseNumber>松陵镇流虹路88号3幢502室</houseNumber>
        <county>吴江区</county>
        <city>苏州市</city>
        <state>江苏省</state>"""


@pytest.mark.parametrize("addr, parts, line", [
    # Parts whose district names hold 楼/路/镇.
    ("<houseNumber>中山路1号</houseNumber><county>鼓楼区</county><city>南京市</city><state>江苏省</state>",
     ("江苏省", "南京市", "鼓楼区"), "中山路1号"),
    ("<streetName>银安街</streetName><county>路桥区</county><city>台州市</city>",
     ("浙江省", "台州市", "路桥区"), "银安街"),
    ("<township>招宝山街道</township><county>镇海区</county><city>宁波市</city><state>浙江省</state>",
     ("浙江省", "宁波市", "镇海区"), "招宝山街道"),
    # A compound put in <county> is still no district.
    ("<houseNumber>3栋402室</houseNumber><county>长江西路小区</county><city>合肥市</city><state>安徽省</state>",
     ("安徽省", "合肥市", None), "长江西路小区3栋402室"),
    # Free text only.
    ("安徽省合肥市长江西路小区3栋402室", ("安徽省", "合肥市", None), "长江西路小区3栋402室"),
    ("南京市鼓楼区中山路1号", ("江苏省", "南京市", "鼓楼区"), "中山路1号"),
])
def test_address_read_against_gb2260(addr, parts, line):
    body = variant("outpatient.xml", OUTPATIENT_ADDR, addr)
    (record,) = map_upload(body, SENDERS["outpatient.xml"]).records
    address = record.patient["address"][0]
    assert (address.get("state"), address.get("city"), address.get("district")) == parts
    assert address["line"] == [line]


def test_outpatient_encounter_is_the_visit_of_the_outpatient_number():
    record = mapped("outpatient.xml")
    assert record.key == f"{WUJIANG}|DOC-H32050900012-20240315-000881"
    assert record.version == 1 and record.hospital == WUJIANG
    enc = one(record, "Encounter")
    assert enc["id"] == make_id("Encounter", WUJIANG, "visit", "MZ2024031500881")
    assert enc["identifier"][0]["system"] == "urn:oid:2.16.156.10011.1.11"
    assert enc["identifier"][0]["value"] == "MZ2024031500881"
    assert enc["identifier"][0]["assigner"] == {
        "reference": f"Organization/{make_id('Organization', WUJIANG)}",
        "identifier": {"system": "urn:oid:2.16.156.10011.1.5", "value": WUJIANG}}
    assert enc["class"]["code"] == "AMB"
    assert enc["period"] == {"start": "2024-03-15T10:15:00+08:00"}
    assert enc["serviceType"]["coding"][0]["code"] == "0401"
    assert enc["serviceType"]["text"] == "消化内科"
    assert enc["reasonCode"] == [{"text": "上腹部隐痛伴反酸3月，加重1周"}]
    org = one(record, "Organization")
    assert org["name"] == "苏州市吴江区第一人民医院"
    assert org["identifier"][0]["value"] == WUJIANG
    doctor = one(record, "Practitioner")
    assert doctor["name"] == [{"text": "陈红"}] and doctor["identifier"][0]["value"] == "D2231"


def test_outpatient_diagnoses_keep_the_national_code_and_the_first_is_principal():
    record = mapped("outpatient.xml")
    conditions = of_type(record, "Condition")
    assert [c["code"]["coding"][0]["code"] for c in conditions] == ["K29.700", "K21.900"]
    assert all(c["code"]["coding"][0]["system"] == ICD10_SYSTEM for c in conditions)
    assert conditions[0]["code"]["text"] == "慢性胃炎"
    assert conditions[0]["category"][0]["coding"][0]["code"] == "encounter-diagnosis"
    assert conditions[0]["subject"] == {"reference": PATIENT_REF}
    assert conditions[0]["recordedDate"] == "2024-03-15T10:30:00+08:00"
    assert conditions[0]["onsetDateTime"] == "2024-03-15T10:25:00+08:00"
    diagnosis = one(record, "Encounter")["diagnosis"]
    assert [(by_id(record, d["condition"])["code"]["coding"][0]["code"], d["rank"],
             d["use"]["coding"][0]["code"]) for d in diagnosis] == [
        ("K29.700", 1, "DD"), ("K21.900", 2, "CM")]


def test_outpatient_medications_with_dose_route_and_pivl_frequency():
    record = mapped("outpatient.xml")
    first, second = of_type(record, "MedicationRequest")
    assert first["medicationCodeableConcept"]["coding"][0] == {
        "code": "XA02BCA211A001010104793", "system": "urn:yrdhub:national-drug-code",
        "display": "奥美拉唑肠溶胶囊"}
    dosage = first["dosageInstruction"][0]
    assert dosage["doseAndRate"] == [{"doseQuantity": {"value": 20, "unit": "mg"}}]
    assert dosage["route"]["text"] == "口服"
    assert dosage["timing"]["repeat"] == {
        "boundsPeriod": {"start": "2024-03-15", "end": "2024-03-28"},
        "frequency": 1, "period": 12, "periodUnit": "h"}
    assert first["status"] == "active" and first["intent"] == "order"
    assert first["authoredOn"] == "2024-03-15T10:30:00+08:00"
    assert first["category"][0]["coding"][0]["code"] == "outpatient"
    # manufacturedMaterial (standard CDA) is read as well as manufacturedLabeledDrug
    assert second["medicationCodeableConcept"]["text"] == "铝碳酸镁咀嚼片"
    assert second["dosageInstruction"][0]["timing"]["repeat"]["period"] == 8
    assert second["status"] == "unknown"  # no statusCode: nothing is claimed


def test_format_file_example_resident_id_is_valid_and_a_bad_check_character_is_rejected():
    body = variant("outpatient.xml", "320509197811230012", "320509197811230013")
    result = map_upload(body, WUJIANG)
    assert result.records == []
    (rejection,) = result.rejected
    assert "check character" in rejection.reason
    assert "2.16.156.10011.1.3" in rejection.location
    assert "320509197811230013" not in rejection.reason + rejection.location


def test_a_document_without_resident_id_is_rejected_naming_why():
    body = variant("outpatient.xml", 'root="2.16.156.10011.1.3" extension="320509197811230012"',
                   'root="2.16.156.10011.1.3" nullFlavor="UNK"')
    result = map_upload(body, WUJIANG)
    assert result.records == [] and "no resident ID number" in result.rejected[0].reason


def test_mapping_is_deterministic_so_a_resend_replaces_in_place():
    first, again = mapped("outpatient.xml"), mapped("outpatient.xml")
    assert [r["id"] for r in first.resources] == [r["id"] for r in again.resources]
    assert first.resources == again.resources


# ---------------------------------------------------------------------------------------------
# Versions (setId + versionNumber)
# ---------------------------------------------------------------------------------------------


def test_version_2_has_the_same_key_and_replaces_version_1():
    v1, v2 = mapped("outpatient.xml"), mapped("outpatient_v2.xml")
    assert v1.key == v2.key and (v1.version, v2.version) == (1, 2)
    assert v2.document_id.endswith("-V2") and v1.set_id == v2.set_id
    assert [c["code"]["coding"][0]["code"] for c in of_type(v2, "Condition")] == [
        "K29.400", "K21.900"]
    # the same visit keeps the same Encounter id, so v2 updates it in place
    assert one(v1, "Encounter")["id"] == one(v2, "Encounter")["id"]


def test_an_older_version_is_answered_with_the_newer_version_held():
    v1 = mapped("outpatient.xml")
    rejection = stale_version_rejection(v1, held_version=2)
    assert "version 1" in rejection.reason and "version 2 already held" in rejection.reason
    assert "DOC-H32050900012-20240315-000881" in rejection.reason
    # a hospital that puts the ID number in its setId still gets no full number back
    odd = CdaRecord(key="k", hospital=WUJIANG, patient={}, resources=[], version=1,
                    set_id="320509197811230012-01")
    assert "320509197811230012" not in stale_version_rejection(odd, 3).reason


def test_missing_version_is_1_and_a_non_number_is_rejected():
    body = variant("outpatient.xml", '<versionNumber value="1"/>', "")
    assert map_upload(body, WUJIANG).records[0].version == 1
    body = variant("outpatient.xml", '<versionNumber value="1"/>', '<versionNumber value="v2"/>')
    result = map_upload(body, WUJIANG)
    assert result.records == [] and result.rejected[0].location.endswith("versionNumber")


def test_a_document_without_setid_is_its_own_set():
    body = variant("outpatient.xml",
                   '<setId root="2.16.156.10011.1.1" extension="DOC-H32050900012-20240315-000881"/>',
                   "")
    assert map_upload(body, WUJIANG).records[0].key == \
        f"{WUJIANG}|DOC-H32050900012-20240315-000881"


# ---------------------------------------------------------------------------------------------
# Lab report (C0007)
# ---------------------------------------------------------------------------------------------


def _observation(record: CdaRecord, code: str) -> dict:
    return next(o for o in of_type(record, "Observation")
                if o["code"]["coding"][0]["code"] == code)


def test_lab_report_one_diagnostic_report_per_organizer():
    record = mapped("lab_report.xml")
    assert record.patient["identifier"][0]["value"] == "33042119850412002X"
    assert record.patient["gender"] == "female" and record.patient["birthDate"] == "1985-04-12"
    blood, urine = of_type(record, "DiagnosticReport")
    assert blood["identifier"][0]["system"] == "urn:oid:2.16.156.10011.1.33"
    assert blood["identifier"][0]["value"] == "LAB20240402004417"
    assert urine["identifier"][0]["value"] == "LAB20240402004418"
    assert blood["category"][0]["coding"][0]["code"] == "LAB"
    assert blood["code"]["text"] == "血常规+C反应蛋白"
    assert blood["code"]["coding"][0]["system"] == LOCAL_LAB_SYSTEM
    assert blood["effectiveDateTime"] == "2024-04-02T09:12:00+08:00"
    assert blood["issued"] == "2024-04-02T11:35:12+08:00"
    assert [by_id(record, r)["code"]["text"] for r in blood["result"]] == [
        "白细胞计数", "血红蛋白", "中性粒细胞百分比", "C反应蛋白"]
    assert len(urine["result"]) == 3
    assert blood["encounter"] == {"reference": f"Encounter/{one(record, 'Encounter')['id']}"}


def test_lab_pq_value_range_and_interpretation():
    wbc = _observation(mapped("lab_report.xml"), "6690-2")
    assert wbc["code"]["coding"][0]["system"] == LOINC_SYSTEM
    assert wbc["valueQuantity"] == {"value": 11.2, "unit": "10*9/L"}
    assert wbc["referenceRange"] == [{"low": {"value": 3.5, "unit": "10*9/L"},
                                      "high": {"value": 9.5, "unit": "10*9/L"}, "text": "3.5-9.5"}]
    assert wbc["interpretation"][0]["coding"][0]["code"] == "H"
    assert wbc["category"][0]["coding"][0]["code"] == "laboratory"
    assert wbc["status"] == "final"


def test_lab_local_code_and_text_reference_range_with_fullwidth_tilde():
    neut = _observation(mapped("lab_report.xml"), "NEUT%")
    assert neut["code"]["coding"][0]["system"] == LOCAL_LAB_SYSTEM
    assert neut["valueQuantity"] == {"value": 78.4, "unit": "%"}
    assert neut["referenceRange"] == [{"low": {"value": 40, "unit": "%"},
                                       "high": {"value": 75, "unit": "%"}, "text": "40～75"}]


def test_lab_ivl_pq_with_one_end_is_a_comparator():
    crp = _observation(mapped("lab_report.xml"), "1988-5")
    assert crp["valueQuantity"] == {"value": 0.5, "unit": "mg/L", "comparator": "<"}
    assert crp["referenceRange"] == [{"high": {"value": 10, "unit": "mg/L"}, "text": "<10"}]


def test_lab_st_and_cd_values():
    record = mapped("lab_report.xml")
    protein = _observation(record, "20454-5")
    assert protein["valueCodeableConcept"]["coding"][0]["code"] == "260385009"
    assert protein["valueCodeableConcept"]["text"] == "阴性"
    assert protein["referenceRange"] == [{"text": "阴性"}]
    abo = _observation(record, "883-9")
    assert abo["valueCodeableConcept"]["coding"][0]["code"] == "A"
    assert abo["valueCodeableConcept"]["coding"][0]["system"] == "urn:oid:2.16.156.10011.2.3.1.85"


def test_lab_pq_with_a_comparator_in_its_value_and_an_ivl_pq_range_value():
    body = variant("lab_report.xml", '<value xsi:type="PQ" value="11.2" unit="10*9/L"/>',
                   '<value xsi:type="PQ" value="&gt;=100" unit="10*9/L"/>')
    wbc = _observation(map_upload(body, GULOU).records[0], "6690-2")
    assert wbc["valueQuantity"] == {"value": 100, "unit": "10*9/L", "comparator": ">="}
    body = variant("lab_report.xml", '<value xsi:type="PQ" value="11.2" unit="10*9/L"/>',
                   '<value xsi:type="IVL_PQ"><low value="10" unit="10*9/L"/>'
                   '<high value="12" unit="10*9/L"/></value>')
    wbc = _observation(map_upload(body, GULOU).records[0], "6690-2")
    assert wbc["valueRange"] == {"low": {"value": 10, "unit": "10*9/L"},
                                 "high": {"value": 12, "unit": "10*9/L"}}


@pytest.mark.parametrize("old,new,where", [
    ('<interpretationCode code="H"', '<interpretationCode code="↑"', "component[1]"),
    ('value="11.2" unit="10*9/L"', 'value="1e999" unit="10*9/L"', "component[1]"),
    ('<value xsi:type="ST">阴性</value>', '<value xsi:type="RTO">1:2</value>', "component[1]"),
])
def test_an_unreadable_lab_value_rejects_the_report_at_its_location(old, new, where):
    result = map_upload(variant("lab_report.xml", old, new), GULOU)
    assert result.records == []
    (rejection,) = result.rejected
    assert rejection.location.startswith("section[1](30954-2)/entry[")
    assert where in rejection.location


# ---------------------------------------------------------------------------------------------
# Imaging report (C0006)
# ---------------------------------------------------------------------------------------------


def test_imaging_report_with_findings_impression_and_study():
    record = mapped("imaging_report.xml")
    report = one(record, "DiagnosticReport")
    assert report["category"][0]["coding"][0]["code"] == "RAD"
    assert report["identifier"][0] == {
        "system": "urn:oid:2.16.156.10011.1.32", "value": "CT20240520000212",
        "assigner": {"reference": f"Organization/{make_id('Organization', GUSU_TCM)}",
                     "identifier": {"system": "urn:oid:2.16.156.10011.1.5",
                                    "value": GUSU_TCM}}}
    assert report["code"]["text"] == "胸部CT平扫"
    assert report["conclusion"] == "右肺下叶肺炎，建议抗感染治疗后复查。"
    text = base64.b64decode(report["presentedForm"][0]["data"]).decode("utf-8")
    assert text.startswith("检查所见：右肺下叶见斑片状高密度影")
    assert "\n诊断意见：右肺下叶肺炎" in text
    assert report["issued"] == "2024-05-20T15:42:00+08:00"  # +0800 offset read
    study = one(record, "ImagingStudy")
    assert study["identifier"] == [{"system": "urn:dicom:uid",
                                    "value": "urn:oid:1.2.156.112605.14038005400212.20240520.1.4476"}]
    assert study["modality"][0]["code"] == "CT"
    assert study["started"] == "2024-05-20T15:03:00+08:00"
    assert report["imagingStudy"] == [{"reference": f"ImagingStudy/{study['id']}"}]
    enc = one(record, "Encounter")
    assert enc["class"]["code"] == "EMER" and enc["serviceType"]["text"] == "急诊科"
    assert record.patient["name"] == [{"text": "赵敏", "family": "赵", "given": ["敏"]}]


def test_imaging_without_uid_has_no_imaging_study_and_a_bad_uid_is_rejected():
    body = variant("imaging_report.xml",
                   '<id root="1.2.840.10008.2.16.4" extension="1.2.156.112605.14038005400212.20240520.1.4476"/>',
                   "")
    record = map_upload(body, GUSU_TCM).records[0]
    assert of_type(record, "ImagingStudy") == [] and "imagingStudy" not in one(
        record, "DiagnosticReport")
    body = variant("imaging_report.xml", 'extension="1.2.156.112605.', 'extension="1.2.abc.')
    result = map_upload(body, GUSU_TCM)
    assert result.records == [] and "not a DICOM UID" in result.rejected[0].reason


def test_imaging_narrative_only_becomes_the_report_text():
    text = raw("imaging_report.xml").decode("utf-8")
    start, end = text.index("          <entry>"), text.index("        </section>")
    record = map_upload((text[:start] + text[end:]).encode("utf-8"), GUSU_TCM).records[0]
    report = one(record, "DiagnosticReport")
    assert "conclusion" not in report and "identifier" not in report
    assert base64.b64decode(report["presentedForm"][0]["data"]).decode().startswith("胸部CT平扫")


# ---------------------------------------------------------------------------------------------
# Encodings
# ---------------------------------------------------------------------------------------------


def test_gbk_declared_document_with_gbk_only_characters():
    body = raw("gbk.xml")
    assert body.startswith(b'<?xml version="1.0" encoding="GBK"?>')
    with pytest.raises(UnicodeDecodeError):
        body.decode("utf-8")
    record = mapped("gbk.xml")
    assert record.patient["name"] == [{"text": "王喆"}]
    assert "堃泰花园" in record.patient["address"][0]["text"]
    assert one(record, "Practitioner")["name"] == [{"text": "孙镕"}]
    assert of_type(record, "Condition")[0]["code"]["coding"][0]["code"] == "I10.x00"


def test_gb2312_declared_document_holding_gbk_only_characters_is_read_as_gb18030():
    body = raw("gbk.xml").replace(b'encoding="GBK"', b"encoding='gb2312'")
    with pytest.raises(UnicodeDecodeError):
        body.decode("gb2312")  # the point of the quirk: strict GB2312 would fail here
    assert map_upload(body, MOLING).records[0].patient["name"] == [{"text": "王喆"}]


def test_bom_and_no_declaration_are_utf8():
    body = raw("outpatient.xml")
    with_bom = map_upload(b"\xef\xbb\xbf" + body, WUJIANG).records[0]
    no_decl = map_upload(body.split(b"?>", 1)[1], WUJIANG).records[0]
    assert with_bom.patient["name"] == no_decl.patient["name"] == [{"text": "周建国"}]


@pytest.mark.parametrize("body,reason", [
    (raw("gbk.xml").replace(b'encoding="GBK"', b'encoding="UTF-8"'), "not valid UTF-8"),
    (raw("gbk.xml").split(b"?>", 1)[1], "not valid UTF-8"),
    (raw("outpatient.xml").replace(b'encoding="UTF-8"', b'encoding="ISO-8859-1"'), "ISO-8859-1"),
    ("\ufeff".encode("utf-16-le") + raw("outpatient.xml").decode().encode("utf-16-le"), "UTF-16"),
    (b"", "empty"),
    (b"MSH|^~\\&|HIS|H32050900012", "not an XML document"),
    (b"<ClinicalDocument", "not well-formed"),
])
def test_unreadable_bodies(body, reason):
    with pytest.raises(UnreadableUpload, match=reason):
        map_upload(body, WUJIANG)


# ---------------------------------------------------------------------------------------------
# nullFlavor, narrative only, empty, missing and unknown sections
# ---------------------------------------------------------------------------------------------


def test_nullflavor_values_are_absent_never_the_flavor_string():
    record = mapped("nullflavor.xml")
    patient = record.patient
    for key in ("birthDate", "gender", "telecom", "address"):
        assert key not in patient
    everything = json.dumps([patient, *record.resources], ensure_ascii=False)
    for flavor in ('"NI"', '"UNK"', '"ASKU"'):
        assert flavor not in everything
    hgb = _observation(record, "718-7")
    assert "valueQuantity" not in hgb and "interpretation" not in hgb
    assert hgb["dataAbsentReason"]["coding"][0]["code"] == "unknown"
    assert hgb["referenceRange"][0]["low"] == {"value": 115, "unit": "g/L"}
    abo = _observation(record, "883-9")
    assert abo["dataAbsentReason"]["coding"][0]["code"] == "asked-unknown"
    blood, urine = of_type(record, "DiagnosticReport")
    assert "identifier" in blood and "identifier" not in urine  # report number was UNK
    assert one(record, "Encounter")["class"]["code"] == "AMB"  # type UNK: from the visit number


def test_narrative_only_sections_are_noted_and_the_chief_complaint_kept_as_text():
    result = map_upload(raw("narrative_only.xml"), WUJIANG)
    record = result.records[0]
    assert one(record, "Encounter")["reasonCode"] == [{"text": "反复咳嗽、咳痰2周"}]
    assert of_type(record, "Condition") == [] and of_type(record, "MedicationRequest") == []
    assert result.notes == [
        "section 29548-5 has only narrative text: not mapped, kept in the archived original",
        "section 10160-0 has only narrative text: not mapped, kept in the archived original",
    ]  # the empty lab section (30954-2) is neither mapped nor noted


def test_unknown_sections_are_named_in_notes_and_not_mapped():
    result = map_upload(raw("unknown_section.xml"), WUJIANG)
    assert result.notes == [
        "section 48765-2 not mapped, kept in the archived original",
        "section 10157-6 not mapped, kept in the archived original",
    ]
    record = result.records[0]
    assert of_type(record, "AllergyIntolerance") == []
    assert [c["code"]["coding"][0]["code"] for c in of_type(record, "Condition")] == ["L50.900"]
    assert one(record, "Encounter")["reasonCode"] == [{"text": "皮肤瘙痒伴红疹3天"}]


def test_missing_body_still_maps_the_visit():
    text = raw("outpatient.xml").decode()
    start, end = text.index("  <component>\n    <structuredBody>"), text.index("</ClinicalDocument>")
    record = map_upload((text[:start] + text[end:]).encode(), WUJIANG).records[0]
    assert sorted(r["resourceType"] for r in record.resources) == [
        "Encounter", "Organization", "Practitioner"]


# ---------------------------------------------------------------------------------------------
# Kind and sender
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,template,label", [
    ("CCD2_CCD.xml", "2.16.840.1.113883.10.20.22.1.2", "C-CDA CCD"),
    ("Diagnostic_Imaging_Report.xml", "2.16.840.1.113883.10.20.22.1.5",
     "C-CDA Diagnostic Imaging Report"),
    ("Discharge_Summary.xml", "2.16.840.1.113883.10.20.22.1.8", "C-CDA Discharge Summary"),
    ("Procedure_Note.xml", "2.16.840.1.113883.10.20.22.1.6", "C-CDA Procedure Note"),
])
def test_ccda_peer_documents_are_refused_naming_their_template(name, template, label):
    with pytest.raises(UnreadableUpload) as exc:
        map_upload((PEERS / name).read_bytes(), WUJIANG)
    assert str(exc.value) == f"not a WS/T 500 document: template {template} ({label})"


def test_every_ccda_peer_is_refused_and_nothing_else_is_raised():
    names = sorted(p.name for p in PEERS.glob("*.xml"))
    assert len(names) == 4
    for name in names:
        with pytest.raises(UnreadableUpload, match="not a WS/T 500 document"):
            map_upload((PEERS / name).read_bytes(), WUJIANG)


def test_kind_by_code_alone_and_a_conflicting_template_and_code():
    body = variant("lab_report.xml", '<templateId root="2.16.156.10011.2.1.1.27"/>', "")
    assert len(of_type(map_upload(body, GULOU).records[0], "DiagnosticReport")) == 2
    body = variant("lab_report.xml", 'code="C0007"', 'code="C0002"')
    with pytest.raises(UnreadableUpload, match="different document kinds"):
        map_upload(body, GULOU)


def test_another_ws_t_500_kind_is_a_rejection():
    body = variant("outpatient.xml", '<templateId root="2.16.156.10011.2.1.1.22"/>',
                   '<templateId root="2.16.156.10011.2.1.1.55"/>')
    body = body.replace(b'code="C0002"', b'code="C0030"')
    result = map_upload(body, WUJIANG)
    assert result.records == []
    assert "C0030" in result.rejected[0].reason and "not accepted" in result.rejected[0].reason


def test_a_document_of_another_hospital_is_a_foreign_sender():
    with pytest.raises(ForeignSender, match="H32050900012"):
        map_upload(raw("outpatient.xml"), GULOU)
    # the author's organisation is checked too, even when the custodian is the sender
    body = variant("lab_report.xml", '<id root="2.16.156.10011.1.5" extension="H32010600001"/>\n'
                   "        <name>南京市鼓楼区人民医院</name>\n      </representedOrganization>",
                   '<id root="2.16.156.10011.1.5" extension="H32011500009"/>\n'
                   "        <name>南京市鼓楼区人民医院</name>\n      </representedOrganization>")
    with pytest.raises(ForeignSender, match="H32011500009"):
        map_upload(body, GULOU)


def test_a_document_without_custodian_hospital_is_unreadable():
    body = variant("outpatient.xml", '<id root="2.16.156.10011.1.5" extension="H32050900012"/>',
                   "")
    with pytest.raises(UnreadableUpload, match="no custodian hospital"):
        map_upload(body, WUJIANG)


@pytest.mark.parametrize("old,new,location", [
    ('<code code="1" codeSystem="2.16.156.10011.2.3.1.271" displayName="门诊"/>',
     '<code code="7" codeSystem="2.16.156.10011.2.3.1.271"/>', "encompassingEncounter/code"),
    ('<administrativeGenderCode code="1"', '<administrativeGenderCode code="M"',
     "administrativeGenderCode"),
    ('<birthTime value="19781123"/>', '<birthTime value="19780231"/>', "birthTime"),
    ('<effectiveTime value="20240315101500"/>', '<effectiveTime value="2024-03-15"/>',
     "encompassingEncounter/effectiveTime"),
    ('<period value="12" unit="h"/>', '<period value="12" unit="fortnight"/>',
     "section[3](10160-0)/entry[1]"),
])
def test_unreadable_header_values_reject_with_their_location(old, new, location):
    result = map_upload(variant("outpatient.xml", old, new), WUJIANG)
    assert result.records == [] and location in result.rejected[0].location


def test_inpatient_number_makes_an_inpatient_encounter():
    body = variant("outpatient.xml", 'root="2.16.156.10011.1.11" extension="MZ2024031500881"',
                   'root="2.16.156.10011.1.12" extension="ZY2024000123"')
    encounter_type = '<code code="1" codeSystem="2.16.156.10011.2.3.1.271" displayName="门诊"/>'
    body = body.replace(encounter_type.encode(), b"")  # no type: the inpatient number decides
    enc = one(map_upload(body, WUJIANG).records[0], "Encounter")
    assert enc["class"]["code"] == "IMP" and enc["status"] == "in-progress"
    assert enc["identifier"][0] == {"system": "urn:oid:2.16.156.10011.1.12",
                                    "value": "ZY2024000123", "assigner": enc["serviceProvider"]}


# ---------------------------------------------------------------------------------------------
# Attacks: refused before anything is resolved
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,what", [
    ("xxe.xml", "external entity declarations"),
    ("billion_laughs.xml", "entity declarations"),
    ("external_dtd.xml", "an external DTD"),
])
def test_attacks_are_unreadable_uploads(name, what):
    # How they are refused, and at which layer, is tests/mappers/test_secure_xml.py.
    with pytest.raises(UnreadableUpload, match="never resolved") as exc:
        map_upload(raw(name), WUJIANG)
    assert f"declares a DTD (<!DOCTYPE> with {what})" in str(exc.value)


# ---------------------------------------------------------------------------------------------
# Every resource is valid R4
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SENDERS))
def test_all_resources_are_valid_r4(name):
    from fhir.resources.R4B import get_fhir_model_class

    record = mapped(name)
    for resource in [record.patient, *record.resources]:
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
        if resource["resourceType"] != "Patient":
            assert resource["id"]
    ids = [(r["resourceType"], r["id"]) for r in record.resources]
    assert len(ids) == len(set(ids))
    # every reference inside the record resolves, except the patient placeholder
    for reference in _references(record.resources):
        assert reference == PATIENT_REF or any(
            f"{rt}/{rid}" == reference for rt, rid in ids), reference


def _references(value):
    if isinstance(value, dict):
        if isinstance(value.get("reference"), str):
            yield value["reference"]
        for item in value.values():
            yield from _references(item)
    elif isinstance(value, list):
        for item in value:
            yield from _references(item)


# ---------------------------------------------------------------------------------------------
# Fuzzing: nothing but UnreadableUpload / ForeignSender escapes
# ---------------------------------------------------------------------------------------------

ALL_FIXTURES = sorted([*SENDERS, *ATTACKS])


def _survives(body: bytes, sender: str) -> None:
    try:
        result = map_upload(body, sender)
    except (UnreadableUpload, ForeignSender) as exc:
        assert str(exc)
        return
    assert isinstance(result, MapResult)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_random_bytes_raise_only_the_contract_errors(body):
    _survives(body, WUJIANG)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(ALL_FIXTURES), st.data())
def test_mutated_fixtures_raise_only_the_contract_errors(name, data):
    body = bytearray(raw(name))
    for _ in range(data.draw(st.integers(1, 6))):
        at = data.draw(st.integers(0, len(body) - 1))
        op = data.draw(st.sampled_from(["flip", "delete", "insert", "splice"]))
        if op == "flip":
            body[at] = data.draw(st.integers(0, 255))
        elif op == "delete":
            del body[at:at + data.draw(st.integers(1, 40))]
        elif op == "insert":
            body[at:at] = data.draw(st.sampled_from(
                [b"<", b">", b"&", b'"', b"nullFlavor=\"UNK\" ", b"<!DOCTYPE x>", b"\x00",
                 b"\xff\xfe", b"</section>", b"<section>", b'xsi:type="IVL_PQ"', b"9" * 30]))
        else:
            start = data.draw(st.integers(0, len(body) - 1))
            body[at:at] = body[start:start + data.draw(st.integers(1, 200))]
        if not body:
            break
    _survives(bytes(body), SENDERS.get(name, WUJIANG))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(SENDERS)), st.data())
def test_mutated_attribute_values_raise_only_the_contract_errors(name, data):
    # Valid XML, hostile values: every attribute value of one kind replaced by fuzz text.
    text = raw(name).decode("gb18030" if name == "gbk.xml" else "utf-8")
    attribute = data.draw(st.sampled_from(["value", "code", "unit", "extension", "root",
                                           "codeSystem", "xsi:type", "inclusive"]))
    fuzz = data.draw(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")),
                             max_size=30)).replace("&", "&amp;").replace("<", "&lt;").replace(
        '"', "&quot;")
    import re

    text = re.sub(rf'(\s{re.escape(attribute)}=")[^"]*(")',
                  lambda m: m.group(1) + fuzz + m.group(2), text,
                  count=data.draw(st.integers(1, 5)))
    _survives(text.encode("gb18030" if name == "gbk.xml" else "utf-8"), SENDERS[name])
