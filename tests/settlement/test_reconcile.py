"""Reconciliation (3201, 3202 on a difference) finds injected differences of each kind; the
monthly clearing matches the settlements, voids netted, the diagonal nets to zero and the net
positions sum to zero."""

from __future__ import annotations

import asyncio
from datetime import datetime
from decimal import Decimal

from sqlalchemy import update

from hub.db import writer
from mappers.region import CST, PROVINCES
from settlement.clearing import statement
from settlement.models import Settlement
from settlement.platform import PlatformClient
from tests.support.settlement import EXAMPLE_SPLIT, HUANGPU, LIUYANG, body

SH_SELF = "310104196203150019"  # SH insured, treated in Shanghai: the diagonal


def settle_some(hub) -> dict[str, dict]:
    with hub.client(hub.token("insurer", "SH")) as c:
        out = {"zj1": c.post("/settlement/settle", json=body("R-1")).json(),
               "zj2": c.post("/settlement/settle", json=body("R-2")).json(),
               "ah": c.post("/settlement/settle", json=body("R-3", cert=LIUYANG, insuplc="340104",
                                                            hospital=HUANGPU)).json(),
               "sh": c.post("/settlement/settle", json=body("R-4", cert=SH_SELF, insuplc="310104",
                                                            hospital=HUANGPU)).json()}
        assert c.post(f"/settlement/{out['zj2']['setl_id']}/void").json()["status"] == "voided"
    assert all(a["status"] in ("settled", "voided") for a in out.values())
    return out


def reconcile(hub, day: str) -> dict:
    with hub.client(hub.token("admin")) as c:
        r = c.post("/settlement/reconcile", json={"date": day})
    assert r.status_code == 200, r.text
    return r.json()


def test_balanced_day_then_each_injected_difference_is_found(shub, sims):
    done = settle_some(shub)
    day = datetime.now(CST).date().isoformat()
    first = reconcile(shub, day)
    assert first["differences"] == []
    assert sorted((b["insuplc"], b["mdtrtarea"]) for b in first["balanced"]) == [("AH", "SH"), ("SH", "SH"), ("ZJ", "SH")]

    # amount mismatch: the hub's record of the AH settlement disagrees
    wrong = {**done["ah"]["split"], "acct_pay": "0.01"}
    with writer(shub.engine).begin() as conn:
        conn.execute(update(Settlement).where(Settlement.setl_id == done["ah"]["setl_id"]).values(
            split=__import__("orjson").dumps(wrong).decode()))
    # missing at insurer: ZJ lost its record of a settlement
    sims.lose_settlement("ZJ", done["zj1"]["setl_id"])
    # unknown to hub: ZJ holds a settlement treated in Shanghai that the hub never sent
    asyncio.run(settle_elsewhere(sims))

    found = reconcile(shub, day)
    kinds = {(d["insuplc"], d["setl_id"], d["kind"]) for d in found["differences"]}
    assert kinds == {("AH", done["ah"]["setl_id"], "amount_mismatch"),
                     ("ZJ", done["zj1"]["setl_id"], "missing_at_insurer"),
                     ("ZJ", "ALIEN-1", "unknown_to_hub")}
    mismatch = next(d for d in found["differences"] if d["kind"] == "amount_mismatch")
    assert mismatch["hub"]["acct_pay"] == "0.01" and mismatch["insurer"]["acct_pay"] == done["ah"]["split"]["acct_pay"]
    assert found["balanced"] == [{"insuplc": "SH", "mdtrtarea": "SH"}]


async def settle_elsewhere(sims) -> None:
    async with PlatformClient(sims.urls) as pc:
        version = (await pc.person_info("330421", "02", "33042119850412002X", year=2024))["accum"]["version"]
        await pc.settle("330421", msgid=pc.next_msgid("H31010400007"), mdtrtarea_admvs="310104",
                        fixmedins_code="H31010400007", psn_no="33000012345678", insutype="310", mdtrt_id="X",
                        setl_id="ALIEN-1", setl_time=datetime.now(CST), accum_year=2024, accum_version=version,
                        split={**EXAMPLE_SPLIT, "acct_pay": "0.00", "psn_cash_pay": "9.30"})


def test_clearing_matches_the_settlements_and_nets_to_zero(shub, sims):
    done = settle_some(shub)
    month = datetime.now(CST).strftime("%Y-%m")
    with shub.client(shub.token("admin")) as c:
        r = c.get("/settlement/clearing", params={"month": month})
        assert c.get("/settlement/clearing", params={"month": "2024-13"}).status_code == 422
    with shub.client(shub.token("insurer", "SH")) as c:
        assert c.get("/settlement/clearing", params={"month": month}).status_code == 403
    assert r.status_code == 200
    answer = r.json()
    owed = lambda k: Decimal(done[k]["split"]["hifp_pay"]) + Decimal(done[k]["split"]["acct_pay"])  # noqa: E731
    assert answer["owed"]["ZJ"]["SH"] == f"{owed('zj1'):.2f}"  # the voided zj2 is netted out
    assert answer["owed"]["AH"]["SH"] == f"{owed('ah'):.2f}"
    assert answer["owed"]["SH"]["SH"] == f"{owed('sh'):.2f}" and Decimal(answer["owed"]["SH"]["SH"]) > 0
    assert answer["net"]["SH"] == f"{owed('zj1') + owed('ah'):.2f}"
    assert answer["net"]["ZJ"] == f"{-owed('zj1'):.2f}"
    assert sum(Decimal(v) for v in answer["net"].values()) == 0
    assert set(answer["owed"]) == set(PROVINCES) and all(set(row) == set(PROVINCES) for row in answer["owed"].values())


def test_statement_diagonal_nets_to_zero():
    rows = [{"insuplc": "JS", "mdtrtarea": "JS", "hifp_pay": "10.05", "acct_pay": "1.00"},
            {"insuplc": "AH", "mdtrtarea": "JS", "hifp_pay": "3.33", "acct_pay": "0.00"}]
    result = statement(rows)
    assert result["owed"]["JS"]["JS"] == "11.05"
    assert result["net"] == {"SH": "0.00", "JS": "3.33", "ZJ": "0.00", "AH": "-3.33"}
