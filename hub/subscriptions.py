"""``/fhir/Subscription``: a treating hospital asks to be told when a patient's records of one
type change (hub-interface.md, "Hospitals: notifications"); ``hub.notify`` decides and delivers.

- **Create** (``POST``, a hospital's token; another party is 403): the body must be an R4
  ``Subscription`` (``fhir.resources``; else 422 naming the element), ``criteria``
  ``<type>?patient=<id>`` for a type of the lookup table, ``channel.type`` ``rest-hook``, no
  ``channel.payload``, each ``channel.header`` ``Name: value`` (none of the headers the hub sets
  itself). Then the treating rule (``hub.access.decide``, no emergency override: 403), then the
  endpoint, which must be registered for this hospital in ``YRDHUB_HOOK_ENDPOINTS`` (422).
  Answers 201 with the Subscription, ``status`` ``active`` (a ``requested`` one is made active).
  ``end``, if given, ends it (``off``) once passed.
- **Read, list, delete**: a hospital sees and deletes only its own (another's is 403, an unknown
  id 404); an administrator sees all. Before showing, lapsed ones are turned ``off``
  (``notify.sweep_lapsed``). ``DELETE`` removes it and its pending notifications (204).
- ``GET /admin/subscriptions?status=error``: the administrators' view (no headers in it).
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timezone
from types import SimpleNamespace

import orjson
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete, func, insert, select
from sqlalchemy.engine import Connection
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from hub import access, api_models, notify, store
from hub.auth import Party, bearer_party, require_admin
from hub.db import writer
from hub.errors import FHIR_JSON, BadRequest, Forbidden, NotFound, Unprocessable
from hub.models import Notification, Subscription

router = APIRouter(prefix="/fhir/Subscription")
admin_router = APIRouter(prefix="/admin")
S = Subscription.__table__
N = Notification.__table__
STATUSES = ("active", "off", "error")
R4_STATUSES = ("requested", "active", "error", "off")
CRITERIA = re.compile(r"^(?P<type>[A-Za-z]+)\?patient=(?:Patient/)?(?P<pid>[A-Za-z0-9\-.]{1,64})$")
HEADER = re.compile(r"^(?P<name>[!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*(?P<value>[^\r\n]*)$")
# set by the hub on every notification, or by HTTP itself
RESERVED_HEADERS = frozenset({notify.EVENT_HEADER.lower(), "host", "content-length",
                              "transfer-encoding", "connection"})
FHIR_ANSWER = {"content": {FHIR_JSON: {}}}


def _fhir(body: dict, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers=headers, media_type=FHIR_JSON)


# ---------------------------------------------------------------------------------------------
# Creating one
# ---------------------------------------------------------------------------------------------


def parse(body: bytes) -> tuple[dict, str, str]:
    """The Subscription a hospital sent, its type and patient; 400 when not JSON, 422 saying
    which element is wrong and why."""
    try:
        resource = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from None
    if not isinstance(resource, dict) or resource.get("resourceType") != "Subscription":
        raise Unprocessable("the body must be a FHIR R4 Subscription", code="NOT_SUBSCRIPTION")
    _valid_r4(resource)
    if resource["status"] not in R4_STATUSES:  # a required binding fhir.resources leaves open
        raise Unprocessable(f"Subscription.status must be one of {', '.join(R4_STATUSES)}",
                            code="INVALID_SUBSCRIPTION")
    match = CRITERIA.match(resource["criteria"])
    if match is None or match["type"] not in notify.SUBSCRIBABLE:
        raise Unprocessable(f"Subscription.criteria must be <type>?patient=<Patient id> for one "
                            f"of {', '.join(sorted(notify.SUBSCRIBABLE))}", code="CRITERIA")
    _check_channel(resource["channel"])
    return resource, match["type"], match["pid"]


def _valid_r4(resource: dict) -> None:
    """422 naming the first element that is not R4 (``fhir.resources``' R4 model, which also
    holds R4's required elements: ``status``, ``reason``, ``criteria``, ``channel.type``)."""
    from fhir.resources.R4B import get_fhir_model_class
    from pydantic import ValidationError

    try:
        get_fhir_model_class("Subscription").model_validate(resource)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error.get("loc", ()))
        raise Unprocessable(f"Subscription.{where}: {error.get('msg')}",
                            code="INVALID_SUBSCRIPTION") from None


def _check_channel(channel: dict) -> None:
    if channel.get("type") != "rest-hook":
        raise Unprocessable("Subscription.channel.type must be rest-hook", code="CHANNEL")
    if "payload" in channel:
        raise Unprocessable("Subscription.channel.payload is not supported: notifications carry "
                            "no body (search for what changed)", code="CHANNEL")
    if not channel.get("endpoint"):
        raise Unprocessable("Subscription.channel.endpoint is required", code="CHANNEL")
    for i, header in enumerate(channel.get("header", [])):
        match = HEADER.match(header)
        if match is None or match["name"].lower() in RESERVED_HEADERS:
            # the value may be a secret: name the position, not the text
            raise Unprocessable(f"Subscription.channel.header[{i}] must be 'Name: value', and "
                                f"not one of the headers the hub sets", code="CHANNEL")


def subscribe(engine, settings, party: Party, body: bytes) -> dict:
    """Check and store a new Subscription (see the module's docstring); the answer's body."""
    if party.kind != "hospital" or not party.code:
        raise Forbidden("only a hospital subscribes to a patient's records")
    resource, res_type, patient_id = parse(body)
    now = datetime.now(timezone.utc)
    with writer(engine).begin() as conn:
        if not access.decide(conn, access.Caller(party), patient_id, now).allowed:
            raise Forbidden("no encounter with this patient in the last 30 days: a hospital "
                            "subscribes only while treating the patient")
        endpoint = resource["channel"]["endpoint"]
        if settings.hook_endpoint_map().get(endpoint) != party.code:
            raise Unprocessable(f"Subscription.channel.endpoint {endpoint} is not registered for "
                                f"{party.code} (YRDHUB_HOOK_ENDPOINTS)", code="ENDPOINT")
        row = _new_row(resource, party.code, res_type, patient_id, now)
        conn.execute(insert(S), [row])
    return shown(SimpleNamespace(**row))


def _new_row(resource: dict, hospital: str, res_type: str, patient_id: str,
             now: datetime) -> dict:
    kept = {k: v for k, v in resource.items() if k not in ("id", "meta", "status", "error")}
    ends = resource.get("end")
    return {"id": uuid.uuid4().hex, "hospital": hospital, "patient_id": patient_id,
            "res_type": res_type, "endpoint": resource["channel"]["endpoint"],
            "status": "active", "error": None, "created": now,
            "ends_at": datetime.fromisoformat(ends.replace("Z", "+00:00")) if ends else None,
            "content": store.dumps(kept)}


# ---------------------------------------------------------------------------------------------
# Showing
# ---------------------------------------------------------------------------------------------


def shown(sub) -> dict:
    """The FHIR Subscription: what the hospital sent, with the hub's id, status and error."""
    resource = {"resourceType": "Subscription", "id": sub.id,
                "meta": {"lastUpdated": store.instant(notify.as_utc(sub.created))},
                **orjson.loads(sub.content), "status": sub.status}
    if sub.error:
        resource["error"] = sub.error
    return resource


def _own(conn: Connection, party: Party, subscription_id: str):
    """The Subscription ``subscription_id`` if ``party`` may see it: 404 unknown, 403 another
    hospital's (an insurer's token sees none)."""
    if party.kind not in ("hospital", "admin"):
        raise Forbidden("only hospitals and administrators see Subscriptions")
    sub = conn.execute(select(S).where(S.c.id == subscription_id)).first()
    if sub is None:
        raise NotFound(f"Subscription/{subscription_id} is not known")
    if party.kind == "hospital" and sub.hospital != party.code:
        raise Forbidden(f"Subscription/{subscription_id} is another hospital's")
    return sub


def read_one(engine, party: Party, subscription_id: str) -> dict:
    with writer(engine).begin() as conn:
        _own(conn, party, subscription_id)
        notify.sweep_lapsed(conn, datetime.now(timezone.utc), subscription_id=subscription_id)
        return shown(conn.execute(select(S).where(S.c.id == subscription_id)).one())


def list_own(engine, party: Party) -> list[dict]:
    """A hospital's Subscriptions (an administrator's: all), newest first."""
    if party.kind not in ("hospital", "admin"):
        raise Forbidden("only hospitals and administrators see Subscriptions")
    hospital = party.code if party.kind == "hospital" else None
    query = select(S).order_by(S.c.created.desc(), S.c.id)
    if hospital is not None:
        query = query.where(S.c.hospital == hospital)
    with writer(engine).begin() as conn:
        notify.sweep_lapsed(conn, datetime.now(timezone.utc), hospital=hospital)
        return [shown(row) for row in conn.execute(query)]


def remove(engine, party: Party, subscription_id: str) -> None:
    with writer(engine).begin() as conn:
        _own(conn, party, subscription_id)
        conn.execute(delete(N).where(N.c.subscription_id == subscription_id))
        conn.execute(delete(S).where(S.c.id == subscription_id))


# ---------------------------------------------------------------------------------------------
# Routes
# ---------------------------------------------------------------------------------------------


@router.post("", status_code=201, responses={201: {**FHIR_ANSWER, "description":
                                                  "the Subscription, status active"}})
async def create(request: Request, party: Party = Depends(bearer_party)) -> Response:
    body = await request.body()
    app = request.app
    resource = await run_in_threadpool(subscribe, app.state.engine, app.state.settings, party,
                                       body)
    location = f"{str(request.base_url).rstrip('/')}/fhir/Subscription/{resource['id']}"
    return _fhir(resource, 201, {"Location": location})


@router.get("", responses={200: {**FHIR_ANSWER, "description": "a searchset Bundle"}})
async def search(request: Request, party: Party = Depends(bearer_party)) -> Response:
    """The caller's own Subscriptions (an administrator's: all), newest first, in one Bundle;
    no search parameters are taken (400, as for any parameter ``/fhir`` does not know)."""
    if request.query_params:
        raise BadRequest(f"GET /fhir/Subscription takes no parameters (got "
                         f"{', '.join(sorted(request.query_params))}); it lists your own")
    resources = await run_in_threadpool(list_own, request.app.state.engine, party)
    base = f"{str(request.base_url).rstrip('/')}/fhir/Subscription"
    bundle = {"resourceType": "Bundle", "type": "searchset", "total": len(resources),
              "link": [{"relation": "self", "url": base}]}
    if resources:
        bundle["entry"] = [{"fullUrl": f"{base}/{r['id']}", "resource": r,
                            "search": {"mode": "match"}} for r in resources]
    return _fhir(bundle)


@router.get("/{subscription_id}", responses={200: {**FHIR_ANSWER, "description":
                                                   "the Subscription"}})
async def read(subscription_id: str, request: Request,
               party: Party = Depends(bearer_party)) -> Response:
    return _fhir(await run_in_threadpool(read_one, request.app.state.engine, party,
                                         subscription_id))


@router.delete("/{subscription_id}", status_code=204, responses={204: {"description": "ended"}})
async def delete_one(subscription_id: str, request: Request,
                     party: Party = Depends(bearer_party)) -> Response:
    await run_in_threadpool(remove, request.app.state.engine, party, subscription_id)
    return Response(status_code=204)


class SubscriptionListing(BaseModel):
    """One Subscription in the administrators' view (its headers are not shown)."""

    model_config = ConfigDict(extra="forbid")
    id: str
    hospital: str = Field(examples=["H31010100001"])
    criteria: str = Field(examples=["Observation?patient=<id>"])
    endpoint: str
    status: str = Field(examples=list(STATUSES))
    error: str | None = Field(description="why it is in error")
    created: str = Field(description="ISO 8601 with offset")
    pending: int = Field(description="notifications waiting in the outbox")


class SubscriptionListings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    subscriptions: list[SubscriptionListing]


def admin_listing(engine, status: str | None) -> dict:
    query = select(S.c.id, S.c.hospital, S.c.content, S.c.endpoint, S.c.status, S.c.error,
                   S.c.created).order_by(S.c.created.desc())
    if status is not None:
        query = query.where(S.c.status == status)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
        counts = dict(conn.execute(select(N.c.subscription_id, func.count())
                                   .group_by(N.c.subscription_id)).all())
    return {"subscriptions": [
        {"id": r.id, "hospital": r.hospital, "criteria": orjson.loads(r.content)["criteria"],
         "endpoint": r.endpoint, "status": r.status, "error": r.error,
         "created": notify.as_utc(r.created).isoformat(), "pending": counts.get(r.id, 0)}
        for r in rows]}


@admin_router.get("/subscriptions", responses=api_models.answers(SubscriptionListings, 403, 422))
async def admin_subscriptions(request: Request, status: str | None = Query(None),
                              party: Party = Depends(bearer_party)) -> Response:
    """Every hospital's Subscriptions, newest first; ``status=error`` those that failed."""
    require_admin(party)
    if status is not None and status not in STATUSES:
        raise Unprocessable(f"status must be one of {', '.join(STATUSES)}", code="STATUS")
    body = await run_in_threadpool(admin_listing, request.app.state.engine, status)
    return Response(orjson.dumps(body), media_type="application/json")
