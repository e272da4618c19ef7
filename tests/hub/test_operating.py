"""/healthz, /metrics, and logs that never hold a full resident ID."""

import io
import json
import logging
import time
from datetime import datetime, timedelta, timezone

import pytest
import structlog

from hub import logs
from mappers.common import RESIDENT_ID_SYSTEM
from tests.support.common import FIXTURES
from tests.support.waiting import wait_until

RID = "33042119850412002X"


def test_healthz_and_metrics(hub):
    with hub.client() as c:
        health = c.get("/healthz")
        assert health.status_code == 200 and health.json()["database"] is True
        assert health.json()["platforms"]["SH"] == "not configured"
        c.get("/healthz")
        text = c.get("/metrics").text
    assert 'yrdhub_http_requests_total{method="GET",route="/healthz",status="200"}' in text


def test_scrub_masks_resident_ids_but_not_other_numbers():
    line = f"identifier={RESIDENT_ID_SYSTEM}|{RID} msg 20240315093000 H33042100015 440524800101001"
    out = logs.scrub(line)
    assert RID not in out and "3304**********002X" in out
    assert "440524800101001" not in out
    assert "20240315093000" in out and "H33042100015" in out


@pytest.fixture()
def json_logs():
    """Every line logged during the test, as the hub writes them (JSON), in a string buffer; the
    logging set-up before the test is put back afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    logs.configure("INFO", json=True, stream=stream)
    try:
        yield stream
    finally:
        structlog.reset_defaults()
        root.handlers[:], root.level = saved


def lines_of(stream: io.StringIO) -> list[dict]:
    """The captured lines, each parsed (a line that is not JSON fails here)."""
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_logs_of_a_real_upload_and_lookup_hold_no_full_id(hub, json_logs):
    token = hub.token("hospital", "H33042100015")
    with hub.client(token) as c:
        c.post("/ingest/zj", content=(FIXTURES / "zj" / "upload_basic.json").read_bytes())
        c.get("/fhir/Patient", params={"identifier": f"{RESIDENT_ID_SYSTEM}|{RID}"})
    logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET",
                                             f"/fhir/Patient?identifier={RID}", "1.1", 200)
    written = json_logs.getvalue()
    assert "upload stored" in written
    assert "3304**********002X" in written
    assert RID not in written
    access = [line for line in lines_of(json_logs) if line["logger"] == "uvicorn.access"]
    assert access and "3304**********002X" in access[-1]["event"]


def test_a_500_logs_its_traceback_without_the_resident_id(hub, json_logs, monkeypatch):
    from hub import auth

    def broken_lookup(engine, token):
        raise RuntimeError(f"lookup failed for resident {RID}")

    monkeypatch.setattr(auth, "lookup", broken_lookup)
    answer = hub.client(f"never-seen-{time.monotonic_ns()}").get("/fhir/Patient")
    assert answer.status_code == 500 and RID not in answer.text
    assert RID not in json_logs.getvalue()
    [hub_line] = [line for line in lines_of(json_logs) if line["event"] == "unexpected error"]
    [exception] = hub_line["exception"]
    assert exception["exc_type"] == "RuntimeError"
    assert exception["exc_value"] == "lookup failed for resident 3304**********002X"
    functions = [frame["name"] for frame in exception["frames"]]
    assert "broken_lookup" in functions and "bearer_party" in functions
    assert all("locals" not in frame for frame in exception["frames"])
    # uvicorn's own report of the same exception is JSON with its frames as well.
    wait_until(lambda: any(line["logger"] == "uvicorn.error" for line in lines_of(json_logs)))
    [uvicorn_line] = [line for line in lines_of(json_logs) if line["logger"] == "uvicorn.error"]
    assert uvicorn_line["level"] == "error"
    assert "broken_lookup" in [f["name"] for f in uvicorn_line["exception"][-1]["frames"]]


def test_log_lines_carry_an_iso_timestamp_with_its_offset(json_logs):
    structlog.get_logger("hub.test").info("structlog line")
    logging.getLogger("settlement.test").warning("stdlib line %s", 1)
    for line in lines_of(json_logs):
        stamp = datetime.fromisoformat(line["timestamp"])
        assert stamp.utcoffset() is not None, line
        assert abs(stamp - datetime.now(timezone.utc)) < timedelta(minutes=5)
    assert [line["event"] for line in lines_of(json_logs)] == ["structlog line", "stdlib line 1"]


def test_loop_watch_sees_a_step_that_holds_the_event_loop():
    import asyncio
    import time

    from prometheus_client import CollectorRegistry, Histogram

    from hub import metrics

    # A histogram of its own: the hubs that other tests run in threads of this process observe
    # the process-wide one, and on a busy machine they wake late too.
    lag = Histogram("lag_seconds", "", buckets=(0.01, 0.1, 1.0), registry=CollectorRegistry())

    def seen() -> tuple[float, float]:
        [sample] = [m for m in lag.collect()]
        values = {(s.name, s.labels.get("le")): s.value for s in sample.samples}
        late = values[("lag_seconds_count", None)] - values[("lag_seconds_bucket", "0.1")]
        return late, values[("lag_seconds_sum", None)]

    async def go():
        watch = asyncio.create_task(metrics.watch_loop(period=0.01, into=lag))
        await asyncio.sleep(0.05)
        late_before, sum_before = seen()
        time.sleep(0.15)  # a step that does not give the loop back
        await asyncio.sleep(0.05)
        watch.cancel()
        late_after, sum_after = seen()
        return late_after - late_before, sum_after - sum_before
    late, held = asyncio.run(go())
    assert late >= 1 and held >= 0.14


def test_a_served_hub_keeps_observing_its_loop_lag(hub):
    """The watcher runs in the served hub: the lag histogram's count on /metrics keeps growing (a
    count that exists from import alone would stay where it is)."""
    from hub import metrics

    assert metrics.watch_loop.__defaults__[1] is metrics.LOOP_LAG

    def observed() -> float:
        text = hub.client().get("/metrics").text
        [line] = [x for x in text.splitlines() if x.startswith("yrdhub_event_loop_lag_seconds_count")]
        return float(line.split()[-1])

    first = observed()
    wait_until(lambda: observed() >= first + 2, timeout=30, what="two more loop-lag observations")
