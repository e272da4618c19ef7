"""Benchmark: the traffic hospitals really send, through a real hub, next to a naive process.

Three shapes, each through a real hub (its own process, SQLite WAL in a temporary folder by
default, loopback) and then through a NAIVE single process on the same data in the same run:

- HL7 v2 ORU^R01 (10 OBX), one message per ``POST /ingest/sh``, ``--clients`` clients (8);
- the same over MLLP, ``--connections`` connections (4), one message in flight on each;
- Zhejiang uploads of ``--visits-per-upload`` visits (10), ``--clients`` clients.

The naive process parses and builds the same resources as dicts (it calls the mappers, with
their own validation switched off), validates every resource with ``fhir.resources``
(R4B) ``model_validate``, dumps it with orjson and inserts it into a SQLite WAL table,
committing every 100 resources. Its latency is the time one message (upload) takes it.

Prints for each shape: messages/s (visits/s), p50/p99 latency, and the ratio hub/naive.

    python -m bench.traffic [--messages 1000] [--uploads 150] [--database-url URL]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib
import socket
import sqlite3
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import hubproc  # noqa: E402
from bench.ingest_formats import SH_H, oru  # noqa: E402
from bench.zj_load import HOSPITALS, upload  # noqa: E402
from hub.auth import create_token  # noqa: E402
from tests.conftest import free_port  # noqa: E402

ER7 = {"Content-Type": "x-application/hl7-v2+er7"}
MAPPERS = ("mappers.shanghai_hl7v2", "mappers.zhejiang_json")


def percentile(times: list[float], p: float) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


class Run:
    """Units done, their latencies (s) and the wall time of one side of a shape."""

    def __init__(self, units: int, latencies: list[float], seconds: float):
        self.units, self.latencies, self.seconds = units, latencies, seconds

    @property
    def rate(self) -> float:
        return self.units / self.seconds

    def describe(self, unit: str) -> str:
        return (f"{self.rate:7.0f} {unit}/s, p50 {statistics.median(self.latencies) * 1000:6.1f} "
                f"ms, p99 {percentile(self.latencies, 0.99) * 1000:6.1f} ms")


def timed_pool(fn, items, workers: int) -> Run:
    def one(item):
        t = time.perf_counter()
        units = fn(item)
        return units, time.perf_counter() - t

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        done = list(pool.map(one, items))
    return Run(sum(u for u, _ in done), [s for _, s in done], time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------
# The hub
# ---------------------------------------------------------------------------------------------


def hub_http_hl7(base: str, token: str, messages: list[bytes], clients: int) -> Run:
    def send(message):
        r = hubproc.client(base, token).post("/ingest/sh", content=message, headers=ER7)
        assert b"MSA|AA" in r.content, r.content[:300]
        return 1
    return timed_pool(send, messages, clients)


def hub_mllp(port: int, messages: list[bytes], connections: int) -> Run:
    def send_all(chunk):
        times = []
        with socket.create_connection(("127.0.0.1", port)) as s:
            for m in chunk:
                t = time.perf_counter()
                s.sendall(b"\x0b" + m + b"\x1c\r")
                data = b""
                while not data.endswith(b"\x1c\r"):
                    data += s.recv(65536)
                times.append(time.perf_counter() - t)
                assert b"MSA|AA" in data, data[:300]
        return times

    chunks = [messages[i::connections] for i in range(connections)]
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(connections) as pool:
        times = [t for part in pool.map(send_all, chunks) for t in part]
    return Run(len(times), times, time.perf_counter() - t0)


def hub_zj(base: str, tokens: dict, uploads: list[tuple[str, bytes, int]], clients: int) -> Run:
    def send(item):
        hospital, body, visits = item
        r = hubproc.client(base, tokens[hospital]).post("/ingest/zj", content=body)
        assert r.status_code == 200 and not r.json()["rejected"], r.text[:300]
        return visits
    return timed_pool(send, uploads, clients)


# ---------------------------------------------------------------------------------------------
# The naive process
# ---------------------------------------------------------------------------------------------


@contextmanager
def mappers_without_validation():
    """The mappers build their resources as usual; validation is left to the naive loop."""
    modules = [importlib.import_module(name) for name in MAPPERS]
    saved = [m.validate for m in modules]
    for m in modules:
        m.validate = _unchecked
    try:
        yield
    finally:
        for m, v in zip(modules, saved):
            m.validate = v


def _unchecked(resource: dict) -> dict:
    return resource


class Naive:
    """Parse and build (the mappers), ``model_validate`` each resource, orjson, SQLite WAL with a
    commit every 100 resources."""

    def __init__(self, path: Path):
        from fhir.resources.R4B import get_fhir_model_class

        self.model = get_fhir_model_class
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS resource (type TEXT, id TEXT, content BLOB, "
                        "PRIMARY KEY (type, id))")
        self.pending = 0
        self.db.execute("BEGIN")

    def store(self, resources: list[dict]) -> None:
        for r in resources:
            self.model(r["resourceType"]).model_validate(r)
            self.db.execute("INSERT OR REPLACE INTO resource VALUES (?, ?, ?)",
                            (r["resourceType"], r["id"], orjson.dumps(r)))
            self.pending += 1
            if self.pending >= 100:
                self.db.execute("COMMIT")
                self.db.execute("BEGIN")
                self.pending = 0

    def run(self, items, one) -> Run:
        times = []
        units = 0
        t0 = time.perf_counter()
        with mappers_without_validation():
            for item in items:
                t = time.perf_counter()
                units += one(item)
                times.append(time.perf_counter() - t)
            self.db.execute("COMMIT")
            self.db.execute("BEGIN")
        return Run(units, times, time.perf_counter() - t0)

    def hl7(self, messages: list[bytes]) -> Run:
        from mappers import shanghai_hl7v2 as sh

        def one(message):
            mapped = sh.map_message(message, SH_H)
            assert mapped.ack_code == "AA", mapped.errors
            self.store([r for rec in mapped.result.records for r in _resources(rec)])
            return 1
        return self.run(messages, one)

    def zj(self, uploads: list[tuple[str, bytes, int]]) -> Run:
        from mappers import zhejiang_json as zj

        def one(item):
            hospital, body, visits = item
            result = zj.map_upload(body, hospital)
            assert not result.rejected, result.rejected
            self.store([r for rec in result.records for r in _resources(rec)])
            return visits
        return self.run(uploads, one)


def _resources(record) -> list[dict]:
    """The record's resources and its Patient (an id given here, as the hub's index would)."""
    from mappers.common import make_id

    patient = {**record.patient, "id": make_id("Patient", record.key)}
    return [patient, *record.resources]


# ---------------------------------------------------------------------------------------------


def report(label: str, unit: str, hub: Run, naive: Run) -> None:
    print(f"{label}\n  hub   {hub.describe(unit)}\n  naive {naive.describe(unit)}\n"
          f"  ratio hub/naive {hub.rate / naive.rate:.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=1000, help="per HL7 shape")
    ap.add_argument("--uploads", type=int, default=150)
    ap.add_argument("--visits-per-upload", type=int, default=10)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--database-url", help="the hub's database (default: SQLite in a temp dir)")
    ap.add_argument("--only", choices=("post", "mllp", "zj"), action="append")
    args = ap.parse_args()
    from hub.db import get_engine

    workdir = Path(tempfile.mkdtemp(prefix="yrdhub-traffic-"))
    url = args.database_url or f"sqlite:///{workdir}/hub.db"
    port, mllp_port = free_port(), free_port()
    server = hubproc.start(url, port, mllp_port)
    base = f"http://127.0.0.1:{port}"
    engine = get_engine(url)
    tokens = {h: create_token(engine, "hospital", h) for h in (SH_H, *HOSPITALS)}
    naive = Naive(workdir / "naive.db")
    shapes = args.only or ["post", "mllp", "zj"]
    print(f"hub database: {engine.dialect.name}; naive: SQLite WAL", flush=True)
    try:
        # warm-up: the hub's mapper processes and the naive process's imports
        hub_http_hl7(base, tokens[SH_H], [oru(10_000_000 + n) for n in range(100)], args.clients)
        naive.hl7([oru(10_000_000 + n) for n in range(20)])
        warm = [(h, upload(h, 10_000_000 + i * 10, 10, 5000), 10) for i, h in enumerate(HOSPITALS)]
        hub_zj(base, tokens, warm, len(warm))
        naive.zj(warm)
        messages = [oru(n) for n in range(2 * args.messages)]
        if "post" in shapes:
            part = messages[:args.messages]
            report(f"ORU^R01 (10 OBX), one per POST, {args.clients} clients", "msgs",
                   hub_http_hl7(base, tokens[SH_H], part, args.clients), naive.hl7(part))
        if "mllp" in shapes:
            part = messages[args.messages:]
            report(f"ORU^R01 (10 OBX) over MLLP, {args.connections} connections, one in flight "
                   "each", "msgs", hub_mllp(mllp_port, part, args.connections), naive.hl7(part))
        if "zj" in shapes:
            per = args.visits_per_upload
            uploads = [(HOSPITALS[i % len(HOSPITALS)],
                        upload(HOSPITALS[i % len(HOSPITALS)], i * per, per, 5000), per)
                       for i in range(args.uploads)]
            report(f"Zhejiang uploads of {per} visits, {args.clients} clients", "visits",
                   hub_zj(base, tokens, uploads, args.clients), naive.zj(uploads))
    finally:
        hubproc.stop(server)


if __name__ == "__main__":
    main()
