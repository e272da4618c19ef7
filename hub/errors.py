"""The hub's one exception tree, and the one table that answers every error a caller may be
told (the hub's, ``settlement.errors``' and ``mappers.errors``') in HTTP: ``ANSWERS``, class ->
(status, code when the error carries none), looked up along the class's MRO by the one handler
``install`` registers. No domain class knows its status::

    HubError (code, message, headers)     status in ANSWERS
    ├── Unauthenticated        401  no token, or an unknown one
    ├── Forbidden              403  a party asking for what is not its own
    ├── NotFound               404
    ├── NotAcceptable          406  a format the hub does not serve (``_format``)
    ├── Gone                   410  a retired version (FHIR read and vread)
    ├── BadRequest             400  unreadable body, bad search
    ├── PayloadTooLarge        413
    ├── UnsupportedMediaType   415  a write without application/json (``/api/me``)
    ├── Conflict               409
    ├── Unprocessable          422
    └── Unavailable            503  a service not started yet
    SignInFailed (message, refused)   401  the portal's sign-in (its page shows it)
    └── SignInUnavailable      503  the platform cannot be reached
    hub.search.SearchError     400  a search the hub cannot run

Under ``/fhir`` an error is an ``OperationOutcome``; elsewhere ``{"error": {"code", "message"}}``
(hub-interface.md, "Who is calling").
"""

from __future__ import annotations

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

import mappers.errors as mapping
import settlement.errors as domain
from hub.search import SearchError

FHIR_JSON = "application/fhir+json"

# HTTP status -> OperationOutcome issue code (data)
_ISSUE_CODES = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported",
                406: "not-supported", 409: "conflict", 410: "deleted", 413: "too-costly",
                422: "processing", 500: "exception"}


class HubError(Exception):
    """An error of the hub's own; its status is ``ANSWERS``'."""

    code = "INTERNAL"

    def __init__(self, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.headers = headers or {}

    @property
    def status(self) -> int:
        return status_of(self)


class Unauthenticated(HubError):
    code = "UNAUTHENTICATED"


class Forbidden(HubError):
    code = "FORBIDDEN"


class NotFound(HubError):
    code = "NOT_FOUND"


class NotAcceptable(HubError):
    code = "NOT_ACCEPTABLE"


class Gone(HubError):
    code = "GONE"


class BadRequest(HubError):
    code = "BAD_REQUEST"


class PayloadTooLarge(HubError):
    code = "PAYLOAD_TOO_LARGE"


class UnsupportedMediaType(HubError):
    code = "UNSUPPORTED_MEDIA_TYPE"


class Conflict(HubError):
    code = "CONFLICT"


class Unprocessable(HubError):
    code = "UNPROCESSABLE"


class Unavailable(HubError):
    code = "UNAVAILABLE"


class SignInFailed(Exception):
    """The portal's sign-in did not succeed: a Chinese ``message`` for the page; ``refused``: the
    platform refused the code itself (the sign-in guard counts it)."""

    code = "SIGN_IN_FAILED"

    def __init__(self, message: str, refused: bool = False):
        super().__init__(message)
        self.message, self.refused = message, refused


class SignInUnavailable(SignInFailed):
    """The insured place's platform cannot be reached (or none is configured)."""

    code = "PLATFORM_UNAVAILABLE"


# Error class -> (HTTP status, the code of an error that carries none). The most specific class
# listed answers (MRO order); a class not listed is a 500, logged.
ANSWERS: dict[type[Exception], tuple[int, str | None]] = {
    HubError: (500, None),
    Unauthenticated: (401, None),
    Forbidden: (403, None),
    NotFound: (404, None),
    NotAcceptable: (406, None),
    Gone: (410, None),
    BadRequest: (400, None),
    PayloadTooLarge: (413, None),
    UnsupportedMediaType: (415, None),
    Conflict: (409, None),
    Unprocessable: (422, None),
    Unavailable: (503, None),
    SignInFailed: (401, None),
    SignInUnavailable: (503, None),
    SearchError: (400, "BAD_REQUEST"),
    domain.NotPermitted: (403, None),
    domain.NotFound: (404, None),
    domain.Conflict: (409, None),
    domain.InvalidRequest: (422, None),
    domain.PlatformUnavailable: (503, None),
    domain.TransferError: (400, None),
    domain.TransferInProgress: (409, None),
    domain.TransferNotFound: (404, None),
    domain.CancelTooLate: (409, None),
    mapping.UnreadableUpload: (400, "UNREADABLE"),
    mapping.ArchiveTooLarge: (413, "PAYLOAD_TOO_LARGE"),
    mapping.ForeignSender: (403, "FOREIGN_SENDER"),
}


def answer_of(exc: BaseException) -> tuple[int, str]:
    """(status, code) of an error ``ANSWERS`` lists (the most specific class); KeyError else."""
    for cls in type(exc).__mro__:
        if cls in ANSWERS:
            status, default = ANSWERS[cls]
            return status, getattr(exc, "code", None) or default or "ERROR"
    raise KeyError(type(exc).__name__)


def status_of(exc: BaseException) -> int:
    return answer_of(exc)[0]


def operation_outcome(status: int, message: str, code: str | None = None) -> dict:
    issue = {"severity": "error", "code": _ISSUE_CODES.get(status, "processing"),
             "diagnostics": message}
    if code:
        issue["details"] = {"coding": [{"system": "urn:yrdhub:error", "code": code}],
                            "text": message}
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def render(request: Request, status: int, code: str, message: str,
           headers: dict | None = None) -> Response:
    if request.url.path.startswith("/fhir"):
        body = orjson.dumps(operation_outcome(status, message, code))
        return Response(body, status, headers=headers, media_type=FHIR_JSON)
    body = orjson.dumps({"error": {"code": code, "message": message}})
    return Response(body, status, headers=headers, media_type="application/json")


def install(app) -> None:
    """Register the handlers that render every error in the caller's dialect."""

    async def _answered(request: Request, exc: Exception):
        status, code = answer_of(exc)
        headers = dict(getattr(exc, "headers", None) or {})
        if status == 401:
            headers.setdefault("WWW-Authenticate", "Bearer")
        return render(request, status, code, getattr(exc, "message", None) or str(exc), headers)

    # One handler for every class of the table (Starlette picks a handler along the MRO too)
    for cls in ANSWERS:
        app.add_exception_handler(cls, _answered)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "HTTP_ERROR")
        return render(request, exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        import structlog

        # exc_info the exception itself: the traceback is logged whatever the caller's context.
        structlog.get_logger("hub").error("unexpected error", path=request.url.path,
                                          error=type(exc).__name__, exc_info=exc)
        return render(request, 500, "INTERNAL", "internal error; it has been logged")

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        status = 400 if request.url.path.startswith("/fhir") else 422
        return render(request, status, "INVALID_REQUEST", f"{where}: {first.get('msg', 'invalid')}")
