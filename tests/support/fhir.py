"""Helpers of the FHIR tests: records loaded through the hub's own ingest routes, and the cast
of the sharing-rule tests.

Cast: 李四 (ZJ-insured) was seen at a Zhejiang hospital (ZJ_H) with a respiratory infection and a
depressive episode (F32, sensitive), and at a Shanghai hospital (SH_H). OTHER is a Shanghai
hospital that never saw her.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from mappers.common import RESIDENT_ID_SYSTEM
from tests.support.common import FIXTURES

from tests.support.visits import OTHER, RID, SH_H, ZJ_H, sh_visit, zj_visit  # noqa: F401 - the cast, re-exported

ZJ = FIXTURES / "zj"
ZJ_FIXTURES = ("upload_basic.json", "upload_two_visits.json", "upload_other_hospital.json")


def send_zj(hub, raw: bytes) -> dict:
    """One Zhejiang upload, sent by the hospital it names; its summary."""
    with hub.client(hub.token("hospital", json.loads(raw)["jgdm"])) as c:
        answer = c.post("/ingest/zj", content=raw)
        assert answer.status_code == 200, answer.text
        return answer.json()


def load_zj_fixtures(hub, names=ZJ_FIXTURES) -> None:
    for name in names:
        send_zj(hub, (ZJ / name).read_bytes())


def patient_id(client, rid: str = RID) -> str:
    bundle = client.get("/fhir/Patient", params={"identifier": f"{RESIDENT_ID_SYSTEM}|{rid}"}).json()
    assert bundle["total"] == 1
    return bundle["entry"][0]["resource"]["id"]


def make_world(hub) -> dict:
    """The cast's visits sent (ZJ two days ago, SH three hours ago); clients for the three
    hospitals and an admin, and the patient's id. Close the clients with ``close_world``."""
    now = datetime.now(timezone.utc)
    assert send_zj(hub, zj_visit(now - timedelta(days=2)))["stored"] == 1
    with hub.client(hub.token("hospital", SH_H)) as c:
        ack = c.post("/ingest/sh", content=sh_visit(SH_H, now - timedelta(hours=3)))
        assert b"MSA|AA" in ack.content
    admin = hub.client(hub.token("admin"))
    clients = {h: hub.client(hub.token("hospital", h)) for h in (ZJ_H, SH_H, OTHER)}
    return {"pid": patient_id(admin), "admin": admin, **clients}


def close_world(world: dict) -> None:
    for value in world.values():
        if hasattr(value, "close"):
            value.close()
