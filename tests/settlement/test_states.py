"""The settlement state machine's table (settlement.states) against itself and against the
driver: every state reachable, final states left only by the caller's void, and every state the
driver writes in real runs (recorded) held by the table; a write outside it is refused unwritten."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import replace
from types import SimpleNamespace

import pytest

from settlement import service, states
from settlement.service import SettlementService
from settlement.errors import IllegalTransition, SettlementError
from settlement.states import CALLER, DRIVER, FINAL, INITIAL, OPEN, STATES, TRANSITIONS
from tests.support.settlement import FAST, XIHU, body, poll, start_hub, stop_hub


def reachable(start: str) -> set[str]:
    seen, todo = {start}, deque([start])
    while todo:
        state = todo.popleft()
        for before, after in TRANSITIONS:
            if before == state and after not in seen:
                seen.add(after)
                todo.append(after)
    return seen


# ---------------------------------------------------------------------------------------------
# The table against itself
# ---------------------------------------------------------------------------------------------


def test_every_transition_joins_known_states_and_is_made_by_someone():
    assert INITIAL in STATES and FINAL <= STATES and OPEN == STATES - FINAL
    for (before, after), transition in TRANSITIONS.items():
        assert {before, after} <= STATES, (before, after)
        assert transition.by in (DRIVER, CALLER) and transition.why


def test_every_state_is_reachable_from_the_initial_one():
    assert reachable(INITIAL) == STATES


def test_final_states_have_no_exit_but_the_callers_void():
    exits = {(b, a): t.by for (b, a), t in TRANSITIONS.items() if b in FINAL}
    assert exits == {("settled", "voiding"): CALLER}
    assert all(t.by == DRIVER for (b, _), t in TRANSITIONS.items() if b in OPEN)


@pytest.mark.parametrize("state", sorted(OPEN))
def test_from_every_open_state_a_final_state_is_reachable(state):
    assert reachable(state) & FINAL


def test_the_driver_has_a_step_for_exactly_the_open_states():
    steps = {name.removeprefix("_step_") for name in vars(SettlementService) if name.startswith("_step_")}
    assert steps == OPEN


# ---------------------------------------------------------------------------------------------
# The driver's check
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("before,after", [("refused", "sending"), ("received", "settled"),
                                          ("reversed", "received"), ("voided", "voiding")])
def test_a_write_outside_the_table_is_refused_and_nothing_is_written(before, after):
    written = []

    async def awrite(row, values, **kw):
        written.append(values)
        return {**row, **values}

    driver = SimpleNamespace(store=SimpleNamespace(awrite=awrite))
    row = {"setl_id": "YS0001", "state": before}
    with pytest.raises(IllegalTransition, match=f"{before} -> {after}") as caught:
        asyncio.run(SettlementService._write(driver, row, {"state": after, "attempts": 1}))
    assert isinstance(caught.value, SettlementError) and written == []
    # A write without a state (a retry) and a transition of the table go through.
    asyncio.run(SettlementService._write(driver, row, {"attempts": 1}))
    asyncio.run(SettlementService._write(driver, {"setl_id": "YS0002", "state": "received"},
                                         {"state": "sending"}))
    assert written == [{"attempts": 1}, {"state": "sending"}]


# ---------------------------------------------------------------------------------------------
# What the driver writes in real runs (real platforms, a hub on a socket)
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def transitions(monkeypatch):
    """Every transition the running hub checks, in order: (setl_id, before, after)."""
    log: list[tuple[str, str, str]] = []
    check = service.check_transition

    def recording(setl_id: str, before: str, after: str) -> None:
        log.append((setl_id, before, after))
        check(setl_id, before, after)
    monkeypatch.setattr(service, "check_transition", recording)
    return log


def of(log, setl_id: str) -> list[tuple[str, str]]:
    return [(before, after) for sid, before, after in log if sid == setl_id]


def test_settle_then_void_walks_the_table(shub, sims, transitions):
    with shub.client(shub.token("insurer", "SH")) as c:
        settled = c.post("/settlement/settle", json=body("K-ST-1")).json()
        assert settled["status"] == "settled"
        assert c.post(f"/settlement/{settled['setl_id']}/void").status_code in (200, 202)
        assert poll(c, settled["setl_id"], until=("voided",))["status"] == "voided"
    assert of(transitions, settled["setl_id"]) == [("received", "sending"), ("sending", "settled"),
                                                   ("settled", "voiding"), ("voiding", "voided")]
    assert all(states.allowed(b, a) for _, b, a in transitions)


def test_a_refusal_is_one_transition(shub, sims, transitions):
    with shub.client(shub.token("insurer", "ZJ")) as c:
        answer = c.post("/settlement/settle", json=body("K-ST-2", cert="330106198504120089",
                                                          insuplc="310106", hospital=XIHU)).json()
    assert answer["status"] == "refused"
    assert of(transitions, answer["setl_id"]) == [("received", "refused")]


def test_giving_up_walks_through_reversing(database_url, engine, db, sims, transitions):
    hub, server = start_hub(database_url, engine, sims, replace(FAST, give_up=1.5))
    try:
        sims.set_faults("ZJ", next_faults=["slow"] + ["504"] * 12)  # 2207 processed, never answered
        with hub.client(hub.token("insurer", "SH")) as c:
            setl_id = c.post("/settlement/settle", json=body("K-ST-3")).json()["setl_id"]
            assert poll(c, setl_id, timeout=30)["refusal"]["code"] == "PLATFORM_UNAVAILABLE"
    finally:
        stop_hub(server)
    assert of(transitions, setl_id) == [("received", "sending"), ("sending", "reversing"),
                                        ("reversing", "reversed")]
