"""settlement.transport: how far a request got, said as the httpx exception, against real sockets
(a raw TCP server per behaviour) and, for the rarer aiohttp errors, through the mapping itself."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import httpx
import pytest

from settlement.transport import AiohttpTransport, _as_httpx

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}"


async def _serve(handler):
    """A TCP server on a free loopback port running ``handler(reader, writer)``; (server, url)."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/api/1101"


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")), 0)
    return head + await reader.readexactly(length)


def _request(url: str, timeout: float = 2.0) -> httpx.Request:
    return httpx.Request("POST", url, content=b'{"a":1}', headers={"Content-Type": "application/json"},
                         extensions={"timeout": httpx.Timeout(timeout).as_dict()})


async def _send(url: str, timeout: float = 2.0) -> httpx.Response:
    transport = AiohttpTransport(max_connections=4)
    try:
        return await transport.handle_async_request(_request(url, timeout))
    finally:
        await transport.aclose()


def test_an_answer_is_an_httpx_response_and_the_connection_is_kept():
    seen: list[bytes] = []
    connections = []

    async def handler(reader, writer):
        connections.append(writer)
        while True:
            try:
                seen.append(await _read_request(reader))
            except asyncio.IncompleteReadError:
                return
            writer.write(OK)
            await writer.drain()

    async def main():
        server, url = await _serve(handler)
        transport = AiohttpTransport(max_connections=4)
        try:
            first = await transport.handle_async_request(_request(url))
            second = await transport.handle_async_request(_request(url))
        finally:
            await transport.aclose()
            server.close()
        return first, second

    first, second = asyncio.run(main())
    assert first.status_code == 200 and first.json() == {"ok": True} and second.content == first.content
    assert first.headers["content-type"] == "application/json"
    assert len(connections) == 1  # the second request reused the first connection
    assert seen[0].startswith(b"POST /api/1101 HTTP/1.1\r\n") and seen[0].endswith(b'{"a":1}')
    assert b"content-type: application/json" in seen[0].lower()


def test_nothing_listening_is_a_connect_error():
    with socket.socket() as s:  # a port that was free a moment ago, nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(httpx.ConnectError):
        asyncio.run(_send(f"http://127.0.0.1:{port}/api/1101"))


@pytest.mark.parametrize("answer, expected", [
    (None, httpx.ReadError),                                   # read the request, closed without a word
    (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{\"cut", httpx.ReadError),  # answer cut short
    (b"this is not http\r\n\r\n", httpx.RemoteProtocolError),  # a reply that is not HTTP
])
def test_a_request_sent_without_a_usable_answer_is_never_a_connect_error(answer, expected):
    got: list[bytes] = []

    async def handler(reader, writer):
        got.append(await _read_request(reader))
        if answer:
            writer.write(answer)
            await writer.drain()
        writer.close()

    async def main():
        server, url = await _serve(handler)
        try:
            await _send(url)
        finally:
            server.close()

    with pytest.raises(expected) as info:
        asyncio.run(main())
    assert got, "the server read the request: its outcome is unknown, not unsent"
    assert not isinstance(info.value, (httpx.ConnectError, httpx.ConnectTimeout))


def test_no_answer_in_time_is_a_read_timeout():
    async def handler(reader, writer):
        await _read_request(reader)
        await asyncio.sleep(2)

    async def main():
        server, url = await _serve(handler)
        try:
            await _send(url, timeout=0.3)
        finally:
            server.close()

    with pytest.raises(httpx.ReadTimeout):
        asyncio.run(main())


def test_one_transport_serves_a_second_event_loop():
    async def handler(reader, writer):
        await _read_request(reader)
        writer.write(OK)
        await writer.drain()
        writer.close()

    transport = AiohttpTransport(max_connections=2)

    async def once():
        server, url = await _serve(handler)
        try:
            return (await transport.handle_async_request(_request(url))).status_code
        finally:
            server.close()

    assert asyncio.run(once()) == 200
    assert asyncio.run(once()) == 200


@pytest.mark.parametrize("error, expected", [
    (aiohttp.ConnectionTimeoutError("pool"), httpx.ConnectTimeout),
    (aiohttp.SocketTimeoutError("read"), httpx.ReadTimeout),
    (aiohttp.ServerDisconnectedError(), httpx.ReadError),
    (aiohttp.ClientOSError(104, "reset"), httpx.ReadError),
    (aiohttp.ClientPayloadError("cut"), httpx.ReadError),
    (aiohttp.InvalidURL("ftp://x"), httpx.UnsupportedProtocol),
    (aiohttp.ClientError("anything else"), httpx.RemoteProtocolError),
])
def test_mapping_of_aiohttp_errors(error, expected):
    mapped = _as_httpx(error, _request("http://127.0.0.1:1/api/1101"))
    assert type(mapped) is expected
