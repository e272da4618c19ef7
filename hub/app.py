"""``create_app()``: the FastAPI app with its routers, middleware and lifespan."""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool
from starlette.middleware.gzip import GZipMiddleware
from starlette.responses import JSONResponse, Response

from hub import (admin, admin_pages, api_models, audit, auth, compression, corrections, errors,
                 fhir_api, hl7_ingest, ingest, metrics, notify, portal, subscriptions, writer)
from settlement import api as settlement_api
from settlement import schemas as settlement_schemas
from settlement.platform import PlatformClient
from settlement.transfer import start_transfers
from hub.config import Settings, get_settings
from mappers.region import PROVINCES
from hub.db import get_engine
from hub.migrate import upgrade
from hub.portal.guard import SignInGuard


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    engine = get_engine(settings.database_url)
    if settings.migrate_on_start:
        upgrade(engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        tasks = await _start_background(app)
        yield
        for stop in tasks:
            await stop()
        ingest.shutdown_pool(app)
        audit.flush(app.state.engine)

    # /openapi.json is served; the docs pages are not (FastAPI's load their scripts from a CDN, and
    # the hub vendors no Swagger UI: any OpenAPI viewer reads the document)
    app = FastAPI(title="yrdhub", version="0.1.0", lifespan=lifespan, docs_url=None,
                  redoc_url=None)
    app.openapi = lambda: _openapi(app)
    app.state.settings = settings
    app.state.engine = engine
    app.state.sign_in_guard = SignInGuard(engine)
    errors.install(app)
    app.include_router(subscriptions.router)  # before /fhir/{res_type}, which would take it
    app.include_router(fhir_api.router)
    app.include_router(hl7_ingest.router)
    app.include_router(ingest.router)
    app.include_router(settlement_api.router)
    app.include_router(admin.router)
    app.include_router(subscriptions.admin_router)
    app.include_router(admin_pages.router)
    app.include_router(corrections.router)
    app.include_router(portal.router)
    # Stopped in this order: the writer last, once nothing hands it work any more.
    app.state.starters = [ingest.start_map_pool, start_platform, hl7_ingest.start_mllp,
                          settlement_api.start, start_transfers, start_loop_watch, warm_up,
                          notify.start, writer.start]
    _install_operating(app)
    return app


def _openapi(app: FastAPI) -> dict:
    """FastAPI's document, plus the schemas of the JSON bodies that handlers parse themselves
    (``settlement.schemas.request_body``: named there, defined here). Made once."""
    if app.openapi_schema is None:
        document = get_openapi(title=app.title, version=app.version, routes=app.routes)
        _, defs = models_json_schema([(m, "validation") for m in settlement_schemas.BODY_MODELS],
                                     ref_template="#/components/schemas/{model}")
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for name, schema in defs.get("$defs", {}).items():
            schemas.setdefault(name, schema)
        _hub_validation_errors(document)
        app.openapi_schema = document
    return app.openapi_schema


def _hub_validation_errors(document: dict) -> None:
    """FastAPI documents a bad parameter as 422 ``HTTPValidationError``; outside ``/fhir`` the hub
    answers it as 422 ``ErrorBody`` (``errors.install``): say so."""
    error = {"description": "a parameter that is not valid (INVALID_REQUEST)", "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
    for path, operations in document["paths"].items():
        for operation in operations.values():
            answer = operation["responses"].get("422", {})
            if not path.startswith("/fhir") and "HTTPValidationError" in str(answer):
                operation["responses"]["422"] = error


async def _start_background(app: FastAPI) -> list:
    """Start what runs beside the HTTP server; returns the coroutines that stop it."""
    stops = []
    for starter in getattr(app.state, "starters", []):
        stops.append(await starter(app))
    return stops


async def start_platform(app: FastAPI):
    """The one client of the provinces' platforms, shared by settlement, transfers and sign-in."""
    app.state.platform = PlatformClient(app.state.settings.insurer_urls())

    async def stop():
        await app.state.platform.aclose()
    return stop


async def warm_up(app: FastAPI):
    """Pay before the first request what every first request would pay: the thread pool's
    backend, which anyio imports on first use, and the token query, compiled on first use
    (measured with ``python -m bench.settle --n 5 --rate 2 --callers 1``, whose p99 is the
    first bill). Bills that arrive during that wait are late together, and with a platform
    that answers in a fixed time the bunch comes back every round trip."""
    await run_in_threadpool(auth.lookup, app.state.engine, "warm-up")  # no such token: a read

    async def stop():
        pass
    return stop


async def start_loop_watch(app: FastAPI):
    task = asyncio.create_task(metrics.watch_loop())

    async def stop():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return stop


class MetricsMiddleware:
    """Counts and times every HTTP request by route template (a plain ASGI middleware: Starlette's
    ``@app.middleware("http")`` kind costs a task and a stream per request)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), {"code": 500}

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            metrics.REQUESTS.labels(scope["method"], route, str(status["code"])).inc()
            metrics.LATENCY.labels(scope["method"], route).observe(time.perf_counter() - start)


def _install_operating(app: FastAPI) -> None:
    # Starlette compresses large bodies in a worker thread and keeps the media type
    app.add_middleware(GZipMiddleware, minimum_size=compression.MIN_BYTES,
                       compresslevel=compression.MIDDLEWARE_LEVEL)
    app.add_middleware(MetricsMiddleware)

    @app.get("/metrics", response_class=Response, responses={200: {"description": "Prometheus text", "content": {
        CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}})
    def _metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", responses={200: {"model": api_models.Health, "description": "it can serve"},
                                    503: {"model": api_models.Health, "description": "it cannot"}})
    async def _healthz(request: Request) -> Response:
        database = await asyncio.to_thread(_database_ok, request.app.state.engine)
        platforms = await _platforms_reachable(request.app)
        body = {"status": "ok" if database else "unavailable", "database": database,
                "platforms": platforms}
        return JSONResponse(body, 200 if database else 503)


def _database_ok(engine) -> bool:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:  # any failure means "cannot serve"; the reason goes to the log
        return False


async def _platforms_reachable(app: FastAPI) -> dict:
    """Each configured platform: reachable or not; unconfigured ones say so."""
    urls = app.state.settings.insurer_urls()
    client = getattr(app.state, "platform", None)
    out = {p: "not configured" for p in PROVINCES}
    if client is None:
        return out
    results = await asyncio.gather(*(client.reachable(p) for p in urls))
    out.update({p: "reachable" if ok else "unreachable" for p, ok in zip(urls, results)})
    return out
