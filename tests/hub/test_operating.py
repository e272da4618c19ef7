"""/healthz, /metrics, and logs that never hold a full resident ID."""

import io
import logging

import structlog

from hub import logs
from mappers.common import RESIDENT_ID_SYSTEM
from tests.conftest import FIXTURES

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


def test_logs_of_a_real_upload_and_lookup_hold_no_full_id(hub):
    stream = io.StringIO()
    logs.configure("INFO", json=True, stream=stream)
    try:
        token = hub.token("hospital", "H33042100015")
        with hub.client(token) as c:
            c.post("/ingest/zj", content=(FIXTURES / "zj" / "upload_basic.json").read_bytes())
            c.get("/fhir/Patient", params={"identifier": f"{RESIDENT_ID_SYSTEM}|{RID}"})
        logging.getLogger("uvicorn.access").info('"GET /fhir/Patient?identifier=%s HTTP/1.1"', RID)
    finally:
        structlog.reset_defaults()
    written = stream.getvalue()
    assert "upload stored" in written
    assert "3304**********002X" in written
    assert RID not in written


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


def test_the_loop_lag_metric_is_exposed():
    from prometheus_client import REGISTRY

    from hub import metrics

    assert metrics.watch_loop.__defaults__[1] is metrics.LOOP_LAG
    assert REGISTRY.get_sample_value("yrdhub_event_loop_lag_seconds_count") is not None
