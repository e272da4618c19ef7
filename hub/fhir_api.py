"""``/fhir``: the hospitals' FHIR R4 lookups. Thin: parse, ask ``hub.access``, answer.

Bundles are assembled from the stored bytes (no parse and dump per resource).
"""

from __future__ import annotations

from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from hub import access, search, store
from hub.auth import Party, bearer_party
from hub.errors import FHIR_JSON, BadRequest, NotFound

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
                           "url": str(request.base_url).rstrip("/") + "/fhir"},
        "rest": [{"mode": "server", "resource": resources,
                  "security": {"description": "Bearer tokens per party (hub-interface.md)"}}],
    }
    return fhir_response(orjson.dumps(statement))


def _known_type(res_type: str) -> None:
    if res_type not in search.PARAMS:
        raise NotFound(f"resource type {res_type!r} is not served here")


def _entry(base: str, row, party: Party, mode: bytes = b"match") -> bytes:
    content = access.present(party, row, store.with_meta(row.content, row.version,
                                                         row.last_updated))
    return (b'{"fullUrl":"%s/%s/%s","resource":%s,"search":{"mode":"%s"}}'
            % (base.encode(), row.res_type.encode(), row.res_id.encode(), content, mode))


def _bundle(total: int, links: list[tuple[str, str]], entries: list[bytes]) -> bytes:
    head = orjson.dumps({"resourceType": "Bundle", "type": "searchset", "total": total,
                         "link": [{"relation": r, "url": u} for r, u in links]})
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


@router.get("/{res_type}")
def search_type(res_type: str, request: Request, party: Party = Depends(bearer_party)) -> Response:
    _known_type(res_type)
    count, offset, params = _paging(request)
    criteria = [(n, v) for n, v in params if n not in search.RESULT_PARAMS]
    try:
        with request.app.state.engine.connect() as conn:
            page = access.search(conn, party, res_type, criteria, count, offset)
    except search.SearchError as exc:
        raise BadRequest(str(exc)) from None
    base = str(request.base_url).rstrip("/") + "/fhir"
    self_q = criteria + [("_count", str(count)), ("_offset", str(offset))]
    links = [("self", f"{base}/{res_type}?{urlencode(self_q)}")]
    if offset + count < page.total and count:
        next_q = criteria + [("_count", str(count)), ("_offset", str(offset + count))]
        links.append(("next", f"{base}/{res_type}?{urlencode(next_q)}"))
    entries = [_entry(base, row, party) for row in page.rows]
    return fhir_response(_bundle(page.total, links, entries))


@router.get("/{res_type}/{res_id}")
def read(res_type: str, res_id: str, request: Request,
         party: Party = Depends(bearer_party)) -> Response:
    _known_type(res_type)
    with request.app.state.engine.connect() as conn:
        row = access.read(conn, party, res_type, res_id)
    content = store.with_meta(row.content, row.version, row.last_updated)
    return fhir_response(access.present(party, row, content))


@router.get("/Patient/{patient_id}/$everything")
def everything(patient_id: str, request: Request, party: Party = Depends(bearer_party)) -> Response:
    with request.app.state.engine.connect() as conn:
        rows = access.everything(conn, party, patient_id)
    base = str(request.base_url).rstrip("/") + "/fhir"
    entries = [_entry(base, row, party) for row in rows]
    links = [("self", f"{base}/Patient/{patient_id}/$everything")]
    return fhir_response(_bundle(len(rows), links, entries))
