"""The Zhejiang JSON mapper against fixtures/zj/ (the format: world/formats/zhejiang-json.md)."""

from __future__ import annotations

import base64
import copy
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mappers.common import (DICOM_MODALITY_SYSTEM, HOSPITAL_PATIENT_NO_SYSTEM, HOSPITAL_SYSTEM, ICD10_SYSTEM, INSURANCE_CARD_SYSTEM, LAB_REPORT_SYSTEM, LOCAL_LAB_SYSTEM, LOINC_SYSTEM, NATIONAL_DRUG_SYSTEM, OUTPATIENT_NO_SYSTEM, PASSPORT_SYSTEM, PATIENT_REF, PRACTITIONER_SYSTEM, PRESCRIPTION_SYSTEM, RESIDENT_ID_SYSTEM, SNOMED_SYSTEM, make_id)
from mappers.errors import ForeignSender, UnreadableUpload
from mappers.region import normalize_resident_id
from mappers.zhejiang_json import KNOWN_KEYS, map_upload, unknown_keys

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "zj"
ALL_FIXTURES = sorted(p.name for p in FIXTURES.glob("*.json"))
SENDERS = {"upload_basic.json": "H33042100015", "upload_two_visits.json": "H33020300004",
           "upload_quirks.json": "H33040200006", "upload_other_hospital.json": "H33010600001"}
LISI_ID = "33042119850412002X"


def body_of(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def doc_of(name: str) -> dict[str, Any]:
    return json.loads(body_of(name))


def encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode("utf-8")


def mapped(name: str):
    return map_upload(body_of(name), SENDERS[name])


def only(resources: list[dict], rtype: str) -> dict:
    found = [r for r in resources if r["resourceType"] == rtype]
    assert len(found) == 1, f"{len(found)} {rtype}"
    return found[0]


def all_of(resources: list[dict], rtype: str) -> list[dict]:
    return [r for r in resources if r["resourceType"] == rtype]


def by_id(resources: list[dict], ref: dict) -> dict:
    rtype, rid = ref["reference"].split("/")
    return next(r for r in resources if r["resourceType"] == rtype and r["id"] == rid)


@pytest.fixture(scope="module")
def basic():
    result = mapped("upload_basic.json")
    assert not result.rejected and not result.notes
    assert len(result.records) == 1
    return result.records[0]


# ---------------------------------------------------------------------------------------------
# The fixtures are real: valid ID numbers, codes from hospitals.csv
# ---------------------------------------------------------------------------------------------


def test_fixture_hospitals_exist_in_the_world():
    codes = {line.split(",")[0] for line in
             (Path("/work/shared/world/data/hospitals.csv").read_text("utf-8").splitlines())}
    assert set(SENDERS.values()) <= codes
    assert {doc_of(n)["jgdm"] for n in SENDERS} == set(SENDERS.values())


def test_basic_fixture_is_the_format_documents_example():
    text = Path("/work/shared/world/formats/zhejiang-json.md").read_text("utf-8")
    example = text.split("```json\n", 1)[1].split("```", 1)[0]
    assert json.loads(example) == doc_of("upload_basic.json")


# ---------------------------------------------------------------------------------------------
# Record, Patient
# ---------------------------------------------------------------------------------------------


def test_record_key_location_and_hospital(basic):
    assert basic.key == "H33042100015|MZ20240315000123"
    assert basic.location == "jzjl[0]"
    assert basic.hospital == "H33042100015"


def test_patient(basic):
    p = basic.patient
    assert "id" not in p and "managingOrganization" not in p
    assert p["identifier"] == [
        {"system": RESIDENT_ID_SYSTEM, "value": LISI_ID},
        {"system": INSURANCE_CARD_SYSTEM, "value": "A33042100098765",
         "assigner": {"identifier": {"value": "330421"}, "display": "参保地 330421"}},
    ]
    assert p["name"] == [{"text": "李四"}]
    assert p["gender"] == "female"
    assert p["birthDate"] == "1985-04-12"
    assert p["telecom"] == [{"system": "phone", "value": "13857300000"}]
    assert p["address"] == [{"use": "home", "text": "浙江省嘉兴市嘉善县罗星街道...",
                             "state": "浙江省", "city": "嘉兴市", "district": "嘉善县",
                             "line": ["罗星街道..."], "country": "CN"}]


@pytest.mark.parametrize("xb, gender", [("0", "unknown"), ("1", "male"), ("2", "female"),
                                        ("9", "unknown")])
def test_gender_table(xb, gender):
    doc = doc_of("upload_basic.json")
    doc["jzjl"][0]["hzxx"]["xb"] = xb
    assert map_upload(encode(doc), "H33042100015").records[0].patient["gender"] == gender


def test_absent_sex_and_birth_date_come_from_the_resident_id():
    doc = doc_of("upload_basic.json")
    doc["jzjl"][0]["hzxx"].update(xb="", csrq="")
    patient = map_upload(encode(doc), "H33042100015").records[0].patient
    assert (patient["gender"], patient["birthDate"]) == ("female", "1985-04-12")


@pytest.mark.parametrize("address, parts, line", [
    ("浙江省杭州市西湖区文三路478号", ("浙江省", "杭州市", "西湖区"), "文三路478号"),
    ("上海市黄浦区南京东路1号", ("上海市", "上海市", "黄浦区"), "南京东路1号"),
    ("浙江省嘉兴市海宁市硖石街道", ("浙江省", "嘉兴市", "海宁市"), "硖石街道"),
    ("浙江省杭州市文三路小区5幢", ("浙江省", "杭州市", None), "文三路小区5幢"),
    ("文三路小区5幢", (None, None, None), "文三路小区5幢"),
    # District names with 楼/路/镇 in them (the old regex lost them).
    ("江苏省南京市鼓楼区中山路1号", ("江苏省", "南京市", "鼓楼区"), "中山路1号"),
    ("浙江省台州市路桥区路桥街道银安街8号", ("浙江省", "台州市", "路桥区"), "路桥街道银安街8号"),
    ("宁波市镇海区招宝山街道", ("浙江省", "宁波市", "镇海区"), "招宝山街道"),
    # A compound is never a district.
    ("安徽省合肥市长江西路小区3栋402室", ("安徽省", "合肥市", None), "长江西路小区3栋402室"),
])
def test_address_parts(address, parts, line):
    doc = doc_of("upload_basic.json")
    doc["jzjl"][0]["hzxx"]["xzz"] = address
    got = map_upload(encode(doc), "H33042100015").records[0].patient["address"][0]
    assert got["text"] == address
    assert (got.get("state"), got.get("city"), got.get("district")) == parts
    assert got["line"] == [line]


def test_same_person_at_another_hospital_has_the_same_resident_id(basic):
    other = mapped("upload_other_hospital.json").records[0]
    ids = lambda rec: {(i["system"], i["value"]) for i in rec.patient["identifier"]}  # noqa: E731
    assert (RESIDENT_ID_SYSTEM, LISI_ID) in ids(basic) & ids(other)
    assert other.key == "H33010600001|MZ20240402003318" and other.key != basic.key
    assert only(other.resources, "Organization")["name"] == "杭州市西湖区人民医院"
    assert only(other.resources, "Encounter")["id"] != only(basic.resources, "Encounter")["id"]


def test_passport_is_a_person_document_without_hospital_fallback():
    record = next(r for r in mapped("upload_quirks.json").records
                  if r.location == "jzjl[3]")
    assert record.patient["identifier"] == [{"system": PASSPORT_SYSTEM, "value": "M12345678"}]


def test_a_number_without_document_type_is_not_guessed():
    doc = doc_of("upload_basic.json")
    doc["jzjl"][0]["hzxx"].update(zjlx="")
    result = map_upload(encode(doc), "H33042100015")
    systems = [i["system"] for i in result.records[0].patient["identifier"]]
    assert systems == [INSURANCE_CARD_SYSTEM]
    assert result.notes == ["jzjl[0].hzxx.zjlx: zjhm comes without a document type; the number "
                            "is not used to match the patient"]


def test_unknown_document_type_is_noted_and_falls_back_to_the_hospital_number():
    doc = doc_of("upload_basic.json")
    doc["jzjl"][0]["hzxx"].update(zjlx="99", ybkh="")
    result = map_upload(encode(doc), "H33042100015")
    assert result.records[0].patient["identifier"][0]["system"] == HOSPITAL_PATIENT_NO_SYSTEM
    assert any(n.startswith("jzjl[0].hzxx.zjlx: document type '99'") for n in result.notes)


# ---------------------------------------------------------------------------------------------
# Hospital, doctor, Encounter
# ---------------------------------------------------------------------------------------------


def test_organization_with_name_and_level(basic):
    org = only(basic.resources, "Organization")
    assert org["id"] == make_id("Organization", "H33042100015")
    assert org["name"] == "嘉善县第一人民医院"
    assert org["identifier"] == [{"system": "urn:oid:2.16.156.10011.1.5",
                                  "value": "H33042100015"}]
    assert org["type"][1]["coding"][0]["code"] == "2"
    assert org["type"][1]["text"] == "二级医院"


def test_practitioner(basic):
    doc = only(basic.resources, "Practitioner")
    assert doc["id"] == make_id("Practitioner", "H33042100015", "D0123")
    assert doc["identifier"][0]["system"] == PRACTITIONER_SYSTEM
    assert doc["identifier"][0]["value"] == "D0123"
    assert doc["name"] == [{"text": "王芳"}]


def test_encounter(basic):
    enc = only(basic.resources, "Encounter")
    org_ref = f"Organization/{make_id('Organization', 'H33042100015')}"
    assert enc["id"] == make_id("Encounter", "H33042100015", "MZ20240315000123")
    assert enc["identifier"] == [{"system": OUTPATIENT_NO_SYSTEM, "value": "MZ20240315000123",
                                  "assigner": {"reference": org_ref,
                                               "identifier": {"system": HOSPITAL_SYSTEM,
                                                              "value": "H33042100015"},
                                               "display": "嘉善县第一人民医院"}}]
    assert enc["class"]["code"] == "AMB"
    assert enc["status"] == "finished"
    assert enc["period"] == {"start": "2024-03-15T09:12:00+08:00"}
    assert enc["subject"] == {"reference": PATIENT_REF}
    assert enc["serviceProvider"]["reference"] == org_ref
    assert enc["serviceType"]["coding"][0]["code"] == "0301"
    assert enc["serviceType"]["text"] == "呼吸内科"
    prac = only(basic.resources, "Practitioner")
    assert enc["participant"][0]["individual"]["reference"] == f"Practitioner/{prac['id']}"


@pytest.mark.parametrize("jzlx, act", [("1", "AMB"), ("2", "EMER"), ("3", "IMP")])
def test_visit_type_table(jzlx, act):
    doc = doc_of("upload_basic.json")
    doc["jzjl"][0]["jzlx"] = jzlx
    enc = only(map_upload(encode(doc), "H33042100015").records[0].resources, "Encounter")
    assert enc["class"]["code"] == act


# ---------------------------------------------------------------------------------------------
# Conditions
# ---------------------------------------------------------------------------------------------


def test_condition(basic):
    cond = only(basic.resources, "Condition")
    assert cond["code"]["coding"] == [{"system": ICD10_SYSTEM, "code": "J06.900",
                                       "display": "急性上呼吸道感染"}]
    assert cond["clinicalStatus"]["coding"][0]["code"] == "active"
    assert cond["verificationStatus"]["coding"][0]["code"] == "confirmed"
    assert cond["category"][0]["coding"][0]["code"] == "encounter-diagnosis"
    assert cond["category"][1]["text"] == "主要诊断"
    assert cond["recordedDate"] == "2024-03-15T09:30:00+08:00"
    assert cond["subject"] == {"reference": PATIENT_REF}
    enc = only(basic.resources, "Encounter")
    assert cond["encounter"] == {"reference": f"Encounter/{enc['id']}"}
    assert enc["diagnosis"][0]["condition"] == {"reference": f"Condition/{cond['id']}"}
    assert enc["diagnosis"][0]["rank"] == 1


def test_principal_and_secondary_diagnoses():
    record = mapped("upload_two_visits.json").records[0]
    enc = only(record.resources, "Encounter")
    ranked = [(by_id(record.resources, d["condition"])["code"]["coding"][0]["code"], d["rank"],
               d["use"]["text"]) for d in enc["diagnosis"]]
    # The national clinical edition's lower-case x is kept as sent.
    assert ranked == [("I10.x00", 1, "主要诊断"), ("E78.500", 2, "次要诊断")]
    assert [d["use"]["coding"][0]["code"] for d in enc["diagnosis"]] == ["DD", "CM"]


# ---------------------------------------------------------------------------------------------
# Laboratory
# ---------------------------------------------------------------------------------------------


def test_lab_observation(basic):
    obs = only(basic.resources, "Observation")
    assert obs["status"] == "final"
    assert obs["category"][0]["coding"][0]["code"] == "laboratory"
    assert obs["code"] == {"coding": [{"system": LOINC_SYSTEM, "code": "2345-7"},
                                      {"system": LOCAL_LAB_SYSTEM, "code": "GLU",
                                       "display": "葡萄糖"}], "text": "葡萄糖"}
    assert obs["valueQuantity"] == {"value": 6.8, "unit": "mmol/L"}
    assert obs["referenceRange"][0]["low"]["value"] == 3.9
    assert obs["referenceRange"][0]["high"]["value"] == 6.1
    assert obs["interpretation"][0]["coding"][0]["code"] == "H"
    assert obs["effectiveDateTime"] == "2024-03-15T10:30:00+08:00"


def test_lab_report(basic):
    reports = [r for r in all_of(basic.resources, "DiagnosticReport")
               if r["category"][0]["coding"][0]["code"] == "LAB"]
    assert len(reports) == 1
    report = reports[0]
    assert report["identifier"][0]["system"] == LAB_REPORT_SYSTEM
    assert report["identifier"][0]["value"] == "LIS202403150087"
    assert report["status"] == "final"
    assert report["effectiveDateTime"] == "2024-03-15T10:30:00+08:00"
    observation = only(basic.resources, "Observation")
    assert report["result"] == [{"reference": f"Observation/{observation['id']}"}]


def test_lines_sharing_a_report_number_are_one_report():
    record = mapped("upload_two_visits.json").records[1]
    labs = {r["identifier"][0]["value"]: r for r in all_of(record.resources, "DiagnosticReport")
            if r["category"][0]["coding"][0]["code"] == "LAB"}
    assert set(labs) == {"LIS202404080019", "LIS202404080020"}
    cbc = [by_id(record.resources, ref)["code"]["text"]
           for ref in labs["LIS202404080019"]["result"]]
    assert cbc == ["白细胞计数", "中性粒细胞百分比", "血红蛋白", "C反应蛋白"]
    assert len(labs["LIS202404080020"]["result"]) == 2


def test_comparator_and_qualitative_values():
    resources = mapped("upload_two_visits.json").records[1].resources
    obs = {o["code"]["text"]: o for o in all_of(resources, "Observation")}
    assert obs["C反应蛋白"]["valueQuantity"] == {"value": 200, "comparator": ">", "unit": "mg/L"}
    assert obs["降钙素原"]["valueQuantity"] == {"value": 0.05, "comparator": "<", "unit": "ng/mL"}
    hcg = obs["尿人绒毛膜促性腺激素"]
    assert hcg["valueCodeableConcept"]["coding"][0] == {"system": SNOMED_SYSTEM,
                                                        "code": "260385009", "display": "Negative"}
    assert hcg["valueCodeableConcept"]["text"] == "阴性"
    assert "interpretation" not in hcg  # ycts "" is absent
    assert obs["C反应蛋白"]["interpretation"][0]["coding"][0]["code"] == "HH"


def test_the_same_lab_item_twice_gets_distinct_ids():
    doc = doc_of("upload_basic.json")
    doc["jzjl"][0]["jyjg"].append(dict(doc["jzjl"][0]["jyjg"][0], jgz="7.1"))
    resources = map_upload(encode(doc), "H33042100015").records[0].resources
    ids = [r["id"] for r in resources]
    assert len(ids) == len(set(ids))
    assert len(all_of(resources, "Observation")) == 2


# ---------------------------------------------------------------------------------------------
# Imaging
# ---------------------------------------------------------------------------------------------


def test_imaging_report_and_study(basic):
    study = only(basic.resources, "ImagingStudy")
    report = next(r for r in all_of(basic.resources, "DiagnosticReport")
                  if r["category"][0]["coding"][0]["code"] == "RAD")
    assert report["identifier"][0] == {
        "system": "urn:oid:2.16.156.10011.1.32", "value": "PACS202403150011",
        "assigner": report["identifier"][0]["assigner"]}
    assert report["code"]["text"] == "胸部 DX检查"
    assert report["effectiveDateTime"] == "2024-03-15T10:05:00+08:00"
    assert report["conclusion"] == "支气管炎改变,请结合临床。"
    form = report["presentedForm"][0]
    assert form["contentType"] == "text/plain; charset=utf-8"
    assert base64.b64decode(form["data"]).decode("utf-8") == "双肺纹理增多。"
    assert report["imagingStudy"] == [{"reference": f"ImagingStudy/{study['id']}"}]
    assert study["identifier"] == [{"system": "urn:dicom:uid",
                                    "value": "urn:oid:1.2.156.112605.14038.20240315100501.1"}]
    assert study["modality"] == [{"system": DICOM_MODALITY_SYSTEM, "code": "DX",
                                  "display": "Digital Radiography"}]
    assert study["status"] == "available"
    assert study["started"] == "2024-03-15T10:05:00+08:00"


def test_imaging_without_uid_has_no_study_and_modality_is_folded():
    resources = mapped("upload_quirks.json").records[0].resources
    assert all_of(resources, "ImagingStudy") == []
    report = next(r for r in all_of(resources, "DiagnosticReport")
                  if r["category"][0]["coding"][0]["code"] == "RAD")
    assert report["code"]["text"] == "肝胆胰脾 US检查"
    assert "imagingStudy" not in report


def test_malformed_study_uid_rejects_the_visit():
    doc = doc_of("upload_basic.json")
    doc["jzjl"][0]["jcbg"][0]["jcuid"] = "1.2.abc"
    result = map_upload(encode(doc), "H33042100015")
    assert [r.location for r in result.rejected] == ["jzjl[0].jcbg[0].jcuid"]


# ---------------------------------------------------------------------------------------------
# Prescriptions, allergies
# ---------------------------------------------------------------------------------------------


def test_medication_request(basic):
    med = only(basic.resources, "MedicationRequest")
    assert med["identifier"][0]["system"] == PRESCRIPTION_SYSTEM
    assert med["identifier"][0]["value"] == "CF2024031500045-1"
    assert med["groupIdentifier"]["value"] == "CF2024031500045"
    assert (med["status"], med["intent"]) == ("active", "order")
    assert med["medicationCodeableConcept"] == {
        "coding": [{"system": NATIONAL_DRUG_SYSTEM, "code": "XJ01CAA040A001",
                    "display": "阿莫西林胶囊"}], "text": "阿莫西林胶囊 0.25g*24粒"}
    assert med["authoredOn"] == "2024-03-15T09:12:00+08:00"
    dosage = med["dosageInstruction"][0]
    assert dosage["timing"]["code"]["coding"][0]["code"] == "TID"
    assert dosage["timing"]["repeat"]["frequency"] == 3
    assert dosage["timing"]["repeat"]["boundsDuration"] == {
        "value": 7, "unit": "d", "system": "http://unitsofmeasure.org", "code": "d"}
    assert dosage["route"] == {"text": "口服"}
    assert dosage["doseAndRate"] == [{"doseQuantity": {"value": 0.5, "unit": "g"}}]
    assert dosage["text"] == "每次0.5g，口服，tid，共7天"
    assert med["requester"]["reference"].startswith("Practitioner/")


def test_frequency_table_qn_and_prn():
    meds = {m["medicationCodeableConcept"]["coding"][0]["code"]: m["dosageInstruction"][0]
            for rec in mapped("upload_two_visits.json").records
            for m in all_of(rec.resources, "MedicationRequest")}
    statin = meds["XC10AAA005A001"]  # qn: once nightly
    assert statin["timing"]["repeat"]["when"] == ["NIGHT"]
    assert statin["timing"]["repeat"]["frequency"] == 1
    assert "coding" not in statin["timing"]["code"]
    ibuprofen = meds["XM01AEA017A001"]  # prn
    assert ibuprofen["asNeededBoolean"] is True
    assert "frequency" not in ibuprofen["timing"]["repeat"]
    assert meds["XC08CAA014A001"]["timing"]["code"]["coding"][0]["code"] == "QD"


def test_prescription_lines_numbered_within_their_prescription():
    meds = all_of(mapped("upload_two_visits.json").records[0].resources, "MedicationRequest")
    assert [m["identifier"][0]["value"] for m in meds] == ["CF2024040800311-1",
                                                           "CF2024040800311-2"]


def test_unknown_frequency_is_kept_as_text_with_a_note():
    doc = doc_of("upload_basic.json")
    doc["jzjl"][0]["cfxx"][0]["pc"] = "q8h"
    result = map_upload(encode(doc), "H33042100015")
    med = only(result.records[0].resources, "MedicationRequest")
    timing = med["dosageInstruction"][0]["timing"]
    assert timing["code"] == {"text": "q8h"}
    assert any(n.startswith("jzjl[0].cfxx[0].pc:") for n in result.notes)


def test_allergy(basic):
    allergy = only(basic.resources, "AllergyIntolerance")
    assert allergy["code"] == {"text": "青霉素"}
    assert allergy["reaction"] == [{"manifestation": [{"text": "皮疹"}]}]
    assert allergy["recordedDate"] == "2024-03-15T09:12:00+08:00"
    assert allergy["clinicalStatus"]["coding"][0]["code"] == "active"
    assert allergy["patient"] == {"reference": PATIENT_REF}


def test_an_all_empty_entry_is_absent():
    record = mapped("upload_two_visits.json").records[1]
    assert [a["code"]["text"] for a in all_of(record.resources, "AllergyIntolerance")] == ["磺胺类"]


# ---------------------------------------------------------------------------------------------
# Every resource validates, every reference resolves, ids are unique
# ---------------------------------------------------------------------------------------------


def _references(value: Any):
    if isinstance(value, dict):
        if isinstance(value.get("reference"), str):
            yield value["reference"]
        for sub in value.values():
            yield from _references(sub)
    elif isinstance(value, list):
        for sub in value:
            yield from _references(sub)


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_every_resource_validates_as_r4(name):
    records = mapped(name).records
    assert records
    for record in records:
        for resource in [record.patient, *record.resources]:
            get_fhir_model_class(resource["resourceType"]).model_validate(resource)


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_references_resolve_within_the_record_and_ids_are_unique(name):
    for record in mapped(name).records:
        present = {f"{r['resourceType']}/{r['id']}" for r in record.resources}
        assert len(present) == len(record.resources)
        for ref in _references(record.resources):
            assert ref == PATIENT_REF or ref in present, ref


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_mapping_is_deterministic(name):
    first, second = mapped(name), mapped(name)
    assert asdict(first) == asdict(second)
    assert json.dumps(asdict(first), ensure_ascii=False) == json.dumps(asdict(second),
                                                                        ensure_ascii=False)


# ---------------------------------------------------------------------------------------------
# Quirks
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quirks():
    return mapped("upload_quirks.json")


def test_quirks_upload_outcome(quirks):
    assert [r.location for r in quirks.records] == ["jzjl[0]", "jzjl[2]", "jzjl[3]"]
    assert [r.location for r in quirks.rejected] == ["jzjl[1].hzxx.csrq"]


def test_stray_spaces_full_width_and_json_numbers(quirks):
    record = quirks.records[0]
    assert record.key == "H33040200006|MZ202404010001"  # " MZ202404010001 "
    patient = record.patient
    assert patient["identifier"][0] == {"system": RESIDENT_ID_SYSTEM,
                                        "value": "330402196201010044"}  # full-width digits
    assert patient["identifier"][1] == {"system": INSURANCE_CARD_SYSTEM,
                                        "value": "A33040200054321",
                                        "assigner": {"identifier": {"value": "330402"},
                                                     "display": "参保地 330402"}}  # cbd a number
    assert patient["name"] == [{"text": "沈月娥"}]
    assert (patient["gender"], patient["birthDate"]) == ("female", "1962-01-01")  # numbers
    enc = only(record.resources, "Encounter")
    assert enc["class"]["code"] == "AMB"  # jzlx 1 as a JSON number
    assert enc["serviceType"]["coding"][0]["code"] == "0201"  # "０２０１"
    obs = {o["code"]["text"]: o for o in all_of(record.resources, "Observation")}
    assert obs["空腹血糖"]["valueQuantity"]["value"] == 7.8  # JSON number 7.80
    assert obs["糖化血红蛋白"]["valueQuantity"]["value"] == 8.2  # "８.２"
    assert obs["糖化血红蛋白"]["referenceRange"][0]["high"]["value"] == 6  # "４-６"
    assert obs["糖化血红蛋白"]["interpretation"][0]["coding"][0]["code"] == "H"  # " H "
    dosage = only(record.resources, "MedicationRequest")["dosageInstruction"][0]
    assert dosage["doseAndRate"][0]["doseQuantity"]["value"] == 0.5  # JSON number
    assert dosage["timing"]["repeat"]["boundsDuration"]["value"] == 14
    assert dosage["timing"]["code"]["coding"][0]["code"] == "TID"  # "TID "
    passport_visit = quirks.records[2]
    dose = only(passport_visit.resources, "MedicationRequest")["dosageInstruction"][0]
    assert dose["doseAndRate"][0]["doseQuantity"]["value"] == 1.4  # "１.４"
    assert dose["timing"]["repeat"]["boundsDuration"]["value"] == 5  # "５"


def test_empty_strings_are_absent(quirks):
    record = quirks.records[0]
    assert "telecom" not in record.patient  # lxdh ""
    assert all_of(record.resources, "Practitioner") == []  # ysgh "", ysxm ""
    assert "participant" not in only(record.resources, "Encounter")
    glucose = next(o for o in all_of(record.resources, "Observation")
                   if o["code"]["text"] == "空腹血糖")
    assert [c["system"] for c in glucose["code"]["coding"]] == [LOCAL_LAB_SYSTEM]  # loinc ""
    med = only(record.resources, "MedicationRequest")
    assert "requester" not in med
    no_code = only(quirks.records[2].resources, "MedicationRequest")  # ypdm ""
    assert no_code["medicationCodeableConcept"] == {"text": "连花清瘟胶囊 0.35g*24粒"}


def test_each_time_format(quirks):
    record = quirks.records[0]
    assert only(record.resources, "Encounter")["period"]["start"] == "2024-04-01T08:30:00+08:00"
    assert only(record.resources, "Condition")["recordedDate"] == "2024-04-01T08:45:00+08:00"
    assert all(o["effectiveDateTime"] == "2024-04-01"
               for o in all_of(record.resources, "Observation"))
    rad = next(r for r in all_of(record.resources, "DiagnosticReport")
               if r["category"][0]["coding"][0]["code"] == "RAD")
    assert rad["effectiveDateTime"] == "2024-04-01T09:10:00+08:00"
    assert only(quirks.records[2].resources, "Encounter")["period"]["start"] == "2024-04-02"


def test_unknown_keys_are_noted_with_their_path(quirks):
    assert quirks.notes == [
        "jkbb: unknown key, kept in the archived original",
        "jzjl[0].hzxx.mz: unknown key, kept in the archived original",
    ]
    assert "汉族" not in json.dumps([asdict(r) for r in quirks.records], ensure_ascii=False)


def test_unknown_keys_at_every_level():
    doc = {"jgdm": "H1", "x": 1, "jzjl": [{"jzlsh": "A", "jyjg": [{"bgdh": "B", "yq": "C"}],
                                           "hzxx": {"mz": "汉族"}}, "not an object"]}
    assert unknown_keys(doc, KNOWN_KEYS) == ["x", "jzjl[0].jyjg[0].yq", "jzjl[0].hzxx.mz"]


def test_birth_date_disagreeing_with_the_resident_id(quirks):
    rejection = quirks.rejected[0]
    assert rejection.location == "jzjl[1].hzxx.csrq"
    assert "2010-06-02" in rejection.reason and "3304**********005X" in rejection.reason
    assert "33042120100601005X" not in rejection.reason


def test_visit_without_any_identity_document_is_kept(quirks):
    record = quirks.records[1]
    assert record.key == "H33040200006|JZ202404010003"
    assert record.patient["identifier"] == [{
        "system": HOSPITAL_PATIENT_NO_SYSTEM, "value": "JZ202404010003",
        "assigner": {"reference": f"Organization/{make_id('Organization', 'H33040200006')}",
                     "identifier": {"system": HOSPITAL_SYSTEM, "value": "H33040200006"},
                     "display": "嘉兴市南湖区新兴社区卫生服务中心"}}]
    assert record.patient["gender"] == "unknown"
    assert "birthDate" not in record.patient and "address" not in record.patient
    assert only(record.resources, "Encounter")["class"]["code"] == "EMER"
    assert all_of(record.resources, "AllergyIntolerance") == []


# ---------------------------------------------------------------------------------------------
# Rejections
# ---------------------------------------------------------------------------------------------


def _basic_with(change) -> dict:
    doc = doc_of("upload_basic.json")
    second = copy.deepcopy(doc["jzjl"][0])
    second["jzlsh"] = "MZ20240315000124"
    doc["jzjl"].append(second)
    change(doc["jzjl"][0])
    return doc


@pytest.mark.parametrize("change, location", [
    (lambda v: v["hzxx"].update(zjhm="330421198504120021"), "jzjl[0].hzxx.zjhm"),
    (lambda v: v["hzxx"].update(zjhm="3304211985041200"), "jzjl[0].hzxx.zjhm"),
    (lambda v: v.update(jzsj="2024-02-30 09:00"), "jzjl[0].jzsj"),
    (lambda v: v.update(jzsj="15/03/2024"), "jzjl[0].jzsj"),
    (lambda v: v["zdxx"][0].update(zdsj="昨天"), "jzjl[0].zdxx[0].zdsj"),
    (lambda v: v["jyjg"][0].update(bgsj="2024031510"), "jzjl[0].jyjg[0].bgsj"),
    (lambda v: v["jcbg"][0].update(jcsj="2024-13-01"), "jzjl[0].jcbg[0].jcsj"),
    (lambda v: v["hzxx"].update(csrq="19850499"), "jzjl[0].hzxx.csrq"),
    (lambda v: v.update(jzlsh=""), "jzjl[0].jzlsh"),
    (lambda v: v.pop("jzlsh"), "jzjl[0].jzlsh"),
    (lambda v: v.update(jzlx="5"), "jzjl[0].jzlx"),
    (lambda v: v["hzxx"].update(xb="3"), "jzjl[0].hzxx.xb"),
    (lambda v: v["zdxx"][0].update(zdlx="7"), "jzjl[0].zdxx[0].zdlx"),
    (lambda v: v["jyjg"][0].update(ycts="X"), "jzjl[0].jyjg[0].ycts"),
    (lambda v: v["jyjg"][0].update(bgdh=""), "jzjl[0].jyjg[0].bgdh"),
    (lambda v: v["cfxx"][0].update(dcjl="半片"), "jzjl[0].cfxx[0].dcjl"),
    (lambda v: v["cfxx"][0].update(cfh=None), "jzjl[0].cfxx[0].cfh"),
    (lambda v: v["cfxx"][0].update(ts="-3"), "jzjl[0].cfxx[0].ts"),
    (lambda v: v["cfxx"][0].update(dcjl=0), "jzjl[0].cfxx[0].dcjl"),
    (lambda v: v.update(hzxx=["李四"]), "jzjl[0].hzxx"),
    (lambda v: v.update(jyjg={"bgdh": "x"}), "jzjl[0].jyjg"),
    (lambda v: v.update(zdxx=["J06.900"]), "jzjl[0].zdxx[0]"),
    (lambda v: v.update(ksmc={"name": "呼吸内科"}), "jzjl[0].ksmc"),
])
def test_a_bad_visit_is_rejected_at_its_field_and_the_rest_maps(change, location):
    result = map_upload(encode(_basic_with(change)), "H33042100015")
    assert [r.location for r in result.rejected] == [location]
    assert result.rejected[0].reason
    assert [r.key for r in result.records] == ["H33042100015|MZ20240315000124"]


def test_a_visit_that_is_not_an_object_is_rejected():
    doc = doc_of("upload_basic.json")
    doc["jzjl"].insert(0, "MZ1")
    result = map_upload(encode(doc), "H33042100015")
    assert [r.location for r in result.rejected] == ["jzjl[0]"]
    assert [r.location for r in result.records] == ["jzjl[1]"]


def test_no_reason_shows_a_full_resident_id():
    doc = doc_of("upload_basic.json")
    doc["jzjl"][0]["jzsj"] = LISI_ID  # an ID pasted into a time field
    result = map_upload(encode(doc), "H33042100015")
    assert result.rejected[0].location == "jzjl[0].jzsj"
    assert LISI_ID not in result.rejected[0].reason
    assert "3304**********002X" in result.rejected[0].reason


def test_resident_id_with_lower_case_x_is_normalized():
    doc = doc_of("upload_basic.json")
    doc["jzjl"][0]["hzxx"]["zjhm"] = "33042119850412002x"
    patient = map_upload(encode(doc), "H33042100015").records[0].patient
    assert patient["identifier"][0]["value"] == LISI_ID


def test_legacy_15_digit_resident_id_is_widened():
    assert normalize_resident_id("330421850412002") == LISI_ID
    doc = doc_of("upload_basic.json")
    doc["jzjl"][0]["hzxx"]["zjhm"] = "330421850412002"
    patient = map_upload(encode(doc), "H33042100015").records[0].patient
    assert patient["identifier"][0]["value"] == LISI_ID


def test_a_repeated_visit_number_is_noted():
    doc = doc_of("upload_basic.json")
    doc["jzjl"].append(copy.deepcopy(doc["jzjl"][0]))
    result = map_upload(encode(doc), "H33042100015")
    assert len(result.records) == 2
    assert result.notes == ["jzjl[1].jzlsh: same visit as jzjl[0]; the later one replaces the "
                            "earlier"]


# ---------------------------------------------------------------------------------------------
# The upload as a whole
# ---------------------------------------------------------------------------------------------


def test_foreign_sender():
    with pytest.raises(ForeignSender):
        map_upload(body_of("upload_basic.json"), "H33010600001")


def test_sender_code_with_spaces_and_full_width_is_the_same_hospital():
    doc = doc_of("upload_basic.json")
    doc["jgdm"] = " Ｈ33042100015 "
    assert map_upload(encode(doc), "H33042100015").records


@pytest.mark.parametrize("body", [
    b"\xff\xfe{}",
    "{\"jgdm\": \"H33042100015\", \"jzjl\": []}".encode("gbk") + "医院".encode("gbk"),
    b"",
    b"{\"jgdm\": \"H33042100015\", \"jzjl\": [",
    b"[]",
    b"\"jzjl\"",
    b"{\"jgdm\": \"H33042100015\"}",
    b"{\"jgdm\": \"H33042100015\", \"jzjl\": {}}",
    b"{\"jgdm\": \"H33042100015\", \"jzjl\": [], \"x\": NaN}",
    b"{\"jgdm\": \"H33042100015\", \"jzjl\": [\"\\ud800\"]}",
    b"{\"jzjl\": []}",
    b"{\"jgdm\": {\"a\": 1}, \"jzjl\": []}",
    b"[" * 100000,
])
def test_unreadable_upload(body):
    with pytest.raises(UnreadableUpload) as exc:
        map_upload(body, "H33042100015")
    assert str(exc.value)


def test_utf8_bom_is_tolerated():
    assert map_upload(b"\xef\xbb\xbf" + body_of("upload_basic.json"), "H33042100015").records


def test_upload_level_oddities_are_notes():
    doc = doc_of("upload_basic.json")
    doc.update(yydj="5", scsj="明天")
    result = map_upload(encode(doc), "H33042100015")
    assert result.records
    assert sorted(result.notes) == ["scsj: unreadable date/time: '明天', not mapped",
                                    "yydj: unknown hospital level '5', not mapped"]
    assert len(only(result.records[0].resources, "Organization")["type"]) == 1


# ---------------------------------------------------------------------------------------------
# Robustness: nothing but the two upload-level exceptions ever escapes
# ---------------------------------------------------------------------------------------------

ALLOWED = (UnreadableUpload, ForeignSender)


def _map_quietly(body: bytes, sender: str) -> None:
    try:
        result = map_upload(body, sender)
    except ALLOWED:
        return
    for record in result.records:  # what comes out is still valid
        for resource in [record.patient, *record.resources]:
            get_fhir_model_class(resource["resourceType"]).model_validate(resource)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes(body):
    _map_quietly(body, "H33042100015")


def _paths(value: Any, path: tuple = ()) -> list[tuple]:
    out = [path]
    if isinstance(value, dict):
        for key, sub in value.items():
            out += _paths(sub, path + (key,))
    elif isinstance(value, list):
        for j, sub in enumerate(value):
            out += _paths(sub, path + (j,))
    return out


def _replace(doc: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = new
    return doc


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.sampled_from(["", " ", "６.８", "<0.5", "阴性", "20240315",
                                             "2024-02-30", "01", LISI_ID, "\u3000"]),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8)
_base = {name: doc_of(name) for name in ALL_FIXTURES}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(ALL_FIXTURES), st.data())
def test_random_mutations_of_the_fixtures(name, data):
    doc = copy.deepcopy(_base[name])
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(doc)))
        if path and data.draw(st.booleans()) and isinstance(doc, (dict, list)):
            parent = doc
            for step in path[:-1]:
                parent = parent[step]
            del parent[path[-1]]  # drop a key or a list entry
        else:
            doc = _replace(doc, path, data.draw(_json_values))
    _map_quietly(encode(doc) if not isinstance(doc, bytes) else doc, SENDERS[name])


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(ALL_FIXTURES), st.data())
def test_random_byte_flips_of_the_fixtures(name, data):
    body = bytearray(body_of(name))
    for _ in range(data.draw(st.integers(1, 4))):
        body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
    _map_quietly(bytes(body), SENDERS[name])
