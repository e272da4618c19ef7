"""The portal in a real browser: Playwright driving Debian's chromium headless, on a phone-sized
viewport, against a hub wired to the simulated platforms. Screenshots of the main pages go to
``test-artifacts/`` (look at them: the Chinese must render and the layout fit the phone)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import httpx
import pytest

from mappers.common import RESIDENT_ID_SYSTEM
from tests.support.portal import LISI, QIANFANG_ZJ, SUNQIANG
from tests.support import browser as support

pytest.importorskip("playwright.sync_api")
pytestmark = support.needs_chromium
FULL_IDS = tuple(p[2] for p in (LISI, QIANFANG_ZJ, SUNQIANG))


def shot(page, name: str) -> None:
    support.shot(page, name, FULL_IDS)


def sign_in(page, url: str, person, screenshot: str | None = None) -> None:
    support.sign_in(page, url, person, (lambda p: shot(p, screenshot)) if screenshot else None)


def apply(page, url: str, place: str, insutype: str = "310") -> None:
    page.goto(f"{url}/portal/transfers/new")
    page.get_by_label("险种").select_option(insutype)
    page.get_by_label("转入地（新的参保地）").select_option(place)
    page.get_by_role("button", name="提交申请").click()
    page.wait_for_url(f"{url}/portal/transfers/TR*")


def test_sign_in_apply_and_watch_it_complete(portal, page):
    hub, sims = portal
    page.goto(f"{hub.url}/portal/login")
    page.get_by_label("参保省份").select_option("ZJ")
    page.get_by_label("电子凭证码").fill("ZJEV-WRONG")
    page.get_by_role("button", name="登录").click()
    assert "电子凭证码无效" in page.locator("[role=alert]").inner_text()
    shot(page, "01-login-refused")
    sign_in(page, hub.url, LISI, screenshot="01-login")
    assert "李四" in page.content() and "3304**********002X" in page.content()
    shot(page, "02-home")
    page.goto(f"{hub.url}/portal/transfers/new")
    shot(page, "03-transfer-form")
    sims.set_latency(400)  # slow enough to see the steps move on the page
    apply(page, hub.url, "310118")
    page.locator("#status", has_text="已完成").wait_for()  # the page updated by itself
    sims.set_latency(0)
    steps = page.locator(".steps li")
    assert steps.count() == 3 and page.locator(".steps .st-done").count() >= 3
    assert "参保凭证号" in page.content() and "办结时限" in page.content()
    shot(page, "04-progress-completed")


def test_a_refused_transfer_says_why(portal, page):
    hub, _ = portal
    sign_in(page, hub.url, SUNQIANG)
    apply(page, hub.url, "330421")
    page.locator("#status", has_text="未能办理").wait_for()
    alert = page.locator("[role=alert]").inner_text()
    assert "欠缴" in alert and "ARREARS" in alert
    shot(page, "05-progress-refused")


def test_a_compensated_transfer_shows_the_origin_restored(portal, page):
    hub, _ = portal
    sign_in(page, hub.url, QIANFANG_ZJ)
    apply(page, hub.url, "310106")
    page.locator("#status", has_text="未能办理").wait_for()
    assert "转出地已为您恢复参保" in page.content()
    assert page.locator(".steps .badge.st-undone").count() == 2
    assert "撤销转出" in page.content()
    shot(page, "06-progress-compensated")


def test_access_log_after_a_hospital_read(portal, page):
    from hub.auth import create_token
    from tests.support.visits import SH_H, sh_visit

    hub, _ = portal
    token = create_token(hub.app.state.engine, "hospital", SH_H)
    with httpx.Client(base_url=hub.url, headers={"Authorization": f"Bearer {token}"}) as sh:
        sh.post("/ingest/sh", content=sh_visit(SH_H, datetime.now(timezone.utc) - timedelta(hours=1)))
        found = sh.get("/fhir/Patient", params={"identifier": f"{RESIDENT_ID_SYSTEM}|{LISI[2]}"}).json()
        sh.get(f"/fhir/Patient/{found['entry'][0]['resource']['id']}/$everything")
    sign_in(page, hub.url, LISI)
    page.get_by_role("link", name="查阅记录").click()
    page.wait_for_url(f"{hub.url}/portal/access-log")
    rows = page.locator("tbody tr")
    assert rows.count() >= 2 and "上海市徐汇区中心医院" in rows.first.inner_text()
    assert "已允许" in rows.first.inner_text()
    shot(page, "07-access-log")


def test_changing_sharing(portal, page):
    hub, _ = portal
    sign_in(page, hub.url, LISI)
    page.goto(f"{hub.url}/portal/sharing")
    page.get_by_label("允许其他省份正在为我诊疗的医院查看我的健康档案").uncheck()
    page.get_by_label("精神心理疾病的诊断和结果").check()
    page.get_by_role("button", name="保存设置").click()
    page.locator("[role=status]", has_text="已保存").wait_for()
    assert page.get_by_label("精神心理疾病的诊断和结果").is_checked()
    assert not page.get_by_label("允许其他省份正在为我诊疗的医院查看我的健康档案").is_checked()
    choices = page.evaluate("fetch('/api/me/sharing').then(r => r.json())")
    assert choices == {"cross_province": False, "sensitive": {"mental": True, "hiv": False, "sti": False}}
    shot(page, "08-sharing")
