"""``yrdhub simulate`` (the platforms' image's command) serves the four platforms on consecutive
ports with the shipped persons, from a folder that is not the checkout, and stops on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys

import httpx

from settlement.platform import PlatformClient
from tests.support.common import ROOT, free_port


def four_free_ports() -> int:
    """A base port whose next three are free too (tried a few times)."""
    for _ in range(20):
        base = free_port()
        try:
            probes = [socket.create_server(("127.0.0.1", base + i)) for i in range(4)]
        except OSError:
            continue
        for probe in probes:
            probe.close()
        return base
    raise AssertionError("no four consecutive free ports")


async def person_info(urls: dict[str, str]) -> dict:
    """李四 as ZJ's platform knows her (1101, through the hub's own platform client)."""
    async with PlatformClient({k.split("_")[2]: v for k, v in urls.items()}) as client:
        return await client.person_info("330421", "02", "33042119850412002X", year=2024)


def test_simulate_serves_the_shipped_persons_and_stops_on_sigterm(tmp_path):
    base = four_free_ports()
    proc = subprocess.Popen([sys.executable, "-m", "hub.cli", "simulate", "--base-port", str(base)],
                            cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        urls = dict(proc.stdout.readline().strip().split("=", 1) for _ in range(4))
        assert urls["YRDHUB_INSURER_ZJ_URL"] == f"http://127.0.0.1:{base + 2}"
        assert httpx.get(f"http://127.0.0.1:{base + 3}/_sim/health", timeout=10).json()["province"] == "AH"
        info = asyncio.run(person_info(urls))
        assert info["baseinfo"]["psn_name"] == "李四", info
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=15)
    assert code == 0 and "Traceback" not in proc.stderr.read()
