"""``GET /admin/indicators`` (JSON, CSV, or the page) and the administrators' sign-in.

The answer follows ``Accept``: ``text/html`` is the page, for a signed-in administrator's session
(else ``303`` to ``/admin/login``); ``text/csv`` the ``party,figure,value`` rows; anything else
JSON. CSV and JSON need an admin bearer token (401 without one, 403 for another party's). A month
that is not ``yyyy-mm`` is 422 naming the parameter (a page saying so, for the page); without
``month``, the current month (+08:00).

Sign-in uses the portal's machinery (``hub.portal.sessions``): the form's CSRF is the portal's
double-submit cookie (on ``/admin``), the session a random cookie ``yrd_admin`` (HttpOnly,
SameSite=Strict, ``/admin`` only) whose SHA-256 is kept in ``admin_session`` with the session's
CSRF token for the sign-out form, and failed tokens count against the portal's sign-in guard
(5 per 10 minutes per address, then 429).
"""

from __future__ import annotations

import csv
import io
import re
import secrets
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
from fastapi import APIRouter, Query, Request
from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse, Response

from hub import api_models, auth, indicator_charts as charts, indicators
from hub.db import writer
from hub.errors import HubError
from hub.models import AdminSession
from hub.portal import pages, sessions

router = APIRouter(prefix="/admin")
COOKIE = "yrd_admin"
# the portal's headers; charts are data: images (SVG as an image runs no script)
HEADERS = {**pages.SECURITY_HEADERS,
           "Content-Security-Policy": pages.SECURITY_HEADERS["Content-Security-Policy"]
           .replace("img-src 'self'", "img-src 'self' data:")}
_MONTH_FIELD = re.compile(r"^\d{4}-\d{2}$")
TREND_MONTHS = 12
LAGGING = 10


# -- sessions --------------------------------------------------------------------------------------


def open_session(engine: Engine, hours: int) -> str:
    """A new administrator session; returns the cookie's value (only its hash is kept)."""
    token, now = secrets.token_urlsafe(32), datetime.now(timezone.utc)
    with writer(engine).begin() as conn:
        conn.execute(delete(AdminSession).where(AdminSession.expires < now))
        conn.execute(insert(AdminSession), [{"id_hash": sessions.hash_id(token),
                                             "csrf": secrets.token_urlsafe(24), "created": now,
                                             "expires": now + timedelta(hours=hours)}])
    return token


def current(request: Request) -> Any | None:
    """The request's live administrator session (``csrf``, ``expires``), or None."""
    token = request.cookies.get(COOKIE)
    if not token or len(token) > 100:
        return None
    with request.app.state.engine.connect() as conn:
        row = conn.execute(select(AdminSession.__table__)
                           .where(AdminSession.id_hash == sessions.hash_id(token))).first()
    if row is None:
        return None
    expires = row.expires if row.expires.tzinfo else row.expires.replace(tzinfo=timezone.utc)
    return row if expires > datetime.now(timezone.utc) else None


def render(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
    response = pages.templates.TemplateResponse(request, name, context, status_code=status)
    response.headers.update(HEADERS)
    return response


def login_page(request: Request, status: int = 200, message: str | None = None,
               month: str = "") -> Response:
    token = sessions.login_token(request)
    response = render(request, "admin_login.html", {"csrf": token, "message": message,
                                                    "month": month}, status)
    sessions.set_login_cookie(response, request, token, path="/admin")
    return response


@router.get("/login", **api_models.page())
def get_login(request: Request, month: str = "") -> Response:
    return login_page(request, month=_month_field(month))


def _month_field(value: Any) -> str:
    """A ``month`` carried through the sign-in, kept only when shaped ``yyyy-mm``."""
    return value if isinstance(value, str) and _MONTH_FIELD.match(value) else ""


@router.post("/login", **api_models.page(form={
    "token": "an administrator's token", "month": "yyyy-mm to open after signing in (optional)"},
    redirect="/admin/indicators"))
async def post_login(request: Request) -> Response:
    """303 to the indicators with a session; 401 (not an admin token), 403 (the form's CSRF),
    429 with ``Retry-After`` while failures are bounded (the portal's guard)."""
    form = dict(await request.form())
    token, month = str(form.get("token") or "").strip(), _month_field(form.get("month"))
    if not sessions.same_token(request.cookies.get(sessions.CSRF_COOKIE), form.get("csrf")):
        return login_page(request, 403, "页面已过期，请重新输入后再登录。", month)
    refused = await _refused(request, token, month)
    if refused is not None:
        return refused
    hours = request.app.state.settings.session_hours
    cookie = await run_in_threadpool(open_session, request.app.state.engine, hours)
    response = RedirectResponse(f"/admin/indicators{'?month=' + month if month else ''}", 303,
                                headers=HEADERS)
    sessions.set_session_cookie(response, request, cookie, hours, COOKIE, "/admin")
    return response


async def _refused(request: Request, token: str, month: str) -> Response | None:
    """The answer to a token that may not sign in (429 while bounded, else 401, counted), or
    None for an administrator's."""
    state, address = request.app.state, request.client.host if request.client else "unknown"
    wait = await run_in_threadpool(state.sign_in_guard.retry_after, address, token)
    if wait is not None:
        response = login_page(request, 429, f"登录失败次数过多，请 {-(-wait // 60)} 分钟后再试。", month)
        response.headers["Retry-After"] = str(wait)
        return response
    party = await run_in_threadpool(auth.lookup, state.engine, token) if token else None
    if party is not None and party.kind == "admin":
        return None
    if token:
        await run_in_threadpool(state.sign_in_guard.failed, address, token)
    return login_page(request, 401, "令牌无效，或不是管理员令牌。", month)


@router.post("/logout", **api_models.page(form={}, redirect="/admin/login"))
async def post_logout(request: Request) -> Response:
    session = current(request)
    if session is not None:
        form = dict(await request.form())
        if not sessions.same_token(session.csrf, form.get("csrf")):
            return render(request, "admin_message.html", {
                "title": "页面已过期", "message": "本次提交未被接受（页面已过期或来源不明），请返回后重试。"}, 403)
        with writer(request.app.state.engine).begin() as conn:
            conn.execute(delete(AdminSession).where(AdminSession.id_hash == session.id_hash))
    response = RedirectResponse("/admin/login", 303, headers=HEADERS)
    sessions.clear_session_cookie(response, request, COOKIE, "/admin")
    return response


# -- the indicators --------------------------------------------------------------------------------


def _wants(request: Request) -> str:
    """``html``, ``csv`` or ``json`` from ``Accept`` (a browser's navigation names text/html)."""
    accept = request.headers.get("accept", "").lower()
    return "html" if "text/html" in accept else "csv" if "text/csv" in accept else "json"


def _month(value: str | None) -> indicators.Month:
    if value is None:
        return indicators.current_month(datetime.now(timezone.utc))
    return indicators.parse_month(value)


@router.get("/indicators", responses={
    **api_models.answers(api_models.Indicators, 403, 422),
    303: {"description": "Accept: text/html without an administrator's session: to /admin/login"}})
async def get_indicators(request: Request, month: str | None = Query(
        None, description="yyyy-mm (+08:00); the current month when absent")) -> Response:
    """One month's cooperation indicators: JSON, CSV (``Accept: text/csv``) or the page
    (``Accept: text/html``, signed in at ``/admin/login``)."""
    if _wants(request) == "html":
        return await _page(request, month)
    auth.require_admin(await auth.bearer_party(request))
    body = await run_in_threadpool(indicators.compute, request.app.state.engine, _month(month))
    if _wants(request) == "csv":
        return Response(_csv(body), media_type="text/csv; charset=utf-8")
    return Response(orjson.dumps(body), media_type="application/json")


def _csv(body: dict) -> str:
    out = io.StringIO()
    rows = csv.writer(out, lineterminator="\n")
    rows.writerow(("party", "figure", "value"))
    rows.writerows(indicators.csv_rows(body))
    return out.getvalue()


async def _page(request: Request, month_text: str | None) -> Response:
    session = await run_in_threadpool(current, request)
    if session is None:
        month = _month_field(month_text)
        return RedirectResponse(f"/admin/login{'?month=' + month if month else ''}", 303, headers=HEADERS)
    try:
        month = _month(month_text)
    except HubError as exc:
        return render(request, "admin_message.html", {"title": "月份有误", "message": exc.message,
                                                      "csrf": session.csrf}, exc.status)
    context = await run_in_threadpool(page_context, request.app.state.engine, month)
    return render(request, "indicators.html", {**context, "csrf": session.csrf})


def page_context(engine: Engine, month: indicators.Month) -> dict[str, Any]:
    """What the page shows: the month, the last 12 months (trends), the charts, the laggards."""
    months = [indicators.compute(engine, month.back(n)) for n in range(TREND_MONTHS - 1, -1, -1)]
    body = months[-1]
    lagging = lagging_hospitals(body)
    return {"body": body, "month": month, "lagging": lagging, "names": charts.PROVINCE_NAMES,
            "charts": _charts(body, months, lagging), "rate": charts.rejection_rate}


def _charts(body: dict, months: list[dict], lagging: list[dict]) -> list[charts.Chart]:
    found = [
        charts.province_bars("records", "各省记录接收与退回（条）", body, "records",
                             {"received": "收到", "rejected": "退回"}),
        charts.province_bars("lookups", "各省医院调阅（次）", body, "lookups",
                             {"allowed": "诊疗调阅", "emergency": "急诊调阅", "refused": "被拒绝"}),
        charts.province_bars("settlements", "各省参保人异地结算（笔）", body, "settlements",
                             {"settled": "已结算", "refused": "被拒付", "voided": "已撤销"}),
        charts.province_bars("transfers", "各省转出的医保关系转移（件）", body, "transfers",
                             {"completed": "已完成", "on_time": "按时完成", "refused": "未能办理"}),
        charts.province_bars("corrections", "各省数据异议（件）", body, "corrections",
                             {"opened": "新提出", "answered_on_time": "按时答复", "overdue": "逾期"}),
        charts.trend("trend-records", "近12个月收到记录（条）", months, lambda p: p["records"]["received"]),
        charts.trend("trend-rejection", "近12个月记录退回率（%）", months,
                     lambda p: float(charts.rejection_rate(p["records"])), counts=False),
        charts.trend("trend-settled", "近12个月已结算（笔）", months, lambda p: p["settlements"]["settled"]),
    ]
    if lagging:
        found.append(charts.lagging_bars("lagging", "记录退回率最高的医院（%）", lagging))
    return found


def lagging_hospitals(body: dict, limit: int = LAGGING) -> list[dict]:
    """The hospitals that lag most: overdue corrections first, then the rejection rate, then the
    median delay; only those lagging in at least one of them."""
    rows = []
    for code, figures in body["hospitals"].items():
        rate = charts.rejection_rate(figures["records"])
        delay = figures["records"]["median_delay_hours"]
        overdue = figures["corrections"]["overdue"]
        if rate or overdue or (delay and float(delay) > 24):
            rows.append({"hospital": code, "rejection_rate": rate, "median_delay_hours": delay,
                         "overdue": overdue, "received": figures["records"]["received"],
                         "refused_settlements": figures["settlements"]["refused"]})
    rows.sort(key=lambda r: (-r["overdue"], -r["rejection_rate"],
                             -float(r["median_delay_hours"] or 0), r["hospital"]))
    return rows[:limit]
