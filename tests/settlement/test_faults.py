"""The fault suite: hundreds of concurrent settlements with every fault of the simulated
platforms on (AH included), a hub killed with SIGKILL mid-burst and restarted; afterwards every
request's final status at the hub agrees with the platforms' ledgers, nothing is settled twice
and nothing is lost.

The hub runs as a subprocess (uvicorn, SQLite file on disk); the platforms run in this process.
Callers whose answer was cut by the kill send the same request again to the restarted hub, as a
hospital would. Bounded: 200 settlements, ~40-60 s on two cores.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from decimal import Decimal

import httpx
import pytest

from bench.settle import bill, make_persons, start_hub, tokens
from settlement import simulator
from tests.conftest import free_port

N = 200
FAULTS = dict(slow_rate=0.05, slow_ms=1500, fail_503_rate=0.05, reset_rate=0.05, drop_answer_rate=0.05,
              non_json_rate=0.03)
HUB_ENV = {"YRDHUB_SETTLEMENT_WAIT": "2", "YRDHUB_SETTLEMENT_RUNNER_LEASE": "2", "YRDHUB_SETTLEMENT_SWEEP": "0.5",
           "YRDHUB_SETTLEMENT_RETRY_MIN": "0.1", "YRDHUB_SETTLEMENT_RETRY_MAX": "1",
           "YRDHUB_SETTLEMENT_GIVE_UP": "25", "YRDHUB_SETTLEMENT_PERSON_LEASE": "5"}


async def send_all(url: str, toks: dict, calls: list, answers: dict, concurrency: int = 40) -> None:
    """POST every call not yet answered; a cut connection leaves it unanswered."""
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        async def one(key, province, body):
            async with sem:
                try:
                    r = await client.post("/settlement/settle", json=body,
                                          headers={"Authorization": f"Bearer {toks[province]}"})
                except httpx.HTTPError:
                    return
                if r.status_code in (200, 202):
                    answers[key] = r.json()
        await asyncio.gather(*(one(k, p, b) for k, p, b in calls if k not in answers))


async def final_states(url: str, toks: dict, answers: dict, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=url, timeout=30, headers={"Authorization": f"Bearer {toks['admin']}"}) as c:
        while True:
            pending = [k for k, a in answers.items() if a["status"] == "pending"]
            if not pending or time.monotonic() > deadline:
                return answers
            for key in pending:
                answers[key] = (await c.get(f"/settlement/{answers[key]['setl_id']}")).json()
            await asyncio.sleep(0.5)


@pytest.fixture
def world(tmp_path):
    persons = make_persons(tmp_path / "persons.json", 10)  # 40 persons, 5 bills each
    sims = simulator.start_simulators(persons_path=tmp_path / "persons.json")
    yield tmp_path, persons, sims
    sims.stop()


def test_burst_with_every_fault_and_a_killed_hub(world):
    tmp, persons, sims = world
    calls = []
    for i in range(N):
        province, body = bill(persons[i % len(persons)], f"F-{i}")
        calls.append((f"F-{i}", province, body))
    for seed, province in enumerate(sims.urls):
        sims.set_faults(province, seed=seed, retry_after=(1 if province in ("SH", "AH") else None), **FAULTS)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    hub = start_hub(tmp / "hub.db", sims.env(), port, HUB_ENV)
    toks = tokens(tmp / "hub.db")
    answers: dict = {}

    async def burst_and_kill():
        task = asyncio.create_task(send_all(url, toks, calls, answers))
        await asyncio.sleep(3.0)
        os.kill(hub.pid, signal.SIGKILL)
        await task
    try:
        asyncio.run(burst_and_kill())
        hub.wait(10)
        cut = N - len(answers)
        hub = start_hub(tmp / "hub.db", sims.env(), port, HUB_ENV)
        asyncio.run(send_all(url, toks, calls, answers))  # the cut callers ask again
        time.sleep(6)  # faults on a while longer, then the platforms recover
        sims.clear_faults()
        asyncio.run(final_states(url, toks, answers, timeout=45))
    finally:
        hub.send_signal(signal.SIGKILL)
        hub.wait(10)
    assert cut > 0, "the kill cut nobody off: the test would prove nothing"
    print("cut", cut, {s: [a["status"] for a in answers.values()].count(s) for s in ("settled", "refused")},
          "AH 5205", len(sims.received("AH", "5205")), "2207s", sum(len(sims.received(p, "2207")) for p in sims.urls))
    check_agreement(sims, persons, calls, answers)


def check_agreement(sims, persons, calls, answers) -> None:
    assert set(answers) == {k for k, _, _ in calls}, "a request was lost"
    statuses = [a["status"] for a in answers.values()]
    assert "pending" not in statuses
    assert statuses.count("settled") > N // 2
    ledger = [e for p in sims.urls for e in sims.settlements(p)]
    assert all(e["commit_no"] == 1 for e in ledger), "an AH message was committed twice"
    live = {}
    for entry in ledger:
        if entry["status"] == "settled":
            assert entry["setl_id"] not in live, f"{entry['setl_id']} settled twice"
            live[entry["setl_id"]] = entry
    by_setl = {a["setl_id"]: a for a in answers.values()}
    assert set(live) <= set(by_setl), "the platform holds a settlement the hub does not know"
    for setl_id, answer in by_setl.items():
        if answer["status"] == "settled":
            entry = live.get(setl_id)
            assert entry is not None, f"hub settled {setl_id}, the platform did not"
            assert entry["insurer_setl_id"] == answer["insurer_setl_id"]
            assert all(entry[f] == answer["split"][f] for f in ("medfee_sumamt", "hifp_pay", "acct_pay"))
        else:
            assert setl_id not in live, f"hub says {answer['status']} for {setl_id}, the platform settled it"
    check_totals(sims, persons, live)


def check_totals(sims, persons, live) -> None:
    """Each person's fund total and balance moved by exactly their live settlements."""
    for person in persons:
        province = simulator.PROVINCE_OF_PREFIX[person["insuinfo"][0]["insuplc_admdvs"][:2]]
        now = sims.platforms[province]._find(psn_no=person["psn_no"])
        mine = [e for e in live.values() if e["psn_no"] == person["psn_no"]]
        start = Decimal(str(person["accum"].get("2024", {}).get("fund_pay_accu", "0")))
        assert now["accum"][2024]["fund_pay_accu"] == start + sum(Decimal(e["hifp_pay"]) for e in mine)
        assert now["insuinfo"][0]["balc"] == Decimal(person["insuinfo"][0]["balc"]) - sum(
            Decimal(e["acct_pay"]) for e in mine)
