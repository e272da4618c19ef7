"""Jiangsu CDA through the hub: versions, attacks refused before resolution, one patient across
provinces."""

from mappers.common import RESIDENT_ID_SYSTEM
from tests.support.common import FIXTURES

JS, SH, ZJ = FIXTURES / "js", FIXTURES / "sh", FIXTURES / "zj"
RID = "33042119850412002X"


def post(hub, path, body, sender, content_type="application/xml"):
    with hub.client(hub.token("hospital", sender)) as c:
        return c.post(path, content=body, headers={"Content-Type": content_type})


def test_later_version_replaces_and_older_is_refused(hub):
    v1, v2 = (JS / "outpatient.xml").read_bytes(), (JS / "outpatient_v2.xml").read_bytes()
    assert post(hub, "/ingest/js", v1, "H32050900012").json()["stored"] == 1
    assert post(hub, "/ingest/js", v2, "H32050900012").json()["stored"] == 1
    older = post(hub, "/ingest/js", v1, "H32050900012").json()
    assert older["stored"] == 0 and "older" in older["rejected"][0]["reason"]
    assert post(hub, "/ingest/js", v2, "H32050900012").json()["unchanged"] == 1


def test_entity_attacks_are_400(hub):
    for name in ("xxe.xml", "billion_laughs.xml", "external_dtd.xml"):
        answer = post(hub, "/ingest/js", (JS / name).read_bytes(), "H32050900012")
        assert answer.status_code == 400, name
        assert "DOCTYPE" in answer.json()["error"]["message"] or "DTD" in answer.json()["error"]["message"]


def test_one_patient_across_three_provinces(hub):
    assert post(hub, "/ingest/zj", (ZJ / "upload_basic.json").read_bytes(), "H33042100015",
                "application/json").status_code == 200
    assert post(hub, "/ingest/js", (JS / "lab_report.xml").read_bytes(), "H32010600001").status_code == 200
    ack = post(hub, "/ingest/sh", (SH / "adt_a01.hl7").read_bytes(), "H31010400007",
               "x-application/hl7-v2+er7")
    assert b"MSA|AA" in ack.content, ack.content
    with hub.client(hub.token("admin")) as c:
        bundle = c.get("/fhir/Patient", params={"identifier": f"{RESIDENT_ID_SYSTEM}|{RID}"}).json()
        assert bundle["total"] == 1
        pid = bundle["entry"][0]["resource"]["id"]
        everything = c.get(f"/fhir/Patient/{pid}/$everything").json()
    provinces = {e["resource"]["serviceProvider"]["reference"] for e in everything["entry"]
                 if e["resource"]["resourceType"] == "Encounter"}
    assert len(provinces) == 3
