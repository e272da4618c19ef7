"""The simulated platforms over HTTP: one ``aiohttp.web`` application per province.

All four (and the pass-through proxies of ``tests/support/platforms.py``) are served by one
asyncio event loop in a background thread, an ``AppRunner`` and a ``TCPSite`` each (listen
backlog 1024: 200 and more clients connect at once). A fixed latency or a slow answer is a
non-blocking wait, so hundreds of concurrent calls are served at once.

Where the contract leaves the choice open the provinces differ on the wire: SH and JS send no
charset in Content-Type, and SH and AH close the connection after every answer (HTTP/1.0 style)
while JS and ZJ keep it alive. The faults of ``faults.Plan`` are real on the wire too: a reset
is a TCP RST with no answer (SO_LINGER 0, then abort), a busy status is a plain-text page with
``Retry-After``, a non-JSON answer is an HTML page.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import socket
import struct
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from settlement.simulated.faults import BUSY_FAULTS
from settlement.simulated.platform import PROVINCE_ADMDVS, Platform, World, load_persons

log = logging.getLogger(__name__)

IDLE_TIMEOUT = 120.0  # an idle keep-alive connection is closed after this
MAX_BODY = 16 * 1024 * 1024
STOP_GRACE = 0.5  # seconds a call still being answered (a held one) may take when stopping
JSON_TYPE = "application/json; charset=utf-8"
BARE_JSON_TYPE = {"SH": "application/json", "JS": "application/json"}
CLOSE_AFTER_ANSWER = frozenset({"SH", "AH"})
BUSY_TEXT = "系统繁忙或维护中，请稍后再试".encode()
NON_JSON_PAGE = b"<html><body>502 Bad Gateway</body></html>"
NO_SUCH_INFNO = {"infcode": -1, "err_msg": "未知交易", "output": {"err_code": "NO_SUCH_INFNO"}}
BAD_MESSAGE = {"infcode": -1, "err_msg": "报文格式错误", "output": {"err_code": "BAD_MESSAGE"}}
INTERNAL = {"infcode": -1, "err_msg": "系统内部错误", "output": {"err_code": "INTERNAL"}}


def _respond(status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> web.Response:
    """A response whose Content-Type is exactly ``content_type`` (aiohttp adds no charset when
    the header is given whole)."""
    return web.Response(status=status, body=body, headers={"Content-Type": content_type, **(headers or {})})


def _json(status: int, value: Any, content_type: str = JSON_TYPE) -> web.Response:
    return _respond(status, orjson.dumps(value), content_type)


def _reset(request: web.Request) -> web.Response:
    """Close the connection with a TCP RST (SO_LINGER 0): the client sees 'connection reset',
    no answer. The returned response is never written: aiohttp finds the transport closed and
    ends the connection as a client's premature disconnection."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        try:
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        transport.abort()
    return web.Response(status=500)


async def _sleep_until(when: float) -> None:
    """Sleep until the loop's time ``when`` (not at all when it has passed)."""
    delay = when - asyncio.get_running_loop().time()
    if delay > 0:
        await asyncio.sleep(delay)


class ProvinceServer:
    """One province's platform as an ``aiohttp.web`` application on the simulators' loop.

    ``start`` binds ``address`` (port 0: a free one; OSError when the port is taken) and sets
    ``server_address``; ``close`` stops listening and drops every connection. ``keep_alive``
    False: every answer says ``Connection: close``, then the connection is closed.
    """

    backlog = 1024

    def __init__(self, address: tuple[str, int], platform: Platform, *, keep_alive: bool = True):
        self.host, self.port = address
        self.platform = platform
        self.keep_alive = keep_alive
        self.json_type = BARE_JSON_TYPE.get(platform.province, JSON_TYPE)
        self.runner: web.AppRunner | None = None
        self.server_address: tuple[str, int] | None = None
        self.views: dict[str, Callable[[], Any]] = {
            "ledger": platform.ledger_copy,
            "received": self._received,
            "health": lambda: {"province": platform.province, "ok": True},
        }

    def _received(self) -> list[dict[str, Any]]:
        with self.platform.world.lock:
            return copy.deepcopy(self.platform.received)

    def app(self) -> web.Application:
        # Only the provinces that close after each answer pay for the middleware.
        app = web.Application(client_max_size=MAX_BODY, middlewares=[] if self.keep_alive else [self._close_after])
        app.router.add_get("/_sim/{view:ledger|received|health}", self._view, allow_head=False)
        app.router.add_post("/_sim/faults", self._control_faults)
        app.router.add_post(r"/api/{infno:\d{4}}", self._api_route)
        app.router.add_route("*", "/{tail:.*}", self._elsewhere)
        return app

    async def start(self) -> None:
        self.runner = web.AppRunner(self.app(), handle_signals=False, access_log=None,
                                    keepalive_timeout=IDLE_TIMEOUT, shutdown_timeout=STOP_GRACE)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port, backlog=self.backlog, reuse_address=True)
        await site.start()
        self.server_address = tuple(self.runner.addresses[0][:2])

    async def close(self) -> None:
        """Stop listening, drop every connection (clients see them closed), end every handler."""
        if self.runner is None:
            return
        server = self.runner.server
        for handler in list(server.connections) if server is not None else []:
            if handler.transport is not None:
                handler.transport.abort()
        await self.runner.cleanup()
        self.runner = None

    # -- routes ----------------------------------------------------------------------------------

    @staticmethod
    @web.middleware
    async def _close_after(request: web.Request, handler) -> web.StreamResponse:
        response = await handler(request)
        response.force_close()  # aiohttp then sends Connection: close and closes after it
        return response

    async def _view(self, request: web.Request) -> web.Response:
        return _json(200, self.views[request.match_info["view"]]())

    async def _elsewhere(self, request: web.Request) -> web.Response:
        if request.method == "GET":
            return _json(404, {"error": "not found"})
        return _json(404, NO_SUCH_INFNO) if request.method == "POST" else _json(501, {"error": "unsupported method"})

    async def _control_faults(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            self.platform.set_faults(**(orjson.loads(body) if body else {}))
        except (TypeError, ValueError) as exc:
            return _json(400, {"error": str(exc)})
        return _json(200, {"ok": True})

    async def _api_route(self, request: web.Request) -> web.Response:
        arrived = asyncio.get_running_loop().time()  # the head was just read: latency counts from it
        infno = request.match_info["infno"]
        if infno not in self.platform.handlers:
            return _json(404, NO_SUCH_INFNO)
        body = await request.read()
        with self.platform.in_flight_call():
            return await self._api(request, infno, body, arrived)

    async def _api(self, request: web.Request, infno: str, body: bytes, arrived: float) -> web.Response:
        """One platform call. ``latency_ms`` (and a slow answer's ``slow_ms``) count from the
        request's arrival: the answer leaves then, whatever reading and processing took, so
        that a fixed latency is what the caller sees (the benchmark subtracts it)."""
        platform = self.platform
        platform.note_received(infno, body)
        plan, faults = platform.plan(), platform.faults
        status, processed_first = (503, False) if plan.maintenance else BUSY_FAULTS.get(plan.kind, (0, False))
        if status:
            if processed_first:
                await self._process(infno, body)
            retry = faults.retry_after if faults.retry_after is not None else (60 if plan.maintenance else None)
            headers = {"Retry-After": str(retry)} if retry is not None else {}
            return _respond(status, BUSY_TEXT, "text/plain; charset=utf-8", headers)
        if plan.kind == "reset":
            return _reset(request)
        answer_at = arrived + faults.latency_ms / 1000 + (faults.slow_ms / 1000 if plan.slow else 0.0)
        if plan.slow and faults.slow_before_processing:
            await _sleep_until(answer_at)
        status, answer = await self._process(infno, body)
        await _sleep_until(answer_at)
        if (hold := platform.holds.get(infno)) is not None:
            await hold.wait()
        if plan.kind == "drop":
            return _reset(request)
        if plan.kind == "non_json":
            return _respond(200, NON_JSON_PAGE, "text/html")
        return _json(status, answer, self.json_type)

    async def _process(self, infno: str, body: bytes) -> tuple[int, dict]:
        """Decode the envelope and run the transaction; a malformed envelope is 400."""
        try:
            envelope = orjson.loads(body)
        except orjson.JSONDecodeError:
            envelope = None
        if not isinstance(envelope, dict) or not envelope.get("msgid") or envelope.get("infno") != infno \
                or len(str(envelope["msgid"])) > 30 or not isinstance(envelope.get("input", {}), dict):
            return 400, BAD_MESSAGE
        try:
            return 200, self.platform.process(infno, envelope)
        except Exception:  # a bug in the simulator: answer as a platform would, 500
            log.exception("%s failed on %s", self.platform.province, infno)
            return 500, INTERNAL


# ---------------------------------------------------------------------------------------------
# Running them
# ---------------------------------------------------------------------------------------------


class Simulators:
    """The four running platforms, served by one event loop in a background thread.
    ``urls[province]`` is each base URL."""

    def __init__(self, world: World, servers: dict[str, ProvinceServer], host: str):
        self.world, self.servers = world, servers
        self.platforms = {p: s.platform for p, s in servers.items()}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="simulators", daemon=True)
        self._thread.start()
        self._stopped = False
        try:
            self._on_loop(self._start_all(), timeout=10)
        except BaseException:
            self.stop()
            raise
        self.urls = {p: f"http://{host}:{s.server_address[1]}" for p, s in servers.items()}

    def _on_loop(self, coro, timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _start_all(self) -> None:
        for server in self.servers.values():
            await server.start()

    async def _close_all(self) -> None:
        await asyncio.gather(*(server.close() for server in self.servers.values()), return_exceptions=True)

    def env(self) -> dict[str, str]:
        """The hub's configuration for these platforms: ``YRDHUB_INSURER_SH_URL`` and so on."""
        return {f"YRDHUB_INSURER_{p}_URL": url for p, url in self.urls.items()}

    def ledger(self, province: str) -> list[dict[str, Any]]:
        """Committed settlements and transfer steps, oldest first, each with ``msgid`` and
        ``commit_no`` (the n-th commit of that msgid: 2 means a resend committed again)."""
        return self.platforms[province].ledger_copy()

    def settlements(self, province: str, setl_id: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.ledger(province) if e["kind"] == "settlement"
                and (setl_id is None or e["setl_id"] == setl_id)]

    def received(self, province: str, infno: str | None = None, msgid: str | None = None) -> list[dict]:
        """Every message that arrived (faulted or not): ``{"infno", "msgid", "at"}``."""
        with self.world.lock:
            return [dict(r) for r in self.platforms[province].received
                    if (infno is None or r["infno"] == infno) and (msgid is None or r["msgid"] == msgid)]

    def set_faults(self, province: str, **settings: Any) -> None:
        """Replace the province's fault settings (see ``Faults``); unnamed settings reset."""
        self.platforms[province].set_faults(**settings)

    def clear_faults(self, province: str | None = None) -> None:
        for p in [province] if province else list(self.platforms):
            self.platforms[p].set_faults()

    def set_latency(self, latency_ms: int, province: str | None = None) -> None:
        """Answer every call after ``latency_ms`` (the benchmark's fixed latency); no other fault."""
        for p in [province] if province else list(self.platforms):
            self.platforms[p].set_faults(latency_ms=latency_ms)

    def hold_answers(self, province: str, infno: str) -> Callable[[], None]:
        """From now on, messages ``infno`` to ``province`` are processed as they arrive but
        answered only once the returned function is called (tests: let another party act
        between a message's processing and its answer, with no timing involved)."""
        event = self.platforms[province].holds[infno] = asyncio.Event()

        def release() -> None:
            self.platforms[province].holds.pop(infno, None)
            self._loop.call_soon_threadsafe(event.set)
        return release

    def max_in_flight(self, province: str) -> int:
        return self.platforms[province].max_in_flight

    def person(self, province: str, certno: str) -> dict[str, Any] | None:
        """A copy of the platform's current record of a person (money as Decimal)."""
        with self.world.lock:
            found = self.platforms[province]._find(certno=certno)
            return copy.deepcopy(found)

    def stop(self) -> None:
        """Stop listening, drop every connection (clients see them closed), end the loop."""
        if self._stopped:
            return
        self._stopped = True
        if self._loop.is_running():
            try:
                self._on_loop(self._close_all(), timeout=5)
            except Exception:
                log.exception("stopping the simulators")
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> Simulators:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_simulators(ports: dict[str, int] | None = None, persons_path: str | Path | None = None, *,
                     host: str = "127.0.0.1", clock: Callable[[], datetime] | None = None,
                     ledger_path: str | Path | None = None,
                     close_after_answer: frozenset[str] = CLOSE_AFTER_ANSWER) -> Simulators:
    """Start the four platforms (one event loop in a background thread) and return them running.

    ``ports``: province -> port; absent or 0 picks a free port. ``persons_path``: the persons to
    seed (default ``fixtures/persons.json``). ``clock``: the platforms' "now" (+08:00), for the
    72 h window, token expiry and dates. ``ledger_path``: a JSON file rewritten after every
    message with every province's ledger. ``close_after_answer``: the provinces that close the
    connection after each answer (the rest keep it alive). Raises OSError when a port is taken
    (the platforms started before it are stopped).
    """
    world = World(clock=clock, ledger_path=ledger_path)
    persons = load_persons(persons_path)
    servers: dict[str, ProvinceServer] = {}
    for province in PROVINCE_ADMDVS:
        platform = world.platforms[province] = Platform(province, world, persons)
        servers[province] = ProvinceServer((host, (ports or {}).get(province, 0)), platform,
                                           keep_alive=province not in close_after_answer)
    return Simulators(world, servers, host)
