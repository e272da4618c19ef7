"""Shanghai's HL7 v2 over HTTP (``POST /ingest/sh``) and MLLP: map, store, acknowledge.

An ACK is built only after the message's transaction committed: ``AA`` means stored, ``AE``
means kept for a person (archived, set aside with its errors, any good reports stored), ``AR``
means not HL7 (archived). A repeated MSH-10 from the same sender gets the first answer again and
changes nothing (the control id is written in the same transaction as the records).

Over MLLP the sender is known by where it connects from (``YRDHUB_MLLP_SENDERS``); unset, any
hospital may send from loopback only.
"""

from __future__ import annotations

import asyncio
import ipaddress
from datetime import datetime, timezone

import structlog
from fastapi import APIRouter, Depends, Request
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError, OperationalError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from hub import ingest, metrics, store
from hub.auth import Party, bearer_party, require_hospital
from hub.db import writer
from hub.errors import BadRequest
from mappers import shanghai_hl7v2 as sh
from mappers.common import MapResult

log = structlog.get_logger("hub.hl7")
router = APIRouter()
ER7 = "x-application/hl7-v2+er7"
CHANNEL = ingest.Channel("sh", "mappers.shanghai_hl7v2")


def _map_message(message: bytes, sender: str) -> sh.MessageResult:
    return sh.map_message(message, sender)


def store_messages(engine, sender: str, items: list[tuple[bytes, sh.MessageResult]],
                   content_type: str | None) -> list[bytes]:
    """Archive, store and remember messages in one transaction; their ACKs, in order.

    All or nothing: if the transaction fails no ACK is sent, the sender resends, and what a
    repeat finds already stored answers as it did the first time.
    """
    for attempt in range(5):
        try:
            with writer(engine).begin() as conn:
                return [_store_in(conn, sender, m, r, content_type) for m, r in items]
        except (IntegrityError, OperationalError):
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


def store_message(engine, sender: str, message: bytes, mapped: sh.MessageResult,
                  content_type: str | None) -> bytes:
    return store_messages(engine, sender, [(message, mapped)], content_type)[0]


def _store_in(conn, sender: str, message: bytes, mapped: sh.MessageResult,
              content_type: str | None) -> bytes:
    from hub.models import MessageControl

    control = mapped.control_id
    if control and mapped.ack_code != "AR":
        seen = conn.execute(select(MessageControl.ack).where(
            MessageControl.sender == sender, MessageControl.control_id == control)).first()
        if seen is not None:
            metrics.RECORDS.labels("sh", "repeated").inc()
            return seen.ack
    upload_id = ingest.archive(conn, "sh", sender, message, content_type)
    put = store.put_records(conn, "sh", mapped.result.records, upload_id)
    rejected = [r.as_dict() for r in mapped.result.rejected + put.rejected]
    errors = [e.location() + ": " + e.reason for e in mapped.errors]
    ingest.set_summary(conn, upload_id, {
        "ack": mapped.ack_code, "control_id": control, "stored": put.stored,
        "unchanged": put.unchanged, "rejected": rejected, "errors": errors,
        "notes": mapped.result.notes, "set_aside": mapped.ack_code != "AA"})
    ack = sh.build_ack(message, mapped.ack_code, mapped.errors, f"ACK{upload_id}")
    if control and mapped.ack_code != "AR":
        conn.execute(insert(MessageControl), [{
            "sender": sender, "control_id": control[:100], "upload_id": upload_id, "ack": ack,
            "received_at": datetime.now(timezone.utc)}])
    metrics.RECORDS.labels("sh", mapped.ack_code).inc()
    return ack


async def handle_message(app, sender: str, message: bytes, content_type: str | None = ER7
                         ) -> bytes:
    """Map (in a worker) and store one message; the ACK bytes to answer."""
    mapped = await _map_off_loop(app, message, sender)
    return await run_in_threadpool(store_message, app.state.engine, sender, message, mapped,
                                   content_type)


async def _map_off_loop(app, message: bytes, sender: str) -> sh.MessageResult:
    pool = ingest._pool(app)
    if pool is None:
        return await run_in_threadpool(_map_message, message, sender)
    return await asyncio.get_running_loop().run_in_executor(pool, _map_message, message, sender)


@router.post("/ingest/sh")
async def ingest_sh(request: Request, party: Party = Depends(bearer_party)) -> Response:
    """One message, several, or a batch: one ACK per message, in order."""
    sender = require_hospital(party)
    body = await ingest.read_body(request, request.app.state.settings.max_body_bytes)
    messages = sh.split_messages(body)
    if not messages:
        raise BadRequest("empty body: no HL7 message")
    mapped = await asyncio.gather(*(_map_off_loop(request.app, m, sender) for m in messages))
    acks = await run_in_threadpool(store_messages, request.app.state.engine, sender,
                                   list(zip(messages, mapped)),
                                   request.headers.get("content-type"))
    return Response(b"".join(acks), 200, media_type=ER7)


# ---------------------------------------------------------------------------------------------
# MLLP: who may send from where
# ---------------------------------------------------------------------------------------------


def msh4(message: bytes) -> str:
    """MSH-4 (sending facility, first component) read from the raw bytes; "" when absent."""
    fields, enc = sh._raw_msh_fields(message)
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
        error = sh.AckError("MSH", 1, 4, f"hospital {claimed or '(none)'} may not send from "
                                        f"{peer_ip}", "207")
        return sh.build_ack(message, "AR", [error], "REFUSED")
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


__all__ = ["router", "start_mllp", "handle_message", "MapResult"]
