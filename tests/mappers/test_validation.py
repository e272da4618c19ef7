"""The run-time validator (``mappers.validation``) against true R4 4.0.1 and against
``fhir.resources``.

The test's R4 validator is two independent parts, because no one library here is a true R4
validator: the pure-Python ``jsonschema`` library (another implementation than jsonschema-rs)
with the vendored official 4.0.1 schema, unchanged, for structure, types, codes and patterns;
and ``fhir.resources`` R4B for what the schema cannot state (required primitives and choices,
real dates), where R4B's rules are R4's for the types the hub serves (``test_required_table_*``
checks the cardinalities). A resource is valid R4 when both accept it. On the valid corpus all
three (runtime, schema, R4B) accept every resource; on the broken set the runtime validator
refuses everything, and the table says which of the other two refuses each case (so where R4B
and R4 differ, e.g. ``Observation.status: "bogus"``, the test shows it)."""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
import re
from datetime import date
from functools import cache

import jsonschema
import pytest
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from hub import search
from mappers import validation
from mappers.common import validate
from mappers.errors import InvalidValue
from tests.support.common import FIXTURES
from tests.support.corpus import CHANNELS, resources

HL7_SHA256 = "2230406893b4cf002a4ee1e5e2bbeca22ac5d2d4931b3e9ef7b9594bbc376a01"


@cache
def _official() -> dict:
    raw = gzip.decompress(validation.SCHEMA_PATH.read_bytes())
    assert hashlib.sha256(raw).hexdigest() == HL7_SHA256
    return json.loads(raw)


@cache
def _schema_validator(res_type: str) -> jsonschema.Draft6Validator:
    return jsonschema.Draft6Validator({"$ref": f"#/definitions/{res_type}",
                                       "definitions": _official()["definitions"]})


def schema_refuses(resource: dict) -> bool:
    """The unchanged official schema, by the pure-Python implementation."""
    return not _schema_validator(resource["resourceType"]).is_valid(resource)


def r4b_refuses(resource: dict) -> bool:
    try:
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    except (ValidationError, KeyError, ValueError):
        return True
    return False


def runtime_refusal(resource: dict) -> str | None:
    try:
        validate(resource)
    except InvalidValue as exc:
        return str(exc)
    return None


# ---------------------------------------------------------------------------------------------
# The vendored schema is HL7's 4.0.1 file
# ---------------------------------------------------------------------------------------------


def test_the_vendored_schema_is_hl7s_r4_4_0_1():
    schema = _official()  # checks the SHA-256 of HL7's bytes
    assert schema["id"] == "http://hl7.org/fhir/json-schema/4.0"
    # 4.0.1, not 4.0.0: the technical correction added its own version and Meta as an open type
    versions = schema["definitions"]["CapabilityStatement"]["properties"]["fhirVersion"]["enum"]
    assert "4.0.1" in versions
    assert "valueMeta" in schema["definitions"]["Extension"]["properties"]
    assert validation.load_schema() == schema


# ---------------------------------------------------------------------------------------------
# (a) The valid corpus: every mapper's output passes all three
# ---------------------------------------------------------------------------------------------

# Corpus resources where the validators disagree: (channel, file, type) -> the refusers. None
# today; a difference that appears must be listed here, with why, not hidden.
CORPUS_DIFFERENCES: dict[tuple[str, str, str], set[str]] = {}


@pytest.mark.parametrize("channel", CHANNELS)
def test_every_mapper_output_passes_runtime_r4_schema_and_fhir_resources(channel):
    mapper, paths = CHANNELS[channel]
    seen, differences = set(), {}
    for path in paths:
        for resource in resources(mapper(path)):
            seen.add(resource["resourceType"])
            refusers = {name for name, refuses in (
                ("runtime", runtime_refusal(resource) is not None),
                ("schema", schema_refuses(resource)), ("r4b", r4b_refuses(resource))) if refuses}
            if refusers:
                differences[(channel, path.name, resource["resourceType"])] = refusers
    assert differences == {k: v for k, v in CORPUS_DIFFERENCES.items() if k[0] == channel}
    assert {"Patient", "Encounter", "Observation", "Organization"} <= seen  # not vacuous


def test_the_corpus_covers_every_type_the_mappers_make():
    made = {r["resourceType"] for mapper, paths in CHANNELS.values()
            for path in paths for r in resources(mapper(path))}
    assert made == set(search.PARAMS)


# ---------------------------------------------------------------------------------------------
# (b) Broken resources: the runtime validator refuses each, naming the element; true R4 too
# ---------------------------------------------------------------------------------------------


@cache
def _valid(res_type: str) -> dict:
    """A real resource of ``res_type`` from the fixtures (Zhejiang's, then Shanghai's)."""
    for channel in ("zj", "sh", "js"):
        mapper, paths = CHANNELS[channel]
        for path in paths:
            if path.is_relative_to(FIXTURES):
                for resource in resources(mapper(path)):
                    if resource["resourceType"] == res_type:
                        return resource
    raise LookupError(res_type)


def _broken(res_type: str, path: str, value) -> dict:
    """A valid resource with ``path`` (dotted, ``[i]`` for an index) set to ``value``, or
    removed when value is ``...``."""
    resource = copy.deepcopy(_valid(res_type))
    *parents, last = path.replace("[", ".").replace("]", "").split(".")
    node = resource
    for step in parents:
        node = node[int(step)] if step.isdigit() else node[step]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return resource


# name -> (type, path, value, the element the message names, which independent validators
# refuse it: "schema" = official 4.0.1 schema by pure-Python jsonschema, "r4b" = fhir.resources)
BROKEN = {
    "bogus Observation.status": ("Observation", "status", "bogus", "Observation.status",
                                 {"schema"}),
    "bogus Patient.gender": ("Patient", "gender", "M", "Patient.gender", {"schema"}),
    "bogus Encounter.status": ("Encounter", "status", "done", "Encounter.status", {"schema"}),
    "number as a string": ("Observation", "valueQuantity.value", "6.8",
                           "Observation.valueQuantity.value", {"schema"}),
    "object for a list": ("Observation", "category", {"text": "lab"}, "Observation.category",
                          {"schema", "r4b"}),
    # The official schema types no complex element: it takes a string for one (runtime: object)
    "string for a CodeableConcept": ("Observation", "code", "GLU", "Observation.code", {"r4b"}),
    "string for a Reference": ("Observation", "subject", "Patient/1", "Observation.subject",
                               {"r4b"}),
    "unknown element": ("Observation", "priority", "high", "Observation.priority",
                        {"schema", "r4b"}),
    "unknown element deep": ("Encounter", "class.level", 1, "Encounter.class.level",
                             {"schema", "r4b"}),
    # The official schema's integers are numbers with a pattern (which numbers skip)
    "a fraction for an unsignedInt": ("ImagingStudy", "numberOfSeries", 1.5,
                                      "ImagingStudy.numberOfSeries", {"r4b"}),
    "a negative unsignedInt": ("MedicationRequest", "dispenseRequest",
                               {"numberOfRepeatsAllowed": -1},
                               "MedicationRequest.dispenseRequest.numberOfRepeatsAllowed", {"r4b"}),
    "an integer past 32 bits": ("ImagingStudy", "numberOfInstances", 2**31,
                                "ImagingStudy.numberOfInstances", {"r4b"}),
    "30 February": ("Observation", "effectiveDateTime", "2026-02-30T10:30:00+08:00",
                    "Observation.effectiveDateTime", {"r4b"}),
    "29 February of a common year": ("Patient", "birthDate", "2023-02-29", "Patient.birthDate",
                                     {"r4b"}),
    "a time without a zone": ("Observation", "effectiveDateTime", "2024-03-15T10:30:00",
                              "Observation.effectiveDateTime", {"schema", "r4b"}),
    "a zone past +14:00": ("Observation", "effectiveDateTime", "2024-03-15T10:30:00+15:00",
                           "Observation.effectiveDateTime", {"schema", "r4b"}),
    "month 13": ("Encounter", "period.start", "2024-13-01T08:00:00+08:00",
                 "Encounter.period.start", {"schema", "r4b"}),
    "missing Observation.status": ("Observation", "status", ..., "Observation.status", {"r4b"}),
    "missing Observation.code": ("Observation", "code", ..., "Observation.code",
                                 {"schema", "r4b"}),
    "missing Encounter.status": ("Encounter", "status", ..., "Encounter.status", {"r4b"}),
    "missing MedicationRequest.intent": ("MedicationRequest", "intent", ...,
                                         "MedicationRequest.intent", {"r4b"}),
    "missing MedicationRequest.medication[x]": (
        "MedicationRequest", "medicationCodeableConcept", ..., "MedicationRequest.medication[x]",
        {"r4b"}),
    "missing DiagnosticReport.status": ("DiagnosticReport", "status", ...,
                                        "DiagnosticReport.status", {"r4b"}),
    "extension without url": ("Patient", "extension", [{"valueString": "x"}],
                              "Patient.extension[0].url", {"r4b"}),
    "empty string": ("Patient", "name[0].text", "", "Patient.name[0].text", {"schema", "r4b"}),
    "id with a space": ("Observation", "id", "a b", "Observation.id", {"schema", "r4b"}),
}


@pytest.mark.parametrize("name", BROKEN)
def test_a_broken_resource_is_refused_by_runtime_and_by_true_r4(name):
    res_type, path, value, element, refusers = BROKEN[name]
    resource = _broken(res_type, path, value)
    reason = runtime_refusal(resource)
    assert reason is not None, "valid for the runtime validator"
    assert reason.startswith((f"{element}:", f"{element}.")), reason
    observed = {n for n, refuses in (("schema", schema_refuses(resource)),
                                     ("r4b", r4b_refuses(resource))) if refuses}
    assert observed, "valid for the true R4 validator"
    assert observed == refusers  # where R4B and the R4 schema differ, this says how


def test_a_value_extension_stands_for_a_required_primitive():
    """R4: a required primitive may be given as ``_status`` with an extension only."""
    resource = _broken("Observation", "status", ...)
    resource["_status"] = {"extension": [{
        "url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
        "valueCode": "unknown"}]}
    assert runtime_refusal(resource) is None
    assert not schema_refuses(resource) and not r4b_refuses(resource)


def test_real_dates():
    ok = ["2024-02-29", "2000-02-29", "2024", "2024-02", "2016-12-31T23:59:60Z"]
    bad = ["2024-02-30", "2100-02-29", "1900-02-29", "2024-04-31", "2023-02-29T08:00:00+08:00"]
    for text in ok:
        assert runtime_refusal(_broken("Observation", "effectiveDateTime", text)) is None, text
    for text in bad:
        assert runtime_refusal(_broken("Observation", "effectiveDateTime", text)) == \
            f"Observation.effectiveDateTime: {text!r} names a day that does not exist"


def test_the_calendar_is_gregorian():
    """``CALENDAR`` against Python's calendar: 29 February of every year, every day of four."""
    pattern = re.compile(validation.CALENDAR)
    days = [(y, 2, 29) for y in range(1, 10000)]
    days += [(y, m, d) for y in (1900, 2000, 2023, 2024) for m in range(1, 13)
             for d in range(1, 32)]
    for y, m, d in days:
        try:
            real = bool(date(y, m, d))
        except ValueError:
            real = False
        assert bool(pattern.match(f"{y:04d}-{m:02d}-{d:02d}")) == real, (y, m, d)


def test_an_unknown_resource_type_is_refused():
    assert runtime_refusal({"resourceType": "Visit"}) == \
        "resourceType: 'Visit' is not a FHIR R4 resource type"


def test_a_refusal_surfaces_as_a_located_rejection():
    """Through a mapper, as the ingest answer shows it: the visit is rejected at its location, the
    reason names the element and why (a line separator is not allowed in an R4 string)."""
    from mappers import zhejiang_json

    body = (FIXTURES / "zj" / "upload_basic.json").read_text("utf-8")
    broken = body.replace('"ksmc": "呼吸内科"', '"ksmc": "呼吸\u2028内科"')
    assert broken != body
    result = zhejiang_json.map_upload(broken.encode(), "H33042100015")
    assert result.records == []
    assert [r.as_dict() for r in result.rejected] == [{
        "location": "jzjl[0]",
        "reason": "Encounter.serviceType.coding[0].display: '呼吸\\u2028内科' is not a valid "
                  "R4 string"}]


# ---------------------------------------------------------------------------------------------
# The required table is R4's (fhir.resources' cardinalities), complete for the served types
# ---------------------------------------------------------------------------------------------


def test_required_table_names_real_elements():
    definitions = _official()["definitions"]
    for definition, elements in validation.REQUIRED.items():
        properties = definitions[definition]["properties"]
        for element in elements:
            stem = element.removesuffix("[x]")
            assert any(p == stem or (element.endswith("[x]") and p.startswith(stem))
                       for p in properties), f"{definition}.{element}"


def _model_class(annotation):
    """The fhir.resources model class inside a field's annotation (Optional[List[XType]] -> X)."""
    if hasattr(annotation, "get_model_klass"):
        return annotation.get_model_klass()
    for arg in getattr(annotation, "__args__", ()):
        if (found := _model_class(arg)) is not None:
            return found
    return None


def _r4b_required(model) -> set[str]:
    names = set()
    for info in model.model_fields.values():
        extra = info.json_schema_extra or {}
        if extra.get("one_of_many_required"):
            names.add(f"{extra['one_of_many']}[x]")
        elif info.is_required() or extra.get("element_required"):
            names.add(info.alias)
    return names - {"resource_type", "resourceType"}


def _ref(node: dict) -> str | None:
    ref = node.get("$ref") or node.get("items", {}).get("$ref")
    return ref.rsplit("/", 1)[-1] if ref else None


def test_required_table_is_complete_for_every_type_the_served_types_reach():
    """Walk the schema from each served type, beside fhir.resources' model: every element with
    min 1 is in the schema's ``required`` or in ``REQUIRED``, and ``REQUIRED`` holds no more."""
    definitions = _official()["definitions"]
    missing, reached = [], {}
    todo = [(t, get_fhir_model_class(t)) for t in search.PARAMS]
    while todo:
        name, model = todo.pop()
        if name in reached or "properties" not in definitions.get(name, {}) or model is None:
            continue
        reached[name] = model
        have = set(definitions[name].get("required", ())) | set(validation.REQUIRED.get(name, ()))
        missing += [f"{name}.{e}" for e in sorted(_r4b_required(model) - have)]
        fields = {info.alias: info for info in model.model_fields.values()}
        for prop, node in definitions[name]["properties"].items():
            target = _ref(node)
            if target and prop in fields and target not in ("ResourceList", "Element"):
                todo.append((target, _model_class(fields[prop].annotation)))
    assert missing == [], missing
    assert set(validation.REQUIRED) <= set(reached)
    extra = [f"{name}.{e}" for name, elements in validation.REQUIRED.items()
             for e in elements if e not in _r4b_required(reached[name])]
    assert extra == []  # nothing stricter than R4's cardinalities
    assert {"Observation_Component", "Extension", "Narrative", "Dosage"} <= set(reached)
