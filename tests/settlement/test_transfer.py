"""The transfer saga (settlement/transfer.py): working days as pure functions, then the saga over
real sockets against the simulated platforms: completion, refusal, compensation, cancel, one at a
time, another person's transfer, deadlines, and faults with a hub restart between steps, checked
against the platforms' ledgers and coverage records."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from datetime import date, datetime

import pytest

from mappers.region import CST
from settlement.transfer import (TransferService, WorkCalendar, add_working_days, is_overdue, is_working_day,
                                 load_calendar, parse_calendar)
from tests.support.portal import (CHEN, LISI, LIUYANG, QIANFANG_ZJ, SUNQIANG, WANGFANG, WUXIA, ZHANGWEI,
                                  ZHAOMIN, ZHENGLEI, ZHOUJIE, session, sign_in, start_hub, wait_final)
from tests.support.waiting import wait_until

CAL = load_calendar()
D = date.fromisoformat


# ---------------------------------------------------------------------------------------------
# Working days
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("start, n, expected", [
    ("2026-11-25", 10, "2026-12-09"),   # ordinary weeks: two weekends skipped
    ("2026-11-27", 1, "2026-11-30"),    # Friday + 1: Monday
    ("2026-11-28", 1, "2026-11-30"),    # from a Saturday: the next working day
    ("2026-11-25", 0, "2026-11-25"),
    ("2025-12-31", 1, "2026-01-04"),    # 1-3 Jan off, Sunday 4 Jan a make-up working day
    ("2026-02-13", 1, "2026-02-14"),    # Saturday 14 Feb is a make-up working day
    ("2026-02-13", 2, "2026-02-24"),    # Spring Festival 15-23 Feb skipped
    ("2026-09-28", 5, "2026-10-10"),    # National Day 1-7 Oct skipped, Saturday 10 Oct worked
    ("2026-09-28", 10, "2026-10-16"),
    ("2026-09-18", 1, "2026-09-20"),    # Sunday 20 Sep is a make-up working day
    ("2026-04-03", 1, "2026-04-07"),    # Qingming 4-6 Apr
    ("2026-04-30", 1, "2026-05-06"),    # Labour Day 1-5 May
    ("2027-02-04", 1, "2027-02-11"),    # provisional 2027: 5-8 Feb off, 9-10 in lieu of 6-7
])
def test_add_working_days(start, n, expected):
    assert add_working_days(D(start), n, CAL) == D(expected)


def test_working_day_rules():
    assert is_working_day(D("2026-11-25"), CAL) and not is_working_day(D("2026-11-28"), CAL)
    assert not is_working_day(D("2026-10-05"), CAL)        # a Monday in the holiday
    assert is_working_day(D("2026-10-10"), CAL)            # a Saturday made a working day
    both = WorkCalendar(frozenset({D("2026-11-25")}), frozenset({D("2026-11-25")}))
    assert is_working_day(D("2026-11-25"), both)           # make-up wins over holiday
    assert add_working_days(D("2026-11-24"), 1, WorkCalendar(frozenset({D("2026-11-25")}))) == D("2026-11-26")
    with pytest.raises(ValueError):
        add_working_days(D("2026-11-25"), -1, CAL)


def test_overdue_edges():
    deadline = D("2026-12-09")
    assert not is_overdue(deadline, today=D("2026-12-09"))
    assert is_overdue(deadline, today=D("2026-12-10"))
    assert not is_overdue(deadline, today=D("2026-12-20"), done_on=D("2026-12-09"))
    assert is_overdue(deadline, today=D("2026-12-20"), done_on=D("2026-12-10"))


def test_calendar_is_data_and_overridable(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="not a date"):
        parse_calendar({"years": {"2026": {"holidays": ["2026-13-01"]}}})
    with pytest.raises(ValueError, match="not in 2026"):
        parse_calendar({"years": {"2026": {"holidays": ["2027-01-01"]}}})
    path = tmp_path / "cal.json"
    path.write_text(json.dumps({"years": {"2026": {"holidays": ["2026-11-26"], "makeup_workdays": []}}}))
    monkeypatch.setenv("YRDHUB_TRANSFER_CALENDAR", str(path))
    custom = load_calendar()
    assert add_working_days(D("2026-11-25"), 1, custom) == D("2026-11-27")
    assert add_working_days(D("2025-12-31"), 1, custom) == D("2026-01-01")  # 2026 holidays replaced


# ---------------------------------------------------------------------------------------------
# The saga against the simulated platforms
# ---------------------------------------------------------------------------------------------


def ledger_steps(sims, transfer_id: str) -> Counter:
    """(province, kind) -> how many ledger entries the transfer has there."""
    return Counter((p, e["kind"]) for p in ("SH", "JS", "ZJ", "AH") for e in sims.ledger(p)
                   if e.get("transfer_id") == transfer_id)


def active(sims, province: str, certno: str, insutype: str) -> bool:
    person = sims.person(province, certno)
    return bool(person) and any(i["insutype"] == insutype and i["psn_insu_stas"] == "1" for i in person["insuinfo"])


def balance(sims, province: str, certno: str) -> str:
    return str(sum(i["balc"] for i in sims.person(province, certno)["insuinfo"]))


def apply(client, to_admdvs: str, insutype: str = "310") -> dict:
    answer = client.post("/api/me/transfers", json={"to_admdvs": to_admdvs, "insutype": insutype})
    assert answer.status_code == 201, answer.text
    return answer.json()


def test_transfer_completes_each_step_once(portal, sims):
    with session(portal.url, LISI) as me:
        created = apply(me, "310118")
        assert created["status"] in ("submitted", "in_progress") and created["refusal"] is None
        done = wait_final(me, created["id"])
        assert me.get("/api/me/transfers").json()["transfers"][0]["id"] == created["id"]
    assert done["status"] == "completed" and done["from_admdvs"] == "330421"
    assert [(s["infno"], s["status"]) for s in done["steps"]] == [("4101", "done"), ("4102", "done"), ("4201", "done")]
    assert done["steps"][0]["outcome"]["acct_balc"] == "1234.56"
    assert all(s["done_at"] and not s["overdue"] for s in done["steps"])
    assert ledger_steps(sims, done["id"]) == {("ZJ", "transfer_out"): 1, ("ZJ", "transfer_funds"): 1,
                                              ("SH", "transfer_in"): 1}
    assert not active(sims, "ZJ", LISI[2], "310") and active(sims, "SH", LISI[2], "310")
    assert balance(sims, "SH", LISI[2]) == "1234.56" and balance(sims, "ZJ", LISI[2]) == "0.00"


def test_no_balance_no_funds_step(portal, sims):
    with session(portal.url, WANGFANG) as me:
        done = wait_final(me, apply(me, "340104", "390")["id"])
    assert done["status"] == "completed"
    assert [s["infno"] for s in done["steps"]] == ["4101", "4201"]


def test_refusal_at_origin_ends_refused_with_reason(portal, sims):
    with session(portal.url, SUNQIANG) as me:
        done = wait_final(me, apply(me, "330421")["id"])
    assert done["status"] == "refused"
    # Suspended for arrears: both refusals apply, and the contract does not say which a platform
    # checks first (the simulator says ARREARS, the sandbox NOT_ACTIVE); the hub passes it on.
    expected = {"simulator": ("ARREARS", "欠费"), "sandbox": ("NOT_ACTIVE", "参保状态")}[sims.kind]
    assert done["refusal"]["code"] == expected[0] and expected[1] in done["refusal"]["message"]
    assert [(s["infno"], s["status"]) for s in done["steps"]] == [("4101", "failed")]
    assert ledger_steps(sims, done["id"]) == {}


def test_refusal_at_destination_is_compensated(portal, sims):
    with session(portal.url, QIANFANG_ZJ) as me:  # also insured in Shanghai: DUPLICATE_COVERAGE
        done = wait_final(me, apply(me, "310106")["id"])
    assert done["status"] == "refused" and done["refusal"]["code"] == "DUPLICATE_COVERAGE"
    assert [(s["infno"], s["status"]) for s in done["steps"]] == [
        ("4101", "undone"), ("4102", "undone"), ("4201", "failed"), ("4103", "done")]
    assert ledger_steps(sims, done["id"]) == {("ZJ", "transfer_out"): 1, ("ZJ", "transfer_funds"): 1,
                                              ("ZJ", "transfer_cancel"): 1}
    assert active(sims, "ZJ", QIANFANG_ZJ[2], "310") and balance(sims, "ZJ", QIANFANG_ZJ[2]) == "3080.25"


def test_one_at_a_time_cancel_and_later_409(portal, sims):
    sims.set_faults("SH", maintenance=True, retry_after=1)  # the destination does not answer
    with session(portal.url, LISI) as me:
        first = apply(me, "310118")
        wait_until(lambda: me.get(f"/api/me/transfers/{first['id']}").json()["steps"][1]["status"] == "done",
                   20, "step 4102 done", every=0.1)
        second = me.post("/api/me/transfers", json={"to_admdvs": "320509", "insutype": "310"})
        assert second.status_code == 409 and second.json()["error"]["code"] == "TRANSFER_IN_PROGRESS"
        cancelled = me.post(f"/api/me/transfers/{first['id']}/cancel", json={})
        assert cancelled.status_code == 200, cancelled.text
        done = wait_final(me, first["id"])
        assert done["status"] == "cancelled" and done["refusal"] is None
        assert [(s["infno"], s["status"]) for s in done["steps"]] == [
            ("4101", "undone"), ("4102", "undone"), ("4201", "failed"), ("4103", "done")]
        assert me.post(f"/api/me/transfers/{first['id']}/cancel", json={}).json()["status"] == "cancelled"
        sims.clear_faults()
        # The late 4201 (if the platform ever processed one) cannot open coverage any more.
        assert not active(sims, "SH", LISI[2], "310") and active(sims, "ZJ", LISI[2], "310")
        assert balance(sims, "ZJ", LISI[2]) == "1234.56"
        again = wait_final(me, apply(me, "320509")["id"])  # a new transfer may start now
        assert again["status"] == "completed"
        late = me.post(f"/api/me/transfers/{again['id']}/cancel", json={})
        assert late.status_code == 409 and late.json()["error"]["code"] == "CANNOT_CANCEL"
    assert ledger_steps(sims, first["id"])[("SH", "transfer_in")] == 0


def test_cancel_before_anything_reached_the_origin_sends_nothing(engine, db, sims):
    """The origin refuses connections (NotSent): the 4101 never left, so a cancel ends the
    transfer at once, without a 4103, and with no steps."""
    from hub.store import patient_for_resident_id
    from settlement.platform import PlatformClient
    from tests.support.common import free_port

    async def scenario():
        client = PlatformClient({**sims.urls, "ZJ": f"http://127.0.0.1:{free_port()}"}, attempts=1)
        service = TransferService(engine, lambda: client, retry_base=30, retry_max=30)
        pid = patient_for_resident_id(engine, LISI[2])
        created = service.create(patient_id=pid, certno=LISI[2], psn_name="李四", from_admdvs="330421",
                                 to_admdvs="310118", insutype="310")
        await service.advance(created["id"])
        tried = service.get(pid, created["id"])
        cancelled = await service.cancel(pid, created["id"])
        await client.aclose()
        return tried, cancelled

    tried, cancelled = asyncio.run(scenario())
    assert tried["status"] == "in_progress" and tried["steps"][0]["attempts"] == 1
    assert cancelled["status"] == "cancelled" and cancelled["steps"] == []
    assert sims.received("ZJ") == [] and active(sims, "ZJ", LISI[2], "310")


def test_another_persons_transfer_is_404(portal, sims):
    with session(portal.url, LISI) as lisi, session(portal.url, CHEN) as chen:
        mine = apply(lisi, "310118")
        assert chen.get(f"/api/me/transfers/{mine['id']}").status_code == 404
        assert chen.post(f"/api/me/transfers/{mine['id']}/cancel", json={}).status_code == 404
        assert chen.get("/api/me/transfers").json()["transfers"] == []
        assert chen.get("/api/me/transfers/TR-nope").status_code == 404
        wait_final(lisi, mine["id"])


def test_bad_requests_say_why(portal):
    with session(portal.url, LISI) as me:
        for body, code in [({"to_admdvs": "310118", "insutype": "999"}, "BAD_INSUTYPE"),
                           ({"to_admdvs": "31011", "insutype": "310"}, "BAD_PLACE"),
                           ({"to_admdvs": "310000", "insutype": "310"}, "BAD_PLACE"),
                           ({"to_admdvs": "110105", "insutype": "310"}, "UNKNOWN_PLACE"),
                           ({"to_admdvs": "330106", "insutype": "310"}, "SAME_PROVINCE"),
                           ({"to_admdvs": "310118", "insutype": "390"}, "NOT_INSURED")]:
            answer = me.post("/api/me/transfers", json=body)
            assert answer.status_code == 400 and answer.json()["error"]["code"] == code, (body, answer.text)
        assert me.get("/api/me/transfers").json()["transfers"] == []


def test_hub_restart_between_steps_resumes(database_url, db, sims):
    """4101 processed but every answer dropped, the hub stops; a new hub resends (first answer
    returned), then 4102 and 4201 run: each step once on the ledgers."""
    hub = start_hub(database_url, sims)
    with session(hub.url, LISI) as me:
        sims.set_faults("ZJ", drop_answer_rate=1.0)
        created = apply(me, "310118")
        wait_until(lambda: len(sims.received("ZJ", "4101")) >= 3, 20, "three 4101s", every=0.05)
        assert me.get(f"/api/me/transfers/{created['id']}").json()["status"] == "in_progress"
    hub.stop()
    sims.clear_faults()
    assert ledger_steps(sims, created["id"]) == {("ZJ", "transfer_out"): 1}
    hub = start_hub(database_url, sims)
    try:
        with session(hub.url, LISI) as me:
            done = wait_final(me, created["id"])
    finally:
        hub.stop()
    assert done["status"] == "completed"
    assert ledger_steps(sims, created["id"]) == {("ZJ", "transfer_out"): 1, ("ZJ", "transfer_funds"): 1,
                                                 ("SH", "transfer_in"): 1}
    assert len({e["msgid"] for e in sims.received("ZJ", "4101")}) == 1  # every resend, one msgid


CAST = [(LISI, "310118", "310"), (ZHANGWEI, "330106", "310"), (CHEN, "340104", "310"),
        (LIUYANG, "320509", "310"), (ZHOUJIE, "330421", "310"), (WUXIA, "310104", "390"),
        (QIANFANG_ZJ, "310106", "310"), (SUNQIANG, "320106", "310"), (ZHAOMIN, "330106", "310"),
        (ZHENGLEI, "310118", "310"), (WANGFANG, "340103", "390")]
PROVINCE_OF = {"31": "SH", "32": "JS", "33": "ZJ", "34": "AH"}


def coverage_state(sims, person, to_admdvs, insutype):
    return (active(sims, person[0], person[2], insutype), active(sims, PROVINCE_OF[to_admdvs[:2]], person[2], insutype))


def test_faults_and_restart_every_transfer_ends_and_nobody_is_lost(database_url, db, sims):
    before = {p[2]: coverage_state(sims, p, to, it) for p, to, it in CAST}
    faults = dict(reset_rate=0.2, drop_answer_rate=0.2, fail_503_rate=0.15, non_json_rate=0.1)
    for i, province in enumerate(("SH", "JS", "ZJ")):
        sims.set_faults(province, seed=i, **faults)
    hub = start_hub(database_url, sims)
    ids = {}
    clients = [sign_in_retrying(hub.url, person) for person, _, _ in CAST]
    sims.set_faults("AH", maintenance=True, retry_after=1)  # Anhui's steps wait past the restart
    for client, (person, to, insutype) in zip(clients, CAST):
        ids[person[2]] = apply(client, to, insutype)["id"]
    # mid-flight: some transfers are between steps, some steps in doubt
    wait_until(lambda: sum(len(sims.received(p, "4101")) for p in ("SH", "JS", "ZJ")) >= 4, 30, "four 4101s")
    hub.stop()
    unfinished = unfinished_transfers(database_url)
    assert unfinished >= 4  # the restart really falls between steps
    for c in clients:
        c.close()
    sent = sum(len(sims.received(p)) for p in ("SH", "JS", "ZJ"))
    hub = start_hub(database_url, sims)
    try:  # the restarted hub meets the faults too, then the platforms recover
        wait_until(lambda: sum(len(sims.received(p)) for p in ("SH", "JS", "ZJ")) > sent + 3, 30,
                   "the restarted hub's messages")
        sims.clear_faults()
        finals = {}
        for person, to, insutype in CAST:
            with session(hub.url, person) as me:
                finals[person[2]] = wait_final(me, ids[person[2]], timeout=40)
    finally:
        hub.stop()
    for person, to, insutype in CAST:
        transfer = finals[person[2]]
        counts = ledger_steps(sims, transfer["id"])
        assert all(n == 1 for n in counts.values()), (person[2][:4], counts)
        origin, destination = coverage_state(sims, person, to, insutype)
        if transfer["status"] == "completed":
            assert (origin, destination) == (False, True), transfer
        else:
            assert (origin, destination) == before[person[2]], transfer  # as it was: nobody lost
    statuses = Counter(t["status"] for t in finals.values())
    assert statuses["completed"] >= 6 and statuses["refused"] >= 4, statuses


def unfinished_transfers(database_url) -> int:
    from sqlalchemy import func, select

    from hub.db import get_engine
    from settlement.transfer_models import Transfer

    with get_engine(database_url).connect() as conn:
        return conn.execute(select(func.count()).select_from(Transfer)
                            .where(Transfer.status.not_in(("completed", "refused", "cancelled")))).scalar()


def sign_in_retrying(url, person, attempts: int = 8):
    """Sign in while the platforms inject faults (a 503 at sign-in is the person's 'try later')."""
    for _ in range(attempts):
        try:
            return sign_in(url, person)
        except AssertionError:
            time.sleep(0.1)
    return sign_in(url, person)


# ---------------------------------------------------------------------------------------------
# Deadlines with a fixed clock (the service driven directly)
# ---------------------------------------------------------------------------------------------


class Clock:
    def __init__(self, when: datetime):
        self.when = when

    def __call__(self) -> datetime:
        return self.when


def test_deadlines_tracked_and_overdue_flagged(engine, db, sims):
    from settlement.platform import PlatformClient
    from hub.store import patient_for_resident_id

    clock = Clock(datetime(2026, 9, 28, 10, 0, tzinfo=CST))

    async def scenario():
        client = PlatformClient(sims.urls, attempts=1)
        service = TransferService(engine, lambda: client, clock=clock, retry_base=0.05, retry_max=0.1)
        pid = patient_for_resident_id(engine, LISI[2])
        sims.set_faults("ZJ", maintenance=True, retry_after=1)
        created = service.create(patient_id=pid, certno=LISI[2], psn_name="李四", from_admdvs="330421",
                                 to_admdvs="310118", insutype="310")
        await service.advance(created["id"])
        waiting = service.get(pid, created["id"])
        clock.when = datetime(2026, 10, 20, 9, 0, tzinfo=CST)  # past the origin's 10 working days
        late = service.get(pid, created["id"])
        sims.clear_faults()
        await service.advance(created["id"])
        done = service.get(pid, created["id"])
        await client.aclose()
        return created, waiting, late, done

    created, waiting, late, done = asyncio.run(scenario())
    assert [(s["infno"], s["deadline"]) for s in created["steps"]] == [("4101", "2026-10-16"), ("4201", "2026-10-23")]
    assert waiting["status"] == "in_progress" and waiting["steps"][0]["attempts"] >= 1
    assert not waiting["steps"][0]["overdue"]
    assert late["steps"][0]["overdue"] and late["steps"][0]["status"] == "pending"
    assert done["status"] == "completed"
    steps = {s["infno"]: s for s in done["steps"]}
    assert steps["4101"]["overdue"] and steps["4102"]["overdue"]  # done after their deadline
    assert steps["4201"]["deadline"] == "2026-10-27"  # received Tue 20 Oct + 5 working days
    assert not steps["4201"]["overdue"]
