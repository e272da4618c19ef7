"""The person's own records and corrections (数据异议), over real sockets: /api/me/records (all of
it, masked, audited as the patient's own access), asking, following, withdrawing, the
hospitals' /corrections and their answers, the deadline on the working-day calendar, and the
``disputed`` tag on every answer holding a resource under an open correction.

Cast (tests.support.visits): 李四 was seen at a Zhejiang hospital (ZJ_H) two days ago and at a
Shanghai hospital (SH_H) three hours ago; 陈建国 (CHEN) has no records.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone

import httpx
import pytest
from sqlalchemy import update

from hub.corrections import Corrections
from hub.models import Correction
from mappers.region import CST
from settlement.transfer import WorkCalendar, add_working_days, load_calendar
from tests.support.portal import CHEN, LISI, session
from tests.support.visits import OTHER, SH_H, ZJ_H, sh_visit, zj_visit

DISPUTED = {"system": "urn:yrdhub:tag", "code": "disputed"}
SHAPE = {"id", "status", "resource", "hospital", "kind", "text", "created", "deadline", "overdue",
         "answer"}


class World:
    """The portal with 李四's two visits and a client per party."""

    def __init__(self, portal, engine):
        from hub.auth import create_token

        self.url, self.engine, self.now = portal.url, engine, datetime.now(timezone.utc)
        self.tokens = {h: create_token(engine, "hospital", h) for h in (ZJ_H, SH_H, OTHER)}
        self.tokens["admin"] = create_token(engine, "admin", None)
        self.tokens["insurer"] = create_token(engine, "insurer", "ZJ")
        self.send_zj(zj_visit(self.now - timedelta(days=2)))
        with self.party(SH_H) as sh:
            assert b"MSA|AA" in sh.post("/ingest/sh", content=sh_visit(SH_H, self.now - timedelta(hours=3))).content

    def party(self, name: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30,
                            headers={"Authorization": f"Bearer {self.tokens[name]}"})

    def send_zj(self, body: bytes) -> dict:
        with self.party(ZJ_H) as zj:
            return zj.post("/ingest/zj", content=body).json()


@pytest.fixture()
def world(portal, engine):
    return World(portal, engine)


def entries(bundle: dict) -> list[dict]:
    return [e["resource"] for e in bundle["entry"] if e.get("search", {}).get("mode", "match") == "match"]


def find(resources: list[dict], res_type: str, text: str) -> dict:
    return next(r for r in resources if r["resourceType"] == res_type and text in str(r))


def my_records(client: httpx.Client) -> list[dict]:
    answer = client.get("/api/me/records")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/fhir+json")
    bundle = answer.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    return [e["resource"] for e in bundle["entry"]]


def ref(resource: dict) -> str:
    return f"{resource['resourceType']}/{resource['id']}"


def ask(client: httpx.Client, resource: str, kind: str = "not_mine", text: str = "我没有得过这个病") -> httpx.Response:
    return client.post("/api/me/corrections", json={"resource": resource, "kind": kind, "text": text})


# -- my records ------------------------------------------------------------------------------------


def test_records_hold_everything_masked_and_the_read_is_audited_as_the_patients_own(world):
    with session(world.url, LISI) as lisi, session(world.url, CHEN) as chen:
        resources = my_records(lisi)
        assert my_records(chen) == []
        log = lisi.get("/api/me/access-log").json()["entries"]
        page = lisi.get("/portal/access-log").text
    types = {r["resourceType"] for r in resources}
    assert {"Patient", "Encounter", "Condition", "Observation", "DiagnosticReport", "ImagingStudy",
            "MedicationRequest", "AllergyIntolerance"} <= types
    # both provinces, and the sensitive diagnosis nobody else may see without her permission
    assert len([r for r in resources if r["resourceType"] == "Encounter"]) == 2
    assert find(resources, "Condition", "F32.900")
    patient = find(resources, "Patient", "")
    assert LISI[2] not in str(resources) and "3304**********002X" in str(patient["identifier"])
    assert any(s["code"] == "MASKED" for s in patient["meta"]["security"])
    assert not any("tag" in r.get("meta", {}) for r in resources)
    own = [e for e in log if e["purpose"] == "patient"]
    assert len(own) == 1 and own[0]["organisation"] == {"code": "SELF", "name": "本人（患者服务门户）"}
    assert own[0]["outcome"] == "allowed" and own[0]["what"].startswith("everything Patient/")
    assert "本人查阅" in page and "全部健康档案" in page
    with world.party("admin") as admin:
        pid = patient["id"]
        events = entries(admin.get("/fhir/AuditEvent", params={"patient": pid}).json())
    mine = [e for e in events if e["purposeOfEvent"][0]["coding"][0]["code"] == "PATRQT"]
    assert len(mine) == 1 and mine[0]["agent"][0]["who"]["reference"] == f"Patient/{pid}"


def test_records_page_shows_visits_newest_first_on_a_phone(world):
    with session(world.url, LISI) as lisi:
        page = lisi.get("/portal/records")
    text = page.text
    assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
    assert 'name="viewport" content="width=device-width' in text
    assert text.index("上海市徐汇区中心医院") < text.index("嘉善县第一人民医院")  # newest first
    for shown in ("急性上呼吸道感染", "抑郁发作", "葡萄糖", "6.8", "mmol/L", "3.9-6.1", "偏高",
                  "双肺纹理增多", "支气管炎改变", "阿莫西林胶囊", "青霉素", "皮疹"):
        assert shown in text, shown
    assert LISI[2] not in text
    links = re.findall(r'href="/portal/records/([A-Za-z]+/[0-9a-f-]+)#ask"', text)
    assert {link.split("/")[0] for link in links} >= {"Condition", "Observation", "DiagnosticReport",
                                                       "ImagingStudy", "MedicationRequest", "AllergyIntolerance"}
    with httpx.Client(base_url=world.url) as nobody:
        assert nobody.get("/portal/records", follow_redirects=False).headers["location"] == "/portal/login"
        assert nobody.get("/api/me/records").status_code == 401


# -- asking ----------------------------------------------------------------------------------------


def test_asking_answers_201_with_the_correction_and_a_deadline_of_10_working_days(world):
    with session(world.url, LISI) as lisi:
        condition = find(my_records(lisi), "Condition", "F32.900")
        created = ask(lisi, ref(condition))
        assert created.status_code == 201, created.text
        body = created.json()
        assert lisi.get(f"/api/me/corrections/{body['id']}").json() == body
        assert lisi.get("/api/me/corrections").json() == {"corrections": [body]}
    assert SHAPE <= set(body)
    assert body["status"] == "open" and body["resource"] == ref(condition) and body["kind"] == "not_mine"
    assert body["hospital"] == {"code": ZJ_H, "name": "嘉善县第一人民医院"}
    assert body["text"] == "我没有得过这个病" and body["answer"] is None and body["overdue"] is False
    created_at = datetime.fromisoformat(body["created"])
    assert created_at.utcoffset() == timedelta(hours=8)
    assert body["deadline"] == add_working_days(created_at.date(), 10, load_calendar()).isoformat()


def test_a_second_open_correction_of_one_resource_is_409(world):
    with session(world.url, LISI) as lisi:
        condition = ref(find(my_records(lisi), "Condition", "F32.900"))
        first = ask(lisi, condition).json()
        second = ask(lisi, condition, "wrong", "诊断写错了")
        assert second.status_code == 409 and second.json()["error"]["code"] == "CORRECTION_OPEN"
        assert lisi.post(f"/api/me/corrections/{first['id']}/withdraw", json={}).status_code == 200
        assert ask(lisi, condition, "wrong", "诊断写错了").status_code == 201  # withdrawn: may ask again


def test_what_is_not_in_the_persons_own_record_is_404(world):
    with session(world.url, LISI) as lisi, session(world.url, CHEN) as chen:
        resources = my_records(lisi)
        theirs = ref(find(resources, "Observation", "葡萄糖"))
        for resource in (theirs, "Condition/no-such-id", "Organization/" + find(resources, "Organization", "")["id"]):
            answer = ask(chen, resource)
            assert answer.status_code == 404 and answer.json()["error"]["code"] == "NOT_FOUND", resource
        not_one_hospitals = ask(lisi, ref(find(resources, "Patient", "")))
        assert not_one_hospitals.status_code == 422
        assert not_one_hospitals.json()["error"]["code"] == "NOT_CORRECTABLE"


@pytest.mark.parametrize("body, field", [
    ({"kind": "not_mine", "text": "x"}, "记录"),
    ({"resource": "Condition", "kind": "not_mine", "text": "x"}, "记录"),
    ({"resource": "Condition/a b", "kind": "not_mine", "text": "x"}, "记录"),
    ({"resource": "RESOURCE", "kind": "mine", "text": "x"}, "更正类型"),
    ({"resource": "RESOURCE", "text": "x"}, "更正类型"),
    ({"resource": "RESOURCE", "kind": "wrong", "text": ""}, "说明"),
    ({"resource": "RESOURCE", "kind": "wrong", "text": "   "}, "说明"),
    ({"resource": "RESOURCE", "kind": "wrong", "text": "错" * 501}, "说明"),
    ({"resource": "RESOURCE", "kind": "wrong", "text": 5}, "说明"),
    (["not", "an", "object"], "JSON 对象"),
])
def test_bad_requests_are_422_saying_which_field(world, body, field):
    with session(world.url, LISI) as lisi:
        resource = ref(find(my_records(lisi), "Condition", "F32.900"))
        if isinstance(body, dict) and body.get("resource") == "RESOURCE":
            body = {**body, "resource": resource}
        answer = lisi.post("/api/me/corrections", json=body)
        assert answer.status_code == 422, answer.text
        error = answer.json()["error"]
        assert error["code"] == "INVALID_CORRECTION" and field in error["message"]
        assert lisi.get("/api/me/corrections").json() == {"corrections": []}
        assert ask(lisi, resource, "wrong", "错" * 500).status_code == 201  # 500 is allowed


def test_writes_need_json_and_a_session(world):
    with session(world.url, LISI) as lisi:
        resource = ref(find(my_records(lisi), "Condition", "F32.900"))
        body = f'{{"resource": "{resource}", "kind": "wrong", "text": "x"}}'
        for ctype in ("application/x-www-form-urlencoded", "text/plain", None):
            headers = {"Content-Type": ctype} if ctype else {}
            assert lisi.post("/api/me/corrections", content=body, headers=headers).status_code == 415
        created = lisi.post("/api/me/corrections", content=body, headers={"Content-Type": "application/json"})
        assert created.status_code == 201
        withdraw = f"/api/me/corrections/{created.json()['id']}/withdraw"
        assert lisi.post(withdraw, content="{}", headers={"Content-Type": "text/plain"}).status_code == 415
    with httpx.Client(base_url=world.url) as nobody:
        for method, path in (("GET", "/api/me/corrections"), ("POST", "/api/me/corrections"),
                             ("GET", "/api/me/corrections/CR1"), ("POST", "/api/me/corrections/CR1/withdraw")):
            answer = nobody.request(method, path, json={})
            assert answer.status_code == 401 and answer.json()["error"]["code"] == "NO_SESSION", path


# -- following and withdrawing -------------------------------------------------------------------


def test_another_persons_correction_is_404_and_withdrawing_is_once(world):
    with session(world.url, LISI) as lisi, session(world.url, CHEN) as chen:
        created = ask(lisi, ref(find(my_records(lisi), "Observation", "葡萄糖")), "wrong", "这不是我的血糖").json()
        path = f"/api/me/corrections/{created['id']}"
        assert chen.get(path).status_code == 404
        assert chen.post(f"{path}/withdraw", json={}).status_code == 404
        assert chen.get("/api/me/corrections").json() == {"corrections": []}
        assert lisi.get(path).json()["status"] == "open"  # chen's attempt changed nothing
        withdrawn = lisi.post(f"{path}/withdraw", json={})
        assert withdrawn.status_code == 200
        assert withdrawn.json()["status"] == "withdrawn" and withdrawn.json()["withdrawn"]
        again = lisi.post(f"{path}/withdraw", json={})
        assert again.status_code == 409 and again.json()["error"]["code"] == "CORRECTION_CLOSED"
        assert lisi.get("/api/me/corrections/CR-nothing").status_code == 404
    with world.party(ZJ_H) as zj:
        late = zj.post(f"/corrections/{created['id']}/answer", json={"decision": "rejected", "reason": "x"})
        assert late.status_code == 409 and late.json()["error"]["code"] == "CORRECTION_CLOSED"


# -- the hospital's side ---------------------------------------------------------------------------


def test_a_hospital_lists_only_its_own_oldest_first(world):
    with session(world.url, LISI) as lisi:
        resources = my_records(lisi)
        first = ask(lisi, ref(find(resources, "Condition", "F32.900"))).json()
        second = ask(lisi, ref(find(resources, "Observation", "葡萄糖")), "wrong", "数值不对").json()
        sh_encounter = next(r for r in resources if r["resourceType"] == "Encounter" and "ZY2099" in str(r))
        third = ask(lisi, ref(sh_encounter), "other", "我那天没去过这家医院").json()
        assert lisi.post(f"/api/me/corrections/{second['id']}/withdraw", json={}).status_code == 200
    assert third["hospital"]["code"] == SH_H
    with world.party(ZJ_H) as zj, world.party(SH_H) as sh:
        mine = zj.get("/corrections").json()["corrections"]
        assert [c["id"] for c in mine] == [first["id"], second["id"]]
        assert [c["id"] for c in zj.get("/corrections", params={"status": "open"}).json()["corrections"]] == [first["id"]]
        assert [c["id"] for c in zj.get("/corrections", params={"status": "withdrawn"}).json()["corrections"]] == [second["id"]]
        assert [c["id"] for c in sh.get("/corrections", params={"status": "open"}).json()["corrections"]] == [third["id"]]
        assert zj.get(f"/corrections/{first['id']}").json()["text"] == "我没有得过这个病"
        assert sh.get(f"/corrections/{first['id']}").status_code == 404
        assert sh.post(f"/corrections/{first['id']}/answer", json={"decision": "rejected", "reason": "x"}).status_code == 404
        bad = zj.get("/corrections", params={"status": "pending"})
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "INVALID_STATUS"
    for party in ("admin", "insurer"):
        with world.party(party) as other:
            assert other.get("/corrections").status_code == 403
            assert other.get(f"/corrections/{first['id']}").status_code == 403
    with httpx.Client(base_url=world.url) as nobody:
        assert nobody.get("/corrections").status_code == 401


def test_corrected_needs_a_new_version_and_everything_is_kept(world):
    with session(world.url, LISI) as lisi:
        condition = ref(find(my_records(lisi), "Condition", "F32.900"))
        created = ask(lisi, condition).json()
    answer = f"/corrections/{created['id']}/answer"
    with world.party(ZJ_H) as zj:
        early = zj.post(answer, json={"decision": "corrected", "reason": "已删除该诊断"})
        assert early.status_code == 409 and early.json()["error"]["code"] == "NOT_CORRECTED"
        # the same visit sent again unchanged is no correction either
        assert world.send_zj(zj_visit(world.now - timedelta(days=2)))["unchanged"] == 1
        assert zj.post(answer, json={"decision": "corrected", "reason": "x"}).status_code == 409
        # re-sent without the diagnosis: the Condition is retired
        assert world.send_zj(zj_visit(world.now - timedelta(days=2), extra_diagnosis=False))["stored"] == 1
        done = zj.post(answer, json={"decision": "corrected", "reason": "经核实误录，已删除该诊断"})
        assert done.status_code == 200, done.text
        again = zj.post(answer, json={"decision": "rejected", "reason": "x"})
        assert again.status_code == 409 and again.json()["error"]["code"] == "CORRECTION_CLOSED"
    body = done.json()
    assert body["status"] == "corrected" and body["overdue"] is False
    assert body["answer"]["decision"] == "corrected" and body["answer"]["reason"] == "经核实误录，已删除该诊断"
    assert datetime.fromisoformat(body["answer"]["time"]).utcoffset() == timedelta(hours=8)
    assert body["versions"] == {"before": 1, "after": 2}
    with session(world.url, LISI) as lisi:
        seen = lisi.get(f"/api/me/corrections/{created['id']}").json()
        assert seen["answer"] == body["answer"] and seen["created"] == created["created"]
        assert seen["kind"] == "not_mine" and seen["text"] == "我没有得过这个病"
        assert "F32.900" not in str(my_records(lisi))


def test_a_changed_resource_is_corrected_and_rejected_needs_a_reason(world):
    with session(world.url, LISI) as lisi:
        resources = my_records(lisi)
        glucose = ask(lisi, ref(find(resources, "Observation", "葡萄糖")), "wrong", "血糖应为 5.8").json()
        allergy = ask(lisi, ref(find(resources, "AllergyIntolerance", "青霉素")), "wrong", "我不对青霉素过敏").json()
    with world.party(ZJ_H) as zj:
        for body, code in (({"decision": "rejected"}, "reason"), ({"decision": "rejected", "reason": " "}, "reason"),
                           ({"decision": "maybe", "reason": "x"}, "decision"), ({"reason": "x"}, "decision"),
                           ({"decision": "rejected", "reason": "x" * 501}, "reason")):
            bad = zj.post(f"/corrections/{allergy['id']}/answer", json=body)
            assert bad.status_code == 422 and bad.json()["error"]["code"] == "INVALID_ANSWER", body
            assert bad.json()["error"]["message"].startswith(code)
        assert zj.post(f"/corrections/{allergy['id']}/answer", content=b"{nope").status_code == 400
        rejected = zj.post(f"/corrections/{allergy['id']}/answer",
                           json={"decision": "rejected", "reason": "门诊病历有患者本人签字的过敏史"})
        assert rejected.status_code == 200 and rejected.json()["status"] == "rejected"
        assert rejected.json()["versions"] == {"before": 1, "after": 1}
        assert world.send_zj(zj_visit(world.now - timedelta(days=2), glucose="5.8"))["stored"] == 1
        corrected = zj.post(f"/corrections/{glucose['id']}/answer", json={"decision": "corrected", "reason": "已更正"})
        assert corrected.status_code == 200 and corrected.json()["versions"] == {"before": 1, "after": 2}
    with session(world.url, LISI) as lisi:
        assert "5.8" in str(find(my_records(lisi), "Observation", "葡萄糖")["valueQuantity"])


# -- the deadline ----------------------------------------------------------------------------------


def test_the_deadline_counts_working_days_of_the_calendar_from_the_day_in_cst(engine):
    friday_cst = datetime(2026, 11, 26, 16, 30, tzinfo=timezone.utc)  # 00:30 on Friday the 27th
    plain = Corrections(engine, WorkCalendar(), clock=lambda: friday_cst)
    assert plain.deadline(friday_cst) == date(2026, 12, 11)
    holiday = Corrections(engine, WorkCalendar(holidays=frozenset({date(2026, 12, 1)})))
    assert holiday.deadline(friday_cst) == date(2026, 12, 14)
    makeup = Corrections(engine, WorkCalendar(makeup_workdays=frozenset({date(2026, 11, 28)})))
    assert makeup.deadline(friday_cst) == date(2026, 12, 10)
    national_day = Corrections(engine, load_calendar())
    assert national_day.deadline(datetime(2026, 9, 30, 2, tzinfo=timezone.utc)) == date(2026, 10, 20)


def test_an_open_correction_past_its_deadline_is_overdue_for_both(world, engine):
    with session(world.url, LISI) as lisi:
        created = ask(lisi, ref(find(my_records(lisi), "Condition", "F32.900"))).json()
        today = datetime.now(CST).date()
        for deadline, overdue in ((today, False), (today - timedelta(days=1), True)):
            with engine.begin() as conn:
                conn.execute(update(Correction).where(Correction.id == created["id"]).values(deadline=deadline))
            assert lisi.get(f"/api/me/corrections/{created['id']}").json()["overdue"] is overdue
            with world.party(ZJ_H) as zj:
                assert zj.get(f"/corrections/{created['id']}").json()["overdue"] is overdue
        assert "已超期" in lisi.get("/portal/corrections").text
        with world.party(ZJ_H) as zj:
            zj.post(f"/corrections/{created['id']}/answer", json={"decision": "rejected", "reason": "记录无误"})
        assert lisi.get(f"/api/me/corrections/{created['id']}").json()["overdue"] is False


# -- the disputed tag ------------------------------------------------------------------------------


def tagged(resource: dict) -> bool:
    return DISPUTED in resource.get("meta", {}).get("tag", [])


def test_every_answer_holding_the_resource_is_tagged_while_open(world):
    with session(world.url, LISI) as lisi:
        glucose = find(my_records(lisi), "Observation", "葡萄糖")
        created = ask(lisi, ref(glucose), "not_mine", "这是别人的化验单").json()
        mine = my_records(lisi)
    pid = find(mine, "Patient", "")["id"]
    assert [ref(r) for r in mine if tagged(r)] == [ref(glucose)]

    def answers(client) -> dict[str, list[dict]]:
        """The glucose result as the read, search and $everything of ``client`` show it."""
        return {"read": [client.get(f"/fhir/Observation/{glucose['id']}").json()],
                "search": entries(client.get("/fhir/Observation", params={"patient": pid}).json()),
                "everything": entries(client.get(f"/fhir/Patient/{pid}/$everything").json())}

    # the Shanghai hospital treating her sees that a Zhejiang record is disputed, so does an admin
    for party in (SH_H, "admin"):
        with world.party(party) as client:
            for path, found in answers(client).items():
                assert [ref(r) for r in found if tagged(r)] == [ref(glucose)], (party, path)
    with world.party(ZJ_H) as zj:
        zj.post(f"/corrections/{created['id']}/answer", json={"decision": "rejected", "reason": "核实无误"})
    with world.party(SH_H) as sh:
        assert not any(tagged(r) for found in answers(sh).values() for r in found)
    with session(world.url, LISI) as lisi:
        assert not any(tagged(r) for r in my_records(lisi))


def test_one_look_up_of_corrections_per_answer_whatever_its_size(world, engine):
    from sqlalchemy import event

    with session(world.url, LISI) as lisi:
        resources = my_records(lisi)
        for res_type, text in (("Observation", "葡萄糖"), ("Condition", "J06.900"), ("AllergyIntolerance", "青霉素")):
            assert ask(lisi, ref(find(resources, res_type, text)), "wrong", "不对").status_code == 201
    pid = find(resources, "Patient", "")["id"]
    statements: list[str] = []

    def note(conn, cursor, statement, *args):
        if "FROM correction" in statement:
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", note)
    try:
        with world.party(SH_H) as sh:
            everything = entries(sh.get(f"/fhir/Patient/{pid}/$everything").json())
            assert len(statements) == 1 and len(everything) > 10
            assert len([r for r in everything if tagged(r)]) == 3
            sh.get("/fhir/Observation", params={"patient": pid})
            assert len(statements) == 2
    finally:
        event.remove(engine, "before_cursor_execute", note)


def test_the_tag_goes_when_withdrawn(world):
    with session(world.url, LISI) as lisi:
        condition = find(my_records(lisi), "Condition", "J06.900")
        created = ask(lisi, ref(condition), "incomplete", "少了过敏史").json()
        with world.party(ZJ_H) as zj:
            assert tagged(zj.get(f"/fhir/Condition/{condition['id']}").json())
            lisi.post(f"/api/me/corrections/{created['id']}/withdraw", json={})
            assert not tagged(zj.get(f"/fhir/Condition/{condition['id']}").json())


# -- the pages -------------------------------------------------------------------------------------


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def test_pages_ask_follow_and_withdraw_with_csrf(world):
    with session(world.url, LISI) as lisi:
        glucose = ref(find(my_records(lisi), "Observation", "葡萄糖"))
        record = lisi.get(f"/portal/records/{glucose}")
        assert record.status_code == 200 and "申请更正" in record.text and "6.8" in record.text
        assert lisi.get("/portal/records/Observation/nothing").status_code == 404
        form = {"resource": glucose, "kind": "wrong", "text": "数值不对"}
        refused = lisi.post("/portal/corrections", data={**form, "csrf": "forged"})
        assert refused.status_code == 403 and lisi.get("/api/me/corrections").json() == {"corrections": []}
        csrf = csrf_of(record.text)
        empty = lisi.post("/portal/corrections", data={**form, "text": "", "csrf": csrf})
        assert empty.status_code == 422 and "请填写更正说明" in empty.text and 'name="text"' in empty.text
        sent = lisi.post("/portal/corrections", data={**form, "csrf": csrf})
        assert sent.status_code == 303 and re.match(r"/portal/corrections/CR\w+\?notice=created$", sent.headers["location"])
        shown = lisi.get(sent.headers["location"])
        assert "已提交" in shown.text and "医院处理中" in shown.text and "嘉善县第一人民医院" in shown.text
        twice = lisi.post("/portal/corrections", data={**form, "csrf": csrf})
        assert twice.status_code == 409 and "已有一项正在处理" in twice.text
        assert "更正处理中" in lisi.get("/portal/records").text
        listed = lisi.get("/portal/corrections").text
        assert "内容有误" in listed and "医院处理中" in listed
        path = sent.headers["location"].split("?")[0]
        assert lisi.post(f"{path}/withdraw", data={"csrf": "forged"}).status_code == 403
        withdrawn = lisi.post(f"{path}/withdraw", data={"csrf": csrf})
        assert withdrawn.status_code == 303 and withdrawn.headers["location"].endswith("notice=withdrawn")
        assert "已撤回" in lisi.get(withdrawn.headers["location"]).text
        late = lisi.post(f"{path}/withdraw", data={"csrf": csrf})
        assert late.headers["location"].endswith("notice=too_late")
    with session(world.url, CHEN) as chen:
        assert chen.get(path).status_code == 404
        assert chen.get(f"/portal/records/{glucose}").status_code == 404
