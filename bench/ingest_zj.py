"""Benchmark: Zhejiang uploads through a real hub (its own process, HTTP on loopback, SQLite by
default).

Prints visits/s and resources/s for ingest, then $everything p50/p99 once the store holds at
least --min-resources resources.

    python bench/ingest_zj.py [--visits 15000] [--per-upload 50] [--database-url URL]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support import hubproc  # noqa: E402
from bench.zj_load import HOSPITALS, resident_id, upload  # noqa: E402
from hub.auth import create_token  # noqa: E402
from hub.models import Resource  # noqa: E402
from mappers.common import RESIDENT_ID_SYSTEM  # noqa: E402
from tests.support.common import free_port  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--visits", type=int, default=15000)
    ap.add_argument("--per-upload", type=int, default=50)
    ap.add_argument("--patients", type=int, default=5000)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--lookups", type=int, default=500)
    ap.add_argument("--database-url")
    args = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="yrdhub-bench-")
    url = args.database_url or f"sqlite:///{workdir}/bench.db"

    from hub.db import get_engine

    port = free_port()
    server = hubproc.start(url, port)
    base = f"http://127.0.0.1:{port}"
    engine = get_engine(url)
    tokens = {h: create_token(engine, "hospital", h) for h in HOSPITALS}
    admin = create_token(engine, "admin", None)

    bodies = []
    for i, start in enumerate(range(0, args.visits, args.per_upload)):
        hospital = HOSPITALS[i % len(HOSPITALS)]
        bodies.append((hospital, upload(hospital, start, min(args.per_upload, args.visits - start),
                                        args.patients)))

    def send(item):
        hospital, body = item
        r = hubproc.client(base, tokens[hospital]).post("/ingest/zj", content=body)
        r.raise_for_status()
        return r.json()["stored"]

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
        stored = sum(pool.map(send, bodies))
    elapsed = time.perf_counter() - t0
    with engine.connect() as conn:
        resources = conn.execute(select(func.count()).select_from(Resource)).scalar_one()
    print(f"database: {engine.dialect.name}; {os.cpu_count()} cores")
    print(f"ingest: {stored} visits in {elapsed:.1f} s = {stored / elapsed:.0f} visits/s, "
          f"{resources / elapsed:.0f} resources/s ({resources} resources stored)")

    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {admin}"}) as c:
        pids = []
        for n in range(0, args.patients, max(1, args.patients // 100)):
            b = c.get("/fhir/Patient", params={"identifier": f"{RESIDENT_ID_SYSTEM}|{resident_id(n)}"}).json()
            if b["total"]:
                pids.append(b["entry"][0]["resource"]["id"])
        times, sizes = [], []
        for i in range(args.lookups):
            t = time.perf_counter()
            r = c.get(f"/fhir/Patient/{pids[i % len(pids)]}/$everything")
            times.append((time.perf_counter() - t) * 1000)
            sizes.append(r.json()["total"])
    times.sort()
    p99 = times[int(len(times) * 0.99) - 1]
    print(f"$everything over {resources} resources: p50 {statistics.median(times):.1f} ms, "
          f"p99 {p99:.1f} ms ({args.lookups} lookups, {statistics.mean(sizes):.0f} resources each)")
    hubproc.stop(server)


if __name__ == "__main__":
    main()
