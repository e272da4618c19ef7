"""The mapper processes: a process pool whose workers never outlive the hub.

A worker of ``ProcessPoolExecutor`` waits on a queue whose write end it holds itself, so a hub
killed outright (SIGKILL, the OOM killer) left its workers waiting for ever, and with them the
multiprocessing resource tracker (which exits only when every process holding its pipe is gone).
Each worker therefore ends when its parent does:

- on Linux the kernel sends it SIGKILL when the hub dies (``prctl(PR_SET_PDEATHSIG)``); the
  kernel ties this to the *thread* that started the worker, so the pool must be started and
  grown from a thread that lives as long as the pool (the hub's event loop);
- everywhere, a watcher thread in the worker notices that its parent has changed and exits.

The resource tracker then reads end-of-file on its pipe and exits by itself.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import importlib
import multiprocessing
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_WATCH_SECONDS = 1.0


def start_pool(workers: int, warm: tuple[str, ...] = ()) -> concurrent.futures.ProcessPoolExecutor:
    """A pool of ``workers`` spawned processes, started now rather than on first use: one task
    per worker imports the modules ``warm`` names (what the first upload would pay). The pool
    grows to its size as long as no warm-up ends before the last is submitted, which spawning
    (hundreds of milliseconds) guarantees in practice; a worker short is spawned on demand."""
    pool = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"),
        initializer=die_with_parent, initargs=(os.getpid(),))
    for _ in range(workers):
        pool.submit(import_modules, warm)
    return pool


def import_modules(names: tuple[str, ...]) -> None:
    for name in names:
        importlib.import_module(name)


def die_with_parent(parent_pid: int) -> None:
    """Worker initializer: end this process when ``parent_pid`` (the hub) ends, however it ends.
    If the hub is already gone, exit at once."""
    if sys.platform.startswith("linux"):
        # Should it fail, the watcher below still ends the worker, a second later at most.
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the hub died before the kernel was told
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="parent-watch",
                     daemon=True).start()


def _watch_parent(parent_pid: int) -> None:
    # An orphan is adopted (by init or a subreaper): its parent pid changes.
    while os.getppid() == parent_pid:
        time.sleep(PARENT_WATCH_SECONDS)
    os._exit(1)
