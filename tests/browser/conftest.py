"""Fixtures of the browser tests: one chromium per module, a phone-sized page per test, and a
hub wired to its own simulated platforms."""

from __future__ import annotations

import pytest

from settlement.simulated import start_simulators
from tests.support.portal import start_hub
from tests.support import browser as support


@pytest.fixture(scope="module")
def browser():
    playwright_api = pytest.importorskip("playwright.sync_api")
    if support.CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed")
    with playwright_api.sync_playwright() as p:
        chromium = support.launch(p)
        yield chromium
        chromium.close()


@pytest.fixture()
def portal(database_url, db):
    sims = start_simulators()
    hub = start_hub(database_url, sims)
    yield hub, sims
    hub.stop()
    sims.stop()


@pytest.fixture()
def page(browser):
    context, page = support.phone_page(browser)
    yield page
    context.close()
