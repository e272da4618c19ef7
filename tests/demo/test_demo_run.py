"""``yrdhub demo`` as a person runs it: started from a folder that is not the checkout, it tells
each step of the story, says it is ready, and a terminal's Ctrl-C (SIGINT to its whole process
group) stops it at once: exit 0, no traceback, no process left behind."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.common import ROOT, free_port
from tests.support.portal import session

READY_WITHIN = 90  # seconds; generous for a loaded machine (the demo itself takes a few)


class Demo:
    """The demo in its own process group (as a terminal runs a foreground command), its stdout
    read line by line by a thread so a test can wait for a line with a deadline."""

    def __init__(self, cwd: Path):
        env = dict(os.environ, PYTHONPATH=str(ROOT), YRDHUB_MLLP_PORT="0", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "hub.cli", "demo", "--port", str(free_port())],
                                     cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.out: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.out):
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                self.kill()
                pytest.fail(f"no {text!r} line; stdout: {self.out}; stderr: {self.proc.stderr.read()[-3000:]}")
            self.out.append(line)

    def group(self) -> list[int]:
        """Every process still in the demo's process group (children and grandchildren too)."""
        left = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == self.proc.pid and fields[0] != "Z":  # pgrp, not a zombie
                left.append(int(stat.parent.name))
        return left

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    running = Demo(tmp_path_factory.mktemp("elsewhere"))
    running.wait_for("yrdhub demo ready", READY_WITHIN)
    yield running
    running.kill()


def test_the_summary_names_each_step(demo):
    text = "\n".join(demo.out)
    assert "Records: 13 uploads from 4 provinces' hospitals" in text
    assert "read her records" in text and "refused (403)" in text
    assert "37.20: fund 27.90, personal account 9.30, cash 0.00" in text
    assert "answered by the first settlement" in text and "committed it 1 time(s)" in text
    assert "balanced: ZJ insured, treated in SH; 0 difference(s)" in text
    assert "4101 done, 4102 done, 4201 done: completed" in text
    assert "/portal/login" in text and "ZJEV-LISI-8F3K2Q7M" in text
    steps = [line.split(" ", 1)[0] for line in demo.out if not line.startswith((" ", "yrdhub"))]
    assert steps == ["Records:", "Lookup:", "Settlement:", "Reconciliation", "Transfer:", "Portal:"]


def test_the_printed_sign_in_works_and_shows_who_read_her_records(demo):
    [portal] = [line for line in demo.out if line.startswith("Portal: ")]
    url, province, code = re.search(r"(http://\S+)/portal/login .* province (\w+), e-voucher code (\S+)",
                                    portal).groups()
    with session(url, (province, code, "")) as browser:
        entries = browser.get("/api/me/access-log").json()["entries"]
    seen = {(e["organisation"]["code"], e["outcome"]) for e in entries}
    assert {("H31011800012", "allowed"), ("H32050900012", "refused")} <= seen


def test_ctrl_c_stops_it_cleanly(demo):
    assert demo.proc.poll() is None and demo.group()
    os.killpg(demo.proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    try:
        code = demo.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        demo.kill()
        pytest.fail("the demo did not stop within 15 s of SIGINT")
    stderr = demo.proc.stderr.read()
    assert code == 0, stderr
    assert "Traceback" not in stderr and "Error" not in stderr, stderr
    deadline = time.monotonic() + 5
    while demo.group() and time.monotonic() < deadline:  # the kernel reaps what exited
        time.sleep(0.05)
    assert demo.group() == []
