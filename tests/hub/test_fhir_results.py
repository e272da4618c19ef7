"""What FHIR clients expect of /fhir (issue 17): the result parameters, versions and conditional
reads, unknown parameters under each ``Prefer: handling``, gzip, and a CapabilityStatement that
says what is supported; all under the sharing rules, over a real socket."""

import json
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime, parsedate_to_datetime
from urllib.parse import parse_qsl, urlsplit

import orjson
import pytest
from fhir.resources.R4B import get_fhir_model_class
from sqlalchemy import insert

from hub import search
from hub.db import writer
from hub.models import Resource, ResourceHistory
from tests.support.fhir import (OTHER, SH_H, ZJ, ZJ_H, close_world, load_zj_fixtures,
                                make_world, patient_id, send_zj)

SUBSETTED = ("http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "SUBSETTED")
GLUCOSE = "http://loinc.org|2345-7"


@pytest.fixture()
def loaded(hub):
    """The Zhejiang fixtures ingested by their hospitals; an admin client to read them."""
    load_zj_fixtures(hub)
    with hub.client(hub.token("admin")) as client:
        yield client


@pytest.fixture()
def world(hub):
    world = make_world(hub)
    yield world
    close_world(world)


def matches(bundle) -> list[dict]:
    """The resources of a searchset's matches, or of a history's entries that have one."""
    return [e["resource"] for e in bundle.get("entry", [])
            if "resource" in e and e.get("search", {}).get("mode", "match") == "match"]


def outcomes(bundle) -> list[dict]:
    return [e["resource"] for e in bundle.get("entry", [])
            if e.get("search", {}).get("mode") == "outcome"]


def subsetted(resource) -> bool:
    return any((t["system"], t["code"]) == SUBSETTED for t in resource["meta"].get("tag", []))


def link(bundle, relation):
    return next((l["url"] for l in bundle["link"] if l["relation"] == relation), None)


def every_page(client, url, params) -> tuple[list[dict], list[dict]]:
    """All matches through the ``next`` links, and each page's Bundle."""
    found, pages = [], []
    while url:
        answer = client.get(url, params=params)
        assert answer.status_code == 200, answer.text
        pages.append(answer.json())
        found += matches(pages[-1])
        url, params = link(pages[-1], "next"), None
    return found, pages


def validate(resource):
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)


# --- _summary and _elements -----------------------------------------------------------------


def test_summary_count_is_the_total_alone(loaded):
    full = loaded.get("/fhir/Observation").json()
    counted = loaded.get("/fhir/Observation", params={"_summary": "count"}).json()
    assert counted["total"] == full["total"] == len(matches(full)) > 0
    assert "entry" not in counted and link(counted, "next") is None
    get_fhir_model_class("Bundle").model_validate(counted)


def test_summary_true_keeps_the_summary_elements_and_says_so(loaded):
    whole = {r["id"]: r for r in matches(loaded.get("/fhir/Observation").json())}
    summary = matches(loaded.get("/fhir/Observation", params={"_summary": "true"}).json())
    assert {r["id"] for r in summary} == set(whole)
    for resource in summary:
        full = whole[resource["id"]]
        assert "category" in full and "category" not in resource  # not a summary element
        assert resource["code"] == full["code"] and resource["status"] == full["status"]
        assert resource["subject"] == full["subject"]
        assert subsetted(resource) and not subsetted(full)
        validate(resource)


def test_summary_text_and_data(loaded):
    for resource in matches(loaded.get("/fhir/Encounter", params={"_summary": "text"}).json()):
        # id, meta, text (none is sent) and the mandatory elements: status and class
        assert set(resource) == {"resourceType", "id", "meta", "status", "class"}
        assert subsetted(resource)
        validate(resource)
    data = matches(loaded.get("/fhir/Encounter", params={"_summary": "data"}).json())
    whole = {r["id"]: r for r in matches(loaded.get("/fhir/Encounter").json())}
    for resource in data:  # nothing carries a narrative, so nothing is left out or tagged
        assert resource == whole[resource["id"]]


def test_elements_keeps_what_is_named_and_what_is_mandatory(loaded):
    bundle = loaded.get("/fhir/Observation", params={"_elements": "code,effective"}).json()
    for resource in matches(bundle):
        assert "code" in resource and "effectiveDateTime" in resource
        assert set(resource) <= {"resourceType", "id", "meta", "code", "status",
                                 "effectiveDateTime", "effectivePeriod"}
        assert subsetted(resource)
        validate(resource)
    assert "_elements=code%2Ceffective" in link(bundle, "self")


def test_elements_and_summary_apply_to_reads_and_everything(loaded):
    pid = patient_id(loaded)
    patient = loaded.get(f"/fhir/Patient/{pid}", params={"_elements": "gender"}).json()
    assert set(patient) == {"resourceType", "id", "meta", "gender"} and subsetted(patient)
    bundle = loaded.get(f"/fhir/Patient/{pid}/$everything", params={"_summary": "true"}).json()
    observations = [r for r in matches(bundle) if r["resourceType"] == "Observation"]
    assert observations and all(subsetted(r) and "category" not in r for r in observations)


@pytest.mark.parametrize("params", [{"_summary": "yes"}, {"_elements": "code.coding"},
                                    {"_summary": "true", "_elements": "code"},
                                    {"_total": "some"}, {"_count": "-1"}, {"_sort": "subject"},
                                    {"_sort": "-"}])
def test_bad_result_parameters_are_400(loaded, params):
    answer = loaded.get("/fhir/Observation", params=params)
    assert answer.status_code == 400, params
    assert answer.json()["resourceType"] == "OperationOutcome"


def test_a_result_parameter_given_twice_or_a_foreign_format(loaded):
    assert loaded.get("/fhir/Observation?_sort=date&_sort=-date").status_code == 400
    assert loaded.get("/fhir/Observation", params={"_format": "xml"}).status_code == 406
    assert loaded.get("/fhir/Observation", params={"_format": "json"}).status_code == 200
    pid = patient_id(loaded)
    assert loaded.get(f"/fhir/Patient/{pid}", params={"_summary": "count"}).status_code == 400


def test_summaries_leak_nothing_withheld(world):
    sh, pid = world[SH_H], world["pid"]
    full = sh.get("/fhir/Condition", params={"patient": pid}).json()
    for params in ({"_summary": "count"}, {"_summary": "true"}, {"_elements": "code"},
                   {"_summary": "data"}):
        answer = sh.get("/fhir/Condition", params={"patient": pid, **params})
        bundle = answer.json()
        assert bundle["total"] == full["total"] == 2, params  # F32 is held back from SH
        assert [o["issue"][0]["code"] for o in outcomes(bundle)] == ["suppressed"], params
        assert "F32" not in answer.text and "抑郁" not in answer.text
    everything = sh.get(f"/fhir/Patient/{pid}/$everything", params={"_summary": "true"})
    assert "F32" not in everything.text and "抑郁" not in everything.text


def test_a_summary_of_a_patient_stays_masked(world):
    sh, pid = world[SH_H], world["pid"]
    patient = sh.get(f"/fhir/Patient/{pid}", params={"_summary": "true"}).json()
    assert "MASKED" in json.dumps(patient["meta"])
    assert "33042119850412002X" not in json.dumps(patient)


# --- _sort, _total, _lastUpdated ------------------------------------------------------------


def test_sort_by_date_both_ways(loaded):
    def starts(sort):
        bundle = loaded.get("/fhir/Encounter", params={"_sort": sort}).json()
        return [r["period"]["start"] for r in matches(bundle)]

    assert starts("date") == sorted(starts("date")) and len(starts("date")) >= 3
    assert starts("-date") == sorted(starts("date"), reverse=True)


@pytest.mark.parametrize("sort,pick", [("code", min), ("-code", max)])
def test_sort_by_token_is_stable_across_pages(loaded, sort, pick):
    found, pages = every_page(loaded, "/fhir/Observation", {"_sort": sort, "_count": "2"})
    total = pages[0]["total"]
    assert len(found) == total == len({r["id"] for r in found}) and len(pages) > 2
    keys = [pick(c["code"] for c in r["code"]["coding"]) for r in found]
    assert keys == sorted(keys, reverse=sort.startswith("-"))
    assert all(f"_sort={sort}" in link(p, "self") for p in pages)


def test_sort_by_id_and_last_updated(loaded):
    ids = [r["id"] for r in matches(loaded.get("/fhir/Condition", params={"_sort": "-_id"}).json())]
    assert ids == sorted(ids, reverse=True)
    stamps = [r["meta"]["lastUpdated"] for r in matches(
        loaded.get("/fhir/Condition", params={"_sort": "_lastUpdated,_id"}).json())]
    assert stamps == sorted(stamps)


def test_total_none_skips_the_count_and_still_pages(loaded):
    whole = loaded.get("/fhir/Observation").json()["total"]
    found, pages = every_page(loaded, "/fhir/Observation", {"_total": "none", "_count": "3"})
    assert all("total" not in p for p in pages) and len(pages) > 1
    assert len(found) == whole
    counted = loaded.get("/fhir/Observation", params={"_total": "accurate", "_count": "3"}).json()
    assert counted["total"] == whole


def stamp(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_last_updated_with_prefixes(loaded):
    now = datetime.now(timezone.utc)
    everything = loaded.get("/fhir/Encounter").json()["total"]
    hour_ago, later = stamp(now - timedelta(hours=1)), stamp(now + timedelta(hours=1))
    totals = {value: loaded.get("/fhir/Encounter", params={"_lastUpdated": value}).json()["total"]
              for value in (f"ge{hour_ago}", f"lt{hour_ago}", f"gt{later}", f"le{later}",
                            f"ne{hour_ago}", f"ge{hour_ago},lt{hour_ago}")}
    assert totals == {f"ge{hour_ago}": everything, f"lt{hour_ago}": 0, f"gt{later}": 0,
                      f"le{later}": everything, f"ne{hour_ago}": everything,
                      f"ge{hour_ago},lt{hour_ago}": everything}
    assert everything > 0
    assert loaded.get("/fhir/Encounter", params={"_lastUpdated": "sa2024"}).status_code == 400


def test_audit_sorts_oldest_first_on_request(loaded):
    pid = patient_id(loaded)
    for _ in range(2):
        loaded.get(f"/fhir/Patient/{pid}")
    def times(**params):
        return [r["recorded"] for r in matches(loaded.get("/fhir/AuditEvent", params=params).json())]
    assert times(_sort="date") == sorted(times()) and len(times()) >= 2
    assert times() == sorted(times(), reverse=True)


# --- versions: ETag, conditional read, vread, _history --------------------------------------


def test_read_has_etag_and_last_modified_and_answers_304(loaded):
    url = f"/fhir/Patient/{patient_id(loaded)}"
    answer = loaded.get(url)
    meta = answer.json()["meta"]
    assert answer.headers["etag"] == f'W/"{meta["versionId"]}"'
    modified = parsedate_to_datetime(answer.headers["last-modified"])
    updated = datetime.fromisoformat(meta["lastUpdated"].replace("Z", "+00:00"))
    assert modified == updated.replace(microsecond=0)
    same = loaded.get(url, headers={"If-None-Match": answer.headers["etag"]})
    assert same.status_code == 304 and same.content == b"" and same.headers["etag"]
    assert loaded.get(url, headers={"If-None-Match": 'W/"99", *'}).status_code == 304
    assert loaded.get(url, headers={"If-None-Match": 'W/"99"'}).status_code == 200
    assert loaded.get(url, headers={"If-Modified-Since": answer.headers["last-modified"]}
                      ).status_code == 304
    before = format_datetime(modified - timedelta(seconds=1), usegmt=True)
    assert loaded.get(url, headers={"If-Modified-Since": before}).status_code == 200
    assert loaded.get(url, headers={"If-Modified-Since": "yesterday"}).status_code == 200


def audit_total(world) -> int:
    return world["admin"].get("/fhir/AuditEvent", params={"patient": world["pid"]}).json()["total"]


def test_a_conditional_read_follows_the_rules_and_is_audited(world):
    url = f"/fhir/Patient/{world['pid']}"
    etag = world[SH_H].get(url).headers["etag"]
    before = audit_total(world)
    assert world[SH_H].get(url, headers={"If-None-Match": etag}).status_code == 304
    assert world[OTHER].get(url, headers={"If-None-Match": "*"}).status_code == 403
    assert audit_total(world) == before + 2


def glucose_id(client, pid) -> str:
    bundle = client.get("/fhir/Observation", params={"patient": pid, "code": GLUCOSE}).json()
    return matches(bundle)[0]["id"]


def resend_basic(hub, change) -> None:
    doc = json.loads((ZJ / "upload_basic.json").read_bytes())
    change(doc["jzjl"][0])
    assert send_zj(hub, json.dumps(doc, ensure_ascii=False).encode())["stored"] == 1


def test_history_and_vread_of_a_changed_and_retired_resource(hub, loaded):
    pid = patient_id(loaded)
    obs = glucose_id(loaded, pid)
    resend_basic(hub, lambda visit: visit["jyjg"][0].update(jgz="7.2"))
    url = f"/fhir/Observation/{obs}"
    assert loaded.get(url).json()["meta"]["versionId"] == "2"
    history = loaded.get(f"{url}/_history").json()
    assert history["type"] == "history" and history["total"] == 2
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]
    assert [e["resource"]["valueQuantity"]["value"] for e in history["entry"]] == [7.2, 6.8]
    assert [e["request"]["method"] for e in history["entry"]] == ["PUT", "POST"]
    get_fhir_model_class("Bundle").model_validate(history)
    first = loaded.get(f"{url}/_history/1")
    assert first.json()["valueQuantity"]["value"] == 6.8 and first.headers["etag"] == 'W/"1"'
    assert loaded.get(f"{url}/_history/9").status_code == 404
    assert loaded.get(f"{url}/_history/x").status_code == 404
    resend_basic(hub, lambda visit: visit.update(jyjg=[]))  # the result withdrawn: retired
    assert loaded.get(url).status_code == 410
    history = loaded.get(f"{url}/_history").json()
    assert history["total"] == 3 and history["entry"][0]["request"]["method"] == "DELETE"
    assert "resource" not in history["entry"][0]
    assert loaded.get(f"{url}/_history/3").status_code == 410
    assert loaded.get(f"{url}/_history/2").status_code == 200
    paged, pages = every_page(loaded, f"{url}/_history", {"_count": "1"})
    assert len(pages) == 3 and [r["meta"]["versionId"] for r in paged] == ["2", "1"]
    assert all(p["total"] == 3 for p in pages)


def put_versions(hub, pid: str, res_id: str, current: str, earlier: str) -> None:
    """A ZJ Condition of the cast whose diagnosis went from ``earlier`` to ``current``."""
    now = datetime.now(timezone.utc)

    def content(code):
        return orjson.dumps({"code": {"coding": [{"code": code}]}, "id": res_id,
                             "resourceType": "Condition", "subject": {"reference": f"Patient/{pid}"}})

    from hub.sensitivity import category_of_code

    with writer(hub.engine).begin() as conn:
        conn.execute(insert(Resource), [{
            "res_type": "Condition", "res_id": res_id, "version": 2, "patient_id": pid,
            "hospital": ZJ_H, "province": "ZJ", "sensitive": category_of_code(current),
            "deleted": False, "last_updated": now, "content": content(current)}])
        conn.execute(insert(ResourceHistory), [{
            "res_type": "Condition", "res_id": res_id, "version": 1, "deleted": False,
            "last_updated": now - timedelta(hours=1), "content": content(earlier)}])


def test_history_judges_each_version_under_the_sharing_rules(hub, world):
    pid, sh, zj = world["pid"], world[SH_H], world[ZJ_H]
    put_versions(hub, pid, "c-was-f32", current="J06.900", earlier="F32.900")
    put_versions(hub, pid, "c-now-f32", current="F32.900", earlier="J06.900")
    answer = sh.get("/fhir/Condition/c-was-f32/_history")
    assert answer.json()["total"] == 1 and "F32" not in answer.text
    assert [o["issue"][0]["code"] for o in outcomes(answer.json())] == ["suppressed"]
    assert sh.get("/fhir/Condition/c-was-f32/_history/1").status_code == 404
    assert sh.get("/fhir/Condition/c-was-f32/_history/2").status_code == 200
    # what a resource became is not to be guessed from what it was
    assert sh.get("/fhir/Condition/c-now-f32/_history").status_code == 404
    assert sh.get("/fhir/Condition/c-now-f32/_history/1").status_code == 404
    assert zj.get("/fhir/Condition/c-was-f32/_history").json()["total"] == 2  # same province
    assert world[OTHER].get("/fhir/Condition/c-was-f32/_history").status_code == 403
    events = world["admin"].get("/fhir/AuditEvent", params={"patient": pid}).json()
    assert any("history Condition/c-was-f32" in json.dumps(e, ensure_ascii=False)
               for e in matches(events))


def test_masked_in_history_too(world):
    sh, pid = world[SH_H], world["pid"]
    answer = sh.get(f"/fhir/Patient/{pid}/_history")
    assert answer.status_code == 200 and answer.json()["total"] >= 1
    assert "33042119850412002X" not in answer.text and '"MASKED"' in answer.text


# --- unknown parameters and Prefer: handling -------------------------------------------------


def test_unknown_parameters_by_handling(loaded):
    asked = {"code": "J06.900", "colour": "red", "_include": "Condition:subject"}
    for prefer in (None, "handling=strict"):
        headers = {"Prefer": prefer} if prefer else {}
        answer = loaded.get("/fhir/Condition", params=asked, headers=headers)
        assert answer.status_code == 400
        diagnostics = answer.json()["issue"][0]["diagnostics"]
        assert "colour" in diagnostics and "_include" in diagnostics
    lenient = loaded.get("/fhir/Condition", params=asked,
                         headers={"Prefer": "return=representation, handling=lenient"}).json()
    assert lenient["total"] == loaded.get("/fhir/Condition", params={"code": "J06.900"}).json()["total"] > 0
    [outcome] = outcomes(lenient)
    assert {i["code"] for i in outcome["issue"]} == {"not-supported"}
    assert "colour" in json.dumps(outcome) and "_include" in json.dumps(outcome)
    names = {n for n, _ in parse_qsl(urlsplit(link(lenient, "self")).query)}
    assert "colour" not in names and "_include" not in names and "code" in names


def test_unknown_parameters_on_reads_history_and_everything(loaded):
    pid = patient_id(loaded)
    lenient = {"Prefer": "handling=lenient"}
    assert loaded.get(f"/fhir/Patient/{pid}", params={"_pretty": "true"}).status_code == 400
    assert loaded.get(f"/fhir/Patient/{pid}", params={"x": "1"}, headers=lenient).status_code == 400
    url = f"/fhir/Patient/{pid}/$everything"
    assert loaded.get(url, params={"_count": "10"}).status_code == 400
    bundle = loaded.get(url, params={"_count": "10"}, headers=lenient).json()
    assert "_count" in json.dumps(outcomes(bundle)) and len(matches(bundle)) > 10
    history = loaded.get(f"/fhir/Patient/{pid}/_history", params={"_since": "2024"},
                         headers=lenient).json()
    assert "_since" in json.dumps(outcomes(history))


# --- gzip ------------------------------------------------------------------------------------


def test_gzip_when_the_client_accepts_it(loaded):
    url = f"/fhir/Patient/{patient_id(loaded)}/$everything"
    packed = loaded.get(url, headers={"Accept-Encoding": "gzip"})
    plain = loaded.get(url, headers={"Accept-Encoding": "identity"})
    assert packed.headers["content-encoding"] == "gzip"
    assert packed.headers["content-type"].startswith("application/fhir+json")
    assert "accept-encoding" in packed.headers["vary"].lower()
    assert packed.num_bytes_downloaded < len(plain.content) / 3
    assert "content-encoding" not in plain.headers and packed.content == plain.content
    small = loaded.get("/fhir/Patient/nope", headers={"Accept-Encoding": "gzip"})
    assert small.status_code == 404 and "content-encoding" not in small.headers
    schema = loaded.get("/openapi.json", headers={"Accept-Encoding": "gzip"})
    assert schema.headers["content-encoding"] == "gzip"
    assert schema.headers["content-type"] == "application/json"


# --- the CapabilityStatement ------------------------------------------------------------------


def test_capability_statement_says_what_is_supported(hub, loaded):
    statement = hub.client().get("/fhir/metadata").json()
    get_fhir_model_class("CapabilityStatement").model_validate(statement)
    rest = statement["rest"][0]
    by_type = {r["type"]: r for r in rest["resource"]}
    assert set(by_type) == set(search.PARAMS) | {"AuditEvent", "Subscription"}
    assert [i["code"] for i in by_type["Subscription"]["interaction"]] == ["create", "read", "delete",
                                                                             "search-type"]
    assert loaded.get("/fhir/Subscription", params={"_count": "1"}).status_code == 400  # as it says
    encounter = by_type["Encounter"]
    assert {(p["name"], p["type"]) for p in encounter["searchParam"]} == {
        ("patient", "reference"), ("date", "date"), ("identifier", "token"), ("class", "token"),
        ("_id", "token"), ("_lastUpdated", "date")}
    assert [i["code"] for i in encounter["interaction"]] == ["read", "vread", "history-instance",
                                                             "search-type"]
    assert encounter["conditionalRead"] == "full-support" and encounter["readHistory"]
    assert [o["name"] for o in by_type["Patient"]["operation"]] == ["everything"]
    assert {p["name"] for p in rest["searchParam"]} == {
        "_count", "_offset", "_sort", "_total", "_summary", "_elements", "_format"}
    values = {"date": "ge2000-01-01", "token": "x", "reference": "x", "number": "1",
              "_format": "json", "_summary": "count", "_total": "none", "_elements": "id"}
    for resource in (r for r in rest["resource"] if r["type"] != "Subscription"):
        # everything it declares is taken, nothing else is
        values["_sort"] = search.sort_keys(resource["type"])[-1]
        for param in resource["searchParam"] + rest["searchParam"]:
            value = values.get(param["name"]) or values[param["type"]]
            answer = loaded.get(f"/fhir/{resource['type']}", params={param["name"]: value})
            assert answer.status_code == 200, (resource["type"], param["name"], answer.text)
        assert loaded.get(f"/fhir/{resource['type']}", params={"name": "x"}).status_code == 400
