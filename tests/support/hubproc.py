"""The hub as a separate process (``yrdhub serve``) for benchmarks and tests, so the load
generator does not share its interpreter (and its GIL) with the hub it measures."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx

from tests.support.common import ROOT


def start(database_url: str, port: int, mllp_port: int = 0, extra_env: dict | None = None
          ) -> subprocess.Popen:
    """``yrdhub serve`` on ``port``; returns once ``/healthz`` answers (or raises). Its log
    (stderr) goes to the file ``BENCH_HUB_LOG`` names, if set (appended), else nowhere."""
    env = {**os.environ, "YRDHUB_DATABASE_URL": database_url, "YRDHUB_MLLP_PORT": str(mllp_port),
           "YRDHUB_LOG_LEVEL": "WARNING", **(extra_env or {})}
    with open(os.environ.get("BENCH_HUB_LOG", os.devnull), "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "hub.cli", "serve", "--port", str(port)],
                                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
        if proc.poll() is not None:
            raise RuntimeError("the hub exited while starting")
    proc.kill()
    raise RuntimeError("the hub did not start in 60 s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


_local = None


def client(base: str, token: str) -> httpx.Client:
    """A client per thread and token, kept: creating an httpx.Client builds an SSL context
    (tens of milliseconds), which a benchmark must not count as the hub's time."""
    import threading

    global _local
    if _local is None:
        _local = threading.local()
    clients = _local.__dict__.setdefault("clients", {})
    if (base, token) not in clients:
        clients[(base, token)] = httpx.Client(base_url=base, timeout=600,
                                              headers={"Authorization": f"Bearer {token}"})
    return clients[(base, token)]
