"""Who is calling: bearer tokens per party (hospital, insurance platform, administrator).

Tokens are random, shown once when created, and stored only as their SHA-256. A request without a
token, or with one the hub does not know (or has revoked), is 401. What a party may do is decided
by the routes (ingest: only its own hospital) and by ``hub.access`` (reads).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from fastapi import Request
from starlette.concurrency import run_in_threadpool
from sqlalchemy import insert, select
from sqlalchemy.engine import Engine

from hub.errors import Forbidden, Unauthenticated
from hub.models import ApiToken

KINDS = ("hospital", "insurer", "admin")


@dataclass(frozen=True)
class Party:
    kind: str  # hospital | insurer | admin | patient
    code: str | None = None  # hospital code, province code, or the patient's id

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.code}" if self.code else self.kind


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(engine: Engine, kind: str, subject: str | None) -> str:
    """A new token for a party; only its hash is stored. Returns the token (shown once)."""
    if kind not in KINDS:
        raise ValueError(f"unknown party kind {kind!r}")
    token = "yrd_" + secrets.token_urlsafe(32)
    with engine.begin() as conn:
        conn.execute(insert(ApiToken), [{"token_hash": hash_token(token), "kind": kind,
                                         "subject": subject, "created": datetime.now(timezone.utc),
                                         "revoked": False}])
    return token


def lookup(engine: Engine, token: str) -> Party | None:
    with engine.connect() as conn:
        row = conn.execute(select(ApiToken.kind, ApiToken.subject, ApiToken.revoked)
                           .where(ApiToken.token_hash == hash_token(token))).first()
    if row is None or row.revoked:
        return None
    return Party(row.kind, row.subject)


# Known tokens, by hash, for a short while: a look-up per request would send every request
# through a thread for the database. A revoked token stops working within CACHE_SECONDS.
CACHE_SECONDS = 30.0
_cache: dict[tuple[int, str], tuple[float, Party]] = {}


async def bearer_party(request: Request) -> Party:
    """FastAPI dependency: the party behind ``Authorization: Bearer``; 401 otherwise."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("a bearer token is required")
    engine = request.app.state.engine
    key = (id(engine), hash_token(token.strip()))
    cached = _cache.get(key)
    if cached is not None and cached[0] > time.monotonic():
        party = cached[1]
    else:
        party = await run_in_threadpool(lookup, engine, token.strip())
        if party is None:
            raise Unauthenticated("unknown or revoked token")
        if len(_cache) > 10000:
            _cache.clear()
        _cache[key] = (time.monotonic() + CACHE_SECONDS, party)
    request.state.party = party
    return party


def require_hospital(party: Party) -> str:
    """The hospital code of a hospital party; anyone else is 403."""
    if party.kind != "hospital" or not party.code:
        raise Forbidden("only a hospital may send records")
    return party.code


def require_admin(party: Party) -> None:
    if party.kind != "admin":
        raise Forbidden("only an administrator may do this")
