"""Shanghai HL7 v2 through the hub: /ingest/sh and MLLP over real sockets, ACK only once stored,
repeats answered the same and changing nothing, senders known by address over MLLP."""

import ipaddress
import socket

import pytest
from sqlalchemy import func, select

from hub.hl7_ingest import allowed_sender, msh4
from hub.models import Resource, Upload
from mappers.common import RESIDENT_ID_SYSTEM
from tests.support.common import FIXTURES

SH = FIXTURES / "sh"
SENDER = "H31010100001"
ER7 = {"Content-Type": "x-application/hl7-v2+er7"}


def msa(ack: bytes) -> list[str]:
    segments = ack.decode().strip("\r").split("\r")
    return next(s for s in segments if s.startswith("MSA")).split("|")


def post(hub, name_or_body, sender=SENDER):
    body = name_or_body if isinstance(name_or_body, bytes) else (SH / name_or_body).read_bytes()
    with hub.client(hub.token("hospital", sender)) as c:
        return c.post("/ingest/sh", content=body, headers=ER7)


def count(engine, table=Resource):
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def test_adt_is_stored_and_acknowledged_aa(hub):
    answer = post(hub, "adt_a04.hl7")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("x-application/hl7-v2+er7")
    assert msa(answer.content)[1:3] == ["AA", "MSG0000123"]
    with hub.client(hub.token("admin")) as c:
        bundle = c.get("/fhir/Patient", params={"identifier": f"{RESIDENT_ID_SYSTEM}|310101199003071230"}).json()
    assert bundle["total"] == 1


def test_repeated_control_id_answers_aa_and_changes_nothing(hub):
    first = post(hub, "adt_a04.hl7")
    before = (count(hub.engine), count(hub.engine, Upload))
    again = post(hub, "adt_a04.hl7")
    assert msa(again.content)[1] == "AA"
    assert (count(hub.engine), count(hub.engine, Upload)) == before
    assert again.content == first.content


def test_bad_id_is_ae_with_err_and_kept(hub):
    answer = post(hub, "bad_id.hl7")
    assert msa(answer.content)[1] == "AE"
    assert b"ERR|" in answer.content and b"PID" in answer.content
    with hub.engine.connect() as conn:
        summary = conn.execute(select(Upload.summary)).scalar_one()
    assert '"set_aside":true' in summary


def test_garbage_is_ar(hub):
    answer = post(hub, b"this is not hl7")
    assert msa(answer.content)[1] == "AR"


def test_batch_gets_one_ack_per_message(hub):
    answer = post(hub, "batch.hl7", sender="H31011500003")
    acks = [s for s in answer.content.decode().split("\r") if s.startswith("MSA")]
    assert len(acks) == 3 and all(a.split("|")[1] == "AA" for a in acks)


def test_another_hospitals_message_is_not_stored(hub):
    answer = post(hub, "adt_a04.hl7", sender="H31011800012")
    assert msa(answer.content)[1] == "AE"
    assert count(hub.engine) == 0


def test_corrected_report_replaces_the_earlier(hub):
    post(hub, "oru_r01_lab.hl7")
    post(hub, "oru_r01_lab_corrected.hl7")
    with hub.client(hub.token("admin")) as c:
        reports = c.get("/fhir/DiagnosticReport", params={"identifier": "LIS20240315001"}).json()
    assert reports["total"] == 1
    assert reports["entry"][0]["resource"]["status"] == "corrected"


def mllp_send(port: int, message: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"\x0b" + message + b"\x1c\r")
        data = b""
        while not data.endswith(b"\x1c\r"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return data.strip(b"\x0b").removesuffix(b"\x1c\r")


@pytest.fixture()
def mllp_hub(engine, database_url, db):
    """A hub with its MLLP listener on a free port (senders unset: loopback only)."""
    from hub.app import create_app
    from hub.config import Settings
    from tests.support.common import free_port, serve_in_thread

    port = free_port()
    app = create_app(Settings(database_url=database_url, mllp_port=port, map_workers=0))
    server = serve_in_thread(app, free_port())
    yield port
    server.should_exit = True
    server.thread.join(10)


def test_mllp_acks_only_what_is_stored(mllp_hub, engine):
    ack = mllp_send(mllp_hub, (SH / "oru_r01_lab.hl7").read_bytes())
    assert msa(ack)[1] == "AA"
    assert count(engine) > 0
    assert msa(mllp_send(mllp_hub, (SH / "oru_r01_lab.hl7").read_bytes()))[1] == "AA"
    assert count(engine, Upload) == 1


def test_mllp_sender_rules():
    rules = [("H31010100001", ipaddress.ip_network("10.1.2.0/24"))]
    assert allowed_sender(rules, "10.1.2.7", "H31010100001") == "H31010100001"
    assert allowed_sender(rules, "10.1.3.7", "H31010100001") is None
    assert allowed_sender(rules, "10.1.2.7", "H31011800012") is None
    assert allowed_sender([], "127.0.0.1", "H31011800012") == "H31011800012"
    assert allowed_sender([], "10.1.2.7", "H31011800012") is None


def test_msh4_from_raw_bytes():
    assert msh4((SH / "adt_a04.hl7").read_bytes()) == "H31010100001"
    assert msh4(b"garbage") == ""


def test_same_control_id_twice_in_one_body_is_stored_once(hub):
    message = (SH / "adt_a04.hl7").read_bytes()
    answer = post(hub, message + message)
    acks = [s for s in answer.content.decode().split("\r") if s.startswith("MSA")]
    assert [a.split("|")[1] for a in acks] == ["AA", "AA"]
    assert count(hub.engine, Upload) == 1


def test_concurrent_mllp_senders_share_commits_and_each_gets_its_own_ack(mllp_hub, engine):
    import concurrent.futures

    template = (SH / "adt_a04.hl7").read_bytes()
    messages = [template.replace(b"MSG0000123", f"MSGC{i:06d}".encode())
                .replace(b"MZ2024031500077", f"MZC{i:012d}".encode()) for i in range(8)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        acks = list(pool.map(lambda m: mllp_send(mllp_hub, m), messages))
    assert [msa(a)[1:3] for a in acks] == [["AA", f"MSGC{i:06d}"] for i in range(8)]
    assert count(engine, Upload) == 8
