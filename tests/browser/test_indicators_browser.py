"""The cooperation indicators page (考核评估) in Debian's chromium: an administrator signs in with
an admin token, opens the month of a known activity (``tests.support.activity``), and finds the
province table, the charts (SVG images that loaded), the lagging hospitals, and a print layout.
Screenshots: ``test-artifacts/20-indicators.png`` (screen) and ``21-indicators-print.png`` (print
media), copied into the test's tmp dir too."""

from __future__ import annotations

import base64
import shutil

import pytest

from hub.auth import create_token
from tests.support import browser as support
from tests.support.activity import ZJ_QUIRKS, drive

pytest.importorskip("playwright.sync_api")
pytestmark = support.needs_chromium
DESKTOP = {"width": 1280, "height": 900}


def test_admin_signs_in_and_reads_the_month_as_charts(portal, db, browser, tmp_path):
    hub, _sims = portal
    did = drive(hub.url, db)
    token = create_token(db, "admin", None)
    context = browser.new_context(viewport=DESKTOP, locale="zh-CN", device_scale_factor=1)
    context.set_default_timeout(20000)
    page = context.new_page()
    try:
        page.goto(f"{hub.url}/admin/indicators?month={did.month}")
        page.wait_for_url(f"{hub.url}/admin/login?month={did.month}")  # no session: 303 to sign in
        page.get_by_label("管理员令牌").fill(create_token(db, "hospital", ZJ_QUIRKS))
        page.get_by_role("button", name="登录").click()
        assert "不是管理员令牌" in page.locator("[role=alert]").inner_text()
        page.get_by_label("管理员令牌").fill(token)
        page.get_by_role("button", name="登录").click()
        page.wait_for_url(f"{hub.url}/admin/indicators?month={did.month}")
        check_page(page, did)
        kept = [support.shot(page, "20-indicators")]
        page.emulate_media(media="print")
        assert page.locator(".month-pick").is_hidden() and page.locator(".logout").is_hidden()
        kept.append(support.shot(page, "21-indicators-print"))
        page.emulate_media(media="screen")
        for path in kept:
            shutil.copy(path, tmp_path / path.name)
        page.get_by_role("button", name="退出登录").click()
        page.wait_for_url(f"{hub.url}/admin/login")
        page.goto(f"{hub.url}/admin/indicators?month={did.month}")
        page.wait_for_url(f"{hub.url}/admin/login?month={did.month}")
    finally:
        context.close()


def check_page(page, did) -> None:
    year, month = did.month.split("-")
    assert f"{year}年{int(month)}月" in page.locator("h1").inner_text()
    rows = page.locator("#province-table tbody tr")
    assert rows.count() == 4 and [rows.nth(i).locator("th").inner_text() for i in range(4)] == ["上海", "江苏", "浙江", "安徽"]
    zj_received = sum(n for h, n in did.received.items() if h.startswith("H33"))
    assert rows.nth(2).locator("td").first.inner_text() == str(zj_received)
    charts = page.locator("figure.chart img")
    assert charts.count() == 9  # five province bars, three trends, the lagging hospitals
    loaded = page.evaluate("() => [...document.querySelectorAll('figure.chart img')]"
                           ".map(i => i.complete && i.naturalWidth > 0)")
    assert all(loaded)
    records = page.locator("#chart-records img").get_attribute("src")
    svg = base64.b64decode(records.split(",", 1)[1]).decode()
    assert "各省记录接收与退回" in svg and svg.count('class="rect reactive tooltip-trigger"') == 8  # 4 provinces × 2
    assert "<script" not in page.content().split("</header>", 1)[1]  # the charts run nothing
    assert page.locator("#lagging-table tbody tr").count() >= 1
