"""The settlement endpoints' answers, byte for byte, as hub-interface.md fixes them and as they
were before their models were declared (issue #17, item 6): money as two-place strings, the
fields in the interface's order, the coded errors. Real requests to a real hub on the simulated
platforms (the answers are the hub's own; which platform implementation answers it does not
change them, so only the simulator runs here).

Every answer is also checked against ``/openapi.json`` (``tests.support.openapi``): its status
documented, its body fitting the documented schema, and an accepted body fitting the request's.

Values the hub draws (``setl_id``, the platform's ``insurer_setl_id``) are taken from the answer
and put back into the expected bytes; everything else is literal.
"""

from __future__ import annotations

from datetime import datetime

import pytest

from mappers.region import CST
from settlement.schemas import Clearing, Reconciliation, SettlementPublic
from tests.support.openapi import check_every_answer, round_trips
from tests.support.platforms import platforms
from tests.support.settlement import XIHU, body

SPLIT = (b'{"medfee_sumamt":"37.20","fulamt_ownpay_amt":"0.00","overlmt_selfpay":"0.00",'
         b'"preselfpay_amt":"0.00","inscp_scp_amt":"37.20","act_pay_dedc":"0.00","hifp_pay":"27.90",'
         b'"fund_pay_sumamt":"27.90","acct_pay":"9.30","psn_cash_pay":"0.00"}')
ZEROS = b'{"SH":"0.00","JS":"0.00","ZJ":"0.00","AH":"0.00"}'


@pytest.fixture
def sims():
    """The hub's simulator only (see the module's docstring)."""
    running = platforms("simulator")
    yield running
    running.stop()


def error(code: str, message: str) -> bytes:
    return b'{"error":{"code":"%s","message":"%s"}}' % (code.encode(), message.encode())


def settled(answer) -> bytes:
    ids = answer.json()
    return (b'{"setl_id":"%s","status":"settled","insurer_setl_id":"%s","split":%s,"refusal":null}'
            % (ids["setl_id"].encode(), ids["insurer_setl_id"].encode(), SPLIT))


def test_presettle_computed_refused_invalid_and_unavailable(shub, sims):
    with check_every_answer(shub.client(shub.token("insurer", "SH"))) as c:
        computed = c.post("/settlement/presettle", json=body("P-1"))
        assert (computed.status_code, computed.content) == (200, (
            b'{"setl_id":null,"status":"computed","insurer_setl_id":null,"split":%s,"refusal":null}' % SPLIT))
        assert computed.headers["content-type"] == "application/json"
        round_trips(SettlementPublic, computed)
        mismatch = c.post("/settlement/presettle", json=body("P-2", lines=[
            {"med_list_codg": "XJ01CAA040A001", "cnt": "2", "pric": "18.60", "det_item_fee_sumamt": "37.21"}]))
        assert (mismatch.status_code, mismatch.content) == (422, error(
            "LINE_AMOUNT_MISMATCH", "lines[0].det_item_fee_sumamt: 37.21 is not 2 x 18.60 = 37.20"))
        assert c.post("/settlement/presettle", content=b"{not json").content == error(
            "INVALID_BODY", "the body is not JSON")
        assert c.post("/settlement/presettle", json=[]).content == error(
            "INVALID_BODY", "the body must be a JSON object")
        missing = c.post("/settlement/presettle", json=body("P-3", visit_time=""))
        assert (missing.status_code, missing.content) == (422, error("MISSING_FIELD", "visit_time: required"))
        assert c.post("/settlement/presettle", json=body("P-4", hospital="H99999999999")).content == error(
            "UNKNOWN_HOSPITAL", "fixmedins_code: not a hospital of the region")
    with check_every_answer(shub.client(shub.token("insurer", "ZJ"))) as c:
        refused = c.post("/settlement/presettle", json=body("P-5", cert="330106198504120089",
                                                            insuplc="310106", hospital=XIHU))
        assert refused.status_code == 200
        assert refused.content.startswith(b'{"setl_id":null,"status":"refused","insurer_setl_id":null,'
                                          b'"split":null,"refusal":{"code":"NOT_FILED","message":"')
        assert refused.content.endswith(b'"}}') and "备案".encode() in refused.content
        round_trips(SettlementPublic, refused)
        forbidden = c.post("/settlement/presettle", json=body("P-6"))
        assert (forbidden.status_code, forbidden.content) == (403, error(
            "FORBIDDEN", "only the insurance platform of the hospital's province may do this"))
    sims.set_faults("ZJ", maintenance=True, retry_after=30)
    with check_every_answer(shub.client(shub.token("insurer", "SH"))) as c:
        down = c.post("/settlement/presettle", json=body("P-7"))
    assert (down.status_code, down.content) == (503, error(
        "PLATFORM_UNAVAILABLE", "the insured place's platform cannot be reached: PlatformBusy"))


def test_settle_read_void_and_their_errors(shub, sims):
    with check_every_answer(shub.client(shub.token("insurer", "SH"))) as c:
        first = c.post("/settlement/settle", json=body("S-1"))
        assert (first.status_code, first.content) == (200, settled(first))
        assert "location" not in first.headers
        again = c.post("/settlement/settle", json=body("S-1"))
        assert (again.status_code, again.content) == (200, first.content)
        reused = c.post("/settlement/settle", json=body("S-1", mdtrt_id="OTHER"))
        assert (reused.status_code, reused.content) == (409, error(
            "REQUEST_KEY_REUSED", "this request_key was used with another body"))
        setl_id = first.json()["setl_id"]
        assert c.get(f"/settlement/{setl_id}").content == first.content
        unknown = c.get("/settlement/YSNOSUCH")
        assert (unknown.status_code, unknown.content) == (404, error("NOT_FOUND", "no settlement YSNOSUCH"))
        voided = c.post(f"/settlement/{setl_id}/void")
        assert (voided.status_code, voided.content) == (200, settled(first).replace(
            b'"status":"settled"', b'"status":"voided"'))
        for answer in (first, voided):
            round_trips(SettlementPublic, answer)
        assert c.post(f"/settlement/{setl_id}/void").content == voided.content
    with check_every_answer(shub.client(shub.token("insurer", "ZJ"))) as c:
        refused = c.post("/settlement/settle", json=body("S-2", cert="330106198504120089",
                                                         insuplc="310106", hospital=XIHU))
        refused_id = refused.json()["setl_id"]
        assert refused.content.startswith(b'{"setl_id":"%s","status":"refused","insurer_setl_id":null,'
                                          b'"split":null,"refusal":{"code":"NOT_FILED","message":"'
                                          % refused_id.encode())
        not_settled = c.post(f"/settlement/{refused_id}/void")
        assert (not_settled.status_code, not_settled.content) == (409, error(
            "NOT_SETTLED", f"settlement {refused_id} is refused, not settled"))
        assert c.get(f"/settlement/{setl_id}").status_code == 403
    with check_every_answer(shub.client()) as anonymous:
        nobody = anonymous.get(f"/settlement/{setl_id}")
    assert nobody.status_code == 401 and nobody.json()["error"]["code"] == "UNAUTHENTICATED"


def test_pending_is_202_with_a_location(shub, sims):
    sims.set_faults("ZJ", maintenance=True, retry_after=1)
    with check_every_answer(shub.client(shub.token("insurer", "SH"))) as c:
        pending = c.post("/settlement/settle", json=body("S-3"))
    setl_id = pending.json()["setl_id"]
    assert (pending.status_code, pending.headers["location"]) == (202, f"/settlement/{setl_id}")
    assert pending.content == (b'{"setl_id":"%s","status":"pending","insurer_setl_id":null,"split":null,'
                               b'"refusal":null}' % setl_id.encode())
    round_trips(SettlementPublic, pending)


def test_reconcile_and_clearing(shub, sims):
    with check_every_answer(shub.client(shub.token("insurer", "SH"))) as c:
        done = c.post("/settlement/settle", json=body("R-1")).json()
    sims.lose_settlement("ZJ", done["setl_id"])
    today = datetime.now(CST).date()
    with check_every_answer(shub.client(shub.token("admin"))) as admin:
        found = admin.post("/settlement/reconcile", json={"date": today.isoformat()})
        assert (found.status_code, found.content) == (200, (
            b'{"date":"%s","balanced":[],"differences":[{"insuplc":"ZJ","mdtrtarea":"SH","setl_id":"%s",'
            b'"kind":"missing_at_insurer","hub":{"medfee_sumamt":"37.20","fund_pay_sumamt":"27.90",'
            b'"acct_pay":"9.30"},"insurer":null}]}' % (today.isoformat().encode(), done["setl_id"].encode())))
        round_trips(Reconciliation, found)
        quiet = admin.post("/settlement/reconcile", json={"date": "2001-01-01"})
        assert quiet.content == b'{"date":"2001-01-01","balanced":[],"differences":[]}'
        for bad in (b'{"date": "15/03/2024"}', b"[]", b"{}", b"not json"):
            answer = admin.post("/settlement/reconcile", content=bad)
            assert (answer.status_code, answer.content) == (422, error(
                "INVALID_DATE", 'the body must be {\\"date\\": \\"YYYY-MM-DD\\"}'))
        month = today.strftime("%Y-%m")
        clearing = admin.get("/settlement/clearing", params={"month": month})
        assert (clearing.status_code, clearing.content) == (200, (
            b'{"month":"%s","owed":{"SH":%s,"JS":%s,"ZJ":{"SH":"37.20","JS":"0.00","ZJ":"0.00","AH":"0.00"},'
            b'"AH":%s},"net":{"SH":"37.20","JS":"0.00","ZJ":"-37.20","AH":"0.00"}}'
            % (month.encode(), ZEROS, ZEROS, ZEROS)))
        round_trips(Clearing, clearing)
        for bad in ("2024-13", ""):
            answer = admin.get("/settlement/clearing", params={"month": bad} if bad else None)
            assert (answer.status_code, answer.content) == (422, error("INVALID_MONTH", "month must be YYYY-MM"))
    with check_every_answer(shub.client(shub.token("insurer", "SH"))) as c:
        for answer in (c.post("/settlement/reconcile", json={"date": today.isoformat()}),
                       c.get("/settlement/clearing", params={"month": "2024-03"})):
            assert answer.status_code == 403 and answer.json()["error"]["code"] == "FORBIDDEN"

