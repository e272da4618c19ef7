"""The patient's JSON calls under ``/api/me`` (hub-interface.md, "Patients: the portal").

Every call needs the session cookie (none, unknown or expired: ``401`` ``{"error": ...}``). Every
write (PUT, POST) needs ``Content-Type: application/json``, which a cross-site HTML form cannot
send (``415`` otherwise), and a body that is JSON (``400``); a write whose ``Origin`` names another
site is ``403``. Together with the SameSite=Strict cookie this is the CSRF defence of the JSON
calls. Errors carry Chinese messages the pages can show as they are.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import orjson
from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

from hub import api_models as m
from hub import sharing
from hub.errors import BadRequest, Forbidden, HubError
from hub.portal import accesslog, sessions
from hub.portal.sessions import PatientSession
from settlement.schemas import TransferCreate, TransferPublic, Transfers
from settlement.transfer import TransferError, TransferService

router = APIRouter(prefix="/api/me")
# Errors of every write (json_body): 415 without application/json, 403 CROSS_ORIGIN, 400 INVALID_JSON
WRITE = (400, 403, 415)


class UnsupportedMediaType(HubError):
    status, code = 415, "UNSUPPORTED_MEDIA_TYPE"


class Unavailable(HubError):
    status, code = 503, "UNAVAILABLE"


def transfer_failure(exc: TransferError) -> HubError:
    """A saga refusal of a request as the hub's error (status, code and message kept)."""
    error = HubError(exc.message, exc.code)
    error.status = exc.status
    return error


async def json_body(request: Request) -> Any:
    """The JSON body of a write: 415 without ``application/json``, 403 from another origin, 400
    when it is not JSON. An empty body is ``{}``."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise UnsupportedMediaType("写操作需要 Content-Type: application/json。")
    origin = request.headers.get("origin")
    if origin and urlsplit(origin).netloc != request.headers.get("host", ""):
        raise Forbidden("不接受来自其他网站的请求。", code="CROSS_ORIGIN")
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("请求内容不是有效的 JSON。", code="INVALID_JSON") from None


def transfers_of(request: Request) -> TransferService:
    service = getattr(request.app.state, "transfers", None)
    if service is None:
        raise Unavailable("转移接续服务尚未启动，请稍后再试。")
    return service


def origin_of(service: TransferService, session: PatientSession, insutype: str) -> str | None:
    """Where the person is insured with ``insutype`` now: the destination of their last completed
    transfer, else the insured place 1101 gave at sign-in (None: not insured so)."""
    moved = service.current_place(session.patient_id, insutype)
    if moved:
        return moved
    coverage = session.coverage(insutype)
    return coverage.get("insuplc_admdvs") if coverage else None


def me_view(session: PatientSession) -> dict[str, Any]:
    return {"name": session.psn_name, "resident_id": session.masked_id, "province": session.province,
            "coverage": [{k: c.get(k) for k in ("insutype", "insuplc_admdvs", "psn_insu_stas")}
                         for c in session.insuinfo]}


def create_transfer(request: Request, session: PatientSession, to_admdvs: Any, insutype: Any) -> dict[str, Any]:
    """Create a transfer for the signed-in person (shared by the JSON call and the page's form).
    Raises the HubError of a bad request (400) or a running transfer (409)."""
    service = transfers_of(request)
    origin = origin_of(service, session, insutype) if isinstance(insutype, str) else None
    try:
        return service.create(patient_id=session.patient_id, certno=session.certno, psn_name=session.psn_name,
                              from_admdvs=origin, to_admdvs=to_admdvs, insutype=insutype)
    except TransferError as exc:
        raise transfer_failure(exc) from None


async def cancel_transfer(request: Request, session: PatientSession, transfer_id: str) -> dict[str, Any]:
    try:
        return await transfers_of(request).cancel(session.patient_id, transfer_id)
    except TransferError as exc:
        raise transfer_failure(exc) from None


def get_transfer(request: Request, session: PatientSession, transfer_id: str) -> dict[str, Any]:
    try:
        return transfers_of(request).get(session.patient_id, transfer_id)
    except TransferError as exc:
        raise transfer_failure(exc) from None


@router.get("", responses=m.answers(m.Me))
def me(request: Request) -> JSONResponse:
    return JSONResponse(me_view(sessions.require(request)))


@router.get("/access-log", responses=m.answers(m.AccessLog))
def get_access_log(request: Request) -> JSONResponse:
    session = sessions.require(request)
    return JSONResponse({"entries": accesslog.access_log(request.app.state.engine, session.patient_id)})


@router.get("/sharing", responses=m.answers(m.SharingChoices))
def get_sharing(request: Request) -> JSONResponse:
    session = sessions.require(request)
    return JSONResponse(sharing.get_choices(request.app.state.engine, session.patient_id).as_json())


@router.put("/sharing", openapi_extra=m.body(m.SharingChoices),
            responses=m.answers(m.SharingChoices, *WRITE,
                                description="the choices now in force (400 INVALID_SHARING)"))
async def put_sharing(request: Request) -> JSONResponse:
    session = sessions.require(request)
    body = await json_body(request)
    try:
        choices = sharing.SharingChoices.from_json(body)
    except ValueError as exc:
        raise BadRequest(str(exc), code="INVALID_SHARING") from None
    sharing.set_choices(request.app.state.engine, session.patient_id, choices)
    return JSONResponse(choices.as_json())


@router.get("/transfers", responses=m.answers(Transfers, 503))
def list_transfers(request: Request) -> JSONResponse:
    session = sessions.require(request)
    return JSONResponse({"transfers": transfers_of(request).list(session.patient_id)})


@router.post("/transfers", status_code=201, openapi_extra=m.body(TransferCreate), responses=m.answers(
    TransferPublic, *WRITE, 409, 503, status=201, description="the new transfer (409 TRANSFER_IN_PROGRESS)"))
async def post_transfer(request: Request) -> JSONResponse:
    session = sessions.require(request)
    body = await json_body(request)
    if not isinstance(body, dict):
        raise BadRequest("请求内容应为 JSON 对象。", code="INVALID_JSON")
    return JSONResponse(create_transfer(request, session, body.get("to_admdvs"), body.get("insutype")), 201)


@router.get("/transfers/{transfer_id}", responses=m.answers(TransferPublic, 404, 503))
def show_transfer(request: Request, transfer_id: str) -> JSONResponse:
    return JSONResponse(get_transfer(request, sessions.require(request), transfer_id))


@router.post("/transfers/{transfer_id}/cancel", openapi_extra=m.body(m.Confirmation, required=False),
             responses=m.answers(TransferPublic, *WRITE, 404, 409, 503,
                                 description="the cancelled transfer (409 CANNOT_CANCEL)"))
async def post_cancel(request: Request, transfer_id: str) -> JSONResponse:
    session = sessions.require(request)
    await json_body(request)
    return JSONResponse(await cancel_transfer(request, session, transfer_id))
