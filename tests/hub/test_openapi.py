"""/openapi.json documents every route outside /fhir: a request schema where it takes a body, a
2xx answer schema, the hub's ErrorBody for its errors (never FastAPI's HTTPValidationError); the
interface's own examples (hub-interface.md) fit the documented schemas, and what the routes
really answer fits the models (no field missing, none unaccounted for; the settlement, /api/me
and corrections answers are checked against the document in tests/*/test_answers.py). The docs
pages, which would load scripts from a CDN, are not served."""

import json
import re

import pytest
from jsonschema.exceptions import ValidationError
from pydantic import TypeAdapter

from hub import api_models
from settlement.rules import SettleRequest
from settlement.errors import RequestInvalid
from tests.support.common import FIXTURES, PEERS
from tests.support.fhir import sh_visit
from tests.support.openapi import validator

INTERFACE = PEERS.parent / "world" / "hub-interface.md"
# Writes that take no body: they act on the path alone.
NO_BODY = {("post", "/settlement/{setl_id}/void"), ("post", "/admin/uploads/{upload_id}/rerun"),
           ("post", "/admin/remap")}

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


def api_operations(document: dict):
    """(method, path, operation) of every route outside /fhir and the HTML pages (the portal's and
    the administrators' sign-in)."""
    for path, operations in document["paths"].items():
        if not path.startswith(("/fhir", "/portal", "/admin/login", "/admin/logout")):
            yield from ((method, path, op) for method, op in operations.items())


def test_every_route_outside_fhir_documents_its_body_and_answers(hub):
    document = hub.client().get("/openapi.json").json()
    seen = set()
    for method, path, op in api_operations(document):
        seen.add(path)
        ok = [a for s, a in op["responses"].items() if s.startswith("2")]
        assert ok and all(a.get("content") for a in ok), (method, path)
        for schema in (c["schema"] for a in ok for m, c in a["content"].items() if m.endswith("json")):
            assert "$ref" in json.dumps(schema), (method, path)  # a named model, not "any JSON"
        if method in ("post", "put", "patch") and (method, path) not in NO_BODY:
            assert op["requestBody"]["content"], (method, path)
        for status, answer in op["responses"].items():
            if status[0] in "45" and not path.startswith("/metrics"):
                assert "ErrorBody" in json.dumps(answer) or "Health" in json.dumps(answer), (method, path, status)
    assert {"/settlement/settle", "/settlement/reconcile", "/settlement/clearing", "/api/me",
            "/api/me/transfers", "/api/me/corrections", "/corrections/{correction_id}/answer"} <= seen
    schemas = document["components"]["schemas"]
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', json.dumps(document)))
    assert refs <= set(schemas), refs - set(schemas)
    money = schemas["Split"]["properties"]["medfee_sumamt"]
    assert (money["type"], money["pattern"], "$ref" in json.dumps(money)) == ("string", r"^-?\d+\.\d{2}$", False)
    assert schemas["SettlementPublic"]["additionalProperties"] is False


def interface_examples() -> dict[str, dict]:
    """The JSON examples of hub-interface.md, by the call they belong to."""
    text = INTERFACE.read_text(encoding="utf-8")
    blocks = re.findall(r"```json\n(.*?)```", text, re.S)
    inline = {call: json.loads(re.search(re.escape(call) + r"`\s*`(\{[^`]*\})`", text).group(1))
              for call in ("POST /settlement/reconcile", "POST /api/me/transfers", "PUT /api/me/sharing")}
    return {"settle": json.loads(blocks[0]), "settled": json.loads(blocks[1]), **inline}


@pytest.mark.parametrize("example, path, method, where", [
    ("settle", "/settlement/settle", "post", "request"),
    ("settled", "/settlement/settle", "post", "200"),
    ("POST /settlement/reconcile", "/settlement/reconcile", "post", "request"),
    ("POST /api/me/transfers", "/api/me/transfers", "post", "request"),
    ("PUT /api/me/sharing", "/api/me/sharing", "put", "request"),
    ("PUT /api/me/sharing", "/api/me/sharing", "put", "200"),
])
def test_the_interface_examples_fit_the_document(hub, example, path, method, where):
    document = hub.client().get("/openapi.json").json()
    op = document["paths"][path][method]
    described = op["requestBody"] if where == "request" else op["responses"][where]
    validator(document, described["content"]["application/json"]["schema"]).validate(interface_examples()[example])


BAD_BODIES = [  # what the settlement parser refuses, and how the document says so
    {"fixmedins_code": None},  # absent
    {"mdtrt_cert_type": "04"},
    {"insuplc_admdvs": "3304"},
    {"insutype": 310},
    {"visit_type": "inpatient"},
    {"visit_time": "2024-03-15"},
    {"use_personal_account": "yes"},
    {"lines": []},
    {"lines": [{"med_list_codg": "X", "cnt": "2", "pric": 18.6, "det_item_fee_sumamt": "37.20"}]},
    {"lines": [{"med_list_codg": "X", "cnt": "2", "pric": "18.600", "det_item_fee_sumamt": "37.20"}]},
    {"lines": [{"med_list_codg": "X", "cnt": "-2", "pric": "18.60", "det_item_fee_sumamt": "37.20"}]},
    {"lines": [{"med_list_codg": "", "cnt": "2", "pric": "18.60", "det_item_fee_sumamt": "37.20"}]},
]


@pytest.mark.parametrize("change", BAD_BODIES)
def test_the_settlement_body_schema_refuses_what_the_parser_refuses(hub, change):
    document = hub.client().get("/openapi.json").json()
    schema = document["paths"]["/settlement/settle"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    good = interface_examples()["settle"]
    SettleRequest.from_json(good)
    validator(document, schema).validate(good)
    bad = {k: v for k, v in {**good, **change}.items() if v is not None}
    with pytest.raises(RequestInvalid):
        SettleRequest.from_json(bad)
    with pytest.raises(ValidationError):
        validator(document, schema).validate(bad)


def test_portal_pages_are_documented_as_html_and_their_forms(hub):
    document = hub.client().get("/openapi.json").json()
    pages = [(m, p, op) for p, ops in document["paths"].items()
             if p.startswith(("/portal/", "/admin/login", "/admin/logout")) or p == "/portal"
             for m, op in ops.items() if not p.startswith("/portal/static")]
    assert len(pages) >= 20
    for method, path, op in pages:
        if method == "get":
            assert list(op["responses"]["200"]["content"]) == ["text/html"], path
        else:
            form = op["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]
            assert "csrf" in form["properties"] and "303" in op["responses"], path
            assert not op["responses"]["303"].get("content"), path
    login = document["paths"]["/portal/login"]["post"]["requestBody"]["content"]
    assert {"province", "code", "csrf"} <= set(login["application/x-www-form-urlencoded"]["schema"]["properties"])
    admin = document["paths"]["/admin/login"]["post"]["requestBody"]["content"]
    assert {"token", "csrf"} <= set(admin["application/x-www-form-urlencoded"]["schema"]["properties"])


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
