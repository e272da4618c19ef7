"""The one table from every package's errors to HTTP (``hub.errors.ANSWERS``): every error a
caller may be told is in it, no domain class carries a status, the most specific class answers,
and the edge renders each in the caller's dialect."""

from __future__ import annotations

import inspect

import orjson
import pytest
import httpx
from fastapi import FastAPI

import mappers.errors
import settlement.errors
from hub import errors
from hub.search import SearchError
from tests.support.common import free_port, serve_in_thread


def classes(module) -> list[type]:
    return [c for _, c in inspect.getmembers(module, inspect.isclass)
            if issubclass(c, BaseException) and c.__module__ == module.__name__]


def test_every_domain_error_a_caller_is_told_is_in_the_table():
    told = [c for c in classes(settlement.errors) if issubclass(c, settlement.errors.DomainError)
            and c is not settlement.errors.DomainError]
    assert len(told) == 10
    upload = [mappers.errors.UnreadableUpload, mappers.errors.ArchiveTooLarge, mappers.errors.ForeignSender]
    for cls in told + upload:
        errors.answer_of(cls("x"))  # KeyError: unanswered (a 500)
    assert settlement.errors.DomainError not in errors.ANSWERS  # each is answered on purpose


def test_no_domain_class_knows_http():
    for cls in classes(settlement.errors) + classes(mappers.errors):
        assert not hasattr(cls, "status"), cls.__name__
    # the hub's own classes read theirs from the table too
    assert "status" not in vars(errors.NotFound) and errors.NotFound("x").status == 404


@pytest.mark.parametrize(("error", "answer"), [
    (settlement.errors.TransferError("x"), (400, "INVALID_TRANSFER")),
    (settlement.errors.TransferNotFound("x"), (404, "NOT_FOUND")),
    (settlement.errors.CancelTooLate("x"), (409, "CANNOT_CANCEL")),
    (settlement.errors.ReconcileUnavailable("x"), (503, "PLATFORM_UNAVAILABLE")),
    (settlement.errors.InvalidRequest("x", code="INVALID_MONTH"), (422, "INVALID_MONTH")),
    (settlement.errors.NotPermitted("x"), (403, "FORBIDDEN")),
    (mappers.errors.ArchiveTooLarge("x"), (413, "PAYLOAD_TOO_LARGE")),
    (mappers.errors.UnreadableUpload("x"), (400, "UNREADABLE")),
    (SearchError("x"), (400, "BAD_REQUEST")),
    (errors.SignInUnavailable("x"), (503, "PLATFORM_UNAVAILABLE")),
    (errors.Unauthenticated("x"), (401, "UNAUTHENTICATED")),
])
def test_the_most_specific_class_answers(error, answer):
    assert errors.answer_of(error) == answer


def test_an_error_outside_the_table_is_not_answered():
    with pytest.raises(KeyError):
        errors.answer_of(settlement.errors.RunnerLost("x"))
    with pytest.raises(KeyError):
        errors.answer_of(ValueError("x"))


def test_the_edge_renders_domain_errors_in_the_callers_dialect():
    app = FastAPI()
    errors.install(app)

    @app.get("/fhir/x")
    @app.get("/api/x")
    def raising():
        raise settlement.errors.PlatformUnavailable("平台不可用", headers={"Retry-After": "5"})

    port = free_port()
    server = serve_in_thread(app, port)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            plain, fhir = client.get("/api/x"), client.get("/fhir/x")
    finally:
        server.should_exit = True
        server.thread.join(10)
    assert (plain.status_code, plain.content, plain.headers["retry-after"]) == (
        503, orjson.dumps({"error": {"code": "PLATFORM_UNAVAILABLE", "message": "平台不可用"}}), "5")
    assert fhir.status_code == 503 and fhir.headers["content-type"] == errors.FHIR_JSON
    issue = fhir.json()["issue"][0]
    assert issue["details"]["coding"][0]["code"] == "PLATFORM_UNAVAILABLE"
    assert issue["diagnostics"] == "平台不可用"
