"""A real ``yrdhub serve`` in a child process, and the processes it leaves behind (psutil)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from tests.support.common import ROOT, free_port
from tests.support.waiting import wait_until


@dataclass
class ServedHub:
    process: subprocess.Popen
    url: str
    log: Path  # its stderr and stdout: the log lines

    def family(self) -> list[psutil.Process]:
        """Every process below the hub, as it stands now."""
        return psutil.Process(self.process.pid).children(recursive=True)


def serve(tmp_path: Path, map_workers: int = 2, timeout: float = 60.0,
          database_url: str | None = None, mllp_port: int = 0,
          env: dict | None = None) -> ServedHub:
    """``python -m hub.cli serve`` (this checkout) on ``database_url`` (default: a temporary
    SQLite file), MLLP on ``mllp_port`` (0: off), with ``env`` added to its environment, once
    it answers ``/healthz`` and all its mapper processes and the resource tracker have started."""
    port = free_port()
    env = {**os.environ, "YRDHUB_DATABASE_URL": database_url or f"sqlite:///{tmp_path}/hub.db",
           "YRDHUB_MLLP_PORT": str(mllp_port), "YRDHUB_MAP_WORKERS": str(map_workers),
           "YRDHUB_LOG_JSON": "true", "YRDHUB_LOG_LEVEL": "INFO", **(env or {})}
    log = tmp_path / "hub.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "hub.cli", "serve", "--port", str(port)],
                                   cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    hub = ServedHub(process, f"http://127.0.0.1:{port}", log)
    try:
        wait_until(lambda: _answers(hub), timeout, "the hub answering /healthz")
        wait_until(lambda: len(mapper_workers(hub.family())) == map_workers
                   and resource_trackers(hub.family()), timeout, "the mapper processes starting")
    except BaseException:
        process.kill()
        process.wait()
        raise
    return hub


def _answers(hub: ServedHub) -> bool:
    if hub.process.poll() is not None:
        raise AssertionError(f"the hub exited ({hub.process.returncode}): {hub.log.read_text()}")
    try:
        return httpx.get(hub.url + "/healthz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def _running(processes: list[psutil.Process], marker: str) -> list[psutil.Process]:
    return [p for p in processes if marker in " ".join(_cmdline(p))]


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def mapper_workers(processes: list[psutil.Process]) -> list[psutil.Process]:
    return _running(processes, "multiprocessing.spawn import spawn_main")


def resource_trackers(processes: list[psutil.Process]) -> list[psutil.Process]:
    return _running(processes, "multiprocessing.resource_tracker import main")


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those still running (an exited child that nobody reaped yet, a zombie, has ended)."""
    survivors = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                survivors.append(process)
        except psutil.NoSuchProcess:
            pass
    return survivors


def outlivers(processes: list[psutil.Process], timeout: float) -> list[str]:
    """Poll until none of ``processes`` runs or ``timeout`` passes; those still running then are
    killed (a failing test leaves no orphans behind) and described, pid and command line."""
    try:
        wait_until(lambda: not alive(processes), timeout, "every process ending")
    except AssertionError:
        pass
    survivors = alive(processes)
    described = [f"{p.pid}: {' '.join(_cmdline(p))[:120]}" for p in survivors]
    for process in survivors:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    return described
