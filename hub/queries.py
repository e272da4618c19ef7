"""Raw reads of stored resources. Only ``hub.access`` calls these: every read path passes the gate.

Each function takes ``extra``, SQL conditions on the ``resource`` table that the access layer adds
(which patients, which provinces, which sensitive categories), so what is withheld is left out by
the database and totals and paging stay right.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import SimpleNamespace

from sqlalchemy import and_, func, not_, select
from sqlalchemy.engine import Connection

from hub import search
from hub.models import AuditRecord, Resource, ResourceHistory

R = Resource.__table__
_COLUMNS = (R.c.res_type, R.c.res_id, R.c.version, R.c.last_updated, R.c.content, R.c.patient_id,
            R.c.province, R.c.sensitive, R.c.hospital)
_SHARED_REF = re.compile(rb'"reference":"(Organization|Practitioner)/([A-Za-z0-9.\-]{1,64})"')


@dataclass
class Page:
    total: int | None  # None when the caller asked for no total (``_total=none``)
    rows: list
    more: bool = False  # rows follow this page


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
                offset: int, extra: list, sort: list[tuple[str, bool]] | None = None,
                with_total: bool = True) -> Page:
    """One page of a search in ``sort`` order (none: newest first by the type's date element)
    and the total. ``count`` 0 runs the count alone; ``with_total`` False skips the count and
    reads one row more to know whether another page follows."""
    where = _criteria(res_type, params) + list(extra)
    order = search.order_by(res_type, sort or [], R)
    total = conn.execute(select(func.count()).select_from(R).where(*where)).scalar_one() \
        if with_total or not count else None
    if not count:
        return Page(total, [], False)
    limit = count if with_total else count + 1
    rows = conn.execute(select(*_COLUMNS).where(*where).order_by(*order)
                        .limit(limit).offset(offset)).all()
    if total is None:
        return Page(None, rows[:count], len(rows) > count)
    return Page(total, rows, offset + count < total)


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


def audit_page(conn: Connection, params: list[tuple[str, str]], count: int, offset: int,
               sort: list[tuple[str, bool]] | None = None) -> Page:
    """Audit rows by ``patient``, ``date`` (with prefixes) and ``outcome``; newest first, or
    oldest first for ``_sort=date``."""
    A = AuditRecord.__table__
    where = []
    for name, raw in params:
        if name == "patient":
            where.append(A.c.patient_id == raw.split("/")[-1])
        elif name == "date":
            where.append(search.instant_condition(A.c.recorded, raw))
        elif name == "outcome":
            where.append(A.c.outcome == {"0": "allowed", "4": "refused"}.get(raw, raw))
        elif name == "agent":
            where.append(A.c.party_code == raw.split("|")[-1])
        else:
            raise search.SearchError(f"unknown search parameter {name!r} for AuditEvent")
    total = conn.execute(select(func.count()).select_from(A).where(*where)).scalar_one()
    order = [A.c.recorded, A.c.id] if sort and not sort[0][1] else \
        [A.c.recorded.desc(), A.c.id.desc()]
    rows = conn.execute(select(A).where(*where).order_by(*order)
                        .limit(count).offset(offset)).all()
    return Page(total, rows, offset + count < total)


def versions(conn: Connection, res_type: str, res_id: str) -> list:
    """Every kept version of one resource, newest first: the current row, then
    ``resource_history``'s. An earlier version carries the current row's patient, hospital and
    province (they never change for one resource) and ``sensitive`` None: what its own content
    says is for ``hub.access`` to judge."""
    H = ResourceHistory.__table__
    current = conn.execute(select(*_COLUMNS, R.c.deleted)
                           .where(R.c.res_type == res_type, R.c.res_id == res_id)).first()
    if current is None:
        return []
    earlier = conn.execute(select(H.c.res_type, H.c.res_id, H.c.version, H.c.last_updated,
                                  H.c.content, H.c.deleted)
                           .where(H.c.res_type == res_type, H.c.res_id == res_id)
                           .order_by(H.c.version.desc())).all()
    same = {"patient_id": current.patient_id, "province": current.province,
            "hospital": current.hospital, "sensitive": None}
    return [current] + [SimpleNamespace(**row._asdict(), **same) for row in earlier]
