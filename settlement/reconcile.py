"""Daily reconciliation (对账, settlement-rules.md section 5, insurer-api.md 3201/3202).

For one day, for every (insured province, treatment province) that had a settlement sent that
day (by ``setl_time``, +08:00): the hub's totals of its settlements that count (settled, not
voided) against the insured platform's (3201); on a difference, the details (3202), turned into
``differences`` for a person to resolve:

- ``missing_at_insurer``: the hub counts it, the platform does not;
- ``unknown_to_hub``: the platform counts it, the hub does not (``hub`` is null, or the hub's
  own state when it has the setl_id but does not count it as settled);
- ``amount_mismatch``: both count it, with other amounts.

A platform that cannot be reached raises ``ReconcileUnavailable`` (a ``PlatformUnavailable``): a
reconciliation is all or nothing, so a partial answer is never taken for a balanced day.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import orjson
from sqlalchemy import select

from .errors import (PlatformError, ReconcileUnavailable)
from .models import Settlement
from .platform import RECON_FIELDS, PlatformClient

ZERO = Decimal("0.00")


def day_rows(engine, day: date) -> list[dict]:
    t = Settlement.__table__
    with engine.connect() as conn:
        rows = conn.execute(select(t.c.setl_id, t.c.insuplc, t.c.mdtrtarea, t.c.state, t.c.split)
                            .where(t.c.setl_date == day.isoformat())).all()
    return [dict(r._mapping) for r in rows]


def amounts(row: dict) -> dict[str, str]:
    split = orjson.loads(row["split"])
    return {f: split[f] for f in RECON_FIELDS}


async def reconcile_pair(platform: PlatformClient, day: date, insuplc: str, mdtrtarea: str,
                         rows: list[dict]) -> list[dict] | None:
    """None when balanced, else the differences of this pair."""
    mine = {r["setl_id"]: amounts(r) for r in rows if r["state"] == "settled"}
    totals = {f: sum((Decimal(a[f]) for a in mine.values()), ZERO) for f in RECON_FIELDS}
    total = await platform.reconcile_total(insuplc, stmt_date=day, mdtrtarea_admvs=mdtrtarea, setl_cnt=len(mine),
                                           **totals)
    if str(total.get("stmt_rslt")) == "0":
        return None
    detail = await platform.reconcile_detail(insuplc, stmt_date=day, mdtrtarea_admvs=mdtrtarea,
                                             settlements=[{"setl_id": s, **a} for s, a in mine.items()])
    return differences(insuplc, mdtrtarea, {r["setl_id"]: r for r in rows}, detail)


def differences(insuplc: str, mdtrtarea: str, rows: dict[str, dict], detail: dict) -> list[dict]:
    """The 3202 output as the interface's differences."""
    base = {"insuplc": insuplc, "mdtrtarea": mdtrtarea}
    out = [{**base, "setl_id": s, "kind": "missing_at_insurer", "hub": amounts(rows[s]), "insurer": None}
           for s in detail.get("missing_at_insurer") or [] if s in rows]
    for item in detail.get("unknown_to_hub") or []:
        hub_row = rows.get(item["setl_id"])
        hub = {"state": hub_row["state"]} if hub_row else None
        out.append({**base, "setl_id": item["setl_id"], "kind": "unknown_to_hub", "hub": hub,
                    "insurer": {"insurer_setl_id": item.get("insurer_setl_id"),
                                **{f: item.get(f) for f in RECON_FIELDS}}})
    for item in detail.get("amount_mismatch") or []:
        hub_row = rows.get(item["setl_id"])
        hub = amounts(hub_row) if hub_row else {}
        theirs = {**hub, **{f: v["insurer"] for f, v in (item.get("fields") or {}).items()}}
        out.append({**base, "setl_id": item["setl_id"], "kind": "amount_mismatch", "hub": hub,
                    "insurer": {"insurer_setl_id": item.get("insurer_setl_id"), **theirs}})
    return out


async def reconcile(engine, platform: PlatformClient, day: date) -> dict:
    """The day's reconciliation over every pair that had settlements."""
    import asyncio

    rows = await asyncio.to_thread(day_rows, engine, day)
    pairs = sorted({(r["insuplc"], r["mdtrtarea"]) for r in rows})
    balanced, diffs = [], []
    for insuplc, mdtrtarea in pairs:
        pair_rows = [r for r in rows if (r["insuplc"], r["mdtrtarea"]) == (insuplc, mdtrtarea)]
        try:
            found = await reconcile_pair(platform, day, insuplc, mdtrtarea, pair_rows)
        except PlatformError as exc:
            raise ReconcileUnavailable(f"{insuplc} platform: {type(exc).__name__}") from None
        if found is None:
            balanced.append({"insuplc": insuplc, "mdtrtarea": mdtrtarea})
        else:
            diffs.extend(found)
    return {"date": day.isoformat(), "balanced": balanced, "differences": diffs}
