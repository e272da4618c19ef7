"""The person's records and a correction in a real browser at phone size (Playwright driving
Debian's chromium): sign in, open a record, ask for a correction; the hospital re-sends the
visit and answers (over the API, as a hospital would); the person sees the answer. Screenshots
go to ``test-artifacts/1x-*.png``."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import httpx
import pytest

from hub.auth import create_token
from tests.support.portal import LISI
from tests.support import browser as support
from tests.support.visits import ZJ_H, zj_visit

pytest.importorskip("playwright.sync_api")
pytestmark = support.needs_chromium


def shot(page, name: str) -> None:
    support.shot(page, name, (LISI[2],))


def test_ask_for_a_correction_and_see_the_hospitals_answer(portal, page):
    hub, _ = portal
    visit_time = datetime.now(timezone.utc) - timedelta(days=2)
    token = create_token(hub.app.state.engine, "hospital", ZJ_H)
    zj = httpx.Client(base_url=hub.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert zj.post("/ingest/zj", content=zj_visit(visit_time)).json()["stored"] == 1

    support.sign_in(page, hub.url, LISI)
    page.get_by_role("link", name="健康档案").first.click()
    page.wait_for_url(f"{hub.url}/portal/records")
    assert "嘉善县第一人民医院" in page.content() and "偏高" in page.content()
    shot(page, "10-records")
    page.get_by_role("link", name="抑郁发作").click()  # open the record
    page.wait_for_url(f"{hub.url}/portal/records/Condition/*")
    page.get_by_label("这不是我的记录").check()
    page.get_by_label("请说明哪里不对").fill("我从未被诊断过抑郁发作，请核实。")
    shot(page, "11-record-ask")
    page.get_by_role("button", name="提交更正申请").click()
    page.wait_for_url(f"{hub.url}/portal/corrections/CR*")
    assert page.locator("#status").inner_text() == "医院处理中"
    shot(page, "12-correction-open")

    # the hospital finds it, re-sends the visit without that diagnosis and answers
    [correction] = zj.get("/corrections", params={"status": "open"}).json()["corrections"]
    assert correction["text"] == "我从未被诊断过抑郁发作，请核实。"
    assert zj.post("/ingest/zj", content=zj_visit(visit_time, extra_diagnosis=False)).json()["stored"] == 1
    answered = zj.post(f"/corrections/{correction['id']}/answer",
                       json={"decision": "corrected", "reason": "经核实为录入错误，已删除该诊断。"})
    assert answered.status_code == 200, answered.text
    zj.close()

    page.reload()
    assert page.locator("#status").inner_text() == "已更正"
    assert page.locator("#reason").inner_text() == "经核实为录入错误，已删除该诊断。"
    assert "请等待答复" not in page.content()
    shot(page, "13-correction-answered")
    page.get_by_role("link", name="健康档案").first.click()
    page.wait_for_url(f"{hub.url}/portal/records")
    assert "抑郁发作" not in page.content() and "急性上呼吸道感染" in page.content()
    page.goto(f"{hub.url}/portal/corrections")
    shot(page, "14-corrections")
