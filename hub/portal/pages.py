"""The portal's pages under ``/portal`` (Chinese, for a person in a browser).

Every page that needs a session redirects to ``/portal/login`` (303) without one. Every form
(sign-in, sign-out, sharing, transfer, cancel) carries a CSRF token: the sign-in form the
double-submit cookie's, the others the session's; a missing or wrong one is ``403`` with a page
saying so, and nothing is changed. Pages are ``no-store``, may not be framed, and run only the
hub's own script (Content-Security-Policy). No page shows a full resident ID: only the masked one.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Awaitable, Callable

from fastapi import APIRouter, Request
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse, Response

from hub import api_models as m
from hub import sharing
from hub.errors import HubError
from hub.portal import accesslog, api, sessions
from hub.portal.sessions import PatientSession
from mappers.region import PROVINCE_NAMES
from settlement.reference import INSUTYPES
from settlement.transfer import region_places

router = APIRouter(prefix="/portal")
templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}
STATUS_LABELS = {"submitted": "已提交", "in_progress": "办理中", "completed": "已完成", "refused": "未能办理",
                 "cancelled": "已撤销"}
STEP_LABELS = {"4101": "转出地办理转出、出具参保凭证", "4102": "转出地划转个人账户余额",
               "4201": "转入地办理转入、开通参保", "4103": "转出地撤销转出、恢复参保"}
STEP_STATUS = {"pending": "办理中", "done": "已完成", "failed": "未通过", "undone": "已撤回"}
INSU_STATUS = {"1": "正常参保", "2": "暂停参保", "4": "终止参保"}
# A platform's refusal code -> what it means for the person and what to do.
REFUSAL_HELP = {
    "NOT_ACTIVE": "您在转出地的参保状态不是“正常参保”（已暂停或已终止），暂时不能转出。请联系转出地医保经办机构恢复参保后再申请。",
    "ARREARS": "您在转出地有欠缴的医保费。请先补缴，再重新申请转移。",
    "PENDING_SETTLEMENT": "您在转出地还有尚未结算完的医疗费用。请等结算完成后再申请转移。",
    "DUPLICATE_COVERAGE": "您在转入地已经有正常的参保记录（重复参保），转入地不能再为您开通。请先到转入地处理已有的参保关系。转出地已为您恢复参保，您的医保没有中断。",
    "CERT_INVALID": "参保凭证无效或已被使用。转出地已为您恢复参保。请联系医保经办机构。",
    "FUNDS_MISMATCH": "个人账户转移金额不一致，转移未能完成。转出地已为您恢复参保和账户余额。请联系医保经办机构。",
    "PERSON_NOT_FOUND": "转出地没有查到您的参保信息。请确认参保地和姓名、证件信息。",
}


def render(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
    base = {"province_names": PROVINCE_NAMES, "status_labels": STATUS_LABELS, "step_labels": STEP_LABELS,
            "step_status": STEP_STATUS, "insutypes": INSUTYPES, "refusal_help": REFUSAL_HELP,
            "insu_status": INSU_STATUS, "place_names": {p["admdvs"]: p["name"] for p in region_places()}}
    response = templates.TemplateResponse(request, name, {**base, **context}, status_code=status)
    response.headers.update(SECURITY_HEADERS)
    return response


def to_login() -> Response:
    return RedirectResponse("/portal/login", 303, headers=SECURITY_HEADERS)


def page(request: Request, session: PatientSession, name: str, status: int = 200, **context: Any) -> Response:
    return render(request, name, {"me": session, "csrf": session.csrf, **context}, status)


async def form_with_csrf(request: Request, session: PatientSession) -> dict[str, Any] | None:
    """The posted form, or None when its CSRF token is not the session's."""
    form = dict(await request.form())
    return form if sessions.same_token(session.csrf, form.get("csrf")) else None


def csrf_refused(request: Request, session: PatientSession) -> Response:
    return page(request, session, "message.html", 403, title="页面已过期",
                message="为保护您的安全，本次提交未被接受（页面已过期或来源不明）。请返回后重新操作。")


def for_patient(request: Request, build: Callable[[PatientSession], Response]) -> Response:
    """``build(session)`` for a signed-in patient; the sign-in page otherwise."""
    session = sessions.current(request)
    return to_login() if session is None else build(session)


async def signed_in_form(request: Request) -> tuple[PatientSession, dict[str, Any]] | Response:
    """The signed-in patient's session and posted form; else the answer to give instead: the
    sign-in page (no session) or 403 (the form's CSRF token is not the session's)."""
    session = sessions.current(request)
    if session is None:
        return to_login()
    form = await form_with_csrf(request, session)
    return csrf_refused(request, session) if form is None else (session, form)


# -- sign-in ---------------------------------------------------------------------------------------


def login_page(request: Request, status: int = 200, message: str | None = None, province: str = "") -> Response:
    token = sessions.login_token(request)
    response = render(request, "login.html", {"csrf": token, "message": message, "province": province}, status)
    sessions.set_login_cookie(response, request, token)
    return response


@router.get("/login", **m.page())
def get_login(request: Request) -> Response:
    return login_page(request)


@router.post("/login", **m.page(form={
    "province": "the insured province: SH, JS, ZJ or AH", "code": "the e-voucher code of the insurance app"},
    redirect="/portal (401 the form again; 429 with Retry-After after too many failures)"))
async def post_login(request: Request) -> Response:
    """Sign in (hub-interface.md): 303 to /portal with a session; 401 with the form (a refused
    code, which counts against the address and the code); 403 (the form's CSRF token); 429 with
    ``Retry-After`` while guessing is bounded (``guard``: no platform call); 503 (no platform)."""
    form = dict(await request.form())
    province, code = str(form.get("province") or ""), str(form.get("code") or "")
    if not sessions.same_token(request.cookies.get(sessions.CSRF_COOKIE), form.get("csrf")):
        return login_page(request, 403, "页面已过期，请重新输入后再登录。", province)
    state = request.app.state
    address = request.client.host if request.client else "unknown"
    wait = await run_in_threadpool(state.sign_in_guard.retry_after, address, code)
    if wait is not None:
        return too_many_tries(request, wait, province)
    try:
        info = await sessions.sign_in(getattr(state, "platform", None), province, code)
        token, _ = sessions.open_session(state.engine, province, info, state.settings.session_hours)
    except sessions.SignInFailed as exc:
        if exc.refused:
            await run_in_threadpool(state.sign_in_guard.failed, address, code)
        return login_page(request, exc.status, exc.message, province)
    response = RedirectResponse("/portal", 303, headers=SECURITY_HEADERS)
    sessions.set_session_cookie(response, request, token, state.settings.session_hours)
    return response


def too_many_tries(request: Request, wait: int, province: str) -> Response:
    """429: the sign-in form, saying how long to wait, with ``Retry-After`` in whole seconds."""
    message = f"登录失败次数过多。为保护您的账户，请 {math.ceil(wait / 60)} 分钟后再试。"
    response = login_page(request, 429, message, province)
    response.headers["Retry-After"] = str(wait)
    return response


@router.post("/logout", **m.page(form={}, redirect="/portal/login"))
async def post_logout(request: Request) -> Response:
    session = sessions.current(request)
    if session is not None:
        if await form_with_csrf(request, session) is None:
            return csrf_refused(request, session)
        sessions.end_session(request.app.state.engine, request.cookies.get(sessions.COOKIE))
    response = to_login()
    sessions.clear_session_cookie(response, request)
    return response


# -- home, access log, sharing ---------------------------------------------------------------------


@router.get("", **m.page())
def home(request: Request) -> Response:
    session = sessions.current(request)
    if session is None:
        return to_login()
    service = getattr(request.app.state, "transfers", None)
    transfers = service.list(session.patient_id) if service else []
    return page(request, session, "home.html", transfers=transfers)


@router.get("/access-log", **m.page())
def access_log_page(request: Request) -> Response:
    session = sessions.current(request)
    if session is None:
        return to_login()
    entries = accesslog.access_log(request.app.state.engine, session.patient_id, limit=500)
    return page(request, session, "access_log.html", entries=entries, purposes=accesslog.PURPOSE_LABELS,
                outcomes=accesslog.OUTCOME_LABELS, describe=accesslog.describe)


@router.get("/sharing", **m.page())
def sharing_page(request: Request) -> Response:
    session = sessions.current(request)
    if session is None:
        return to_login()
    choices = sharing.get_choices(request.app.state.engine, session.patient_id)
    return page(request, session, "sharing.html", choices=choices, saved=request.query_params.get("saved") == "1")


@router.post("/sharing", **m.page(form={
    "cross_province": "on to share across provinces", "mental": "on to share", "hiv": "on to share",
    "sti": "on to share"}, redirect="/portal/sharing?saved=1"))
async def post_sharing(request: Request) -> Response:
    signed = await signed_in_form(request)
    if isinstance(signed, Response):
        return signed
    session, form = signed
    choices = sharing.SharingChoices(cross_province=form.get("cross_province") == "on",
                                     **{c: form.get(c) == "on" for c in sharing.CATEGORIES})
    sharing.set_choices(request.app.state.engine, session.patient_id, choices)
    return RedirectResponse("/portal/sharing?saved=1", 303, headers=SECURITY_HEADERS)


# -- transfers -------------------------------------------------------------------------------------


def transfer_form(request: Request, session: PatientSession, status: int = 200, message: str | None = None,
                  chosen: dict[str, str] | None = None) -> Response:
    return page(request, session, "transfer_new.html", status, places=region_places(), message=message,
                chosen=chosen or {})


@router.get("/transfers/new", **m.page())
def new_transfer(request: Request) -> Response:
    session = sessions.current(request)
    return to_login() if session is None else transfer_form(request, session)


@router.post("/transfers", **m.page(form={
    "to_admdvs": "the county-level code to move to", "insutype": "310 or 390"},
    redirect="/portal/transfers/{id}"))
async def post_transfer(request: Request) -> Response:
    signed = await signed_in_form(request)
    if isinstance(signed, Response):
        return signed
    session, form = signed
    chosen = {"to_admdvs": str(form.get("to_admdvs") or ""), "insutype": str(form.get("insutype") or "")}
    try:
        created = api.create_transfer(request, session, chosen["to_admdvs"], chosen["insutype"])
    except HubError as exc:
        return transfer_form(request, session, exc.status, exc.message, chosen)
    return RedirectResponse(f"/portal/transfers/{created['id']}", 303, headers=SECURITY_HEADERS)


@router.get("/transfers/{transfer_id}", **m.page())
def transfer_page(request: Request, transfer_id: str) -> Response:
    session = sessions.current(request)
    if session is None:
        return to_login()
    try:
        transfer = api.get_transfer(request, session, transfer_id)
    except HubError as exc:
        return page(request, session, "message.html", exc.status, title="未找到", message=exc.message)
    return page(request, session, "transfer.html", transfer=transfer, notice=request.query_params.get("notice"))


async def ending_form(request: Request, end: Callable[[PatientSession], Awaitable[Any]], back: str,
                      notice: str) -> Response:
    """A form that ends something of the patient's (cancel, withdraw): ``await end(session)``,
    then back to ``back`` with ``?notice=<notice>``, or ``?notice=too_late`` when it can no
    longer be ended; a 404 page when it is not theirs (no session, a bad CSRF: as
    ``signed_in_form``)."""
    signed = await signed_in_form(request)
    if isinstance(signed, Response):
        return signed
    session, _form = signed
    try:
        await end(session)
    except HubError as exc:
        if exc.status == 404:
            return page(request, session, "message.html", 404, title="未找到", message=exc.message)
        notice = "too_late"
    return RedirectResponse(f"{back}?notice={notice}", 303, headers=SECURITY_HEADERS)


@router.post("/transfers/{transfer_id}/cancel", **m.page(form={}, redirect="/portal/transfers/{id}"))
async def post_cancel(request: Request, transfer_id: str) -> Response:
    return await ending_form(request, lambda session: api.cancel_transfer(request, session, transfer_id),
                             f"/portal/transfers/{transfer_id}", "cancel")
