"""/fhir driven by real FHIR client libraries, as hospitals will: fhirpy (pages through searches,
counts, sorts, reads) and the SMART ``fhirclient`` (reads the CapabilityStatement and a Patient
into its R4 models)."""

import pytest
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import ResourceNotFound

from tests.support.fhir import (RID, SH_H, close_world, load_zj_fixtures, make_world,
                                patient_id)


@pytest.fixture()
def admin_token(hub):
    load_zj_fixtures(hub)
    return hub.token("admin")


def fhirpy_client(hub, token: str) -> SyncFHIRClient:
    return SyncFHIRClient(f"{hub.url}/fhir", authorization=f"Bearer {token}")


def test_fhirpy_pages_through_a_search_and_agrees_with_total(hub, admin_token):
    client = fhirpy_client(hub, admin_token)
    observations = client.resources("Observation")
    everything = observations.limit(2).fetch_all()  # follows the Bundle's next links
    bundle = observations.limit(2).fetch_raw()
    assert len(everything) == bundle.total == observations.count() > 4
    assert len({o.id for o in everything}) == len(everything)
    newest = observations.sort("-date").limit(3).fetch_all()
    dates = [o.effectiveDateTime for o in newest]
    assert dates == sorted(dates, reverse=True) and len(newest) == len(everything)
    codes = observations.search(code="http://loinc.org|2345-7").elements("code").fetch_all()
    assert codes and all(set(o) <= {"resourceType", "id", "meta", "code", "status"}
                         for o in codes)


def test_fhirpy_reads_and_searches_as_a_hospital_under_the_rules(hub):
    world = make_world(hub)
    try:
        client = fhirpy_client(hub, hub.token("hospital", SH_H))
        pid = world["pid"]
        conditions = client.resources("Condition").search(patient=pid)
        seen = conditions.limit(1).fetch_all()
        assert len(seen) == conditions.count() == 2  # the F32 diagnosis is held back
        assert "F32" not in str([c.serialize() for c in seen])
        patient = client.reference("Patient", pid).to_resource()
        assert patient.id == pid and RID not in str(patient.serialize())
        by_identifier = client.resources("Patient").search(
            identifier=f"urn:oid:2.16.156.10011.1.3|{RID}").get()
        assert by_identifier.id == pid
        with pytest.raises(ResourceNotFound):
            client.reference("Condition", "no-such-id").to_resource()
    finally:
        close_world(world)


def test_fhirclient_reads_the_capability_statement_and_a_patient(hub, admin_token):
    from fhirclient import client as smart_client
    from fhirclient.models.patient import Patient

    with hub.client(admin_token) as c:
        pid = patient_id(c)
    smart = smart_client.FHIRClient(settings={"app_id": "yrdhub-test",
                                              "api_base": f"{hub.url}/fhir/"})
    # /fhir/metadata needs no token; the Patient does (fhirclient signs only with SMART auth)
    smart.server.session.headers["Authorization"] = f"Bearer {admin_token}"
    statement = smart.server.capabilityStatement
    assert statement.fhirVersion == "4.0.1"
    encounter = next(r for r in statement.rest[0].resource if r.type == "Encounter")
    assert {p.name for p in encounter.searchParam} >= {"date", "patient", "_lastUpdated"}
    assert smart.prepare()  # no SMART security declared: ready with the bearer token
    patient = Patient.read(pid, smart.server)
    assert patient.id == pid and patient.meta.versionId
    assert any(i.value == RID for i in patient.identifier)  # an administrator sees it whole
