"""Raw reads of stored resources. Only ``hub.access`` calls these: every read path passes the gate.

Each function takes ``extra``, SQL conditions on the ``resource`` table that the access layer adds
(which patients, which provinces, which sensitive categories), so what is withheld is left out by
the database and totals and paging stay right.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from hub import search
from hub.models import Resource

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


def search_page(conn: Connection, res_type: str, params: list[tuple[str, str]], count: int,
                offset: int, extra: list) -> Page:
    """One page of a search, newest first by the type's date element, and the total."""
    where = [R.c.res_type == res_type, R.c.deleted.is_(False), *extra]
    for name, raw in params:
        if name == "patient" and res_type in search.CLINICAL_TYPES:
            where.append(R.c.patient_id.in_([v.split("/")[-1] for v in raw.split(",")]))
    other = [(n, v) for n, v in params if not (n == "patient" and res_type in search.CLINICAL_TYPES)]
    where += search.conditions(res_type, other, R)
    total = conn.execute(select(func.count()).select_from(R).where(*where)).scalar_one()
    rows = conn.execute(select(*_COLUMNS).where(*where)
                        .order_by(R.c.sort_date.desc().nulls_last(), R.c.res_id)
                        .limit(count).offset(offset)).all() if count else []
    return Page(total, rows)


def patient_resources(conn: Connection, patient_id: str, extra: list) -> list:
    """Every current resource of one patient (the Patient itself first), then the hospitals and
    practitioners they reference."""
    rows = conn.execute(select(*_COLUMNS).where(
        R.c.patient_id == patient_id, R.c.deleted.is_(False), *extra)
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


def count_withheld(conn: Connection, where: list, extra: list) -> int:
    """How many resources ``where`` matches that ``extra`` holds back (0: nothing withheld)."""
    if not extra:
        return 0
    from sqlalchemy import and_, not_

    return conn.execute(select(func.count()).select_from(R)
                        .where(*where, not_(and_(*extra)))).scalar_one()
