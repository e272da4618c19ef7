"""Helpers of the Subscription tests: a hub with notification endpoints registered at a real
receiver, the cast's visits at a known time (so a re-send changes only what a test changes),
and the outbox as the database holds it."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from hub.models import Notification
from tests.conftest import Hub, free_port, serve_in_thread
from tests.support.fhir import OTHER, SH_H, ZJ_H, patient_id, send_zj, sh_visit, zj_visit

# fast retries, so that tests wait on conditions for fractions of a second
FAST = {"hook_retry_initial": 0.05, "hook_retry_max": 0.2, "hook_poll": 0.05,
        "hook_timeout": 2.0}


def endpoints(receiver) -> str:
    """YRDHUB_HOOK_ENDPOINTS naming a receiver path per hospital of the cast."""
    return ",".join(f"{h}={receiver.url('/' + h)}" for h in (SH_H, ZJ_H, OTHER))


@pytest.fixture()
def receiver():
    from tests.support.receiver import Receiver

    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture()
def notify_hub(db, database_url, receiver):
    """``notify_hub(**settings)``: a hub in this process (mapping in a thread, only the
    notification deliverer beside it) with the cast's endpoints at ``receiver``."""
    from hub import notify
    from hub.app import create_app
    from hub.config import Settings

    servers = []

    def start(**overrides) -> Hub:
        settings = Settings(database_url=database_url, mllp_port=0, map_workers=0,
                            migrate_on_start=False, hook_endpoints=endpoints(receiver),
                            **{**FAST, **overrides})
        app = create_app(settings)
        app.state.starters = [notify.start]
        port = free_port()
        servers.append(serve_in_thread(app, port))
        return Hub(f"http://127.0.0.1:{port}", db, app)

    yield start
    for server in servers:
        server.should_exit = True
        server.thread.join(10)


class Cast:
    """李四's visits sent at fixed times: ZJ_H two days ago, SH_H three hours ago."""

    def __init__(self, hub, receiver):
        self.hub, self.receiver = hub, receiver
        now = datetime.now(timezone.utc)
        self.zj_when, self.sh_when = now - timedelta(days=2), now - timedelta(hours=3)
        assert self.send_zj()["stored"] == 1
        self.send_sh(self.sh_when)
        self.clients = {h: hub.client(hub.token("hospital", h)) for h in (ZJ_H, SH_H, OTHER)}
        self.admin = hub.client(hub.token("admin"))
        self.pid = patient_id(self.admin)

    def send_zj(self, **changes) -> dict:
        """The ZJ visit again (same time), with ``zj_visit``'s ``changes``."""
        return send_zj(self.hub, zj_visit(self.zj_when, **changes))

    def send_sh(self, when: datetime, control: str = "", diagnosis: str = "") -> None:
        """SH_H's visit at ``when``; ``control`` a new control id (the hub answers a repeated
        one without storing), ``diagnosis`` (``code^name``) instead of the fixture's."""
        message = sh_visit(SH_H, when)
        if control:
            message = message.replace(b"|CZY2099|", f"|CZY2099{control}|".encode())
        if diagnosis:
            message = message.replace("J20.900^急性支气管炎".encode(), diagnosis.encode())
        with self.hub.client(self.hub.token("hospital", SH_H)) as c:
            assert b"MSA|AA" in c.post("/ingest/sh", content=message).content

    def subscribe(self, hospital: str, res_type: str, **channel):
        body = subscription(self.pid, res_type, self.hub_endpoint(hospital), **channel)
        return self.clients[hospital].post("/fhir/Subscription", json=body)

    def hub_endpoint(self, hospital: str) -> str:
        """The hospital's endpoint, as ``endpoints`` registers it."""
        return self.receiver.url(f"/{hospital}")

    def close(self) -> None:
        for client in (*self.clients.values(), self.admin):
            client.close()


def subscription(pid: str, res_type: str, endpoint: str, **channel) -> dict:
    return {"resourceType": "Subscription", "status": "requested",
            "reason": "treating this patient", "criteria": f"{res_type}?patient={pid}",
            "channel": {"type": "rest-hook", "endpoint": endpoint, **channel}}


def outbox(engine) -> int:
    """Notifications waiting to be delivered."""
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(Notification)).scalar_one()
