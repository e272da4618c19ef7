"""``/ingest/{zj,js,ah}``: hospitals send records; mappers map; the store keeps them.

Order of work, and why: the size limit first (413 before reading a huge body), then the mapper
(pure, off the event loop), then one transaction that archives the original bytes and stores the
records, so an upload is either wholly kept (archive and records) or the caller gets an error and
nothing half-written. A body that cannot be read is archived too, set aside with its reason, so a
person can look at it and re-run it after a mapper fix.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import importlib
import os
from dataclasses import dataclass
from datetime import datetime, timezone
import orjson
import structlog
from fastapi import APIRouter, Depends, Request
from sqlalchemy import bindparam, insert, update
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from hub import api_models, arrivals, metrics, store, writer
from hub.auth import Party, bearer_party, require_hospital
from hub.db import write_retrying
from hub.errors import BadRequest, Forbidden, NotFound, PayloadTooLarge
from hub.models import Upload
from hub.workers import start_pool
from mappers.anhui_csv import ArchiveTooLarge
from mappers.common import MapResult
from mappers.errors import ForeignSender, UnreadableUpload

log = structlog.get_logger("hub.ingest")
router = APIRouter()


@dataclass(frozen=True)
class Channel:
    name: str
    module: str  # the mapper module, imported where the mapping runs


CHANNELS: dict[str, Channel] = {
    "zj": Channel("zj", "mappers.zhejiang_json"),
    "js": Channel("js", "mappers.jiangsu_cda"),
    "ah": Channel("ah", "mappers.anhui_csv"),
}


@dataclass
class Outcome:
    """What an upload came to: the JSON summary of hub-interface.md plus the archive id."""

    upload_id: int
    stored: int
    unchanged: int
    rejected: list[dict]
    notes: list[str]

    def summary(self) -> dict:
        return {"stored": self.stored, "unchanged": self.unchanged, "rejected": self.rejected,
                "notes": self.notes, "upload_id": self.upload_id}


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes is over the {limit}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def upload_row(channel: str, sender: str, body: bytes, content_type: str | None,
               received_at: datetime, filename: str | None = None,
               rerun_of: int | None = None) -> dict:
    """The ``uploads`` row archiving ``body`` as received."""
    return {"channel": channel, "sender": sender, "received_at": received_at,
            "content_type": content_type, "filename": filename,
            "sha256": hashlib.sha256(body).hexdigest(), "rerun_of": rerun_of, "body": body}


def archive(conn, channel: str, sender: str, body: bytes, content_type: str | None,
            filename: str | None = None, rerun_of: int | None = None,
            received_at: datetime | None = None) -> int:
    row = upload_row(channel, sender, body, content_type,
                     received_at or datetime.now(timezone.utc), filename, rerun_of)
    return conn.execute(insert(Upload).returning(Upload.id), [row]).scalar_one()


def set_summary(conn, upload_id: int, summary: dict) -> None:
    conn.execute(update(Upload).where(Upload.id == upload_id)
                 .values(summary=orjson.dumps(summary).decode()))


def store_mapped(engine: Engine, channel: str, sender: str, body: bytes, result: MapResult,
                 content_type: str | None, filename: str | None = None,
                 rerun_of: int | None = None) -> Outcome:
    """Archive ``body`` and store ``result`` in one transaction of its own (an admin's re-run);
    retried on a write conflict (two uploads creating the same patient at once), which the
    second attempt then sees. Requests go through the writer instead (``storing``)."""
    upload = Pending(body, result, content_type, filename, rerun_of)
    return write_retrying(engine, lambda conn: store_uploads(conn, channel, sender, [upload])[0])


@dataclass(frozen=True)
class Pending:
    """An upload mapped and waiting for the writer."""

    body: bytes
    result: MapResult
    content_type: str | None
    filename: str | None = None
    rerun_of: int | None = None


def storing(channel: str, sender: str, body: bytes, result: MapResult, content_type: str | None,
            filename: str | None = None) -> writer.Batchable:
    """The writer's work for one upload. Uploads of one sender and channel queued together are
    stored by one ``store_uploads``, except those whose records count rows (Anhui): their
    answers come from ``put_records``'s totals, which are not split by upload."""
    keys = frozenset(record_key(channel, r) for r in result.records)
    counts_rows = any(r.row_digests for r in result.records)
    kind = ("upload", channel, sender) if not counts_rows else object()
    return writer.Batchable(kind, keys, Pending(body, result, content_type, filename),
                            lambda conn, uploads: store_uploads(conn, channel, sender, uploads))


def record_key(channel: str, record) -> str:
    return f"{channel}:{record.hospital}|{record.key}"


def store_uploads(conn, channel: str, sender: str, uploads: list[Pending]) -> list[Outcome]:
    """Archive the uploads and store their records in ``conn``'s transaction (one
    ``put_records`` for all); one Outcome each, as each would get stored alone in this order
    (the writer never puts two carrying the same record key in one call)."""
    now = datetime.now(timezone.utc)
    rows = [upload_row(channel, sender, u.body, u.content_type, now, u.filename, u.rerun_of)
            for u in uploads]
    ids = list(conn.execute(insert(Upload).returning(Upload.id, sort_by_parameter_order=True),
                            rows).scalars())
    records = [r for u in uploads for r in u.result.records]
    origins = [i for u, i in zip(uploads, ids) for _ in u.result.records]
    put = store.put_records(conn, channel, records, ids[-1], origins)
    outcomes, arrived = [], []
    for upload, upload_id in zip(uploads, ids):
        stored, unchanged, rejected = _counts(channel, upload, put, alone=len(uploads) == 1)
        rejected = upload.result.rejected + rejected
        outcomes.append(Outcome(upload_id, stored, unchanged, [r.as_dict() for r in rejected],
                                list(upload.result.notes)))
        if upload.rerun_of is None:  # a re-run is nothing the hospital sent
            arrived += arrivals.of_upload(upload_id, sender, now, channel,
                                          upload.result.records, put, rejected)
    conn.execute(update(Upload).where(Upload.id == bindparam("w_id")),
                 [{"w_id": o.upload_id, "summary": orjson.dumps(o.summary()).decode()}
                  for o in outcomes])
    arrivals.write(conn, arrived)
    return outcomes


def _counts(channel: str, upload: Pending, put, alone: bool) -> tuple[int, int, list]:
    """(stored, unchanged, rejections by the store) of one upload: ``put``'s totals when it was
    stored alone, else its own records' outcomes (a record that counts no rows counts one)."""
    if alone:
        return put.stored, put.unchanged, put.rejected
    answers = [put.outcomes[k] for k in dict.fromkeys(record_key(channel, r)
                                                       for r in upload.result.records)]
    return (answers.count("stored"), answers.count("unchanged"),
            [a for a in answers if not isinstance(a, str)])


def setting_aside(channel: str, sender: str, body: bytes, content_type: str | None, reason: str,
                  filename: str | None = None):
    """The work that archives an upload that could not be read at all, with its reason."""
    def work(conn) -> int:
        upload_id = archive(conn, channel, sender, body, content_type, filename)
        set_summary(conn, upload_id, {"error": reason, "set_aside": True})
        return upload_id
    return work


async def ingest(request: Request, channel: Channel, sender: str, body: bytes,
                 filename: str | None = None) -> Outcome:
    """Map and store one upload; 400 (unreadable) and 403 (another sender) after archiving."""
    content_type = request.headers.get("content-type")
    try:
        result = await map_off_loop(request.app, channel, body, sender, filename)
    except UnreadableUpload as exc:  # ArchiveTooLarge (413) is one too
        await writer.of(request.app).run(setting_aside(channel.name, sender, body,
                                                       content_type, str(exc), filename))
        if isinstance(exc, ArchiveTooLarge):
            metrics.UPLOADS.labels(channel.name, "too_large").inc()
            raise PayloadTooLarge(str(exc)) from None
        metrics.UPLOADS.labels(channel.name, "unreadable").inc()
        raise BadRequest(str(exc), code=getattr(exc, "code", "UNREADABLE")) from None
    except ForeignSender as exc:
        metrics.UPLOADS.labels(channel.name, "foreign").inc()
        raise Forbidden(str(exc), code="FOREIGN_SENDER") from None
    outcome = await writer.of(request.app).run(storing(channel.name, sender, body, result,
                                                       content_type, filename))
    metrics.UPLOADS.labels(channel.name, "stored").inc()
    metrics.RECORDS.labels(channel.name, "stored").inc(outcome.stored)
    metrics.RECORDS.labels(channel.name, "unchanged").inc(outcome.unchanged)
    metrics.RECORDS.labels(channel.name, "rejected").inc(len(outcome.rejected))
    log.info("upload stored", channel=channel.name, sender=sender, upload_id=outcome.upload_id,
             stored=outcome.stored, unchanged=outcome.unchanged, rejected=len(outcome.rejected))
    return outcome


def map_in_worker(module: str, body: bytes, sender: str, filename: str | None) -> MapResult:
    """Run a mapper (in a worker process: mapping and FHIR validation are CPU-bound)."""
    mapper = importlib.import_module(module).map_upload
    if filename is not None:
        return mapper(body, sender, filename=filename)
    return mapper(body, sender)


# What a mapper process imports before its first upload.
MAPPER_MODULES = (*(c.module for c in CHANNELS.values()), "mappers.shanghai_hl7v2")


def _pool(app) -> concurrent.futures.Executor | None:
    """The app's mapper processes (started with the app, else on first use); None maps in a
    thread instead."""
    workers = app.state.settings.map_workers
    if workers == 0:
        return None
    if getattr(app.state, "map_pool", None) is None:
        app.state.map_pool = start_pool(workers or os.cpu_count() or 1, MAPPER_MODULES)
    return app.state.map_pool


async def start_map_pool(app):
    """Starter: the mapper processes, from the event loop's thread (``hub.workers`` says why).
    The app's lifespan shuts them down after everything that maps has stopped."""
    _pool(app)

    async def stop():
        pass
    return stop


async def off_loop(app, fn, *args):
    """``fn(*args)`` off the event loop: in the app's mapper processes (``fn`` must then be a
    module-level function, to be pickled), else in a thread."""
    pool = _pool(app)
    if pool is None:
        return await run_in_threadpool(fn, *args)
    return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)


async def map_off_loop(app, channel: Channel, body: bytes, sender: str,
                       filename: str | None = None) -> MapResult:
    return await off_loop(app, map_in_worker, channel.module, body, sender, filename)


def shutdown_pool(app) -> None:
    pool = getattr(app.state, "map_pool", None)
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)
        app.state.map_pool = None


async def file_field(request: Request, body: bytes) -> tuple[bytes, str]:
    """The ``file`` field of a multipart body already read (and size-checked)."""
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream():
        yield body
        yield b""

    try:
        form = await MultiPartParser(request.headers, stream(), max_files=1,
                                     max_part_size=len(body) + 1).parse()
    except MultiPartException as exc:
        raise BadRequest(f"unreadable multipart body: {exc.message}") from None
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise BadRequest("multipart body has no file field named 'file'")
    return await upload.read(), upload.filename or "upload.csv"


def _declared_filename(request: Request) -> str | None:
    disposition = request.headers.get("content-disposition", "")
    _, _, name = disposition.partition("filename=")
    return name.strip('"') or None


_BINARY = {"schema": {"type": "string", "format": "binary"}}
INGEST_BODY = {"requestBody": {
    "required": True,
    "description": "zj: one JSON upload; js: one CDA document; ah: a CSV or a ZIP of CSVs, raw "
                   "or as the multipart field 'file' (formats/*.md). At most 20 MB.",
    "content": {"application/json": _BINARY, "application/xml": _BINARY, "text/csv": _BINARY,
                "application/zip": _BINARY,
                "multipart/form-data": {"schema": {
                    "type": "object", "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}}}}}}}


@router.post("/ingest/{channel_name}", openapi_extra=INGEST_BODY,
             responses=api_models.answers(api_models.IngestSummary, 400, 403, 404, 413))
async def ingest_json_channel(channel_name: str, request: Request,
                              party: Party = Depends(bearer_party)) -> Response:
    channel = CHANNELS.get(channel_name)
    if channel is None:
        raise NotFound(f"no ingest channel {channel_name!r}")
    sender = require_hospital(party)
    body = await read_body(request, request.app.state.settings.max_body_bytes)
    filename = None
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        body, filename = await file_field(request, body)
    elif channel.name == "ah":
        filename = _declared_filename(request) or "upload.csv"
    if not body:
        raise BadRequest("empty body")
    outcome = await ingest(request, channel, sender, body, filename)
    return Response(orjson.dumps(outcome.summary()), 200, media_type="application/json")
