"""Benchmark of the settlement path: settlements/s and the hub's own added latency.

    python -m bench.settle [--n 3000] [--callers 200] [--latency-ms 200] [--persons 2000]

Starts the four simulated platforms (every call answered after ``--latency-ms``) seeded with
``--persons`` cloned insured persons (so per-person serialisation is not the bottleneck), and a
hub (uvicorn, a SQLite file in a temporary folder) as a subprocess; ``--callers`` concurrent
callers each settle distinct bills. Prints settlements/s and, per settlement, the hub's overhead
= the caller's latency minus the platform time it needed (two calls: 1101 and 2207, each
``--latency-ms``), p50 and p99. The bound is callers / (2 x latency) = 500/s for 200 and 200 ms.
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

import httpx

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
    with its ``case`` (card_no is the certificate: type 03)."""
    source = json.loads((ROOT / "fixtures" / "persons.json").read_text())
    by_psn = {p["psn_no"]: p for p in source["persons"]}
    persons = []
    for template_no in CASES:
        for i in range(per_case):
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


async def run(url: str, toks: dict, persons: list[dict], n: int, callers: int, latency: float) -> None:
    queue: asyncio.Queue = asyncio.Queue()
    for i in range(n):
        queue.put_nowait((persons[i % len(persons)], f"B-{i}"))
    overheads, statuses, resent = [], {}, [0]
    # A client of its own per caller (as 200 hospitals would have; one pool of 200 connections
    # would cost the benchmark a scan of every connection per request), made before the clock
    # starts, sharing one TLS context (each would load the CA bundle: ~20 ms of CPU).
    tls = httpx.create_ssl_context()
    clients = [httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=1), verify=tls)
               for _ in range(callers)]

    async def caller(client: httpx.AsyncClient):
        while not queue.empty():
            person, key = queue.get_nowait()
            province, body = bill(person, key)
            start = time.perf_counter()
            for attempt in range(3):
                try:
                    r = await client.post("/settlement/settle", json=body,
                                          headers={"Authorization": f"Bearer {toks[province]}"})
                    break
                except httpx.TransportError:  # a keep-alive connection closed under us: the same
                    resent[0] += 1            # request_key again is safe (it is idempotent)
                    if attempt == 2:
                        raise
            overheads.append(time.perf_counter() - start - 2 * latency)
            status = r.json().get("status", r.status_code) if r.status_code < 500 else r.status_code
            statuses[status] = statuses.get(status, 0) + 1
    start = time.perf_counter()
    try:
        await asyncio.gather(*(caller(client) for client in clients))
    finally:
        elapsed = time.perf_counter() - start
        for client in clients:
            await client.aclose()
    overheads.sort()
    pct = lambda q: overheads[min(len(overheads) - 1, int(q * len(overheads)))] * 1000  # noqa: E731
    print(f"{n} settlements, {callers} callers, platform {latency * 1000:.0f} ms per call: "
          f"{n / elapsed:.0f} settlements/s; hub overhead p50 {pct(0.50):.1f} ms, p99 {pct(0.99):.1f} ms; "
          f"statuses {statuses}" + (f"; {resent[0]} resent after a transport error" if resent[0] else ""))


def start_sims(persons: Path, latency_ms: int, base_port: int | None = None) -> tuple[subprocess.Popen, dict]:
    """The simulated platforms (asyncio, one loop) in their own process, so that they do not
    share a GIL with the callers or the hub; returns it and the hub's YRDHUB_INSURER_*_URL
    settings. Four consecutive ports from ``base_port`` (default: a free one, tried again
    elsewhere when one of the next three is taken)."""
    from tests.conftest import free_port

    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-m", "settlement.simulator", "--base-port",
                                 str(base_port or free_port()), "--persons", str(persons), "--latency-ms",
                                 str(latency_ms)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
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
    from tests.conftest import free_port

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--callers", type=int, default=200)
    parser.add_argument("--latency-ms", type=int, default=200)
    parser.add_argument("--persons", type=int, default=800)
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
                            args.latency_ms / 1000))
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(10)


if __name__ == "__main__":
    main()
