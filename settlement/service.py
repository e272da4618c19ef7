"""The settlement service: a durable state machine per settlement, exactly once on every platform.

A ``POST /settlement/settle`` is written down (committed, ``state=received``) before any platform
call; every later step is committed before the call it prepares. A settlement is driven by one
runner at a time (a lease on its row, renewed by every write); on start, and every few seconds,
the service resumes every non-final settlement whose runner lease has lapsed (a crashed or
killed hub).

States and transitions: ``settlement.states`` (the picture, and the table every state the driver
writes is checked against).

Exactly once rests on two facts of the contract: a platform commits a ``setl_id`` at most once
for a *new* message (``DUPLICATE_SETL_ID`` otherwise, which the hub takes as committed), and only
a repeat of an already processed msgid on AH commits twice; so the hub never sends an AH 2207
msgid twice without a 5205 in between (``fresh`` below), and gives every 2207 a msgid that no
other message ever had (``settlement_msgid``).

Two settlements of one person: a per-person lease (``settlement_person_lease``, plus an
in-process ``asyncio.Lock``) is held from reading the totals to learning the 2207's outcome; a
waiter re-reads the totals. Where the lease lapses (another process, a slow platform), the
platform's ``accum_version`` check (``ACCUM_CONFLICT``) still keeps the totals right.

    Raises (``settlement.errors``): NotPermitted, NotFound, Conflict, InvalidRequest,
    PlatformUnavailable to the caller; RunnerLost (another runner took this settlement over) and
    IllegalTransition (a state write ``settlement.states`` does not allow: a bug) inside.

No log line holds a resident ID number: the request body stays in the database.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import bindparam, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.pool import StaticPool

from mappers.region import CST, money_text, province_of, scrub

from .caller import Caller as Party
from .errors import (Conflict, IllegalTransition, InvalidRequest, NotFound, NotPermitted, OutcomeUnknown,
                     PersonInfoInvalid, PlatformError, PlatformUnavailable, Refused, RequestInvalid,
                     RunnerLost, SettlementError)
from .models import Settlement, SettlementMsgid, SettlementPersonLease
from .platform import PlatformClient, SPLIT_FIELDS, fmt_time, interpret
from .reference import default_reference
from .sqlite_loop import LoopConnection
from .states import FINAL, INITIAL, OPEN, STATUS_OF_STATE, allowed
from .storage import is_sqlite, writer
from .rules import PersonInfo, Refusal, SettleRequest, compute_split, select_coverage, validate_request

log = logging.getLogger(__name__)

T = Settlement.__table__
LEASE = SettlementPersonLease.__table__
MSGIDS = SettlementMsgid.__table__

# Refusals after which the totals moved: re-read them (1101), recompute, send a new message.
RECOMPUTE = frozenset({"ACCUM_CONFLICT", "INSUFFICIENT_BALANCE", "MSGID_REUSED", "MSG_REVERSED"})
UNAVAILABLE = {"code": "PLATFORM_UNAVAILABLE",
               "message": "参保地平台在时限内未能确认结算，本次结算未扣费（已冲正），请全额垫付或稍后重新结算"}


def check_transition(setl_id: str, before: str, after: str) -> None:
    """Raise IllegalTransition unless the table allows ``before -> after``."""
    if not allowed(before, after):
        raise IllegalTransition(f"settlement {setl_id}: {before} -> {after} is not a transition")


@dataclass(frozen=True)
class Options:
    """The service's knobs (``YRDHUB_SETTLEMENT_*``, read through ``hub.config.Settings``).

    ``wait``: seconds a settle or void call waits before answering 202 pending. ``give_up``:
    seconds after which an unknown outcome is reversed (2601) and a never-sent one refused.
    ``runner_lease`` / ``person_lease``: lease lengths. ``sweep``: seconds between resume sweeps.
    ``retry_min`` / ``retry_max``: backoff bounds between attempts; ``max_conflicts``: recomputes
    in a row before backing off.
    """

    wait: float = 5.0
    give_up: float = 300.0
    runner_lease: float = 15.0
    person_lease: float = 30.0
    sweep: float = 2.0
    retry_min: float = 0.2
    retry_max: float = 10.0
    max_conflicts: int = 20

    @classmethod
    def from_settings(cls, settings) -> Options:
        """From the hub's ``Settings`` (``YRDHUB_SETTLEMENT_*``); unset knobs keep the defaults."""
        values = {name: getattr(settings, f"settlement_{name}") for name in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in values.items() if v is not None})


@dataclass(frozen=True)
class Computed:
    """The person (1101) and the split computed on its totals."""

    person: PersonInfo
    split: Any


def digest(raw: Mapping[str, Any]) -> str:
    """SHA-256 of the body as canonical JSON (keys sorted): the same body, whitespace aside."""
    return hashlib.sha256(orjson.dumps(raw, option=orjson.OPT_SORT_KEYS)).hexdigest()


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# ---------------------------------------------------------------------------------------------
# The database side
# ---------------------------------------------------------------------------------------------

# Statements built once (their compiled form is cached by SQLAlchemy; building them per call
# cost more than the SQL itself). ``b_*`` are bound at execution; an UPDATE's SET clause is the
# execution's other keys.
_BY_ID = select(T).where(T.c.setl_id == bindparam("b_setl_id"))
_BY_KEY = select(T).where(T.c.fixmedins_code == bindparam("b_fixmedins_code"),
                          T.c.request_key == bindparam("b_request_key"))
_INSERT = insert(T)
_EMPTY_ROW = {c.name: None for c in T.columns}  # a row's columns not given at insert (all nullable)
_CLAIM = update(T).where(T.c.setl_id == bindparam("b_setl_id"), T.c.state.in_(sorted(OPEN)),
                         or_(T.c.runner.is_(None), T.c.runner == bindparam("b_runner"),
                             T.c.run_until < bindparam("b_now")))
_UPDATE_MINE = update(T).where(T.c.setl_id == bindparam("b_setl_id"), T.c.runner == bindparam("b_runner"))
_INSERT_MSGID = insert(MSGIDS)
_RELEASE = delete(LEASE).where(LEASE.c.holder == bindparam("b_holder"))
_TAKE = update(LEASE).where(LEASE.c.person_key == bindparam("b_key"),
                            or_(LEASE.c.holder == bindparam("b_holder"), LEASE.c.until < bindparam("b_now")))
_LEASE_HOLDER = select(LEASE.c.holder).where(LEASE.c.person_key == bindparam("b_key"))
_INSERT_LEASE = insert(LEASE)
# Only settlements of insured provinces whose platform this hub can reach (configured): a hub
# sharing the database without one must not take work it cannot drive.
_DUE = (select(T.c.setl_id).where(T.c.state.in_(sorted(OPEN)), T.c.insuplc.in_(bindparam("b_provinces", expanding=True)),
                                  or_(T.c.runner.is_(None), T.c.runner == bindparam("b_runner"),
                                                                T.c.run_until < bindparam("b_now")))
        .order_by(T.c.next_at).limit(bindparam("b_limit")))


class _Serialized:
    """``engine.begin()`` one thread at a time: SQLite has one writer, and threads that meet on
    its lock wait in the busy handler's sleeps (1..100 ms); queueing on a Python lock instead
    costs nothing. Other processes still meet on the database lock (busy_timeout)."""

    def __init__(self, engine):
        self.engine, self.lock = engine, threading.Lock()

    @contextmanager
    def begin(self):
        with self.lock, self.engine.begin() as conn:
            yield conn


_BUSY = object()  # Store._on_loop: SQLite was busy, run it in a thread


def _is_busy(exc: OperationalError) -> bool:
    code = getattr(exc.orig, "sqlite_errorcode", None) or 0  # extended: BUSY_SNAPSHOT is BUSY too
    return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in str(exc.orig)


def figures_of(values: dict) -> dict:
    """The columns the cooperation indicators group and sum by (``refusal_code``, and
    ``medfee_fen``: ``medfee_sumamt`` in whole fen, exact on every database), written with the
    JSON they come from so that they never disagree with it."""
    out: dict = {}
    if isinstance(values.get("split"), str):
        out["medfee_fen"] = int(Decimal(orjson.loads(values["split"])["medfee_sumamt"]) * 100)
    if isinstance(values.get("refusal"), str):
        out["refusal_code"] = str(orjson.loads(values["refusal"]).get("code") or "")[:40] or None
    return out


class Store:
    """Every read and write of the settlement tables. Writes are conditional on the runner: a
    write by a runner that lost its lease raises RunnerLost and changes nothing.

    The transactions are the ``_op_*`` functions; the service runs them from the event loop
    through the ``a*`` methods (``run``/``read``); ``get`` and ``due`` serve callers in a
    thread (tests, tools). From the loop, on a SQLite file a transaction runs right there, on a
    connection of its own that never waits for the database lock (a deferred BEGIN, no busy
    timeout, no Python lock: the loop never blocks); when another writer holds the lock, or
    committed between this transaction's read and its first write, SQLite says busy at once, the
    transaction is rolled back and runs again in a thread, which waits as writers usually do.
    The loop's connection runs the ``_op_*`` statements on sqlite3 directly
    (``settlement.sqlite_loop``: SQLAlchemy compiles them once; its per-execution machinery was
    half of the database time of a bill). The resume sweep (``adue``: an expanding IN) runs in a
    thread through SQLAlchemy.
    A settlement's transactions are a few hundred microseconds of CPU; handing each to a thread
    cost far more (every statement gives up the GIL, and a thread waits up to the switch
    interval, 5 ms, to get it back while the loop is busy: a convoy that capped the hub at ~40
    settlements/s). On PostgreSQL every transaction goes to a thread.
    """

    def __init__(self, engine, runner_lease: float):
        self.engine, self.lease = engine, runner_lease
        self.w = _Serialized(writer(engine)) if is_sqlite(engine) else writer(engine)
        self.inline = is_sqlite(engine) and not isinstance(engine.pool, StaticPool)
        # The event loop's own connection (SQLite file), made on first use; its statements run
        # on the sqlite3 connection directly (``sqlite_loop``), the rest through SQLAlchemy.
        self._conn = self._loop = None

    # -- running from the event loop --------------------------------------------------------------

    async def run(self, op, *args: Any, **kw: Any) -> Any:
        """``op(conn, ...)`` in a write transaction (``op`` is one of the ``_op_*`` below)."""
        if self.inline and (done := self._on_loop(op, *args, **kw)) is not _BUSY:
            return done
        return await asyncio.to_thread(self._in_thread, op, *args, **kw)

    async def read(self, op, *args: Any) -> Any:
        """``op(conn, ...)`` for a read (on the loop's connection a short transaction too)."""
        if self.inline and (done := self._on_loop(op, *args)) is not _BUSY:
            return done
        return await asyncio.to_thread(self._read_in_thread, op, *args)

    def _on_loop(self, op, *args: Any, **kw: Any) -> Any:
        """``op`` in a transaction on the loop's connection; ``_BUSY`` when SQLite said busy
        (rolled back: the caller runs it in a thread)."""
        try:
            with self._loop_conn().begin() as conn:
                return op(conn, *args, **kw)
        except OperationalError as exc:
            if not _is_busy(exc):
                raise
            return _BUSY
        finally:
            if self._loop is not None and self._loop.raw.in_transaction:  # its rollback failed:
                self.close()                                                # a fresh one next time

    def _in_thread(self, op, *args: Any, **kw: Any) -> Any:
        with self.w.begin() as conn:
            return op(conn, *args, **kw)

    def _read_in_thread(self, op, *args: Any) -> Any:
        with self.engine.connect() as conn:
            return op(conn, *args)

    def _loop_conn(self) -> LoopConnection:
        if self._conn is None or self._conn.closed:
            conn = self.engine.connect()  # the engine's pragmas; not writer(): BEGIN IMMEDIATE could wait
            raw = conn.connection.dbapi_connection
            raw.execute("PRAGMA busy_timeout=0")
            # A checkpoint syncs the database file (~3 ms here, every ~150 ms at 300 bills/s):
            # on this connection it would hold the event loop; ``checkpoint`` does it in a thread.
            raw.execute("PRAGMA wal_autocheckpoint=0")
            conn.detach()  # never back in the pool (with busy_timeout 0): closed with this Store
            self._conn, self._loop = conn, LoopConnection(raw, self.engine.dialect)
        return self._loop

    checkpoint_every = 1.0  # seconds; the service's checkpointer

    def checkpoint(self) -> tuple[int, int, int]:
        """Copy the write-ahead log into the database file, for a thread (the loop's own
        connection never does: ``wal_autocheckpoint=0``). PASSIVE: waits for no reader or
        writer, copies what it can; the rest goes next time. Returns SQLite's (busy, frames
        in the log, frames copied)."""
        with self.engine.connect() as conn:
            return tuple(conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").one())

    def close(self) -> None:
        """Close the loop's connection (the next ``run`` makes a new one)."""
        if self._conn is not None and not self._conn.closed:
            self._conn.close()
        self._conn = self._loop = None

    # -- the transactions ---------------------------------------------------------------------------

    @staticmethod
    def _op_get(conn, setl_id: str) -> dict | None:
        row = conn.execute(_BY_ID, {"b_setl_id": setl_id}).first()
        return dict(row._mapping) if row else None

    @staticmethod
    def _op_insert_or_get(conn, values: dict) -> tuple[dict, bool]:
        row = conn.execute(_BY_KEY, {"b_fixmedins_code": values["fixmedins_code"],
                                     "b_request_key": values["request_key"]}).first()
        if row is not None:
            return dict(row._mapping), False
        conn.execute(_INSERT, values)
        return {**_EMPTY_ROW, **values}, True

    def _op_claim(self, conn, setl_id: str, runner: str) -> dict | None:
        now = time.time()
        done = conn.execute(_CLAIM, {"b_setl_id": setl_id, "b_runner": runner, "b_now": now,
                                     "runner": runner, "run_until": now + self.lease})
        if done.rowcount != 1:
            return None
        return dict(conn.execute(_BY_ID, {"b_setl_id": setl_id}).one()._mapping)

    @staticmethod
    def _op_write(conn, row: dict, values: dict, release_person: bool, msgid: str | None,
                  take_person: tuple[str, float] | None = None) -> dict | None:
        """With ``take_person`` (key, ttl): only if the person lease is had (else None)."""
        if take_person is not None and not Store._op_take_person(conn, take_person[0], row["setl_id"],
                                                                 take_person[1]):
            return None
        if msgid is not None:
            conn.execute(_INSERT_MSGID, {"msgid": msgid, "setl_id": row["setl_id"]})
        done = conn.execute(_UPDATE_MINE, {**values, "b_setl_id": row["setl_id"], "b_runner": row["runner"]})
        if done.rowcount != 1:
            raise RunnerLost(row["setl_id"])
        if release_person:
            conn.execute(_RELEASE, {"b_holder": row["setl_id"]})
        return {**row, **values}

    @staticmethod
    def _op_take_person(conn, key: str, holder: str, ttl: float) -> bool:
        now = time.time()
        done = conn.execute(_TAKE, {"b_key": key, "b_holder": holder, "b_now": now, "holder": holder,
                                    "until": now + ttl})
        if done.rowcount == 1:
            return True
        if conn.execute(_LEASE_HOLDER, {"b_key": key}).first():
            return False
        conn.execute(_INSERT_LEASE, {"person_key": key, "holder": holder, "until": now + ttl})
        return True

    @staticmethod
    def _op_release_person(conn, holder: str) -> None:
        conn.execute(_RELEASE, {"b_holder": holder})

    @staticmethod
    def _op_due(conn, runner: str, limit: int, provinces: list[str]) -> list[str]:
        return [r.setl_id for r in conn.execute(_DUE, {"b_runner": runner, "b_now": time.time(),
                                                        "b_limit": limit, "b_provinces": provinces})]

    def _stamp(self, values: dict) -> dict:
        return {**values, **figures_of(values), "updated_at": utcnow(), "run_until": time.time() + self.lease}

    # -- the same, asynchronous (from the event loop) -------------------------------------------

    async def aget(self, setl_id: str) -> dict | None:
        return await self.read(self._op_get, setl_id)

    async def ainsert_or_get(self, values: dict) -> tuple[dict, bool]:
        try:
            return await self.run(self._op_insert_or_get, values)
        except IntegrityError:  # PostgreSQL: a concurrent insert of the same key won
            row = await self.read(self._op_by_key, values)
            return row, False

    @staticmethod
    def _op_by_key(conn, values: dict) -> dict:
        return dict(conn.execute(_BY_KEY, {"b_fixmedins_code": values["fixmedins_code"],
                                           "b_request_key": values["request_key"]}).one()._mapping)

    async def aclaim(self, setl_id: str, runner: str) -> dict | None:
        return await self.run(self._op_claim, setl_id, runner)

    async def awrite(self, row: dict, values: dict, *, release_person: bool = False, msgid: str | None = None,
                     take_person: tuple[str, float] | None = None) -> dict | None:
        return await self.run(self._op_write, row, self._stamp(values), release_person, msgid, take_person)

    async def atake_person(self, key: str, holder: str, ttl: float) -> bool:
        try:
            return await self.run(self._op_take_person, key, holder, ttl)
        except IntegrityError:
            return False

    async def arelease_person(self, holder: str) -> None:
        await self.run(self._op_release_person, holder)

    async def adue(self, runner: str, exclude: set[str], provinces: list[str],
                   limit: int = 1000) -> list[str]:
        # In a thread: its expanding IN is rendered per execution, which only SQLAlchemy does
        # (the loop's connection refuses it); the sweep runs every few seconds.
        return await asyncio.to_thread(self.due, runner, exclude, provinces, limit)

    # -- synchronous (any thread: tests, tools) -------------------------------------------------

    def get(self, setl_id: str) -> dict | None:
        return self._read_in_thread(self._op_get, setl_id)

    def due(self, runner: str, exclude: set[str], provinces: list[str],
            limit: int = 1000) -> list[str]:
        """Non-final settlements of ``provinces`` nobody drives (lease lapsed or this runner's)."""
        return [s for s in self._read_in_thread(self._op_due, runner, limit, provinces)
                if s not in exclude]


# ---------------------------------------------------------------------------------------------
# The service
# ---------------------------------------------------------------------------------------------


def view(row: Mapping[str, Any]) -> dict[str, Any]:
    """The hub-interface answer of a settlement."""
    refusal = orjson.loads(row["refusal"]) if row.get("refusal") else None
    return {"setl_id": row["setl_id"], "status": STATUS_OF_STATE[row["state"]],
            "insurer_setl_id": row.get("insurer_setl_id"),
            "split": orjson.loads(row["split"]) if row.get("split") else None, "refusal": refusal}


def check_platform(party: Party, province: str, *, admin_too: bool = False) -> None:
    """Only the treatment province's platform (and, for reads, an administrator): else 403."""
    if admin_too and party.kind == "admin":
        return
    if party.kind != "insurer" or party.code != province:
        raise NotPermitted("only the insurance platform of the hospital's province may do this")


def parse_body(body: bytes, reference) -> tuple[dict, SettleRequest, Any]:
    """(raw JSON, request, hospital); InvalidRequest (the rules' code) when invalid."""
    try:
        raw = orjson.loads(body)
        request = SettleRequest.from_json(raw)
        hospital = validate_request(request, reference)
    except orjson.JSONDecodeError:
        raise InvalidRequest("the body is not JSON", code="INVALID_BODY") from None
    except RequestInvalid as exc:
        raise InvalidRequest(str(exc), code=exc.code) from None
    return raw, request, hospital


class SettlementService:
    """Presettle, settle, read, void; drives each settlement to a final state in the background.

    ``engine``: the hub's database; ``platform``: the shared PlatformClient; ``options``: see
    Options. ``start()`` resumes what was in flight and sweeps for lapsed runners; ``stop()``
    cancels the drivers (their settlements stay in the database and resume on the next start).
    """

    def __init__(self, engine, platform: PlatformClient, options: Options | None = None, reference=None):
        self.options = options or Options()
        self.store = Store(engine, self.options.runner_lease)
        self.platform = platform
        self.reference = reference or default_reference()
        self.runner = uuid.uuid4().hex[:16]
        self.tasks: dict[str, asyncio.Task] = {}
        self.person_locks: dict[str, asyncio.Lock] = {}
        self._sweeper: asyncio.Task | None = None
        self._checkpointer: asyncio.Task | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.sweep()
        self._sweeper = asyncio.create_task(self._sweep_forever())
        if self.store.inline:
            self._checkpointer = asyncio.create_task(self._checkpoint_forever())

    async def stop(self) -> None:
        tasks = [t for t in [self._sweeper, self._checkpointer, *self.tasks.values()] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.store.close()

    async def sweep(self) -> int:
        """Start a driver for every non-final settlement nobody drives; returns how many."""
        due = await self.store.adue(self.runner, set(self.tasks), sorted(self.platform.base_urls))
        for setl_id in due:
            self.spawn(setl_id)
        return len(due)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.options.sweep)
            try:
                await self.sweep()
            except Exception:  # a database hiccup: try again next time
                log.exception("settlement sweep failed")

    async def _checkpoint_forever(self) -> None:
        """``Store.checkpoint`` in a thread every ``Store.checkpoint_every`` seconds."""
        while True:
            await asyncio.sleep(self.store.checkpoint_every)
            try:
                await asyncio.to_thread(self.store.checkpoint)
            except Exception:  # a database hiccup: the next one copies what this one did not
                log.exception("settlement checkpoint failed")

    def spawn(self, setl_id: str, claimed: dict | None = None) -> asyncio.Task:
        """The driver of ``setl_id`` (started unless running). ``claimed``: its row, just
        inserted with this runner's lease (no claim needed)."""
        task = self.tasks.get(setl_id)
        if task is None or task.done():
            task = asyncio.create_task(self._drive(setl_id, claimed))
            self.tasks[setl_id] = task
            task.add_done_callback(lambda t, s=setl_id: self.tasks.get(s) is t and self.tasks.pop(s))
        return task

    # -- the calls of the interface -------------------------------------------------------------

    async def presettle(self, party: Party, body: bytes) -> dict:
        """Compute the split; commits nothing. 422 invalid, 503 when the platform cannot answer."""
        _raw, request, hospital = parse_body(body, self.reference)
        check_platform(party, hospital.province)
        try:
            person = await self._person_info(request)
        except Refused as exc:
            return {"setl_id": None, "status": "refused", "insurer_setl_id": None, "split": None,
                    "refusal": {"code": exc.err_code, "message": exc.err_msg}}
        except (PlatformError, PersonInfoInvalid) as exc:
            raise PlatformUnavailable(f"the insured place's platform cannot be reached: {type(exc).__name__}") from None
        outcome = self._compute(request, person)
        if isinstance(outcome, RequestInvalid):
            raise InvalidRequest(str(outcome), code=outcome.code)
        if isinstance(outcome, PersonInfoInvalid):
            raise PlatformUnavailable("the insured place's platform gave an unusable answer")
        if isinstance(outcome, Refusal):
            return {"setl_id": None, "status": "refused", "insurer_setl_id": None, "split": None,
                    "refusal": outcome.as_json()}
        return {"setl_id": None, "status": "computed", "insurer_setl_id": None, "split": outcome.as_json(),
                "refusal": None}

    async def settle(self, party: Party, body: bytes) -> tuple[int, dict]:
        """Record the request, drive it, answer within ``options.wait``: (HTTP status, body).

        The same hospital + request_key answers the first settlement (409 with another body).
        """
        raw, request, hospital = parse_body(body, self.reference)
        check_platform(party, hospital.province)
        row, created = await self.store.ainsert_or_get(self._new_row(raw, request, hospital))
        if not created and row["body_digest"] != digest(raw):
            raise Conflict("this request_key was used with another body", code="REQUEST_KEY_REUSED")
        return await self._answer_after(row, self.options.wait, claimed=created)

    async def get(self, party: Party, setl_id: str) -> dict:
        row = await self._row(setl_id)
        check_platform(party, row["mdtrtarea"], admin_too=True)
        return view(row)

    async def void(self, party: Party, setl_id: str) -> tuple[int, dict]:
        """Void a settled settlement (2208). Voided already: its answer again. Not settled: 409."""
        row = await self._row(setl_id)
        check_platform(party, row["mdtrtarea"])
        if row["state"] == "settled":
            check_transition(row["setl_id"], "settled", "voiding")
            await self.store.run(self._op_request_void, row["setl_id"], self._msgid(row["fixmedins_code"]))
            row = await self._row(setl_id)
        elif row["state"] not in ("voiding", "voided"):
            raise Conflict(f"settlement {setl_id} is {STATUS_OF_STATE[row['state']]}, not settled",
                           code="NOT_SETTLED")
        return await self._answer_after(row, self.options.wait)

    # -- helpers of the calls -------------------------------------------------------------------

    async def _row(self, setl_id: str) -> dict:
        row = await self.store.aget(setl_id)
        if row is None:
            raise NotFound(f"no settlement {setl_id}")
        return row

    def _new_row(self, raw: dict, request: SettleRequest, hospital) -> dict:
        now = utcnow()
        return {"setl_id": "YS" + uuid.uuid4().hex[:24].upper(), "fixmedins_code": request.fixmedins_code,
                "request_key": request.request_key, "body_digest": digest(raw),
                "body": orjson.dumps(raw).decode(), "state": INITIAL, "mdtrtarea_admvs": hospital.admdvs,
                "mdtrtarea": hospital.province, "insuplc_admdvs": request.insuplc_admdvs,
                "insuplc": province_of(request.insuplc_admdvs), "insutype": request.insutype,
                "mdtrt_id": request.mdtrt_id, "msgids": "[]", "attempts": 0, "conflicts": 0, "next_at": 0.0,
                "deadline": time.time() + self.options.give_up, "runner": self.runner,
                "run_until": time.time() + self.options.runner_lease, "created_at": now, "updated_at": now}

    @staticmethod
    def _op_request_void(conn, setl_id: str, void_msgid: str) -> None:
        """Mark a settled settlement ``voiding`` (whoever drives it next sends the 2208)."""
        conn.execute(update(T).where(T.c.setl_id == setl_id, T.c.state == "settled").values(
            state="voiding", void_msgid=void_msgid, next_at=0.0, attempts=0, runner=None, run_until=0.0,
            updated_at=utcnow()))

    async def _answer_after(self, row: dict, wait: float, claimed: bool = False) -> tuple[int, dict]:
        if row["state"] not in FINAL:
            task = self.spawn(row["setl_id"], row if claimed else None)
            done, _ = await asyncio.wait({task}, timeout=wait)
            final = task.result() if done and not task.cancelled() else None
            # The driver's last row is what it committed; read the database only when it did
            # not finish (pending) or stopped without a final state.
            row = final if final is not None and final["state"] in FINAL else await self.store.aget(row["setl_id"])
        if row["state"] == "invalid":
            refusal = orjson.loads(row["refusal"])
            raise InvalidRequest(refusal["message"], code=refusal["code"])
        answer = view(row)
        return (202 if answer["status"] == "pending" else 200), answer

    def _msgid(self, party: str) -> str:
        return self.platform.next_msgid(party)

    # -- platform reads and the rules -----------------------------------------------------------

    async def _person_info(self, request: SettleRequest) -> PersonInfo:
        """1101 for the visit's year; PersonInfoInvalid when the answer is unusable. A
        MSGID_REUSED (another process picked the same msgid) is retried under a new one."""
        for _ in range(3):
            try:
                output = await self.platform.person_info(
                    request.insuplc_admdvs, request.mdtrt_cert_type, request.mdtrt_cert_no,
                    year=request.visit_date.year, msgid=self._msgid(request.fixmedins_code),
                    mdtrtarea_admvs=self._hospital_area(request), fixmedins_code=request.fixmedins_code)
                return PersonInfo.from_json(output)
            except Refused as exc:
                if exc.err_code != "MSGID_REUSED":
                    raise
        raise OutcomeUnknown("1101: msgid clashes")

    def _hospital_area(self, request: SettleRequest) -> str:
        return self.reference.hospital(request.fixmedins_code).admdvs

    def _compute(self, request: SettleRequest, person: PersonInfo):
        """Split, Refusal, or (returned, not raised) the RequestInvalid of a 422 or the
        PersonInfoInvalid of an unusable 1101 answer (totals of another year)."""
        try:
            return compute_split(request, person, self.reference)
        except (RequestInvalid, PersonInfoInvalid) as exc:
            return exc

    @staticmethod
    def _request(row: Mapping[str, Any]) -> SettleRequest:
        return SettleRequest.from_json(orjson.loads(row["body"]))

    # -- the driver -----------------------------------------------------------------------------

    async def _drive(self, setl_id: str, claimed: dict | None = None) -> dict | None:
        """Drive one settlement until it is final or another runner takes it; returns the last
        row it wrote (final), None when it stopped otherwise."""
        row = None
        try:
            fresh = False
            row = claimed if claimed is not None else await self.store.aclaim(setl_id, self.runner)
            while row is not None and row["state"] not in FINAL:
                delay = row["next_at"] - time.time()
                if delay > 0:
                    await asyncio.sleep(min(delay, self.options.runner_lease / 3))
                    row = await self.store.aclaim(setl_id, self.runner)
                    continue
                if row["run_until"] - time.time() < self.options.runner_lease / 2:
                    row = await self.store.aclaim(setl_id, self.runner)
                    continue
                step = {"received": self._step_received, "sending": self._step_sending,
                        "reversing": self._step_reversing, "voiding": self._step_voiding}[row["state"]]
                row, fresh = await step(row, fresh)
            return row
        except RunnerLost:
            log.info("settlement %s: taken over by another runner", setl_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("settlement %s: driver failed; the sweep resumes it", setl_id)
        return None

    async def _write(self, row: dict, values: dict, **kw: Any) -> dict:
        if "state" in values:
            check_transition(row["setl_id"], row["state"], values["state"])
        return await self.store.awrite(row, values, **kw)

    async def _finish(self, row: dict, state: str, **values: Any) -> tuple[dict, bool]:
        values = {"state": state, "finished_at": utcnow(), "next_at": 0.0, **values}
        for name in ("split", "refusal"):
            if isinstance(values.get(name), dict):
                values[name] = orjson.dumps(values[name]).decode()
        row = await self._write(row, values, release_person=True)
        log.info("settlement %s: %s", row["setl_id"], state)
        return row, False

    async def _retry(self, row: dict, exc: BaseException, **values: Any) -> tuple[dict, bool]:
        """Try again later (backoff, or the platform's Retry-After); frees the person."""
        attempts = row["attempts"] + 1
        delay = min(self.options.retry_max, self.options.retry_min * 2 ** min(attempts, 10))
        delay = max(delay, min(getattr(exc, "retry_after", None) or 0.0, 60.0)) * random.uniform(0.8, 1.2)
        log.warning("settlement %s (%s): %s, again in %.1fs", row["setl_id"], row["state"], type(exc).__name__, delay)
        row = await self._write(row, {"attempts": attempts, "next_at": time.time() + delay,
                                      "last_error": scrub(str(exc))[:200], **values}, release_person=True)
        return row, False

    @asynccontextmanager
    async def _person(self, row: Mapping[str, Any], psn_no: str):
        """Hold the person in this process; yields ``(waited, key)``: whether it had to wait
        for someone here (the totals may have moved), and the key of the database lease, which
        the caller takes: ``_wait_for_person``, or in its first write (``Store.awrite(
        take_person=...)``). On an exception the lease is freed."""
        key = f"{row['insuplc']}:{psn_no}"
        lock = self.person_locks.setdefault(key, asyncio.Lock())
        waited = lock.locked()
        async with lock:
            try:
                yield waited, key
            except BaseException:
                await asyncio.shield(self.store.arelease_person(row["setl_id"]))
                raise
            finally:
                if not lock._waiters:  # noqa: SLF001 - forget idle persons
                    self.person_locks.pop(key, None)

    async def _wait_for_person(self, row: Mapping[str, Any], key: str) -> bool:
        """Take the person's database lease, waiting while another holds it; whether it waited."""
        waited = False
        while not await self.store.atake_person(key, row["setl_id"], self.options.person_lease):
            waited = True
            await asyncio.sleep(0.05)
        return waited

    # -- step: received -------------------------------------------------------------------------

    async def _step_received(self, row: dict, fresh: bool) -> tuple[dict, bool]:
        """1101, compute, then (holding the person) record the 2207 and send it."""
        if time.time() > row["deadline"]:
            return await self._finish(row, "refused", refusal=UNAVAILABLE)
        request = self._request(row)
        outcome = await self._read_and_compute(row, request)
        if not isinstance(outcome, Computed):
            return outcome
        # The lease is taken in the same transaction that records the 2207 (one commit less on
        # the path every bill takes); when another process holds the person, wait, then compute
        # again on the totals it left.
        async with self._person(row, outcome.person.psn_no) as (waited, key):
            while True:
                if waited:  # someone settled this person meanwhile: their totals moved
                    outcome = await self._read_and_compute(row, request)
                    if not isinstance(outcome, Computed):
                        return outcome
                recorded = await self._new_message(row, outcome.person, outcome.split,
                                                   take_person=(key, self.options.person_lease))
                if recorded is not None:
                    return await self._send_loop(recorded, fresh=True)
                await self._wait_for_person(row, key)
                waited = True

    async def _read_and_compute(self, row: dict, request: SettleRequest) -> Computed | tuple[dict, bool]:
        """Computed, or the (row, fresh) of a settlement made final or put off."""
        try:
            person = await self._person_info(request)
        except Refused as exc:
            return await self._finish(row, "refused", refusal={"code": exc.err_code, "message": exc.err_msg})
        except (PlatformError, PersonInfoInvalid) as exc:
            return await self._retry(row, exc)
        outcome = self._compute(request, person)
        if isinstance(outcome, PersonInfoInvalid):
            return await self._retry(row, outcome)
        if isinstance(outcome, RequestInvalid):
            return await self._finish(row, "invalid", refusal={"code": outcome.code, "message": str(outcome)},
                                      error_code=outcome.code)
        if isinstance(outcome, Refusal):
            return await self._finish(row, "refused", refusal=outcome.as_json())
        return Computed(person, outcome)

    async def _new_message(self, row: dict, person: PersonInfo, split, conflicts: int | None = None,
                           take_person: tuple[str, float] | None = None) -> dict | None:
        """Record the next 2207 (a new msgid, the split and totals version it carries); the
        ``setl_time`` is fixed by the first one. With ``take_person`` (key, ttl) the person
        lease is taken in the same transaction: None, and nothing written, when another holds it."""
        coverage = select_coverage(person, row["insutype"])
        setl_time = row["setl_time"] or fmt_time(datetime.now(CST))
        values = {"state": "sending", "psn_no": person.psn_no, "insuplc_admdvs": coverage.insuplc_admdvs,
                  "split": orjson.dumps(split.as_json()).decode(), "accum_year": person.accum.year,
                  "accum_version": person.accum.version, "setl_time": setl_time, "setl_date": setl_time[:10],
                  "conflicts": row["conflicts"] if conflicts is None else conflicts}
        return await self._renew_msgid(row, values, take_person)

    async def _renew_msgid(self, row: dict, values: dict | None = None,
                           take_person: tuple[str, float] | None = None) -> dict | None:
        """A msgid no message ever had (settlement_msgid is unique), recorded with ``values``
        (None when ``take_person`` could not be had, see ``Store._op_write``)."""
        for _ in range(20):
            msgid = self._msgid(row["fixmedins_code"])
            used = orjson.loads(row["msgids"]) + [msgid]
            try:
                return await self._write(row, {**(values or {}), "msgid": msgid, "msgids": orjson.dumps(used).decode()},
                                         msgid=msgid, take_person=take_person)
            except IntegrityError:
                continue
        raise SettlementError("no free msgid")

    # -- step: sending --------------------------------------------------------------------------

    async def _step_sending(self, row: dict, fresh: bool) -> tuple[dict, bool]:
        """Resend (SH/JS/ZJ: same msgid; AH: 5205 first), or past the deadline, reverse."""
        if time.time() > row["deadline"]:
            return await self._write(row, {"state": "reversing", "attempts": 0, "next_at": 0.0},
                                     release_person=True), False
        async with self._person(row, row["psn_no"]) as (_, key):
            await self._wait_for_person(row, key)
            return await self._send_loop(row, fresh)

    async def _send_loop(self, row: dict, fresh: bool) -> tuple[dict, bool]:
        """Send the current 2207 until its outcome is known or must wait (holding the person).

        ``fresh``: the current msgid was certainly never sent before; otherwise on AH the
        outcome of the earlier sending is asked (5205) before anything is sent again.
        """
        for _ in range(self.options.max_conflicts + 5):
            if not fresh and row["insuplc"] == "AH":
                try:
                    known = await self._ask_outcome(row)
                except PlatformError as exc:
                    return await self._retry(row, exc)
                if known is None:  # never processed (or reversed): a new message
                    row, fresh = await self._renew_msgid(row), True
                    continue
                answer = known
            else:
                answer = await self._send_2207(row)
            if isinstance(answer, dict):
                return await self._settled(row, answer)
            if isinstance(answer, OutcomeUnknown) and row["insuplc"] == "AH":
                fresh = False
                continue
            if isinstance(answer, PlatformError) and not isinstance(answer, Refused):
                return await self._retry(row, answer)
            result = await self._on_refusal(row, answer)
            if isinstance(result, tuple):
                return result
            row, fresh = result, True
        return await self._retry(row, SettlementError("too many recomputations in a row"), conflicts=0)

    async def _send_2207(self, row: dict) -> dict | PlatformError:
        split = orjson.loads(row["split"])
        try:
            return await self.platform.settle(
                row["insuplc_admdvs"], msgid=row["msgid"], mdtrtarea_admvs=row["mdtrtarea_admvs"],
                fixmedins_code=row["fixmedins_code"], psn_no=row["psn_no"], insutype=row["insutype"],
                mdtrt_id=row["mdtrt_id"], setl_id=row["setl_id"],
                setl_time=datetime.fromisoformat(row["setl_time"]).replace(tzinfo=CST),  # the hub's own "YYYY-MM-DD HH:MM:SS"
                accum_year=row["accum_year"], accum_version=row["accum_version"], split=split)
        except PlatformError as exc:
            return exc

    async def _ask_outcome(self, row: dict) -> dict | Refused | None:
        """5205 on the current msgid: its output, its refusal, or None (not processed, or
        reversed). Raises PlatformError when 5205 itself gets no answer."""
        out = await self.platform.query_outcome(row["insuplc_admdvs"], row["msgid"],
                                                msgid=self._msgid(row["fixmedins_code"]),
                                                mdtrtarea_admvs=row["mdtrtarea_admvs"],
                                                fixmedins_code=row["fixmedins_code"])
        if not out.get("found") or out.get("status") == "reversed":
            return None
        try:
            return interpret(out.get("response"), province=row["insuplc_admdvs"], infno="2207", msgid=row["msgid"])
        except Refused as exc:
            return exc

    async def _on_refusal(self, row: dict, exc: Refused) -> dict | tuple[dict, bool]:
        """A 2207 refusal: committed already, recompute and a new message (the new row), or final."""
        if exc.err_code == "DUPLICATE_SETL_ID":
            return await self._settled(row, exc.output, duplicate=True)
        if exc.err_code not in RECOMPUTE:
            return await self._finish(row, "refused", refusal={"code": exc.err_code, "message": exc.err_msg})
        outcome = await self._read_and_compute(row, self._request(row))
        if not isinstance(outcome, Computed):
            return outcome
        log.info("settlement %s: %s, recomputed on totals version %s", row["setl_id"], exc.err_code,
                 outcome.person.accum.version)
        return await self._new_message(row, outcome.person, outcome.split, conflicts=row["conflicts"] + 1)

    async def _settled(self, row: dict, output: Mapping[str, Any], duplicate: bool = False) -> tuple[dict, bool]:
        """Committed: the 2207 output, or a DUPLICATE_SETL_ID's committed settlement (whose
        amounts are taken when they differ: the platform committed an earlier computation)."""
        values: dict[str, Any] = {"insurer_setl_id": output.get("insurer_setl_id")}
        # The contract names no list of the amounts a DUPLICATE_SETL_ID carries: compare those it
        # does carry. Where they differ the platform committed an earlier computation, and the
        # committed amounts are the truth; amounts it does not carry cannot be checked.
        mine = orjson.loads(row["split"])
        theirs = {name: money_text(output[name]) for name in SPLIT_FIELDS if duplicate and name in output}
        if any(theirs[name] != mine[name] for name in theirs):
            log.warning("settlement %s: committed amounts differ from the last computation; taking "
                        "the platform's", row["setl_id"])
            if len(theirs) < len(SPLIT_FIELDS):
                values["last_error"] = f"committed amounts differ; the platform named only {sorted(theirs)}"
            values["split"] = orjson.dumps({**mine, **theirs}).decode()
        state = "voided" if duplicate and output.get("status") == "voided" else "settled"
        return await self._finish(row, state, **values)

    # -- step: reversing ------------------------------------------------------------------------

    async def _step_reversing(self, row: dict, fresh: bool) -> tuple[dict, bool]:
        """2601 every msgid this settlement's 2207 ever had: then none of them is or can become
        committed (reversed, or dead if it arrives late). Retried until every one is answered."""
        for omsgid in orjson.loads(row["msgids"]):
            try:
                await self.platform.reverse(row["insuplc_admdvs"], msgid=self._msgid(row["fixmedins_code"]),
                                            psn_no=row["psn_no"], omsgid=omsgid, oinfno="2207",
                                            mdtrtarea_admvs=row["mdtrtarea_admvs"],
                                            fixmedins_code=row["fixmedins_code"])
            except Refused as exc:
                log.warning("settlement %s: 2601 refused %s", row["setl_id"], exc.err_code)
            except PlatformError as exc:
                return await self._retry(row, exc)
        return await self._finish(row, "reversed", refusal=UNAVAILABLE)

    # -- step: voiding --------------------------------------------------------------------------

    async def _step_voiding(self, row: dict, fresh: bool) -> tuple[dict, bool]:
        """2208 (safe to repeat); SETL_NOT_FOUND leaves it settled with the error noted."""
        try:
            await self.platform.void(row["insuplc_admdvs"], msgid=row["void_msgid"], psn_no=row["psn_no"],
                                     setl_id=row["setl_id"], insurer_setl_id=row["insurer_setl_id"],
                                     mdtrtarea_admvs=row["mdtrtarea_admvs"], fixmedins_code=row["fixmedins_code"])
        except Refused as exc:
            return await self._finish(row, "settled", last_error=f"void refused: {exc.err_code}")
        except PlatformError as exc:
            return await self._retry(row, exc)
        return await self._finish(row, "voided", voided_at=utcnow())
