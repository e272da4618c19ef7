"""/fhir over a real socket: read, every search parameter, date prefixes, paging, $everything."""

import pytest
from fhir.resources.R4B import get_fhir_model_class

from hub import search
from mappers.common import make_id
from tests.support.common import FIXTURES
from tests.support.references import hospital_code_problems, organization_references

ZJ = FIXTURES / "zj"
RID = "33042119850412002X"
from tests.support.fhir import load_zj_fixtures, patient_id


@pytest.fixture()
def loaded(hub):
    """The Zhejiang fixtures ingested by their hospitals; an admin client to read them."""
    load_zj_fixtures(hub)
    client = hub.client(hub.token("admin"))
    yield client
    client.close()


def validate_all(bundle):
    for entry in bundle.get("entry", []):
        resource = entry["resource"]
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def test_same_person_from_two_hospitals_is_one_patient(loaded):
    pid = patient_id(loaded)
    bundle = loaded.get("/fhir/Encounter", params={"patient": pid}).json()
    hospitals = {e["resource"]["serviceProvider"]["reference"] for e in bundle["entry"]}
    assert bundle["total"] == 2 and len(hospitals) == 2


def test_answers_are_fhir_json_and_valid_r4(loaded):
    pid = patient_id(loaded)
    answer = loaded.get(f"/fhir/Patient/{pid}/$everything")
    assert answer.headers["content-type"].startswith("application/fhir+json")
    bundle = answer.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    types = {e["resource"]["resourceType"] for e in bundle["entry"]}
    assert {"Patient", "Encounter", "Condition", "Observation", "DiagnosticReport",
            "ImagingStudy", "MedicationRequest", "AllergyIntolerance", "Organization"} <= types
    assert bundle["total"] == len(bundle["entry"])
    validate_all(bundle)
    assert bundle["entry"][0]["resource"]["resourceType"] == "Patient"
    for entry in bundle["entry"]:
        ref = entry["resource"].get("subject") or entry["resource"].get("patient")
        if ref:
            assert ref["reference"] == f"Patient/{pid}"


def test_an_encounter_read_names_its_hospital_by_code(loaded):
    jiashan = "H33042100015"
    encounter = loaded.get(f"/fhir/Encounter/{make_id('Encounter', jiashan, 'MZ20240315000123')}")
    assert encounter.status_code == 200, encounter.text
    encounter = encounter.json()
    code = {"system": "urn:oid:2.16.156.10011.1.5", "value": jiashan}
    assert encounter["identifier"][0]["value"] == "MZ20240315000123"
    assert encounter["identifier"][0]["assigner"]["identifier"] == code
    assert encounter["serviceProvider"]["identifier"] == code
    organization = f"Organization/{make_id('Organization', jiashan)}"
    assert encounter["serviceProvider"]["reference"] == organization


def test_everything_a_hospital_reads_names_every_hospital_by_code(hub, loaded):
    pid = patient_id(loaded)
    with hub.client(hub.token("hospital", "H34010400001")) as anhui:
        answer = anhui.get(f"/fhir/Patient/{pid}/$everything",
                           headers={"X-Emergency-Reason": "unconscious on arrival"})
    assert answer.status_code == 200, answer.text
    resources = [e["resource"] for e in answer.json()["entry"]]
    assert [p for r in resources for p in hospital_code_problems(r)] == []
    organizations = {f"Organization/{r['id']}": r for r in resources
                     if r["resourceType"] == "Organization"}
    references = [ref for r in resources for _, ref in organization_references(r)]
    assert len(references) > len(organizations) >= 2
    for ref in references:  # the code given is the code of the Organization referred to
        assert ref["identifier"] in organizations[ref["reference"]]["identifier"]


def test_read_by_id_has_meta_version(loaded):
    pid = patient_id(loaded)
    patient = loaded.get(f"/fhir/Patient/{pid}").json()
    assert patient["id"] == pid and patient["meta"]["versionId"] in {"1", "2"}
    assert loaded.get("/fhir/Patient/nope").status_code == 404
    outcome = loaded.get("/fhir/Patient/nope").json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert loaded.get("/fhir/Basic/x").status_code == 404


def search_total(client, res_type, **params):
    answer = client.get(f"/fhir/{res_type}", params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()["total"]


@pytest.mark.parametrize("res_type,params,expected", [
    ("Encounter", {"date": "2024-03-15"}, 1),
    ("Encounter", {"date": "ge2024-04-01"}, 3),
    ("Encounter", {"date": "lt2024-04-01"}, 1),
    ("Encounter", {"date": "gt2024-04-08"}, 0),
    ("Encounter", {"date": "le2024-04-08T02:47:00+08:00"}, 3),
    ("Encounter", {"date": "lt2024-04-08T02:47:00+08:00"}, 2),
    ("Encounter", {"class": "EMER"}, 1),
    ("Encounter", {"identifier": "MZ20240315000123"}, 1),
    ("Condition", {"code": "J06.900"}, 1),
    ("Condition", {"code": "I10.x00,K35.800"}, 2),
    ("Condition", {"recorded-date": "2024-04-08"}, 3),
    ("Condition", {"category": "encounter-diagnosis", "recorded-date": "lt2024-04-01"}, 1),
    ("Observation", {"code": "http://loinc.org|2345-7"}, 1),
    ("Observation", {"category": "laboratory", "date": "2024-04-08"}, 7),
    ("DiagnosticReport", {"identifier": "LIS202404080019"}, 1),
    ("DiagnosticReport", {"category": "RAD"}, 2),
    ("ImagingStudy", {"modality": "CT"}, 1),
    ("ImagingStudy", {"started": "2024-03-15"}, 1),
    ("AllergyIntolerance", {"date": "2024-03-15"}, 1),
    ("MedicationRequest", {"authoredon": "2024-04-08"}, 4),
])
def test_search_parameters(loaded, res_type, params, expected):
    assert search_total(loaded, res_type, **params) == expected


def test_every_declared_parameter_is_accepted(loaded):
    values = {"date": "ge2000-01-01", "token": "x", "reference": "x", "string": "x"}
    for res_type, params in search.PARAMS.items():
        for param in params:
            answer = loaded.get(f"/fhir/{res_type}", params={param.name: values[param.kind]})
            assert answer.status_code == 200, (res_type, param.name, answer.text)


def test_search_by_encounter_reference(loaded):
    enc = loaded.get("/fhir/Encounter", params={"class": "EMER"}).json()["entry"][0]["resource"]
    assert search_total(loaded, "Observation", encounter=f"Encounter/{enc['id']}") == 6


def test_unknown_parameter_and_bad_date_are_400(loaded):
    assert loaded.get("/fhir/Condition", params={"colour": "red"}).status_code == 400
    assert loaded.get("/fhir/Condition", params={"recorded-date": "ge2024-13-45"}).status_code == 400
    assert loaded.get("/fhir/Condition", params={"_count": "many"}).status_code == 400


def test_paging_with_next_and_total(loaded):
    pid = patient_id(loaded)
    seen, url, totals = [], "/fhir/Observation", set()
    params = {"patient": pid, "_count": "1"}
    while url:
        page = loaded.get(url, params=params).json()
        totals.add(page["total"])
        seen += [e["resource"]["id"] for e in page["entry"]]
        assert len(page["entry"]) <= 1
        url = next((l["url"] for l in page["link"] if l["relation"] == "next"), None)
        params = None
    assert totals == {len(seen)} and len(seen) == len(set(seen)) == 2


def test_newest_first(loaded):
    bundle = loaded.get("/fhir/Encounter").json()
    starts = [e["resource"]["period"]["start"] for e in bundle["entry"]]
    assert starts == sorted(starts, reverse=True)


def test_count_is_capped_at_500(loaded):
    bundle = loaded.get("/fhir/Observation", params={"_count": "100000"}).json()
    self_link = next(l["url"] for l in bundle["link"] if l["relation"] == "self")
    assert "_count=500" in self_link


def test_metadata_needs_no_token_and_nothing_else_under_fhir_goes_without(hub):
    answer = hub.client().get("/fhir/metadata")  # hub-interface.md, "Who is calling"
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/fhir+json")
    statement = answer.json()
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"] == "4.0.1"
    get_fhir_model_class("CapabilityStatement").model_validate(statement)
    for path in ("/fhir/Patient", "/fhir/Patient/1", "/fhir/Patient/1/$everything",
                 "/fhir/Encounter", "/fhir/AuditEvent"):
        refused = hub.client().get(path)
        assert refused.status_code == 401, path
        assert refused.json()["resourceType"] == "OperationOutcome"


def test_fhir_reads_need_a_reader(loaded, hub):
    assert hub.client().get("/fhir/Patient").status_code == 401
    insurer = hub.client(hub.token("insurer", "ZJ"))
    answer = insurer.get("/fhir/Patient")
    assert answer.status_code == 403
    assert answer.json()["resourceType"] == "OperationOutcome"
    hospital = hub.client(hub.token("hospital", "H31011800012"))
    assert hospital.get("/fhir/Encounter").status_code == 200
