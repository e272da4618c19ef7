"""Helpers of the portal and transfer tests: a real hub (uvicorn on a loopback port) wired to the
simulated platforms, with the transfer worker started, and signing a person in as a browser does
(GET the form for its CSRF cookie and field, POST it back)."""

from __future__ import annotations

import re
import time
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

from tests.support.common import free_port, serve_in_thread

FAST_TRANSFERS = {"retry_base": 0.1, "retry_max": 0.5, "poll": 0.1, "cancel_wait": 10.0}
FINAL = ("completed", "refused", "cancelled")
# Persons of fixtures/persons.json: (province, e-voucher code, resident ID)
LISI = ("ZJ", "ZJEV-LISI-8F3K2Q7M", "33042119850412002X")
ZHANGWEI = ("SH", "SHEV-ZHANGWEI-5T9R", "310104196203150019")
SUNQIANG = ("SH", "SHEV-SUNQIANG-2K7D", "310115198811200030")
ZHAOMIN = ("SH", "SHEV-ZHAOMIN-7Q2W", "310118199201010049")
QIANFANG_ZJ = ("ZJ", "ZJEV-QIANFANG-1B6L", "330106198504120089")
CHEN = ("JS", "JSEV-CHENJIANGUO-6P1X", "320509197801020038")
WANGFANG = ("JS", "JSEV-WANGFANG-4M8N", "320106199007280025")
LIUYANG = ("AH", "AHEV-LIUYANG-8D2F", "340104197506060010")
ZHENGLEI = ("AH", "AHEV-ZHENGLEI-5S3G", "340202196808300073")
WUXIA = ("ZJ", "ZJEV-WUXIA-9H4J", "330106200105090062")
ZHOUJIE = ("JS", "JSEV-ZHOUJIE-3C5V", "320106199302110053")


@dataclass
class PortalHub:
    url: str
    app: object
    server: object

    def stop(self) -> None:
        self.server.should_exit = True
        self.server.thread.join(15)


def start_hub(database_url: str, sims, transfer_options: dict | None = None, session_hours: int = 8) -> PortalHub:
    """A hub on a free port whose platforms are ``sims``, with ``start_transfers`` appended to its
    starters (until the lead wires it into ``hub.app``)."""
    from hub.app import create_app
    from hub.config import Settings
    from settlement.transfer import start_transfers

    urls = {f"insurer_{p.lower()}_url": u for p, u in (sims.urls if sims else {}).items()}
    app = create_app(Settings(database_url=database_url, mllp_port=0, map_workers=0,
                              session_hours=session_hours, **urls))
    if start_transfers not in app.state.starters:
        app.state.starters.append(start_transfers)
    app.state.transfer_options = dict(FAST_TRANSFERS, **(transfer_options or {}))
    port = free_port()
    server = serve_in_thread(app, port)
    return PortalHub(f"http://127.0.0.1:{port}", app, server)


def login_form(client: httpx.Client) -> str:
    page = client.get("/portal/login")
    assert page.status_code == 200
    return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)


def sign_in(url: str, person: tuple[str, str, str]) -> httpx.Client:
    """A client signed in as ``person``; asserts the 303 to /portal."""
    client = httpx.Client(base_url=url, timeout=60, follow_redirects=False)
    csrf = login_form(client)
    answer = client.post("/portal/login", data={"province": person[0], "code": person[1], "csrf": csrf})
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/portal"
    return client


def wait_final(client: httpx.Client, transfer_id: str, timeout: float = 30.0) -> dict:
    """Poll the transfer until it is final; AssertionError (with its last state) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        transfer = client.get(f"/api/me/transfers/{transfer_id}").json()
        if transfer["status"] in FINAL:
            return transfer
        assert time.monotonic() < deadline, transfer
        time.sleep(0.1)


@contextmanager
def session(url: str, person: tuple[str, str, str]):
    """``sign_in`` as a context manager that closes the client."""
    client = sign_in(url, person)
    try:
        yield client
    finally:
        client.close()
