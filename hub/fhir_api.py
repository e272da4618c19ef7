"""``/fhir``: the hospitals' FHIR R4 lookups. Thin: parse, ask ``hub.access``, answer.

Bundles are assembled from the stored bytes (no parse and dump per resource).
"""

from __future__ import annotations

from urllib.parse import unquote, urlencode

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from functools import lru_cache

from hub import access, audit, search, store
from hub.auth import Party, bearer_party
from hub.errors import FHIR_JSON, BadRequest, NotFound
from hub.logs import scrub

router = APIRouter(prefix="/fhir")
DEFAULT_COUNT, MAX_COUNT = 50, 500


def fhir_response(body: bytes, status: int = 200) -> Response:
    return Response(body, status, media_type=FHIR_JSON)


@router.get("/metadata")
def metadata(request: Request) -> Response:
    """The CapabilityStatement: types, their search parameters, ``$everything``."""
    resources = []
    for res_type, params in search.PARAMS.items():
        entry = {"type": res_type, "interaction": [{"code": "read"}, {"code": "search-type"}],
                 "searchParam": [{"name": p.name, "type": p.kind} for p in params]}
        if res_type == "Patient":
            entry["operation"] = [{"name": "everything",
                                   "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"}]
        resources.append(entry)
    statement = {
        "resourceType": "CapabilityStatement", "status": "active", "date": "2026-11-25",
        "kind": "instance", "fhirVersion": "4.0.1", "format": ["application/fhir+json"],
        "software": {"name": "yrdhub"},
        "implementation": {"description": "Yangtze River Delta interoperability hub",
                           "url": _base(request)},
        "rest": [{"mode": "server", "resource": resources,
                  "security": {"description": "Bearer tokens per party (hub-interface.md)"}}],
    }
    return fhir_response(orjson.dumps(statement))


def _known_type(res_type: str) -> None:
    if res_type not in search.PARAMS and res_type != "AuditEvent":
        raise NotFound(f"resource type {res_type!r} is not served here")


def header_text(raw: str | None) -> str:
    """A header's text: HTTP carries bytes, so a Chinese reason arrives as raw UTF-8 (which the
    server reads as Latin-1) or percent-encoded; both are read back to text."""
    if not raw:
        return ""
    try:
        raw = raw.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        pass
    if "%" in raw:
        raw = unquote(raw)
    return raw.strip()


def caller_of(request: Request, party: Party) -> access.Caller:
    reason = header_text(request.headers.get(access.EMERGENCY_HEADER))
    return access.Caller(party, reason[:500] or None)


def _shown(answer: access.Answer, row) -> tuple[str, str, bytes]:
    """Type, id and bytes of one row as the caller sees it (an audit row has no ``res_type``)."""
    res_type = getattr(row, "res_type", "AuditEvent")
    if res_type == "AuditEvent":
        event = audit.as_fhir(row, hospital_names())
        return res_type, event["id"], orjson.dumps(event)
    return res_type, row.res_id, answer.render(row, store.with_meta(row.content, row.version,
                                                                    row.last_updated))


def _entry(base: str, answer: access.Answer, row) -> bytes:
    res_type, res_id, content = _shown(answer, row)
    return (b'{"fullUrl":"%s/%s/%s","resource":%s,"search":{"mode":"match"}}'
            % (base.encode(), res_type.encode(), res_id.encode(), content))


def _bundle(answer: access.Answer, base: str, links: list[tuple[str, str]]) -> bytes:
    entries = [_entry(base, answer, row) for row in answer.rows]
    if answer.withheld:
        entries.append(orjson.dumps({"resource": access.SUPPRESSED,
                                     "search": {"mode": "outcome"}}))
    head = orjson.dumps({"resourceType": "Bundle", "type": "searchset", "total": answer.total,
                         "link": [{"relation": r, "url": scrub(u)} for r, u in links]})
    return head[:-1] + b',"entry":[' + b",".join(entries) + b"]}"


def _paging(request: Request) -> tuple[int, int, list[tuple[str, str]]]:
    params = list(request.query_params.multi_items())
    try:
        count = int(request.query_params.get("_count", DEFAULT_COUNT))
        offset = int(request.query_params.get("_offset", 0))
    except ValueError:
        raise BadRequest("_count and _offset must be whole numbers") from None
    if count < 0 or offset < 0:
        raise BadRequest("_count and _offset must not be negative")
    return min(count, MAX_COUNT), offset, params


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/fhir"


@router.get("/{res_type}")
def search_type(res_type: str, request: Request, party: Party = Depends(bearer_party)) -> Response:
    _known_type(res_type)
    count, offset, params = _paging(request)
    criteria = [(n, v) for n, v in params if n not in search.RESULT_PARAMS]
    engine = request.app.state.engine
    try:
        with engine.connect() as conn:
            answer = access.search(conn, engine, caller_of(request, party), res_type, criteria,
                                   count, offset)
    except search.SearchError as exc:
        raise BadRequest(str(exc)) from None
    base = _base(request)

    def page(at: int) -> str:
        query = criteria + [("_count", str(count)), ("_offset", str(at))]
        return f"{base}/{res_type}?{urlencode(query)}"

    links = [("self", page(offset))]
    if offset + count < answer.total and count:
        links.append(("next", page(offset + count)))
    return fhir_response(_bundle(answer, base, links))


@router.get("/{res_type}/{res_id}")
def read(res_type: str, res_id: str, request: Request,
         party: Party = Depends(bearer_party)) -> Response:
    _known_type(res_type)
    if res_type == "AuditEvent":
        raise NotFound("audit events are searched, not read by id: GET /fhir/AuditEvent?...")
    engine = request.app.state.engine
    with engine.connect() as conn:
        answer = access.read(conn, engine, caller_of(request, party), res_type, res_id)
    return fhir_response(_shown(answer, answer.rows[0])[2])


@router.get("/Patient/{patient_id}/$everything")
def everything(patient_id: str, request: Request, party: Party = Depends(bearer_party)) -> Response:
    engine = request.app.state.engine
    with engine.connect() as conn:
        answer = access.everything(conn, engine, caller_of(request, party), patient_id)
    base = _base(request)
    return fhir_response(_bundle(answer, base, [("self", f"{base}/Patient/{patient_id}/$everything")]))


@lru_cache(maxsize=1)
def hospital_names() -> dict[str, str]:
    from settlement.reference import default_reference

    return {h.code: h.name for h in default_reference().hospitals.values()}
