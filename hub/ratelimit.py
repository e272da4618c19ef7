"""A ``limits`` storage in the hub's database, so that every hub process on it shares one count.

``limits`` (its strategies and rate-limit items) decides; ``DatabaseStorage`` only keeps the state,
one ``rate_limit`` row per key (``hub.models.RateLimit``). It serves the fixed window (``incr``,
``get``, ``get_expiry``) and the moving window (``acquire_entry``, ``get_moving_window``).

Every change of a key is one write transaction that holds that key's row: the row is created if
missing (an insert that does nothing on conflict), then read ``FOR UPDATE`` on PostgreSQL (on
SQLite the writer's ``BEGIN IMMEDIATE`` already holds the database), changed and written back. So
concurrent hits from any number of processes are counted exactly, and a moving window never
admits more than its amount. Time comes from ``clock`` (epoch seconds; injectable for tests):
processes that share a database must share a clock too (NTP), as they do any timestamp.
Database errors propagate (``limits``' ``wrap_exceptions`` turns them into ``StorageError``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
from limits.storage import MovingWindowSupport, Storage
from sqlalchemy import delete, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from hub.db import writer
from hub.models import RateLimit

_INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


@dataclass
class _Row:
    count: int = 0
    expires: float = 0.0
    moments: list[float] = field(default_factory=list)


class DatabaseStorage(Storage, MovingWindowSupport):
    """``limits`` storage over the ``rate_limit`` table of ``engine`` (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time, wrap_exceptions: bool = False):
        super().__init__(None, wrap_exceptions=wrap_exceptions)
        self.engine, self.clock = engine, clock

    @property
    def base_exceptions(self) -> type[Exception]:
        return SQLAlchemyError

    # -- fixed window ------------------------------------------------------------------------

    def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        """Add ``amount`` to the key's count; a key whose window is over starts a new one of
        ``expiry`` seconds from now. Returns the new count."""
        def bump(row: _Row, now: float) -> _Row:
            if row.expires <= now:
                return _Row(amount, now + expiry)
            return _Row(row.count + amount, row.expires, row.moments)
        return self._change(key, bump).count

    def get(self, key: str) -> int:
        row, now = self._read(key), self.clock()
        return row.count if row.expires > now else 0

    def get_expiry(self, key: str) -> float:
        row, now = self._read(key), self.clock()
        return row.expires if row.expires > now else now

    # -- moving window -----------------------------------------------------------------------

    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        """Record ``amount`` acquisitions now if the last ``expiry`` seconds hold at most
        ``limit - amount``; False (nothing recorded) otherwise."""
        if amount > limit:
            return False
        acquired = False

        def take(row: _Row, now: float) -> _Row | None:
            nonlocal acquired
            window = _within(row.moments, now, expiry)
            acquired = len(window) + amount <= limit
            return _Row(row.count, now + expiry, ([now] * amount + window)[:limit]) if acquired else None
        self._change(key, take)
        return acquired

    def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        """(the oldest acquisition of the last ``expiry`` seconds, how many there are); (now, 0)
        when there is none. An acquisition exactly ``expiry`` seconds old is out of the window."""
        now = self.clock()
        window = _within(self._read(key).moments, now, expiry)[:limit]
        return (window[-1], len(window)) if window else (now, 0)

    # -- housekeeping ------------------------------------------------------------------------

    def check(self) -> bool:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True

    def reset(self) -> int | None:
        with writer(self.engine).begin() as conn:
            return conn.execute(delete(RateLimit)).rowcount

    def clear(self, key: str) -> None:
        with writer(self.engine).begin() as conn:
            conn.execute(delete(RateLimit).where(RateLimit.key == key))

    def prune(self) -> int:
        """Delete the rows that no longer matter (``expires`` passed). Rows another transaction
        holds are skipped on PostgreSQL (``SKIP LOCKED``: it is changing them), so pruning never
        waits on, nor deadlocks with, a hit. Returns how many were deleted."""
        dead = (select(RateLimit.key).where(RateLimit.expires <= self.clock())
                .with_for_update(skip_locked=True))
        with writer(self.engine).begin() as conn:
            return conn.execute(delete(RateLimit).where(RateLimit.key.in_(dead))).rowcount

    # -- rows --------------------------------------------------------------------------------

    def _read(self, key: str) -> _Row:
        with self.engine.connect() as conn:
            found = conn.execute(select(RateLimit.count, RateLimit.expires, RateLimit.moments)
                                 .where(RateLimit.key == key)).first()
        return _as_row(found)

    def _change(self, key: str, change: Callable[[_Row, float], _Row | None]) -> _Row:
        """``change(row, now)`` applied to the key's row under its lock: the row to write, or None
        to leave it as it is. Returns the key's row after the change."""
        with writer(self.engine).begin() as conn:
            before = _locked(conn, key)
            after = change(before, self.clock())
            if after is None:
                return before
            conn.execute(update(RateLimit).where(RateLimit.key == key).values(
                count=after.count, expires=after.expires, moments=orjson.dumps(after.moments).decode()))
        return after


def _locked(conn: Connection, key: str) -> _Row:
    """The key's row, created empty if missing, locked until the transaction ends."""
    insert = _INSERTS[conn.dialect.name]
    conn.execute(insert(RateLimit).values(key=key, count=0, expires=0.0, moments="[]")
                 .on_conflict_do_nothing(index_elements=["key"]))
    found = conn.execute(select(RateLimit.count, RateLimit.expires, RateLimit.moments)
                         .where(RateLimit.key == key).with_for_update()).first()
    return _as_row(found)


def _as_row(found) -> _Row:
    return _Row(found.count, found.expires, orjson.loads(found.moments)) if found else _Row()


def _within(moments: list[float], now: float, expiry: float) -> list[float]:
    """The moments (newest first) of the last ``expiry`` seconds."""
    return [m for m in moments if m > now - expiry]
