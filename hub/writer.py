"""The hub's one writer of ingested records: requests queue, a batch shares one transaction.

Every ingest path (``POST /ingest/*``, Shanghai's HL7 ``POST /ingest/sh`` and MLLP) maps its
body off the event loop and then hands the writer a *work* function, ``work(conn) -> answer``,
that archives and stores the mapped result. The writer takes everything queued, runs each work
in turn in ONE transaction on its own thread and connection, commits, and only then resolves
each request's future: an answer or an ACK is never sent before the commit that holds it.

Why: a commit (a WAL sync on SQLite, a round trip and a flush on PostgreSQL) and the write lock
cost far more than the rows of one message; requests that each committed queued on the lock.

Semantics, item by item as if processed one after another in queue order:

- each work runs in a SAVEPOINT; one that raises is rolled back to it and only its request
  fails (with that exception), its batch-mates still commit;
- a later item sees what an earlier one of the same batch wrote (the same record sent twice
  answers ``stored`` then ``unchanged``, as serial processing would);
- a work that meets a write conflict (``IntegrityError``/``OperationalError``: another process
  created the same patient on PostgreSQL) is rolled back to its savepoint and run again, which
  then sees what the other committed;
- if the transaction itself fails (the commit, the connection), every item of the batch is run
  again alone in its own transaction (``write_retrying``), so no request fails for another's
  sake; an item that still fails gets its error.

Requests of one kind share statements too. A request may hand over a ``Batchable`` instead of a
plain work: consecutive ones of the same ``kind`` (say, HL7 messages of one sender) are stored
by ONE call of their ``store`` (one archive insert, one ``put_records``: a handful of bulk
statements for all of them, where each statement costs far more than its rows), unless they
share a record key: a request carrying a record that an earlier one of the run carries starts a
new run, stored after it, so it answers ``unchanged`` as serial processing would. If the
shared call fails, its requests are run again one by one, each in its own savepoint.

A batch holds at most ``max_items`` requests, so the write lock is never held for long.

On SQLite the writer's commits do not checkpoint the WAL (``wal_autocheckpoint`` is 0 while the
writer holds the connection): a checkpoint copies pages into the database file and syncs it,
which on a busy disk took longer than the rest of a batch. A PASSIVE checkpoint runs instead on
a thread of its own, at most every ``CHECKPOINT_EVERY`` seconds after a commit, beside the next
batches (it takes no write lock). Durability is unchanged: a commit is in the WAL either way.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import structlog
from prometheus_client import Counter, Histogram
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError

from hub.db import is_sqlite, write_retrying, writer

log = structlog.get_logger("hub.writer")

Work = Callable[[Connection], Any]


@dataclass(frozen=True)
class Batchable:
    """A request's store work that may be done together with its neighbours' (module docstring).

    ``store(conn, payloads)`` stores the payloads of a run of requests of one ``kind`` and
    returns one answer per payload, in order; it must give each the answer it would get alone
    after the ones before it. ``keys`` are the record keys the request writes."""

    kind: Hashable
    keys: frozenset[str]
    payload: Any
    store: Callable[[Connection, list[Any]], list[Any]]

COMMITS = Counter("yrdhub_writer_commits_total", "Transactions committed by the ingest writer")
ITEMS = Histogram("yrdhub_writer_items_per_commit", "Requests stored per writer transaction",
                  buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
FAILED = Counter("yrdhub_writer_failed_items_total", "Requests whose store work failed")
CONFLICT_ATTEMPTS = 3
CHECKPOINT_EVERY = 0.25  # seconds
SQLITE_AUTOCHECKPOINT = 1000  # SQLite's default, restored before the connection is pooled again


class Writer:
    """The queue and its one thread; see the module docstring for the semantics.

    ``commits`` and ``items`` count what this writer committed (tests read them; ``/metrics``
    has the same as ``yrdhub_writer_*``). ``before_commit``, if set, is called on the writer's
    thread with the batch size after the works ran and before the commit (a test hook)."""

    def __init__(self, engine: Engine, max_items: int = 64):
        self.engine = engine
        self.max_items = max_items
        self.commits = 0
        self.items = 0
        self.before_commit: Callable[[int], None] | None = None
        self._queue: list[tuple[Work | Batchable, asyncio.Future]] = []
        self._task: asyncio.Task | None = None
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="writer")
        self._sqlite = is_sqlite(engine)
        self._checkpointer = concurrent.futures.ThreadPoolExecutor(1, "checkpoint")
        self._checkpoint: concurrent.futures.Future | None = None
        self._checkpointed_at = 0.0

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def run(self, work: Work | Batchable) -> Any:
        """``work(conn)``'s result (a Batchable's answer) once the transaction holding it
        committed, or its error."""
        return await self.submit(work)

    def submit(self, work: Work | Batchable) -> asyncio.Future:
        """Queue ``work`` now (on the event loop's thread); the future ``run`` awaits."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append((work, future))
        if self._task is None:
            self._task = loop.create_task(self._drain())
        return future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                batch = self._queue[:self.max_items]
                del self._queue[:self.max_items]
                try:
                    outcomes = await loop.run_in_executor(self._thread, self._write,
                                                          [w for w, _ in batch])
                except Exception as exc:  # noqa: BLE001 - nobody may wait for ever
                    outcomes = [(False, exc)] * len(batch)
                for (_, future), (ok, value) in zip(batch, outcomes):
                    if future.done():  # the request went away (client disconnected)
                        continue
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)
        finally:
            self._task = None

    def _write(self, works: list[Work | Batchable]) -> list[tuple[bool, Any]]:
        try:
            with writer(self.engine).connect() as conn:
                self._autocheckpoint(conn, 0)
                try:
                    with conn.begin():
                        outcomes = [o for run in _runs(works) for o in _store_run(conn, run)]
                        if self.before_commit is not None:
                            self.before_commit(len(works))
                finally:
                    self._autocheckpoint(conn, SQLITE_AUTOCHECKPOINT)
        except (IntegrityError, OperationalError) as exc:
            log.warning("writer transaction failed; its items run alone", items=len(works),
                        error=type(exc).__name__)
            return [_alone(self.engine, work) for work in works]
        self.commits += 1
        self.items += len(works)
        COMMITS.inc()
        ITEMS.observe(len(works))
        FAILED.inc(sum(1 for ok, _ in outcomes if not ok))
        self._maybe_checkpoint()
        return outcomes

    def _autocheckpoint(self, conn: Connection, pages: int) -> None:
        """Set the connection's automatic checkpoint (SQLite only), on the driver's connection:
        through SQLAlchemy the statement would begin a transaction."""
        if not self._sqlite:
            return
        try:
            conn.connection.driver_connection.execute(f"PRAGMA wal_autocheckpoint={pages}")
        except Exception as exc:  # noqa: BLE001 - never hide the batch's own outcome or error
            log.warning("wal_autocheckpoint not set", pages=pages, error=str(exc))

    def _maybe_checkpoint(self) -> None:
        if not self._sqlite or (self._checkpoint is not None and not self._checkpoint.done()):
            return
        if time.monotonic() - self._checkpointed_at < CHECKPOINT_EVERY:
            return
        self._checkpointed_at = time.monotonic()
        self._checkpoint = self._checkpointer.submit(checkpoint, self.engine)

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        self._checkpointer.shutdown(wait=True)


def checkpoint(engine: Engine) -> None:
    """A PASSIVE WAL checkpoint (copies what no reader still needs; waits for nobody)."""
    try:
        with engine.connect() as conn:
            conn.connection.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
    except Exception as exc:  # noqa: BLE001 - the next one, or any commit, catches up
        log.warning("wal checkpoint failed", error=str(exc))


def _runs(works: list[Work | Batchable]) -> list[list[Work | Batchable]]:
    """The batch cut into runs stored by one call each: consecutive Batchables of one kind
    whose record keys do not meet; a plain work is a run of its own."""
    runs: list[list] = []
    keys: set[str] = set()
    for work in works:
        last = runs[-1][-1] if runs else None
        if (isinstance(work, Batchable) and isinstance(last, Batchable)
                and work.kind == last.kind and keys.isdisjoint(work.keys)):
            runs[-1].append(work)
            keys |= work.keys
        else:
            runs.append([work])
            keys = set(work.keys) if isinstance(work, Batchable) else set()
    return runs


def _store_run(conn: Connection, run: list) -> list[tuple[bool, Any]]:
    """One savepoint for the run; if it fails and holds several, each again in its own."""
    outcome = _in_savepoint(conn, lambda c: _call(c, run))
    if outcome[0]:
        return [(True, answer) for answer in outcome[1]]
    if len(run) == 1:
        return [outcome]
    log.warning("a shared store failed; its requests run one by one", items=len(run),
                error=type(outcome[1]).__name__)
    return [_in_savepoint(conn, lambda c, w=work: _call(c, [w])[0]) for work in run]


def _call(conn: Connection, run: list) -> list[Any]:
    if isinstance(run[0], Batchable):
        answers = run[0].store(conn, [w.payload for w in run])
        if len(answers) != len(run):
            raise AssertionError(f"{len(answers)} answers for {len(run)} requests")
        return answers
    return [run[0](conn)]


def _in_savepoint(conn: Connection, work: Work) -> tuple[bool, Any]:
    for attempt in range(CONFLICT_ATTEMPTS):
        try:
            with conn.begin_nested():
                return True, work(conn)
        except (IntegrityError, OperationalError) as exc:
            if attempt == CONFLICT_ATTEMPTS - 1:
                return False, exc
        except Exception as exc:  # noqa: BLE001 - this request's failure, not the batch's
            return False, exc
    raise AssertionError("unreachable")


def _alone(engine: Engine, work: Work | Batchable) -> tuple[bool, Any]:
    try:
        return True, write_retrying(engine, lambda conn: _call(conn, [work])[0])
    except Exception as exc:  # noqa: BLE001 - handed to the request that owns it
        return False, exc


def of(app) -> Writer:
    """The app's writer (made on first use: the app's engine, one thread)."""
    if getattr(app.state, "writer", None) is None:
        app.state.writer = Writer(app.state.engine)
    return app.state.writer


async def start(app):
    """Starter: the writer; stopping waits for the batch in hand to commit."""
    w = of(app)

    async def stop():
        w.close()
    return stop
