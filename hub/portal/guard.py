"""Bounds on sign-in guessing (hub-interface.md, "Patients: the portal").

After 5 failed sign-ins within 10 minutes from one client address, every further try from that
address is refused (``429``, no platform call) until fewer than 5 of its failures are within the
last 10 minutes; likewise for 5 failures of one code from any addresses. A failure is a code the
platform refused: a form the hub itself refused (no province, no code) and a platform that could
not be reached do not count, and neither does a success.

The strategy is ``limits``' moving window, not its fixed window: "5 failures within 10 minutes"
holds for any 10 minutes, and a fixed window (counted from its first failure) admits 4 failures at
its end and 5 more at the start of the next, 9 within seconds. With the moving window a try is
refused whenever the last 10 minutes hold 5 failures of its address or of its code, and waits
until the oldest of them is 10 minutes old (``Retry-After``). Failures are ``hit`` after the
platform refused; a try is ``test``-ed before calling it, so tries that pass the test together
(at 4 failures) may all reach the platform; the window records 5 of their failures (``hit`` is
atomic) and refuses the next try.

The state is in the database (``hub.ratelimit.DatabaseStorage``), shared by every hub process.
Keys: the client address as the server saw the connection (uvicorn takes ``X-Forwarded-For`` only
from the proxies in its ``FORWARDED_ALLOW_IPS``, by default loopback), and the SHA-256 of the
code (never the code itself; nor is it logged).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable

import structlog
from limits import parse
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy.engine import Engine

from hub.ratelimit import DatabaseStorage

FAILURES = parse("5 per 10 minutes")
log = structlog.get_logger("hub.portal.guard")


class SignInGuard:
    """Per-address and per-code bounds on failed sign-ins; ``clock`` is epoch seconds."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time):
        self.storage = DatabaseStorage(engine, clock)
        self.limiter = MovingWindowRateLimiter(self.storage)

    def retry_after(self, address: str, code: str) -> int | None:
        """Whole seconds until a try from ``address`` with ``code`` may reach the platform (at
        least 1), or None when it may now."""
        waits = [self._wait(key) for key in _keys(address, code) if not self.limiter.test(FAILURES, *key)]
        return max(waits) if waits else None

    def failed(self, address: str, code: str) -> None:
        """Count a code the platform refused, against its address and against the code."""
        for key in _keys(address, code):
            self.limiter.hit(FAILURES, *key)
            if not self.limiter.test(FAILURES, *key):
                log.warning("sign-in guessing bounded", by=key[0],
                            address=address if key[0] == "address" else None, retry_after=self._wait(key))
        self.storage.prune()

    def _wait(self, key: tuple[str, str]) -> int:
        reset = self.limiter.get_window_stats(FAILURES, *key).reset_time
        return max(1, math.ceil(reset - self.storage.clock()))


def _keys(address: str, code: str) -> list[tuple[str, str]]:
    return [("address", address), ("code", code_hash(code))]


def code_hash(code: str) -> str:
    """The key of a code: SHA-256 of the code as the sign-in reads it (surrounding spaces dropped)."""
    return hashlib.sha256(code.strip().encode()).hexdigest()
