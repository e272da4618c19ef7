"""The person's own records and their corrections (数据异议): JSON under ``/api/me``, pages under
``/portal`` (hub-interface.md, "Patients: their own records, and corrections").

The records are read through ``hub.access`` as the person themselves (a ``patient`` party):
everything the hub holds for them, nothing withheld, identity masked, the read recorded with
purpose ``patient``, open corrections tagged ``disputed``. A person the hub holds nothing for
gets an empty collection. Corrections are ``hub.corrections``'s; this module only carries them
to and from the person (the JSON writes need ``application/json``, the forms the session's
CSRF token, as everywhere in the portal).
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, RedirectResponse, Response

from hub import access, corrections, store
from hub import api_models as m
from hub.auth import Party
from hub.errors import FHIR_JSON, HubError, NotFound
from hub.fhir_api import hospital_names
from hub.portal import api, record_view, sessions
from hub.portal.accesslog import TYPES
from hub.portal.pages import SECURITY_HEADERS, ending_form, for_patient, page, signed_in_form
from hub.portal.sessions import PatientSession

router = APIRouter()
KIND_LABELS = {"not_mine": "这不是我的记录", "wrong": "内容有误", "incomplete": "内容不完整",
               "other": "其他问题"}
STATUS_LABELS = {"open": "医院处理中", "corrected": "已更正", "rejected": "未予更正",
                 "withdrawn": "已撤回"}
LABELS = {"kinds": KIND_LABELS, "correction_status": STATUS_LABELS, "types": TYPES}


# -- reading the records ---------------------------------------------------------------------------


def read_records(request: Request, session: PatientSession) -> list[bytes]:
    """The person's resources as they may see them (stored bytes with ``meta``, masked and
    tagged); an empty list when the hub holds nothing for them yet."""
    engine, pid = request.app.state.engine, session.patient_id
    with engine.connect() as conn:
        try:
            answer = access.everything(conn, engine, access.Caller(Party("patient", pid)), pid)
        except NotFound:
            return []
    return [answer.render(row, store.with_meta(row.content, row.version, row.last_updated))
            for row in answer.rows]


def collection(shown: list[bytes], base: str) -> bytes:
    """A FHIR Bundle of type ``collection`` around the resources' bytes (no parse per entry)."""
    entries = []
    for content in shown:
        head = orjson.loads(content)
        url = f"{base}/fhir/{head['resourceType']}/{head['id']}"
        entries.append(b'{"fullUrl":"%s","resource":%s}' % (url.encode(), content))
    return b'{"resourceType":"Bundle","type":"collection","entry":[' + b",".join(entries) + b"]}"


class FhirJSONResponse(JSONResponse):
    media_type = FHIR_JSON  # what the document says /api/me/records answers (it writes its bytes)


@router.get("/api/me/records", response_class=FhirJSONResponse, responses=m.answers(m.Bundle))
def get_records(request: Request) -> Response:
    session = sessions.require(request)
    base = str(request.base_url).rstrip("/")
    return Response(collection(read_records(request, session), base), media_type=FHIR_JSON)


# -- corrections, JSON -----------------------------------------------------------------------------


def _service(request: Request) -> corrections.Corrections:
    return corrections.service(request.app)


@router.post("/api/me/corrections", status_code=201, openapi_extra=m.body(m.CorrectionRequest), responses=m.answers(
    m.CorrectionPublic, *api.WRITE, 404, 409, 422, status=201,
    description="the new correction (404 not in the own record, 409 CORRECTION_OPEN, 422 INVALID_CORRECTION)"))
async def post_correction(request: Request) -> JSONResponse:
    session = sessions.require(request)
    body = await api.json_body(request)
    created = await run_in_threadpool(_service(request).create, session.patient_id, body)
    return JSONResponse(created, 201)


@router.get("/api/me/corrections", responses=m.answers(m.CorrectionList))
def list_corrections(request: Request) -> JSONResponse:
    session = sessions.require(request)
    return JSONResponse({"corrections": _service(request).mine(session.patient_id)})


@router.get("/api/me/corrections/{correction_id}", responses=m.answers(m.CorrectionPublic, 404))
def show_correction(request: Request, correction_id: str) -> JSONResponse:
    session = sessions.require(request)
    return JSONResponse(_service(request).get_mine(session.patient_id, correction_id))


@router.post("/api/me/corrections/{correction_id}/withdraw", openapi_extra=m.body(m.Confirmation, required=False),
             responses=m.answers(
    m.CorrectionPublic, *api.WRITE, 404, 409, description="the withdrawn correction (409 CORRECTION_CLOSED)"))
async def post_withdraw(request: Request, correction_id: str) -> JSONResponse:
    session = sessions.require(request)
    await api.json_body(request)
    withdrawn = await run_in_threadpool(_service(request).withdraw, session.patient_id,
                                        correction_id)
    return JSONResponse(withdrawn)


# -- pages -----------------------------------------------------------------------------------------


def _by_resource(request: Request, session: PatientSession) -> dict[str, list[dict]]:
    """The person's corrections by ``Type/id``, newest first."""
    found: dict[str, list[dict]] = {}
    for c in _service(request).mine(session.patient_id):
        found.setdefault(c["resource"], []).append(c)
    return found


@router.get("/portal/records", **m.page())
def records_page(request: Request) -> Response:
    return for_patient(request, lambda session: _records_page(request, session))


def _records_page(request: Request, session: PatientSession) -> Response:
    resources = [orjson.loads(b) for b in read_records(request, session)]
    visits, others = record_view.visits(resources, hospital_names())
    return page(request, session, "records.html", visits=visits, others=others,
                asked=_by_resource(request, session), **LABELS)


def record_page(request: Request, session: PatientSession, ref: str, status: int = 200,
                message: str | None = None, chosen: dict | None = None) -> Response:
    """One record with its visit, its corrections and the form to ask for one."""
    resources = [orjson.loads(b) for b in read_records(request, session)]
    visit, item = record_view.find(resources, ref, hospital_names())
    if item is None:
        return page(request, session, "message.html", 404, title="未找到",
                    message="您的健康档案中没有这条记录（可能已被医院更新或撤回）。")
    asked = _by_resource(request, session).get(ref, [])
    return page(request, session, "record.html", status, visit=visit, item=item, ref=ref,
                asked=asked, is_open=any(c["status"] == "open" for c in asked),
                message=message, chosen=chosen or {}, **LABELS)


@router.get("/portal/records/{res_type}/{res_id}", **m.page())
def one_record(request: Request, res_type: str, res_id: str) -> Response:
    return for_patient(request, lambda session: record_page(request, session, f"{res_type}/{res_id}"))


@router.post("/portal/corrections", **m.page(form={
    "resource": "Type/id of the record", "kind": "not_mine, wrong, incomplete or other",
    "text": "1 to 500 characters"},
    redirect="/portal/corrections/{id}"))
async def post_correction_form(request: Request) -> Response:
    signed = await signed_in_form(request)
    if isinstance(signed, Response):
        return signed
    session, form = signed
    chosen = {k: str(form.get(k) or "") for k in ("resource", "kind", "text")}
    try:
        created = await run_in_threadpool(_service(request).create, session.patient_id, chosen)
    except HubError as exc:
        return record_page(request, session, chosen["resource"], exc.status, exc.message, chosen)
    return RedirectResponse(f"/portal/corrections/{created['id']}?notice=created", 303,
                            headers=SECURITY_HEADERS)


@router.get("/portal/corrections", **m.page())
def corrections_page(request: Request) -> Response:
    return for_patient(request, lambda session: page(
        request, session, "corrections.html", corrections=_service(request).mine(session.patient_id),
        **LABELS))


@router.get("/portal/corrections/{correction_id}", **m.page())
def correction_page(request: Request, correction_id: str) -> Response:
    return for_patient(request, lambda session: _correction_page(request, session, correction_id))


def _correction_page(request: Request, session: PatientSession, correction_id: str) -> Response:
    try:
        correction = _service(request).get_mine(session.patient_id, correction_id)
    except HubError as exc:
        return page(request, session, "message.html", exc.status, title="未找到", message=exc.message)
    return page(request, session, "correction.html", correction=correction,
                notice=request.query_params.get("notice"), **LABELS)


@router.post("/portal/corrections/{correction_id}/withdraw", **m.page(form={},
             redirect="/portal/corrections/{id}"))
async def post_withdraw_form(request: Request, correction_id: str) -> Response:
    def withdraw(session: PatientSession):
        return run_in_threadpool(_service(request).withdraw, session.patient_id, correction_id)

    return await ending_form(request, withdraw, f"/portal/corrections/{correction_id}", "withdrawn")
