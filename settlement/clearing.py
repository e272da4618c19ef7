"""Monthly clearing (清算, settlement-rules.md section 5): what each insured province owes each
treatment province, and each province's net position.

A settlement counts in the month of its ``setl_time`` (+08:00) and not at all once voided (voids
are netted by leaving them out; a settlement the hub reversed or that was refused never counts).
It owes Σ ``hifp_pay`` + Σ ``acct_pay``. ``net`` = receivable (owed to the province as treatment
place) minus payable (owed by it as insured place): a settlement within one province is on the
diagonal and nets to zero, and the nets of all provinces sum to zero.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from decimal import Decimal

import orjson
from sqlalchemy import select

from mappers.region import PROVINCES, money_text

from .models import Settlement

ZERO = Decimal("0.00")
MONTH_RE = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


def statement(settlements: Iterable[Mapping[str, str]]) -> dict[str, dict]:
    """The 4x4 ``owed`` matrix and ``net`` from settlements that count (each ``insuplc``,
    ``mdtrtarea``, ``hifp_pay``, ``acct_pay``), money as two-place strings."""
    owed = {p: {q: ZERO for q in PROVINCES} for p in PROVINCES}
    for s in settlements:
        owed[s["insuplc"]][s["mdtrtarea"]] += Decimal(s["hifp_pay"]) + Decimal(s["acct_pay"])
    net = {p: sum((owed[q][p] for q in PROVINCES), ZERO) - sum(owed[p].values(), ZERO) for p in PROVINCES}
    return {"owed": {p: {q: money_text(v) for q, v in row.items()} for p, row in owed.items()},
            "net": {p: money_text(v) for p, v in net.items()}}


def counting(engine, month: str) -> list[dict[str, str]]:
    """The settlements that count in ``month`` (``YYYY-MM``): settled, not voided."""
    t = Settlement.__table__
    with engine.connect() as conn:
        rows = conn.execute(select(t.c.insuplc, t.c.mdtrtarea, t.c.split).where(
            t.c.state == "settled", t.c.setl_date.like(f"{month}-%"))).all()
    out = []
    for row in rows:
        split = orjson.loads(row.split)
        out.append({"insuplc": row.insuplc, "mdtrtarea": row.mdtrtarea, "hifp_pay": split["hifp_pay"],
                    "acct_pay": split["acct_pay"]})
    return out


def clearing(engine, month: str) -> dict:
    """The month's statement; ValueError when ``month`` is not ``YYYY-MM``."""
    if not isinstance(month, str) or not MONTH_RE.match(month):
        raise ValueError("month must be YYYY-MM")
    return {"month": month, **statement(counting(engine, month))}
