"""Notifications of FHIR Subscriptions: the outbox and its delivery (hub-interface.md,
"Hospitals: notifications").

- **Decision** (``on_stored``), in the transaction that stores the resources (``hub.store``
  calls it from the batch's flush, so batched ingest carries it along): for each active
  Subscription of a patient the batch touched, the resources of its type stored or replaced by
  *another* hospital that the subscriber may see under the gate's own rule
  (``hub.access.decide`` and ``Decision.shows``: treating relationship, withdrawn sharing,
  sensitive categories) make one outbox row. One call (one upload, or one batch of them) gives
  a Subscription at most one notification. Nothing else happens in the store's transaction: no
  network, no update of a Subscription (a lapsed one is only skipped here and turned ``off``
  by the deliverer).
- **Delivery** (``Deliverer``, one asyncio task in the hub's lifespan): claims due rows with a
  lease (``claimed_until``; ``FOR UPDATE SKIP LOCKED`` on PostgreSQL), checks each against the
  rules again (a rule may have changed since: what is withheld now is dropped, a lapsed
  Subscription goes ``off``), then ``POST``s an empty body with ``X-Yrdhub-Event`` and the
  Subscription's ``channel.header``: no redirects followed, a total time limit per call, at most
  ``hook_concurrency`` calls in flight per endpoint and claims only up to that, so a slow or dead
  endpoint holds only its own slots. A failure (no connection, time-out, an answer other than
  2xx) is retried after a growing, jittered pause computed by ``tenacity`` into
  ``next_attempt_at`` (so retries survive restarts), until ``hook_give_up`` seconds (24 h) after
  the notification was written; then its Subscription is ``error`` with the reason and its
  pending notifications are dropped. A delivered row is deleted by the next claim's transaction
  (one write transaction per round, not per call). A process killed mid-send, or before that
  delete, leaves its rows claimed until the lease ends; the next claim sends them again, with
  the same event id (at least once).
- **Waking**: a transaction that wrote notifications wakes the deliverer of this process when
  its connection returns to the pool (after the commit), which waits ``COALESCE`` for uploads
  arriving together; otherwise it polls every ``hook_poll`` seconds (other processes' rows,
  retries coming due).
- Headers are sent as given and never logged; log lines name the Subscription, the event and the
  endpoint's host.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import httpx
import orjson
import structlog
import tenacity
from sqlalchemy import bindparam, delete, event, func, insert, not_, or_, select, update
from sqlalchemy.engine import Connection, Engine

from hub import access, metrics
from hub.auth import Party
from hub.db import is_sqlite, writer
from hub.models import Notification, Resource, Subscription
from hub.search import CLINICAL_TYPES

log = structlog.get_logger("hub.notify")
N = Notification.__table__
S = Subscription.__table__
R = Resource.__table__
SUBSCRIBABLE = frozenset(CLINICAL_TYPES)
EVENT_HEADER = "X-Yrdhub-Event"
# Seconds a woken deliverer waits before it claims (a claim is a write transaction; under load
# one claim per upload cost more than the calls), and between counts of the pending gauge.
COALESCE = 0.02
COUNT_EVERY = 1.0
# Set on a connection whose transaction wrote outbox rows; its return to the pool wakes the
# deliverers of this process (``_wake_on_checkin``).
_WROTE = "yrdhub_notifications_written"


# ---------------------------------------------------------------------------------------------
# The decision, in the store's transaction
# ---------------------------------------------------------------------------------------------


def on_stored(conn: Connection, written: list[dict], now: datetime) -> int:
    """Write the notifications owed for the resource versions ``written`` (the store's insert
    and update values; retirements, which carry no ``res_type``, are not news). Returns how many
    rows were written. Costs one indexed query when no Subscription concerns the patients."""
    about = [w for w in written if w.get("res_type") in SUBSCRIBABLE and w.get("patient_id")
             and not w.get("deleted")]
    if not about:
        return 0
    subscriptions = _active_for(conn, {w["patient_id"] for w in about}, now)
    decisions: dict[tuple[str, str], access.Decision] = {}
    rows = []
    for sub in subscriptions:
        shown = _news_for(conn, sub, about, decisions, now)
        if shown:
            rows.append(_outbox_row(sub, shown, now))
    if rows:
        conn.execute(insert(N), rows)
        conn.info[_WROTE] = True
    return len(rows)


# Built once: every upload asks it, and building a statement cost more than running it
# (the same lesson as ``access._FACTS``).
_ACTIVE = (select(S.c.id, S.c.hospital, S.c.patient_id, S.c.res_type, S.c.endpoint)
           .where(S.c.patient_id.in_(bindparam("patients", expanding=True)),
                  S.c.status == "active",
                  or_(S.c.ends_at.is_(None), S.c.ends_at > bindparam("now"))))


def _active_for(conn: Connection, patients: set[str], now: datetime) -> list:
    ordered, found = sorted(patients), []
    for i in range(0, len(ordered), 800):  # bound parameters per statement, as the store does
        found += conn.execute(_ACTIVE, {"patients": ordered[i:i + 800], "now": now}).all()
    return found


def _news_for(conn: Connection, sub, about: list[dict], decisions: dict, now: datetime) -> list:
    """What of ``about`` ``sub``'s hospital is to be told of: its type and patient, sent by
    another hospital, and shown to the subscriber by the gate now (none when it is no longer
    treating the patient)."""
    mine = [w for w in about if w["patient_id"] == sub.patient_id
            and w["res_type"] == sub.res_type and w["hospital"] != sub.hospital]
    if not mine:
        return []
    decision = _decision(conn, decisions, sub.hospital, sub.patient_id, now)
    if not decision.allowed:
        return []
    return [w for w in mine if decision.shows(SimpleNamespace(
        province=w["province"], patient_id=w["patient_id"], sensitive=w["sensitive"]))]


def _decision(conn: Connection, cache: dict, hospital: str, patient_id: str,
              now: datetime) -> access.Decision:
    """The gate's decision for a hospital reading the patient without an emergency reason."""
    key = (hospital, patient_id)
    if key not in cache:
        cache[key] = access.decide(conn, access.Caller(Party("hospital", hospital)),
                                   patient_id, now)
    return cache[key]


def _outbox_row(sub, shown: list[dict], now: datetime) -> dict:
    refs = sorted({f"{w['res_type']}/{w['res_id']}" for w in shown})
    return {"event_id": uuid.uuid4().hex, "subscription_id": sub.id, "endpoint": sub.endpoint,
            "resources": " ".join(refs), "created": now, "next_attempt_at": now,
            "claimed_until": None, "attempts": 0, "last_error": None}


# ---------------------------------------------------------------------------------------------
# Ending subscriptions (lapsed, failed, deleted)
# ---------------------------------------------------------------------------------------------


def end(conn: Connection, subscription_ids: list[str], status: str,
        error: str | None = None) -> None:
    """Set active ``subscription_ids`` to ``status`` (``off`` or ``error`` with its reason) and
    drop their pending notifications."""
    if not subscription_ids:
        return
    conn.execute(update(S).where(S.c.id.in_(subscription_ids), S.c.status == "active")
                 .values(status=status, error=error))
    conn.execute(delete(N).where(N.c.subscription_id.in_(subscription_ids)))


def sweep_lapsed(conn: Connection, now: datetime, hospital: str | None = None,
                 subscription_id: str | None = None) -> int:
    """Turn ``off`` the active Subscriptions (of ``hospital``, or the one ``subscription_id``)
    whose hospital no longer treats the patient (``access.treating_exists``, the gate's rule) or
    whose ``end`` has passed. One statement finds them; returns how many ended."""
    lapsed = select(S.c.id).where(S.c.status == "active", or_(
        not_(access.treating_exists(S.c.hospital, S.c.patient_id, now)), S.c.ends_at <= now))
    if hospital is not None:
        lapsed = lapsed.where(S.c.hospital == hospital)
    if subscription_id is not None:
        lapsed = lapsed.where(S.c.id == subscription_id)
    ids = list(conn.execute(lapsed).scalars())
    end(conn, ids, "off")
    return len(ids)


# ---------------------------------------------------------------------------------------------
# Claiming: due rows, checked again against the rules
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claimed:
    id: int
    event_id: str
    subscription_id: str
    endpoint: str
    headers: tuple[tuple[str, str], ...]
    created: datetime
    attempts: int


def _ids(name: str = "ids"):
    return bindparam(name, expanding=True)


# The deliverer's statements, built once (see ``_ACTIVE``): a claim runs several per round.
_DUE = (N.c.next_attempt_at <= bindparam("now"),
        or_(N.c.claimed_until.is_(None), N.c.claimed_until < bindparam("now")))
_DUE_ENDPOINTS = select(N.c.endpoint).where(*_DUE).distinct()
_LOCK_DUE = (select(N.c.id, N.c.event_id, N.c.subscription_id, N.c.endpoint, N.c.resources,
                    N.c.created, N.c.attempts)
             .where(*_DUE, N.c.endpoint == bindparam("endpoint"))
             .order_by(N.c.next_attempt_at, N.c.id).limit(bindparam("slots")))
_LOCK_DUE_SKIP = _LOCK_DUE.with_for_update(skip_locked=True)
_DELETE = delete(N).where(N.c.id.in_(_ids()))
_CLAIM = update(N).where(N.c.id.in_(_ids())).values(claimed_until=bindparam("until"))
_PENDING = select(func.count()).select_from(N)
_SUBSCRIPTIONS = select(S).where(S.c.id.in_(_ids()))
# a superset of the wanted (type, id) pairs, on the primary key; the caller picks them out
_CURRENT = select(R.c.res_type, R.c.res_id, R.c.province, R.c.patient_id, R.c.sensitive,
                  R.c.deleted).where(R.c.res_type.in_(_ids("types")), R.c.res_id.in_(_ids()))


def claim(engine: Engine, free: dict[str, int], default_free: int, owners: dict[str, str],
          now: datetime, lease: float, delivered: list[int] = (),
          count: bool = True) -> tuple[list[Claimed], int | None]:
    """Delete the ``delivered`` notifications, then claim due ones, at most
    ``free.get(endpoint, default_free)`` per endpoint, for ``lease`` seconds, dropping those the
    rules hold back now. Returns the claimed and, if ``count``, how many are pending in all
    (for the gauge).
    One write transaction for all of it: on SQLite every transaction queues for the one write
    lock that ingest needs too."""
    with writer(engine).begin() as conn:
        if delivered:
            conn.execute(_DELETE, {"ids": list(delivered)})
        endpoints = list(conn.execute(_DUE_ENDPOINTS, {"now": now}).scalars())
        rows = []
        for endpoint in endpoints:
            slots = free.get(endpoint, default_free)
            if slots > 0:
                rows += _lock_due(conn, endpoint, slots, now)
        claimed = _sendable(conn, rows, owners, now)
        if claimed:
            conn.execute(_CLAIM, {"ids": [c.id for c in claimed],
                                  "until": now + timedelta(seconds=lease)})
        pending = conn.execute(_PENDING).scalar_one() if count else None
    return claimed, pending


def _lock_due(conn: Connection, endpoint: str, slots: int, now: datetime) -> list:
    # SQLite's write lock already keeps claims apart; PostgreSQL skips rows another has locked
    query = _LOCK_DUE if is_sqlite(conn.engine) else _LOCK_DUE_SKIP
    return conn.execute(query, {"endpoint": endpoint, "slots": slots, "now": now}).all()


def _sendable(conn: Connection, rows: list, owners: dict[str, str],
              now: datetime) -> list[Claimed]:
    """``rows`` that may still be sent; the others are deleted (their Subscription ended, or
    what they are about is withheld now) and their Subscriptions ended where that is why."""
    if not rows:
        return []
    subs = {s.id: s for s in conn.execute(
        _SUBSCRIPTIONS, {"ids": sorted({r.subscription_id for r in rows})}).all()}
    current = _current(conn, {ref for r in rows for ref in r.resources.split()})
    decisions: dict = {}
    verdicts = {r.id: _verdict(conn, r, subs.get(r.subscription_id), owners, decisions,
                               current, now) for r in rows}
    end(conn, sorted({r.subscription_id for r in rows if verdicts[r.id] == "off"}), "off")
    end(conn, sorted({r.subscription_id for r in rows if verdicts[r.id] == "unregistered"}),
        "error", "the endpoint is no longer registered for the hospital (YRDHUB_HOOK_ENDPOINTS)")
    dropped = [r.id for r in rows if verdicts[r.id] != "send"]
    if dropped:
        conn.execute(delete(N).where(N.c.id.in_(dropped)))
    return [Claimed(r.id, r.event_id, r.subscription_id, r.endpoint,
                    headers_of(subs[r.subscription_id].content), r.created, r.attempts)
            for r in rows if verdicts[r.id] == "send"]


def _verdict(conn: Connection, row, sub, owners: dict, decisions: dict, current: dict,
             now: datetime) -> str:
    """``send``, ``drop`` (ended, or withheld now), ``off`` (treating lapsed, or past ``end``)
    or ``unregistered`` (the operator took the endpoint away)."""
    if sub is None or sub.status != "active":
        return "drop"
    if owners.get(sub.endpoint) != sub.hospital:
        return "unregistered"
    decision = _decision(conn, decisions, sub.hospital, sub.patient_id, now)
    if not decision.allowed or (sub.ends_at is not None and as_utc(sub.ends_at) <= now):
        return "off"
    shown = (current.get(ref) for ref in row.resources.split())
    return "send" if any(r is not None and not r.deleted and r.patient_id == sub.patient_id
                         and decision.shows(r) for r in shown) else "drop"


def _current(conn: Connection, refs: set[str]) -> dict:
    """``Type/id`` -> the current version's facts the rules look at, in one query."""
    pairs = [ref.partition("/")[::2] for ref in refs]
    rows = conn.execute(_CURRENT, {"types": sorted({t for t, _ in pairs}),
                                   "ids": sorted({i for _, i in pairs})}).all()
    return {f"{r.res_type}/{r.res_id}": r for r in rows if f"{r.res_type}/{r.res_id}" in refs}


def headers_of(content: bytes) -> tuple[tuple[str, str], ...]:
    """``channel.header`` of a stored Subscription as (name, value) pairs, as given."""
    headers = orjson.loads(content).get("channel", {}).get("header", [])
    return tuple(_split_header(h) for h in headers)


def _split_header(header: str) -> tuple[str, str]:
    name, _, value = header.partition(":")
    return name.strip(), value.strip()


def as_utc(when: datetime) -> datetime:
    """A stored time as an aware UTC datetime (SQLite gives them back naive)."""
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


# ---------------------------------------------------------------------------------------------
# After a call: delivered, or retried later, or given up
# ---------------------------------------------------------------------------------------------


def pause(initial: float, maximum: float, attempt: int) -> float:
    """Seconds before attempt ``attempt + 1``: half a growing pause, half random ("equal
    jitter"), both from ``tenacity``'s wait strategies, so many notifications failing together
    do not all come back together."""
    half_initial, half_max = initial / 2, maximum / 2
    wait = (tenacity.wait_exponential(multiplier=half_initial, max=half_max)
            + tenacity.wait_random_exponential(multiplier=half_initial, max=half_max))
    state = tenacity.RetryCallState(None, None, (), {})
    state.attempt_number = attempt
    return wait(state)


def failed(engine: Engine, item: Claimed, reason: str, now: datetime, settings) -> str:
    """Record a failed attempt: ``retry`` (the next one at a jittered, growing pause, never
    after the give-up time) or ``gave_up`` (the Subscription is ``error`` with the reason)."""
    give_up_at = as_utc(item.created) + timedelta(seconds=settings.hook_give_up)
    with writer(engine).begin() as conn:
        if now >= give_up_at:
            hours = settings.hook_give_up / 3600
            end(conn, [item.subscription_id], "error",
                f"notifications to {item.endpoint} failed for {hours:g} hours; last: {reason}")
            metrics.NOTIFICATIONS_FAILED.inc()
            return "gave_up"
        wait = pause(settings.hook_retry_initial, settings.hook_retry_max, item.attempts + 1)
        later = min(now + timedelta(seconds=wait), give_up_at)
        conn.execute(update(N).where(N.c.id == item.id).values(
            attempts=item.attempts + 1, next_attempt_at=later, claimed_until=None,
            last_error=reason))
    metrics.NOTIFICATIONS_RETRIED.inc()
    return "retry"


# ---------------------------------------------------------------------------------------------
# The deliverer: one task per hub process
# ---------------------------------------------------------------------------------------------


class Deliverer:
    """Claims and sends notifications until stopped (see the module's docstring)."""

    def __init__(self, engine: Engine, settings):
        self.engine, self.settings = engine, settings
        self.owners = settings.hook_endpoint_map()
        self.inflight: Counter[str] = Counter()
        self.wake = asyncio.Event()
        self.sends: set[asyncio.Task] = set()
        self.client = httpx.AsyncClient(follow_redirects=False, timeout=settings.hook_timeout,
                                        trust_env=False)
        # a claim outlives the call it covers, and the write after it
        self.lease = 2 * settings.hook_timeout + 2
        self.next_sweep = self.next_count = 0.0
        # delivered, to be deleted by the next claim's transaction (a crash before then sends
        # them again: at least once)
        self.delivered: list[int] = []
        self.saturated: set[str] = set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self.tick(loop.time())
            except Exception as exc:  # a database hiccup must not end delivery for good
                log.error("notification round failed", error=type(exc).__name__,
                          message=str(exc)[:300])
            try:
                await asyncio.wait_for(self.wake.wait(), self.settings.hook_poll)
                # woken by a commit or a finished call: let the uploads arriving together
                # commit too, and claim their notifications in one transaction
                await asyncio.sleep(COALESCE)
            except TimeoutError:
                pass
            self.wake.clear()

    async def tick(self, clock: float) -> None:
        now = datetime.now(timezone.utc)
        if clock >= self.next_sweep:
            self.next_sweep = clock + self.settings.hook_sweep
            await asyncio.to_thread(self._sweep, now)
        free = {e: self.settings.hook_concurrency - n for e, n in self.inflight.items()}
        done, self.delivered = self.delivered, []
        count = clock >= self.next_count
        try:
            claimed, pending = await asyncio.to_thread(
                claim, self.engine, free, self.settings.hook_concurrency, self.owners, now,
                self.lease, done, count)
        except BaseException:
            self.delivered[:0] = done  # not deleted: the next round tries again
            raise
        if pending is not None:
            self.next_count = clock + COUNT_EVERY
            metrics.NOTIFICATIONS_PENDING.set(pending)
        for item in claimed:
            self.inflight[item.endpoint] += 1
            task = asyncio.create_task(self.deliver(item))
            self.sends.add(task)
            task.add_done_callback(self.sends.discard)
        # endpoints with every slot taken may have more due: a freed slot wakes the loop for
        # them; for the others a round per finished call would only cost a transaction
        self.saturated = {e for e, n in self.inflight.items()
                          if n >= self.settings.hook_concurrency}

    def _sweep(self, now: datetime) -> None:
        with writer(self.engine).begin() as conn:
            sweep_lapsed(conn, now)

    async def deliver(self, item: Claimed) -> None:
        try:
            reason = await self.call(item)
            if reason is None:
                self.delivered.append(item.id)
                metrics.NOTIFICATIONS_SENT.inc()
            else:
                outcome = await asyncio.to_thread(failed, self.engine, item, reason,
                                                  datetime.now(timezone.utc), self.settings)
                log.warning("notification not delivered", subscription=item.subscription_id,
                            event_id=item.event_id, host=httpx.URL(item.endpoint).host,
                            attempt=item.attempts + 1, reason=reason, outcome=outcome)
        except Exception as exc:  # the claim's lease runs out and the next round retries it
            log.error("notification outcome not recorded", event_id=item.event_id,
                      error=type(exc).__name__, message=str(exc)[:300])
        finally:
            self.inflight[item.endpoint] -= 1
            if self.inflight[item.endpoint] <= 0:
                del self.inflight[item.endpoint]
            if item.endpoint in self.saturated:
                self.wake.set()  # a slot is free: what waits for this endpoint may go

    async def call(self, item: Claimed) -> str | None:
        """One POST; None when answered 2xx, else why not (no header values in it)."""
        headers = [*item.headers, (EVENT_HEADER, item.event_id)]
        try:
            async with asyncio.timeout(self.settings.hook_timeout):
                answer = await self.client.post(item.endpoint, content=b"", headers=headers)
        except TimeoutError:
            return f"no answer within {self.settings.hook_timeout:g} s"
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {str(exc)[:200] or 'no connection'}"
        if 200 <= answer.status_code < 300:
            return None
        return f"answered {answer.status_code}"

    async def aclose(self) -> None:
        for task in list(self.sends):
            task.cancel()
        await asyncio.gather(*self.sends, return_exceptions=True)
        await self.client.aclose()
        if self.delivered:  # else they would be sent again after the restart
            await asyncio.to_thread(self._forget, self.delivered)

    def _forget(self, ids: list[int]) -> None:
        with writer(self.engine).begin() as conn:
            conn.execute(delete(N).where(N.c.id.in_(ids)))


def _wake_on_checkin(deliverer: Deliverer, loop: asyncio.AbstractEventLoop):
    """Pool listeners: a connection whose committed transaction wrote notifications wakes the
    deliverer when it is returned (after its commit: a claim then sees the rows)."""

    def checkin(_dbapi_conn, record):
        if record is not None and record.info.pop(_WROTE, False):
            loop.call_soon_threadsafe(deliverer.wake.set)

    def rollback(conn):
        conn.info.pop(_WROTE, None)  # nothing was written after all

    return checkin, rollback


async def start(app):
    """Starter: the deliverer, when endpoints are registered (with none, nobody can subscribe
    and there is nothing to deliver)."""
    settings, engine = app.state.settings, app.state.engine
    if not settings.hook_endpoint_map():
        async def nothing():
            pass
        return nothing
    deliverer = Deliverer(engine, settings)
    checkin, rollback = _wake_on_checkin(deliverer, asyncio.get_running_loop())
    event.listen(engine.pool, "checkin", checkin)
    event.listen(engine, "rollback", rollback)
    task = asyncio.create_task(deliverer.run())
    app.state.deliverer = deliverer

    async def stop():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await deliverer.aclose()
        event.remove(engine.pool, "checkin", checkin)
        event.remove(engine, "rollback", rollback)
    return stop
