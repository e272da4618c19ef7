"""Prometheus metrics, defined once (``/metrics`` serves the default registry)."""

from __future__ import annotations

import asyncio

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("yrdhub_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram("yrdhub_http_request_seconds", "HTTP request latency", ["method", "route"],
                    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
UPLOADS = Counter("yrdhub_uploads_total", "Uploads by channel and outcome", ["channel", "outcome"])
RECORDS = Counter("yrdhub_records_total", "Records by channel and outcome", ["channel", "outcome"])
# Every send to a province's platform, as long as the hub waited for it (answered or not).
PLATFORM_CALLS = Histogram("yrdhub_platform_call_seconds", "Sends to a province's insurance platform",
                           ["province", "infno"],
                           buckets=(0.05, 0.1, 0.2, 0.25, 0.3, 0.5, 1, 2.5, 5, 10, 30))
# Subscription notifications (hub.notify): delivered (2xx); given up after YRDHUB_HOOK_GIVE_UP
# (the Subscription is then ``error``); failed attempts scheduled again; waiting in the outbox.
NOTIFICATIONS_SENT = Counter("yrdhub_notifications_sent_total", "Notifications delivered")
NOTIFICATIONS_FAILED = Counter("yrdhub_notifications_failed_total",
                               "Notifications given up on (their Subscription is error)")
NOTIFICATIONS_RETRIED = Counter("yrdhub_notifications_retried_total",
                                "Failed notification attempts scheduled again")
NOTIFICATIONS_PENDING = Gauge("yrdhub_notifications_pending", "Notifications in the outbox")
# How late the event loop wakes a task that asked to sleep (``watch_loop``): a loop busy with
# one long step delays every request and every platform answer by as much.
LOOP_LAG = Histogram("yrdhub_event_loop_lag_seconds", "Lateness of the event loop's wake-ups",
                     buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1))


async def watch_loop(period: float = 0.05, into: Histogram = LOOP_LAG) -> None:
    """Observe the loop's lag into ``into`` every ``period`` seconds, until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        start = loop.time()
        await asyncio.sleep(period)
        into.observe(max(0.0, loop.time() - start - period))
