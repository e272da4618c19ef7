"""FHIR Subscriptions (rest-hook) and their notifications, against a real HTTP receiver
(hub-interface.md, "Hospitals: notifications"). What the store decided is read from the outbox
right after the upload's answer (the decision is in the upload's transaction), so "nothing was
notified" is a fact to check, not a wait.

Cast (tests/support/fhir.py): 李四 was seen by ZJ_H (Zhejiang) two days ago and by SH_H
(Shanghai) three hours ago; OTHER never saw her.
"""

import re
from datetime import timedelta

import pytest
from prometheus_client import REGISTRY

from hub.sharing import SharingChoices, set_choices
from hub.subscriptions import SubscriptionListings
from tests.support.fhir import OTHER, SH_H, ZJ_H
from tests.support.subscriptions import Cast, outbox, subscription
from tests.support.waiting import wait_until

SECRET = "Authorization: Bearer s3cret-of-the-his"


@pytest.fixture()
def cast(notify_hub, receiver):
    cast = Cast(notify_hub(), receiver)
    yield cast
    cast.close()


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def settled(cast) -> None:
    """Wait until nothing is left in the outbox (delivered, or dropped by the rules)."""
    wait_until(lambda: outbox(cast.hub.engine) == 0, 15, "the outbox emptying")


# ---------------------------------------------------------------------------------------------
# The resource: create, read, list, delete
# ---------------------------------------------------------------------------------------------


def test_a_treating_hospital_subscribes_and_sees_only_its_own(cast):
    answer = cast.subscribe(SH_H, "Observation", header=[SECRET])
    assert answer.status_code == 201, answer.text
    created = answer.json()
    assert created["status"] == "active" and created["channel"]["header"] == [SECRET]
    assert answer.headers["location"].endswith(f"/fhir/Subscription/{created['id']}")
    sh, zj = cast.clients[SH_H], cast.clients[ZJ_H]
    assert sh.get(f"/fhir/Subscription/{created['id']}").json() == created
    listed = sh.get("/fhir/Subscription").json()
    assert listed["total"] == 1 and listed["entry"][0]["resource"] == created
    assert zj.get("/fhir/Subscription").json()["total"] == 0
    assert zj.get(f"/fhir/Subscription/{created['id']}").status_code == 403
    assert zj.delete(f"/fhir/Subscription/{created['id']}").status_code == 403
    assert cast.admin.get("/fhir/Subscription").json()["total"] == 1
    assert sh.delete(f"/fhir/Subscription/{created['id']}").status_code == 204
    assert sh.get(f"/fhir/Subscription/{created['id']}").status_code == 404
    assert sh.get("/fhir/Subscription").json()["total"] == 0
    assert sh.get("/fhir/Subscription", params={"status": "active"}).status_code == 400


def test_who_may_subscribe(cast):
    # not treating: 403, before the endpoint is looked at (an unregistered one included)
    assert cast.subscribe(OTHER, "Observation").status_code == 403
    body = subscription(cast.pid, "Observation", "https://his.example/unregistered")
    assert cast.clients[OTHER].post("/fhir/Subscription", json=body).status_code == 403
    assert cast.clients[SH_H].post("/fhir/Subscription", json=body).status_code == 422
    # another hospital's registered endpoint is not this one's
    body = subscription(cast.pid, "Observation", cast.hub_endpoint(ZJ_H))
    assert cast.clients[SH_H].post("/fhir/Subscription", json=body).status_code == 422
    for party in (cast.hub.token("insurer", "SH"), cast.hub.token("admin")):
        with cast.hub.client(party) as c:
            body = subscription(cast.pid, "Observation", cast.hub_endpoint(SH_H))
            answer = c.post("/fhir/Subscription", json=body)
            assert answer.status_code == 403
            assert answer.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("change, where", [
    (lambda s: s.pop("reason"), "reason"),
    (lambda s: s.update(criteria="Patient?patient=x"), "criteria"),
    (lambda s: s.update(criteria="Observation?code=2345-7"), "criteria"),
    (lambda s: s["channel"].update(type="websocket"), "channel.type"),
    (lambda s: s["channel"].update(payload="application/fhir+json"), "channel.payload"),
    (lambda s: s["channel"].update(header=["no colon here"]), "channel.header[0]"),
    (lambda s: s["channel"].update(header=["X-Yrdhub-Event: mine"]), "channel.header[0]"),
    (lambda s: s.update(status="bogus"), "status"),
])
def test_what_is_not_a_valid_subscription_is_422_saying_where(cast, change, where):
    body = subscription(cast.pid, "Observation", cast.hub_endpoint(SH_H))
    change(body)
    answer = cast.clients[SH_H].post("/fhir/Subscription", json=body)
    assert answer.status_code == 422, answer.text
    assert where in answer.json()["issue"][0]["diagnostics"]
    assert cast.clients[SH_H].post("/fhir/Subscription", content=b"{").status_code == 400


# ---------------------------------------------------------------------------------------------
# Notifications
# ---------------------------------------------------------------------------------------------


def test_a_new_result_elsewhere_is_notified_with_an_empty_post(cast, receiver):
    assert cast.subscribe(SH_H, "Observation", header=[SECRET]).status_code == 201
    assert cast.send_zj(glucose="7.4")["stored"] == 1
    first = wait_until(lambda: receiver.received(f"/{SH_H}"), 15, "the notification")[0]
    assert first.body == b"" and first.headers["content-length"] == "0"
    assert re.fullmatch(r"[0-9a-f]{32}", first.event)
    assert first.headers["authorization"] == "Bearer s3cret-of-the-his"  # sent as given
    # one upload, one notification: the next upload's is the second to arrive
    assert cast.send_zj(glucose="7.9")["stored"] == 1
    arrived = wait_until(lambda: len(receiver.received()) >= 2 and receiver.received(), 15,
                         "the second notification")
    settled(cast)
    assert len(receiver.received()) == 2 and arrived[1].event != first.event


def test_a_hospitals_own_uploads_are_not_notified_to_it(cast, receiver):
    assert cast.subscribe(ZJ_H, "Observation").status_code == 201
    assert cast.subscribe(ZJ_H, "Condition").status_code == 201
    assert cast.send_zj(glucose="7.4")["stored"] == 1
    assert outbox(cast.hub.engine) == 0
    cast.send_sh(cast.sh_when, control="B", diagnosis="J18.900^肺炎")  # another's: notified
    wait_until(lambda: receiver.received(f"/{ZJ_H}"), 15, "SH_H's change notified to ZJ_H")
    settled(cast)
    assert len(receiver.received(f"/{ZJ_H}")) == 1


def test_what_the_rules_withhold_is_not_notified(cast, receiver):
    assert cast.subscribe(SH_H, "Condition").status_code == 201
    # a new diagnosis in a sensitive category crosses no border without the patient's leave
    assert cast.send_zj(code="F33.100", name="复发性抑郁障碍")["stored"] == 1
    assert outbox(cast.hub.engine) == 0
    # a diagnosis that is not sensitive is notified (the control)
    assert cast.send_zj(code="K29.700", name="胃炎")["stored"] == 1
    assert outbox(cast.hub.engine) == 1
    settled(cast)
    assert len(receiver.received(f"/{SH_H}")) == 1
    # the patient withdraws cross-province sharing: nothing from Zhejiang is notified
    set_choices(cast.hub.engine, cast.pid, SharingChoices(cross_province=False))
    assert cast.send_zj(code="K30.x00", name="消化不良")["stored"] == 1
    assert outbox(cast.hub.engine) == 0
    assert len(receiver.received(f"/{SH_H}")) == 1


def test_sharing_withdrawn_before_the_send_holds_the_notification_back(cast, receiver):
    receiver.always(503)
    assert cast.subscribe(SH_H, "Observation").status_code == 201
    assert cast.send_zj(glucose="7.4")["stored"] == 1
    wait_until(lambda: receiver.received(f"/{SH_H}"), 15, "the first attempt")
    set_choices(cast.hub.engine, cast.pid, SharingChoices(cross_province=False))
    receiver.always(200)
    settled(cast)  # the retry found it withheld and dropped it
    assert len(receiver.received(f"/{SH_H}")) == 1


def test_failures_are_retried_with_the_same_event_id_and_no_redirect_is_followed(
        cast, receiver):
    retried = metric("yrdhub_notifications_retried_total")
    sent = metric("yrdhub_notifications_sent_total")
    receiver.answer(307, 500)
    assert cast.subscribe(SH_H, "Observation").status_code == 201
    assert cast.send_zj(glucose="7.4")["stored"] == 1
    settled(cast)
    attempts = receiver.received()
    assert [(a.method, a.path) for a in attempts] == [("POST", f"/{SH_H}")] * 3  # no redirect
    assert len({a.event for a in attempts}) == 1
    assert attempts[2].at - attempts[1].at >= 0.025  # a pause came between (half is fixed)
    assert metric("yrdhub_notifications_retried_total") - retried == 2
    assert metric("yrdhub_notifications_sent_total") - sent == 1
    text = cast.hub.client().get("/metrics").text
    assert "yrdhub_notifications_pending" in text


def test_deleting_a_subscription_ends_its_notifications(cast, receiver):
    receiver.always(503)
    created = cast.subscribe(SH_H, "Observation").json()
    assert cast.send_zj(glucose="7.4")["stored"] == 1
    wait_until(lambda: receiver.received(), 15, "a first attempt")
    assert cast.clients[SH_H].delete(f"/fhir/Subscription/{created['id']}").status_code == 204
    assert outbox(cast.hub.engine) == 0  # its pending notification went with it
    receiver.always(200)
    assert cast.send_zj(glucose="7.9")["stored"] == 1
    assert outbox(cast.hub.engine) == 0


def test_a_lapsed_treating_relationship_turns_the_subscription_off(cast):
    created = cast.subscribe(SH_H, "Observation").json()
    cast.send_sh(cast.sh_when - timedelta(days=31), control="OLD")  # SH_H's visit, corrected
    assert cast.send_zj(glucose="7.4")["stored"] == 1
    assert outbox(cast.hub.engine) == 0
    shown = cast.clients[SH_H].get(f"/fhir/Subscription/{created['id']}").json()
    assert shown["status"] == "off"


def test_a_day_of_failures_puts_the_subscription_in_error(notify_hub, receiver, capfd):
    cast = Cast(notify_hub(hook_give_up=0.3), receiver)
    try:
        failed = metric("yrdhub_notifications_failed_total")
        receiver.always(503)
        created = cast.subscribe(SH_H, "Observation", header=[SECRET]).json()
        assert cast.send_zj(glucose="7.4")["stored"] == 1
        url = f"/fhir/Subscription/{created['id']}"
        shown = wait_until(lambda: (s := cast.clients[SH_H].get(url).json())["status"] == "error"
                           and s, 15, "the subscription in error")
        assert "answered 503" in shown["error"] and len(receiver.received()) >= 2
        assert outbox(cast.hub.engine) == 0
        assert metric("yrdhub_notifications_failed_total") - failed == 1
        answer = cast.admin.get("/admin/subscriptions", params={"status": "error"})
        listed = SubscriptionListings.model_validate_json(answer.content).model_dump()
        assert [s["id"] for s in listed["subscriptions"]] == [created["id"]]
        assert listed["subscriptions"][0]["pending"] == 0
        assert "s3cret" not in str(listed)
        logged = "".join(capfd.readouterr())
        assert "notification not delivered" in logged and "s3cret" not in logged
        assert cast.admin.get("/admin/subscriptions", params={"status": "x"}).status_code == 422
        assert cast.clients[SH_H].get("/admin/subscriptions").status_code == 403
    finally:
        cast.close()


# ---------------------------------------------------------------------------------------------
# The pieces without a hub
# ---------------------------------------------------------------------------------------------


def test_retry_pauses_grow_with_jitter_up_to_the_maximum():
    from hub.notify import pause

    for attempt in range(1, 9):  # half fixed (1, 2, 4 ... s), half random on top of it
        pauses = [pause(2.0, 900.0, attempt) for _ in range(200)]
        assert all(2 ** (attempt - 1) <= p <= 2 ** attempt for p in pauses), attempt
        assert max(pauses) - min(pauses) > 2 ** (attempt - 1) / 4  # not all alike
    assert all(450 <= pause(2.0, 900.0, 40) <= 900 for _ in range(50))


def test_endpoints_are_registered_to_one_hospital_each():
    from hub.config import Settings

    owners = Settings(hook_endpoints=f" {SH_H}=https://a.example/h , {SH_H}=http://10.0.0.9/h,"
                                     f"{ZJ_H}=https://b.example/h").hook_endpoint_map()
    assert owners == {"https://a.example/h": SH_H, "http://10.0.0.9/h": SH_H,
                      "https://b.example/h": ZJ_H}
    with pytest.raises(ValueError, match="two hospitals"):
        Settings(hook_endpoints=f"{SH_H}=https://a.example/h,{ZJ_H}=https://a.example/h"
                 ).hook_endpoint_map()
    with pytest.raises(ValueError, match="HOSPITAL=URL"):
        Settings(hook_endpoints="https://a.example/h").hook_endpoint_map()
