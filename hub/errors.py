"""The hub's one exception tree for answers to callers, and how each is rendered.

    HubError (status, code, message)
    ├── Unauthenticated        401  no token, or an unknown one
    ├── Forbidden              403  a party asking for what is not its own
    ├── NotFound               404
    ├── NotAcceptable          406  a format the hub does not serve (``_format``)
    ├── Gone                   410  a retired version (FHIR read and vread)
    ├── BadRequest             400  unreadable body, bad search
    ├── PayloadTooLarge        413
    ├── Conflict               409
    └── Unprocessable          422

Under ``/fhir`` an error is an ``OperationOutcome``; elsewhere ``{"error": {"code", "message"}}``
(hub-interface.md, "Who is calling").
"""

from __future__ import annotations

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

FHIR_JSON = "application/fhir+json"

# HTTP status -> OperationOutcome issue code (data)
_ISSUE_CODES = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported",
                406: "not-supported", 409: "conflict", 410: "deleted", 413: "too-costly",
                422: "processing", 500: "exception"}


class HubError(Exception):
    status = 500
    code = "INTERNAL"

    def __init__(self, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.headers = headers or {}


class Unauthenticated(HubError):
    status, code = 401, "UNAUTHENTICATED"


class Forbidden(HubError):
    status, code = 403, "FORBIDDEN"


class NotFound(HubError):
    status, code = 404, "NOT_FOUND"


class NotAcceptable(HubError):
    status, code = 406, "NOT_ACCEPTABLE"


class Gone(HubError):
    status, code = 410, "GONE"


class BadRequest(HubError):
    status, code = 400, "BAD_REQUEST"


class PayloadTooLarge(HubError):
    status, code = 413, "PAYLOAD_TOO_LARGE"


class Conflict(HubError):
    status, code = 409, "CONFLICT"


class Unprocessable(HubError):
    status, code = 422, "UNPROCESSABLE"


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

    @app.exception_handler(HubError)
    async def _hub_error(request: Request, exc: HubError):
        headers = dict(exc.headers)
        if exc.status == 401:
            headers.setdefault("WWW-Authenticate", "Bearer")
        return render(request, exc.status, exc.code, exc.message, headers)

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
