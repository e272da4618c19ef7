"""The patient's ``/api/me`` calls and the corrections' answers, byte for byte, as they were before
their models were declared (issue #17, item 6): the fields in the handlers' order, Chinese text
as UTF-8 (not ``\\u`` escapes), no spaces, the coded errors. Real requests to a real hub wired to
the simulated platforms.

Every answer is also checked against ``/openapi.json`` (``tests.support.openapi``): its status
documented, its body fitting the documented schema, and an accepted body fitting the request's.

Fixed answers are compared with literal bytes; answers holding what the hub draws or the clock
gives (ids, times, deadlines) are compared with the compact UTF-8 serialisation of what they
hold, in the order listed here, so that both the bytes and the order are pinned.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from tests.support.portal import CHEN, LISI, sign_in
from hub import api_models as m
from settlement.schemas import TransferPublic, Transfers
from tests.support.openapi import check_every_answer, error, round_trips
from tests.support.platforms import platforms
from tests.support.visits import OTHER, SH_H, ZJ_H, sh_visit, zj_visit

CORRECTION = ["id", "status", "resource", "hospital", "kind", "text", "created", "deadline", "overdue",
              "answer", "withdrawn", "versions"]
TRANSFER = ["id", "status", "from_admdvs", "to_admdvs", "insutype", "created", "refusal",
            "cancel_requested", "steps"]
STEP = ["infno", "status", "deadline", "overdue", "done_at", "outcome", "attempts"]
ENTRY = ["time", "organisation", "purpose", "reason", "outcome", "what"]
JSON_HEADERS = {"Content-Type": "application/json"}


@pytest.fixture
def sims():
    """The hub's simulator only: these answers are the hub's, whichever platform answers 1101."""
    running = platforms("simulator")
    yield running
    running.stop()


def exact(answer: httpx.Response, keys: list[str], status: int = 200, model=None) -> dict:
    """The answer's JSON, after checking its status, that its bytes are the compact UTF-8
    serialisation of what it holds, that its fields come in ``keys``' order and that ``model``
    (its documented model) writes it back byte for byte."""
    assert answer.status_code == status, answer.text
    if model is not None:
        round_trips(model, answer)
    held = answer.json()
    assert answer.content == json.dumps(held, ensure_ascii=False, separators=(",", ":")).encode()
    assert list(held) == keys
    return held


@contextmanager
def session(url: str, person: tuple[str, str, str]):
    """A client signed in as ``person`` whose every answer is checked against the document."""
    client = check_every_answer(sign_in(url, person))
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def party(portal, engine):
    """A client for a hospital (or ``admin``), with 李四's two visits stored."""
    from hub.auth import create_token

    tokens = {h: create_token(engine, "hospital", h) for h in (ZJ_H, SH_H, OTHER)}
    tokens["admin"] = create_token(engine, "admin", None)

    def client(name: str) -> httpx.Client:
        return check_every_answer(httpx.Client(base_url=portal.url, timeout=30,
                                               headers={"Authorization": f"Bearer {tokens[name]}"}))

    now = datetime.now(timezone.utc)
    with client(ZJ_H) as zj:
        assert zj.post("/ingest/zj", content=zj_visit(now - timedelta(days=2))).json()["stored"] == 1
    with client(SH_H) as sh:
        assert b"MSA|AA" in sh.post("/ingest/sh", content=sh_visit(SH_H, now - timedelta(hours=3))).content
    return client


def test_me_sharing_and_the_write_guards(portal):
    with session(portal.url, LISI) as lisi:
        me = lisi.get("/api/me")
        round_trips(m.Me, me)
        assert (me.status_code, me.content) == (200, (
            '{"name":"李四","resident_id":"3304**********002X","province":"ZJ","coverage":'
            '[{"insutype":"310","insuplc_admdvs":"330421","psn_insu_stas":"1"}]}').encode())
        default = b'{"cross_province":true,"sensitive":{"mental":false,"hiv":false,"sti":false}}'
        assert lisi.get("/api/me/sharing").content == default
        chosen = lisi.put("/api/me/sharing", json={"sensitive": {"hiv": True}, "cross_province": False})
        assert (chosen.status_code, chosen.content) == (
            200, b'{"cross_province":false,"sensitive":{"mental":false,"hiv":true,"sti":false}}')
        assert lisi.get("/api/me/sharing").content == chosen.content
        round_trips(m.SharingChoices, chosen)
        bad = lisi.put("/api/me/sharing", json={"cross_province": "no"})
        assert (bad.status_code, bad.content) == (400, error("INVALID_SHARING", "cross_province must be true or false"))
        assert lisi.put("/api/me/sharing", json={"cross_province": True, "sensitive": {"cancer": True}}).content \
            == error("INVALID_SHARING", "sensitive takes only mental, hiv, sti")
        plain = lisi.put("/api/me/sharing", content=b"{}", headers={"Content-Type": "text/plain"})
        assert (plain.status_code, plain.content) == (415, error(
            "UNSUPPORTED_MEDIA_TYPE", "写操作需要 Content-Type: application/json。"))
        broken = lisi.put("/api/me/sharing", content=b"{nope", headers=JSON_HEADERS)
        assert (broken.status_code, broken.content) == (400, error("INVALID_JSON", "请求内容不是有效的 JSON。"))
        foreign = lisi.put("/api/me/sharing", content=b"{}", headers={**JSON_HEADERS, "Origin": "https://evil.example"})
        assert (foreign.status_code, foreign.content) == (403, error("CROSS_ORIGIN", "不接受来自其他网站的请求。"))
    with check_every_answer(httpx.Client(base_url=portal.url)) as nobody:
        signed_out = nobody.get("/api/me")
    assert (signed_out.status_code, signed_out.content) == (401, error("NO_SESSION", "请先登录（没有有效的会话）。"))


def test_access_log_and_transfers(portal, party):
    with party(SH_H) as sh:
        found = sh.get("/fhir/Patient", params={"identifier": f"urn:oid:2.16.156.10011.1.3|{LISI[2]}"})
        assert found.status_code == 200
    with session(portal.url, LISI) as lisi, session(portal.url, CHEN) as chen:
        log = exact(lisi.get("/api/me/access-log"), ["entries"], model=m.AccessLog)
        assert log["entries"] and all(list(e) == ENTRY for e in log["entries"])
        assert list(log["entries"][0]["organisation"]) == ["code", "name"]
        assert chen.get("/api/me/access-log").content == b'{"entries":[]}'
        assert chen.get("/api/me/transfers").content == b'{"transfers":[]}'

        created = exact(lisi.post("/api/me/transfers", json={"to_admdvs": "310118", "insutype": "310"}),
                        TRANSFER, 201, TransferPublic)
        assert all(list(s) == STEP for s in created["steps"])
        assert created["from_admdvs"] == "330421" and created["refusal"] is None
        shown = exact(lisi.get(f"/api/me/transfers/{created['id']}"), TRANSFER, model=TransferPublic)
        listed = exact(lisi.get("/api/me/transfers"), ["transfers"], model=Transfers)
        assert [t["id"] for t in listed["transfers"]] == [shown["id"]]
        running = lisi.post("/api/me/transfers", json={"to_admdvs": "320509", "insutype": "310"})
        if running.status_code == 409:  # the first is still running
            assert running.content == error("TRANSFER_IN_PROGRESS",
                                             "您已有一笔正在办理的转移申请，请等它办结或先撤销后再申请。")
        else:  # the first had ended: this one is the running one
            exact(running, TRANSFER, 201)
        place = lisi.post("/api/me/transfers", json={"to_admdvs": "31", "insutype": "310"})
        assert (place.status_code, place.content) == (400, error(
            "BAD_PLACE", "请选择转入地（六位行政区划代码，具体到区县）。"))
        assert lisi.post("/api/me/transfers", json=[]).content == error("INVALID_JSON", "请求内容应为 JSON 对象。")
        theirs = chen.get(f"/api/me/transfers/{created['id']}")
        assert (theirs.status_code, theirs.content) == (404, error("NOT_FOUND", "未找到该转移申请。"))
        cancel = chen.post(f"/api/me/transfers/{created['id']}/cancel", json={})
        assert (cancel.status_code, cancel.content) == (404, theirs.content)


def test_corrections_both_sides(portal, party):
    with session(portal.url, LISI) as lisi, session(portal.url, CHEN) as chen:
        bundle = lisi.get("/api/me/records").json()
        condition = next(f"Condition/{e['resource']['id']}" for e in bundle["entry"]
                         if e["resource"]["resourceType"] == "Condition" and "F32.900" in str(e["resource"]))
        created = exact(lisi.post("/api/me/corrections", json={"resource": condition, "kind": "wrong",
                                                               "text": " 诊断写错了 "}), CORRECTION, 201, m.CorrectionPublic)
        assert (created["status"], created["text"], created["answer"], created["withdrawn"]) == (
            "open", "诊断写错了", None, None)
        assert list(created["hospital"]) == ["code", "name"] and list(created["versions"]) == ["before", "after"]
        again = lisi.post("/api/me/corrections", json={"resource": condition, "kind": "other", "text": "x"})
        assert (again.status_code, again.content) == (409, error("CORRECTION_OPEN", "这条记录已有一项正在处理的更正申请。"))
        bad = lisi.post("/api/me/corrections", json={"resource": condition, "kind": "mine", "text": "x"})
        assert (bad.status_code, bad.content) == (422, error(
            "INVALID_CORRECTION", "请选择更正类型：不是我的记录、内容有误、内容不完整或其他。"))
        assert lisi.post("/api/me/corrections", json=[1]).content == error("INVALID_CORRECTION", "请求内容应为 JSON 对象。")
        missing = chen.post("/api/me/corrections", json={"resource": condition, "kind": "wrong", "text": "x"})
        assert (missing.status_code, missing.content) == (404, error("NOT_FOUND", "您的健康档案中没有这条记录。"))
        assert exact(lisi.get(f"/api/me/corrections/{created['id']}"), CORRECTION) == created
        assert exact(lisi.get("/api/me/corrections"), ["corrections"], model=m.CorrectionList) == {
            "corrections": [created]}
        assert chen.get(f"/api/me/corrections/{created['id']}").content == error("NOT_FOUND", "未找到该更正申请。")

        with party(ZJ_H) as zj, party(OTHER) as other, party("admin") as admin:
            assert exact(zj.get("/corrections", params={"status": "open"}), ["corrections"]) == {
                "corrections": [created]}
            assert other.get("/corrections").content == b'{"corrections":[]}'
            assert other.get(f"/corrections/{created['id']}").content == error(
                "NOT_FOUND", f"correction {created['id']} is not known")
            assert zj.get("/corrections", params={"status": "new"}).content == error(
                "INVALID_STATUS", "status: must be one of open, corrected, rejected, withdrawn")
            assert admin.get("/corrections").content == error(
                "FORBIDDEN", "only the hospital a correction is addressed to may see or answer it")
            unchanged = zj.post(f"/corrections/{created['id']}/answer",
                                json={"decision": "corrected", "reason": "已改"})
            version = created["versions"]["before"]
            assert (unchanged.status_code, unchanged.content) == (409, error("NOT_CORRECTED", (
                f"{condition} is still version {version}, as when the correction was opened: "
                "re-send the record first")))
            no_reason = zj.post(f"/corrections/{created['id']}/answer", json={"decision": "rejected"})
            assert (no_reason.status_code, no_reason.content) == (422, error(
                "INVALID_ANSWER", "reason: Field required"))
            unreadable = zj.post(f"/corrections/{created['id']}/answer", content=b"{no")
            assert (unreadable.status_code, unreadable.content) == (400, error("INVALID_JSON", "the body is not JSON"))
            answered = exact(zj.post(f"/corrections/{created['id']}/answer",
                                     json={"decision": "rejected", "reason": "诊断无误"}), CORRECTION,
                             model=m.CorrectionPublic)
            assert list(answered["answer"]) == ["decision", "reason", "time"]
            assert exact(zj.get(f"/corrections/{created['id']}"), CORRECTION) == answered
            closed = zj.post(f"/corrections/{created['id']}/answer", json={"decision": "rejected", "reason": "x"})
            assert (closed.status_code, closed.content) == (409, error(
                "CORRECTION_CLOSED", f"correction {created['id']} is already rejected"))
        late = lisi.post(f"/api/me/corrections/{created['id']}/withdraw", json={})
        assert (late.status_code, late.content) == (409, error(
            "CORRECTION_CLOSED", "这项更正申请已经处理完毕或已撤回，不能再撤回。"))
        second = exact(lisi.post("/api/me/corrections", json={"resource": condition, "kind": "other",
                                                              "text": "再问"}), CORRECTION, 201)
        withdrawn = exact(lisi.post(f"/api/me/corrections/{second['id']}/withdraw", json={}), CORRECTION,
                          model=m.CorrectionPublic)
        assert withdrawn["status"] == "withdrawn" and withdrawn["withdrawn"]
