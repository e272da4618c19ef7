"""Replace, unchanged and history rules of the store."""

import orjson
from sqlalchemy import select

from hub import store
from hub.db import writer
from hub.models import Resource, ResourceHistory, SearchIndex
from mappers.common import PATIENT_REF, RESIDENT_ID_SYSTEM, Record, make_id

RID = "33042119850412002X"


def visit(key="V1", codes=("J06.900",)):
    pat = {"resourceType": "Patient", "identifier": [{"system": RESIDENT_ID_SYSTEM, "value": RID}]}
    resources = [{"resourceType": "Condition", "id": make_id("c", key, c),
                  "subject": {"reference": PATIENT_REF},
                  "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": c}]}}
                 for c in codes]
    return Record(key=key, hospital="H33042100015", patient=pat, resources=resources)


def put(engine, *records):
    with writer(engine).begin() as conn:
        return store.put_records(conn, "zj", list(records), None)


def current(engine, res_type="Condition"):
    with engine.connect() as conn:
        return conn.execute(select(Resource.res_id, Resource.version, Resource.deleted,
                                   Resource.content, Resource.patient_id)
                            .where(Resource.res_type == res_type)).all()


def test_same_record_twice_is_unchanged(db):
    assert put(db, visit()).stored == 1
    again = put(db, visit())
    assert (again.stored, again.unchanged) == (0, 1)
    assert [r.version for r in current(db)] == [1]


def rows_visit(*digests, codes=("J06.900",)):
    record = visit(codes=codes)
    record.row_digests = list(digests)
    return record


def test_a_record_listing_its_rows_counts_rows_not_itself(db):
    first = put(db, rows_visit("r1", "r2", "r2"))
    assert (first.stored, first.unchanged) == (2, 1)
    grown = put(db, rows_visit("r1", "r2", "r3", codes=("J06.900", "R05.x00")))
    assert (grown.stored, grown.unchanged) == (1, 2)
    same = put(db, rows_visit("r1", "r2", "r3", codes=("J06.900", "R05.x00")))
    assert (same.stored, same.unchanged) == (0, 3)


def test_resend_replaces_and_keeps_history(db):
    put(db, visit(codes=("J06.900", "R05.x00")))
    result = put(db, visit(codes=("J06.900", "J20.900")))
    assert result.stored == 1
    rows = {r.res_id: r for r in current(db)}
    dropped = rows[make_id("c", "V1", "R05.x00")]
    assert dropped.deleted and dropped.version == 2
    assert not rows[make_id("c", "V1", "J20.900")].deleted
    assert rows[make_id("c", "V1", "J06.900")].version == 1  # unchanged resource keeps its version
    with db.connect() as conn:
        history = conn.execute(select(ResourceHistory.version, ResourceHistory.deleted,
                                      ResourceHistory.content)
                               .where(ResourceHistory.res_id == dropped.res_id)
                               .order_by(ResourceHistory.version)).all()
        indexed = conn.execute(select(SearchIndex.value).where(
            SearchIndex.res_id == dropped.res_id)).all()
    assert [(h.version, h.deleted) for h in history] == [(1, False)]
    assert b"R05.x00" in history[0].content
    assert indexed == []


def test_changed_resource_keeps_its_earlier_version(db):
    put(db, visit(codes=("J06.900",)))
    record = visit(codes=("J06.900",))
    record.resources[0]["code"]["text"] = "急性上呼吸道感染"
    put(db, record)
    row = current(db)[0]
    assert row.version == 2 and b"text" in row.content
    with db.connect() as conn:
        old = conn.execute(select(ResourceHistory.version, ResourceHistory.content)
                           .where(ResourceHistory.res_id == row.res_id)).one()
    assert old.version == 1 and b"text" not in old.content


def test_patient_placeholder_is_rewritten_to_the_index_id(db):
    put(db, visit())
    row = current(db)[0]
    assert orjson.loads(row.content)["subject"]["reference"] == f"Patient/{row.patient_id}"
    with db.connect() as conn:
        values = conn.execute(select(SearchIndex.value)).scalars().all()
    assert "__patient__" not in values


def test_sensitive_category_is_recorded(db):
    put(db, visit(codes=("F32.900", "J06.900")))
    with db.connect() as conn:
        cats = dict(conn.execute(select(Resource.res_id, Resource.sensitive)
                                 .where(Resource.res_type == "Condition")).all())
    assert cats[make_id("c", "V1", "F32.900")] == "mental"
    assert cats[make_id("c", "V1", "J06.900")] is None


def test_encounter_shared_by_two_records_accumulates_and_is_not_retired(db):
    enc_id = make_id("Encounter", "V1")
    first = visit("DOC-A")
    first.resources.append({"resourceType": "Encounter", "id": enc_id, "status": "finished",
                            "class": {"code": "AMB"}, "subject": {"reference": PATIENT_REF},
                            "serviceType": {"text": "呼吸内科"}})
    second = visit("DOC-B", codes=("R05.x00",))
    second.resources.append({"resourceType": "Encounter", "id": enc_id, "status": "finished",
                             "class": {"code": "AMB"}, "subject": {"reference": PATIENT_REF},
                             "period": {"start": "2024-03-15T09:00:00+08:00"}})
    put(db, first, second)
    second.resources.pop()  # a new version of DOC-B no longer mentions the encounter
    second.resources[0]["code"]["text"] = "咳嗽"
    put(db, second)
    (enc,) = current(db, "Encounter")
    body = orjson.loads(enc.content)
    assert not enc.deleted
    assert body["serviceType"] == {"text": "呼吸内科"} and "period" in body


def lab_row(key: str, item: str) -> Record:
    """One Anhui-style lab row: its own record, the shared report listing only this row."""
    pat = {"resourceType": "Patient", "identifier": [{"system": RESIDENT_ID_SYSTEM, "value": RID}]}
    report_id, obs_id = make_id("report", "R1"), make_id("obs", "R1", item)
    return Record(key=key, hospital="H34010400001", patient=pat, resources=[
        {"resourceType": "Observation", "id": obs_id, "status": "final",
         "code": {"text": item}, "subject": {"reference": PATIENT_REF}},
        {"resourceType": "DiagnosticReport", "id": report_id, "status": "final",
         "code": {"text": "血常规"}, "subject": {"reference": PATIENT_REF},
         "result": [{"reference": f"Observation/{obs_id}"}]}])


def test_a_report_sent_in_parts_lists_every_part(db):
    put(db, lab_row("R1|WBC", "WBC"))
    put(db, lab_row("R1|HGB", "HGB"), lab_row("R1|PLT", "PLT"))
    (report,) = current(db, "DiagnosticReport")
    results = [r["reference"] for r in orjson.loads(report.content)["result"]]
    assert results == [f"Observation/{make_id('obs', 'R1', i)}" for i in ("WBC", "HGB", "PLT")]


def test_a_corrected_report_that_drops_a_result_drops_it_from_the_list(db):
    first = lab_row("R1", "WBC")
    extra_id = make_id("obs", "R1", "CRP")
    first.resources.insert(1, {"resourceType": "Observation", "id": extra_id, "status": "final",
                               "code": {"text": "CRP"}, "subject": {"reference": PATIENT_REF}})
    first.resources[2]["result"].append({"reference": f"Observation/{extra_id}"})
    put(db, first)
    put(db, lab_row("R1", "WBC"))  # the same record, corrected: CRP gone
    (report,) = current(db, "DiagnosticReport")
    assert [r["reference"] for r in orjson.loads(report.content)["result"]] == [
        f"Observation/{make_id('obs', 'R1', 'WBC')}"]


def test_a_corrected_row_keeps_the_other_rows_in_the_report(db):
    put(db, lab_row("R1|WBC", "WBC"), lab_row("R1|HGB", "HGB"))
    corrected = lab_row("R1|HGB", "HGB")
    corrected.resources[0]["valueString"] = "128"
    put(db, corrected)
    (report,) = current(db, "DiagnosticReport")
    assert len(orjson.loads(report.content)["result"]) == 2
