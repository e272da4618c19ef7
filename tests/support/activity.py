"""A month's known activity, driven through the hub's real endpoints, for the cooperation
indicators' tests (``tests/hub/test_indicators.py``, ``tests/browser/test_indicators_browser.py``).

``drive`` sends records in all four formats (with rejections), makes reads of every kind
(allowed, emergency, refused), settles, refuses and voids settlements, completes and refuses
transfers, and opens and answers corrections; it returns what each party did, as counted from
the answers the hub gave (so the expectations are the answers', not the indicators' own).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import httpx
from sqlalchemy import update

from hub.auth import create_token
from hub.models import Correction
from mappers.region import CST
from tests.support.common import FIXTURES
from tests.support.portal import LISI, SUNQIANG, WANGFANG, session
from tests.support.settlement import XIHU, body
from tests.support.visits import OTHER, SH_H, ZJ_H, sh_visit, zj_visit
from tests.support.waiting import wait_until

ZJ_QUIRKS = "H33040200006"  # the sender of fixtures/zj/upload_quirks.json
SH_BAD = "H31010100001"  # the sender of fixtures/sh/bad_id.hl7 (answered AE)
JS_H = "H32050900012"  # fixtures/js/outpatient*.xml
AH_H = "H34010400001"  # fixtures/ah/quirks.csv
FINAL = ("completed", "refused", "cancelled")


@dataclass
class Activity:
    """What was done, per party: ``received``/``rejected`` per hospital from the answers, and
    the month it happened in (+08:00)."""

    month: str
    received: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    overdue_month: str = ""  # the month of the overdue correction's deadline (yesterday)

    def count(self, hospital: str, answer: dict) -> None:
        rejected = len(answer["rejected"])
        self.received[hospital] = (self.received.get(hospital, 0) + answer["stored"]
                                   + answer["unchanged"] + rejected)
        self.rejected[hospital] = self.rejected.get(hospital, 0) + rejected


class Driver:
    def __init__(self, url: str, engine):
        self.url, self.engine = url, engine
        self.now = datetime.now(timezone.utc)
        self.activity = Activity(self.now.astimezone(CST).strftime("%Y-%m"))
        self.admin = create_token(engine, "admin", None)

    def client(self, party: str, kind: str = "hospital") -> httpx.Client:
        token = create_token(self.engine, kind, party)
        return httpx.Client(base_url=self.url, timeout=60, headers={"Authorization": f"Bearer {token}"})

    def post(self, hospital: str, path: str, **kw) -> httpx.Response:
        with self.client(hospital) as c:
            answer = c.post(path, **kw)
        assert answer.status_code == 200, answer.text
        return answer

    def hl7(self, hospital: str, message: bytes, ack: str) -> None:
        answer = self.post(hospital, "/ingest/sh", content=message)
        assert f"MSA|{ack}".encode() in answer.content, answer.content
        self.activity.received[hospital] = self.activity.received.get(hospital, 0) + 1
        self.activity.rejected[hospital] = self.activity.rejected.get(hospital, 0) + (ack != "AA")


def other_patient(when: datetime) -> bytes:
    """ZJ_H's visit of another person (吴霞), so that a search across its patients shows two."""
    doc = json.loads(zj_visit(when, extra_diagnosis=False))
    visit = doc["jzjl"][0]
    visit["jzlsh"] = "MZ20240315000999"
    visit["hzxx"].update(xm="吴霞", xb="2", csrq="20010509", zjhm="330106200105090062", ybkh="A33010600012345",
                         cbd="330106")
    return json.dumps(doc, ensure_ascii=False).encode()


def send_records(d: Driver) -> None:
    """ZJ JSON (李四's visit 48 h old, sent twice; 吴霞's 24 h old; the quirks file with
    rejections), SH HL7 (visits
    3 h and 5 h old; a message answered AE), JS CDA (an older version after a newer: rejected),
    AH CSV (the quirks file with rejections)."""
    visit = zj_visit(d.now - timedelta(hours=48))
    for _ in range(2):  # the second time unchanged
        d.activity.count(ZJ_H, d.post(ZJ_H, "/ingest/zj", content=visit).json())
    d.activity.count(ZJ_H, d.post(ZJ_H, "/ingest/zj", content=other_patient(d.now - timedelta(hours=24))).json())
    quirks = d.post(ZJ_QUIRKS, "/ingest/zj", content=(FIXTURES / "zj" / "upload_quirks.json").read_bytes())
    assert quirks.json()["rejected"]
    d.activity.count(ZJ_QUIRKS, quirks.json())
    d.hl7(SH_H, sh_visit(SH_H, d.now - timedelta(hours=3)), "AA")
    d.hl7(SH_H, sh_visit(SH_H, d.now - timedelta(hours=5), visit_no="ZY3000"), "AA")
    d.hl7(SH_BAD, (FIXTURES / "sh" / "bad_id.hl7").read_bytes(), "AE")
    for name in ("outpatient_v2.xml", "outpatient.xml"):  # the older one is rejected
        d.activity.count(JS_H, d.post(JS_H, "/ingest/js", content=(FIXTURES / "js" / name).read_bytes()).json())
    assert d.activity.rejected[JS_H] == 1
    ah = d.post(AH_H, "/ingest/ah", files={"file": ("quirks.csv", (FIXTURES / "ah" / "quirks.csv").read_bytes(),
                                                    "text/csv")}).json()
    assert ah["rejected"]
    d.activity.count(AH_H, ah)


def patient_id(d: Driver) -> str:
    with httpx.Client(base_url=d.url, timeout=30, headers={"Authorization": f"Bearer {d.admin}"}) as admin:
        bundle = admin.get("/fhir/Patient", params={"identifier": f"urn:oid:2.16.156.10011.1.3|{LISI[2]}"}).json()
    return bundle["entry"][0]["resource"]["id"]


def read_records(d: Driver) -> None:
    """ZJ_H (treating 李四 and 吴霞): $everything, a search pinned to 李四, a search across its
    patients showing both (allowed: 3 requests, 4 audit rows). OTHER (not treating): $everything refused (403), then with an emergency reason
    (emergency: 1). A read of a hospital (nobody's data) counts nothing."""
    pid = patient_id(d)
    with d.client(ZJ_H) as zj:
        for path, params in ((f"/fhir/Patient/{pid}/$everything", {}),
                             ("/fhir/Observation", {"patient": pid}), ("/fhir/Encounter", {})):
            assert zj.get(path, params=params).status_code == 200
    with d.client(OTHER) as other:
        assert other.get(f"/fhir/Patient/{pid}/$everything").status_code == 403
        emergency = other.get(f"/fhir/Patient/{pid}/$everything", headers={"X-Emergency-Reason": "unconscious on arrival"})
        assert emergency.status_code == 200
        assert other.get("/fhir/Organization").status_code == 200


def settle(d: Driver) -> None:
    """At QINGPU (SH) for 李四 (insured in ZJ): one settled (37.20), one settled then voided, one
    request refused as invalid before it became a settlement (422: counts nothing), and for a
    person ZJ does not know: refused PERSON_NOT_FOUND. At XIHU (ZJ) for a person insured in SH
    and not filed: refused NOT_FILED."""
    with d.client("SH", "insurer") as sh:
        assert sh.post("/settlement/settle", json=body("IND-1")).json()["status"] == "settled"
        voided = sh.post("/settlement/settle", json=body("IND-2")).json()
        assert sh.post(f"/settlement/{voided['setl_id']}/void").json()["status"] == "voided"
        wrong = [{"med_list_codg": "XJ01CAA040A001", "cnt": "2", "pric": "18.60", "det_item_fee_sumamt": "37.21"}]
        assert sh.post("/settlement/settle", json=body("IND-3", lines=wrong)).status_code == 422
        unknown = sh.post("/settlement/settle", json=body("IND-5", cert="110101199003070038", insuplc="330106")).json()
        assert unknown["status"] == "refused" and unknown["refusal"]["code"] == "PERSON_NOT_FOUND"
    with d.client("ZJ", "insurer") as zj:
        refused = zj.post("/settlement/settle", json=body("IND-4", cert="330106198504120089", insuplc="310106",
                                                          hospital=XIHU)).json()
    assert refused["status"] == "refused" and refused["refusal"]["code"] == "NOT_FILED"


def transfer(d: Driver) -> None:
    """王芳 (JS) moves to Anhui: completed, on time. 孙强 (SH, in arrears) to Zhejiang: refused."""
    for person, to, insutype, status in ((WANGFANG, "340104", "390", "completed"),
                                         (SUNQIANG, "330421", "310", "refused")):
        with session(d.url, person) as me:
            created = me.post("/api/me/transfers", json={"to_admdvs": to, "insutype": insutype})
            assert created.status_code == 201, created.text
            path = f"/api/me/transfers/{created.json()['id']}"
            done = wait_until(lambda: (t := me.get(path).json())["status"] in FINAL and t, 30, "the transfer")
            assert done["status"] == status, done


def correct(d: Driver) -> None:
    """李四 disputes a resource of ZJ_H's (answered the same day: on time) and one of SH_H's
    (its deadline then set to yesterday, unanswered: overdue in yesterday's month)."""
    with session(d.url, LISI) as me:
        mine = [e["resource"] for e in me.get("/api/me/records").json()["entry"]]
        targets = [next(r for r in mine if r["resourceType"] == "Condition" and code in json.dumps(r))
                   for code in ("F32.900", "J20.900")]  # ZJ_H's and SH_H's diagnoses
        opened = [me.post("/api/me/corrections", json={"resource": f"{r['resourceType']}/{r['id']}",
                                                       "kind": "wrong", "text": "诊断有误"}).json()
                  for r in targets]
    with d.client(ZJ_H) as zj:
        answer = zj.post(f"/corrections/{opened[0]['id']}/answer", json={"decision": "rejected", "reason": "经核实无误"})
        assert answer.status_code == 200, answer.text
    yesterday = (d.now.astimezone(CST) - timedelta(days=1)).date()
    with d.engine.begin() as conn:  # ten working days cannot pass in a test: move the deadline
        conn.execute(update(Correction).where(Correction.id == opened[1]["id"]).values(deadline=yesterday))
    d.activity.overdue_month = yesterday.strftime("%Y-%m")


def drive(url: str, engine) -> Activity:
    d = Driver(url, engine)
    for step in (send_records, read_records, settle, transfer, correct):
        step(d)
    return d.activity
