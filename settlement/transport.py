"""The HTTP transport under the platform client: httpx requests, responses, timeouts and
exceptions, carried over aiohttp's connection pool.

Why not httpx's own transport: on the settlement path (two platform calls per bill) httpcore
and the anyio layer under it were 37% of the hub's CPU, measured with py-spy under
``python -m bench.settle`` (cancel scopes, locks and a readability poll per request); this
transport does the same call in half the CPU. httpx stays the client's API: requests are built
and answers read as ``httpx`` objects, timeouts are an ``httpx.Timeout``, and every failure is
raised as the ``httpx`` exception that says how far the request got, which is what the
platform client's NotSent / OutcomeUnknown split rests on:

    httpx.ConnectError, ConnectTimeout, UnsupportedProtocol
                          no connection was made (or none was free in time):
                          not a byte of the request left
    httpx.ReadTimeout     sent, no answer within the read timeout (or within the sum of the
                          timeouts, the bound on the whole exchange)
    httpx.ReadError       sent (perhaps partly), then the connection was reset or closed
    httpx.RemoteProtocolError
                          sent, and the answer was not HTTP

aiohttp's own mapping in third-party adapters files a server disconnect under a connect
timeout, which would make a message the platform may have processed look unsent; hence this
module. A keep-alive connection the platform closed while idle is noticed by aiohttp before it
is reused; one closed in the instant of reuse gives ReadError (outcome unknown), as httpx does.
"""

from __future__ import annotations

import asyncio
import ssl

import aiohttp
import httpx

# Headers aiohttp computes itself from the request it sends.
_OWN_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})


class AiohttpTransport(httpx.AsyncBaseTransport):
    """One pool of at most ``max_connections`` keep-alive connections (idle ones closed after
    ``keepalive_expiry`` s). Made outside an event loop; the session is opened on the first
    request, in the loop that sends it (and again if a later request comes from another loop:
    tests run each in a loop of its own)."""

    def __init__(self, *, max_connections: int, keepalive_expiry: float = 15.0,
                 verify: ssl.SSLContext | bool = True):
        self.max_connections, self.keepalive_expiry, self.verify = max_connections, keepalive_expiry, verify
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _session_here(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            connector = aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=0,
                                             keepalive_timeout=self.keepalive_expiry, ssl=self.verify)
            # No cookies, no proxy from the environment, no decompression behind httpx's back.
            self._session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                                  trust_env=False, auto_decompress=False)
            self._loop = loop
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session_here()
        headers = [(k, v) for k, v in request.headers.multi_items() if k.lower() not in _OWN_HEADERS]
        try:
            async with session.request(request.method, str(request.url), headers=headers,
                                       data=request.content or None, allow_redirects=False,
                                       timeout=_timeout(request)) as answer:
                body = await answer.read()
                return httpx.Response(answer.status, headers=list(answer.raw_headers), content=body,
                                      request=request)
        except aiohttp.ClientError as exc:
            raise _as_httpx(exc, request) from exc
        except asyncio.TimeoutError as exc:  # the bound on the whole exchange
            raise httpx.ReadTimeout("no answer within the timeouts", request=request) from exc
        except OSError as exc:  # connecting errors come wrapped (above): this one came later
            raise httpx.ReadError(f"{type(exc).__name__}: {exc}", request=request) from exc

    async def aclose(self) -> None:
        if self._session is not None and self._loop is asyncio.get_running_loop():
            await self._session.close()
        self._session = None


def _timeout(request: httpx.Request) -> aiohttp.ClientTimeout:
    """httpx's four timeouts as aiohttp's: ``pool`` and ``connect`` bound getting a connection,
    ``read`` each wait for the answer, and their sum the whole exchange (aiohttp has no write
    timeout)."""
    t = request.extensions.get("timeout", {})
    parts = [t.get(name) for name in ("pool", "connect", "write", "read")]
    total = None if any(p is None for p in parts) else sum(parts)
    getting = None if t.get("pool") is None or t.get("connect") is None else t["pool"] + t["connect"]
    return aiohttp.ClientTimeout(total=total, connect=getting, sock_connect=t.get("connect"),
                                 sock_read=t.get("read"))


def _as_httpx(exc: aiohttp.ClientError, request: httpx.Request) -> httpx.TransportError:
    """The httpx exception saying how far the request got (see the module docstring)."""
    message = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, aiohttp.ConnectionTimeoutError):  # getting a connection took too long
        return httpx.ConnectTimeout(message, request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):  # refused, unreachable, DNS, TLS handshake
        return httpx.ConnectError(message, request=request)
    if isinstance(exc, aiohttp.InvalidURL):
        return httpx.UnsupportedProtocol(message, request=request)
    if isinstance(exc, aiohttp.ServerTimeoutError):  # a read timeout, after sending
        return httpx.ReadTimeout(message, request=request)
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientPayloadError)):
        return httpx.ReadError(message, request=request)
    return httpx.RemoteProtocolError(message, request=request)  # a malformed answer, or anything else
