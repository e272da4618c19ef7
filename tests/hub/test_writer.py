"""The one writer (hub/writer.py): concurrent requests share commits, an answer or ACK leaves only
after the commit that holds it, one request's failure stays its own, two requests carrying the
same record in one batch are answered as if one came after the other, and a hub killed outright
(SIGKILL) keeps everything it acknowledged. Real sockets, real servers, SQLite and PostgreSQL.

Batches are formed deterministically: a hook holds the writer's first batch at its commit while
the next requests queue behind it (no sleeps, no timing)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import select as selectors
import socket
import threading

import httpx
import pytest
from sqlalchemy import func, select

from hub import ingest
from hub.db import make_engine
from hub.models import MessageControl, RecordArrival, Upload
from hub.models import Record as RecordRow
from hub.writer import Batchable, Writer
from tests.support.common import FIXTURES, free_port, serve_in_thread
from tests.support.processes import serve
from tests.support.waiting import wait_until

SH_H, ZJ_H = "H31010100001", "H33042100015"
ER7 = {"Content-Type": "x-application/hl7-v2+er7"}


def hl7(n: int) -> bytes:
    """Shanghai's ADT^A04 fixture as visit ``n`` with its own control id ``W<n>``."""
    return ((FIXTURES / "sh" / "adt_a04.hl7").read_bytes()
            .replace(b"MSG0000123", f"W{n:08d}".encode())
            .replace(b"MZ2024031500077", f"MZW{n:012d}".encode()))


def zj(n: int) -> bytes:
    """Zhejiang's basic upload as visit ``n``."""
    doc = json.loads((FIXTURES / "zj" / "upload_basic.json").read_bytes())
    doc["jzjl"][0]["jzlsh"] = f"MZW{n:014d}"
    return json.dumps(doc, ensure_ascii=False).encode()


def msa(ack: bytes) -> list[str]:
    return next(s for s in ack.decode().split("\r") if s.startswith("MSA")).split("|")


def count(engine, table=Upload, *where) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()


class Hold:
    """The writer's ``before_commit`` hook: batch k waits at its commit until ``release(k)``."""

    def __init__(self, writer: Writer, batches: int = 8):
        self.entered: list[int] = []  # the size of each batch that reached its commit
        self.gates = [threading.Event() for _ in range(batches)]
        writer.before_commit = self

    def __call__(self, size: int) -> None:
        self.entered.append(size)
        assert self.gates[len(self.entered) - 1].wait(60), "a held batch was never released"

    def release(self, k: int) -> None:
        self.gates[k].set()

    def release_all(self) -> None:
        for gate in self.gates:
            gate.set()


class Wired:
    """A hub in this process (so its writer can be held) with MLLP on a free port."""

    def __init__(self, app, url: str, mllp_port: int, engine):
        self.app, self.url, self.mllp_port, self.engine = app, url, mllp_port, engine
        self.writer = app.state.writer
        from hub.auth import create_token

        self.tokens = {h: create_token(engine, "hospital", h) for h in (SH_H, ZJ_H)}

    def post(self, path: str, body: bytes, hospital: str, headers=None) -> httpx.Response:
        with httpx.Client(base_url=self.url, timeout=60,
                          headers={"Authorization": f"Bearer {self.tokens[hospital]}"}) as c:
            return c.post(path, content=body, headers=headers)

    def round_trip(self) -> None:
        """A request the event loop answers: anything it had ready to send has been sent."""
        assert httpx.get(self.url + "/healthz", timeout=30).status_code == 200


@pytest.fixture()
def wired(engine, database_url, db):
    from hub.app import create_app
    from hub.config import Settings

    mllp_port = free_port()
    app = create_app(Settings(database_url=database_url, mllp_port=mllp_port, map_workers=0))
    port = free_port()
    server = serve_in_thread(app, port)
    hub = Wired(app, f"http://127.0.0.1:{port}", mllp_port, engine)
    yield hub
    app.state.writer.before_commit = None
    server.should_exit = True
    server.thread.join(10)


def nothing_to_read(sock: socket.socket) -> bool:
    readable, _, _ = selectors.select([sock], [], [], 0)
    return not readable


def read_ack(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\x1c\r"):
        chunk = sock.recv(65536)
        assert chunk, "the hub closed the connection"
        data += chunk
    return data.strip(b"\x0b").removesuffix(b"\x1c\r")


def test_the_answer_and_the_ack_wait_for_the_commit_that_holds_them(wired):
    hold = Hold(wired.writer)
    with concurrent.futures.ThreadPoolExecutor(1) as pool, \
            socket.create_connection(("127.0.0.1", wired.mllp_port), timeout=60) as sock:
        answer = pool.submit(wired.post, "/ingest/sh", hl7(1), SH_H, ER7)
        wait_until(lambda: hold.entered == [1], 30, "the POST's batch reaching its commit")
        sock.sendall(b"\x0b" + hl7(2) + b"\x1c\r")
        wait_until(lambda: wired.writer.queued == 1, 30, "the MLLP message queued behind it")
        wired.round_trip()
        assert not answer.done() and nothing_to_read(sock)
        assert count(wired.engine) == 0  # stored, not committed

        hold.release(0)
        assert msa(answer.result(60).content)[1:3] == ["AA", "W00000001"]
        wait_until(lambda: len(hold.entered) == 2, 30, "the MLLP message's batch at its commit")
        wired.round_trip()
        assert nothing_to_read(sock) and count(wired.engine) == 1

        hold.release(1)
        assert msa(read_ack(sock))[1:3] == ["AA", "W00000002"]
        assert count(wired.engine) == 2


def test_concurrent_requests_share_one_commit(wired):
    hold = Hold(wired.writer)
    commits, items = wired.writer.commits, wired.writer.items
    with concurrent.futures.ThreadPoolExecutor(9) as pool:
        first = pool.submit(wired.post, "/ingest/sh", hl7(100), SH_H, ER7)
        wait_until(lambda: hold.entered == [1], 30, "the first batch reaching its commit")
        posts = [pool.submit(wired.post, "/ingest/sh", hl7(n), SH_H, ER7) for n in range(4)]
        uploads = [pool.submit(wired.post, "/ingest/zj", zj(n), ZJ_H) for n in range(4)]
        wait_until(lambda: wired.writer.queued == 8, 30, "eight requests queued")
        hold.release_all()
        assert msa(first.result(60).content)[1] == "AA"
        assert [msa(p.result(60).content)[1:3] for p in posts] == [
            ["AA", f"W{n:08d}"] for n in range(4)]
        assert [u.result(60).json()["stored"] for u in uploads] == [1, 1, 1, 1]
    assert hold.entered == [1, 8]
    assert (wired.writer.commits - commits, wired.writer.items - items) == (2, 9)
    metrics = httpx.get(wired.url + "/metrics").text
    assert "yrdhub_writer_commits_total" in metrics
    assert 'yrdhub_writer_items_per_commit_bucket{le="8.0"}' in metrics


def test_the_same_record_twice_in_one_batch_is_answered_as_if_serial(wired):
    hold = Hold(wired.writer)
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        first = pool.submit(wired.post, "/ingest/zj", zj(900), ZJ_H)
        wait_until(lambda: hold.entered == [1], 30, "the first batch reaching its commit")
        uploads = [pool.submit(wired.post, "/ingest/zj", zj(1), ZJ_H)]
        wait_until(lambda: wired.writer.queued == 1, 30, "the first upload queued")
        uploads.append(pool.submit(wired.post, "/ingest/zj", zj(1), ZJ_H))
        messages = [pool.submit(wired.post, "/ingest/sh", hl7(7), SH_H, ER7) for _ in range(2)]
        wait_until(lambda: wired.writer.queued == 4, 30, "four requests queued")
        hold.release_all()
        first.result(60)
        answers = [u.result(60).json() for u in uploads]
        acks = [m.result(60).content for m in messages]
    assert hold.entered == [1, 4]
    assert [(a["stored"], a["unchanged"]) for a in answers] == [(1, 0), (0, 1)]
    assert msa(acks[0])[1] == "AA" and acks[0] == acks[1]  # the repeat gets the first ACK
    assert count(wired.engine, Upload, Upload.channel == "sh") == 1
    assert count(wired.engine, Upload, Upload.channel == "zj") == 3
    ids = [a["upload_id"] for a in answers]
    with wired.engine.connect() as conn:  # the indicators count what the answers counted
        arrived = conn.execute(select(RecordArrival.upload_id, RecordArrival.outcome)
                               .where(RecordArrival.upload_id.in_(ids))).all()
    assert sorted(arrived) == sorted([(ids[0], "stored"), (ids[1], "unchanged")])


def test_a_failing_item_fails_alone_and_its_batch_mates_commit(db):
    def archiving(name: str, then=None):
        def work(conn):
            upload_id = ingest.archive(conn, "zj", ZJ_H, b"{}", None, filename=name)
            if then is not None:
                then(conn)
            return upload_id
        return work

    def broken(conn):
        raise ValueError("this request's own bug")

    def duplicate_key(conn):  # a control id "a" wrote a moment before in the same transaction
        conn.execute(MessageControl.__table__.insert(), [control("again")])

    def control(name: str) -> dict:
        from datetime import datetime, timezone
        return {"sender": SH_H, "control_id": "C1", "upload_id": 1, "ack": name.encode(),
                "received_at": datetime.now(timezone.utc)}

    async def scenario():
        writer = Writer(db)
        hold = Hold(writer)
        first = writer.submit(archiving("first"))
        await asyncio.to_thread(wait_until, lambda: hold.entered == [1], 30, "the first batch")
        rest = [writer.submit(archiving("a", lambda c: c.execute(
                    MessageControl.__table__.insert(), [control("a")]))),
                writer.submit(archiving("bug", broken)),
                writer.submit(archiving("conflict", duplicate_key)),
                writer.submit(archiving("b"))]
        hold.release_all()
        try:
            return await asyncio.gather(first, *rest, return_exceptions=True), hold.entered
        finally:
            writer.close()

    results, batches = asyncio.run(scenario())
    assert batches == [1, 4]
    assert isinstance(results[2], ValueError)
    assert "IntegrityError" in type(results[3]).__name__
    assert all(isinstance(r, int) for r in (results[0], results[1], results[4]))
    with db.connect() as conn:
        kept = conn.execute(select(Upload.filename).order_by(Upload.id)).scalars().all()
        acks = conn.execute(select(MessageControl.ack)).scalars().all()
    assert kept == ["first", "a", "b"]
    assert acks == [b"a"]


def test_a_shared_store_that_fails_is_run_again_request_by_request(db):
    """Three requests of one kind are stored by one call; that call fails because of one of
    them, so each is stored again alone: the other two commit, the culprit gets its error."""
    calls = []

    def store_names(conn, names):
        calls.append(list(names))
        ids = [ingest.archive(conn, "zj", ZJ_H, b"{}", None, filename=n) for n in names]
        if "bad" in names:
            raise ValueError("cannot store 'bad'")
        return ids

    def item(name):
        return Batchable("names", frozenset({name}), name, store_names)

    async def scenario():
        writer = Writer(db)
        hold = Hold(writer)
        first = writer.submit(lambda conn: None)
        await asyncio.to_thread(wait_until, lambda: hold.entered == [1], 30, "the first batch")
        rest = [writer.submit(item(n)) for n in ("a", "bad", "b")]
        hold.release_all()
        try:
            return await asyncio.gather(first, *rest, return_exceptions=True)
        finally:
            writer.close()

    results = asyncio.run(scenario())
    assert calls == [["a", "bad", "b"], ["a"], ["bad"], ["b"]]
    assert isinstance(results[2], ValueError)
    with db.connect() as conn:
        kept = conn.execute(select(Upload.filename).order_by(Upload.id)).scalars().all()
    assert kept == ["a", "b"]
    assert (results[1], results[3]) == (kept_id(db, "a"), kept_id(db, "b"))


def kept_id(engine, filename: str) -> int:
    with engine.connect() as conn:
        return conn.execute(select(Upload.id).where(Upload.filename == filename)).scalar_one()


def _sender(stop: threading.Event, send, acked: list, start: int) -> None:
    """Send distinct bodies until the hub stops answering; note each acknowledged one."""
    n = start
    while not stop.is_set():
        try:
            acked.append(send(n))
        except (OSError, httpx.HTTPError, AssertionError):
            return
        n += 1


def test_a_hub_killed_outright_keeps_everything_it_acknowledged(tmp_path, db, database_url):
    mllp_port = free_port()
    url = None if database_url.startswith("sqlite") else database_url
    hub = serve(tmp_path, map_workers=1, database_url=url, mllp_port=mllp_port)
    engine = make_engine(url or f"sqlite:///{tmp_path}/hub.db")
    from hub.auth import create_token

    tokens = {h: create_token(engine, "hospital", h) for h in (SH_H, ZJ_H)}
    stop = threading.Event()
    controls, uploads = [], []

    def post_hl7(n):
        r = httpx.post(hub.url + "/ingest/sh", content=hl7(n), timeout=30,
                       headers={**ER7, "Authorization": f"Bearer {tokens[SH_H]}"})
        assert msa(r.content)[1] == "AA"
        return msa(r.content)[2]

    mllp = socket.create_connection(("127.0.0.1", mllp_port), timeout=30)

    def over_mllp(n):
        mllp.sendall(b"\x0b" + hl7(n) + b"\x1c\r")
        ack = read_ack(mllp)
        assert msa(ack)[1] == "AA"
        return msa(ack)[2]

    def post_zj(n):
        r = httpx.post(hub.url + "/ingest/zj", content=zj(n), timeout=30,
                       headers={"Authorization": f"Bearer {tokens[ZJ_H]}"})
        assert r.status_code == 200
        return r.json()["upload_id"]

    threads = [threading.Thread(target=_sender, args=a) for a in [
        (stop, post_hl7, controls, 0), (stop, post_hl7, controls, 100_000),
        (stop, over_mllp, controls, 200_000), (stop, post_zj, uploads, 0),
        (stop, post_zj, uploads, 100_000)]]
    try:
        for t in threads:
            t.start()
        wait_until(lambda: len(controls) + len(uploads) >= 40, 120, "40 acknowledged requests")
        hub.process.kill()
        hub.process.wait(30)
    finally:
        stop.set()
        hub.process.kill()
        for t in threads:
            t.join(60)
        mllp.close()
    with engine.connect() as conn:
        stored = set(conn.execute(select(MessageControl.control_id)).scalars())
        visits = set(conn.execute(select(RecordRow.upload_id)).scalars())
    assert controls and uploads
    assert set(controls) <= stored
    assert set(uploads) <= visits
    engine.dispose()
