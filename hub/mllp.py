"""A generic asyncio MLLP listener (HL7 v2 over TCP: ``0x0B`` message ``0x1C 0x0D``).

Built on python-hl7's ``hl7.mllp``: its server (``start_hl7_server``), protocol and
``HL7StreamWriter.writeblock`` (framing of the answer) are used as they are. The frame is read
here rather than with ``HL7StreamReader.readmessage``/``readblock`` because:

- ``readmessage`` decodes (ASCII by default) and parses; the hub needs the raw bytes, to archive
  them as received and to map them itself;
- ``readblock`` raises on a frame with bytes before the start block (a stray ``\\n`` after the
  previous ``0x1C 0x0D`` is common) and then the message is lost; here those bytes are skipped;
- on an oversized message ``readblock`` clears the buffer, so the MSH (and its control id) needed
  for the AR answer is gone; here the head is kept for the AR before the connection is closed.

The stream limit of the reader is ``max_bytes`` (asyncio ``LimitOverrunError`` beyond it).

No database or mapper state here: ``handler(message, peer_ip) -> ack bytes`` does the work.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Awaitable, Callable

from hl7.mllp import start_hl7_server

log = logging.getLogger(__name__)

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"

Handler = Callable[[bytes, str], Awaitable[bytes]]


class _Oversize(Exception):
    def __init__(self, head: bytes):
        super().__init__("message larger than the limit")
        self.head = head


def default_reject(head: bytes, reason: str) -> bytes:
    """An HL7 AR for a frame that cannot be handed to the handler (oversized, unframed)."""
    from mappers.er7 import AckError
    from mappers.hl7_ack import build_ack

    # Only the MSH line: a head cut mid-character would not decode as UTF-8.
    msh = head.split(b"\r", 1)[0] + b"\r" if b"\r" in head else b""
    return build_ack(msh or None, "AR", [AckError("", 0, 0, reason, "100")],
                     uuid.uuid4().hex[:20])


async def _read_frame(reader: asyncio.StreamReader) -> bytes | None:
    """The next frame's message bytes; None for a frame without a start block.

    Raises ``asyncio.IncompleteReadError`` at end of stream and ``_Oversize`` when the message
    exceeds the reader's limit.
    """
    try:
        block = await reader.readuntil(END_BLOCK)
    except asyncio.LimitOverrunError:
        # The buffer still holds the head of the message (python-hl7's readblock peeks it too).
        head = bytes(reader._buffer[:4096])  # noqa: SLF001
        raise _Oversize(head[head.find(START_BLOCK) + 1:]) from None
    start = block.find(START_BLOCK)
    if start == -1:
        return None
    return block[start + 1:-len(END_BLOCK)]


async def start_mllp_server(host: str, port: int, handler: Handler, max_bytes: int
                            ) -> asyncio.Server:
    """Listen for MLLP on ``host:port`` (port 0: any free port, see ``server.sockets``).

    Each framed message goes to ``handler(message_bytes, peer_ip)``; its result is sent back
    framed. Frames without a start block are answered by ``default_reject`` (AR) and the
    connection stays open; a message larger than ``max_bytes`` is answered AR and the connection
    closed (the rest of it cannot be told from a next message). A handler that raises gets no
    answer and its connection is closed, so the sender resends later (delivery is at least
    once); the server itself keeps running in every case.
    """
    async def on_client(reader, writer) -> None:
        peer = writer.get_extra_info("peername")
        peer_ip = peer[0] if peer else ""
        try:
            await _serve(reader, writer, peer_ip, handler, max_bytes)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:  # noqa: BLE001 - one bad connection must not end the listener
            log.exception("MLLP connection from %s failed", peer_ip)
        finally:
            writer.close()

    return await start_hl7_server(on_client, host, port, limit=max_bytes, encoding="utf-8")


async def _serve(reader, writer, peer_ip: str, handler: Handler, max_bytes: int) -> None:
    while True:
        try:
            message = await _read_frame(reader)
        except asyncio.IncompleteReadError:
            return  # the peer closed (a partial frame at the end is dropped)
        except _Oversize as exc:
            log.warning("MLLP message from %s over %d bytes: AR, connection closed",
                        peer_ip, max_bytes)
            writer.writeblock(default_reject(exc.head, f"message larger than {max_bytes} bytes"))
            await writer.drain()
            return
        if message is None:
            writer.writeblock(default_reject(b"", "frame without the MLLP start block 0x0B"))
        else:
            writer.writeblock(await handler(message, peer_ip))
        await writer.drain()
