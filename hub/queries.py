"""Raw reads of stored resources. Only ``hub.access`` calls these: every read path passes the gate.

Each function takes ``extra``, SQL conditions on the ``resource`` table that the access layer adds
(which patients, which provinces, which sensitive categories), so what is withheld is left out by
the database and totals and paging stay right.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Integer, and_, bindparam, func, not_, select
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
    withheld: int = 0  # matches ``extra`` held back (counted only when asked)


@dataclass(frozen=True)
class Filter:
    """SQL conditions on ``resource`` that the access layer adds: ``key`` names their structure
    (hashable: statements are kept by it), ``build()`` makes them, with bind parameters whose
    values are ``values``. ``NO_FILTER``: nothing added."""

    key: tuple = ()
    build: Callable[[], list] = list
    values: dict = field(default_factory=dict)


NO_FILTER = Filter()


def _bind_names():
    return (bindparam(f"c{i}") for i in itertools.count())


def _binds(values: list) -> dict:
    return {f"c{i}": v for i, v in enumerate(values)}


class _Kept(dict):
    """Statements built once per shape (SQLAlchemy reuses their compiled form by identity;
    building and keying a statement per request cost more than running it)."""

    def get_or_make(self, key, make):
        found = self.get(key)
        if found is None:
            if len(self) > 4096:  # shapes are few; a bound, not an eviction policy
                self.clear()
            found = self[key] = make()
        return found


_KEPT = _Kept()
_READ_ONE = select(*_COLUMNS, R.c.deleted).where(R.c.res_type == bindparam("t"),
                                                  R.c.res_id == bindparam("i"))


def read_one(conn: Connection, res_type: str, res_id: str):
    """The current version of one resource (deleted ones included, for a 410), or None."""
    return conn.execute(_READ_ONE, {"t": res_type, "i": res_id}).first()


def _plan(res_type: str, params: list[tuple[str, str]]) -> tuple[tuple, list]:
    """A search's criteria as (shape, values): ``patient`` of a clinical type on the column
    (each occurrence an IN of its comma values), the rest as ``search.plan``."""
    own = [raw for n, raw in params if n == "patient" and res_type in search.CLINICAL_TYPES]
    other = [(n, v) for n, v in params if not (n == "patient" and res_type in search.CLINICAL_TYPES)]
    patients = [[v.split("/")[-1] for v in raw.split(",")] for raw in own]
    shape, values = search.plan(res_type, other, driven=bool(own))
    return (tuple(len(p) for p in patients), shape), [v for p in patients for v in p] + values


def _criteria(res_type: str, key: tuple, b) -> list:
    counts, shape = key
    where = [R.c.res_type == res_type, R.c.deleted.is_(False)]
    for n in counts:
        where.append(R.c.patient_id.in_([next(b) for _ in range(n)]))
    return where + search.build(res_type, shape, R, b)


@dataclass(frozen=True)
class _Search:
    count: Any       # matches the filter lets through
    counts: Any      # those and the matches it holds back, in one query
    held: Any        # the matches it holds back
    page: Any        # one page (bind parameters ``limit_``, ``offset_``)


def _search_statements(res_type: str, key: tuple, flt: Filter, sort: tuple) -> _Search:
    def make() -> _Search:
        criteria = _criteria(res_type, key, _bind_names())
        extra = flt.build()
        shown = and_(*extra) if extra else None
        order = search.order_by(res_type, list(sort), R)
        return _Search(
            count=select(func.count()).select_from(R).where(*criteria, *extra),
            counts=(select(func.count().filter(shown), func.count().filter(not_(shown)))
                    .select_from(R).where(*criteria)) if extra else None,
            held=select(func.count()).select_from(R).where(*criteria, not_(shown))
            if extra else None,
            page=select(*_COLUMNS).where(*criteria, *extra).order_by(*order)
            .limit(bindparam("limit_", type_=Integer)).offset(bindparam("offset_", type_=Integer)))
    return _KEPT.get_or_make(("search", res_type, key, flt.key, sort), make)


def search_page(conn: Connection, res_type: str, params: list[tuple[str, str]], count: int,
                offset: int, extra: Filter = NO_FILTER, sort: list[tuple[str, bool]] | None = None,
                with_total: bool = True, withheld: bool = False) -> Page:
    """One page of a search in ``sort`` order (none: newest first by the type's date element)
    and the total. ``count`` 0 runs the count alone; ``with_total`` False skips the count and
    reads one row more to know whether another page follows. ``withheld``: also count the
    matches ``extra`` holds back (``Page.withheld``; with the total, in the same query).
    Raises ``search.SearchError`` for a search the hub cannot run."""
    flt = extra or NO_FILTER
    key, values = _plan(res_type, params)
    stmts = _search_statements(res_type, key, flt, tuple(sort or ()))
    binds = {**_binds(values), **flt.values}
    total, held = None, 0
    if with_total or not count:
        if withheld and stmts.counts is not None:
            total, held = conn.execute(stmts.counts, binds).one()
        else:
            total = conn.execute(stmts.count, binds).scalar_one()
    elif withheld and stmts.held is not None:
        held = conn.execute(stmts.held, binds).scalar_one()
    if not count:
        return Page(total, [], False, held)
    limit = count if with_total else count + 1
    rows = conn.execute(stmts.page, {**binds, "limit_": limit, "offset_": offset}).all()
    if total is None:
        return Page(None, rows[:count], len(rows) > count, held)
    return Page(total, rows, offset + count < total, held)


_OWN = (select(*_COLUMNS).where(R.c.patient_id == bindparam("pid"), R.c.deleted.is_(False))
        .order_by((R.c.res_type != "Patient"), R.c.res_type, R.c.sort_date.desc().nulls_last(),
                  R.c.res_id))
_SHARED = (select(*_COLUMNS).where(R.c.res_type == bindparam("t"),
                                   R.c.res_id.in_(bindparam("ids", expanding=True)),
                                   R.c.deleted.is_(False)).order_by(R.c.res_id))


def patient_resources(conn: Connection, patient_id: str) -> list:
    """Every current resource of one patient (the Patient itself first), then the hospitals and
    practitioners they reference. What the caller may see of them ``hub.access`` sorts out."""
    rows = conn.execute(_OWN, {"pid": patient_id}).all()
    refs: dict[str, set[str]] = {}
    for row in rows:
        for t, i in _SHARED_REF.findall(row.content):
            refs.setdefault(t.decode(), set()).add(i.decode())
    for t, ids in sorted(refs.items()):
        rows += conn.execute(_SHARED, {"t": t, "ids": sorted(ids)}).all()
    return rows


def hidden_ids(conn: Connection, patient_id: str, flt: Filter) -> list:
    """(type, id) of the patient's current resources that ``flt`` holds back."""
    def make():
        return select(R.c.res_type, R.c.res_id).where(
            R.c.patient_id == bindparam("pid_"), R.c.deleted.is_(False), not_(and_(*flt.build())))
    stmt = _KEPT.get_or_make(("hidden", flt.key), make)
    return conn.execute(stmt, {**flt.values, "pid_": patient_id}).all()


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
