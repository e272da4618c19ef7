"""The settlement endpoints (hub-interface.md, "Insurance platforms: settling outpatient bills").

- ``POST /settlement/presettle``: 200 computed / refused; 422; 503 ``PLATFORM_UNAVAILABLE``.
- ``POST /settlement/settle``: 200 settled / refused / voided, 202 pending with ``Location``, 422,
  409 ``REQUEST_KEY_REUSED``.
- ``GET /settlement/{setl_id}``: 200 (pending too); ``POST /settlement/{setl_id}/void``: 200
  voided or 202 pending; 409 ``NOT_SETTLED`` when there is nothing committed to void.
- ``POST /settlement/reconcile`` and ``GET /settlement/clearing?month=`` (admin).

Only the insurance platform of the hospital's province may call the first four (403 otherwise;
an administrator may read one settlement). The work is ``settlement.service``'s; it calls the
platforms through a ``PlatformClient`` of its own (same configuration as ``app.state.platform``,
its own connections). Reconciliation uses ``app.state.platform``.

What each route takes and answers is declared for ``/openapi.json`` with the models of
``settlement.schemas`` (``request_body``, ``answers``); the answers themselves are written here,
as ``service``, ``reconcile`` and ``clearing`` build them.
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Depends, Query, Request
from pydantic import ValidationError
from starlette.responses import Response

from hub.auth import Party, bearer_party, require_admin
from hub.errors import Unprocessable

from . import clearing as clearing_mod
from . import reconcile as reconcile_mod
from .platform import PlatformClient
from .schemas import (Clearing, ReconcileRequest, Reconciliation, SettlementCreate, SettlementPublic,
                      answers, request_body)
from .service import Options, PlatformUnavailable, SettlementService

router = APIRouter(prefix="/settlement")
INVALID = "the request breaks its rules: MISSING_FIELD, INVALID_FIELD, INVALID_AMOUNT, LINE_AMOUNT_MISMATCH, " \
          "UNKNOWN_HOSPITAL, INSUPLC_MISMATCH, ... (settlement.rules.REQUEST_ERRORS)"
PLATFORM = "only the insurance platform of the hospital's province may call it"
ADMIN = "administrators only"
SETTLED = {200: SettlementPublic, 202: SettlementPublic}


def _json(body: dict, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers=headers, media_type="application/json")


def _service(request: Request) -> SettlementService:
    return request.app.state.settlement


def _answer(status: int, body: dict) -> Response:
    headers = {"Location": f"/settlement/{body['setl_id']}"} if status == 202 else None
    return _json(body, status, headers)


@router.post("/presettle", openapi_extra=request_body(SettlementCreate), responses=answers(
    {200: SettlementPublic}, {401: "no token", 403: PLATFORM, 422: INVALID,
                              503: "PLATFORM_UNAVAILABLE: the insured place's platform cannot answer"}))
async def presettle(request: Request, party: Party = Depends(bearer_party)) -> Response:
    return _json(await _service(request).presettle(party, await request.body()))


@router.post("/settle", openapi_extra=request_body(SettlementCreate), responses=answers(
    SETTLED, {401: "no token", 403: PLATFORM, 409: "REQUEST_KEY_REUSED: the key was used with another body",
              422: INVALID}))
async def settle(request: Request, party: Party = Depends(bearer_party)) -> Response:
    return _answer(*await _service(request).settle(party, await request.body()))


@router.post("/reconcile", openapi_extra=request_body(ReconcileRequest), responses=answers(
    {200: Reconciliation}, {401: "no token", 403: ADMIN, 422: "INVALID_DATE",
                            503: "PLATFORM_UNAVAILABLE: a platform gave no answer to 3201 or 3202"}))
async def reconcile(request: Request, party: Party = Depends(bearer_party)) -> Response:
    require_admin(party)
    try:
        day = ReconcileRequest.model_validate_json(await request.body()).date
    except ValidationError:
        raise Unprocessable('the body must be {"date": "YYYY-MM-DD"}', code="INVALID_DATE") from None
    try:
        result = await reconcile_mod.reconcile(request.app.state.engine, request.app.state.platform, day)
    except reconcile_mod.ReconcileUnavailable as exc:
        raise PlatformUnavailable(str(exc)) from None
    return _json(result)


@router.get("/clearing", responses=answers(
    {200: Clearing}, {401: "no token", 403: ADMIN, 422: "INVALID_MONTH: month is not YYYY-MM"}))
async def clearing(request: Request, month: str = Query("", description="YYYY-MM (422 INVALID_MONTH else)",
                                                        examples=["2024-03"]),
                   party: Party = Depends(bearer_party)) -> Response:
    require_admin(party)
    try:
        return _json(clearing_mod.clearing(request.app.state.engine, month))
    except ValueError as exc:
        raise Unprocessable(str(exc), code="INVALID_MONTH") from None


@router.get("/{setl_id}", responses=answers(
    {200: SettlementPublic}, {401: "no token", 403: PLATFORM + " (or an administrator)",
                              404: "NOT_FOUND"}))
async def get_settlement(setl_id: str, request: Request, party: Party = Depends(bearer_party)) -> Response:
    return _json(await _service(request).get(party, setl_id))


@router.post("/{setl_id}/void", responses=answers(
    SETTLED, {401: "no token", 403: PLATFORM, 404: "NOT_FOUND", 409: "NOT_SETTLED: nothing committed to void",
              422: "the settlement was refused as invalid"}))
async def void(setl_id: str, request: Request, party: Party = Depends(bearer_party)) -> Response:
    return _answer(*await _service(request).void(party, setl_id))


async def start(app):
    """Lifespan starter: the service, resuming every settlement that was in flight. Options
    come from ``app.state.settlement_options`` (tests) or the settings (``YRDHUB_SETTLEMENT_*``)."""
    options = (getattr(app.state, "settlement_options", None)
               or Options.from_settings(app.state.settings))
    platform = PlatformClient(app.state.settings.insurer_urls())
    service = SettlementService(app.state.engine, platform, options)
    app.state.settlement = service
    await service.start()

    async def stop():
        await service.stop()
        await platform.aclose()

    return stop
