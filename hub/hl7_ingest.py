"""Shanghai's HL7 v2 over HTTP (``POST /ingest/sh``) and MLLP: map, store, acknowledge.

An ACK is sent only after the message's transaction committed (``hub.writer``): ``AA`` means
stored, ``AE`` means kept for a person (archived, set aside with its errors, any good reports
stored), ``AR`` means not HL7 (archived). A repeated MSH-10 from the same sender gets the first
answer again and changes nothing (the control id is written in the same transaction as the
records).

Over MLLP the sender is known by where it connects from (``YRDHUB_MLLP_SENDERS``); unset, any
hospital may send from loopback only.
"""

from __future__ import annotations

import asyncio
import ipaddress
from datetime import datetime, timezone

import structlog
from fastapi import APIRouter, Depends, Request
import orjson
from sqlalchemy import bindparam, insert, select, update
from starlette.responses import Response

from hub import api_models, arrivals, ingest, metrics, store, writer
from hub.auth import Party, bearer_party, require_hospital
from hub.errors import BadRequest
from hub.models import MessageControl, Upload
from mappers import er7, hl7_ack
from mappers import shanghai_hl7v2 as sh

log = structlog.get_logger("hub.hl7")
router = APIRouter()
ER7 = "x-application/hl7-v2+er7"
CHANNEL = ingest.Channel("sh", "mappers.shanghai_hl7v2")


def _controlled(mapped: sh.MessageResult) -> str | None:
    """The control id a repeat is recognised by (what was answered AR has none to trust)."""
    return mapped.control_id[:100] if mapped.control_id and mapped.ack_code != "AR" else None


def _store_all(conn, sender: str, items, content_type) -> list[bytes]:
    """One body's messages: the new ones archived and stored together (a handful of bulk
    statements, not a dozen per message); repeats answered with their first ACK."""
    M = MessageControl.__table__
    controls = {c for _, r in items if (c := _controlled(r))}
    answered = dict(conn.execute(select(M.c.control_id, M.c.ack).where(
        M.c.sender == sender, M.c.control_id.in_(controls))).all()) if controls else {}
    fresh, first_of = [], {}
    for n, (message, mapped) in enumerate(items):
        control = _controlled(mapped)
        if control is not None and (control in answered or control in first_of):
            metrics.RECORDS.labels("sh", "repeated").inc()
            continue
        if control is not None:
            first_of[control] = n
        fresh.append((n, message, mapped))
    now = datetime.now(timezone.utc)
    upload_ids = _archive_all(conn, sender, fresh, content_type, now)
    records, origins = [], []
    for (_, _, mapped), upload_id in zip(fresh, upload_ids):
        records += mapped.result.records
        origins += [upload_id] * len(mapped.result.records)
    put = store.put_records(conn, "sh", records, None, origins)
    acks = _finish(conn, sender, fresh, upload_ids, put)
    arrivals.write(conn, [arrivals.of_message(upload_id, sender, now, mapped, put)
                          for (_, _, mapped), upload_id in zip(fresh, upload_ids)])
    return [acks[n] if n in acks else
            answered.get(_controlled(r)) or acks[first_of[_controlled(r)]]
            for n, (_, r) in enumerate(items)]


def _archive_all(conn, sender: str, fresh, content_type, now: datetime) -> list[int]:
    if not fresh:
        return []
    rows = [ingest.upload_row("sh", sender, m, content_type, now) for _, m, _ in fresh]
    return list(conn.execute(insert(Upload).returning(Upload.id, sort_by_parameter_order=True),
                             rows).scalars())


def _finish(conn, sender: str, fresh, upload_ids, put) -> dict[int, bytes]:
    """Summaries, ACKs and control ids of the new messages, written in bulk."""
    acks, summaries, controls = {}, [], []
    now = datetime.now(timezone.utc)
    for (n, message, mapped), upload_id in zip(fresh, upload_ids):
        outcomes = [put.outcomes.get(f"sh:{r.hospital}|{r.key}") for r in mapped.result.records]
        summary = {"ack": mapped.ack_code, "control_id": mapped.control_id,
                   "stored": outcomes.count("stored"), "unchanged": outcomes.count("unchanged"),
                   "rejected": [r.as_dict() for r in mapped.result.rejected],
                   "errors": [e.location() + ": " + e.reason for e in mapped.errors],
                   "notes": mapped.result.notes, "set_aside": mapped.ack_code != "AA"}
        summaries.append({"w_id": upload_id, "summary": orjson.dumps(summary).decode()})
        acks[n] = hl7_ack.build_ack(message, mapped.ack_code, mapped.errors, f"ACK{upload_id}")
        if _controlled(mapped):
            controls.append({"sender": sender, "control_id": _controlled(mapped),
                             "upload_id": upload_id, "ack": acks[n], "received_at": now})
        metrics.RECORDS.labels("sh", mapped.ack_code).inc()
    if summaries:
        conn.execute(update(Upload).where(Upload.id == bindparam("w_id")), summaries)
    if controls:
        conn.execute(insert(MessageControl), controls)
    return acks


async def handle_message(app, sender: str, message: bytes, content_type: str | None = ER7
                         ) -> bytes:
    """Map (in a worker) and store one message; the ACK bytes to answer (only once committed:
    the writer batches it with whatever else is being stored)."""
    mapped = await ingest.off_loop(app, sh.map_message, message, sender)
    acks = await writer.of(app).run(storing(sender, [(message, mapped)], content_type))
    return acks[0]


def storing(sender: str, items: list[tuple[bytes, sh.MessageResult]], content_type: str | None
            ) -> writer.Batchable:
    """The writer's work for one body's messages (all or nothing): their ACKs, in order.
    Bodies of one sender queued together are stored by one ``_store_all``."""
    keys = frozenset(f"sh:{r.hospital}|{r.key}" for _, m in items for r in m.result.records)
    return writer.Batchable(("sh", sender, content_type), keys, items,
                            lambda conn, bodies: _store_bodies(conn, sender, bodies, content_type))


def _store_bodies(conn, sender: str, bodies: list[list], content_type) -> list[list[bytes]]:
    acks = _store_all(conn, sender, [item for body in bodies for item in body], content_type)
    answers, start = [], 0
    for body in bodies:
        answers.append(acks[start:start + len(body)])
        start += len(body)
    return answers


@router.post("/ingest/sh", response_class=Response, openapi_extra={"requestBody": {
    "required": True, "description": "HL7 v2 (formats/shanghai-hl7v2.md): one message, several, or a batch",
    "content": {"x-application/hl7-v2+er7": {"schema": {"type": "string"}}}}},
    responses={200: {"description": "one ACK per message, in order",
                     "content": {ER7: {"schema": {"type": "string"}}}},
               **{code: {"model": api_models.ErrorBody} for code in (400, 401, 403, 413)}})
async def ingest_sh(request: Request, party: Party = Depends(bearer_party)) -> Response:
    """One message, several, or a batch: one ACK per message, in order."""
    sender = require_hospital(party)
    body = await ingest.read_body(request, request.app.state.settings.max_body_bytes)
    messages = er7.split_messages(body)
    if not messages:
        raise BadRequest("empty body: no HL7 message")
    mapped = await asyncio.gather(*(ingest.off_loop(request.app, sh.map_message, m, sender)
                                    for m in messages))
    acks = await writer.of(request.app).run(storing(sender, list(zip(messages, mapped)),
                                                    request.headers.get("content-type")))
    return Response(b"".join(acks), 200, media_type=ER7)


# ---------------------------------------------------------------------------------------------
# MLLP: who may send from where
# ---------------------------------------------------------------------------------------------


def msh4(message: bytes) -> str:
    """MSH-4 (sending facility, first component) read from the raw bytes; "" when absent."""
    fields, enc = er7.raw_msh_fields(message)
    value = fields[4] if len(fields) > 4 else ""
    return value.split(enc.component)[0].strip() if enc else ""


def allowed_sender(rules, peer_ip: str, claimed: str) -> str | None:
    """The hospital a message from ``peer_ip`` claiming ``claimed`` may be stored for, or None.

    With no rules, any hospital may send from loopback only. With rules, the claimed hospital
    must have a rule whose network holds the address.
    """
    try:
        address = ipaddress.ip_address(peer_ip)
    except ValueError:
        return None
    if not rules:
        return claimed if address.is_loopback and claimed else None
    for hospital, network in rules:
        if hospital == claimed and address in network:
            return claimed
    return None


async def mllp_handler(app, message: bytes, peer_ip: str) -> bytes:
    claimed = msh4(message)
    sender = allowed_sender(app.state.mllp_rules, peer_ip, claimed)
    if sender is None:
        log.warning("mllp sender refused", peer=peer_ip, claimed=claimed)
        error = er7.AckError("MSH", 1, 4, f"hospital {claimed or '(none)'} may not send from "
                                         f"{peer_ip}", "207")
        return hl7_ack.build_ack(message, "AR", [error], "REFUSED")
    return await handle_message(app, sender, message, "mllp")


async def start_mllp(app):
    """Lifespan starter: the MLLP listener on ``YRDHUB_MLLP_PORT`` (0: off)."""
    from hub.mllp import start_mllp_server

    settings = app.state.settings
    app.state.mllp_rules = settings.mllp_sender_rules()
    if not settings.mllp_port:
        async def nothing():
            return None
        return nothing
    host = settings.mllp_host or ("0.0.0.0" if app.state.mllp_rules else "127.0.0.1")
    server = await start_mllp_server(host, settings.mllp_port,
                                     lambda m, ip: mllp_handler(app, m, ip),
                                     settings.max_body_bytes)
    app.state.mllp_server = server
    log.info("mllp listening", host=host, port=settings.mllp_port)

    async def stop():
        server.close()
        await server.wait_closed()
    return stop


__all__ = ["router", "start_mllp", "handle_message"]
