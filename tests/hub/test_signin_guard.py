"""Sign-in guessing is bounded (hub-interface.md, "Patients: the portal"), over real sockets: a
real hub, the simulated platforms (1101 calls counted in what they received), clients bound to
different loopback addresses (127.0.0.2, ...) so that the hub sees different client addresses.
Also the limiter's database storage under concurrency, through the ``limits`` API."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time

import httpx
from limits import parse
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter
from sqlalchemy import select
from structlog.testing import capture_logs

from hub.db import make_engine
from hub.models import RateLimit
from hub.portal.guard import SignInGuard, code_hash
from hub.ratelimit import DatabaseStorage
from tests.support.common import ROOT, free_port
from tests.support.portal import LISI, login_form

WRONG = [f"ZJEV-WRONG-{i:04d}" for i in range(10)]


def try_code(url: str, code: str, address: str = "127.0.0.2", province: str = "ZJ",
             headers: dict | None = None) -> httpx.Response:
    """One sign-in as a browser does it, from ``address`` (a loopback address the client binds)."""
    transport = httpx.HTTPTransport(local_address=address)
    with httpx.Client(base_url=url, timeout=30, follow_redirects=False, transport=transport) as c:
        csrf = login_form(c)
        return c.post("/portal/login", data={"province": province, "code": code, "csrf": csrf},
                      headers=headers or {})


def calls_1101(sims, province: str = "ZJ") -> int:
    return len(sims.received(province, "1101"))


def assert_429(answer: httpx.Response, most: int = 600) -> int:
    assert answer.status_code == 429, answer.status_code
    assert re.fullmatch(r"\d+", answer.headers["retry-after"]), answer.headers["retry-after"]
    assert "次数过多" in answer.text and 'name="code"' in answer.text
    wait = int(answer.headers["retry-after"])
    assert 1 <= wait <= most
    return wait


def test_five_refused_codes_from_one_address_then_429_without_a_platform_call(portal, sims, engine):
    before = calls_1101(sims)
    with capture_logs() as logs:
        for code in WRONG[:5]:
            assert try_code(portal.url, code).status_code == 401
    assert calls_1101(sims) == before + 5
    # Whatever the code, the right one too; a forwarded-for header from a client that is not a
    # trusted proxy changes nothing.
    assert_429(try_code(portal.url, LISI[1]))
    assert_429(try_code(portal.url, WRONG[6], headers={"X-Forwarded-For": "10.9.8.7"}))
    assert calls_1101(sims) == before + 5
    assert try_code(portal.url, LISI[1], address="127.0.0.3").status_code == 303  # another address
    with engine.connect() as conn:
        keys = conn.execute(select(RateLimit.key)).scalars().all()
    assert not any(code in key for key in keys for code in WRONG) and any(code_hash(WRONG[0]) in k for k in keys)
    bounded = [e for e in logs if e["event"] == "sign-in guessing bounded"]
    assert [e["by"] for e in bounded] == ["address"] and not any(c in str(logs) for c in WRONG)


def test_five_failures_of_one_code_from_any_addresses_then_429_everywhere(portal, sims):
    before = calls_1101(sims)
    for n in range(2, 7):
        assert try_code(portal.url, WRONG[0], address=f"127.0.0.{n}").status_code == 401
    assert calls_1101(sims) == before + 5
    assert_429(try_code(portal.url, WRONG[0], address="127.0.0.7"))
    assert_429(try_code(portal.url, f"  {WRONG[0]} ", address="127.0.0.7"))  # read as the same code
    assert calls_1101(sims) == before + 5
    assert try_code(portal.url, LISI[1], address="127.0.0.7").status_code == 303  # another code


def test_only_codes_the_platform_refused_count(portal, sims):
    for _ in range(5):  # refused by the hub itself: no province, no code
        assert try_code(portal.url, WRONG[0], province="").status_code == 401
        assert try_code(portal.url, "").status_code == 401
    sims.set_faults("ZJ", maintenance=True)
    try:
        for code in WRONG[:5]:  # the platform unreachable: the code may be fine
            assert try_code(portal.url, code).status_code == 503
    finally:
        sims.clear_faults("ZJ")
    assert try_code(portal.url, LISI[1]).status_code == 303  # a success consumes nothing
    for code in WRONG[5:10]:
        assert try_code(portal.url, code).status_code == 401
    assert_429(try_code(portal.url, LISI[1]))


def test_the_window_passes_ten_minutes_after_each_failure(portal, sims):
    """A moving window: at 0, 60, ..., 240 s five failures; refused until the first is 600 s old;
    then one try reaches the platform, and its failure fills the window again until 660 s."""
    now = [1_900_000_000.0]
    start = now[0]
    portal.app.state.sign_in_guard = SignInGuard(portal.app.state.engine, clock=lambda: now[0])
    for i, code in enumerate(WRONG[:5]):
        now[0] = start + 60 * i
        assert try_code(portal.url, code).status_code == 401
    before = calls_1101(sims)
    now[0] = start + 300
    assert assert_429(try_code(portal.url, WRONG[5])) == 300
    now[0] = start + 599.5
    assert assert_429(try_code(portal.url, WRONG[5])) == 1
    assert calls_1101(sims) == before
    now[0] = start + 600
    assert try_code(portal.url, WRONG[5]).status_code == 401
    assert calls_1101(sims) == before + 1
    assert assert_429(try_code(portal.url, LISI[1])) == 60


# -- several hub processes ----------------------------------------------------------------------


def start_hub_process(database_url: str, sims) -> tuple[subprocess.Popen, str]:
    """``yrdhub serve`` of this checkout in its own process, on the same database and platforms;
    returns it once it answers."""
    port = free_port()
    env = {**os.environ, **sims.env(), "YRDHUB_DATABASE_URL": database_url, "YRDHUB_MLLP_PORT": "0",
           "YRDHUB_MAP_WORKERS": "0", "YRDHUB_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "hub.cli", "serve", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 60
    while True:
        assert proc.poll() is None, "the hub process ended"
        try:
            if httpx.get(f"{url}/portal/login", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the hub process did not answer"
        time.sleep(0.1)


def test_two_hub_processes_share_the_count(portal, sims, database_url):
    proc, other = start_hub_process(database_url, sims)
    try:
        for code in WRONG[:3]:
            assert try_code(portal.url, code).status_code == 401
        for code in WRONG[3:5]:
            assert try_code(other, code).status_code == 401
        before = calls_1101(sims)
        assert_429(try_code(other, LISI[1]))
        assert_429(try_code(portal.url, LISI[1]))
        assert calls_1101(sims) == before
    finally:
        proc.terminate()
        proc.wait(15)


# -- the storage under concurrency ---------------------------------------------------------------


def in_threads(work, engines, per_engine: int = 4) -> list:
    """``work(storage)`` from ``per_engine`` threads on each engine (each its own pool, as
    separate processes have), all released at once; returns their results."""
    storages = [DatabaseStorage(e) for e in engines for _ in range(per_engine)]
    barrier, results = threading.Barrier(len(storages)), []
    lock = threading.Lock()

    def run(storage):
        barrier.wait()
        outcome = work(storage)
        with lock:
            results.append(outcome)
    threads = [threading.Thread(target=run, args=(s,)) for s in storages]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == len(storages)
    return results


def test_the_storage_counts_exactly_under_concurrency(db, database_url):
    engines = [db, make_engine(database_url)]
    try:
        item = parse("1000 per hour")
        in_threads(lambda s: [FixedWindowRateLimiter(s).hit(item, "k") for _ in range(10)], engines)
        assert FixedWindowRateLimiter(DatabaseStorage(db)).get_window_stats(item, "k").remaining == 1000 - 80
        five = parse("5 per 10 minutes")
        admitted = in_threads(lambda s: [MovingWindowRateLimiter(s).hit(five, "m") for _ in range(3)], engines)
        assert sum(sum(a) for a in admitted) == 5
        assert not MovingWindowRateLimiter(DatabaseStorage(db)).test(five, "m")
    finally:
        engines[1].dispose()


def test_the_storage_forgets_what_no_longer_matters(db):
    now = [1000.0]
    storage = DatabaseStorage(db, clock=lambda: now[0])
    fixed, moving, item = FixedWindowRateLimiter(storage), MovingWindowRateLimiter(storage), parse("2 per minute")
    assert [fixed.hit(item, "f") for _ in range(3)] == [True, True, False]
    assert [moving.hit(item, "m") for _ in range(3)] == [True, True, False]
    assert fixed.get_window_stats(item, "f").reset_time == 1060.0
    assert storage.prune() == 0
    now[0] = 1060.0
    assert fixed.test(item, "f") and moving.test(item, "m")
    assert storage.prune() == 2
    with db.connect() as conn:
        assert conn.execute(select(RateLimit.key)).all() == []
