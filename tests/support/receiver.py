"""A real HTTP receiver of notifications on a loopback socket: it records every request and
answers what it is told (a status for the next requests, or holding one until released)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    at: float  # time.time() on arrival

    @property
    def event(self) -> str | None:
        return self.headers.get("x-yrdhub-event")


class Receiver:
    """``url(path)`` to register; ``received(path)`` what came there. ``answer(*statuses)``
    queues the answers of the next requests (then 200 again; a 3xx carries a ``Location``);
    ``always(status)`` answers every request so; ``hold_next()`` keeps the next request waiting
    (recorded on arrival) until ``release()``."""

    def __init__(self):
        self.requests: list[Received] = []
        self.queued: list[int] = []
        self.status = 200
        self.lock = threading.Lock()
        self.holding: threading.Event | None = None
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def received(self, path: str | None = None) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if path is None or r.path == path]

    def answer(self, *statuses: int) -> None:
        with self.lock:
            self.queued.extend(statuses)

    def always(self, status: int) -> None:
        with self.lock:
            self.status = status

    def hold_next(self) -> None:
        self.holding = threading.Event()

    def release(self) -> None:
        if self.holding is not None:
            self.holding.set()

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()

    def _next_status(self, received: Received) -> tuple[int, threading.Event | None]:
        with self.lock:
            self.requests.append(received)
            hold, self.holding = self.holding, None
            status = self.queued.pop(0) if self.queued else self.status
        return status, hold

    def _handler(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a hospital's server would

            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                received = Received(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                                    body, time.time())
                status, hold = receiver._next_status(received)
                if hold is not None:
                    hold.wait(60)
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", receiver.url("/elsewhere"))
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_PUT = do_POST  # a followed redirect would show as one of these

            def log_message(self, *args):  # quiet
                pass

        return Handler
