"""The patient portal over real sockets: sign-in with the e-voucher code (1101 at the simulated
platforms), cookie flags, CSRF, 401s, the JSON content-type rule, the patient's own access log,
and sharing choices changing what a hospital reads."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from sqlalchemy import select, update

from hub.portal.models import PortalSession
from hub.portal.sessions import hash_id
from mappers.common import RESIDENT_ID_SYSTEM
from tests.support.visits import SH_H, ZJ_H, sh_visit, zj_visit
from tests.support.portal import CHEN, LISI, login_form, session, start_hub


def fresh(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=30, follow_redirects=False)


# -- sign-in -------------------------------------------------------------------------------------


def test_sign_in_sets_a_strict_httponly_expiring_cookie(portal, engine):
    with fresh(portal.url) as c:
        page = c.get("/portal/login")
        assert page.status_code == 200 and 'charset="utf-8"' in page.text and "电子凭证码" in page.text
        assert re.search(r"yrd_csrf=[^;]+;.*HttpOnly", page.headers["set-cookie"], re.I)
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        answer = c.post("/portal/login", data={"province": "ZJ", "code": LISI[1], "csrf": csrf})
        assert answer.status_code == 303 and answer.headers["location"] == "/portal"
        cookie = next(v for v in answer.headers.get_list("set-cookie") if v.startswith("yrd_session="))
        assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
        assert "max-age=7200" in cookie.lower()
        token = cookie.split(";")[0].split("=", 1)[1]
        me = c.get("/api/me").json()
        assert me["name"] == "李四" and me["resident_id"] == "3304**********002X"
        home = c.get("/portal")
        assert home.status_code == 200 and "李四" in home.text and LISI[2] not in home.text
    with engine.connect() as conn:
        rows = conn.execute(select(PortalSession.id_hash, PortalSession.expires)).all()
    assert [r.id_hash for r in rows] == [hash_id(token)] and token not in str(rows)
    expires = rows[0].expires.replace(tzinfo=rows[0].expires.tzinfo or timezone.utc)
    assert timedelta(hours=1, minutes=59) < expires - datetime.now(timezone.utc) <= timedelta(hours=2)


@pytest.mark.parametrize("province, code, message", [
    ("ZJ", "ZJEV-NOT-A-CODE", "电子凭证码无效"),
    ("AH", "AHEV-HELI-OLD-0000", "已过期"),
    ("SH", LISI[1], "电子凭证码无效"),        # the right code at the wrong province
    ("XX", LISI[1], "请选择参保省份"),
    ("ZJ", "", "请输入"),
])
def test_sign_in_failure_is_401_with_the_form(portal, province, code, message):
    with fresh(portal.url) as c:
        csrf = login_form(c)
        answer = c.post("/portal/login", data={"province": province, "code": code, "csrf": csrf})
        assert answer.status_code == 401 and message in answer.text, re.findall(r"alert[^<]*", answer.text)
        assert 'name="code"' in answer.text and "yrd_session" not in answer.headers.get("set-cookie", "")
        assert c.get("/api/me").status_code == 401


def test_sign_in_needs_the_forms_csrf(portal):
    with fresh(portal.url) as c:
        login_form(c)
        for csrf in ("", "forged"):
            answer = c.post("/portal/login", data={"province": "ZJ", "code": LISI[1], "csrf": csrf})
            assert answer.status_code == 403 and "yrd_session" not in answer.headers.get("set-cookie", "")
    with fresh(portal.url) as other:  # a token of another browser does not do
        csrf = login_form(fresh(portal.url))
        assert other.post("/portal/login", data={"province": "ZJ", "code": LISI[1], "csrf": csrf}).status_code == 403


def test_unreachable_platform_is_503_not_401(database_url, db, sims):
    hub = start_hub(database_url, None)  # no platform configured
    try:
        with fresh(hub.url) as c:
            csrf = login_form(c)
            answer = c.post("/portal/login", data={"province": "ZJ", "code": LISI[1], "csrf": csrf})
            assert answer.status_code == 503 and "稍后再试" in answer.text
    finally:
        hub.stop()


# -- 401s, expiry, sign-out -----------------------------------------------------------------------


ME_CALLS = [("GET", "/api/me"), ("GET", "/api/me/access-log"), ("GET", "/api/me/sharing"),
            ("PUT", "/api/me/sharing"), ("GET", "/api/me/transfers"), ("POST", "/api/me/transfers"),
            ("GET", "/api/me/transfers/TRX"), ("POST", "/api/me/transfers/TRX/cancel")]


def test_no_session_is_401_json_everywhere(portal):
    for cookies in ({}, {"yrd_session": "made-up"}):
        with httpx.Client(base_url=portal.url, cookies=cookies) as c:
            for method, path in ME_CALLS:
                answer = c.request(method, path, json={})
                assert answer.status_code == 401, (method, path)
                assert answer.json()["error"]["code"] == "NO_SESSION"
            assert c.get("/portal").status_code == 303
            assert c.get("/portal/access-log").headers["location"] == "/portal/login"


def test_expired_session_and_logout(portal, engine):
    with session(portal.url, LISI) as c:
        assert c.get("/api/me").status_code == 200
        with engine.begin() as conn:
            conn.execute(update(PortalSession).values(expires=datetime.now(timezone.utc) - timedelta(seconds=1)))
        assert c.get("/api/me").status_code == 401
    with session(portal.url, LISI) as c:
        csrf = re.search(r'name="csrf" value="([^"]+)"', c.get("/portal").text).group(1)
        assert c.post("/portal/logout", data={"csrf": "forged"}).status_code == 403
        assert c.get("/api/me").status_code == 200
        cookie = c.cookies.get("yrd_session")
        assert c.post("/portal/logout", data={"csrf": csrf}).status_code == 303
        with httpx.Client(base_url=portal.url, cookies={"yrd_session": cookie}) as replay:
            assert replay.get("/api/me").status_code == 401  # ended on the server, not only the cookie


# -- the JSON rule -------------------------------------------------------------------------------


def test_writes_require_json(portal):
    body = '{"cross_province": false, "sensitive": {}}'
    with session(portal.url, LISI) as c:
        for ctype in ("application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x", None):
            headers = {"Content-Type": ctype} if ctype else {}
            for method, path in (("PUT", "/api/me/sharing"), ("POST", "/api/me/transfers")):
                answer = c.request(method, path, content=body, headers=headers)
                assert answer.status_code == 415, (ctype, path)
        assert c.get("/api/me/sharing").json()["cross_province"] is True
        bad = c.put("/api/me/sharing", content="{nope", headers={"Content-Type": "application/json"})
        assert bad.status_code == 400
        assert c.put("/api/me/sharing", json={"cross_province": "no"}).status_code == 400
        cross = c.put("/api/me/sharing", content=body, headers={"Content-Type": "application/json",
                                                                "Origin": "https://evil.example"})
        assert cross.status_code == 403
        assert c.get("/api/me/sharing").json()["cross_province"] is True
        ok = c.put("/api/me/sharing", content=body, headers={"Content-Type": "application/json; charset=utf-8"})
        assert ok.status_code == 200 and ok.json() == {"cross_province": False,
                                                       "sensitive": {"mental": False, "hiv": False, "sti": False}}


# -- the access log and sharing, with hospitals reading --------------------------------------------


@pytest.fixture()
def records(portal, engine):
    """李四 seen at a Zhejiang hospital two days ago and at a Shanghai hospital today."""
    from hub.auth import create_token

    now = datetime.now(timezone.utc)
    tokens = {h: create_token(engine, "hospital", h) for h in (ZJ_H, SH_H)}
    with httpx.Client(base_url=portal.url, headers={"Authorization": f"Bearer {tokens[ZJ_H]}"}) as zj:
        assert zj.post("/ingest/zj", content=zj_visit(now - timedelta(days=2))).json()["stored"] == 1
    with httpx.Client(base_url=portal.url, headers={"Authorization": f"Bearer {tokens[SH_H]}"}) as sh:
        assert b"MSA|AA" in sh.post("/ingest/sh", content=sh_visit(SH_H, now - timedelta(hours=3))).content
    return tokens


def hospital_reads(url: str, token: str, headers: dict | None = None) -> tuple[str, list]:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}", **(headers or {})}) as c:
        found = c.get("/fhir/Patient", params={"identifier": f"{RESIDENT_ID_SYSTEM}|{LISI[2]}"}).json()
        pid = found["entry"][0]["resource"]["id"]
        bundle = c.get(f"/fhir/Patient/{pid}/$everything").json()
    return pid, [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "match"]


def test_a_patient_reads_only_their_own_access_log(portal, records):
    hospital_reads(portal.url, records[SH_H], {"X-Emergency-Reason": "unconscious on arrival"})
    with session(portal.url, LISI) as lisi, session(portal.url, CHEN) as chen:
        entries = lisi.get("/api/me/access-log").json()["entries"]
        assert chen.get("/api/me/access-log").json() == {"entries": []}
        page = lisi.get("/portal/access-log").text
        assert "上海市徐汇区中心医院" in page and "unconscious on arrival" in page and LISI[2] not in page
    assert entries and {e["organisation"]["code"] for e in entries} == {SH_H}
    first = entries[0]
    assert set(first) == {"time", "organisation", "purpose", "reason", "outcome", "what"}
    assert first["organisation"] == {"code": SH_H, "name": "上海市徐汇区中心医院"}
    assert first["purpose"] == "emergency" and first["reason"] == "unconscious on arrival" and first["outcome"] == "allowed"
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+08:00$", first["time"])
    assert [e["time"] for e in entries] == sorted((e["time"] for e in entries), reverse=True)
    assert LISI[2] not in str(entries)


def test_sharing_choices_change_what_a_hospital_reads(portal, records):
    _, before = hospital_reads(portal.url, records[SH_H])
    with session(portal.url, LISI) as c:
        assert c.get("/api/me/sharing").json()["cross_province"] is True
        assert c.put("/api/me/sharing", json={"cross_province": False, "sensitive": {}}).status_code == 200
        assert c.get("/api/me/sharing").json()["cross_province"] is False
        _, withdrawn = hospital_reads(portal.url, records[SH_H])
        assert c.put("/api/me/sharing", json={"cross_province": True,
                                              "sensitive": {"mental": True}}).status_code == 200
        _, allowed = hospital_reads(portal.url, records[SH_H])
    # The Zhejiang hospital's records cross the border only while sharing is on; the depressive
    # episode (F32, sensitive) only once the patient allows mental-health sharing.
    orgs = {code: next(r["id"] for r in before if r["resourceType"] == "Organization" and code in str(r))
            for code in (ZJ_H, SH_H)}

    def from_hospital(resources, code):
        return [r for r in resources if r["resourceType"] not in ("Organization", "Practitioner", "Patient")
                and f"Organization/{orgs[code]}" in str(r)]

    assert from_hospital(before, ZJ_H) and not from_hospital(withdrawn, ZJ_H)
    assert from_hospital(withdrawn, SH_H) and len(withdrawn) < len(before)
    assert "F32" not in str(before) and "F32" in str(allowed)


def test_sharing_page_form_needs_csrf(portal):
    with session(portal.url, LISI) as c:
        page = c.get("/portal/sharing")
        assert page.status_code == 200 and "跨省共享" in page.text and page.headers["cache-control"] == "no-store"
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        refused = c.post("/portal/sharing", data={"mental": "on", "cross_province": "on"})
        assert refused.status_code == 403
        assert c.get("/api/me/sharing").json()["sensitive"]["mental"] is False
        saved = c.post("/portal/sharing", data={"csrf": csrf, "mental": "on"})
        assert saved.status_code == 303
        assert c.get("/api/me/sharing").json() == {"cross_province": False,
                                                   "sensitive": {"mental": True, "hiv": False, "sti": False}}


def test_sign_in_asks_1101_again_when_its_msgid_was_already_used_and_not_on_other_refusals():
    import asyncio

    import pytest

    from hub.portal.sessions import _person_info
    from settlement.errors import Refused

    class Platform:  # refuses the first ``refusals``, then answers
        def __init__(self, *refusals):
            self.refusals, self.calls = list(refusals), 0

        async def person_info(self, province, cert_type, code):
            self.calls += 1
            if self.refusals:
                raise Refused(self.refusals.pop(0), "", {})
            return {"baseinfo": {"certno": code}}

    reused = Platform("MSGID_REUSED")
    assert asyncio.run(_person_info(reused, "ZJ", "EV1"))["baseinfo"]["certno"] == "EV1" and reused.calls == 2
    unknown = Platform("PERSON_NOT_FOUND")
    with pytest.raises(Refused):
        asyncio.run(_person_info(unknown, "ZJ", "EV1"))
    assert unknown.calls == 1
