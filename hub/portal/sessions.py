"""Patients' sign-in and sessions.

Sign-in (``sign_in``): the insured province's platform checks the e-voucher code with 1101,
``mdtrt_cert_type`` ``01``. A refusal (``TOKEN_INVALID``, ``TOKEN_EXPIRED``, ``PERSON_NOT_FOUND``)
or an unreadable form is a ``SignInFailed`` (401) with a Chinese message (``refused``: the
platform refused the code, which is what the guessing bounds of ``guard`` count); a platform that
cannot be reached or is not configured is a ``SignInUnavailable`` (503: the code may be fine, the
person should try later). Both are drawn in ``hub.errors``.

Sessions: the cookie ``yrd_session`` carries a random id (256 bits); the table holds only its
SHA-256. Cookies are HttpOnly, ``SameSite=Strict``, ``Secure`` over HTTPS, and expire after
``settings.session_hours`` (so does the row: an expired row is refused and deleted). Each session
has its own CSRF token for the pages' forms. Before sign-in, the login form's CSRF is a
double-submit: a random ``yrd_csrf`` cookie (HttpOnly, SameSite=Strict) that the hidden field must
repeat.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
from fastapi import Request
from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Engine
from starlette.responses import Response

from hub.db import writer
from hub.errors import SignInFailed, SignInUnavailable, Unauthenticated
from hub.portal.models import PortalSession
from hub.store import patient_for_resident_id
from mappers.errors import InvalidValue
from mappers.region import PROVINCE_NAMES, mask_resident_id, normalize_resident_id
from settlement.errors import PlatformError, Refused

COOKIE = "yrd_session"
CSRF_COOKIE = "yrd_csrf"
SIGN_IN_REFUSALS = {
    "TOKEN_INVALID": "电子凭证码无效。请在医保App中打开“医保电子凭证”，刷新后重新输入。",
    "TOKEN_EXPIRED": "电子凭证码已过期。请在医保App中刷新电子凭证后重新输入。",
    "PERSON_NOT_FOUND": "所选省份的医保平台没有查到您的参保信息，请确认参保地是否选对。",
}
# Refusals that say nothing about the code (the msgid was taken, however often it was re-picked).
NOT_ABOUT_THE_CODE = {"MSGID_REUSED"}
_UTC = timezone.utc


@dataclass(frozen=True)
class PatientSession:
    id_hash: str
    patient_id: str
    province: str
    certno: str
    masked_id: str
    psn_name: str
    insuinfo: list[dict[str, Any]]
    csrf: str
    expires: datetime

    def coverage(self, insutype: str) -> dict[str, Any] | None:
        """The 1101 coverage entry of ``insutype`` seen at sign-in (None: not insured so)."""
        return next((i for i in self.insuinfo if i.get("insutype") == insutype), None)


def hash_id(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def same_token(expected: str | None, given: str | None) -> bool:
    """Constant-time equality of two CSRF tokens; False when either is missing."""
    return bool(expected) and bool(given) and hmac.compare_digest(str(expected), str(given))


async def sign_in(platform: Any, province: str, code: str) -> dict[str, Any]:
    """Check ``code`` at ``province``'s platform; returns the 1101 output. Raises SignInFailed."""
    if province not in PROVINCE_NAMES:
        raise SignInFailed("请选择参保省份。")
    code = (code or "").strip()
    if not code or len(code) > 64 or not code.isprintable():
        raise SignInFailed("请输入医保App中显示的电子凭证码。")
    if platform is None:
        raise SignInUnavailable("医保平台暂时无法连接，请稍后再试。")
    try:
        return await _person_info(platform, province, code)
    except Refused as exc:
        message = SIGN_IN_REFUSALS.get(exc.err_code, f"登录失败：{exc.err_msg or exc.err_code}")
        raise SignInFailed(message, refused=exc.err_code not in NOT_ABOUT_THE_CODE) from None
    except PlatformError:
        raise SignInUnavailable(f"{PROVINCE_NAMES[province]}医保平台暂时无法连接，请稍后再试。") from None


async def _person_info(platform: Any, province: str, code: str, tries: int = 3) -> dict[str, Any]:
    """1101 by e-voucher. A read: when the platform says its msgid was already used (another hub
    process, or a restart, in the same second), it is asked again under a new msgid (the
    client's next, which starts each second at a random number)."""
    for attempt in range(tries):
        try:
            return await platform.person_info(province, "01", code)
        except Refused as exc:
            if exc.err_code != "MSGID_REUSED" or attempt == tries - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def open_session(engine: Engine, province: str, info: dict[str, Any], hours: int) -> tuple[str, PatientSession]:
    """Store a session for the person 1101 described; returns (cookie value, session).
    SignInFailed when the platform's answer holds no valid resident ID."""
    base = info.get("baseinfo") or {}
    try:
        certno = normalize_resident_id(base.get("certno"))
    except InvalidValue:
        raise SignInFailed("医保平台返回的身份信息无法识别，请联系参保地医保经办机构。") from None
    token = secrets.token_urlsafe(32)
    now = datetime.now(_UTC)
    row = {"id_hash": hash_id(token), "patient_id": patient_for_resident_id(engine, certno), "province": province,
           "certno": certno, "masked_id": mask_resident_id(certno), "psn_name": str(base.get("psn_name") or ""),
           "insuinfo": orjson.dumps(info.get("insuinfo") or []).decode(), "csrf": secrets.token_urlsafe(24),
           "created": now, "expires": now + timedelta(hours=hours)}
    with writer(engine).begin() as conn:
        conn.execute(delete(PortalSession).where(PortalSession.expires < now))
        conn.execute(insert(PortalSession), [row])
    return token, _as_session(row)


def _as_session(row: Any) -> PatientSession:
    get = row.get if isinstance(row, dict) else lambda k: getattr(row, k)
    expires = get("expires")
    expires = expires if expires.tzinfo else expires.replace(tzinfo=_UTC)
    return PatientSession(get("id_hash"), get("patient_id"), get("province"), get("certno"), get("masked_id"),
                          get("psn_name"), orjson.loads(get("insuinfo")), get("csrf"), expires)


def find_session(engine: Engine, token: str | None) -> PatientSession | None:
    """The live session of a cookie value; None when absent, unknown or expired."""
    if not token or len(token) > 100:
        return None
    with engine.connect() as conn:
        row = conn.execute(select(PortalSession.__table__).where(PortalSession.id_hash == hash_id(token))).first()
    if row is None:
        return None
    session = _as_session(row)
    return session if session.expires > datetime.now(_UTC) else None


def end_session(engine: Engine, token: str | None) -> None:
    """Delete the session of a cookie value (nothing when there is none)."""
    if token:
        with writer(engine).begin() as conn:
            conn.execute(delete(PortalSession).where(PortalSession.id_hash == hash_id(token)))


def current(request: Request) -> PatientSession | None:
    return find_session(request.app.state.engine, request.cookies.get(COOKIE))


def require(request: Request) -> PatientSession:
    """The request's session, or ``Unauthenticated`` (401 JSON under /api/me)."""
    session = current(request)
    if session is None:
        raise Unauthenticated("请先登录（没有有效的会话）。", code="NO_SESSION")
    return session


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def set_session_cookie(response: Response, request: Request, token: str, hours: int,
                       name: str = COOKIE, path: str = "/") -> None:
    """The session cookie (the administrators' is another ``name``, on ``/admin`` only)."""
    response.set_cookie(name, token, max_age=hours * 3600, httponly=True, samesite="strict",
                        secure=_secure(request), path=path)


def clear_session_cookie(response: Response, request: Request, name: str = COOKIE, path: str = "/") -> None:
    response.delete_cookie(name, path=path, httponly=True, samesite="strict", secure=_secure(request))


def login_token(request: Request) -> str:
    """The login form's CSRF token: the ``yrd_csrf`` cookie's when it has one, else a new one."""
    token = request.cookies.get(CSRF_COOKIE)
    return token if token and len(token) <= 100 else secrets.token_urlsafe(24)


def set_login_cookie(response: Response, request: Request, token: str, path: str = "/portal") -> None:
    response.set_cookie(CSRF_COOKIE, token, max_age=3600, httponly=True, samesite="strict",
                        secure=_secure(request), path=path)
