"""Benchmark of the settlement path: settlements/s and the hub's own added latency.

    python -m bench.settle [--n 3000] [--callers 200] [--latency-ms 200] [--persons 800] [--rate R]
                           [--warmup 2]

Starts the four simulated platforms (every call answered after ``--latency-ms``) seeded with
``--persons`` cloned insured persons (so per-person serialisation is not the bottleneck), and a
hub (``yrdhub serve``, a SQLite file in a temporary folder) as a subprocess; ``--callers``
concurrent callers settle distinct bills. Without ``--rate`` the loop is closed (each caller
sends its next bill when it has the last answer: the most the hub sustains); with it, bills
arrive at that rate (open loop) and wait for a free caller. Callers start spread over one round
trip, on connections opened before the clock starts. Prints settlements/s (over the whole run, and from the first answer to the last: the
rate sustained, without the first and last round trip) and, per settlement, the hub's overhead =
the caller's latency minus the platform time it needed (two calls: 1101 and 2207, each
``--latency-ms``), p50 and p99, over every bill and over those sent after ``--warmup``
seconds (the first connections to the platforms and cold caches are the first seconds' cost,
not a running hub's); then the CPU each process spent per settlement; then the hub's
own view from its /metrics (time in the settle handler, the wait for each platform call, how
often its event loop woke late). The bound is callers / (2 x latency) = 500/s for 200 and 200 ms.
All three processes share this machine's cores, so the overhead includes the platforms' and the
callers' own scheduling delays. ``BENCH_HUB_LOG=file`` keeps the hub's log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parent.parent
# Template person (psn_no of fixtures/persons.json) -> (hospital, token province, insuplc_admdvs).
CASES = {
    "33000012345678": ("H31011800012", "SH", "330421"),  # ZJ, demonstration zone, at Qingpu
    "34000040000001": ("H31010100001", "SH", "340104"),  # AH, resident filing for Shanghai
    "32000030000002": ("H31011800012", "SH", "320509"),  # JS, demonstration zone, at Qingpu
    "31000020000001": ("H33010600001", "ZJ", "310104"),  # SH, resident filing for Hangzhou
}


def make_persons(path: Path, per_case: int) -> list[dict]:
    """Write ``per_case`` clones of each CASES person to ``path``; returns the clones, each
    with its ``case`` (card_no is the certificate: type 03), the cases taking turns: bills of
    the four insured provinces arrive mixed, as they would, not a province at a time."""
    source = json.loads((ROOT / "fixtures" / "persons.json").read_text())
    by_psn = {p["psn_no"]: p for p in source["persons"]}
    persons = []
    for i in range(per_case):
        for template_no in CASES:
            clone = {k: v for k, v in by_psn[template_no].items() if k != "note"}
            clone.update(psn_no=f"{template_no[:6]}9{i:07d}", card_no=f"C{template_no[:2]}{i:07d}", evoucher=[])
            clone["case"] = template_no
            persons.append(clone)
    path.write_text(json.dumps({"about": "bench clones", "persons": persons}, ensure_ascii=False))
    return persons


def bill(person: dict, key: str) -> tuple[str, dict]:
    """(token province, settle body) of one outpatient bill of ``person``."""
    hospital, province, insuplc = CASES[person["case"]]
    return province, {
        "request_key": key, "fixmedins_code": hospital, "mdtrt_id": f"MZ-{key}", "mdtrt_cert_type": "03",
        "mdtrt_cert_no": person["card_no"], "insuplc_admdvs": insuplc, "insutype": "310",
        "visit_type": "outpatient", "visit_time": "2024-03-15T09:30:00+08:00", "use_personal_account": True,
        "lines": [{"med_list_codg": "XJ01CAA040A001", "cnt": "1", "pric": "18.60", "det_item_fee_sumamt": "18.60"}]}


def start_hub(db_path: Path, sims_env: dict, port: int, extra_env: dict | None = None) -> subprocess.Popen:
    """The hub as a subprocess on a SQLite file (``bench.hubproc``); waits for /healthz."""
    from bench import hubproc

    return hubproc.start(f"sqlite:///{db_path}", port, 0,
                         {**sims_env, "YRDHUB_MAP_WORKERS": "0", **(extra_env or {})})


def tokens(db_path: Path) -> dict[str, str]:
    from hub.auth import create_token
    from hub.db import make_engine

    engine = make_engine(f"sqlite:///{db_path}")
    out = {p: create_token(engine, "insurer", p) for p in ("SH", "JS", "ZJ", "AH")}
    out["admin"] = create_token(engine, "admin", None)
    engine.dispose()
    return out


async def feed(queue: asyncio.Queue, persons: list[dict], n: int, callers: int, rate: float | None) -> None:
    """Bills into ``queue``: all at once (closed loop: each caller sends its next bill as soon as
    it has the answer to the last), or with ``rate`` one every 1/rate s (open loop: bills arrive
    at that rate, whatever the hub's speed, and wait for a free caller); then one stop per caller."""
    start = time.perf_counter()
    for i in range(n):
        if rate:
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
        queue.put_nowait((persons[i % len(persons)], f"B-{i}"))
    for _ in range(callers):
        queue.put_nowait(None)


async def run(url: str, toks: dict, persons: list[dict], n: int, callers: int, latency: float,
              pids: dict[str, int], rate: float | None = None, warmup: float = 2.0) -> None:
    queue: asyncio.Queue = asyncio.Queue()
    overheads, done_at, statuses, resent = [], [], {}, [0]
    # One aiohttp session for all callers (a connection each): the load generator shares the
    # two cores with the hub and the platforms, so it should cost as little CPU as it can (httpx
    # cost it 0.9 ms per bill, this 0.4), and its own event-loop delays count as hub overhead.
    session = aiohttp.ClientSession(base_url=url, connector=aiohttp.TCPConnector(limit=callers),
                                    timeout=aiohttp.ClientTimeout(total=60))

    async def caller(offset: float):
        # Callers start spread over one round trip (2 platform calls), as independent hospitals
        # would: started together, every caller's bill would reach the hub in the same instant,
        # round after round, and the p99 would measure that artificial wave.
        await asyncio.sleep(offset)
        while (item := await queue.get()) is not None:
            person, key = item
            province, body = bill(person, key)
            start = time.perf_counter()
            for attempt in range(3):
                try:
                    async with session.post("/settlement/settle", data=orjson.dumps(body), headers={
                            "Authorization": f"Bearer {toks[province]}", "Content-Type": "application/json"}) as r:
                        status, answer = r.status, await r.read()
                    break
                except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError):  # a keep-alive connection
                    # closed under us (the hub closes one idle for 5 s):
                    resent[0] += 1  # the same request_key again is safe
                    if attempt == 2:
                        raise
            done_at.append(time.perf_counter())
            overheads.append((start - began, done_at[-1] - start - 2 * latency))
            status = orjson.loads(answer).get("status", status) if status < 500 else status
            statuses[status] = statuses.get(status, 0) + 1
    await open_connections(session, callers)
    cpu0 = {name: cpu_split(pid) for name, pid in pids.items()}
    own0 = time.process_time()
    began = start = time.perf_counter()
    try:
        offsets = [0.0] * callers if rate else [i * 2 * latency / callers for i in range(callers)]
        await asyncio.gather(feed(queue, persons, n, callers, rate), *(caller(offset) for offset in offsets))
    finally:
        elapsed = time.perf_counter() - start
        split = {name: [now - then for now, then in zip(cpu_split(pid), cpu0[name])] for name, pid in pids.items()}
        cpu = {name: user + system for name, (user, system) in split.items()}
        cpu["callers"] = time.process_time() - own0
        await session.close()
    everything = sorted(o for _, o in overheads)
    steady = sorted(o for sent, o in overheads if sent >= warmup)
    pct = lambda q, xs=everything: xs[min(len(xs) - 1, int(q * len(xs)))] * 1000 if xs else float("nan")  # noqa: E731
    print(f"{n} settlements, {callers} callers, " + (f"offered {rate:.0f}/s, " if rate else "closed loop, ")
          + f"platform {latency * 1000:.0f} ms per call: "
          f"{n / elapsed:.0f} settlements/s (first to last answer: {(n - 1) / (done_at[-1] - done_at[0]):.0f}/s); hub overhead p50 {pct(0.50):.1f} ms, p99 {pct(0.99):.1f} ms, "
          f"of the bills sent after the first {warmup:g} s ({len(steady)}): p50 {pct(0.5, steady):.1f} ms, "
          f"p99 {pct(0.99, steady):.1f} ms; "
          f"statuses {statuses}" + (f"; {resent[0]} resent after a transport error" if resent[0] else ""))
    print("CPU per settlement: " + ", ".join(f"{name} {seconds / n * 1000:.2f} ms" for name, seconds in cpu.items())
          + f" (hub: user {split['hub'][0] / n * 1000:.2f}, system {split['hub'][1] / n * 1000:.2f})")


async def open_connections(session: aiohttp.ClientSession, n: int) -> None:
    """Open the callers' ``n`` keep-alive connections to the hub before the clock starts (as
    wrk and h2load do): the insurance platforms that call the hub keep theirs open, so the
    hub's accepting them is not a settlement's latency. The hub's own connections to the
    platforms are not opened ahead: those the first seconds pay for (``--warmup``)."""
    async def one():  # any request opens one; this one (nothing at /) is the cheapest: a 404
        async with session.get("/") as r:
            await r.read()
    await asyncio.gather(*(one() for _ in range(n)))


def hub_side(url: str) -> str:
    """The hub's own view (its /metrics): the mean time a settle request spent in its handler
    and the mean wait for each platform call (what the caller saw beyond the handler is outside
    it: sockets, the hub's loop before and after); and how often its event loop woke a sleeper
    late by more than 10 and 25 ms (a late loop delays every request and platform answer)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    sums: dict[str, float] = {}
    lag: dict[float, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for sample in family.samples:
            name, labels = sample.name, sample.labels
            if name == "yrdhub_event_loop_lag_seconds_bucket":
                lag[float(labels["le"])] = sample.value
            elif name.endswith(("_sum", "_count")) and (labels.get("route") == "/settlement/settle" or "infno" in labels):
                key = (labels["infno"] if "infno" in labels else "settle", name.rsplit("_", 1)[1])
                sums[key] = sums.get(key, 0.0) + sample.value
    mean = lambda what: sums.get((what, "sum"), 0.0) / max(sums.get((what, "count"), 0.0), 1) * 1000  # noqa: E731
    wakes = lag.get(float("inf"), 0.0)
    late = lambda le: int(wakes - lag.get(le, wakes))  # noqa: E731
    return (f"hub side: settle handler mean {mean('settle'):.1f} ms; platform calls mean 1101 {mean('1101'):.1f} ms, "
            f"2207 {mean('2207'):.1f} ms; loop wake-ups {int(wakes)}, late > 10 ms {late(0.01)}, > 25 ms {late(0.025)}, "
            f"> 50 ms {late(0.05)}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc)."""
    user, system = cpu_split(pid)
    return user + system


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of process ``pid`` so far (Linux /proc)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / os.sysconf("SC_CLK_TCK"), int(fields[12]) / os.sysconf("SC_CLK_TCK")


def start_sims(persons: Path, latency_ms: int, base_port: int | None = None) -> tuple[subprocess.Popen, dict]:
    """The simulated platforms (asyncio, one loop) in their own process, so that they do not
    share a GIL with the callers or the hub; returns it and the hub's YRDHUB_INSURER_*_URL
    settings. Four consecutive ports from ``base_port`` (default: a free one, tried again
    elsewhere when one of the next three is taken)."""
    from tests.support.common import free_port

    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-m", "settlement.simulator", "--base-port",
                                 str(base_port or free_port()), "--persons", str(persons), "--latency-ms",
                                 str(latency_ms), "--keep-alive"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True)
        lines = [proc.stdout.readline().strip() for _ in range(4)]
        if all("=" in line for line in lines):
            return proc, dict(line.split("=", 1) for line in lines)
        proc.kill()
        proc.wait()
        if base_port:
            break
    raise RuntimeError("the simulated platforms did not start")


def main() -> None:
    from hub.cli import tune_gc
    from tests.support.common import free_port

    tune_gc()  # the load generator's own collector pauses are not the hub's latency
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--callers", type=int, default=200)
    parser.add_argument("--latency-ms", type=int, default=200)
    parser.add_argument("--persons", type=int, default=800)
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="seconds at the start whose bills are left out of the second pair of "
                             "percentiles (the hub's first connections to the platforms, cold caches)")
    parser.add_argument("--rate", type=float, default=None,
                        help="offer bills at this rate (open loop); default: as fast as the callers go")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        persons = make_persons(Path(tmp) / "persons.json", args.persons // len(CASES))
        sims, sims_env = start_sims(Path(tmp) / "persons.json", args.latency_ms)
        procs = [sims]
        try:
            port = free_port()
            procs.insert(0, start_hub(Path(tmp) / "hub.db", sims_env, port))
            toks = tokens(Path(tmp) / "hub.db")
            asyncio.run(run(f"http://127.0.0.1:{port}", toks, persons, args.n, args.callers,
                            args.latency_ms / 1000, {"hub": procs[0].pid, "platforms": sims.pid}, args.rate,
                            args.warmup))
            print(hub_side(f"http://127.0.0.1:{port}"))
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(10)


if __name__ == "__main__":
    main()
