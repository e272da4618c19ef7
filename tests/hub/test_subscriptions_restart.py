"""A hub killed (SIGKILL) between storing a record and delivering its notification delivers it
after a restart, with the same event id: the outbox row was written in the record's transaction,
and a claim whose process died is taken again once its lease has run out. A real ``yrdhub
serve`` process, a real receiver; on SQLite and PostgreSQL.

In its own module: the in-process hubs of ``test_subscriptions`` would deliver it otherwise.
"""

from tests.conftest import Hub
from tests.support.fhir import SH_H
from tests.support.processes import serve
from tests.support.subscriptions import Cast, endpoints, outbox
from tests.support.waiting import wait_until


def hub_env(receiver) -> dict:
    # a one-second call limit makes the lease of a dead process's claim short (2 x 1 + 2 s)
    return {"YRDHUB_HOOK_ENDPOINTS": endpoints(receiver), "YRDHUB_HOOK_TIMEOUT": "1",
            "YRDHUB_HOOK_POLL": "0.05", "YRDHUB_HOOK_RETRY_INITIAL": "0.05",
            "YRDHUB_HOOK_RETRY_MAX": "0.2"}


def test_a_hub_killed_between_store_and_send_delivers_after_restart(
        db, database_url, tmp_path, receiver):
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    first = serve(tmp_path / "first", 1, database_url=database_url, env=hub_env(receiver))
    second = None
    try:
        cast = Cast(Hub(first.url, db, None), receiver)
        assert cast.subscribe(SH_H, "Observation").status_code == 201
        receiver.hold_next()  # the first send arrives and is kept waiting: not delivered yet
        assert cast.send_zj(glucose="7.4")["stored"] == 1
        held = wait_until(receiver.received, 30, "the first send")[0]
        first.process.kill()
        first.process.wait()
        receiver.release()  # its answer now goes nowhere
        assert outbox(db) == 1
        second = serve(tmp_path / "second", 1, database_url=database_url,
                       env=hub_env(receiver))
        again = wait_until(lambda: receiver.received()[1:], 60, "the send after the restart")
        assert again[0].event == held.event
        wait_until(lambda: outbox(db) == 0, 30, "the outbox emptying")
        cast.close()
    finally:
        for hub in (first, second):
            if hub is not None and hub.process.poll() is None:
                hub.process.kill()
                hub.process.wait()
