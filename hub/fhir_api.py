"""``/fhir``: the hospitals' FHIR R4 lookups. Thin: read the parameters (``hub.fhir_results``),
ask ``hub.access``, answer.

Bundles are assembled from the stored bytes (no parse and dump per resource, unless ``_summary``
or ``_elements`` asks for a subset, or ``hub.access`` must mask or cut).
"""

from __future__ import annotations

from datetime import timezone
from email.utils import format_datetime, parsedate_to_datetime
from functools import lru_cache
from urllib.parse import unquote, urlencode

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from hub import access, audit, capability, compression, fhir_results, search, store
from hub.auth import Party, bearer_party
from hub.errors import FHIR_JSON, NotFound
from hub.logs import scrub

router = APIRouter(prefix="/fhir")


def fhir_response(body: bytes, status: int = 200, headers: dict | None = None,
                  request: Request | None = None) -> Response:
    """A FHIR JSON answer; gzipped here (``hub.compression``) when ``request`` accepts it."""
    headers = dict(headers or {})
    if request is not None:
        body = compression.gzipped(request.headers.get("accept-encoding"), body, headers)
    return Response(body, status, headers=headers, media_type=FHIR_JSON)


@router.get("/metadata")
def metadata(request: Request) -> Response:
    """The CapabilityStatement (``hub.capability``)."""
    return fhir_response(orjson.dumps(capability.statement(_base(request))), request=request)


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


def _shown(answer: access.Answer, row, view: fhir_results.View) -> bytes:
    """The one place a stored resource becomes what the caller sees: ``meta`` spliced in, then
    what ``hub.access`` masks and cuts, then the result parameters' subset. Every answer (read,
    vread, search, history, ``$everything``) goes through here, so a tag every answer must
    carry belongs here too."""
    if getattr(row, "res_type", "AuditEvent") == "AuditEvent":  # an audit row
        content = orjson.dumps(audit.as_fhir(row, hospital_names()))
    else:
        content = answer.render(row, store.with_meta(row.content, row.version, row.last_updated))
    return view.shape(content)


def _entry(base: str, answer: access.Answer, row, view: fhir_results.View) -> bytes:
    content = _shown(answer, row, view)
    res_type, res_id = _type_and_id(row, content)
    return (b'{"fullUrl":"%s/%s/%s","resource":%s,"search":{"mode":"match"}}'
            % (base.encode(), res_type.encode(), res_id.encode(), content))


def _type_and_id(row, content: bytes) -> tuple[str, str]:
    if hasattr(row, "res_type"):
        return row.res_type, row.res_id
    return "AuditEvent", orjson.loads(content)["id"]


def _history_entry(base: str, answer: access.Answer, row, view: fhir_results.View) -> bytes:
    """One version in a history Bundle: how it came (the first version created, later ones
    replaced, a retired one deleted) and, unless retired, the resource as it was."""
    ref = f"{row.res_type}/{row.res_id}"
    method, url, status = (("DELETE", ref, "410 Gone") if row.deleted else
                           ("POST", row.res_type, "201 Created") if row.version == 1 else
                           ("PUT", ref, "200 OK"))
    head = orjson.dumps({"fullUrl": f"{base}/{ref}", "request": {"method": method, "url": url},
                         "response": {"status": status, "etag": etag(row),
                                      "lastModified": store.instant(row.last_updated)}})
    if row.deleted:
        return head
    return head[:-1] + b',"resource":' + _shown(answer, row, view) + b"}"


def _bundle(kind: str, total: int | None, links: list[tuple[str, str]], entries: list[bytes],
            outcomes: list[dict]) -> bytes:
    """A Bundle of ``entries`` (bytes, not parsed again), then one ``outcome`` entry per
    OperationOutcome in ``outcomes``. No ``total`` when it was not counted; no ``entry`` when
    there is none (FHIR JSON has no empty arrays)."""
    entries = entries + [orjson.dumps({"resource": o, "search": {"mode": "outcome"}})
                         for o in outcomes]
    head = {"resourceType": "Bundle", "type": kind}
    if total is not None:
        head["total"] = total
    head["link"] = [{"relation": r, "url": scrub(u)} for r, u in links]
    if not entries:
        return orjson.dumps(head)
    return orjson.dumps(head)[:-1] + b',"entry":[' + b",".join(entries) + b"]}"


def _outcomes(answer: access.Answer, asked: fhir_results.Asked) -> list[dict]:
    """What the Bundle says besides its matches: something withheld, parameters ignored."""
    out = [access.SUPPRESSED] if answer.withheld else []
    if asked.ignored:
        out.append(fhir_results.ignored_outcome(asked.ignored))
    return out


def _asked(request: Request, res_type: str, interaction: str) -> fhir_results.Asked:
    return fhir_results.asked(list(request.query_params.multi_items()),
                              request.headers.get("prefer"), res_type, interaction)


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/fhir"


def _links(url: str, asked: fhir_results.Asked, answer: access.Answer,
           criteria: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``self`` and, when another page follows, ``next``: the criteria that were run and the
    result parameters that shape the answer, never a parameter that was ignored."""

    def page(at: int) -> str:
        query = criteria + asked.carried + [("_count", str(asked.count)), ("_offset", str(at))]
        return f"{url}?{urlencode(query)}"

    links = [("self", page(asked.offset))]
    if answer.more and asked.count:
        links.append(("next", page(asked.offset + asked.count)))
    return links


@router.get("/{res_type}")
def search_type(res_type: str, request: Request, party: Party = Depends(bearer_party)) -> Response:
    _known_type(res_type)
    asked = _asked(request, res_type, "search")
    engine = request.app.state.engine
    with engine.connect() as conn:  # a SearchError is answered 400 (hub.errors)
        answer = access.search(conn, engine, caller_of(request, party), res_type,
                               asked.criteria, asked.count, asked.offset, asked.sort,
                               asked.with_total)
    base = _base(request)
    entries = [_entry(base, answer, row, asked.view) for row in answer.rows]
    links = _links(f"{base}/{res_type}", asked, answer, asked.criteria)
    return fhir_response(_bundle("searchset", answer.total, links, entries,
                                 _outcomes(answer, asked)), request=request)


@router.get("/{res_type}/{res_id}")
def read(res_type: str, res_id: str, request: Request,
         party: Party = Depends(bearer_party)) -> Response:
    """One resource, with ``ETag`` and ``Last-Modified``; ``304`` to a conditional read of the
    version the caller has (decided after the sharing rules and the audit, like any read)."""
    _readable_type(res_type)
    asked = _asked(request, res_type, "read")
    engine = request.app.state.engine
    with engine.connect() as conn:
        answer = access.read(conn, engine, caller_of(request, party), res_type, res_id)
    return _one(request, answer, asked.view)


@router.get("/{res_type}/{res_id}/_history/{version}")
def vread(res_type: str, res_id: str, version: str, request: Request,
          party: Party = Depends(bearer_party)) -> Response:
    """One kept version (``410`` when it is a retirement), as ``read`` answers the current one."""
    _readable_type(res_type)
    if not version.isdigit():
        raise NotFound(f"{res_type}/{res_id} has no version {version!r}")
    asked = _asked(request, res_type, "read")
    engine = request.app.state.engine
    with engine.connect() as conn:
        answer = access.history(conn, engine, caller_of(request, party), res_type, res_id,
                                int(version))
    return _one(request, answer, asked.view)


@router.get("/{res_type}/{res_id}/_history")
def history(res_type: str, res_id: str, request: Request,
            party: Party = Depends(bearer_party)) -> Response:
    """The kept versions of one resource, newest first, as a ``history`` Bundle (paged by
    ``_count``/``_offset``)."""
    _readable_type(res_type)
    asked = _asked(request, res_type, "history")
    engine = request.app.state.engine
    with engine.connect() as conn:
        answer = access.history(conn, engine, caller_of(request, party), res_type, res_id)
    rows = answer.rows[asked.offset:asked.offset + asked.count]
    answer.more = asked.offset + asked.count < answer.total
    base = _base(request)
    entries = [_history_entry(base, answer, row, asked.view) for row in rows]
    links = _links(f"{base}/{res_type}/{res_id}/_history", asked, answer, [])
    return fhir_response(_bundle("history", answer.total, links, entries,
                                 _outcomes(answer, asked)), request=request)


def _readable_type(res_type: str) -> None:
    _known_type(res_type)
    if res_type == "AuditEvent":
        raise NotFound("audit events are searched, not read by id: GET /fhir/AuditEvent?...")


def _one(request: Request, answer: access.Answer, view: fhir_results.View) -> Response:
    row = answer.rows[0]
    headers = {"ETag": etag(row), "Last-Modified": format_datetime(
        row.last_updated.astimezone(timezone.utc).replace(microsecond=0), usegmt=True)}
    if not_modified(request.headers, row):
        return Response(status_code=304, headers=headers)
    return fhir_response(_shown(answer, row, view), headers=headers, request=request)


def etag(row) -> str:
    return f'W/"{row.version}"'


def not_modified(headers, row) -> bool:
    """Does the caller already have this version? ``If-None-Match`` (weak comparison, ``*``
    matches any) decides when given; else ``If-Modified-Since`` (second precision, as HTTP
    dates have). An unreadable date is ignored, as RFC 9110 says."""
    if "if-none-match" in headers:
        tags = {t.strip().removeprefix("W/") for t in headers["if-none-match"].split(",")}
        return "*" in tags or f'"{row.version}"' in tags
    try:
        since = parsedate_to_datetime(headers.get("if-modified-since", ""))
    except (TypeError, ValueError):
        return False
    since = since if since.tzinfo else since.replace(tzinfo=timezone.utc)
    return row.last_updated.replace(microsecond=0) <= since


@router.get("/Patient/{patient_id}/$everything")
def everything(patient_id: str, request: Request, party: Party = Depends(bearer_party)) -> Response:
    asked = _asked(request, "Patient", "everything")
    engine = request.app.state.engine
    with engine.connect() as conn:
        answer = access.everything(conn, engine, caller_of(request, party), patient_id)
    base = _base(request)
    entries = [_entry(base, answer, row, asked.view) for row in answer.rows]
    links = [("self", f"{base}/Patient/{patient_id}/$everything")]
    return fhir_response(_bundle("searchset", answer.total, links, entries,
                                 _outcomes(answer, asked)), request=request)


@lru_cache(maxsize=1)
def hospital_names() -> dict[str, str]:
    from settlement.reference import default_reference

    return {h.code: h.name for h in default_reference().hospitals.values()}
