"""Checking real answers against the hub's own ``/openapi.json`` with ``jsonschema``.

``documented(answer)`` finds the operation the request went to (its path template and method),
and checks that the answer's status is documented, with the answer's media type, and that its
JSON body fits the documented schema; for a 2xx answer, a JSON request body it was sent must fit
the documented request schema too (what the hub accepted, the document must accept).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache

import httpx
from jsonschema import Draft202012Validator


@lru_cache(maxsize=None)
def document(base_url: str) -> dict:
    answer = httpx.get(f"{base_url}/openapi.json", timeout=30)
    assert answer.status_code == 200
    return answer.json()


def validator(doc: dict, schema: dict) -> Draft202012Validator:
    """A validator of ``schema`` whose ``#/components/...`` references resolve in ``doc``."""
    return Draft202012Validator({"allOf": [schema], "components": doc["components"]})


def operation(doc: dict, method: str, path: str) -> dict:
    for template, operations in doc["paths"].items():
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path) and method.lower() in operations:
            return operations[method.lower()]
    raise AssertionError(f"{method} {path} is not in /openapi.json")


def _literal_first(doc: dict, method: str, path: str) -> dict:
    """The operation of ``path``, a literal template winning over one with parameters
    (``/settlement/clearing`` over ``/settlement/{setl_id}``), as the router matches them."""
    if path in doc["paths"] and method.lower() in doc["paths"][path]:
        return doc["paths"][path][method.lower()]
    return operation(doc, method, path)


def documented(answer: httpx.Response) -> httpx.Response:
    """``answer``, after checking it (and what it answered) against the document; returned so
    that a test can wrap a call: ``documented(c.get(...))``."""
    request = answer.request
    base = f"{request.url.scheme}://{request.url.netloc.decode()}"
    doc = document(base)
    op = _literal_first(doc, request.method, request.url.path)
    described = op["responses"].get(str(answer.status_code))
    assert described is not None, f"{request.method} {request.url.path}: {answer.status_code} is not documented"
    media = answer.headers.get("content-type", "").split(";")[0]
    content = described.get("content", {})
    assert media in {m.split(";")[0] for m in content}, (request.url.path, answer.status_code, media, list(content))
    schema = next(c["schema"] for m, c in content.items() if m.split(";")[0] == media)
    if media.endswith("json"):
        validator(doc, schema).validate(answer.json())
    sent = request.headers.get("content-type", "").split(";")[0]
    if 200 <= answer.status_code < 300 and sent == "application/json" and request.content:
        body = op["requestBody"]["content"]["application/json"]["schema"]
        validator(doc, body).validate(json.loads(request.content))
    return answer


def check_every_answer(client: httpx.Client, skip: tuple[str, ...] = ("/fhir", "/portal")) -> httpx.Client:
    """``client``, now checking every answer it gets with ``documented`` (but those under
    ``skip``: FHIR answers are FHIR's to describe, portal pages are HTML for persons)."""

    def check(answer: httpx.Response) -> None:
        if not answer.request.url.path.startswith(skip):
            answer.read()
            documented(answer)

    client.event_hooks["response"].append(check)
    return client


def round_trips(model, answer: httpx.Response) -> None:
    """The documented ``model`` reads the answer and writes it back byte for byte (money at two
    places, fields in order, UTF-8): the model is the answer, not an approximation of it."""
    assert model.model_validate_json(answer.content).model_dump_json().encode() == answer.content


def error(code: str, message: str) -> bytes:
    """The exact bytes of the hub's error answer outside ``/fhir`` (hub-interface.md)."""
    return json.dumps({"error": {"code": code, "message": message}}, ensure_ascii=False,
                      separators=(",", ":")).encode()
