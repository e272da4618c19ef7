"""Benchmark of the settlement path: settlements/s and the hub's own added latency.

    python -m bench.settle [--n 3000] [--callers 200] [--latency-ms 200] [--persons 800] [--rate R]
                           [--warmup 2] [--processes 1] [--database-url URL]

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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

from tests.support.bills import CASES, bill, make_persons, start_hub, tokens  # noqa: F401 (bench.lookups too)

ROOT = Path(__file__).resolve().parent.parent
async def feed(queue: asyncio.Queue, persons: list[dict], n: int, callers: int, rate: float | None,
               prefix: str = "B") -> None:
    """Bills into ``queue``: all at once (closed loop: each caller sends its next bill as soon as
    it has the answer to the last), or with ``rate`` one every 1/rate s (open loop: bills arrive
    at that rate, whatever the hub's speed, and wait for a free caller); then one stop per caller."""
    start = time.perf_counter()
    for i in range(n):
        if rate:
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
        queue.put_nowait((persons[i % len(persons)], f"{prefix}-{i}"))
    for _ in range(callers):
        queue.put_nowait(None)


async def run(url: str | list[str], toks: dict, persons: list[dict], n: int, callers: int,
              latency: float, pids: dict[str, int], rate: float | None = None, warmup: float = 2.0,
              prefix: str = "B") -> None:
    """``url``: the hub, or several hubs on one database (callers take turns between them)."""
    queue: asyncio.Queue = asyncio.Queue()
    overheads, done_at, statuses, resent = [], [], {}, [0]
    urls = [url] if isinstance(url, str) else url
    # One aiohttp session per hub for all its callers (a connection each): the load generator
    # shares the two cores with the hub and the platforms, so it should cost as little CPU as it
    # can (httpx cost it 0.9 ms per bill, this 0.4), and its own event-loop delays count as hub
    # overhead.
    sessions = [aiohttp.ClientSession(base_url=u, connector=aiohttp.TCPConnector(limit=callers),
                                      timeout=aiohttp.ClientTimeout(total=60)) for u in urls]

    async def caller(offset: float, session: aiohttp.ClientSession):
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
    for k, session in enumerate(sessions):
        await open_connections(session, len(range(k, callers, len(sessions))))
    cpu0 = {name: cpu_split(pid) for name, pid in pids.items()}
    own0 = time.process_time()
    began = start = time.perf_counter()
    try:
        offsets = [0.0] * callers if rate else [i * 2 * latency / callers for i in range(callers)]
        await asyncio.gather(feed(queue, persons, n, callers, rate, prefix),
                             *(caller(offset, sessions[k % len(sessions)])
                               for k, offset in enumerate(offsets)))
    finally:
        elapsed = time.perf_counter() - start
        split = {name: [now - then for now, then in zip(cpu_split(pid), cpu0[name])] for name, pid in pids.items()}
        cpu = {name: user + system for name, (user, system) in split.items()}
        cpu["callers"] = time.process_time() - own0
        for session in sessions:
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
    hubs = [name for name in split if name.startswith("hub")]
    print("CPU per settlement: " + ", ".join(f"{name} {seconds / n * 1000:.2f} ms" for name, seconds in cpu.items())
          + "".join(f" ({h}: user {split[h][0] / n * 1000:.2f}, system {split[h][1] / n * 1000:.2f})"
                    for h in hubs))


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
        proc = subprocess.Popen([sys.executable, "-m", "settlement.simulated", "--base-port",
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
    parser.add_argument("--processes", type=int, default=1,
                        help="hub processes on the one database (callers take turns between them)")
    parser.add_argument("--database-url", default=None,
                        help="the hubs' database (e.g. PostgreSQL); default: a SQLite file in a "
                             "temporary folder. Bills of this run carry keys of their own, so a "
                             "database used before is fine")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = args.database_url or Path(tmp) / "hub.db"
        persons = make_persons(Path(tmp) / "persons.json", args.persons // len(CASES))
        sims, sims_env = start_sims(Path(tmp) / "persons.json", args.latency_ms)
        procs = [sims]
        prefix = f"B{int(time.time())}"
        try:
            ports = [free_port() for _ in range(args.processes)]
            hubs = [start_hub(db, sims_env, port) for port in ports]
            procs[:0] = hubs
            toks = tokens(db)
            pids = {f"hub{k + 1}" if len(hubs) > 1 else "hub": h.pid for k, h in enumerate(hubs)}
            urls = [f"http://127.0.0.1:{port}" for port in ports]
            asyncio.run(run(urls, toks, persons, args.n, args.callers, args.latency_ms / 1000,
                            {**pids, "platforms": sims.pid}, args.rate, args.warmup, prefix))
            for url in urls:
                print(hub_side(url))
            print(exactly_once(db, sims_env, prefix, args.n))
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(10)


HUB_CHECKS = {
    "bills of this run recorded": "SELECT count(*) FROM settlement WHERE request_key LIKE :p",
    "bills recorded more than once (hospital, key)":
        "SELECT count(*) FROM (SELECT fixmedins_code, request_key FROM settlement WHERE "
        "request_key LIKE :p GROUP BY fixmedins_code, request_key HAVING count(*) > 1) AS d",
    "settled": "SELECT count(*) FROM settlement WHERE request_key LIKE :p AND state = 'settled'",
    "not final": "SELECT count(*) FROM settlement WHERE request_key LIKE :p AND state IN "
                 "('received', 'sending', 'reversing', 'voiding')",
}


def exactly_once(db: Path | str, sims_env: dict, prefix: str, n: int) -> str:
    """After the run: what the hub recorded (the queries are printed with their answers) and
    what the platforms committed: a settlement (2207) committed twice for one setl_id on a
    platform, or settled at the hub and absent from the platform, would be a double or a lost
    settlement."""
    import httpx
    from sqlalchemy import text

    from hub.db import make_engine

    engine = make_engine(db if isinstance(db, str) else f"sqlite:///{db}")
    lines = []
    with engine.connect() as conn:
        for name, sql in HUB_CHECKS.items():
            found = conn.execute(text(sql), {"p": f"{prefix}-%"}).scalar_one()
            lines.append(f"  {name}: {found}    [{sql}]")
        settled = {r[0] for r in conn.execute(text(
            "SELECT setl_id FROM settlement WHERE request_key LIKE :p AND state = 'settled'"),
            {"p": f"{prefix}-%"})}
    engine.dispose()
    commits: dict[str, int] = {}
    for url in sims_env.values():
        for entry in httpx.get(f"{url.rstrip('/')}/_sim/ledger", timeout=30).json():
            if entry.get("infno") == "2207" and entry.get("setl_id") in settled:
                commits[entry["setl_id"]] = commits.get(entry["setl_id"], 0) + 1
    twice = sum(1 for c in commits.values() if c > 1)
    missing = len(settled - set(commits))
    lines.append(f"  platforms: 2207 committed twice for one setl_id: {twice}; settled at the hub "
                 f"but not on its platform: {missing} (GET /_sim/ledger of each)")
    return f"exactly once ({n} bills sent, keys {prefix}-*):\n" + "\n".join(lines)

if __name__ == "__main__":
    main()
