"""Benchmark: FHIR lookups as clients make them (many small ones at once), against a real hub
process on a large store (``bench.make_store``), each beside the same answer read straight from
the database in this process (the naive baseline: a bare index read, no HTTP, no rules, no
audit), measured in the same run.

1. ``GET /fhir/Patient?identifier=<resident ID>``, one client: p50/p99;
2. ``GET /fhir/Patient/<id>/$everything``, one client and 8 clients: p50/p99;
3. lookups/s (``Patient?identifier=``) with 8 clients, each with one request in flight.

The caller is the hospital ``bench.make_store`` makes treat people 1..``--treated``; each lookup
asks for another of them. Clients are a few lines of HTTP/1.1 over asyncio streams (keep-alive,
one connection each): a general HTTP client costs more CPU per request than the hub's lookup,
and it shares the machine with the hub.

    python -m bench.make_store --url sqlite:////tmp/big.db          # once: 1,000,000 resources
    python -m bench.lookups --url sqlite:////tmp/big.db [--n 2000] [--processes 1]

``--processes 2`` starts two hubs on the same database (PostgreSQL: both take requests; the
clients take turns between them). ``BENCH_HUB_LOG=file`` keeps the hubs' logs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support import hubproc  # noqa: E402
from bench.make_store import BENCH_HOSPITAL, resident_id  # noqa: E402
from bench.settle import cpu_split  # noqa: E402
from hub.auth import create_token  # noqa: E402
from hub.db import make_engine  # noqa: E402
from mappers.common import RESIDENT_ID_SYSTEM, make_id  # noqa: E402
from tests.support.common import free_port  # noqa: E402


class Conn:
    """One keep-alive HTTP/1.1 connection; ``get`` returns (status, body length)."""

    def __init__(self, port: int, token: str):
        self.port, self.head = port, f"Authorization: Bearer {token}\r\nHost: x\r\n\r\n".encode()

    async def open(self) -> "Conn":
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    async def get(self, path: str) -> tuple[int, int]:
        self.writer.write(b"GET " + path.encode() + b" HTTP/1.1\r\n" + self.head)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await self.reader.readexactly(length)
        return status, length


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))]


async def timed(conns: list[Conn], paths: list[str], n: int) -> tuple[list[float], float]:
    """``n`` requests spread over ``conns`` (one in flight each): latencies (ms), wall (s)."""
    times: list[float] = []
    queue = iter(range(n))

    async def client(c: Conn):
        for i in queue:
            t = time.perf_counter()
            status, _ = await c.get(paths[i % len(paths)])
            times.append((time.perf_counter() - t) * 1000)
            if status != 200:
                raise RuntimeError(f"{paths[i % len(paths)]}: {status}")

    t0 = time.perf_counter()
    await asyncio.gather(*(client(c) for c in conns))
    return times, time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# The naive baseline: the same answer as a bare index read, in this process
# ---------------------------------------------------------------------------------------------

BY_IDENTIFIER = ("SELECT r.content FROM search_index si JOIN resource r ON r.res_type = "
                 "si.res_type AND r.res_id = si.res_id WHERE si.res_type = 'Patient' AND "
                 "si.param = 'identifier' AND si.value = ? AND si.system = ?")
EVERYTHING = "SELECT content FROM resource WHERE patient_id = ?"


def naive(url: str, sql: str, args: list[tuple], n: int, threads: int = 1
          ) -> tuple[list[float], float]:
    """``n`` runs of ``sql`` (over ``args`` in turn) on DB-API connections, ``threads`` at
    once: latencies (ms) and wall time (s)."""
    engine = make_engine(url)
    if engine.dialect.name != "sqlite":
        sql = sql.replace("?", "%s")
    times: list[float] = []
    counter = iter(range(n))

    def work():
        raw = engine.raw_connection()
        cur = raw.cursor()
        for i in counter:
            t = time.perf_counter()
            cur.execute(sql, args[i % len(args)])
            rows = cur.fetchall()
            times.append((time.perf_counter() - t) * 1000)
            assert rows
        raw.close()

    work_threads = [threading.Thread(target=work) for _ in range(threads)]
    t0 = time.perf_counter()
    for t in work_threads:
        t.start()
    for t in work_threads:
        t.join()
    wall = time.perf_counter() - t0
    engine.dispose()
    return times, wall


# ---------------------------------------------------------------------------------------------


def row(name: str, hub: list[float], base: list[float], q: float) -> str:
    h, b = pct(hub, q), pct(base, q)
    return f"{name:<44} {h:8.2f} ms  {b:8.3f} ms  {h / b:7.1f}x"


async def run(args, ports: list[int], token: str, pids: list[int]) -> None:
    people = list(range(1, args.treated + 1))
    rids = [resident_id(n) for n in people]
    by_id = [f"/fhir/Patient?identifier={RESIDENT_ID_SYSTEM}%7C{r}" for r in rids]
    every = [f"/fhir/Patient/{make_id('Patient', 'rid:' + r)}/$everything" for r in rids]
    one = [await Conn(ports[0], token).open()]
    eight = [await Conn(ports[i % len(ports)], token).open() for i in range(8)]
    await timed(one, by_id, 200)  # warm up: statement caches, pages in memory
    await timed(one, every, 200)
    id_1, _ = await timed(one, by_id, args.n)
    ev_1, _ = await timed(one, every, args.n)
    ev_8, _ = await timed(eight, every, args.n)
    cpu0 = [sum(cpu_split(p)) for p in pids]
    id_8, wall_8 = await timed(eight, by_id, args.n * 2)
    cpu_ms = sum(sum(cpu_split(p)) - c for p, c in zip(pids, cpu0)) / len(id_8) * 1000
    size = len(await _entries(await Conn(ports[0], token).open(), every[0]))
    ident = [(r, RESIDENT_ID_SYSTEM) for r in rids]
    pids = [(make_id("Patient", "rid:" + r),) for r in rids]
    nid_1, _ = naive(args.url, BY_IDENTIFIER, ident, args.n)
    nev_1, _ = naive(args.url, EVERYTHING, pids, args.n)
    nev_8, _ = naive(args.url, EVERYTHING, pids, args.n, threads=8)
    nid_8, nwall_8 = naive(args.url, BY_IDENTIFIER, ident, args.n * 2, threads=8)
    print(f"{'':<44} {'hub':>11}  {'index read':>11}  {'ratio':>8}")
    print(row("Patient?identifier=, 1 client, p50", id_1, nid_1, 0.5))
    print(row("Patient?identifier=, 1 client, p99", id_1, nid_1, 0.99))
    print(row("$everything, 1 client, p50", ev_1, nev_1, 0.5))
    print(row("$everything, 1 client, p99", ev_1, nev_1, 0.99))
    print(row("$everything, 8 clients, p50", ev_8, nev_8, 0.5))
    print(row("$everything, 8 clients, p99", ev_8, nev_8, 0.99))
    hub_rate, base_rate = len(id_8) / wall_8, len(nid_8) / nwall_8
    print(f"{'Patient?identifier= lookups/s, 8 clients':<44} {hub_rate:8.0f} /s  "
          f"{base_rate:8.0f} /s  {base_rate / hub_rate:7.1f}x")
    print(f"hub CPU per lookup with 8 clients: {cpu_ms:.2f} ms (all hub processes; one core "
          f"would serve {1000 / cpu_ms:.0f}/s: the rate above is what this machine's load left)")
    print(f"(1 client p50 in ms: identifier {statistics.median(id_1):.2f}, "
          f"$everything {statistics.median(ev_1):.2f}; resources per $everything "
          f"{size})")


async def _entries(conn: Conn, path: str) -> list:
    import orjson

    conn.writer.write(b"GET " + path.encode() + b" HTTP/1.1\r\n" + conn.head)
    head = await conn.reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    return orjson.loads(await conn.reader.readexactly(length)).get("entry", [])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", required=True, help="a store made by bench.make_store")
    ap.add_argument("--n", type=int, default=2000, help="requests per figure")
    ap.add_argument("--treated", type=int, default=2000, help="as given to bench.make_store")
    ap.add_argument("--processes", type=int, default=1, help="hub processes on the database")
    args = ap.parse_args()
    engine = make_engine(args.url)
    with engine.connect() as conn:
        total = conn.exec_driver_sql("SELECT count(*) FROM resource").scalar_one()
    token = create_token(engine, "hospital", BENCH_HOSPITAL)
    engine.dispose()
    ports = [free_port() for _ in range(args.processes)]
    hubs = [hubproc.start(args.url, p) for p in ports]
    try:
        print(f"store: {total:,} resources ({engine.dialect.name}); {len(hubs)} hub "
              f"process(es); {args.n} requests per figure")
        asyncio.run(run(args, ports, token, [h.pid for h in hubs]))
    finally:
        for h in hubs:
            hubproc.stop(h)


if __name__ == "__main__":
    main()
