"""The sharing rules on every read path: treating relationship, emergency override, consent by
category, withdrawal, masking, audit. Visits are dated relative to now so the 30-day rule bites.

Cast: 李四 (ZJ-insured) was seen at a Zhejiang hospital (ZJ_H) with a respiratory infection and a
depressive episode (F32, sensitive), and at a Shanghai hospital (SH_H). OTHER is a Shanghai
hospital that never saw her.
"""

import json
from datetime import datetime, timedelta, timezone

import pytest

from hub import access, search
from hub.auth import Party
from hub.sharing import SharingChoices, set_choices
from mappers.common import RESIDENT_ID_SYSTEM
from tests.support.fhir import (OTHER, RID, SH_H, ZJ_H, close_world, make_world, sh_visit,
                                zj_visit)

FULL_VALUES = (RID, "13857300000", "13812345678", "罗星街道", "漕溪北路")


@pytest.fixture()
def world(hub):
    world = make_world(hub)
    yield world
    close_world(world)


def ids_of(client, pid):
    bundle = client.get(f"/fhir/Patient/{pid}/$everything").json()
    return [(e["resource"]["resourceType"], e["resource"]["id"]) for e in bundle["entry"]
            if e["search"]["mode"] == "match"]


def test_a_hospital_not_treating_finds_nothing_anywhere(world):
    other, pid = world[OTHER], world["pid"]
    assert other.get(f"/fhir/Patient/{pid}").status_code == 403
    assert other.get(f"/fhir/Patient/{pid}/$everything").status_code == 403
    assert other.get("/fhir/Patient", params={"identifier": f"{RESIDENT_ID_SYSTEM}|{RID}"}).status_code == 403
    values = {"date": "ge2000-01-01", "token": "x", "reference": pid, "string": "x"}
    for res_type, params in search.PARAMS.items():
        pinned = other.get(f"/fhir/{res_type}", params={"patient": pid})
        if res_type in search.CLINICAL_TYPES:
            assert pinned.status_code == 403, res_type
        assert other.get(f"/fhir/{res_type}").json()["total"] == 0 or res_type in ("Organization", "Practitioner")
        for param in params:
            answer = other.get(f"/fhir/{res_type}", params={param.name: values[param.kind]})
            assert answer.status_code in (200, 403)
            if answer.status_code == 200 and res_type not in ("Organization", "Practitioner"):
                assert answer.json()["total"] == 0, (res_type, param.name)
    for res_type, res_id in ids_of(world["admin"], pid):
        if res_type not in ("Organization", "Practitioner"):
            assert other.get(f"/fhir/{res_type}/{res_id}").status_code == 403, res_type


def test_treating_hospitals_read(world):
    for hospital in (ZJ_H, SH_H):
        assert world[hospital].get(f"/fhir/Patient/{world['pid']}/$everything").status_code == 200


def test_thirty_day_window_edges(hub, world):
    now = datetime.now(timezone.utc)
    with hub.client(hub.token("hospital", OTHER)) as c:
        c.post("/ingest/sh", content=sh_visit(OTHER, now - timedelta(days=10), "V10"))
    caller = access.Caller(Party("hospital", OTHER))
    with hub.engine.connect() as conn:
        start = now - timedelta(days=10)
        start = start.replace(microsecond=0)
        assert access.decide(conn, caller, world["pid"], start + timedelta(days=30) - timedelta(seconds=1)).allowed
        assert access.decide(conn, caller, world["pid"], start + timedelta(days=30)).allowed
        assert not access.decide(conn, caller, world["pid"], start + timedelta(days=30, seconds=1)).allowed
        assert not access.decide(conn, caller, world["pid"], start - timedelta(seconds=1)).allowed


def test_emergency_override_is_allowed_and_recorded(world):
    other, pid = world[OTHER], world["pid"]
    answer = other.get(f"/fhir/Patient/{pid}/$everything",
                       headers={"X-Emergency-Reason": "昏迷送急诊".encode()})
    assert answer.status_code == 200
    encoded = other.get(f"/fhir/Patient/{pid}", headers={"X-Emergency-Reason": "%E6%98%8F%E8%BF%B7"})
    assert encoded.status_code == 200
    events = world["admin"].get("/fhir/AuditEvent", params={"patient": pid}).json()["entry"]
    emergency = [e["resource"] for e in events
                 if e["resource"]["purposeOfEvent"][0]["coding"][0]["code"] == "ETREAT"]
    assert {e["purposeOfEvent"][0]["text"] for e in emergency} == {"昏迷送急诊", "昏迷"}
    assert emergency[0]["agent"][0]["who"]["identifier"]["value"] == OTHER


def test_insurer_sees_no_clinical_records(hub, world):
    with hub.client(hub.token("insurer", "SH")) as c:
        assert c.get(f"/fhir/Patient/{world['pid']}/$everything").status_code == 403
        assert c.get("/fhir/Condition").status_code == 403


def conditions(client, pid):
    bundle = client.get("/fhir/Condition", params={"patient": pid}).json()
    codes = {e["resource"]["code"]["coding"][0]["code"] for e in bundle["entry"]
             if e["search"]["mode"] == "match"}
    suppressed = [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    return codes, bundle["total"], suppressed


def test_sensitive_diagnosis_crosses_the_border_only_with_permission(hub, world):
    pid = world["pid"]
    codes, total, suppressed = conditions(world[SH_H], pid)
    assert "F32.900" not in codes and total == len(codes) == 2
    assert suppressed and suppressed[0]["resource"]["issue"][0]["code"] == "suppressed"
    assert "F32" not in json.dumps(suppressed, ensure_ascii=False)
    codes, _, suppressed = conditions(world[ZJ_H], pid)   # same province: shown
    assert "F32.900" in codes and not suppressed
    everything = world[SH_H].get(f"/fhir/Patient/{pid}/$everything").text
    assert "F32" not in everything and "抑郁" not in everything
    set_choices(hub.engine, pid, SharingChoices(mental=True))
    codes, total, suppressed = conditions(world[SH_H], pid)
    assert "F32.900" in codes and total == 3 and not suppressed


def test_withdrawn_cross_province_sharing_and_allowing_again(hub, world):
    pid = world["pid"]
    set_choices(hub.engine, pid, SharingChoices(cross_province=False))
    codes, total, suppressed = conditions(world[SH_H], pid)
    assert codes == {"J20.900"} and total == 1 and suppressed
    encounters = world[SH_H].get("/fhir/Encounter", params={"patient": pid}).json()
    assert encounters["total"] == 1
    set_choices(hub.engine, pid, SharingChoices(cross_province=True))
    assert conditions(world[SH_H], pid)[1] == 2


def test_paging_totals_count_only_what_may_be_seen(world):
    pid = world["pid"]
    first = world[SH_H].get("/fhir/Condition", params={"patient": pid, "_count": "1"}).json()
    assert first["total"] == 2
    assert any(l["relation"] == "next" for l in first["link"])


def test_masking_everywhere_a_hospital_looks(world):
    pid, sh = world["pid"], world[SH_H]
    answers = [sh.get(f"/fhir/Patient/{pid}"), sh.get(f"/fhir/Patient/{pid}/$everything"),
               sh.get("/fhir/Patient", params={"identifier": f"{RESIDENT_ID_SYSTEM}|{RID}"}),
               sh.get("/fhir/Patient", params={"_id": pid})]
    for answer in answers:
        assert answer.status_code == 200
        for value in FULL_VALUES:
            assert value not in answer.text, value
        assert '"MASKED"' in answer.text
    patient = answers[0].json()
    assert {i["value"] for i in patient["identifier"] if i["system"] == RESIDENT_ID_SYSTEM} == {"3304**********002X"}
    assert all(t["value"].startswith("138****") for t in patient["telecom"])
    admin_view = world["admin"].get(f"/fhir/Patient/{pid}").text
    assert RID in admin_view


def test_every_read_is_audited_allowed_and_refused(world):
    pid = world["pid"]
    world[SH_H].get(f"/fhir/Patient/{pid}")
    world[OTHER].get(f"/fhir/Patient/{pid}/$everything")
    events = world["admin"].get("/fhir/AuditEvent", params={"patient": pid}).json()
    outcomes = {(e["resource"]["agent"][0]["who"]["identifier"]["value"], e["resource"]["outcome"])
                for e in events["entry"] if "identifier" in e["resource"]["agent"][0]["who"]}
    assert (SH_H, "0") in outcomes and (OTHER, "4") in outcomes
    refused = world["admin"].get("/fhir/AuditEvent", params={"patient": pid, "outcome": "4"}).json()
    assert refused["total"] >= 1
    assert world[SH_H].get("/fhir/AuditEvent").status_code == 403
    from fhir.resources.R4B import get_fhir_model_class
    for entry in events["entry"]:
        get_fhir_model_class("AuditEvent").model_validate(entry["resource"])


def test_audit_cannot_be_edited(world):
    for method in ("post", "put", "delete"):
        answer = getattr(world["admin"], method)("/fhir/AuditEvent")
        assert answer.status_code in (404, 405)


def test_consent_rule_in_sql_and_in_python_agree(hub):
    """``consent_conditions`` (SQL, for searches) and ``consent_allows`` (Python, for
    $everything) are one rule written twice: check every combination against a real database."""
    import itertools

    from sqlalchemy import select
    from hub.models import Resource
    from hub.db import writer

    R = Resource.__table__
    provinces, categories = ["SH", "ZJ", None], [None, "mental", "hiv", "sti"]
    now = datetime.now(timezone.utc)
    with writer(hub.engine).begin() as conn:
        conn.execute(R.insert(), [
            {"res_type": "Condition", "res_id": f"{p}-{c}", "version": 1, "patient_id": "p",
             "province": p, "sensitive": c, "deleted": False, "last_updated": now, "content": b"{}"}
            for p, c in itertools.product(provinces, categories)])
    for flags in itertools.product([True, False], repeat=4):
        choices = SharingChoices(*flags)
        for reader in ("SH", "ZJ"):
            with hub.engine.connect() as conn:
                sql = set(conn.execute(select(R.c.res_id).where(
                    *access.consent_conditions(choices, reader))).scalars())
            python = {f"{p}-{c}" for p, c in itertools.product(provinces, categories)
                      if access.consent_allows(choices, reader, p, c)}
            assert sql == python, (flags, reader)


@pytest.mark.parametrize("category,code,name", [
    ("mental", "F20.000", "精神分裂症"), ("hiv", "B20.000", "HIV病导致的分枝杆菌感染"),
    ("sti", "A51.000", "原发性生殖器梅毒")])
def test_each_sensitive_category_both_ways(hub, category, code, name):
    now = datetime.now(timezone.utc)
    with hub.client(hub.token("hospital", ZJ_H)) as c:
        assert c.post("/ingest/zj", content=zj_visit(now - timedelta(days=1), code, name)).status_code == 200
    with hub.client(hub.token("hospital", SH_H)) as c:
        assert b"MSA|AA" in c.post("/ingest/sh", content=sh_visit(SH_H, now)).content
    with hub.client(hub.token("admin")) as admin:
        pid = admin.get("/fhir/Patient", params={"identifier": f"{RESIDENT_ID_SYSTEM}|{RID}"}).json()["entry"][0]["resource"]["id"]
    others = [c for c in ("mental", "hiv", "sti") if c != category]
    with hub.client(hub.token("hospital", SH_H)) as sh:
        codes, _, suppressed = conditions(sh, pid)
        assert code not in codes and suppressed and name not in sh.get(f"/fhir/Patient/{pid}/$everything").text
        set_choices(hub.engine, pid, SharingChoices(**{c: True for c in others}))
        assert code not in conditions(sh, pid)[0]  # permission for the other two is not enough
        set_choices(hub.engine, pid, SharingChoices(**{category: True}))
        codes, _, suppressed = conditions(sh, pid)
        assert code in codes and not suppressed
