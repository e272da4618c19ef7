"""Benchmark of the simulated platforms alone: calls/s and their process's CPU per call.

    python -m bench.simulated [--n 5000] [--concurrency 50] [--module settlement.simulated]
                              [--checkout DIR]

Starts ``python -m <module> --keep-alive`` (its own process, so that the load generator does
not share its GIL), warms it with 200 calls, then sends ``--n`` 1101 calls to JS (a person it
does not know: the HTTP layer's cost, not the business logic's) from ``--concurrency`` callers
on kept-alive connections, and prints calls/s and the platforms' CPU (user + system, from
/proc) per call. The platforms' CPU is what they take from the hub in ``bench/settle.py`` (the
same machine's cores), so it is the figure to compare when the HTTP layer changes; run it
against an older checkout's module for the baseline (``--checkout /work/main --module
settlement.simulator``: the hand-written HTTP/1.1 server that ``aiohttp.web`` replaced).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
MESSAGE = {"infno": "1101", "input": {"mdtrt_cert_type": "02", "mdtrt_cert_no": "320102198001010011"}}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load(url: str, n: int, concurrency: int, first: int) -> None:
    gate = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def one(i: int) -> None:
            async with gate, session.post(url, json={**MESSAGE, "msgid": f"B{i}"}) as r:
                await r.read()
        await asyncio.gather(*(one(i) for i in range(first, first + n)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--module", default="settlement.simulated")
    parser.add_argument("--checkout", type=Path, default=ROOT, help="run the module from this folder")
    parser.add_argument("--base-port", type=int, default=9201)
    args = parser.parse_args()
    proc = subprocess.Popen([sys.executable, "-m", args.module, "--base-port", str(args.base_port), "--keep-alive"],
                            cwd=args.checkout, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        urls = dict(proc.stdout.readline().strip().split("=", 1) for _ in range(4))
        url = urls["YRDHUB_INSURER_JS_URL"] + "/api/1101"
        asyncio.run(load(url, 200, args.concurrency, 0))
        cpu, started = cpu_seconds(proc.pid), time.monotonic()
        asyncio.run(load(url, args.n, args.concurrency, 1000))
        cpu, took = cpu_seconds(proc.pid) - cpu, time.monotonic() - started
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"{args.module}: {args.n} calls, {args.concurrency} callers: {args.n / took:.0f} calls/s, "
          f"platforms' CPU {1000 * cpu / args.n:.3f} ms per call; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
