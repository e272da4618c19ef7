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

from settlement import simulated
from settlement.simulated import PROVINCE_ADMDVS
from tests.support.bills import bill, make_persons, start_hub, tokens
from tests.support.common import free_port
from tests.support.platforms import KINDS, SandboxPlatforms, SimulatorPlatforms, sandbox_persons

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


# The sandbox's own fault profile (its README): the same kinds, drawn by the sandbox itself.
SANDBOX_FAULTS = dict(latency_max=0.3, p_503=0.05, p_retry_after=0.5, retry_after_s=1, p_reset=0.05,
                      p_drop_after=0.05, p_non_json=0.03, p_non_json_processed=0.5)


@pytest.fixture(params=KINDS)
def world(request, tmp_path):
    persons = make_persons(tmp_path / "persons.json", 10)  # 40 persons, 5 bills each
    if request.param == "simulator":
        sims = SimulatorPlatforms(persons_path=tmp_path / "persons.json")
        env = sims.env()
    else:
        sims = SandboxPlatforms(sandbox_persons(tmp_path / "persons.json"))
        env = sims.direct_env()
    yield tmp_path, persons, sims, env
    sims.stop()


def faults_on(sims) -> None:
    for seed, province in enumerate(PROVINCE_ADMDVS):
        if sims.kind == "sandbox":
            sims.set_native_faults({province: dict(seed=seed, **SANDBOX_FAULTS)})
        else:
            sims.set_faults(province, seed=seed, retry_after=(1 if province in ("SH", "AH") else None), **FAULTS)


def faults_off(sims) -> None:
    if sims.kind == "sandbox":
        sims.set_native_faults({p: None for p in PROVINCE_ADMDVS})
    else:
        sims.clear_faults()


def committed(sims) -> int:
    return sum(len(sims.settlements(p)) for p in PROVINCE_ADMDVS)


def test_burst_with_every_fault_and_a_killed_hub(world):
    tmp, persons, sims, env = world
    calls = []
    for i in range(N):
        province, body = bill(persons[i % len(persons)], f"F-{i}")
        calls.append((f"F-{i}", province, body))
    faults_on(sims)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    hub = start_hub(tmp / "hub.db", env, port, HUB_ENV)
    toks = tokens(tmp / "hub.db")
    answers: dict = {}

    async def burst_and_kill():
        task = asyncio.create_task(send_all(url, toks, calls, answers))
        while committed(sims) < N // 10 and not task.done():  # mid-burst: some settled, most not
            await asyncio.sleep(0.02)
        os.kill(hub.pid, signal.SIGKILL)
        await task
    try:
        asyncio.run(burst_and_kill())
        hub.wait(10)
        cut = N - len(answers)
        hub = start_hub(tmp / "hub.db", env, port, HUB_ENV)
        asyncio.run(send_all(url, toks, calls, answers))  # the cut callers ask again
        faults_off(sims)
        asyncio.run(final_states(url, toks, answers, timeout=45))
    finally:
        hub.send_signal(signal.SIGKILL)
        hub.wait(10)
    assert cut > 0, "the kill cut nobody off: the test would prove nothing"
    print(sims.kind, "cut", cut, {s: [a["status"] for a in answers.values()].count(s) for s in ("settled", "refused")})
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
        province = simulated.PROVINCE_OF_PREFIX[person["insuinfo"][0]["insuplc_admdvs"][:2]]
        now = sims.person_by_psn(province, person["psn_no"])
        mine = [e for e in live.values() if e["psn_no"] == person["psn_no"]]
        start = Decimal(str(person["accum"].get("2024", {}).get("fund_pay_accu", "0")))
        assert now["accum"][2024]["fund_pay_accu"] == start + sum(Decimal(e["hifp_pay"]) for e in mine)
        assert now["insuinfo"][0]["balc"] == Decimal(person["insuinfo"][0]["balc"]) - sum(
            Decimal(e["acct_pay"]) for e in mine)
