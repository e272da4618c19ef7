"""Helpers of the FHIR tests: records loaded through the hub's own ingest routes, and the cast
of the sharing-rule tests.

Cast: 李四 (ZJ-insured) was seen at a Zhejiang hospital (ZJ_H) with a respiratory infection and a
depressive episode (F32, sensitive), and at a Shanghai hospital (SH_H). OTHER is a Shanghai
hospital that never saw her.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from mappers.common import CST, RESIDENT_ID_SYSTEM
from tests.conftest import FIXTURES

ZJ = FIXTURES / "zj"
RID = "33042119850412002X"
ZJ_H, SH_H, OTHER = "H33042100015", "H31010400007", "H31011800012"
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


def zj_visit(when: datetime, code: str = "F32.900", name: str = "抑郁发作") -> bytes:
    doc = json.loads((ZJ / "upload_basic.json").read_bytes())
    visit = doc["jzjl"][0]
    visit["jzsj"] = when.astimezone(CST).strftime("%Y-%m-%d %H:%M:%S")
    visit["zdxx"].append({"zdlx": "2", "zddm": code, "zdmc": name,
                          "zdsj": when.astimezone(CST).strftime("%Y-%m-%d %H:%M")})
    return json.dumps(doc, ensure_ascii=False).encode()


def sh_visit(hospital: str, when: datetime, visit_no: str = "ZY2099") -> bytes:
    stamp = when.astimezone(CST).strftime("%Y%m%d%H%M%S")
    return "\r".join([
        f"MSH|^~\\&|HIS|{hospital}|YRDHUB|YRD|{stamp}||ADT^A04^ADT_A01|C{visit_no}|P|2.5|||AL|NE||UNICODE UTF-8",
        f"EVN|A04|{stamp}",
        f"PID|1||{RID}^^^&2.16.156.10011.1.3&ISO^NNCHN||李^四||19850412|F|||徐汇区漕溪北路100号^^上海市^^200030^CHN||^PRN^PH^^^^13812345678",
        f"PV1|1|O|0301^^^{hospital}^^^^^呼吸内科||||D1^王^医生||||||||||||{visit_no}|||||||||||||||||||||||||{stamp}",
        "DG1|1||J20.900^急性支气管炎^ICD10CN||" + stamp[:8] + "|F", ""]).encode()


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
