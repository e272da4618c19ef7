"""Driving Debian's chromium with Playwright at phone size: the launch, a phone-sized page,
screenshots kept under ``test-artifacts/`` (gitignored; look at them), and signing in."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PHONE = {"width": 390, "height": 844}
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")


def launch(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)


def phone_page(browser):
    """(context, page) at phone size in Chinese; close the context when done."""
    context = browser.new_context(viewport=PHONE, locale="zh-CN", device_scale_factor=1)
    context.set_default_timeout(20000)
    return context, context.new_page()


def shot(page, name: str, never: tuple[str, ...] = ()) -> Path:
    """A full-page screenshot ``test-artifacts/<name>.png``; asserts none of ``never`` (full
    resident IDs) is on the page."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    text = page.content()
    assert not any(value in text for value in never), f"full resident ID on {name}"
    return path


def sign_in(page, url: str, person, screenshot=None) -> None:
    """Sign in as ``person`` (province, code, resident ID) by the login form; ``screenshot``:
    a callable given the page before the form is sent."""
    page.goto(f"{url}/portal/login")
    page.get_by_label("参保省份").select_option(person[0])
    page.get_by_label("电子凭证码").fill(person[1])
    if screenshot:
        screenshot(page)
    page.get_by_label("电子凭证码").press("Enter")  # by keyboard
    page.wait_for_url(f"{url}/portal")
