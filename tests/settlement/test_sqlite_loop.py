"""The event loop's own SQLite connection: Core statements run on sqlite3 directly give what
SQLAlchemy's Connection gives (same SQL, same stored values, same rows back), and its errors are
SQLAlchemy's."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone

import pytest
from sqlalchemy import bindparam, event, exc as sa_exc, insert, select, text, update

from hub.db import make_engine
from hub.migrate import upgrade
from settlement.service import _CLAIM, _DUE, T
from settlement.sqlite_loop import LoopConnection, NotSupported
from settlement.states import OPEN

WHEN = datetime(2024, 3, 15, 1, 30, 0, 123456, tzinfo=timezone.utc)


@pytest.fixture
def engine(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def loop_conn(engine):
    conn = engine.connect()
    raw = conn.connection.dbapi_connection
    raw.execute("PRAGMA busy_timeout=0")
    conn.detach()
    yield LoopConnection(raw, engine.dialect)
    conn.close()


def row(setl_id: str, **kw) -> dict:
    values = {"setl_id": setl_id, "fixmedins_code": "H31011800012", "request_key": f"K-{setl_id}",
              "body_digest": "d", "body": "{}", "state": "received", "mdtrtarea_admvs": "310118",
              "mdtrtarea": "SH", "insuplc_admdvs": "330421", "insuplc": "ZJ", "insutype": "310",
              "mdtrt_id": "MZ1", "msgids": "[]", "attempts": 0, "conflicts": 0, "next_at": 0.0,
              "deadline": 100.0, "runner": "r1", "run_until": 50.0, "created_at": WHEN, "updated_at": WHEN}
    return {**values, **kw}


def test_an_insert_stores_what_sqlalchemy_stores_and_reads_back_the_same_row(engine, loop_conn):
    with loop_conn.begin() as conn:
        conn.execute(insert(T), row("YS1"))
    with engine.begin() as conn:
        conn.execute(insert(T), row("YS2"))
        stored = conn.execute(text("SELECT created_at, next_at FROM settlement ORDER BY setl_id")).all()
        by_sqlalchemy = dict(conn.execute(select(T).where(T.c.setl_id == "YS1")).one()._mapping)
    assert stored[0] == stored[1]  # the same text for the datetime, the same float
    by_loop = dict(loop_conn.execute(select(T).where(T.c.setl_id == bindparam("b_id")), {"b_id": "YS1"}).one()._mapping)
    assert by_loop == by_sqlalchemy and by_loop["created_at"].replace(tzinfo=None) == WHEN.replace(tzinfo=None)


def test_an_update_sets_only_the_given_columns_and_counts_rows(engine, loop_conn):
    with loop_conn.begin() as conn:
        conn.execute(insert(T), row("YS1"))
        done = conn.execute(_CLAIM, {"b_setl_id": "YS1", "b_runner": "r2", "b_now": 60.0,
                                     "runner": "r2", "run_until": 90.0})
        assert done.rowcount == 1  # the lease of r1 ran out at 50
        again = conn.execute(_CLAIM, {"b_setl_id": "YS1", "b_runner": "r3", "b_now": 60.0,
                                      "runner": "r3", "run_until": 90.0})
        assert again.rowcount == 0
    got = loop_conn.execute(select(T.c.runner, T.c.run_until, T.c.state)).first()
    assert (got.runner, got.run_until, got.state) == ("r2", 90.0, "received")


def test_the_statements_own_in_list_is_expanded_and_a_final_row_is_not_claimed(loop_conn):
    with loop_conn.begin() as conn:
        conn.execute(insert(T), row("YS1", state="settled", runner=None))
        assert conn.execute(_CLAIM, {"b_setl_id": "YS1", "b_runner": "r2", "b_now": 60.0,
                                     "runner": "r2", "run_until": 90.0}).rowcount == 0


def test_an_in_list_given_per_execution_is_refused_before_anything_runs(loop_conn):
    with pytest.raises(NotSupported, match="b_provinces"):
        loop_conn.execute(_DUE, {"b_runner": "r", "b_now": 0.0, "b_limit": 10, "b_provinces": ["ZJ"]})


def test_a_missing_parameter_is_refused_not_taken_as_null(loop_conn):
    with pytest.raises(sa_exc.ArgumentError, match="b_runner"):
        loop_conn.execute(_CLAIM, {"b_setl_id": "YS1", "b_now": 60.0, "runner": "r2", "run_until": 90.0})


def test_errors_are_sqlalchemys_and_the_transaction_is_rolled_back(loop_conn):
    with pytest.raises(sa_exc.IntegrityError) as info:
        with loop_conn.begin() as conn:
            conn.execute(insert(T), row("YS1"))
            conn.execute(insert(T), row("YS1"))
    assert isinstance(info.value.orig, sqlite3.IntegrityError)
    assert not loop_conn.raw.in_transaction
    assert loop_conn.execute(select(T.c.setl_id)).first() is None  # the first insert went too


def test_a_write_while_another_connection_writes_is_busy_at_once(engine, loop_conn):
    other = sqlite3.connect(engine.url.database, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(sa_exc.OperationalError) as info:
            with loop_conn.begin() as conn:
                conn.execute(insert(T), row("YS1"))
        assert info.value.orig.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert not loop_conn.raw.in_transaction


def test_statements_made_per_call_are_compiled_each_time_not_mixed_up(loop_conn):
    with loop_conn.begin() as conn:
        conn.execute(insert(T), row("YS1"))
        conn.execute(insert(T), row("YS2"))
        for setl_id, state in (("YS1", "sending"), ("YS2", "settled")):
            conn.execute(update(T).where(T.c.setl_id == setl_id).values(state=state))
    states = {r.setl_id: r.state for r in loop_conn.execute(select(T.c.setl_id, T.c.state))}
    assert states == {"YS1": "sending", "YS2": "settled"}


def test_the_resume_sweep_looks_up_open_settlements_by_index_not_by_scanning(engine):
    """``_DUE`` names the open states (IN) so SQLite searches ix_settlement_state; a NOT IN of
    the final ones scanned every settlement ever made, every few seconds."""
    assert OPEN == {"received", "sending", "reversing", "voiding"}
    seen = []
    event.listen(engine, "before_cursor_execute", lambda *args: seen.append((args[2], args[3])))
    with engine.connect() as conn:
        conn.execute(_DUE, {"b_runner": "r", "b_now": 0.0, "b_limit": 10, "b_provinces": ["ZJ", "AH"]}).all()
        [(sql, params)] = [s for s in seen if s[0].lstrip().upper().startswith("SELECT")]
        plan = " ".join(str(r) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params))
    assert "ix_settlement_state" in plan and "SCAN settlement" not in plan


def test_the_loop_connection_never_checkpoints_and_the_store_checkpoints_in_its_stead(engine, tmp_path):
    # A checkpoint syncs the file to disk: on the loop's connection that would hold the event
    # loop, so it is off there (SQLite's default is every 1,000 pages of log) and the service
    # runs Store.checkpoint in a thread instead.
    import asyncio

    from settlement.service import Store

    store = Store(engine, 15.0)
    page = engine.connect().exec_driver_sql("PRAGMA page_size").scalar()

    async def write(first: int, n: int):
        for i in range(first, first + n):
            await store.run(Store._op_insert_or_get, row(f"CK{i:05d}"))
    asyncio.run(write(0, 1500))
    wal = tmp_path / "hub.db-wal"
    grown = wal.stat().st_size
    assert grown > 2000 * page  # with the default it would have been reset at ~1,000 pages

    busy, frames, copied = store.checkpoint()
    assert (busy, copied) == (0, frames) and frames * page <= grown
    asyncio.run(write(1500, 50))  # the next writer starts the log over: it does not grow
    assert wal.stat().st_size == grown
    with engine.connect() as conn:
        assert conn.execute(select(T.c.setl_id).where(T.c.setl_id.like("CK%"))).all().__len__() == 1550
    store.close()


def test_the_service_checkpoints_a_sqlite_file_from_a_thread(engine, monkeypatch):
    import asyncio
    import threading

    from settlement.platform import PlatformClient
    from settlement.service import SettlementService, Store

    called = []
    monkeypatch.setattr(Store, "checkpoint_every", 0.02)
    monkeypatch.setattr(Store, "checkpoint", lambda self: called.append(threading.current_thread()))

    async def go():
        service = SettlementService(engine, PlatformClient({}))
        await service.start()
        deadline = asyncio.get_running_loop().time() + 20
        while len(called) < 3 and asyncio.get_running_loop().time() < deadline:  # three checkpoints, however slow
            await asyncio.sleep(0.01)
        await service.stop()
        await service.platform.aclose()
    asyncio.run(go())
    assert len(called) >= 3 and threading.main_thread() not in called
