"""The simulated platforms, over real sockets, driven with hand-built envelopes (not the hub's
client), so that they are checked against insurer-api.md on their own."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from decimal import Decimal

import httpx
import pytest

from mappers.region import CST
from settlement.simulated import start_simulators
from tests.support.waiting import wait_until

LISI = "33042119850412002X"
EXAMPLE_1101 = {  # insurer-api.md, 1101, verbatim
    "baseinfo": {"psn_no": "33000012345678", "psn_name": "李四", "gend": "2", "brdy": "1985-04-12",
                 "certno": "33042119850412002X", "psn_cert_type": "01"},
    "insuinfo": [{"insutype": "310", "psn_type": "11", "insuplc_admdvs": "330421",
                  "psn_insu_stas": "1", "psn_insu_date": "2010-07-01", "balc": "1234.56"}],
    "accum": {"year": 2024, "dedc_accu": "800.00", "fund_pay_accu": "3200.00", "version": 17},
    "filing": [{"type": "temporary", "mdtrtarea_admvs": "310000", "begndate": "2024-01-01", "enddate": "2024-06-30"}],
}


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2024, 3, 15, 12, 30, 45, tzinfo=CST)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sims(clock, tmp_path):
    running = start_simulators(clock=clock, ledger_path=tmp_path / "ledger.json")
    yield running
    running.stop()


@pytest.fixture
def http():
    with httpx.Client(timeout=5, trust_env=False) as client:
        yield client


_seq = iter(range(1, 10_000))


def msgid() -> str:
    return f"H31011800012{datetime.now(CST):%Y%m%d%H%M%S}{next(_seq):04d}"


def post(http, sims, province, infno, inp, mid=None, **env) -> dict:
    body = {"infno": infno, "msgid": mid or msgid(), "mdtrtarea_admvs": env.get("area", "310118"),
            "insuplc_admdvs": env.get("insuplc", "330421"), "recer_sys_code": "YRDHUB", "infver": "V1.0",
            "opter_type": "1", "inf_time": "2024-03-15 12:30:45", "fixmedins_code": "H31011800012", "input": inp}
    response = http.post(f"{sims.urls[province]}/api/{infno}", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def split(medfee="37.20", hifp="27.90", acct="9.30", cash="0.00", dedc="0.00") -> dict:
    return {"medfee_sumamt": medfee, "fulamt_ownpay_amt": "0.00", "overlmt_selfpay": "0.00",
            "preselfpay_amt": "0.00", "inscp_scp_amt": medfee, "act_pay_dedc": dedc, "hifp_pay": hifp,
            "acct_pay": acct, "psn_cash_pay": cash, "fund_pay_sumamt": hifp}


def settle_input(setl_id="HUB-S-0001", version=17, psn_no="33000012345678", **amounts) -> dict:
    return {"psn_no": psn_no, "insutype": "310", "mdtrt_id": "MZ2024031500077", "setl_id": setl_id,
            "setl_time": "2024-03-15 09:30:00", "accum_year": 2024, "accum_version": version, **split(**amounts)}


def refusal(answer: dict) -> str:
    assert answer["infcode"] == -1, answer
    assert answer["err_msg"]  # a Chinese message goes with every refusal
    return answer["output"]["err_code"]


# -- 1101 ----------------------------------------------------------------------------------------


def test_1101_answers_the_example_of_the_spec_exactly(sims, http):
    answer = post(http, sims, "ZJ", "1101", {"mdtrt_cert_type": "02", "mdtrt_cert_no": LISI, "year": 2024})
    assert answer["infcode"] == 0 and answer["output"] == EXAMPLE_1101


def test_1101_by_evoucher_and_card_and_this_year_by_default(sims, http):
    by_token = post(http, sims, "ZJ", "1101", {"mdtrt_cert_type": "01", "mdtrt_cert_no": "ZJEV-LISI-8F3K2Q7M"})
    by_card = post(http, sims, "ZJ", "1101", {"mdtrt_cert_type": "03", "mdtrt_cert_no": "ZJ3304210001"})
    assert by_token["output"]["baseinfo"]["certno"] == by_card["output"]["baseinfo"]["certno"] == LISI
    # The clock says 2024, so the default year is 2024's totals.
    assert by_token["output"]["accum"]["version"] == 17


@pytest.mark.parametrize(("province", "cert_type", "cert_no", "code"), [
    ("AH", "01", "AHEV-HELI-OLD-0000", "TOKEN_EXPIRED"),
    ("AH", "01", "NO-SUCH-TOKEN", "TOKEN_INVALID"),
    ("ZJ", "02", "11010519491231002X", "PERSON_NOT_FOUND"),
    ("SH", "02", LISI, "PERSON_NOT_FOUND"),  # insured in ZJ, unknown to SH
])
def test_1101_refusals(sims, http, province, cert_type, cert_no, code):
    answer = post(http, sims, province, "1101", {"mdtrt_cert_type": cert_type, "mdtrt_cert_no": cert_no})
    assert refusal(answer) == code


# -- 2207 ----------------------------------------------------------------------------------------


def test_2207_commits_moves_totals_and_balance(sims, http):
    mid = msgid()
    answer = post(http, sims, "ZJ", "2207", settle_input(), mid)
    out = answer["output"]
    # The platform's own id for its answer, as the national platform forms it: never an echo.
    assert answer["infcode"] == 0 and answer["inf_refmsgid"] != mid
    assert re.fullmatch(r"330000\d{14}\d{8}", answer["inf_refmsgid"])
    assert out["accum"] == {"year": 2024, "dedc_accu": "800.00", "fund_pay_accu": "3227.90", "version": 18}
    assert out["balc"] == "1225.26"
    [entry] = sims.ledger("ZJ")
    assert (entry["msgid"], entry["commit_no"], entry["setl_id"], entry["status"]) == (mid, 1, "HUB-S-0001", "settled")
    assert entry["mdtrtarea_admvs"] == "310118"


@pytest.mark.parametrize(("inp", "code"), [
    (settle_input(cash="1.00"), "AMOUNT_MISMATCH"),             # 27.90 + 9.30 + 1.00 != 37.20
    (settle_input(version=16), "ACCUM_CONFLICT"),
    (settle_input(acct="1300.00", medfee="1327.90", cash="0.00"), "INSUFFICIENT_BALANCE"),
    (dict(settle_input(), psn_no="99999999999999"), "PERSON_NOT_FOUND"),
])
def test_2207_refusals(sims, http, inp, code):
    assert refusal(post(http, sims, "ZJ", "2207", inp)) == code
    assert sims.ledger("ZJ") == []


def test_2207_refuses_a_person_without_active_coverage(sims, http):
    inp = settle_input(psn_no="31000020000003", version=0)  # 赵敏, coverage terminated
    assert refusal(post(http, sims, "SH", "2207", inp, insuplc="310118")) == "NOT_ACTIVE"


def test_accum_conflict_carries_the_current_totals(sims, http):
    post(http, sims, "ZJ", "2207", settle_input("A"))
    answer = post(http, sims, "ZJ", "2207", settle_input("B", version=17))
    assert refusal(answer) == "ACCUM_CONFLICT"
    assert answer["output"]["accum"]["version"] == 18


def test_duplicate_setl_id_carries_the_committed_settlement(sims, http):
    first = post(http, sims, "ZJ", "2207", settle_input())["output"]
    # The same setl_id under a new msgid (a late original or a repeat after 72 h): even with the
    # stale version it is DUPLICATE_SETL_ID, not ACCUM_CONFLICT.
    answer = post(http, sims, "ZJ", "2207", settle_input())
    assert refusal(answer) == "DUPLICATE_SETL_ID"
    assert answer["output"]["insurer_setl_id"] == first["insurer_setl_id"]
    assert answer["output"]["status"] == "settled" and answer["output"]["acct_pay"] == "9.30"
    assert len(sims.ledger("ZJ")) == 1


# -- msgid repeats ---------------------------------------------------------------------------------


def test_zj_returns_the_first_answer_to_a_repeat_and_commits_once(sims, http):
    mid = msgid()
    first = post(http, sims, "ZJ", "2207", settle_input(), mid)
    again = post(http, sims, "ZJ", "2207", settle_input(), mid)
    assert again == first
    assert [e["commit_no"] for e in sims.ledger("ZJ")] == [1]
    assert sims.person("ZJ", LISI)["insuinfo"][0]["balc"] == Decimal("1225.26")


def test_zj_refuses_a_reused_msgid_with_another_input(sims, http):
    mid = msgid()
    post(http, sims, "ZJ", "2207", settle_input(), mid)
    assert refusal(post(http, sims, "ZJ", "2207", settle_input("OTHER", version=18), mid)) == "MSGID_REUSED"
    assert len(sims.ledger("ZJ")) == 1


def test_zj_forgets_a_msgid_after_72_hours(sims, http, clock):
    mid = msgid()
    post(http, sims, "ZJ", "2207", settle_input(), mid)
    clock.now += timedelta(hours=72, seconds=1)
    assert refusal(post(http, sims, "ZJ", "2207", settle_input(), mid)) == "DUPLICATE_SETL_ID"


def test_zj_refusal_is_repeated_as_it_was(sims, http):
    mid = msgid()
    first = post(http, sims, "ZJ", "2207", settle_input(version=3), mid)
    assert refusal(first) == "ACCUM_CONFLICT"
    assert post(http, sims, "ZJ", "2207", settle_input(version=3), mid) == first


def test_ah_commits_a_resent_2207_twice(sims, http):
    """Why the hub must never resend a 2207 to AH blindly."""
    inp = dict(settle_input(psn_no="34000040000001", version=5, acct="100.00", medfee="400.00",
                            hifp="300.00"), setl_id="AH-S-1")
    mid = msgid()
    first = post(http, sims, "AH", "2207", inp, mid, insuplc="340104")
    second = post(http, sims, "AH", "2207", inp, mid, insuplc="340104")
    assert first["infcode"] == second["infcode"] == 0
    assert first["output"]["insurer_setl_id"] != second["output"]["insurer_setl_id"]
    assert [(e["msgid"], e["commit_no"]) for e in sims.ledger("AH")] == [(mid, 1), (mid, 2)]
    assert sims.person("AH", "340104197506060010")["insuinfo"][0]["balc"] == Decimal("2266.70")
    # 5205 still tells the first answer.
    query = post(http, sims, "AH", "5205", {"omsgid": mid}, insuplc="340104")["output"]
    assert query["found"] and query["response"] == first


# -- 5205, 2601, 2208 -------------------------------------------------------------------------------


def test_5205_unknown_message(sims, http):
    assert post(http, sims, "AH", "5205", {"omsgid": msgid()})["output"] == {"found": False}


def test_2601_before_processing_kills_the_late_original(sims, http):
    mid = msgid()
    rev = post(http, sims, "AH", "2601", {"psn_no": "34000040000001", "omsgid": mid, "oinfno": "2207"})
    assert rev["output"]["reversed"] is False
    late = post(http, sims, "AH", "2207", settle_input(psn_no="34000040000001", version=5, acct="0.00",
                                                        cash="9.30"), mid)
    assert refusal(late) == "MSG_REVERSED"
    assert sims.ledger("AH") == []
    assert post(http, sims, "AH", "5205", {"omsgid": mid})["output"] == {"found": False}


def test_2601_after_processing_voids_and_gives_back(sims, http):
    mid = msgid()
    post(http, sims, "ZJ", "2207", settle_input(), mid)
    rev = post(http, sims, "ZJ", "2601", {"psn_no": "33000012345678", "omsgid": mid, "oinfno": "2207"})
    assert rev["output"]["reversed"] is True
    assert sims.ledger("ZJ")[0]["status"] == "voided"
    person = sims.person("ZJ", LISI)
    assert person["insuinfo"][0]["balc"] == Decimal("1234.56")
    assert person["accum"][2024]["fund_pay_accu"] == Decimal("3200.00")
    query = post(http, sims, "ZJ", "5205", {"omsgid": mid})["output"]
    assert (query["found"], query["infno"], query["status"]) == (True, "2207", "reversed")


def test_2208_void_is_idempotent_and_unknown_is_refused(sims, http):
    out = post(http, sims, "ZJ", "2207", settle_input())["output"]
    void = {"psn_no": "33000012345678", "setl_id": "HUB-S-0001", "insurer_setl_id": out["insurer_setl_id"]}
    first = post(http, sims, "ZJ", "2208", void)
    again = post(http, sims, "ZJ", "2208", void)
    assert first["output"] == again["output"]
    assert first["output"]["status"] == "voided" and first["output"]["balc"] == "1234.56"
    assert first["output"]["accum"]["fund_pay_accu"] == "3200.00"
    assert refusal(post(http, sims, "ZJ", "2208", dict(void, setl_id="NOPE"))) == "SETL_NOT_FOUND"


# -- 3201, 3202 --------------------------------------------------------------------------------------


def test_reconciliation_total_and_detail(sims, http):
    a = post(http, sims, "ZJ", "2207", settle_input("R1"))["output"]
    post(http, sims, "ZJ", "2207", settle_input("R2", version=18, acct="0.00", cash="9.30"))
    post(http, sims, "ZJ", "2207", dict(settle_input("OTHER-DAY", version=19), setl_time="2024-03-16 08:00:00"))
    day = {"stmt_date": "2024-03-15", "mdtrtarea_admvs": "310000"}
    balanced = post(http, sims, "ZJ", "3201", dict(day, setl_cnt=2, medfee_sumamt="74.40",
                                                    fund_pay_sumamt="55.80", acct_pay="9.30"))["output"]
    assert balanced == {"stmt_rslt": "0", "setl_cnt": 2, "medfee_sumamt": "74.40",
                        "fund_pay_sumamt": "55.80", "acct_pay": "9.30"}
    assert post(http, sims, "ZJ", "3201", dict(day, setl_cnt=1, medfee_sumamt="37.20", fund_pay_sumamt="27.90",
                                               acct_pay="9.30"))["output"]["stmt_rslt"] == "1"
    # A district outside the settlements' area sees none of them.
    other = post(http, sims, "ZJ", "3201", {"stmt_date": "2024-03-15", "mdtrtarea_admvs": "310104", "setl_cnt": 0,
                                            "medfee_sumamt": "0", "fund_pay_sumamt": "0", "acct_pay": "0"})
    assert other["output"]["stmt_rslt"] == "0"
    detail = post(http, sims, "ZJ", "3202", dict(day, setl_ids=[
        {"setl_id": "R1", "medfee_sumamt": "37.20", "fund_pay_sumamt": "27.90", "acct_pay": "1.00"},
        {"setl_id": "GHOST", "medfee_sumamt": "1.00", "fund_pay_sumamt": "0.00", "acct_pay": "0.00"}]))["output"]
    assert detail["missing_at_insurer"] == ["GHOST"]
    assert [u["setl_id"] for u in detail["unknown_to_hub"]] == ["R2"]
    assert detail["amount_mismatch"] == [{"setl_id": "R1", "insurer_setl_id": a["insurer_setl_id"],
                                          "fields": {"acct_pay": {"hub": "1.00", "insurer": "9.30"}}}]


def test_a_voided_settlement_leaves_reconciliation(sims, http):
    out = post(http, sims, "ZJ", "2207", settle_input())["output"]
    post(http, sims, "ZJ", "2208", {"psn_no": "33000012345678", "setl_id": "HUB-S-0001",
                                    "insurer_setl_id": out["insurer_setl_id"]})
    total = post(http, sims, "ZJ", "3201", {"stmt_date": "2024-03-15", "mdtrtarea_admvs": "310000", "setl_cnt": 0,
                                            "medfee_sumamt": "0.00", "fund_pay_sumamt": "0.00", "acct_pay": "0.00"})
    assert total["output"]["stmt_rslt"] == "0" and total["output"]["setl_cnt"] == 0


# -- transfers ---------------------------------------------------------------------------------------


def transfer_out(http, sims, tid="T1", province="ZJ", certno=LISI, name="李四", to="310118", mid=None):
    return post(http, sims, province, "4101", {"transfer_id": tid, "certno": certno, "psn_name": name,
                                               "insutype": "310", "to_admdvs": to}, mid)


def test_transfer_zj_to_sh_end_to_end(sims, http):
    out = transfer_out(http, sims)["output"]
    assert out["psn_no"] == "33000012345678" and out["insu_months"] == 165 and out["acct_balc"] == "1234.56"
    assert sims.person("ZJ", LISI)["insuinfo"][0]["psn_insu_stas"] == "4"
    funds = post(http, sims, "ZJ", "4102", {"transfer_id": "T1", "cert_no": out["cert_no"], "amount": "1234.56",
                                            "to_admdvs": "310118"})["output"]
    opened = post(http, sims, "SH", "4201", {
        "transfer_id": "T1", "cert_no": out["cert_no"], "from_admdvs": "330421", "certno": LISI, "psn_name": "李四",
        "insutype": "310", "insu_months": 165, "acct_balc": "1234.56", "fund_txn_id": funds["fund_txn_id"]},
        insuplc="310118")["output"]
    assert opened["insu_months_total"] == 165 and opened["psn_no"].startswith("31")
    sh = post(http, sims, "SH", "1101", {"mdtrt_cert_type": "02", "mdtrt_cert_no": LISI})["output"]
    assert sh["insuinfo"][0]["insuplc_admdvs"] == "310118" and sh["insuinfo"][0]["balc"] == "1234.56"
    assert sims.person("ZJ", LISI)["insuinfo"][0]["balc"] == Decimal("0.00")
    # The destination used the record: the origin can no longer cancel.
    cancel = post(http, sims, "ZJ", "4103", {"transfer_id": "T1", "cert_no": out["cert_no"],
                                             "fund_txn_id": funds["fund_txn_id"]})
    assert refusal(cancel) == "CERT_INVALID"
    assert [e["kind"] for e in sims.ledger("ZJ")] == ["transfer_out", "transfer_funds"]
    assert [e["kind"] for e in sims.ledger("SH")] == ["transfer_in"]


def test_transfer_cancel_restores_coverage_and_funds(sims, http):
    out = transfer_out(http, sims)["output"]
    funds = post(http, sims, "ZJ", "4102", {"transfer_id": "T1", "cert_no": out["cert_no"], "amount": "1234.56",
                                            "to_admdvs": "310118"})["output"]
    assert post(http, sims, "ZJ", "4103", {"transfer_id": "T1", "cert_no": out["cert_no"],
                                           "fund_txn_id": funds["fund_txn_id"]})["output"] == {"restored": True}
    coverage = sims.person("ZJ", LISI)["insuinfo"][0]
    assert (coverage["psn_insu_stas"], coverage["balc"]) == ("1", Decimal("1234.56"))
    # The record is dead: the destination refuses it.
    opened = post(http, sims, "SH", "4201", {
        "transfer_id": "T1", "cert_no": out["cert_no"], "from_admdvs": "330421", "certno": LISI, "psn_name": "李四",
        "insutype": "310", "insu_months": 165, "acct_balc": "1234.56", "fund_txn_id": funds["fund_txn_id"]})
    assert refusal(opened) == "CERT_INVALID"


def test_transfer_cancel_must_name_the_funds_that_moved(sims, http):
    out = transfer_out(http, sims)["output"]
    post(http, sims, "ZJ", "4102", {"transfer_id": "T1", "cert_no": out["cert_no"], "amount": "1234.56",
                                    "to_admdvs": "310118"})
    assert refusal(post(http, sims, "ZJ", "4103", {"transfer_id": "T1", "cert_no": out["cert_no"]})) == "FUNDS_MISMATCH"


def test_transfer_funds_must_match_the_record(sims, http):
    out = transfer_out(http, sims)["output"]
    assert refusal(post(http, sims, "ZJ", "4102", {"transfer_id": "T1", "cert_no": out["cert_no"],
                                                   "amount": "1000.00", "to_admdvs": "310118"})) == "FUNDS_MISMATCH"


def test_transfer_is_keyed_by_transfer_id_even_on_ah(sims, http):
    first = transfer_out(http, sims, "T9", "AH", "340104197506060010", "刘洋", "320106")
    again = transfer_out(http, sims, "T9", "AH", "340104197506060010", "刘洋", "320106")  # a new msgid
    assert first["output"] == again["output"]
    assert len(sims.ledger("AH")) == 1


@pytest.mark.parametrize(("province", "certno", "name", "code"), [
    ("SH", "310115198811200030", "孙强", "ARREARS"),
    ("AH", "340202196808300073", "郑磊", "PENDING_SETTLEMENT"),
    ("SH", "310118199201010049", "赵敏", "NOT_ACTIVE"),
])
def test_transfer_out_refusals(sims, http, province, certno, name, code):
    assert refusal(transfer_out(http, sims, "T2", province, certno, name, "330106")) == code
    assert sims.ledger(province) == []


def test_transfer_in_refuses_duplicate_coverage(sims, http):
    out = transfer_out(http, sims, "T3", "ZJ", "330106198504120089", "钱芳", "310106")["output"]
    funds = post(http, sims, "ZJ", "4102", {"transfer_id": "T3", "cert_no": out["cert_no"], "amount": out["acct_balc"],
                                            "to_admdvs": "310106"})["output"]
    opened = post(http, sims, "SH", "4201", {
        "transfer_id": "T3", "cert_no": out["cert_no"], "from_admdvs": "330106", "certno": "330106198504120089",
        "psn_name": "钱芳", "insutype": "310", "insu_months": out["insu_months"], "acct_balc": out["acct_balc"],
        "fund_txn_id": funds["fund_txn_id"]})
    assert refusal(opened) == "DUPLICATE_COVERAGE"


def test_2601_of_4102_gives_the_funds_back(sims, http):
    out = transfer_out(http, sims)["output"]
    mid = msgid()
    post(http, sims, "ZJ", "4102", {"transfer_id": "T1", "cert_no": out["cert_no"], "amount": "1234.56",
                                    "to_admdvs": "310118"}, mid)
    assert sims.person("ZJ", LISI)["insuinfo"][0]["balc"] == Decimal("0.00")
    post(http, sims, "ZJ", "2601", {"psn_no": "33000012345678", "omsgid": mid, "oinfno": "4102"})
    assert sims.person("ZJ", LISI)["insuinfo"][0]["balc"] == Decimal("1234.56")


# -- faults and observation at the HTTP level ------------------------------------------------------


def test_maintenance_answers_503_with_retry_after_and_processes_nothing(sims, http):
    sims.set_faults("ZJ", maintenance=True, retry_after=120)
    response = http.post(f"{sims.urls['ZJ']}/api/2207", json={"infno": "2207", "msgid": msgid(),
                                                               "input": settle_input()})
    assert (response.status_code, response.headers["Retry-After"]) == (503, "120")
    assert sims.ledger("ZJ") == [] and len(sims.received("ZJ")) == 1


def test_drop_answer_processes_then_resets(sims, http):
    sims.set_faults("ZJ", next_faults=["drop"])
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        post(http, sims, "ZJ", "2207", settle_input())
    assert len(sims.ledger("ZJ")) == 1  # committed, although nobody heard


def test_a_fixed_latency_counts_from_the_request_and_holds_the_processed_answer(sims, http):
    # The answer leaves latency_ms after the request came in, whatever processing took (the
    # benchmark subtracts exactly that): processed at once, then held.
    import threading
    import time

    sims.set_latency(800, "ZJ")
    answers: list[dict] = []
    started = time.monotonic()
    call = threading.Thread(target=lambda: answers.append(post(http, sims, "ZJ", "2207", settle_input())))
    call.start()
    wait_until(lambda: sims.ledger("ZJ"), 20, "the commit")  # committed ...
    answered_early = bool(answers)  # ... while the answer is still held
    call.join()
    assert not answered_early and answers[0]["infcode"] == 0
    assert time.monotonic() - started >= 0.8


def test_reset_before_processing_commits_nothing(sims, http):
    sims.set_faults("ZJ", next_faults=["reset"])
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        post(http, sims, "ZJ", "2207", settle_input())
    assert sims.ledger("ZJ") == [] and len(sims.received("ZJ", "2207")) == 1


def test_control_endpoint_sets_faults_and_serves_the_ledger(sims, http):
    assert http.post(f"{sims.urls['JS']}/_sim/faults", json={"next_faults": ["non_json"]}).status_code == 200
    response = http.post(f"{sims.urls['JS']}/api/1101", json={"infno": "1101", "msgid": msgid(), "input": {
        "mdtrt_cert_type": "02", "mdtrt_cert_no": "320106199302110053"}})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert http.post(f"{sims.urls['JS']}/_sim/faults", json={"bogus": 1}).status_code == 400
    assert http.get(f"{sims.urls['JS']}/_sim/ledger").json() == []
    assert len(http.get(f"{sims.urls['JS']}/_sim/received").json()) == 1


def test_ledger_is_persisted_for_inspection(sims, http, tmp_path):
    post(http, sims, "ZJ", "2207", settle_input())
    saved = json.loads((tmp_path / "ledger.json").read_text(encoding="utf-8"))
    assert [e["setl_id"] for e in saved["ZJ"]] == ["HUB-S-0001"] and saved["AH"] == []


def test_malformed_envelope_is_400(sims, http):
    assert http.post(f"{sims.urls['SH']}/api/1101", content=b"not json").status_code == 400
    assert http.post(f"{sims.urls['SH']}/api/1101", json={"infno": "2207", "msgid": "x"}).status_code == 400
    assert http.post(f"{sims.urls['SH']}/api/9999", json={}).status_code == 404


@pytest.mark.parametrize(("kind", "commits"), [("429", 0), ("503", 0), ("502", 1), ("504", 1)])
def test_busy_faults_process_like_a_gateway_would(sims, http, kind, commits):
    sims.set_faults("ZJ", next_faults=[kind])
    response = http.post(f"{sims.urls['ZJ']}/api/2207", json={"infno": "2207", "msgid": msgid(),
                                                               "input": settle_input()})
    assert response.status_code == int(kind) and "Retry-After" not in response.headers
    assert len(sims.ledger("ZJ")) == commits


def test_unknown_fault_kind_is_refused(sims):
    with pytest.raises(ValueError):
        sims.set_faults("ZJ", next_faults=["explode"])


@pytest.mark.parametrize("province,content_type,closes", [
    ("SH", "application/json", True), ("JS", "application/json", False),
    ("ZJ", "application/json; charset=utf-8", False), ("AH", "application/json; charset=utf-8", True),
])
def test_provinces_differ_where_the_contract_leaves_the_choice(sims, province, content_type, closes):
    """Charset or none, a connection closed after each answer or kept, extra fields, output first:
    each a choice insurer-api.md leaves to the platform, made differently across provinces."""
    envelope = {"infno": "1101", "msgid": msgid(), "input": {"mdtrt_cert_type": "02", "mdtrt_cert_no": LISI}}
    with httpx.Client(timeout=5, trust_env=False) as client:
        r = client.post(f"{sims.urls[province]}/api/1101", json=envelope)
    assert r.headers["content-type"] == content_type
    assert (r.headers.get("connection") == "close") is closes
    answer = r.json()
    assert list(answer)[0] == "output" and {"warn_msg", "cainfo"} <= set(answer)
    assert answer["inf_refmsgid"] != envelope["msgid"]
