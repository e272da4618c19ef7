"""/openapi.json documents /ingest and /admin, and what they really answer fits the models it
documents (no field missing, none unaccounted for); the docs pages, which would load scripts
from a CDN, are not served."""

import json

from pydantic import TypeAdapter

from hub import api_models
from tests.support.common import FIXTURES
from tests.support.fhir import sh_visit

QUIRKS = FIXTURES / "zj" / "upload_quirks.json"


def schema_ref(operation, status: str) -> str:
    return json.dumps(operation["responses"][status]["content"]["application/json"]["schema"])


def test_ingest_and_admin_are_documented(hub):
    document = hub.client().get("/openapi.json").json()
    ingest = document["paths"]["/ingest/{channel_name}"]["post"]
    assert set(ingest["requestBody"]["content"]) >= {"application/json", "application/xml",
                                                     "text/csv", "multipart/form-data"}
    assert "IngestSummary" in schema_ref(ingest, "200")
    assert all("ErrorBody" in schema_ref(ingest, s) for s in ("400", "401", "403", "413"))
    uploads = document["paths"]["/admin/uploads"]["get"]
    assert "Uploads" in schema_ref(uploads, "200")
    rerun = document["paths"]["/admin/uploads/{upload_id}/rerun"]["post"]
    assert "RerunDone" in schema_ref(rerun, "200") and "RerunError" in schema_ref(rerun, "200")
    assert "Remap" in schema_ref(document["paths"]["/admin/remap"]["post"], "200")
    summary = document["components"]["schemas"]["IngestSummary"]
    assert set(summary["required"]) == {"stored", "unchanged", "rejected", "notes", "upload_id"}
    for page in ("/docs", "/redoc"):
        assert hub.client().get(page).status_code == 404


def test_real_answers_fit_the_documented_models(hub):
    quirks = QUIRKS.read_bytes()
    with hub.client(hub.token("hospital", json.loads(quirks)["jgdm"])) as c:
        first = c.post("/ingest/zj", content=quirks)
        summary = api_models.IngestSummary.model_validate_json(first.content)
        assert summary.rejected and summary.stored
        unreadable = c.post("/ingest/zj", content=b"{broken")
        assert unreadable.status_code == 400
        api_models.ErrorBody.model_validate_json(unreadable.content)
    with hub.client(hub.token("hospital", "H31010400007")) as c:
        from datetime import datetime, timezone
        assert b"MSA|AA" in c.post("/ingest/sh", content=sh_visit("H31010400007",
                                                                   datetime.now(timezone.utc))).content
    with hub.client(hub.token("admin")) as admin:
        listed = api_models.Uploads.model_validate_json(
            admin.get("/admin/uploads", params={"set_aside": "false"}).content)
        kinds = {type(u.summary) for u in listed.uploads}
        assert kinds == {api_models.IngestSummary, api_models.SetAside, api_models.Hl7Summary}
        rerun = TypeAdapter(api_models.RerunDone | api_models.RerunError)
        assert isinstance(rerun.validate_json(admin.post(
            f"/admin/uploads/{summary.upload_id}/rerun").content), api_models.RerunDone)
        remap = api_models.Remap.model_validate_json(
            admin.post("/admin/remap", params={"channel": "zj"}).content)
        assert remap.uploads == 2 and len(remap.errors) == 1
        api_models.ErrorBody.model_validate_json(admin.post("/admin/uploads/999/rerun").content)
