"""Benchmark: what two FHIR answer options cost, through a real hub (its own process, SQLite in a
temporary folder, HTTP on loopback).

1. ``_summary=count`` against the count query: the count alone run on the database (no HTTP),
   the search answered with ``_count=0`` (today's way to ask for a count) and with
   ``_summary=count``, and a first page of 50 for scale. ``_summary=count`` runs the count and
   nothing more, so it should cost what ``_count=0`` costs.
2. gzip against plain for a large ``$everything`` (one patient with ``--big`` visits): time to
   the last byte with ``Accept-Encoding: gzip`` and with ``identity`` (and gzip with the
   client's inflate), the ratios, the bytes on the wire, the time those bytes take on a
   100 Mbit/s link added to each, and the link speed below which gzip is the faster; then
   compression alone on that body: zlib at levels 1, 6 and 9, and ISA-L as the hub uses it
   (why FHIR answers are compressed with ISA-L).

    python bench/fhir_results.py [--visits 6000] [--patients 600] [--big 1500] [--repeat 15]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support import hubproc  # noqa: E402
from bench.zj_load import HOSPITALS, resident_id, upload, visit  # noqa: E402
from hub import compression  # noqa: E402
from hub.auth import create_token  # noqa: E402
from mappers.common import RESIDENT_ID_SYSTEM  # noqa: E402
from tests.support.common import free_port  # noqa: E402

LINK_BITS_PER_S = 100e6
SEARCH = {"date": "ge2024-01-01"}  # every Observation: the count has the whole table to read


def medians_ms(fns: dict, repeat: int) -> dict[str, float]:
    """Each function's median time, taken in turns (the machine's load drifts alike for all), in
    a shuffled order each round: a request's audit is written behind it, and would otherwise
    always slow the same next one."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    shuffle = random.Random(17).shuffle
    for round_ in range(repeat + 1):
        names = list(fns)
        shuffle(names)
        for name in names:
            fn = fns[name]
            t = time.perf_counter()
            fn()
            if round_:  # the first round warms up (statement caches, pages in memory)
                times[name].append((time.perf_counter() - t) * 1000)
    return {name: statistics.median(ts) for name, ts in times.items()}


def load(base: str, engine, visits: int, patients: int, big: int) -> None:
    senders = {h: create_token(engine, "hospital", h) for h in HOSPITALS}
    with httpx.Client(base_url=base, timeout=600) as c:
        for i, start in enumerate(range(0, visits, 100)):
            h = HOSPITALS[i % len(HOSPITALS)]
            c.post("/ingest/zj", content=upload(h, start, 100, patients),
                   headers={"Authorization": f"Bearer {senders[h]}"}).raise_for_status()
        h = HOSPITALS[0]
        for start in range(0, big, 100):  # patient number `patients`: the large record
            doc = {"jgdm": h, "jgmc": "测试医院", "yydj": "2", "scsj": "2024-03-15 14:30:00",
                   "jzjl": [visit(10**7 + n, patients) for n in range(start, min(big, start + 100))]}
            c.post("/ingest/zj", content=json.dumps(doc, ensure_ascii=False).encode(),
                   headers={"Authorization": f"Bearer {senders[h]}"}).raise_for_status()


def count_figures(c: httpx.Client, engine, repeat: int) -> None:
    from hub import queries

    def alone():
        with engine.connect() as conn:
            return queries.search_page(conn, "Observation", list(SEARCH.items()), 0, 0, []).total

    def http(**extra):
        return lambda: c.get("/fhir/Observation", params={**SEARCH, **extra}).raise_for_status()

    total = alone()
    figures = medians_ms({"count query alone (no HTTP)": alone, "_count=0": http(_count="0"),
                          "_summary=count": http(_summary="count"),
                          "first page of 50": http(_count="50")}, repeat)
    print(f"Observation?date=ge2024-01-01 matches {total}; median of {repeat}:")
    for name, ms in figures.items():
        print(f"  {name:28s} {ms:8.2f} ms")
    ratio = figures["_summary=count"] / figures["_count=0"]
    print(f"  _summary=count / _count=0    {ratio:8.2f}  (1.00: the count and nothing more)")


def gzip_figures(c: httpx.Client, pid: str, repeat: int) -> None:
    url = f"/fhir/Patient/{pid}/$everything"
    wire = {}

    def fetch(encoding: str, decode: bool):
        def run():
            with c.stream("GET", url, headers={"Accept-Encoding": encoding}) as r:
                r.raise_for_status()
                size = len(r.read()) if decode else sum(len(b) for b in r.iter_raw())
                wire[encoding] = (r.num_bytes_downloaded, r.headers.get("content-encoding"))
            return size
        return run

    times = medians_ms({"plain": fetch("identity", False), "gzip": fetch("gzip", False),
                        "gzip decoded": fetch("gzip", True)}, repeat)
    plain, gz, decoded = times["plain"], times["gzip"], times["gzip decoded"]
    (pbytes, _), (gbytes, coding) = wire["identity"], wire["gzip"]
    link = {k: v[0] * 8 / LINK_BITS_PER_S * 1000 for k, v in wire.items()}
    print(f"$everything of one patient: {pbytes / 1e6:.1f} MB of JSON; median of {repeat}, "
          f"to the last byte on loopback:")
    print(f"  plain          {plain:8.1f} ms  {pbytes / 1e6:6.2f} MB   "
          f"+100 Mbit/s link: {plain + link['identity']:8.1f} ms")
    print(f"  gzip           {gz:8.1f} ms  {gbytes / 1e6:6.2f} MB   "
          f"+100 Mbit/s link: {gz + link['gzip']:8.1f} ms   (answered as {coding})")
    print(f"  gzip, decoded  {decoded:8.1f} ms  (the client's inflate included)")
    print(f"  gzip / plain: loopback {gz / plain:.2f} (decoded {decoded / plain:.2f}); "
          f"with the 100 Mbit/s link {(gz + link['gzip']) / (plain + link['identity']):.2f}; "
          f"bytes {gbytes / pbytes:.3f}")
    if decoded > plain:
        even = (pbytes - gbytes) * 8 / ((decoded - plain) / 1000) / 1e6
        print(f"  gzip (decoded) is the faster below {even:.0f} Mbit/s between hub and client")
    body = c.get(url, headers={"Accept-Encoding": "identity"}).content
    ways = [(f"zlib level {n}", lambda b, n=n: zlib.compress(b, n)) for n in (1, 6, 9)]
    ways.append((f"ISA-L level {compression.FAST_LEVEL} (the hub's, for FHIR)",
                 lambda b: compression.gzipped("gzip", b, {})))
    for name, compress in ways:
        t = time.perf_counter()
        packed = compress(body)
        print(f"  compress alone, {name:36s} {(time.perf_counter() - t) * 1000:7.1f} ms, "
              f"{len(packed) / len(body):.3f} of the size")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--visits", type=int, default=6000)
    ap.add_argument("--patients", type=int, default=600)
    ap.add_argument("--big", type=int, default=1500, help="visits of the one large record")
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    from hub.db import get_engine

    url = f"sqlite:///{tempfile.mkdtemp(prefix='yrdhub-bench-')}/bench.db"
    port = free_port()
    server = hubproc.start(url, port)
    try:
        engine = get_engine(url)
        base = f"http://127.0.0.1:{port}"
        t = time.perf_counter()
        load(base, engine, args.visits, args.patients, args.big)
        print(f"loaded {args.visits + args.big} visits in {time.perf_counter() - t:.0f} s")
        admin = create_token(engine, "admin", None)
        with httpx.Client(base_url=base, timeout=600,
                          headers={"Authorization": f"Bearer {admin}"}) as c:
            rid = f"{RESIDENT_ID_SYSTEM}|{resident_id(args.patients)}"
            pid = c.get("/fhir/Patient", params={"identifier": rid}).json()["entry"][0]["resource"]["id"]
            count_figures(c, engine, args.repeat)
            gzip_figures(c, pid, args.repeat)
    finally:
        hubproc.stop(server)


if __name__ == "__main__":
    main()
