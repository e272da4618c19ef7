"""The settlement service over real sockets: the platforms (the simulator and the provinces'
sandbox, real HTTP servers) and a hub served by uvicorn, called as the treatment province's
platform would call it."""
from __future__ import annotations

from decimal import Decimal

import pytest

from settlement.service import Options
from tests.support.settlement import (EXAMPLE_SPLIT, FAST, HUANGPU, LIUYANG, LISI, QINGPU, WUJIANG, XIHU,  # noqa: F401
                                      body, poll, row_of, start_hub, stop_hub)
from tests.support.waiting import wait_until


def test_settle_answers_the_interface_example_exactly(shub, sims):
    with shub.client(shub.token("insurer", "SH")) as c:
        r = c.post("/settlement/settle", json=body("K-1"))
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["status"] == "settled" and answer["refusal"] is None
    assert answer["split"] == EXAMPLE_SPLIT
    [entry] = sims.settlements("ZJ", answer["setl_id"])
    assert entry["insurer_setl_id"] == answer["insurer_setl_id"] and entry["commit_no"] == 1
    assert entry["hifp_pay"] == "27.90" and entry["acct_pay"] == "9.30"


def test_presettle_computes_and_commits_nothing(shub, sims):
    with shub.client(shub.token("insurer", "SH")) as c:
        r = c.post("/settlement/presettle", json=body("K-2"))
    assert r.status_code == 200
    assert r.json()["status"] == "computed" and r.json()["split"] == EXAMPLE_SPLIT
    assert sims.settlements("ZJ") == [] and sims.received("ZJ", "2207") == []


def test_presettle_without_platform_is_503(shub, sims):
    sims.set_faults("ZJ", maintenance=True, retry_after=30)
    with shub.client(shub.token("insurer", "SH")) as c:
        r = c.post("/settlement/presettle", json=body("K-3"))
    assert r.status_code == 503 and r.json()["error"]["code"] == "PLATFORM_UNAVAILABLE"


@pytest.mark.parametrize("cert,insuplc,hospital,token,code", [
    ("330106198504120089", "310106", XIHU, "ZJ", "NOT_FILED"),  # SH insured, ZJ hospital, no filing
    ("310115198811200030", "310115", XIHU, "ZJ", "NOT_ACTIVE"),  # suspended
    ("110101199003070038", "330106", QINGPU, "SH", "PERSON_NOT_FOUND"),
])
def test_refusals_are_final_and_send_no_2207(shub, sims, cert, insuplc, hospital, token, code):
    with shub.client(shub.token("insurer", token)) as c:
        r = c.post("/settlement/settle", json=body("K-R", cert=cert, insuplc=insuplc, hospital=hospital))
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "refused" and r.json()["refusal"]["code"] == code
        assert cert not in r.text or code == "PERSON_NOT_FOUND" and cert not in r.json()["refusal"]["message"]
        assert c.get(f"/settlement/{r.json()['setl_id']}").json()["status"] == "refused"
    assert all(sims.received(p, "2207") == [] for p in sims.urls)


@pytest.mark.parametrize("over,code", [
    ({"lines": [{"med_list_codg": "XJ01CAA040A001", "cnt": "2", "pric": "18.60", "det_item_fee_sumamt": "37.21"}]},
     "LINE_AMOUNT_MISMATCH"),
    ({"fixmedins_code": "H31099900001"}, "UNKNOWN_HOSPITAL"),
    ({"lines": []}, "NO_LINES"),
])
def test_invalid_requests_are_422(shub, sims, over, code):
    with shub.client(shub.token("insurer", "SH")) as c:
        for path in ("/settlement/presettle", "/settlement/settle"):
            r = c.post(path, json=body("K-I", **over))
            assert r.status_code == 422 and r.json()["error"]["code"] == code
    assert all(sims.received(p) == [] for p in sims.urls)


def test_only_the_treatment_province_may_call(shub, sims):
    for kind, subject in (("insurer", "ZJ"), ("hospital", QINGPU)):
        with shub.client(shub.token(kind, subject)) as c:
            assert c.post("/settlement/settle", json=body("K-F")).status_code == 403
    with shub.client(shub.token("insurer", "SH")) as c:
        setl_id = c.post("/settlement/settle", json=body("K-F")).json()["setl_id"]
    with shub.client(shub.token("insurer", "JS")) as c:
        assert c.get(f"/settlement/{setl_id}").status_code == 403
        assert c.post(f"/settlement/{setl_id}/void").status_code == 403
    with shub.client() as c:
        assert c.post("/settlement/settle", json=body("K-F")).status_code == 401


def test_same_request_key_returns_the_first_settlement(shub, sims):
    with shub.client(shub.token("insurer", "SH")) as c:
        first = c.post("/settlement/settle", json=body("K-4")).json()
        again = c.post("/settlement/settle", json=body("K-4"))
        other = c.post("/settlement/settle", json=body("K-4", mdtrt_id="MZ-OTHER"))
    assert again.status_code == 200 and again.json() == first
    assert other.status_code == 409 and other.json()["error"]["code"] == "REQUEST_KEY_REUSED"
    assert len(sims.settlements("ZJ")) == 1


def test_void_gives_the_totals_back(shub, sims):
    with shub.client(shub.token("insurer", "SH")) as c:
        setl_id = c.post("/settlement/settle", json=body("K-5")).json()["setl_id"]
        before = sims.person("ZJ", LISI)
        r = c.post(f"/settlement/{setl_id}/void")
        assert r.status_code == 200 and r.json()["status"] == "voided"
        assert c.post(f"/settlement/{setl_id}/void").json()["status"] == "voided"
        assert c.get(f"/settlement/{setl_id}").json()["status"] == "voided"
    [entry] = sims.settlements("ZJ", setl_id)
    assert entry["status"] == "voided"
    after = sims.person("ZJ", LISI)
    assert after["insuinfo"][0]["balc"] == before["insuinfo"][0]["balc"] + entry_amount(entry, "acct_pay")


def entry_amount(entry: dict, name: str):
    from decimal import Decimal

    return Decimal(entry[name])


def test_void_of_a_refused_settlement_is_409(shub, sims):
    with shub.client(shub.token("insurer", "ZJ")) as c:
        r = c.post("/settlement/settle", json=body("K-6", cert="330106198504120089", insuplc="310106", hospital=XIHU))
        assert c.post(f"/settlement/{r.json()['setl_id']}/void").status_code == 409
        assert c.post("/settlement/NOPE/void").status_code == 404


def test_slow_platform_answers_202_then_settles_on_poll(shub, sims):
    sims.set_faults("ZJ", latency_ms=1200)  # 1101 + 2207 > the 1.5 s wait
    with shub.client(shub.token("insurer", "SH")) as c:
        r = c.post("/settlement/settle", json=body("K-7"))
        assert r.status_code == 202 and r.json()["status"] == "pending"
        assert r.headers["Location"] == f"/settlement/{r.json()['setl_id']}"
        assert c.get(r.headers["Location"]).status_code == 200
        final = poll(c, r.json()["setl_id"])
    assert final["status"] == "settled" and final["split"] == EXAMPLE_SPLIT
    assert len(sims.settlements("ZJ", final["setl_id"])) == 1


@pytest.mark.parametrize("fault,new_msgid", [("drop", False), ("504", False), ("503", True), ("reset", True)])
def test_anhui_unknown_outcome_asks_5205_and_never_settles_twice(shub, sims, fault, new_msgid):
    sims.set_faults("AH", next_faults=["slow", fault])  # the 1101 passes, the 2207 meets the fault
    with shub.client(shub.token("insurer", "SH")) as c:
        r = c.post("/settlement/settle", json=body("K-8", cert=LIUYANG, insuplc="340104", hospital=HUANGPU))
        final = poll(c, r.json()["setl_id"])
    assert final["status"] == "settled"
    [entry] = sims.settlements("AH", final["setl_id"])
    assert entry["commit_no"] == 1 and entry["insurer_setl_id"] == final["insurer_setl_id"]
    sent = {m["msgid"] for m in sims.received("AH", "2207")}
    assert len(sent) == (2 if new_msgid else 1)
    assert len(sims.received("AH", "2207")) == len(sent)  # no msgid was sent twice on AH
    assert sims.received("AH", "5205")


def test_accum_conflict_recomputes_and_sends_a_new_message(shub, sims):
    import asyncio
    import threading
    from datetime import datetime

    from mappers.region import CST
    from settlement.platform import PlatformClient

    release = sims.hold_answers("ZJ", "1101")  # the hub's 1101 is processed, its answer held
    result = {}
    worker = threading.Thread(target=lambda: result.update(
        r=shub.client(shub.token("insurer", "SH")).post("/settlement/settle", json=body("K-9"))))
    worker.start()
    wait_until(lambda: sims.received("ZJ", "1101"), 20, "the hub's 1101")
    read = sims.person("ZJ", LISI)["accum"][2024]  # the totals the hub is computing on

    async def elsewhere():  # another settlement lands first, on the same totals
        async with PlatformClient(sims.urls) as pc:
            await pc.settle("330421", msgid=pc.next_msgid("H33042100015"), mdtrtarea_admvs="330421",
                            fixmedins_code="H33042100015", psn_no="33000012345678", insutype="310",
                            mdtrt_id="OTHER", setl_id="OTHER-1", setl_time=datetime.now(CST), accum_year=2024,
                            accum_version=read["version"], split=EXAMPLE_SPLIT)
    asyncio.run(elsewhere())
    release()
    worker.join(20)
    answer = result["r"].json()
    assert answer["status"] == "settled"
    sent = sims.received("ZJ", "2207")
    assert len({m["msgid"] for m in sent}) == 3  # ours refused ACCUM_CONFLICT, then a new one
    assert row_of(shub.engine, answer["setl_id"])["conflicts"] == 1
    assert len(sims.settlements("ZJ", answer["setl_id"])) == 1
    assert sims.person("ZJ", LISI)["accum"][2024]["fund_pay_accu"] == read["fund_pay_accu"] + 2 * Decimal("27.90")


def test_two_hospitals_one_person_at_once(shub, sims):
    from concurrent.futures import ThreadPoolExecutor

    sims.set_latency(100)
    calls = [("SH", body("K-10", hospital=QINGPU)), ("JS", body("K-10", hospital=WUJIANG))]
    tokens = {p: shub.token("insurer", p) for p in ("SH", "JS")}

    def go(call):
        with shub.client(tokens[call[0]]) as c:
            return c.post("/settlement/settle", json=call[1]).json()
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(go, calls))
    assert [a["status"] for a in answers] == ["settled", "settled"]
    person = sims.person("ZJ", LISI)
    assert person["accum"][2024]["fund_pay_accu"] == Decimal("3200.00") + 2 * Decimal("27.90")
    assert person["insuinfo"][0]["balc"] == Decimal("1234.56") - 2 * Decimal("9.30")


def test_two_hubs_one_person_at_once_wait_for_each_other(database_url, engine, db, sims):
    """Two hub processes on one database (two runners): the person lease in the database makes
    the second wait for the first and compute on its totals, so neither 2207 is refused."""
    from concurrent.futures import ThreadPoolExecutor

    sims.set_latency(150)
    hubs = [start_hub(database_url, engine, sims) for _ in range(2)]
    try:
        tokens = [hub.token("insurer", "SH") for hub, _ in hubs]

        def go(i):
            with hubs[i][0].client(tokens[i]) as c:
                return c.post("/settlement/settle", json=body(f"K-2H-{i}")).json()
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(go, range(2)))
    finally:
        for _, server in hubs:
            stop_hub(server)
    assert [a["status"] for a in answers] == ["settled", "settled"]
    assert [row_of(engine, a["setl_id"])["conflicts"] for a in answers] == [0, 0]
    assert len(sims.received("ZJ", "2207")) == 2  # one message each: none refused and sent anew
    person = sims.person("ZJ", LISI)
    assert person["accum"][2024]["fund_pay_accu"] == Decimal("3200.00") + 2 * Decimal("27.90")
    assert person["insuinfo"][0]["balc"] == Decimal("1234.56") - 2 * Decimal("9.30")


def test_duplicate_setl_id_is_taken_as_committed(shub, sims):
    from sqlalchemy import update

    from hub.db import writer
    from settlement.models import Settlement
    with shub.client(shub.token("insurer", "SH")) as c:
        first = c.post("/settlement/settle", json=body("K-11")).json()
        # As if the hub had lost the answer and the msgid: a new message for the same setl_id.
        with writer(shub.engine).begin() as conn:
            conn.execute(update(Settlement).where(Settlement.setl_id == first["setl_id"]).values(
                state="sending", msgid="H31011800012202401010000009999", runner=None, run_until=0,
                insurer_setl_id=None))
        final = poll(c, first["setl_id"])
    assert final == first
    assert len(sims.settlements("ZJ", first["setl_id"])) == 1


def test_gives_up_with_a_reversal_and_says_so(database_url, engine, db, sims):
    from dataclasses import replace
    hub, server = start_hub(database_url, engine, sims, replace(FAST, give_up=1.5))
    try:
        sims.set_faults("ZJ", next_faults=["slow"] + ["504"] * 12)  # 2207 processed, never answered
        with hub.client(hub.token("insurer", "SH")) as c:
            r = c.post("/settlement/settle", json=body("K-12"))
            final = poll(c, r.json()["setl_id"], timeout=30)
    finally:
        stop_hub(server)
    assert final["status"] == "refused" and final["refusal"]["code"] == "PLATFORM_UNAVAILABLE"
    assert [e["status"] for e in sims.settlements("ZJ", final["setl_id"])] == ["voided"]
    assert sims.received("ZJ", "2601")
    assert sims.person("ZJ", LISI)["accum"][2024]["fund_pay_accu"] == 3200


def test_restart_resumes_what_was_in_flight(database_url, engine, db, sims):
    sims.set_faults("ZJ", maintenance=True, retry_after=1)
    hub, server = start_hub(database_url, engine, sims)
    with hub.client(hub.token("insurer", "SH")) as c:
        r = c.post("/settlement/settle", json=body("K-13"))
    assert r.status_code == 202
    stop_hub(server)
    assert row_of(engine, r.json()["setl_id"])["state"] == "received"
    sims.clear_faults("ZJ")
    hub2, server2 = start_hub(database_url, engine, sims)
    try:
        with hub2.client(hub2.token("insurer", "SH")) as c:
            final = poll(c, r.json()["setl_id"])
    finally:
        stop_hub(server2)
    assert final["status"] == "settled" and final["split"] == EXAMPLE_SPLIT
    assert len(sims.settlements("ZJ", final["setl_id"])) == 1


def test_a_hub_takes_only_work_it_has_a_platform_for(database_url, engine, db, sims):
    """A hub without a province's platform (sharing the database) leaves its settlements alone."""
    from sqlalchemy import update

    from hub.db import writer
    from settlement.models import Settlement
    from settlement.service import Store
    hub, server = start_hub(database_url, engine, sims)
    with hub.client(hub.token("insurer", "SH")) as c:
        first = c.post("/settlement/settle", json=body("K-21")).json()
    stop_hub(server)  # no live runner from here on
    with writer(engine).begin() as conn:  # as if its runner had died mid-way
        conn.execute(update(Settlement).where(Settlement.setl_id == first["setl_id"]).values(
            state="sending", runner=None, run_until=0))
    store = Store(engine, 15.0)
    assert store.due("other-hub", set(), ["SH", "JS", "AH"]) == []
    assert store.due("other-hub", set(), ["ZJ"]) == [first["setl_id"]]
    store.close()


def test_options_come_from_the_settings(monkeypatch):
    from hub.config import Settings

    monkeypatch.setenv("YRDHUB_SETTLEMENT_GIVE_UP", "42")
    options = Options.from_settings(Settings(settlement_wait=2))
    assert (options.wait, options.give_up, options.sweep) == (2.0, 42.0, Options().sweep)
