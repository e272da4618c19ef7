"""POST /ingest/zj over a real socket: summaries, replace/unchanged, who may send, limits."""

import json

import orjson
from sqlalchemy import select

from hub.models import Upload
from tests.support.common import FIXTURES

ZJ = FIXTURES / "zj"
BASIC_SENDER = "H33042100015"


def body(name: str) -> bytes:
    return (ZJ / name).read_bytes()


def post(hub, token, data, path="/ingest/zj"):
    with hub.client(token) as c:
        return c.post(path, content=data, headers={"Content-Type": "application/json"})


def test_upload_is_stored_then_unchanged(hub):
    token = hub.token("hospital", BASIC_SENDER)
    first = post(hub, token, body("upload_basic.json"))
    assert first.status_code == 200, first.text
    assert (first.json()["stored"], first.json()["unchanged"], first.json()["rejected"]) == (1, 0, [])
    second = post(hub, token, body("upload_basic.json"))
    assert (second.json()["stored"], second.json()["unchanged"]) == (0, 1)


def test_resent_visit_replaces_the_earlier_one(hub):
    token = hub.token("hospital", BASIC_SENDER)
    doc = json.loads(body("upload_basic.json"))
    post(hub, token, json.dumps(doc).encode())
    doc["jzjl"][0]["zdxx"][0]["zddm"] = "J20.900"
    doc["jzjl"][0]["zdxx"][0]["zdmc"] = "急性支气管炎"
    again = post(hub, token, json.dumps(doc, ensure_ascii=False).encode())
    assert again.json()["stored"] == 1
    admin = hub.token("admin")
    with hub.client(admin) as c:
        found = c.get("/fhir/Condition", params={"code": "J20.900"}).json()
        gone = c.get("/fhir/Condition", params={"code": "J06.900"}).json()
    assert found["total"] == 1 and gone["total"] == 0


def test_every_upload_is_archived_with_sender(hub):
    token = hub.token("hospital", BASIC_SENDER)
    raw = body("upload_basic.json")
    post(hub, token, raw)
    with hub.engine.connect() as conn:
        row = conn.execute(select(Upload.sender, Upload.channel, Upload.body)).one()
    assert (row.sender, row.channel, row.body) == (BASIC_SENDER, "zj", raw)


def test_unknown_keys_are_named_in_the_answer(hub):
    token = hub.token("hospital", BASIC_SENDER)
    doc = json.loads(body("upload_basic.json"))
    doc["jzjl"][0]["hzxx"]["mz"] = "汉族"
    answer = post(hub, token, json.dumps(doc, ensure_ascii=False).encode()).json()
    assert any("hzxx.mz" in note for note in answer["notes"])


def test_no_token_and_unknown_token_are_401(hub):
    assert post(hub, None, body("upload_basic.json")).status_code == 401
    answer = post(hub, "yrd_not-a-token", body("upload_basic.json"))
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "UNAUTHENTICATED"


def test_other_hospital_or_insurer_or_admin_cannot_send_it(hub):
    for token in (hub.token("hospital", "H31011800012"), hub.token("insurer", "ZJ"),
                  hub.token("admin")):
        assert post(hub, token, body("upload_basic.json")).status_code == 403


def test_unreadable_body_is_400_and_set_aside(hub):
    token = hub.token("hospital", BASIC_SENDER)
    answer = post(hub, token, b"{not json")
    assert answer.status_code == 400
    assert answer.json()["error"]["message"]
    with hub.engine.connect() as conn:
        summary = conn.execute(select(Upload.summary)).scalar_one()
    assert orjson.loads(summary)["set_aside"] is True


def test_body_over_the_limit_is_413(hub):
    token = hub.token("hospital", BASIC_SENDER)
    big = b'{"jgdm": "' + b"x" * (20 * 1024 * 1024 + 10) + b'"}'
    assert post(hub, token, big).status_code == 413


def test_unknown_channel_is_404(hub):
    token = hub.token("hospital", BASIC_SENDER)
    assert post(hub, token, b"{}", path="/ingest/xx").status_code == 404
