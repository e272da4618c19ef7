"""The MLLP listener over a real socket: framing, splitting across TCP writes, UTF-8, limits."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hub.mllp import start_mllp_server

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "sh"
VT, FS_CR = b"\x0b", b"\x1c\x0d"


def frame(message: bytes) -> bytes:
    return VT + message + FS_CR


async def echo(message: bytes, peer_ip: str) -> bytes:
    return b"ECHO " + peer_ip.encode() + b" " + message


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    data = await asyncio.wait_for(reader.readuntil(FS_CR), 5)
    assert data.startswith(VT)
    return data[1:-2]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


async def with_server(max_bytes, body, handler=echo):
    server = await start_mllp_server("127.0.0.1", 0, handler, max_bytes)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return await body(reader, writer, port)
        finally:
            writer.close()
    finally:
        server.close()
        await server.wait_closed()


def test_one_message_is_echoed_with_peer_ip():
    async def body(reader, writer, _):
        writer.write(frame(b"MSH|^~\\&|A|B\rPID|1\r"))
        return await read_frame(reader)

    assert run(with_server(10_000, body)) == b"ECHO 127.0.0.1 MSH|^~\\&|A|B\rPID|1\r"


def test_two_messages_in_one_tcp_write_get_two_answers():
    async def body(reader, writer, _):
        writer.write(frame(b"MSH|one\r") + frame(b"MSH|two\r"))
        return [await read_frame(reader), await read_frame(reader)]

    assert run(with_server(10_000, body)) == [b"ECHO 127.0.0.1 MSH|one\r",
                                              b"ECHO 127.0.0.1 MSH|two\r"]


def test_a_message_split_across_writes_is_joined():
    async def body(reader, writer, _):
        data = frame(b"MSH|^~\\&|split|message\r")
        for i in range(0, len(data), 5):
            writer.write(data[i:i + 5])
            await writer.drain()
            await asyncio.sleep(0.01)
        return await read_frame(reader)

    assert run(with_server(10_000, body)) == b"ECHO 127.0.0.1 MSH|^~\\&|split|message\r"


def test_utf8_chinese_message_arrives_as_raw_bytes():
    message = (FIXTURES / "adt_a04.hl7").read_bytes()
    seen = []

    async def keep(msg, ip):
        seen.append(msg)
        return b"OK"

    async def body(reader, writer, _):
        writer.write(frame(message))
        return await read_frame(reader)

    assert run(with_server(100_000, body, keep)) == b"OK"
    assert seen == [message]
    assert "张^三" in seen[0].decode("utf-8")


def test_oversize_is_answered_ar_and_closed_and_server_survives():
    big = b"MSH|^~\\&|HIS|H31010100001|YRDHUB|YRD|20240315||ADT^A04|BIG0001|P|2.5\r" + b"X" * 5000

    async def body(reader, writer, port):
        writer.write(frame(big))
        ack = await read_frame(reader)
        rest = await asyncio.wait_for(reader.read(), 5)  # closed by the server
        # A new connection still works.
        r2, w2 = await asyncio.open_connection("127.0.0.1", port)
        w2.write(frame(b"MSH|small\r"))
        again = await read_frame(r2)
        w2.close()
        return ack, rest, again

    ack, rest, again = run(with_server(1000, body))
    assert b"MSA|AR|BIG0001" in ack
    assert b"1000 bytes" in ack
    assert rest == b""
    assert again == b"ECHO 127.0.0.1 MSH|small\r"


def test_malformed_frame_answered_ar_and_next_message_still_served():
    async def body(reader, writer, _):
        writer.write(b"garbage without start block" + FS_CR)
        first = await read_frame(reader)
        writer.write(b"\n" + frame(b"MSH|after\r"))  # stray LF before the start block
        return first, await read_frame(reader)

    first, second = run(with_server(10_000, body))
    assert b"MSA|AR|" in first
    assert second == b"ECHO 127.0.0.1 MSH|after\r"


def test_handler_exception_closes_connection_but_not_server():
    calls = []

    async def flaky(msg, ip):
        calls.append(msg)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return b"fine"

    async def body(reader, writer, port):
        writer.write(frame(b"MSH|1\r"))
        closed = await asyncio.wait_for(reader.read(), 5)
        r2, w2 = await asyncio.open_connection("127.0.0.1", port)
        w2.write(frame(b"MSH|2\r"))
        answer = await read_frame(r2)
        w2.close()
        return closed, answer

    closed, answer = run(with_server(10_000, body, flaky))
    assert closed == b""
    assert answer == b"fine"


@pytest.mark.parametrize("name", ["adt_a04.hl7", "oru_r01_lab.hl7"])
def test_end_to_end_with_the_shanghai_mapper(name):
    from mappers.hl7_ack import build_ack
    from mappers.shanghai_hl7v2 import map_message

    async def handler(msg, ip):
        result = map_message(msg, "H31010100001")
        return build_ack(msg, result.ack_code, result.errors, "ACK" + result.control_id)

    async def body(reader, writer, _):
        writer.write(frame((FIXTURES / name).read_bytes()))
        return await read_frame(reader)

    ack = run(with_server(100_000, body, handler)).decode("utf-8")
    assert "\rMSA|AA|" in ack
