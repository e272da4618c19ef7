"""What tests and benchmarks share that is not a fixture: where the checkout, its fixtures and the
peers' files are, a free loopback port, and a uvicorn server in a thread (its own event loop)."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
PEERS = ROOT.parent / "shared" / "peers"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Hub:
    url: str
    engine: object
    app: object

    def token(self, kind: str, subject: str | None = None) -> str:
        from hub.auth import create_token

        return create_token(self.engine, kind, subject)

    def client(self, token: str | None = None, **kw) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kw)


class _Server(uvicorn.Server):
    def install_signal_handlers(self):  # running in a thread
        pass


def serve_in_thread(app, port: int) -> _Server:
    server = _Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                    access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("hub did not start")
        time.sleep(0.02)
    server.thread = thread
    return server


def empty_postgres(url: str) -> str:
    """``url`` after dropping and re-creating its ``public`` schema (a PostgreSQL test or benchmark
    database starts empty); returns ``url``."""
    from sqlalchemy import text

    from hub.db import make_engine

    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    return url
