"""Cooperation indicators (issue 16): known activity driven through the real endpoints
(``tests.support.activity``) and found again, exactly, in ``GET /admin/indicators`` as JSON and
CSV, on SQLite and PostgreSQL; who may ask, and bad months."""

from __future__ import annotations

import csv
import io
import re

import httpx
import pytest
from sqlalchemy import func, select

from hub import api_models
from hub.auth import create_token
from hub.models import AuditRecord
from settlement.simulated import start_simulators
from tests.support.portal import start_hub
from tests.support.activity import AH_H, JS_H, SH_BAD, ZJ_QUIRKS, drive
from tests.support.settlement import QINGPU, XIHU
from tests.support.visits import OTHER, SH_H, ZJ_H


@pytest.fixture()
def live(database_url, db):
    sims = start_simulators()
    hub = start_hub(database_url, sims)
    yield hub
    hub.stop()
    sims.stop()


def admin(url: str, engine) -> httpx.Client:
    token = create_token(engine, "admin", None)
    return httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {token}"})


def figures(client: httpx.Client, month: str) -> dict:
    answer = client.get("/admin/indicators", params={"month": month})
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    return answer.json()


def test_known_activity_is_counted_exactly(live, db):
    did = drive(live.url, db)
    with admin(live.url, db) as c:
        body = figures(c, did.month)
        assert figures(c, did.month) == body  # asked again: the same
        table = c.get("/admin/indicators", params={"month": did.month}, headers={"Accept": "text/csv"})
        overdue = figures(c, did.overdue_month)
    api_models.Indicators.model_validate(body)  # the documented shape, no field unaccounted for
    hospitals, provinces = body["hospitals"], body["provinces"]
    assert body["month"] == did.month and list(provinces) == ["SH", "JS", "ZJ", "AH"]
    check_records(did, hospitals, provinces)
    check_lookups(hospitals, provinces, db)
    check_settlements(hospitals, provinces)
    assert provinces["JS"]["transfers"] == {"completed": 1, "refused": 0, "on_time": 1}
    assert provinces["SH"]["transfers"] == {"completed": 0, "refused": 1, "on_time": 0}
    assert provinces["ZJ"]["transfers"] == provinces["AH"]["transfers"] == {"completed": 0, "refused": 0, "on_time": 0}
    assert hospitals[ZJ_H]["corrections"] == {"opened": 1, "answered_on_time": 1, "overdue": 0}
    assert hospitals[SH_H]["corrections"]["opened"] == 1 and hospitals[SH_H]["corrections"]["answered_on_time"] == 0
    assert overdue["hospitals"][SH_H]["corrections"]["overdue"] == 1
    assert overdue["provinces"]["SH"]["corrections"]["overdue"] == 1
    assert provinces["ZJ"]["corrections"]["opened"] == 1 and provinces["SH"]["corrections"]["opened"] == 1
    check_csv(table, body)


def check_records(did, hospitals: dict, provinces: dict) -> None:
    for hospital in (ZJ_H, ZJ_QUIRKS, SH_H, SH_BAD, JS_H, AH_H):
        records = hospitals[hospital]["records"]
        assert (records["received"], records["rejected"]) == (did.received[hospital], did.rejected[hospital]), hospital
        assert sum(r["count"] for r in records["top_reasons"]) == min(records["rejected"], sum(
            r["count"] for r in records["top_reasons"]))
    assert did.received[SH_H] == 2 and did.rejected[SH_BAD] == 1 and did.received[ZJ_H] == 3
    assert hospitals[SH_BAD]["records"]["top_reasons"][0]["reason"].startswith("PID-3 repetition 1: resident ID")
    assert "older than the stored version" in hospitals[JS_H]["records"]["top_reasons"][0]["reason"]
    for province, members in (("ZJ", (ZJ_H, ZJ_QUIRKS)), ("SH", (SH_H, SH_BAD)), ("JS", (JS_H,)), ("AH", (AH_H,))):
        assert provinces[province]["records"]["received"] == sum(did.received[h] for h in members)
        assert provinces[province]["records"]["rejected"] == sum(did.rejected[h] for h in members)
    # the delays: ZJ_H visits 48 h and 24 h old (the re-send, unchanged, counts none); SH_H 3 h
    # and 5 h; SH_BAD none (rejected)
    assert hospitals[ZJ_H]["records"]["median_delay_hours"] == "36.00"
    assert hospitals[SH_H]["records"]["median_delay_hours"] == "4.00"
    assert provinces["SH"]["records"]["median_delay_hours"] == "4.00"
    assert hospitals[SH_BAD]["records"]["median_delay_hours"] is None


def check_lookups(hospitals: dict, provinces: dict, engine) -> None:
    assert hospitals[ZJ_H]["lookups"] == {"allowed": 3, "refused": 0, "emergency": 0}
    assert hospitals[OTHER]["lookups"] == {"allowed": 0, "refused": 1, "emergency": 1}
    assert provinces["ZJ"]["lookups"] == {"allowed": 3, "refused": 0, "emergency": 0}
    assert provinces["SH"]["lookups"] == {"allowed": 0, "refused": 1, "emergency": 1}
    with engine.connect() as conn:  # requests, not audit rows: the search across patients wrote two
        rows = conn.execute(select(AuditRecord.lookup, func.count()).where(AuditRecord.party_code == ZJ_H)
                            .group_by(AuditRecord.lookup)).all()
    assert dict(rows) == {True: 3, False: 1}


def check_settlements(hospitals: dict, provinces: dict) -> None:
    assert hospitals[QINGPU]["settlements"] == {"settled": 1, "refused": 1, "voided": 1, "amount": "37.20",
                                                "refusals": {"PERSON_NOT_FOUND": 1}}
    assert hospitals[XIHU]["settlements"] == {"settled": 0, "refused": 1, "voided": 0, "amount": "0.00",
                                              "refusals": {"NOT_FILED": 1}}
    assert provinces["ZJ"]["settlements"] == {"settled": 1, "refused": 1, "voided": 1, "amount": "37.20",
                                              "refusals": {"PERSON_NOT_FOUND": 1}}
    assert provinces["SH"]["settlements"] == {"settled": 0, "refused": 1, "voided": 0, "amount": "0.00",
                                              "refusals": {"NOT_FILED": 1}}


def check_csv(answer: httpx.Response, body: dict) -> None:
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(answer.text)))
    assert rows[0] == ["party", "figure", "value"]
    table = {(p, f): v for p, f, v in rows[1:]}
    assert len(table) == len(rows) - 1  # one row per party and figure
    assert table[(ZJ_H, "records.received")] == str(body["hospitals"][ZJ_H]["records"]["received"])
    assert table[(QINGPU, "settlements.amount")] == "37.20"
    assert table[(QINGPU, "settlements.refusals.PERSON_NOT_FOUND")] == "1"
    assert table[("JS", "transfers.on_time")] == "1"
    assert table[(SH_H, "records.median_delay_hours")] == "4.00"


def test_who_may_ask_and_bad_months(hub):
    with hub.client(hub.token("hospital", ZJ_H)) as c:
        assert c.get("/admin/indicators", params={"month": "2026-11"}).status_code == 403
        assert c.get("/admin/indicators", params={"month": "2026-11"}, headers={"Accept": "text/csv"}).status_code == 403
    with hub.client() as c:
        assert c.get("/admin/indicators", params={"month": "2026-11"}).status_code == 401
        page = c.get("/admin/indicators", params={"month": "2026-11"}, headers={"Accept": "text/html"},
                     follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"] == "/admin/login?month=2026-11"
    with hub.client(hub.token("admin")) as c:
        for bad in ("2026-13", "2026-1", "26-11", "2026/11", "1999-12", "2026-11x"):
            answer = c.get("/admin/indicators", params={"month": bad})
            assert answer.status_code == 422 and answer.json()["error"]["code"] == "INVALID_MONTH", bad
            assert "month" in answer.json()["error"]["message"] and "yyyy-mm" in answer.json()["error"]["message"]
        empty = c.get("/admin/indicators", params={"month": "2020-02"}).json()
        assert empty == {"month": "2020-02", "hospitals": {}, "provinces": empty["provinces"]}
        assert all(p["records"]["received"] == 0 and p["settlements"]["amount"] == "0.00"
                   for p in empty["provinces"].values())


def test_the_openapi_document_names_the_answer(hub):
    with hub.client() as c:
        paths = c.get("/openapi.json").json()["paths"]
    answer = paths["/admin/indicators"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer["$ref"].endswith("/Indicators")


def test_the_page_needs_an_admin_session_with_the_portals_csrf(hub):
    """Sign-in as the portal's: the form's CSRF cookie (on /admin) must match its field; a
    token that is not an admin's is 401 and counted by the sign-in guard; a session reaches the
    page; sign-out needs the session's CSRF and ends it."""
    html = {"Accept": "text/html"}
    with httpx.Client(base_url=hub.url, timeout=30, follow_redirects=False) as browser:
        form = browser.get("/admin/login", params={"month": "2026-11"})
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)[1]
        assert form.cookies.get("yrd_csrf") == csrf and 'value="2026-11"' in form.text
        assert "default-src 'self'" in form.headers["content-security-policy"]
        refused = browser.post("/admin/login", data={"token": hub.token("admin"), "csrf": "forged"})
        assert refused.status_code == 403 and "yrd_admin" not in refused.cookies
        wrong = browser.post("/admin/login", data={"token": hub.token("hospital", ZJ_H), "csrf": csrf})
        assert wrong.status_code == 401 and "不是管理员令牌" in wrong.text
        signed = browser.post("/admin/login", data={"token": hub.token("admin"), "csrf": csrf, "month": "2026-11"})
        assert signed.status_code == 303 and signed.headers["location"] == "/admin/indicators?month=2026-11"
        cookie = signed.headers["set-cookie"]
        assert "yrd_admin=" in cookie and "HttpOnly" in cookie and "Path=/admin" in cookie and "SameSite=strict" in cookie
        page = browser.get("/admin/indicators", params={"month": "2026-11"}, headers=html)
        assert page.status_code == 200 and "2026年11月 区域协同考核评估" in page.text
        assert page.text.count('<img src="data:image/svg+xml;base64,') == 8  # nothing lags in an empty month
        assert "img-src 'self' data:" in page.headers["content-security-policy"]
        bad = browser.get("/admin/indicators", params={"month": "2026-13"}, headers=html)
        assert bad.status_code == 422 and "yyyy-mm" in bad.text
        session_csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)[1]
        assert browser.post("/admin/logout", data={"csrf": "forged"}).status_code == 403
        assert browser.post("/admin/logout", data={"csrf": session_csrf}).status_code == 303
        again = browser.get("/admin/indicators", params={"month": "2026-11"}, headers=html)
        assert again.status_code == 303 and again.headers["location"] == "/admin/login?month=2026-11"


def test_months_run_in_beijing_time_and_back_across_years():
    from datetime import datetime, timezone

    from hub.indicators import current_month, parse_month

    november = parse_month("2026-11")
    assert november.start == datetime(2026, 10, 31, 16, tzinfo=timezone.utc)
    assert november.end == datetime(2026, 11, 30, 16, tzinfo=timezone.utc)
    assert [november.back(n).label for n in (0, 10, 11, 12, 23)] == ["2026-11", "2026-01", "2025-12", "2025-11",
                                                                     "2024-12"]
    assert current_month(datetime(2026, 11, 30, 16, 0, tzinfo=timezone.utc)).label == "2026-12"
    assert current_month(datetime(2026, 11, 30, 15, 59, tzinfo=timezone.utc)).label == "2026-11"


def test_a_visit_starts_at_its_encounter_else_its_earliest_report():
    from hub.arrivals import visit_start
    from mappers.common import Record

    def record(*resources):
        return Record("k", ZJ_H, {}, list(resources))

    encounter = {"resourceType": "Encounter", "period": {"start": "2026-11-02T09:30:00+08:00"}}
    report = {"resourceType": "DiagnosticReport", "effectiveDateTime": "2026-11-01T08:00:00+08:00"}
    assert visit_start(record(report, encounter)).isoformat() == "2026-11-02T09:30:00+08:00"
    assert visit_start(record(report, {**report, "effectiveDateTime": "2026-10-31"})).isoformat() == \
        "2026-10-31T00:00:00+08:00"
    assert visit_start(record({"resourceType": "Patient"}, {"resourceType": "Encounter"})) is None
