"""Run-time validation of every resource the mappers build: the official FHIR R4 (4.0.1) JSON
schema, compiled with ``jsonschema-rs``, plus the R4 rules that schema cannot state.

The schema is ``fhir.schema.json`` from https://hl7.org/fhir/R4/fhir.schema.json.zip (FHIR R4
4.0.1, Technical Correction #1; its ``id`` is ``http://hl7.org/fhir/json-schema/4.0``; HL7's
specification licence is CC0), vendored byte for byte as ``data/fhir.schema.json.gz``
(``data/README.md`` gives its SHA-256 and how the bytes were checked).

What is checked, on top of the schema as HL7 publishes it (added to the in-memory copy only):

- ``REQUIRED``: the elements R4 makes mandatory (min 1) that the schema leaves out. The schema
  generator omits ``required`` for primitives (``Observation.status`` may legally be given as
  ``_status`` with only an extension) and for choices (``medication[x]``); here either form
  satisfies the rule, as in R4. The table lists them for the types the hub serves
  (``hub.search.PARAMS``) and every definition they reach: their backbone elements and the data
  types they use (those an extension's ``value[x]`` may hold included).
- Complex types are JSON objects: the official schema gives none of its 659 complex definitions
  a ``type``, so ``"code": "GLU"`` or ``"subject": "Patient/1"`` passes it (``properties`` and
  ``additionalProperties`` only constrain objects); here each gets ``"type": "object"``.
- Integers are integers: ``integer``, ``positiveInt`` and ``unsignedInt`` are ``"type":
  "number"`` with a pattern, which does not apply to numbers (1.5 or 0 pass as a positiveInt);
  here they get ``"type": "integer"`` and R4's bounds (``PRIMITIVES``).
- Real dates: every ``date``, ``dateTime`` and ``instant`` (the primitives and the inline
  ``...DateTime`` choices) must name a day that exists (``2026-02-30`` is refused; ``CALENDAR``).
  The schema's patterns already refuse months, hours, minutes and zone offsets out of range, and
  a time without a zone; they allow second 60 (leap seconds), and so does this.

Failure: ``R4Error`` (an ``InvalidValue``), its text ``<Type>.<element path>: <why>`` for the
first problem found, e.g. ``Observation.status: 'bogus' is not one of registered, preliminary,
...``; a resource with an unknown ``resourceType`` is refused the same way. The mappers turn it
into a rejection located where the resource came from (visit, row, segment).

Cost, once per process (the mappers run in worker processes; each pays for the types it sees):
loading the schema (gunzip + orjson) ~20-60 ms and building the registry ~30-90 ms on first use;
each resource type's validator compiles on its first resource (``validator_for``, cached),
~35-90 ms, ~0.6 s for the ten served types (this 2-core machine, shared). Every type reaches the
whole schema (``contained`` holds any resource), so one validator of HL7's root ``oneOf`` would
compile no faster and validates at half the speed. ``bench/validation_rate.py`` measures it all.
"""

from __future__ import annotations

import gzip
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from mappers.errors import InvalidValue

SCHEMA_PATH = Path(__file__).resolve().parent / "data" / "fhir.schema.json.gz"
SCHEMA_ID = "http://hl7.org/fhir/json-schema/4.0"

# R4 4.0.1 elements with min 1 that the JSON schema does not require, by schema definition
# (``Type`` or ``Type_Backbone``), for the served types and every definition they reach (the test
# walks them beside fhir.resources' models). ``name[x]``: any one choice of the element.
REQUIRED: dict[str, tuple[str, ...]] = {
    "Observation": ("status",),
    "DiagnosticReport": ("status",),
    "Encounter": ("status",),
    "Encounter_StatusHistory": ("status",),
    "ImagingStudy": ("status",),
    "ImagingStudy_Series": ("uid",),
    "ImagingStudy_Instance": ("uid",),
    "MedicationRequest": ("status", "intent", "medication[x]"),
    "MedicationRequest_Substitution": ("allowed[x]",),
    "Patient_Link": ("type",),
    # Data types they use, directly or as an extension's value[x]
    "Extension": ("url",),
    "Narrative": ("status",),
    "Annotation": ("text",),
    "SampledData": ("period", "dimensions"),
    "Signature": ("when",),
    "UsageContext": ("value[x]",),
    "TriggerDefinition": ("type",),
    "Expression": ("language",),
    "DataRequirement": ("type",),
    "DataRequirement_Sort": ("path", "direction"),
    "RelatedArtifact": ("type",),
    "ParameterDefinition": ("use", "type"),
    "Contributor": ("type", "name"),
}

# The primitive definitions whose values must be real calendar dates, by their schema pattern
# (choices such as ``Observation.effectiveDateTime`` repeat the pattern inline, without a $ref).
DATE_TYPES = ("date", "dateTime", "instant")

# A day that exists (Gregorian: 29 February in years divisible by 4, not by 100 unless by 400),
# as a regular expression so that Rust checks it: a format callback into Python cost ~1 µs a
# resource. Matched at the start of a date/dateTime/instant whose pattern HL7's schema checks.
CALENDAR = ("^(?:[0-9]{4}(?:-[0-9]{2})?$"
            "|[0-9]{4}-(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
            "|[0-9]{4}-(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
            "|[0-9]{4}-02-(?:0[1-9]|1[0-9]|2[0-8])"
            "|(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:[02468][048]|[13579][26])00)-02-29)")

# What the schema's primitives leave out, added wherever their pattern stands (the definition and
# the inline choices): its integers are "type": "number" with a pattern, and a pattern does not
# apply to numbers, so 1.5, 0 or -3 pass as a positiveInt (R4: 32-bit signed integers); its
# dates are patterns that take 2026-02-30.
PRIMITIVES: dict[str, dict[str, Any]] = {
    "integer": {"type": "integer", "minimum": -2**31, "maximum": 2**31 - 1},
    "positiveInt": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
    "unsignedInt": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
    **{t: {"allOf": [{"pattern": CALENDAR}]} for t in DATE_TYPES},
}


MISSING = "required (min 1 in R4) but missing"
HINTS = {"date": " (YYYY, YYYY-MM or YYYY-MM-DD)",
         "dateTime": " (YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss with a zone, Z or "
                     "+hh:mm up to 14:00)",
         "instant": " (YYYY-MM-DDThh:mm:ss with a zone, Z or +hh:mm up to 14:00)"}


class R4Error(InvalidValue):
    """A resource that is not valid FHIR R4; ``str(exc)`` names the element and why."""


def validate(resource: dict[str, Any]) -> None:
    """Raise R4Error for the first problem in ``resource`` (a FHIR R4 resource as a dict)."""
    res_type = resource.get("resourceType") if isinstance(resource, dict) else None
    validator = validator_for(res_type) if isinstance(res_type, str) else None
    if validator is None:
        raise R4Error(f"resourceType: {res_type!r} is not a FHIR R4 resource type")
    if validator.is_valid(resource):
        return
    error = next(iter(validator.iter_errors(resource)))
    raise R4Error(_describe(res_type, error))


@cache
def validator_for(res_type: str):
    """The compiled validator of one resource type (None for a type R4 lacks); built once per
    process, on first use, against the shared registry of the whole schema."""
    import jsonschema_rs

    compiled = _compiled()
    if res_type not in compiled.types:
        return None
    return jsonschema_rs.Draft6Validator(
        {"$ref": f"{SCHEMA_ID}#/definitions/{res_type}"}, registry=compiled.registry)


class _Compiled(NamedTuple):
    registry: Any  # jsonschema_rs.Registry holding the whole schema, with the added rules
    types: frozenset[str]  # the R4 resource types (the schema's discriminator)
    patterns: dict[str, str]  # a primitive's pattern -> its name (for messages)
    required: dict[tuple[str, ...], str]  # the forms of a required element -> its name


@cache
def _compiled() -> _Compiled:
    import jsonschema_rs

    schema = load_schema()
    required = _add_rules(schema)
    definitions = schema["definitions"]
    return _Compiled(jsonschema_rs.Registry([(SCHEMA_ID, schema)]),
                     frozenset(schema["discriminator"]["mapping"]),
                     {d["pattern"]: name for name, d in definitions.items() if "pattern" in d},
                     required)


def load_schema() -> dict[str, Any]:
    """The official schema as published (a new dict on every call)."""
    return orjson.loads(gzip.decompress(SCHEMA_PATH.read_bytes()))


def _add_rules(schema: dict[str, Any]) -> dict[tuple[str, ...], str]:
    """Into the in-memory schema (which has no ``allOf``/``anyOf`` of its own): every complex type
    an object, ``REQUIRED``, ``PRIMITIVES``. Returns the required alternatives -> the
    element's name, for messages."""
    definitions = schema["definitions"]
    for definition in definitions.values():
        if "properties" in definition:
            definition.setdefault("type", "object")
    _add_primitives(definitions)
    return _add_required(definitions)


def _add_required(definitions: dict[str, Any]) -> dict[tuple[str, ...], str]:
    """``REQUIRED`` as ``allOf`` of ``anyOf`` of ``required``: checked in Rust, unlike a custom
    keyword, which calls back into Python for every instance (Observation: 3.3 -> 5.8 µs)."""
    names = {}
    for definition, elements in REQUIRED.items():
        rules = definitions[definition]["allOf"] = []
        for element in elements:
            forms = _forms(element, definitions[definition]["properties"])
            rules.append({"anyOf": [{"required": [form]} for form in forms]})
            names[tuple(forms)] = element
    return names


def _add_primitives(definitions: dict[str, Any]) -> None:
    """``PRIMITIVES`` beside each of their patterns: the primitives' own and the ones choices
    repeat inline (``effectiveDateTime``), on a property or on its ``items``."""
    rules = {definitions[name]["pattern"]: rule for name, rule in PRIMITIVES.items()}
    for definition in definitions.values():
        for sub in [definition, *definition.get("properties", {}).values()]:
            for node in (sub, sub.get("items") or {}):
                node.update(rules.get(node.get("pattern"), ()))


def _forms(name: str, properties: dict) -> list[str]:
    """The properties that satisfy required element ``name``: itself or ``_name`` (a value given
    by extension only), or for ``name[x]`` each of its choices."""
    if name.endswith("[x]"):
        stem = name[:-3]
        return [p for p in properties
                if p.startswith(stem) and p[len(stem):len(stem) + 1].isupper()]
    return [name, f"_{name}"]


def _describe(res_type: str, error: Any) -> str:
    """``Type.path: why`` for one jsonschema-rs error (list indexes as ``[i]``)."""
    path = res_type + "".join(f"[{p}]" if isinstance(p, int) else f".{p}"
                              for p in error.instance_path)
    render = _RENDER.get(type(error.kind).__name__)
    return render(path, error) if render else f"{path}: {error.message}"


def _pattern(path: str, error: Any) -> str:
    if error.kind.pattern == CALENDAR:
        return f"{path}: {error.instance!r} names a day that does not exist"
    primitive = _compiled().patterns.get(error.kind.pattern, "value")
    return f"{path}: {error.instance!r} is not a valid R4 {primitive}{HINTS.get(primitive, '')}"


def _enum(path: str, error: Any) -> str:
    codes = list(error.kind.options)
    shown = ", ".join(codes[:12]) + (f", ... ({len(codes)} codes)" if len(codes) > 12 else "")
    return f"{path}: {error.instance!r} is not one of {shown} (R4 code)"


def _any_of(path: str, error: Any) -> str:
    """Only ``REQUIRED`` makes an ``anyOf``: its branches name the forms of the element."""
    forms = tuple(branch[0].kind.property for branch in error.kind.context)
    return f"{path}.{_compiled().required.get(forms, forms[0])}: {MISSING}"


# jsonschema-rs error kind -> its message; any other kind keeps the library's own words
_RENDER = {
    "Pattern": _pattern,
    "Enum": _enum,
    "AnyOf": _any_of,
    "Required": lambda path, error: f"{path}.{error.kind.property}: {MISSING}",
    "AdditionalProperties": lambda path, error:
        f"{path}.{error.kind.unexpected[0]}: not an element of this type in R4",
}
