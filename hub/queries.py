"""Raw reads of stored resources. Only ``hub.access`` calls these: every read path passes the gate.

Each function takes ``extra``, SQL conditions on the ``resource`` table that the access layer adds
(which patients, which provinces, which sensitive categories), so what is withheld is left out by
the database and totals and paging stay right.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import and_, func, not_, select
from sqlalchemy.engine import Connection

from hub import search
from hub.models import AuditRecord, Resource

R = Resource.__table__
_COLUMNS = (R.c.res_type, R.c.res_id, R.c.version, R.c.last_updated, R.c.content, R.c.patient_id,
            R.c.province, R.c.sensitive, R.c.hospital)
_SHARED_REF = re.compile(rb'"reference":"(Organization|Practitioner)/([A-Za-z0-9.\-]{1,64})"')


@dataclass
class Page:
    total: int
    rows: list


def read_one(conn: Connection, res_type: str, res_id: str):
    """The current version of one resource (deleted ones included, for a 410), or None."""
    return conn.execute(select(*_COLUMNS, R.c.deleted)
                        .where(R.c.res_type == res_type, R.c.res_id == res_id)).first()


def _criteria(res_type: str, params: list[tuple[str, str]]) -> list:
    where = [R.c.res_type == res_type, R.c.deleted.is_(False)]
    for name, raw in params:
        if name == "patient" and res_type in search.CLINICAL_TYPES:
            where.append(R.c.patient_id.in_([v.split("/")[-1] for v in raw.split(",")]))
    other = [(n, v) for n, v in params if not (n == "patient" and res_type in search.CLINICAL_TYPES)]
    return where + search.conditions(res_type, other, R)


def search_page(conn: Connection, res_type: str, params: list[tuple[str, str]], count: int,
                offset: int, extra: list) -> Page:
    """One page of a search, newest first by the type's date element, and the total."""
    where = _criteria(res_type, params) + list(extra)
    total = conn.execute(select(func.count()).select_from(R).where(*where)).scalar_one()
    rows = conn.execute(select(*_COLUMNS).where(*where)
                        .order_by(R.c.sort_date.desc().nulls_last(), R.c.res_id)
                        .limit(count).offset(offset)).all() if count else []
    return Page(total, rows)


def patient_resources(conn: Connection, patient_id: str) -> list:
    """Every current resource of one patient (the Patient itself first), then the hospitals and
    practitioners they reference. What the caller may see of them ``hub.access`` sorts out."""
    rows = conn.execute(select(*_COLUMNS).where(
        R.c.patient_id == patient_id, R.c.deleted.is_(False))
        .order_by((R.c.res_type != "Patient"), R.c.res_type, R.c.sort_date.desc().nulls_last(),
                  R.c.res_id)).all()
    refs: dict[str, set[str]] = {}
    for row in rows:
        for t, i in _SHARED_REF.findall(row.content):
            refs.setdefault(t.decode(), set()).add(i.decode())
    for t, ids in sorted(refs.items()):
        rows += conn.execute(select(*_COLUMNS).where(R.c.res_type == t, R.c.res_id.in_(ids),
                                                     R.c.deleted.is_(False))
                             .order_by(R.c.res_id)).all()
    return rows


def count_withheld(conn: Connection, res_type: str, params: list[tuple[str, str]],
                   extra: list) -> int:
    """How many resources the search matches that ``extra`` holds back (0: nothing withheld)."""
    if not extra:
        return 0
    return conn.execute(select(func.count()).select_from(R).where(
        *_criteria(res_type, params), not_(and_(*extra)))).scalar_one()


def audit_page(conn: Connection, params: list[tuple[str, str]], count: int, offset: int) -> Page:
    """Audit rows, newest first, by ``patient``, ``date`` (with prefixes) and ``outcome``."""
    A = AuditRecord.__table__
    where = []
    for name, raw in params:
        if name == "patient":
            where.append(A.c.patient_id == raw.split("/")[-1])
        elif name == "date":
            where.append(_audit_date(A, raw))
        elif name == "outcome":
            where.append(A.c.outcome == {"0": "allowed", "4": "refused"}.get(raw, raw))
        elif name == "agent":
            where.append(A.c.party_code == raw.split("|")[-1])
        else:
            raise search.SearchError(f"unknown search parameter {name!r} for AuditEvent")
    total = conn.execute(select(func.count()).select_from(A).where(*where)).scalar_one()
    rows = conn.execute(select(A).where(*where).order_by(A.c.recorded.desc(), A.c.id.desc())
                        .limit(count).offset(offset)).all()
    return Page(total, rows)


def _audit_date(A, raw: str):
    from datetime import datetime

    prefix, text = ("eq", raw) if raw[:2].isdigit() else (raw[:2], raw[2:])
    lo, hi = (datetime.fromisoformat(v + "+00:00") for v in search.date_range(text))
    return {"eq": and_(A.c.recorded >= lo, A.c.recorded < hi), "ge": A.c.recorded >= lo,
            "gt": A.c.recorded >= hi, "le": A.c.recorded < hi, "lt": A.c.recorded < lo
            }.get(prefix, and_(A.c.recorded >= lo, A.c.recorded < hi))
