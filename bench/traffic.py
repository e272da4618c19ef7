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

Prints for each shape: messages/s (visits/s), p50/p99 latency, and the ratio hub/naive; then
the CPU time each side spent per unit (the hub's process and its mapper processes; the naive
process) and the hub's writer (requests per commit). On a machine shared with other work the
CPU figures say more than the rates: two free cores give the hub at most 2 / its CPU per unit.

    python -m bench.traffic [--messages 1000] [--uploads 150] [--database-url URL]
                            [--profile DIR]

``--profile DIR`` records the hub (and its mapper processes) with py-spy while each shape runs
and prints where its time went: by process and thread, then the costliest functions.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import importlib
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support import hubproc  # noqa: E402
from bench.ingest_formats import SH_H, oru  # noqa: E402
from bench.zj_load import HOSPITALS, upload  # noqa: E402
from hub.auth import create_token  # noqa: E402
from tests.support.common import free_port  # noqa: E402

ER7 = {"Content-Type": "x-application/hl7-v2+er7"}
MAPPERS = ("mappers.shanghai_hl7v2", "mappers.zhejiang_json")


def percentile(times: list[float], p: float) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


class Run:
    """Units done, their latencies (s), the wall time and the CPU time of one side of a shape."""

    def __init__(self, units: int, latencies: list[float], seconds: float, cpu: float = 0.0):
        self.units, self.latencies, self.seconds, self.cpu = units, latencies, seconds, cpu

    @property
    def rate(self) -> float:
        return self.units / self.seconds

    def describe(self, unit: str) -> str:
        return (f"{self.rate:7.0f} {unit}/s, p50 {statistics.median(self.latencies) * 1000:6.1f} "
                f"ms, p99 {percentile(self.latencies, 0.99) * 1000:6.1f} ms, CPU "
                f"{self.cpu / self.units * 1000:5.2f} ms/{unit.rstrip('s')}")


def tree_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds used so far by ``pid`` and by its living children (the mapper processes)."""
    import psutil

    root = psutil.Process(pid)
    own, children = 0.0, 0.0
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        if p.pid == pid:
            own += t.user + t.system
        else:
            children += t.user + t.system
    return own, children


@contextmanager
def hub_cpu(pid: int, into: list):
    """Appends the CPU seconds the hub's process and its mapper processes used during the
    block to ``into`` (two figures)."""
    before = tree_cpu(pid)
    yield
    after = tree_cpu(pid)
    into.extend([after[0] - before[0], after[1] - before[1]])


def writer_counts(base: str) -> tuple[float, float]:
    """(commits, requests) the hub's writer has committed so far (from ``/metrics``)."""
    import httpx

    commits = items = 0.0
    for line in httpx.get(base + "/metrics", timeout=30).text.splitlines():
        if line.startswith("yrdhub_writer_commits_total "):
            commits = float(line.split()[1])
        elif line.startswith("yrdhub_writer_items_per_commit_sum "):
            items = float(line.split()[1])
    return commits, items


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
        t0, c0 = time.perf_counter(), time.process_time()
        with mappers_without_validation():
            for item in items:
                t = time.perf_counter()
                units += one(item)
                times.append(time.perf_counter() - t)
            self.db.execute("COMMIT")
            self.db.execute("BEGIN")
        return Run(units, times, time.perf_counter() - t0, time.process_time() - c0)

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
# Profiles
# ---------------------------------------------------------------------------------------------


@contextmanager
def profiled(pid: int, out: Path | None):
    """py-spy on ``pid`` and its children while the block runs; a summary printed after."""
    if out is None:
        yield
        return
    spy = subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--subprocesses", "--rate",
                            "100", "--format", "raw", "--nonblocking", "-o", str(out)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)
    if out.exists():
        summarize(out)


def summarize(raw: Path, top: int = 18) -> None:
    """Samples by process/thread, and the functions with most samples below them (inclusive)
    among the hub's own code, SQLAlchemy, the drivers and validation."""
    places, functions, total = collections.Counter(), collections.Counter(), 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames, n = stack.split(";"), int(n)
        total += n
        if any("spawn_main" in f for f in frames[:2] if f.startswith("process ")):
            places["mapper processes"] += n
        else:
            places["hub process / " + _thread_of(frames)] += n
        for name in {f for f in frames[1:] if _interesting(f)}:
            functions[name] += n
    print(f"  profile {raw} ({total} samples at 100/s)")
    for place, n in places.most_common():
        print(f"    {n / total:6.1%}  {place}")
    for name, n in functions.most_common(top):
        print(f"    {n / total:6.1%}  {name}")


def _thread_of(frames: list[str]) -> str:
    text = ";".join(frames)
    for marker, name in (("hub/writer.py", "writer thread"), ("_worker (concurrent", "thread"),
                         ("asyncio/runners.py", "event loop")):
        if marker in text:
            return name
    return "other"


def _interesting(frame: str) -> bool:
    return any(k in frame for k in ("hub/", "mappers/", "sqlalchemy/engine/base.py",
                                    "execute (", "commit (", "model_validate", "sqlite3",
                                    "uvicorn/protocols", "fastapi/routing.py"))


# ---------------------------------------------------------------------------------------------


def report(label: str, unit: str, hub: Run, naive: Run, writes: tuple[float, float]) -> None:
    commits, items = writes
    print(f"{label}\n  hub   {hub.describe(unit)}\n  naive {naive.describe(unit)}\n"
          f"  ratio hub/naive {hub.rate / naive.rate:.2f}; CPU per {unit.rstrip('s')} "
          f"naive/hub {naive.cpu / naive.units / (hub.cpu / hub.units):.2f}; "
          f"writer: {items / max(commits, 1):.1f} requests per commit", flush=True)
    own, mappers = (c / hub.units * 1000 for c in hub.cpu_split)
    print(f"  hub CPU per {unit.rstrip('s')}: {own:.2f} ms in the hub process (HTTP/MLLP, "
          f"writer), {mappers:.2f} ms in the mapper processes", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=1000, help="per HL7 shape")
    ap.add_argument("--uploads", type=int, default=150)
    ap.add_argument("--visits-per-upload", type=int, default=10)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--database-url", help="the hub's database (default: SQLite in a temp dir)")
    ap.add_argument("--only", choices=("post", "mllp", "zj"), action="append")
    ap.add_argument("--profile", type=Path, help="a folder for py-spy profiles of the hub")
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
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)

    def measured(shape: str, send, *send_args) -> tuple[Run, tuple[float, float]]:
        """The hub's side of a shape: its Run (with the hub's CPU) and the writer's counts."""
        cpu: list[float] = []
        before = writer_counts(base)
        out = args.profile / f"{shape}.raw" if args.profile else None
        with profiled(server.pid, out), hub_cpu(server.pid, cpu):
            run = send(*send_args)
        after = writer_counts(base)
        run.cpu, run.cpu_split = sum(cpu), cpu
        return run, (after[0] - before[0], after[1] - before[1])
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
            hub, writes = measured("post", hub_http_hl7, base, tokens[SH_H], part, args.clients)
            report(f"ORU^R01 (10 OBX), one per POST, {args.clients} clients", "msgs", hub,
                   naive.hl7(part), writes)
        if "mllp" in shapes:
            part = messages[args.messages:]
            hub, writes = measured("mllp", hub_mllp, mllp_port, part, args.connections)
            report(f"ORU^R01 (10 OBX) over MLLP, {args.connections} connections, one in flight "
                   "each", "msgs", hub, naive.hl7(part), writes)
        if "zj" in shapes:
            per = args.visits_per_upload
            uploads = [(HOSPITALS[i % len(HOSPITALS)],
                        upload(HOSPITALS[i % len(HOSPITALS)], i * per, per, 5000), per)
                       for i in range(args.uploads)]
            hub, writes = measured("zj", hub_zj, base, tokens, uploads, args.clients)
            report(f"Zhejiang uploads of {per} visits, {args.clients} clients", "visits", hub,
                   naive.zj(uploads), writes)
    finally:
        hubproc.stop(server)


if __name__ == "__main__":
    main()
