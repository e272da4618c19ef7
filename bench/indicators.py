"""Benchmark: ``GET /admin/indicators`` over a large month, on SQLite and PostgreSQL.

Generates one month (+08:00) of activity straight into the tables (bulk: ``executemany`` on
SQLite, ``COPY`` on PostgreSQL): ``--records`` arrivals (default 1,000,000: 90 % stored with a
visit delay, 5 % unchanged, 5 % rejected over 20 reasons, from 400 hospitals), ``--settlements``
(default 100,000: settled, voided, refused by code, some refused before any 2207), ``--lookups``
audited requests (plus as many audit rows of the same requests' other patients), transfers
with their steps and corrections; and a tenth as much in the month before, so the month is a
range of the indexes, not the whole table. Then a real hub (its own process) answers
``GET /admin/indicators?month=…`` ``--repeat`` times (JSON, then CSV); the figures are the
first (cold) answer and the median of the rest, and the same computation in-process without
HTTP.

    python bench/indicators.py                                   # SQLite in a temporary folder
    python bench/indicators.py --postgres postgresql+psycopg://postgres@127.0.0.1:55433/dev_x
    (or YRDHUB_BENCH_POSTGRES_URL; its public schema is dropped and made anew)
    python bench/indicators.py --records 100000 --settlements 10000   # a quick look
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import httpx
from sqlalchemy import text
from sqlmodel import SQLModel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support import hubproc  # noqa: E402
from hub import indicators  # noqa: E402
from hub.auth import create_token  # noqa: E402
from hub.db import make_engine  # noqa: E402
from hub.migrate import upgrade  # noqa: E402
import hub.models  # noqa: E402,F401  (the tables' metadata)
import settlement.models  # noqa: E402,F401
from tests.support.common import free_port  # noqa: E402

UTC = timezone.utc
PROVINCE_DIGITS = {"SH": "31", "JS": "32", "ZJ": "33", "AH": "34"}
HOSPITALS = [f"H{d}{n:010d}" for d in PROVINCE_DIGITS.values() for n in range(1, 101)]
REASONS = [f"jzjl[{n}].zdxx[0].zddm: diagnosis code {n} is not ICD-10" for n in range(20)]
REFUSALS = ["NOT_FILED", "NOT_ACTIVE", "PERSON_NOT_FOUND", "ARREARS"]


def month_times(month: indicators.Month, n: int, rng: random.Random):
    span = (month.end - month.start).total_seconds()
    for _ in range(n):
        yield month.start + timedelta(seconds=rng.random() * span)


def arrivals(month: indicators.Month, n: int, rng: random.Random):
    for i, arrived in enumerate(month_times(month, n, rng)):
        hospital = HOSPITALS[i % len(HOSPITALS)]
        roll = rng.random()
        outcome = "stored" if roll < 0.9 else "unchanged" if roll < 0.95 else "rejected"
        yield (i // 20 + 1, hospital, indicators.province_of(hospital), month.label, arrived, outcome, 1,
               rng.choice(REASONS) if outcome == "rejected" else None,
               int(rng.expovariate(1 / 86400)) if outcome == "stored" else None)


def settlements(month: indicators.Month, n: int, rng: random.Random, tag: str):
    for i, created in enumerate(month_times(month, n, rng)):
        hospital, insured = HOSPITALS[i % len(HOSPITALS)], rng.choice(list(PROVINCE_DIGITS))
        roll = rng.random()
        state = "settled" if roll < 0.85 else "voided" if roll < 0.9 else "refused"
        early = state == "refused" and roll > 0.98  # refused at 1101: never reached a 2207
        local = created.astimezone(indicators.CST)
        fen, code = rng.randint(100, 500000), rng.choice(REFUSALS)
        yield (f"YS{tag}{i:010d}", hospital, f"K{tag}{i}", "0" * 64, '{"request_key": "K%d"}' % i, state,
               hospital[1:7], indicators.province_of(hospital), PROVINCE_DIGITS[insured] + "0100", insured,
               "310", f"MZ{i}", None if early else local.strftime("%Y-%m-%d %H:%M:%S"),
               None if state == "refused" else '{"medfee_sumamt": "%d.%02d"}' % divmod(fen, 100),
               '{"code": "%s", "message": "x"}' % code if state == "refused" else None,
               code if state == "refused" else None, None if state == "refused" else fen,
               "[]", 0, 0, 0.0, 0.0, 0.0, created, created)


SETTLEMENT_COLUMNS = ("setl_id", "fixmedins_code", "request_key", "body_digest", "body", "state",
                      "mdtrtarea_admvs", "mdtrtarea", "insuplc_admdvs", "insuplc", "insutype", "mdtrt_id",
                      "setl_time", "split", "refusal", "refusal_code", "medfee_fen", "msgids", "attempts", "conflicts", "next_at",
                      "deadline", "run_until", "created_at", "updated_at")
ARRIVAL_COLUMNS = ("upload_id", "hospital", "province", "month", "arrived", "outcome", "units", "reason",
                   "delay_s")
AUDIT_COLUMNS = ("recorded", "party_kind", "party_code", "patient_id", "purpose", "outcome", "what", "lookup")


def audit(month: indicators.Month, n: int, rng: random.Random):
    """``n`` requests, each with a second row (another patient of the same search)."""
    for i, recorded in enumerate(month_times(month, n, rng)):
        hospital = HOSPITALS[i % len(HOSPITALS)]
        purpose = "emergency" if i % 50 == 0 else "treatment"
        outcome = "refused" if i % 20 == 0 else "allowed"
        for first in (True, False):
            yield recorded, "hospital", hospital, f"P{i}{int(first)}", purpose, outcome, "search Encounter", first


def transfers(month: indicators.Month, n: int, rng: random.Random, tag: str):
    rows, steps = [], []
    for i, updated in enumerate(month_times(month, n, rng)):
        status = "completed" if i % 5 else "refused"
        origin = rng.choice(list(PROVINCE_DIGITS.values())) + "0100"
        tid = f"TR{tag}{i:08d}"
        rows.append((tid, f"P{i}", "x" * 18, "某某", origin, "310100", "310", status, updated, updated,
                     updated.astimezone(indicators.CST).date(), False, 0))
        for seq, infno in enumerate(("4101", "4102", "4201")):
            done = updated - timedelta(days=rng.randint(0, 14))
            steps.append((tid, seq, infno, "done", "reached", done.date(), done.date() + timedelta(days=10), done, 1))
    return rows, steps


TRANSFER_COLUMNS = ("id", "patient_id", "certno", "psn_name", "from_admdvs", "to_admdvs", "insutype", "status",
                    "created", "updated", "applied_on", "cancel_requested", "attempts")
STEP_COLUMNS = ("transfer_id", "seq", "infno", "status", "delivery", "started_on", "deadline", "done_at", "attempts")


def corrections(month: indicators.Month, n: int, rng: random.Random, tag: str):
    for i, created in enumerate(month_times(month, n, rng)):
        deadline = created.astimezone(indicators.CST).date() + timedelta(days=14)
        answered = created + timedelta(days=rng.randint(1, 20)) if i % 3 else None
        yield (f"CR{tag}{i:08d}", f"P{i}", "Condition", f"c{tag}{i}", HOSPITALS[i % len(HOSPITALS)], "wrong", "x",
               "rejected" if answered else "open", created, deadline, 1, "rejected" if answered else None,
               "x" if answered else None, answered)


CORRECTION_COLUMNS = ("id", "patient_id", "res_type", "res_id", "hospital", "kind", "text", "status", "created",
                      "deadline", "version_before", "decision", "reason", "answered")


def _sqlite_value(value):
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, date):
        return value.isoformat()
    return value


def load(engine, table: str, columns: tuple[str, ...], rows) -> int:
    """Bulk-load ``rows``: ``executemany`` in chunks on SQLite, ``COPY`` on PostgreSQL."""
    started = time.perf_counter()
    raw = engine.raw_connection()
    count = 0
    try:
        cur = raw.cursor()
        if engine.dialect.name == "sqlite":
            sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
            chunk = []
            for row in rows:
                chunk.append(tuple(_sqlite_value(v) for v in row))
                if len(chunk) == 50000:
                    cur.executemany(sql, chunk)
                    count += len(chunk)
                    chunk = []
            cur.executemany(sql, chunk)
            count += len(chunk)
        else:
            with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
                    count += 1
        raw.commit()
    finally:
        raw.close()
    if os.environ.get("BENCH_VERBOSE"):
        print(f"    {table}: {count:,} rows in {time.perf_counter() - started:.1f} s", flush=True)
    return count


def generate(engine, month: indicators.Month, args) -> None:
    """Both months' rows, loaded with the big tables' indexes dropped and made again after (a
    sorted build is many times faster than keeping five indexes in step row by row)."""
    rng = random.Random(16)
    tables = [SQLModel.metadata.tables[name] for name in ("record_arrival", "audit_event", "settlement")]
    indexes = [index for table in tables for index in table.indexes]
    with engine.begin() as conn:
        for index in indexes:
            index.drop(conn)
    for m, scale, tag in ((month.back(1), 10, "p"), (month, 1, "m")):
        started = time.perf_counter()
        n = load(engine, "record_arrival", ARRIVAL_COLUMNS, arrivals(m, args.records // scale, rng))
        n += load(engine, "settlement", SETTLEMENT_COLUMNS, settlements(m, args.settlements // scale, rng, tag))
        n += load(engine, "audit_event", AUDIT_COLUMNS, audit(m, args.lookups // scale, rng))
        rows, steps = transfers(m, args.transfers // scale, rng, tag)
        n += load(engine, "transfer", TRANSFER_COLUMNS, rows) + load(engine, "transfer_step", STEP_COLUMNS, steps)
        n += load(engine, "correction", CORRECTION_COLUMNS, corrections(m, args.corrections // scale, rng, tag))
        print(f"  {m.label}: {n:,} rows in {time.perf_counter() - started:.1f} s", flush=True)
    started = time.perf_counter()
    with engine.begin() as conn:
        for index in indexes:
            index.create(conn)
    print(f"  indexes made again in {time.perf_counter() - started:.1f} s", flush=True)
    if engine.dialect.name == "postgresql":  # what autovacuum does after a load; visibility for index-only scans
        raw = engine.raw_connection()
        raw.driver_connection.autocommit = True
        raw.cursor().execute("VACUUM ANALYZE")
        raw.close()


def fresh_database(url: str | None) -> str:
    if url is None:
        return f"sqlite:///{tempfile.mkdtemp(prefix='bench-indicators-')}/hub.db"
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    return url


def measure(url: str, month: indicators.Month, repeat: int) -> None:
    engine = make_engine(url)
    token = create_token(engine, "admin", None)
    port = free_port()
    proc = hubproc.start(url, port)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600,
                          headers={"Authorization": f"Bearer {token}"}) as client:
            for accept in ("application/json", "text/csv"):
                times = []
                for _ in range(repeat):
                    started = time.perf_counter()
                    answer = client.get("/admin/indicators", params={"month": month.label},
                                        headers={"Accept": accept})
                    times.append(time.perf_counter() - started)
                    assert answer.status_code == 200, answer.text
                print(f"  GET /admin/indicators ({accept}): first {times[0]:.3f} s, median of the next "
                      f"{repeat - 1} {statistics.median(times[1:]):.3f} s, {len(answer.content):,} bytes")
    finally:
        hubproc.stop(proc)
    times, cpu = [], []
    for _ in range(repeat):
        started, started_cpu = time.perf_counter(), time.process_time()
        body = indicators.compute(engine, month)
        times.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    received = sum(p["records"]["received"] for p in body["provinces"].values())
    settled = sum(p["settlements"]["settled"] for p in body["provinces"].values())
    print(f"  indicators.compute in-process: median {statistics.median(times):.3f} s "
          f"({received:,} records received, {settled:,} settled, {len(body['hospitals'])} hospitals)")
    # on SQLite the database works in this process: its CPU is all of the work, whatever the load
    print(f"  CPU of this process per compute: median {statistics.median(cpu):.3f} s; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--settlements", type=int, default=100_000)
    parser.add_argument("--lookups", type=int, default=200_000)
    parser.add_argument("--transfers", type=int, default=5_000)
    parser.add_argument("--corrections", type=int, default=10_000)
    parser.add_argument("--month", default="2026-11")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--postgres", default=os.environ.get("YRDHUB_BENCH_POSTGRES_URL"))
    args = parser.parse_args()
    month = indicators.parse_month(args.month)
    url = fresh_database(args.postgres)
    print(f"{make_engine(url).dialect.name}: {args.records:,} records, {args.settlements:,} settlements, "
          f"{args.lookups:,} lookups in {month.label} (and a tenth of each in the month before)")
    upgrade(make_engine(url))
    generate(make_engine(url), month, args)
    measure(url, month, args.repeat)


if __name__ == "__main__":
    main()
