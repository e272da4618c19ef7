"""The patient index rules: keys strongest first, never merged on name and birth date alone."""

from sqlalchemy import select

from hub import patients, store
from hub.models import PatientKey
from mappers.common import (HOSPITAL_PATIENT_NO_SYSTEM, INSURANCE_CARD_SYSTEM, PASSPORT_SYSTEM,
                            RESIDENT_ID_SYSTEM, Record)

RID = "33042119850412002X"
OTHER_RID = "11010519491231002X"


def patient(*identifiers, name="李四", birth="1985-04-12"):
    return {"resourceType": "Patient", "name": [{"text": name}], "birthDate": birth,
            "identifier": [{"system": s, "value": v} for s, v in identifiers]}


def record(key, hospital, pat, resources=()):
    return Record(key=key, hospital=hospital, patient=pat, resources=list(resources))


def test_keys_strongest_first_and_visit_fallback_last():
    p = patient((INSURANCE_CARD_SYSTEM, "A1"), (RESIDENT_ID_SYSTEM, RID),
                (HOSPITAL_PATIENT_NO_SYSTEM, "M9"), (PASSPORT_SYSTEM, "E123"))
    assert patients.match_keys(p, "H33042100015", "V1") == [
        f"rid:{RID}", f"doc:{PASSPORT_SYSTEM}|E123", "card:A1", "mrn:H33042100015|M9",
        "visit:H33042100015|V1"]


def test_no_document_is_its_own_visit():
    assert patients.match_keys(patient(), "H1", "V7") == ["visit:H1|V7"]


def test_weaker_key_does_not_join_another_persons_document():
    keys = [f"rid:{RID}", "card:A1", "visit:H|1"]
    known = {"card:A1": "p-other"}
    assert patients.choose(keys, known, {"p-other": f"rid:{OTHER_RID}"}) is None
    assert patients.choose(keys, known, {"p-other": "card:A1"}) == "p-other"


def test_merge_keeps_every_identifier_and_newest_details():
    old = patient((RESIDENT_ID_SYSTEM, RID), (HOSPITAL_PATIENT_NO_SYSTEM, "M1"))
    old["telecom"] = [{"system": "phone", "value": "1"}]
    new = patient((RESIDENT_ID_SYSTEM, RID), (INSURANCE_CARD_SYSTEM, "A1"), name="李四新")
    merged = patients.merge_patient(old, new, "pid")
    assert [i["value"] for i in merged["identifier"]] == [RID, "M1", "A1"]
    assert merged["name"] == [{"text": "李四新"}]
    assert merged["telecom"] == [{"system": "phone", "value": "1"}]
    assert merged["id"] == "pid"


def test_merge_takes_the_newer_form_of_an_identifier_in_its_place():
    assigner = {"reference": "Organization/h"}
    old = patient((RESIDENT_ID_SYSTEM, RID), (HOSPITAL_PATIENT_NO_SYSTEM, "M1"))
    old["identifier"][1]["assigner"] = assigner
    new = patient((HOSPITAL_PATIENT_NO_SYSTEM, "M1"))
    new["identifier"][0]["assigner"] = {**assigner, "identifier": {"value": "H1"}}
    merged = patients.merge_patient(old, new, "pid")
    assert merged["identifier"] == [old["identifier"][0], new["identifier"][0]]


def _put(engine, *records):
    from hub.db import writer

    with writer(engine).begin() as conn:
        return store.put_records(conn, "zj", list(records), None)


def test_same_resident_id_from_two_hospitals_is_one_patient(db):
    a = _put(db, record("V1", "H33042100015", patient((RESIDENT_ID_SYSTEM, RID))))
    b = _put(db, record("V9", "H31011800012", patient((RESIDENT_ID_SYSTEM, RID))))
    assert a.patients == b.patients


def test_same_name_and_birth_date_without_documents_are_two_patients(db):
    a = _put(db, record("V1", "H33042100015", patient()))
    b = _put(db, record("V2", "H33042100015", patient()))
    assert a.patients != b.patients


def test_insurance_card_links_a_later_visit_without_id(db):
    a = _put(db, record("V1", "H1", patient((RESIDENT_ID_SYSTEM, RID), (INSURANCE_CARD_SYSTEM, "A1"))))
    b = _put(db, record("V2", "H2", patient((INSURANCE_CARD_SYSTEM, "A1"))))
    assert a.patients == b.patients


def test_another_person_with_a_reused_card_is_not_merged(db):
    a = _put(db, record("V1", "H1", patient((RESIDENT_ID_SYSTEM, RID), (INSURANCE_CARD_SYSTEM, "A1"))))
    b = _put(db, record("V2", "H2", patient((RESIDENT_ID_SYSTEM, OTHER_RID), (INSURANCE_CARD_SYSTEM, "A1"))))
    assert a.patients != b.patients
    with db.connect() as conn:
        owner = conn.execute(select(PatientKey.patient_id).where(PatientKey.key == "card:A1")).scalar_one()
    assert {owner} == a.patients


def test_hospital_number_fallback_is_per_hospital(db):
    a = _put(db, record("V1", "H1", patient((HOSPITAL_PATIENT_NO_SYSTEM, "M1"))))
    b = _put(db, record("V2", "H1", patient((HOSPITAL_PATIENT_NO_SYSTEM, "M1"))))
    c = _put(db, record("V3", "H2", patient((HOSPITAL_PATIENT_NO_SYSTEM, "M1"))))
    assert a.patients == b.patients != c.patients


def test_portal_identity_joins_the_same_patient_as_records(db):
    pid = store.patient_for_resident_id(db, RID)
    assert store.patient_for_resident_id(db, RID) == pid
    later = _put(db, record("V1", "H33042100015", patient((RESIDENT_ID_SYSTEM, RID))))
    assert later.patients == {pid}
