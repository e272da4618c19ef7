"""Moving a person's insurance relationship to another province (转移接续) as a durable saga.

Steps (``world/insurer-api.md``, "Transfer of the insurance relationship"):

    4101 at the origin       close coverage, issue the coverage record (参保凭证)
    4102 at the origin       move the personal-account balance (only when there is one)
    4201 at the destination  open coverage, credit months and balance
    4103 at the origin       compensation: restore the origin (a refusal after 4101, or a cancel)

Durability: every step's ``msgid`` is written before it is first sent and reused by every resend,
and every answer is written before the next step starts. The platforms key each step by
``transfer_id`` ("repeating one for the same transfer returns the first answer, on every
province"), so resending after an unknown outcome, a hub restart or a crash is always safe and
learns the first answer. A transfer that is not final is resumed by the background worker
(``hub.settlement_api.start_transfers``) after a restart.

Outcomes:
- A refusal at 4101 ends the transfer ``refused`` with the platform's code and message.
- A refusal at 4102 or 4201 (the origin is already closed) sends 4103 first, then ends ``refused``
  with that refusal: nobody is left uninsured.
- A cancel before the destination opened coverage resolves any step in doubt (by resending it),
  then sends 4103 and ends ``cancelled``. A 4103 that the origin refuses ``CERT_INVALID`` after a
  4201 was sent means the destination used the record: the 4201 is resent to learn its answer and
  the transfer ends ``completed`` (the cancel came too late).
- Transient failures (``NotSent``, ``OutcomeUnknown``, ``PlatformBusy``, ``PlatformNotConfigured``)
  never end a transfer: the step is retried with exponential back-off until it answers.
- Steps that were never sent are dropped from the transfer when it ends; a 4101/4102 restored by
  4103 shows ``undone``; a refused step ``failed``.

Deadlines (2021 national rules): the origin's steps are due 10 working days after the application,
the destination's 5 working days after the origin's last step is done (until then: 5 after the
origin's deadline, the latest it could be). 4103 is the hub's own step: 10 working days after it
became necessary. Working days skip weekends and the calendar's holidays and count its make-up
working days (调休); see ``settlement/data/calendar.json``.

One worker per database is assumed (the hub runs as one process); two would only send the same
idempotent steps twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from mappers.region import CST, full_name, is_current, province_of, scrub
from settlement.platform import HUB_PARTY, new_msgid
from settlement.errors import (CancelTooLate, OutcomeUnknown, PlatformBusy, PlatformError,
                               PlatformNotConfigured, Refused, TransferError, TransferInProgress,
                               TransferNotFound)
from settlement.reference import INSUTYPES
from settlement.storage import writer
from settlement.transfer_models import Transfer, TransferStep

log = logging.getLogger(__name__)
_UTC = timezone.utc

FINAL = frozenset({"completed", "refused", "cancelled"})
ORIGIN_WORKING_DAYS = 10
DESTINATION_WORKING_DAYS = 5
COMPENSATION_WORKING_DAYS = 10
STEP_ORDER = {"4101": 1, "4102": 2, "4201": 3, "4103": 4}
DEFAULT_CALENDAR = Path(__file__).resolve().parent / "data" / "calendar.json"
# The region's places that have hospitals or policies, beside the hospitals' own (named by
# mappers.region, GB/T 2260).
AREA_CODES = ("310101", "310104", "310106", "310115", "310118", "320106", "320115", "320508", "320509",
              "330106", "330203", "330402", "330421", "340103", "340104", "340202", "341502")
# Sequence numbers of the saga's msgids live in 5000..9999 so that they never meet the platform
# client's own per-second counter (which starts at 1) under the same party and second.
MSGID_SEQ_BASE, MSGID_SEQ_SPAN = 5000, 5000


# ---------------------------------------------------------------------------------------------
# Working days
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkCalendar:
    """Public holidays and make-up working days (调休). A day in both is a working day."""

    holidays: frozenset[date] = frozenset()
    makeup_workdays: frozenset[date] = frozenset()


def is_working_day(day: date, cal: WorkCalendar) -> bool:
    """A make-up working day is one; otherwise a holiday or a Saturday/Sunday is not."""
    if day in cal.makeup_workdays:
        return True
    return day not in cal.holidays and day.weekday() < 5


def add_working_days(start: date, n: int, cal: WorkCalendar) -> date:
    """The ``n``-th working day after ``start`` (``start`` itself never counts, whatever it is).
    ``n`` = 0 gives ``start``. ValueError for a negative ``n``."""
    if n < 0:
        raise ValueError("n must be >= 0")
    day = start
    while n:
        day += timedelta(days=1)
        if is_working_day(day, cal):
            n -= 1
    return day


def is_overdue(deadline: date, today: date, done_on: date | None = None) -> bool:
    """A step is overdue when it was done after its deadline, or is not done and today is past
    it. The deadline day itself is still in time."""
    return (done_on or today) > deadline


def parse_calendar(raw: dict[str, Any]) -> WorkCalendar:
    """``{"years": {"2026": {"holidays": [...], "makeup_workdays": [...]}}}`` -> WorkCalendar.
    ValueError naming the bad entry (a date that is not ``yyyy-mm-dd`` or not in its year)."""
    holidays: set[date] = set()
    makeup: set[date] = set()
    for year, entry in (raw.get("years") or {}).items():
        for name, into in (("holidays", holidays), ("makeup_workdays", makeup)):
            for text in entry.get(name, []):
                try:
                    day = date.fromisoformat(text)
                except (TypeError, ValueError):
                    raise ValueError(f"calendar {year}.{name}: {text!r} is not a date") from None
                if str(day.year) != str(year):
                    raise ValueError(f"calendar {year}.{name}: {text} is not in {year}")
                into.add(day)
    return WorkCalendar(frozenset(holidays), frozenset(makeup))


def load_calendar(path: str | Path | None = None) -> WorkCalendar:
    """The calendar from ``path`` (the hub passes its setting ``YRDHUB_TRANSFER_CALENDAR``), else
    the packaged one."""
    path = Path(path or DEFAULT_CALENDAR)
    return parse_calendar(json.loads(path.read_text(encoding="utf-8")))


# ---------------------------------------------------------------------------------------------
# Places and validation
# ---------------------------------------------------------------------------------------------


@lru_cache
def region_places() -> list[dict[str, str]]:
    """The places a person may move to: every area of the region's hospitals (reference data)
    and the named areas above, each ``{"admdvs", "name", "province"}``, sorted by code."""
    from settlement.reference import default_reference

    codes = {h.admdvs for h in default_reference().hospitals.values()} | set(AREA_CODES)
    return [{"admdvs": c, "name": full_name(c) or c, "province": province_of(c)} for c in sorted(codes)]


def step_row(transfer_id: str, infno: str, started_on: date, deadline: date) -> dict[str, Any]:
    """A new, pending step of a transfer, numbered by ``STEP_ORDER``."""
    return {"transfer_id": transfer_id, "seq": STEP_ORDER[infno], "infno": infno, "status": "pending",
            "started_on": started_on, "deadline": deadline, "attempts": 0}


def check_request(from_admdvs: str | None, to_admdvs: Any, insutype: Any) -> None:
    """Raise ``TransferError`` (Chinese message) unless ``to_admdvs`` is a six-digit place of the
    region below province level, current in GB/T 2260 (``mappers.region``), in another province
    than ``from_admdvs``, and ``insutype`` is 310 or 390. ``from_admdvs`` None: the person has no
    coverage of that type to move."""
    if insutype not in INSUTYPES:
        raise TransferError("险种只能是职工基本医疗保险（310）或城乡居民基本医疗保险（390）。", "BAD_INSUTYPE")
    if not isinstance(to_admdvs, str) or len(to_admdvs) != 6 or not to_admdvs.isdigit() \
            or to_admdvs.endswith("0000"):
        raise TransferError("请选择转入地（六位行政区划代码，具体到区县）。", "BAD_PLACE")
    if not is_current(to_admdvs):
        raise TransferError(f"转入地{to_admdvs}不是现行的行政区划代码（GB/T 2260）。", "UNKNOWN_PLACE")
    to_province = province_of(to_admdvs)
    if to_province is None:
        raise TransferError("转入地不在长三角区域（上海、江苏、浙江、安徽）内。", "UNKNOWN_PLACE")
    if from_admdvs is None:
        raise TransferError(f"您没有{INSUTYPES[insutype]}的参保记录，无法办理转移。", "NOT_INSURED")
    if province_of(from_admdvs) == to_province:
        raise TransferError("转入地与转出地在同一省份，省内转移请到当地医保经办机构办理。", "SAME_PROVINCE")


# ---------------------------------------------------------------------------------------------
# The saga
# ---------------------------------------------------------------------------------------------


def _dumps(value: Any) -> str:
    return scrub(orjson.dumps(value).decode())


def local_iso(when: datetime | None) -> str | None:
    """A stored time (naive ones are UTC, as SQLite returns them) as ISO 8601 in +08:00."""
    if when is None:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=_UTC)).astimezone(CST).isoformat()


def local_day(when: datetime) -> date:
    return (when if when.tzinfo else when.replace(tzinfo=_UTC)).astimezone(CST).date()


class TransferService:
    """Creates, shows, cancels and advances transfers.

    ``platform``: a callable returning the one ``PlatformClient`` (it is made by another
    starter). ``clock``: "now" (aware); ``retry_base``/``retry_max``: back-off of transient
    failures in seconds; ``poll``: how often the worker looks for due transfers.
    """

    def __init__(self, engine: Engine, platform: Callable[[], Any], calendar: WorkCalendar | None = None, *,
                 clock: Callable[[], datetime] | None = None, retry_base: float = 2.0,
                 retry_max: float = 300.0, poll: float = 1.0, cancel_wait: float = 15.0):
        self.engine, self._platform = engine, platform
        self.calendar = calendar or load_calendar()
        self.clock = clock or (lambda: datetime.now(_UTC))
        self.retry_base, self.retry_max, self.poll, self.cancel_wait = retry_base, retry_max, poll, cancel_wait
        self._locks: dict[str, asyncio.Lock] = {}
        self._running: set[str] = set()
        self._wake = asyncio.Event()
        self._stopping = False

    # -- reading ------------------------------------------------------------------------------

    def today(self) -> date:
        return self.clock().astimezone(CST).date()

    def _load(self, transfer_id: str) -> tuple[Any, list[Any]]:
        with self.engine.connect() as conn:
            row = conn.execute(select(Transfer.__table__).where(Transfer.id == transfer_id)).first()
            steps = conn.execute(select(TransferStep.__table__).where(TransferStep.transfer_id == transfer_id)
                                 .order_by(TransferStep.seq)).all()
        return row, list(steps)

    def view(self, row: Any, steps: Iterable[Any]) -> dict[str, Any]:
        """The transfer as ``hub-interface.md`` shapes it (plus ``cancel_requested``)."""
        today = self.today()
        refusal = {"code": row.refusal_code, "message": row.refusal_message} if row.refusal_code else None
        return {"id": row.id, "status": row.status, "from_admdvs": row.from_admdvs, "to_admdvs": row.to_admdvs,
                "insutype": row.insutype, "created": local_iso(row.created),
                "refusal": refusal if row.status == "refused" else None,
                "cancel_requested": bool(row.cancel_requested),
                "steps": [self._step_view(s, today) for s in steps]}

    @staticmethod
    def _step_view(step: Any, today: date) -> dict[str, Any]:
        done_on = local_day(step.done_at) if step.done_at else None
        overdue = step.status in ("pending", "done") and is_overdue(step.deadline, today, done_on)
        return {"infno": step.infno, "status": step.status, "deadline": step.deadline.isoformat(),
                "overdue": overdue, "done_at": local_iso(step.done_at),
                "outcome": json.loads(step.outcome) if step.outcome else {}, "attempts": step.attempts}

    def get(self, patient_id: str, transfer_id: str) -> dict[str, Any]:
        """The patient's transfer; ``TransferNotFound`` when it is nobody's or someone else's."""
        row, steps = self._load(transfer_id)
        if row is None or row.patient_id != patient_id:
            raise TransferNotFound("未找到该转移申请。")
        return self.view(row, steps)

    def list(self, patient_id: str) -> list[dict[str, Any]]:
        """The patient's transfers, newest first."""
        with self.engine.connect() as conn:
            ids = conn.execute(select(Transfer.id).where(Transfer.patient_id == patient_id)
                               .order_by(Transfer.created.desc())).scalars().all()
        return [self.view(*self._load(i)) for i in ids]

    def current_place(self, patient_id: str, insutype: str) -> str | None:
        """Where the patient's last completed transfer of ``insutype`` moved them (None: none)."""
        with self.engine.connect() as conn:
            return conn.execute(select(Transfer.to_admdvs).where(
                Transfer.patient_id == patient_id, Transfer.insutype == insutype,
                Transfer.status == "completed").order_by(Transfer.created.desc()).limit(1)).scalar()

    # -- creating and cancelling ----------------------------------------------------------------

    def create(self, *, patient_id: str, certno: str, psn_name: str, from_admdvs: str | None, to_admdvs: Any,
               insutype: Any) -> dict[str, Any]:
        """Record a new transfer (status ``submitted``) and wake the worker. Raises
        ``TransferError`` for a bad request and ``TransferInProgress`` when the patient has a
        transfer that is not final (enforced by a unique index, so also under races)."""
        check_request(from_admdvs, to_admdvs, insutype)
        now = self.clock()
        applied = now.astimezone(CST).date()
        origin_deadline = add_working_days(applied, ORIGIN_WORKING_DAYS, self.calendar)
        tid = f"TR{applied:%Y%m%d}{secrets.token_hex(8).upper()}"
        row = {"id": tid, "patient_id": patient_id, "active_patient": patient_id, "certno": certno,
               "psn_name": psn_name, "from_admdvs": from_admdvs, "to_admdvs": to_admdvs, "insutype": insutype,
               "status": "submitted", "created": now, "updated": now, "applied_on": applied,
               "cancel_requested": False, "attempts": 0, "next_attempt_at": now}
        steps = [step_row(tid, "4101", applied, origin_deadline),
                 step_row(tid, "4201", applied,
                          add_working_days(origin_deadline, DESTINATION_WORKING_DAYS, self.calendar))]
        try:
            with writer(self.engine).begin() as conn:
                conn.execute(insert(Transfer), [row])
                conn.execute(insert(TransferStep), steps)
        except IntegrityError:
            raise TransferInProgress("您已有一笔正在办理的转移申请，请等它办结或先撤销后再申请。") from None
        log.info("transfer %s submitted %s -> %s", tid, from_admdvs, to_admdvs)
        self.wake()
        return self.get(patient_id, tid)

    async def cancel(self, patient_id: str, transfer_id: str) -> dict[str, Any]:
        """Ask to cancel and run the compensation now (waiting at most ``cancel_wait`` seconds;
        the worker finishes it otherwise). Raises ``TransferNotFound`` (not the patient's) and
        ``CancelTooLate`` when the transfer is final other than ``cancelled`` or ends ``completed``
        because the destination had already opened coverage. Cancelling a cancelled one returns it."""
        current = self.get(patient_id, transfer_id)
        if current["status"] == "cancelled":
            return current
        with writer(self.engine).begin() as conn:
            changed = conn.execute(update(Transfer).where(Transfer.id == transfer_id,
                                                          Transfer.status.not_in(FINAL))
                                   .values(cancel_requested=True, next_attempt_at=self.clock())).rowcount
        if not changed:
            raise CancelTooLate(self._too_late(current["status"]))
        task = asyncio.ensure_future(self.advance(transfer_id))
        try:
            await asyncio.wait_for(asyncio.shield(task), self.cancel_wait)
        except asyncio.TimeoutError:
            pass
        result = self.get(patient_id, transfer_id)
        if result["status"] == "completed":
            raise CancelTooLate(self._too_late("completed"))
        return result

    @staticmethod
    def _too_late(status: str) -> str:
        return {"completed": "转入地已经为您办理了参保，转移已完成，不能再撤销。",
                "refused": "该申请已被拒绝办结，无需撤销。"}.get(status, "该申请已办结，不能撤销。")

    # -- advancing ------------------------------------------------------------------------------

    async def advance(self, transfer_id: str) -> None:
        """Run the transfer's steps until it is final or waits for a retry. Never raises for a
        platform's answer or failure; one transfer is advanced by one coroutine at a time."""
        lock = self._locks.setdefault(transfer_id, asyncio.Lock())
        async with lock:
            for _ in range(12):  # each pass sends at most one step; a saga has at most 6 sends
                row, steps = await asyncio.to_thread(self._load, transfer_id)
                if row is None or row.status in FINAL:
                    return
                action = self._next_action(row, {s.infno: s for s in steps})
                if action is None:
                    return
                if action == "finish":
                    await asyncio.to_thread(self._finish, row, steps)
                    continue
                if action == "4103" and not any(s.infno == "4103" for s in steps):
                    await asyncio.to_thread(self._add_undo_step, transfer_id)
                    continue
                if not await self._run_step(row, {s.infno: s for s in steps}[action]):
                    return

    @staticmethod
    def _next_action(row: Any, steps: dict[str, Any]) -> str | None:
        """The step to send next, ``"finish"`` to end the transfer without a call, or None."""
        compensating = row.cancel_requested or row.refusal_code is not None
        if not compensating:
            return next((i for i in ("4101", "4102", "4201") if i in steps and steps[i].status == "pending"), None)
        first = steps.get("4101")
        if first is None or first.status == "failed":
            return "finish"
        if first.status == "pending":
            return "4101" if first.delivery != "none" else "finish"  # resolve a 4101 in doubt before undoing it
        funds = steps.get("4102")
        if funds is not None and funds.status == "pending" and funds.delivery != "none":
            return "4102"
        undo = steps.get("4103")
        if undo is None or undo.status == "pending":
            return "4103"
        return "finish"

    async def _run_step(self, row: Any, step: Any) -> bool:
        """Send ``step`` once (the client retries what is safe). True: it answered."""
        msgid = await asyncio.to_thread(self._before_send, row, step)
        try:
            output = await self._send(row, step.infno, msgid)
        except Refused as exc:
            await asyncio.to_thread(self._on_refused, row, step, exc)
            return True
        except PlatformError as exc:
            await asyncio.to_thread(self._on_transient, row, step, exc)
            return False
        await asyncio.to_thread(self._on_done, row, step, output)
        return True

    async def _send(self, row: Any, infno: str, msgid: str) -> dict[str, Any]:
        client = self._platform()
        if client is None:
            raise PlatformNotConfigured("platform client not started")
        common = {"msgid": msgid, "transfer_id": row.id}
        if infno == "4101":
            return await client.transfer_out(row.from_admdvs, certno=row.certno, psn_name=row.psn_name,
                                             insutype=row.insutype, to_admdvs=row.to_admdvs, **common)
        if infno == "4102":
            return await client.transfer_funds(row.from_admdvs, cert_no=row.cert_no, amount=Decimal(row.acct_balc),
                                               to_admdvs=row.to_admdvs, **common)
        if infno == "4201":
            return await client.transfer_in(row.to_admdvs, cert_no=row.cert_no, from_admdvs=row.from_admdvs,
                                            certno=row.certno, psn_name=row.psn_name, insutype=row.insutype,
                                            insu_months=row.insu_months, acct_balc=Decimal(row.acct_balc or "0"),
                                            fund_txn_id=row.fund_txn_id, **common)
        return await client.cancel_transfer_out(row.from_admdvs, cert_no=row.cert_no,
                                                fund_txn_id=row.fund_txn_id, **common)

    # -- recording answers (each in one write transaction) ----------------------------------------

    def _before_send(self, row: Any, step: Any) -> str:
        """Fix the step's msgid (once, before its first send), mark it possibly in flight, and
        mark the transfer started; returns the msgid every send of the step uses."""
        msgid = new_msgid(HUB_PARTY, self.clock(), MSGID_SEQ_BASE + step.id % MSGID_SEQ_SPAN)
        with writer(self.engine).begin() as conn:
            conn.execute(update(TransferStep).where(TransferStep.id == step.id, TransferStep.msgid.is_(None))
                         .values(msgid=msgid))
            conn.execute(update(TransferStep).where(TransferStep.id == step.id, TransferStep.delivery == "none")
                         .values(delivery="inflight"))
            conn.execute(update(Transfer).where(Transfer.id == row.id, Transfer.status == "submitted")
                         .values(status="in_progress", updated=self.clock()))
            return conn.execute(select(TransferStep.msgid).where(TransferStep.id == step.id)).scalar()

    def _on_done(self, row: Any, step: Any, output: dict[str, Any]) -> None:
        now, today = self.clock(), self.today()
        with writer(self.engine).begin() as conn:
            conn.execute(update(TransferStep).where(TransferStep.id == step.id).values(
                status="done", done_at=now, outcome=_dumps(output), attempts=step.attempts + 1, delivery="reached"))
            values: dict[str, Any] = {"updated": now, "attempts": 0, "next_attempt_at": now, "last_error": None}
            if step.infno == "4101":
                values.update(cert_no=output.get("cert_no"), insu_months=int(output.get("insu_months") or 0),
                              acct_balc=str(Decimal(str(output.get("acct_balc") or "0"))))
                if Decimal(values["acct_balc"]) > 0:
                    conn.execute(insert(TransferStep), [step_row(
                        row.id, "4102", today, add_working_days(row.applied_on, ORIGIN_WORKING_DAYS, self.calendar))])
                else:
                    self._destination_received(conn, row.id, today)
            elif step.infno == "4102":
                values["fund_txn_id"] = output.get("fund_txn_id")
                self._destination_received(conn, row.id, today)
            elif step.infno == "4201":
                values.update(status="completed", active_patient=None)
            conn.execute(update(Transfer).where(Transfer.id == row.id).values(**values))
        log.info("transfer %s step %s done", row.id, step.infno)

    def _destination_received(self, conn, transfer_id: str, today: date) -> None:
        """The origin's record (and funds) are out: the destination's 5 working days start."""
        conn.execute(update(TransferStep).where(TransferStep.transfer_id == transfer_id,
                                                TransferStep.infno == "4201", TransferStep.status == "pending")
                     .values(started_on=today, deadline=add_working_days(today, DESTINATION_WORKING_DAYS,
                                                                         self.calendar)))

    def _on_refused(self, row: Any, step: Any, exc: Refused) -> None:
        now = self.clock()
        outcome = _dumps({"err_code": exc.err_code, "err_msg": exc.err_msg})
        log.info("transfer %s step %s refused %s", row.id, step.infno, exc.err_code)
        if exc.err_code == "MSGID_REUSED":  # another process used the msgid: the step was not run
            return self._new_msgid(row, step, exc)
        if step.infno == "4103":
            return self._on_undo_refused(row, step, exc)
        with writer(self.engine).begin() as conn:
            conn.execute(update(TransferStep).where(TransferStep.id == step.id).values(
                status="failed", done_at=now, outcome=outcome, attempts=step.attempts + 1, delivery="reached"))
            values: dict[str, Any] = {"updated": now, "attempts": 0, "next_attempt_at": now}
            if step.infno == "4101":  # nothing happened at the origin: the transfer ends here
                values.update(status="refused", active_patient=None, refusal_code=exc.err_code,
                              refusal_message=exc.err_msg)
                self._drop_unsent(conn, row.id)
            elif not row.cancel_requested and row.refusal_code is None:
                values.update(refusal_code=exc.err_code, refusal_message=exc.err_msg)
            conn.execute(update(Transfer).where(Transfer.id == row.id).values(**values))

    def _new_msgid(self, row: Any, step: Any, exc: Refused) -> None:
        """Forget the step's msgid (the platform holds it for another message) and retry: the
        steps are keyed by ``transfer_id``, so the same step under a new msgid is still one step."""
        with writer(self.engine).begin() as conn:
            conn.execute(update(TransferStep).where(TransferStep.id == step.id).values(msgid=None))
        self._on_transient(row, step, exc)

    def _on_undo_refused(self, row: Any, step: Any, exc: Refused) -> None:
        """4103 refused. ``CERT_INVALID`` after a 4201 went out: the destination used the record,
        so the cancel lost the race; resend 4201 to learn its answer. Anything else is a state
        the hub cannot explain: keep retrying slowly and say so in the log."""
        _, steps = self._load(row.id)
        arrival = next((s for s in steps if s.infno == "4201"), None)
        if exc.err_code == "CERT_INVALID" and row.refusal_code is None and arrival is not None and arrival.delivery != "none":
            with writer(self.engine).begin() as conn:
                conn.execute(delete(TransferStep).where(TransferStep.id == step.id))
                conn.execute(update(Transfer).where(Transfer.id == row.id).values(
                    cancel_requested=False, updated=self.clock(), next_attempt_at=self.clock()))
            return None
        log.error("transfer %s: 4103 refused %s; needs an operator", row.id, exc.err_code)
        self._on_transient(row, step, exc, attempts=999)
        return None

    def _on_transient(self, row: Any, step: Any, exc: PlatformError, attempts: int | None = None) -> None:
        tries = attempts if attempts is not None else row.attempts + 1
        delay = min(self.retry_max, self.retry_base * 2 ** min(tries - 1, 20))
        if isinstance(exc, PlatformBusy) and exc.retry_after:
            delay = max(delay, min(exc.retry_after, self.retry_max))
        now = self.clock()
        kind = "outcome unknown" if isinstance(exc, OutcomeUnknown) else type(exc).__name__
        log.warning("transfer %s step %s: %s, retry in %.1fs", row.id, step.infno, kind, delay)
        # ``step`` is as it was before this send: if nothing ever reached the platform and this
        # send did not leave either (NotSent), the step is unsent again.
        reached = step.delivery != "none" or isinstance(exc, (OutcomeUnknown, Refused))
        with writer(self.engine).begin() as conn:
            conn.execute(update(TransferStep).where(TransferStep.id == step.id).values(
                attempts=step.attempts + 1, delivery="reached" if reached else "none"))
            conn.execute(update(Transfer).where(Transfer.id == row.id).values(
                attempts=tries, next_attempt_at=now + timedelta(seconds=delay), updated=now,
                last_error=scrub(f"{step.infno}: {exc}")[:300]))

    def _drop_unsent(self, conn, transfer_id: str) -> None:
        conn.execute(delete(TransferStep).where(TransferStep.transfer_id == transfer_id,
                                                TransferStep.status == "pending", TransferStep.delivery == "none"))

    def _finish(self, row: Any, steps: list[Any]) -> None:
        """End a compensating transfer: restored steps ``undone``, a 4201 sent but superseded by
        the 4103 ``failed``, unsent steps dropped; ``refused`` with the refusal or ``cancelled``."""
        now = self.clock()
        undone = any(s.infno == "4103" and s.status == "done" for s in steps)
        with writer(self.engine).begin() as conn:
            if undone:
                conn.execute(update(TransferStep).where(TransferStep.transfer_id == row.id,
                                                        TransferStep.infno.in_(("4101", "4102")),
                                                        TransferStep.status == "done").values(status="undone"))
            conn.execute(update(TransferStep).where(TransferStep.transfer_id == row.id,
                                                    TransferStep.status == "pending",
                                                    TransferStep.delivery != "none")
                         .values(status="failed", done_at=now, outcome=_dumps({"superseded_by": "4103"})))
            self._drop_unsent(conn, row.id)
            status = "refused" if row.refusal_code else "cancelled"
            conn.execute(update(Transfer).where(Transfer.id == row.id).values(
                status=status, active_patient=None, updated=now, last_error=None))
        log.info("transfer %s %s", row.id, status)

    def _add_undo_step(self, transfer_id: str) -> None:
        today = self.today()
        with writer(self.engine).begin() as conn:
            exists = conn.execute(select(TransferStep.id).where(TransferStep.transfer_id == transfer_id,
                                                                TransferStep.infno == "4103")).first()
            if exists is None:
                conn.execute(insert(TransferStep), [step_row(
                    transfer_id, "4103", today, add_working_days(today, COMPENSATION_WORKING_DAYS, self.calendar))])

    # -- the worker -------------------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def _due(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(Transfer.id).where(
                Transfer.status.not_in(FINAL), Transfer.next_attempt_at <= self.clock())
                .order_by(Transfer.next_attempt_at).limit(100)).scalars())

    async def _advance_tracked(self, transfer_id: str) -> None:
        try:
            await self.advance(transfer_id)
        except Exception:  # a bug must not stop the worker; the transfer is retried later
            log.exception("transfer %s: unexpected error", transfer_id)
            await asyncio.to_thread(self._postpone, transfer_id)
        finally:
            self._running.discard(transfer_id)

    def _postpone(self, transfer_id: str) -> None:
        with writer(self.engine).begin() as conn:
            conn.execute(update(Transfer).where(Transfer.id == transfer_id)
                         .values(next_attempt_at=self.clock() + timedelta(seconds=self.retry_max)))

    async def run(self) -> None:
        """Advance due transfers until ``stop``; resumes every non-final transfer on start."""
        while not self._stopping:
            self._wake.clear()
            try:
                due = await asyncio.to_thread(self._due)
            except Exception:
                log.exception("transfer worker: cannot read due transfers")
                due = []
            for tid in due:
                if tid not in self._running:
                    self._running.add(tid)
                    asyncio.ensure_future(self._advance_tracked(tid))
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll)
            except asyncio.TimeoutError:
                pass

    def stop(self) -> None:
        self._stopping = True
        self.wake()
