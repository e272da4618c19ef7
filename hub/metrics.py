"""Prometheus metrics, defined once (``/metrics`` serves the default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUESTS = Counter("yrdhub_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram("yrdhub_http_request_seconds", "HTTP request latency", ["method", "route"],
                    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
UPLOADS = Counter("yrdhub_uploads_total", "Uploads by channel and outcome", ["channel", "outcome"])
RECORDS = Counter("yrdhub_records_total", "Records by channel and outcome", ["channel", "outcome"])
