"""A clean death: the hub's mapper processes and the multiprocessing resource tracker end with
the hub, whether it is killed outright (SIGKILL) or asked to stop (SIGTERM, then exit 0)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import psutil
import pytest

from tests.support.common import ROOT
from tests.support.processes import alive, mapper_workers, outlivers, resource_trackers, serve

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="process families are read from Linux's /proc")

# Deadlines, not expectations: the kernel ends the workers at once, the watcher within a second.
GONE_WITHIN = 20.0


@pytest.fixture()
def served(tmp_path):
    """``yrdhub serve`` with two mapper processes; whatever a failing test leaves is killed."""
    hub = serve(tmp_path, map_workers=2)
    family = hub.family()
    yield hub
    if hub.process.poll() is None:
        hub.process.kill()
        hub.process.wait()
    outlivers(family, 0)


def test_sigkill_of_the_hub_ends_its_workers_and_the_resource_tracker(served):
    family = served.family()
    assert len(mapper_workers(family)) == 2 and len(resource_trackers(family)) == 1
    served.process.kill()
    assert served.process.wait(30) == -signal.SIGKILL
    assert outlivers(family, GONE_WITHIN) == []


def test_sigterm_stops_the_hub_and_all_its_children_with_exit_0(served):
    family = served.family()
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(GONE_WITHIN) == 0
    assert outlivers(family, GONE_WITHIN) == []
    # yrdhub serve gave uvicorn the hub's log configuration: its lines are JSON too.
    lines = [json.loads(line) for line in served.log.read_text("utf-8").splitlines()]
    loggers = {line["logger"] for line in lines}
    assert {"uvicorn.error", "uvicorn.access"} <= loggers
    assert any(line["event"] == "Application shutdown complete." for line in lines)


WATCHED_ORPHAN = """
import multiprocessing, os, sys
from hub.workers import _watch_parent

if __name__ == "__main__":
    child = multiprocessing.get_context("spawn").Process(target=_watch_parent, args=(os.getpid(),))
    child.start()
    print(child.pid, flush=True)
    sys.stdin.read()
"""


def test_without_the_kernel_s_help_a_worker_notices_its_parent_is_gone():
    """The fallback where PR_SET_PDEATHSIG is not had: the parent-pid watch alone."""
    parent = subprocess.Popen([sys.executable, "-c", WATCHED_ORPHAN], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        child = psutil.Process(int(parent.stdout.readline()))
        family = psutil.Process(parent.pid).children(recursive=True)
        assert child in family and alive([child])
    finally:
        parent.kill()
        parent.wait()
    assert outlivers(family, GONE_WITHIN) == []
