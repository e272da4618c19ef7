"""Administrators' tools for what was set aside: list it with reasons, re-run one upload, and
re-map archived originals after a mapper fix. A re-run never duplicates anything: it stores
through the same record keys (unchanged records stay unchanged), and its archive row points at
the original it came from (``rerun_of``) instead of copying the bytes.
"""

from __future__ import annotations

from itertools import islice

import orjson
from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from hub import api_models, hl7_ingest, ingest
from hub.auth import Party, bearer_party, require_admin
from hub.errors import BadRequest, NotFound
from hub.models import Upload
from mappers.errors import ForeignSender, UnreadableUpload

router = APIRouter(prefix="/admin")
REMAP_MODULES = {**ingest.CHANNELS, "sh": hl7_ingest.CHANNEL}


def _json(body) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


def _listing(row) -> dict:
    summary = orjson.loads(row.summary) if row.summary else {}
    return {"id": row.id, "channel": row.channel, "sender": row.sender,
            "received_at": row.received_at.isoformat(), "filename": row.filename,
            "rerun_of": row.rerun_of, "summary": summary}


@router.get("/uploads", responses=api_models.answers(api_models.Uploads, 403, 422))
def list_uploads(request: Request, set_aside: bool = Query(True), limit: int = Query(100, ge=0, le=1000),
                 party: Party = Depends(bearer_party)) -> Response:
    """Uploads newest first; by default those set aside (unreadable, or with rejections/AE)."""
    require_admin(party)
    U = Upload.__table__
    query = select(U.c.id, U.c.channel, U.c.sender, U.c.received_at, U.c.filename,
                   U.c.rerun_of, U.c.summary).order_by(U.c.id.desc())
    if not set_aside:
        query = query.limit(limit)
    with request.app.state.engine.connect() as conn, conn.execute(query) as result:
        rows = (_listing(r) for r in result)
        if set_aside:
            rows = (r for r in rows if _is_set_aside(r["summary"]))
        rows = list(islice(rows, limit))  # stop reading once ``limit`` are found
    return _json({"uploads": rows})


def _is_set_aside(summary: dict) -> bool:
    return bool(summary.get("set_aside") or summary.get("rejected"))


def rerun(engine, upload_id: int) -> dict:
    """Map an archived original again with today's mapper and store what maps."""
    U = Upload.__table__
    with engine.connect() as conn:
        original = conn.execute(select(U).where(U.c.id == upload_id)).first()
    if original is None:
        raise NotFound(f"no upload {upload_id}")
    if original.rerun_of is not None:
        return rerun(engine, original.rerun_of)
    channel = REMAP_MODULES.get(original.channel)
    if channel is None:
        raise BadRequest(f"uploads of channel {original.channel!r} cannot be re-run")
    try:
        result = ingest.map_in_worker(channel.module, original.body, original.sender,
                                      original.filename if original.channel == "ah" else None)
    except (UnreadableUpload, ForeignSender) as exc:
        return {"upload_id": upload_id, "error": str(exc)}
    outcome = ingest.store_mapped(engine, original.channel, original.sender, b"", result,
                                  original.content_type, original.filename, rerun_of=upload_id)
    return {"rerun_of": upload_id, **outcome.summary()}


@router.post("/uploads/{upload_id}/rerun", responses=api_models.answers(
    api_models.RerunDone | api_models.RerunError, 400, 403, 404, 422,
    description="the re-run's summary, or why the original still cannot be read"))
async def rerun_one(upload_id: int, request: Request, party: Party = Depends(bearer_party)):
    require_admin(party)
    return _json(await run_in_threadpool(rerun, request.app.state.engine, upload_id))


@router.post("/remap", responses=api_models.answers(api_models.Remap, 400, 403, 422))
async def remap(request: Request, channel: str = Query(...), party: Party = Depends(bearer_party)):
    """Re-map every archived original of a channel (oldest first, so later versions win)."""
    require_admin(party)
    if channel not in REMAP_MODULES:
        raise BadRequest(f"unknown channel {channel!r}")
    U = Upload.__table__
    with request.app.state.engine.connect() as conn:
        ids = conn.execute(select(U.c.id).where(U.c.channel == channel, U.c.rerun_of.is_(None))
                           .order_by(U.c.id)).scalars().all()
    results = [await run_in_threadpool(rerun, request.app.state.engine, i) for i in ids]
    return _json({"channel": channel, "uploads": len(ids),
                  "stored": sum(r.get("stored", 0) for r in results),
                  "unchanged": sum(r.get("unchanged", 0) for r in results),
                  "errors": [r for r in results if "error" in r]})
