"""Engine and sessions. SQLite (WAL) is the embedded default; PostgreSQL in production.

The engine is made once per URL. SQLite gets WAL, a busy timeout and ``synchronous=NORMAL``
(durable across a process crash, which is what "never lose what was acknowledged" needs; a power
cut may lose the last transactions, as with any WAL database not fsyncing each commit).
"""

from __future__ import annotations

import threading

from sqlalchemy import event
from sqlalchemy.engine import Engine, create_engine
from sqlalchemy.pool import StaticPool

_engines: dict[str, Engine] = {}


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str) -> Engine:
    """A new engine for ``url`` (no caching: tests make their own)."""
    if url.startswith("sqlite"):
        kwargs: dict = {"connect_args": {"check_same_thread": False, "timeout": 30}}
        if url in ("sqlite://", "sqlite:///:memory:"):
            kwargs["poolclass"] = StaticPool
        else:
            # as many kept connections as requests run at once (the thread pool's 40): with the
            # default 5, eight concurrent lookups opened and closed a connection (and ran the
            # pragmas) per request beyond the fifth
            kwargs.update(pool_size=40, max_overflow=10)
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own BEGIN is deferred; writers (``writer(engine)``) take the write lock at
        # BEGIN so two of them never fail on a lock upgrade. Within this process they also queue
        # on a lock of ours first: SQLite's busy handler waits by sleeping in growing steps,
        # which turned four concurrent MLLP senders into 30 ms per message.
        write_lock = threading.Lock()

        @event.listens_for(engine, "begin")
        def _begin(conn):
            immediate = conn.get_execution_options().get("sqlite_immediate")
            if immediate:
                write_lock.acquire()
                conn.info["holds_write_lock"] = True
            try:
                conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
            except BaseException:
                _release(conn)
                raise

        def _release(conn, *_args):
            if conn.info.pop("holds_write_lock", False):
                write_lock.release()

        event.listen(engine, "commit", _release)
        event.listen(engine, "rollback", _release)

        @event.listens_for(engine, "connect")
        def _no_pysqlite_begin(dbapi_conn, _record):
            dbapi_conn.isolation_level = None

        return engine
    return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


def get_engine(url: str) -> Engine:
    if url not in _engines:
        _engines[url] = make_engine(url)
    return _engines[url]


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def writer(engine: Engine) -> Engine:
    """The engine to open write transactions with (``with writer(e).begin() as conn``)."""
    return engine.execution_options(sqlite_immediate=True)


def write_retrying(engine: Engine, work, attempts: int = 5):
    """``work(conn)`` in a write transaction, run again on a write conflict (two uploads
    creating the same patient at once on PostgreSQL, a lock timeout on SQLite): the next
    attempt sees what the other committed. The last attempt's error is raised."""
    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(attempts):
        try:
            with writer(engine).begin() as conn:
                return work(conn)
        except (IntegrityError, OperationalError):
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")
