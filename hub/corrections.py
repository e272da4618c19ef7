"""Corrections (数据异议): a patient asks the hospital that sent a record to correct it, and the
hospital answers (hub-interface.md, "Patients: their own records, and corrections").

- **Asking** (``Corrections.create``, from the portal): the resource must be in the person's own
  record (else 404) and have been sent by one hospital (the Patient resource, merged from every
  sender, is 422 ``NOT_CORRECTABLE``); a second open correction of one resource is 409
  ``CORRECTION_OPEN`` (a partial unique index holds it against two requests at once). The
  deadline is 10 working days after the day it was created, in +08:00, on the transfers'
  working-day calendar (``settlement.transfer``); ``overdue`` while open after that day.
- **Following**: the person sees their own only; another person's is 404, like an unknown one.
  ``withdraw`` while open; later 409 ``CORRECTION_CLOSED``.
- **Answering** (``/corrections``, a hospital's bearer token): a hospital sees only those
  addressed to it (another's is 404). ``corrected`` is accepted only once the resource has a
  version after the one the correction was opened on (it was re-sent changed, or retired), else
  409 ``NOT_CORRECTED``; ``reason`` is required (1 to 500 characters); an answered or withdrawn
  correction is 409 ``CORRECTION_CLOSED``.
- **Kept**: rows are never deleted; each holds who asked, when, what, the answer and the
  resource's versions before and after. While a correction is open ``hub.access`` tags every
  answer holding the resource ``disputed`` (looked up by the answer's patients: a resource a
  re-send moved to another person carries the tag no longer, and is ready to be answered).
- **Errors**: bad input is 422 ``{"error": {"code", "message"}}`` saying which field and why, in
  Chinese for the patient's calls (the pages show the message as it is), English for hospitals.
"""

from __future__ import annotations

import secrets
from datetime import date, datetime, timezone
from typing import Any, Callable

import orjson
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ValidationError
from sqlalchemy import insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse

from hub import api_models as m
from hub.api_models import AnswerRequest, CorrectionRequest
from hub.auth import Party, bearer_party
from hub.db import writer
from hub.errors import BadRequest, Conflict, Forbidden, NotFound, Unprocessable
from hub.models import Correction, Resource
from hub.portal.accesslog import organisation
from mappers.region import CST
from settlement.transfer import WorkCalendar, add_working_days, is_overdue, load_calendar, local_iso

C = Correction.__table__
R = Resource.__table__
WORKING_DAYS = 10
STATUSES = ("open", "corrected", "rejected", "withdrawn")
# What the patient is told about a field that is not right (pydantic's location -> message).
PATIENT_MESSAGES = {
    "resource": "请指明要更正的记录（形如 Condition/<id>）。",
    "kind": "请选择更正类型：不是我的记录、内容有误、内容不完整或其他。",
    "text": "请填写更正说明（1 至 500 个字）。",
}


def parse(model: type[BaseModel], body: Any, code: str,
          messages: dict[str, str] | None = None) -> Any:
    """``body`` as ``model``, or 422 ``code`` naming the first bad field and why (from
    ``messages`` by field when given, else pydantic's words)."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        if messages is not None:
            raise Unprocessable(messages.get(field, "请求内容应为 JSON 对象。"), code=code) from None
        raise Unprocessable(f"{field}: {first['msg']}", code=code) from None


class Corrections:
    """Creates, shows, withdraws and answers corrections. ``clock``: "now" (aware)."""

    def __init__(self, engine: Engine, calendar: WorkCalendar | None = None,
                 clock: Callable[[], datetime] | None = None):
        self.engine = engine
        self.calendar = calendar or load_calendar()
        self.clock = clock or (lambda: datetime.now(timezone.utc))

    # -- the patient ----------------------------------------------------------------------------

    def create(self, patient_id: str, body: Any) -> dict[str, Any]:
        """A new open correction of one of the person's resources (see the module's rules)."""
        request = parse(CorrectionRequest, body, "INVALID_CORRECTION", PATIENT_MESSAGES)
        res_type, res_id = request.resource.split("/")
        now = self.clock()
        with writer(self.engine).begin() as conn:
            resource = conn.execute(select(R.c.patient_id, R.c.hospital, R.c.version, R.c.deleted)
                                    .where(R.c.res_type == res_type, R.c.res_id == res_id)).first()
            if resource is None or resource.deleted or resource.patient_id != patient_id:
                raise NotFound("您的健康档案中没有这条记录。", code="NOT_FOUND")
            if resource.hospital is None:
                raise Unprocessable("这条记录不是由某一家医院单独报送的（如基本信息），无法向医院申请更正。",
                                    code="NOT_CORRECTABLE")
            row = {"id": f"CR{now.astimezone(CST):%Y%m%d}{secrets.token_hex(6).upper()}",
                   "patient_id": patient_id, "res_type": res_type, "res_id": res_id,
                   "hospital": resource.hospital, "kind": request.kind, "text": request.text,
                   "status": "open", "created": now, "deadline": self.deadline(now),
                   "version_before": resource.version}
            self._insert_open(conn, row)
        return self.view(self._load(row["id"]))

    @staticmethod
    def _insert_open(conn, row: dict[str, Any]) -> None:
        open_already = select(C.c.id).where(C.c.res_type == row["res_type"],
                                            C.c.res_id == row["res_id"], C.c.status == "open")
        conflict = Conflict("这条记录已有一项正在处理的更正申请。", code="CORRECTION_OPEN")
        if conn.execute(open_already).first() is not None:
            raise conflict
        try:
            with conn.begin_nested():
                conn.execute(insert(C), [row])
        except IntegrityError:  # another request opened one in the meantime
            raise conflict from None

    def mine(self, patient_id: str) -> list[dict[str, Any]]:
        """The person's corrections, newest first."""
        return self._views(select(C).where(C.c.patient_id == patient_id)
                           .order_by(C.c.created.desc(), C.c.id.desc()))

    def get_mine(self, patient_id: str, correction_id: str) -> dict[str, Any]:
        row = self._load(correction_id)
        if row is None or row.patient_id != patient_id:
            raise NotFound("未找到该更正申请。", code="NOT_FOUND")
        return self.view(row)

    def withdraw(self, patient_id: str, correction_id: str) -> dict[str, Any]:
        """Withdraw an open correction of the person's; 404 for another's, 409 once closed."""
        self.get_mine(patient_id, correction_id)
        self._close(correction_id, {"status": "withdrawn", "withdrawn": self.clock()},
                    "这项更正申请已经处理完毕或已撤回，不能再撤回。")
        return self.get_mine(patient_id, correction_id)

    # -- the hospital ---------------------------------------------------------------------------

    def addressed(self, hospital: str, status: str | None) -> list[dict[str, Any]]:
        """Those addressed to ``hospital`` (optionally in one status), oldest first."""
        if status is not None and status not in STATUSES:
            raise Unprocessable(f"status: must be one of {', '.join(STATUSES)}",
                                code="INVALID_STATUS")
        query = select(C).where(C.c.hospital == hospital)
        if status is not None:
            query = query.where(C.c.status == status)
        return self._views(query.order_by(C.c.created, C.c.id))

    def get_addressed(self, hospital: str, correction_id: str) -> dict[str, Any]:
        row = self._load(correction_id)
        if row is None or row.hospital != hospital:
            raise NotFound(f"correction {correction_id} is not known")
        return self.view(row)

    def answer(self, hospital: str, correction_id: str, body: Any) -> dict[str, Any]:
        """Record the hospital's decision (see the module's rules for 404/409/422)."""
        request = parse(AnswerRequest, body, "INVALID_ANSWER")
        row = self._load(correction_id)
        if row is None or row.hospital != hospital:
            raise NotFound(f"correction {correction_id} is not known")
        if row.status != "open":
            raise Conflict(f"correction {correction_id} is already {row.status}",
                           code="CORRECTION_CLOSED")
        with self.engine.connect() as conn:
            current = conn.execute(select(R.c.version).where(
                R.c.res_type == row.res_type, R.c.res_id == row.res_id)).scalar()
        if request.decision == "corrected" and (current or 0) <= row.version_before:
            raise Conflict(f"{row.res_type}/{row.res_id} is still version {row.version_before}, as "
                           "when the correction was opened: re-send the record first",
                           code="NOT_CORRECTED")
        self._close(correction_id, {"status": request.decision, "decision": request.decision,
                                    "reason": request.reason, "answered": self.clock(),
                                    "version_after": current},
                    f"correction {correction_id} is no longer open")
        return self.get_addressed(hospital, correction_id)

    # -- shared ---------------------------------------------------------------------------------

    def deadline(self, created: datetime) -> date:
        return add_working_days(created.astimezone(CST).date(), WORKING_DAYS, self.calendar)

    def _close(self, correction_id: str, values: dict[str, Any], message: str) -> None:
        """Move an open correction to its final state; 409 when it was no longer open (checked
        in the UPDATE itself, so a withdrawal and an answer at once cannot both win)."""
        with writer(self.engine).begin() as conn:
            done = conn.execute(update(C).where(C.c.id == correction_id, C.c.status == "open")
                                .values(**values)).rowcount
        if not done:
            raise Conflict(message, code="CORRECTION_CLOSED")

    def _load(self, correction_id: str):
        with self.engine.connect() as conn:
            return conn.execute(select(C).where(C.c.id == correction_id)).first()

    def _views(self, query) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [self.view(r) for r in conn.execute(query).all()]

    def view(self, row) -> dict[str, Any]:
        """The correction as hub-interface.md shapes it, plus when it was withdrawn and the
        resource's versions before and after."""
        today = self.clock().astimezone(CST).date()
        answer = None if row.decision is None else {
            "decision": row.decision, "reason": row.reason, "time": local_iso(row.answered)}
        return {"id": row.id, "status": row.status, "resource": f"{row.res_type}/{row.res_id}",
                "hospital": organisation("hospital", row.hospital), "kind": row.kind,
                "text": row.text, "created": local_iso(row.created),
                "deadline": row.deadline.isoformat(),
                "overdue": row.status == "open" and is_overdue(row.deadline, today),
                "answer": answer, "withdrawn": local_iso(row.withdrawn),
                "versions": {"before": row.version_before, "after": row.version_after}}


def service(app) -> Corrections:
    """The app's one ``Corrections`` (made on first use; tests may set their own)."""
    found = getattr(app.state, "corrections", None)
    if found is None:
        found = app.state.corrections = Corrections(app.state.engine)
    return found


# -- the hospitals' calls --------------------------------------------------------------------------

router = APIRouter(prefix="/corrections")


def _hospital(party: Party) -> str:
    if party.kind != "hospital" or not party.code:
        raise Forbidden("only the hospital a correction is addressed to may see or answer it")
    return party.code


@router.get("", responses=m.answers(m.CorrectionList, 403, 422, description="oldest first (422 INVALID_STATUS)"))
def list_corrections(request: Request, status: str | None = None,
                     party: Party = Depends(bearer_party)) -> JSONResponse:
    hospital = _hospital(party)
    return JSONResponse({"corrections": service(request.app).addressed(hospital, status)})


@router.get("/{correction_id}", responses=m.answers(m.CorrectionPublic, 403, 404))
def show_correction(request: Request, correction_id: str,
                    party: Party = Depends(bearer_party)) -> JSONResponse:
    return JSONResponse(service(request.app).get_addressed(_hospital(party), correction_id))


@router.post("/{correction_id}/answer", openapi_extra=m.body(AnswerRequest), responses=m.answers(
    m.CorrectionPublic, 400, 403, 404, 409, 422,
    description="the answered correction (409 NOT_CORRECTED, CORRECTION_CLOSED; 422 INVALID_ANSWER)"))
async def answer_correction(request: Request, correction_id: str,
                            party: Party = Depends(bearer_party)) -> JSONResponse:
    hospital = _hospital(party)
    try:
        body = orjson.loads(await request.body() or b"{}")
    except orjson.JSONDecodeError:
        raise BadRequest("the body is not JSON", code="INVALID_JSON") from None
    answered = await run_in_threadpool(service(request.app).answer, hospital, correction_id, body)
    return JSONResponse(answered)
