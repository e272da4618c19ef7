"""浙江 Zhejiang: JSON exchange records with pinyin-initial keys -> FHIR R4 records.

The format is ``world/formats/zhejiang-json.md``. One upload holds one hospital's visits
(``jzjl``); each visit becomes one ``Record`` keyed ``"<jgdm>|<jzlsh>"`` holding the hospital
Organization, the doctor (Practitioner), the Encounter, its Conditions, lab Observations and
DiagnosticReports, imaging DiagnosticReports and ImagingStudies, MedicationRequests and
AllergyIntolerances.

Failure semantics:

- ``UnreadableUpload``: not UTF-8 (a BOM is tolerated), not JSON, not an object, no hospital
  code ``jgdm``, or no visit list ``jzjl``.
- ``ForeignSender``: ``jgdm`` names another hospital than the authenticated sender.
- A visit that cannot be mapped faithfully (missing ``jzlsh``, unreadable time, invalid resident ID,
  birth date disagreeing with the resident ID, a code outside its table, ...) is a ``Rejection``
  at the path of the offending field (``jzjl[2].hzxx.csrq``); the other visits still map.
- Keys the format does not list (``KNOWN_KEYS``) are not mapped; each is named in ``notes``.

Quirks handled: numbers as JSON numbers or strings (JSON decimals are read as ``Decimal`` so
``6.80`` keeps its precision), full-width digits and stray spaces in codes and numbers, empty
strings meaning absent, the four time formats (via ``parse_when``), a single-digit ``zjlx``.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Callable

from mappers.address import fhir_address
from mappers.region import scrub as _scrub
from mappers.common import (DICOM_MODALITIES, DICOM_MODALITY_SYSTEM, DICOM_UID_SYSTEM, DOCUMENT_SYSTEMS, HOSPITAL_PATIENT_NO_SYSTEM, ICD10_SYSTEM, IMAGING_REPORT_SYSTEM, LAB_REPORT_SYSTEM, LOCAL_LAB_SYSTEM, LOINC_SYSTEM, NATIONAL_DRUG_SYSTEM, OUTPATIENT_NO_SYSTEM, PATIENT_REF, PRACTITIONER_SYSTEM, PRESCRIPTION_SYSTEM, RESIDENT_ID_SYSTEM, MapResult, Record, Rejection, clean, decimal_json, department_concept, fhir_date, fhir_datetime, gbt_gender, hospital_organization, hospital_reference, insurance_identifier, interpretation, lab_value, make_id, parse_decimal, parse_when, reference_range, validate)
from mappers.errors import ForeignSender, InvalidValue, UnreadableUpload
from mappers.region import (mask_resident_id, normalize_resident_id, resident_id_birth_date, resident_id_sex, to_halfwidth)

# ---------------------------------------------------------------------------------------------
# The format's keys and code tables (data)
# ---------------------------------------------------------------------------------------------

# A key maps to None (a plain value), a dict (an object) or a one-item list (a list of such
# objects). Any other key found in an upload is noted and left to the archived original.
KNOWN_KEYS: dict[str, Any] = {
    "jgdm": None, "jgmc": None, "yydj": None, "scsj": None,
    "jzjl": [{
        "jzlsh": None, "jzlx": None, "jzsj": None, "ksdm": None, "ksmc": None,
        "ysgh": None, "ysxm": None,
        "hzxx": {"xm": None, "xb": None, "csrq": None, "zjlx": None, "zjhm": None,
                 "lxdh": None, "xzz": None, "ybkh": None, "cbd": None},
        "zdxx": [{"zdlx": None, "zddm": None, "zdmc": None, "zdsj": None}],
        "jyjg": [{"bgdh": None, "jyxmdm": None, "jyxmmc": None, "loinc": None, "jgz": None,
                  "dw": None, "ckfw": None, "ycts": None, "bgsj": None}],
        "jcbg": [{"bgdh": None, "jclx": None, "jcbw": None, "jcsj": None, "yxbx": None,
                  "jcjl": None, "jcuid": None}],
        "cfxx": [{"cfh": None, "ypdm": None, "ypmc": None, "gg": None, "dcjl": None,
                  "jldw": None, "pc": None, "tj": None, "ts": None}],
        "gmxx": [{"gmy": None, "gmfy": None}],
    }],
}

# What a missing required key is, for the rejection reason.
FIELD_LABELS = {"jzlsh": "visit serial number", "bgdh": "report number",
                "cfh": "prescription number"}

# Hospital level (yydj). The world names no system for it; the hub's own URN.
HOSPITAL_LEVEL_SYSTEM = "urn:yrdhub:hospital-level"
HOSPITAL_LEVELS = {"1": "一级医院", "2": "二级医院", "3": "三级医院"}

ACT_CODE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
# jzlx -> (Encounter.class code, display, Encounter.status). An inpatient export carries no
# discharge time, so the hub cannot say whether the stay is over: "unknown".
VISIT_TYPES = {
    "1": ("AMB", "ambulatory", "finished"),
    "2": ("EMER", "emergency", "finished"),
    "3": ("IMP", "inpatient encounter", "unknown"),
}

DIAGNOSIS_ROLE_SYSTEM = "http://terminology.hl7.org/CodeSystem/diagnosis-role"
# zdlx -> how the diagnosis is used in the visit; the same concept goes to Encounter.diagnosis.use
# and, as a second category, to the Condition. diagnosis-role has no "principal": like the other
# provinces' mappers, the principal diagnosis is DD (the diagnosis the visit ended with), rank 1.
DIAGNOSIS_TYPES: dict[str, dict[str, Any]] = {
    "1": {"coding": [{"system": DIAGNOSIS_ROLE_SYSTEM, "code": "DD",
                      "display": "Discharge diagnosis"}], "text": "主要诊断"},
    "2": {"coding": [{"system": DIAGNOSIS_ROLE_SYSTEM, "code": "CM",
                      "display": "Comorbidity diagnosis"}], "text": "次要诊断"},
}
ENCOUNTER_DIAGNOSIS = {"coding": [{
    "system": "http://terminology.hl7.org/CodeSystem/condition-category",
    "code": "encounter-diagnosis", "display": "Encounter Diagnosis"}]}
CONDITION_ACTIVE = {"coding": [{
    "system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]}
CONDITION_CONFIRMED = {"coding": [{
    "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]}
ALLERGY_ACTIVE = {"coding": [{
    "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
    "code": "active"}]}

V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
LAB_REPORT_CATEGORY = {"coding": [{"system": V2_0074, "code": "LAB", "display": "Laboratory"}]}
RAD_REPORT_CATEGORY = {"coding": [{"system": V2_0074, "code": "RAD", "display": "Radiology"}]}
LAB_OBSERVATION_CATEGORY = {"coding": [{
    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
    "code": "laboratory", "display": "Laboratory"}]}
# The format has no report title; the generic LOINC report codes.
LAB_REPORT_CODE = {"system": LOINC_SYSTEM, "code": "11502-2", "display": "Laboratory report"}
IMAGING_REPORT_CODE = {"system": LOINC_SYSTEM, "code": "18748-4",
                       "display": "Diagnostic imaging study"}
ATTENDER = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                         "code": "ATND", "display": "attender"}]}]

_DICOM_UID_RE = re.compile(r"^(0|[1-9]\d*)(\.(0|[1-9]\d*))+$")

GTS_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-GTSAbbreviation"
# pc -> (GTS abbreviation, times per day, EventTiming, as needed). qn (每晚一次) has no GTS code.
FREQUENCIES: dict[str, tuple[str | None, int | None, str | None, bool]] = {
    "qd": ("QD", 1, None, False),
    "bid": ("BID", 2, None, False),
    "tid": ("TID", 3, None, False),
    "qid": ("QID", 4, None, False),
    "qn": (None, 1, "NIGHT", False),
    "prn": (None, None, None, True),
}
UCUM = "http://unitsofmeasure.org"

# Any run of 15+ digits in a message could be a resident ID number: masked before it leaves.

# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def map_upload(body: bytes, sender: str) -> MapResult:
    """Map one Zhejiang upload from the authenticated hospital ``sender``.

    Raises UnreadableUpload / ForeignSender for the upload as a whole (see the module doc);
    everything else is a record, a located rejection or a note. Pure and deterministic.
    """
    doc = _read(body)
    code = _hospital_code(doc, sender)
    result = MapResult(notes=[_scrub(f"{path}: unknown key, kept in the archived original")
                              for path in unknown_keys(doc, KNOWN_KEYS)])
    hospital = _hospital(doc, code, result.notes)
    for i, raw in enumerate(doc["jzjl"]):
        _map_one(raw, f"jzjl[{i}]", hospital, result)
    result.notes += _duplicate_notes(result.records)
    return result


def _map_one(raw: Any, path: str, hospital: dict, result: MapResult) -> None:
    """Map one visit into ``result``: a record (and its notes) or a rejection."""
    try:
        record, notes = _map_visit(raw, path, hospital)
    except _Bad as bad:
        result.rejected.append(Rejection(bad.location, _scrub(bad.reason)))
        return
    except InvalidValue as exc:  # a resource that fails R4 validation
        result.rejected.append(Rejection(path, _scrub(str(exc))))
        return
    result.records.append(record)
    result.notes += [_scrub(n) for n in notes]


def unknown_keys(value: Any, schema: Any, path: str = "") -> list[str]:
    """Paths (``jzjl[0].hzxx.mz``) of keys in ``value`` that ``schema`` does not list.

    Descends only where the value has the shape the schema expects; a wrong shape is the
    mapper's business (a rejection), not an unknown key.
    """
    if isinstance(schema, dict) and isinstance(value, dict):
        found: list[str] = []
        for key, sub in value.items():
            where = f"{path}.{key}" if path else key
            found += [where] if key not in schema else unknown_keys(sub, schema[key], where)
        return found
    if isinstance(schema, list) and isinstance(value, list):
        return [p for j, item in enumerate(value)
                for p in unknown_keys(item, schema[0], f"{path}[{j}]")]
    return []


# ---------------------------------------------------------------------------------------------
# The upload as a whole
# ---------------------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _read(body: bytes) -> dict[str, Any]:
    """The upload as a dict with a ``jzjl`` list, or UnreadableUpload saying why."""
    try:
        text = body.decode("utf-8-sig")  # a BOM from Windows exporters is harmless
    except UnicodeDecodeError as exc:
        raise UnreadableUpload(f"not UTF-8 text (bad byte at offset {exc.start})") from None
    try:
        doc = json.loads(text, parse_float=Decimal, parse_constant=_reject_constant)
        # Lone surrogate escapes ("\ud800") decode to text no UTF-8 store or id can hold.
        json.dumps(doc, ensure_ascii=False, default=str).encode("utf-8")
    except (ValueError, RecursionError) as exc:
        raise UnreadableUpload(f"not JSON: {str(exc)[:120]}") from None
    if not isinstance(doc, dict):
        raise UnreadableUpload("the upload is not a JSON object")
    if not isinstance(doc.get("jzjl"), list):
        raise UnreadableUpload("the upload has no visit list jzjl")
    return doc


def _hospital_code(doc: dict, sender: str) -> str:
    """The upload's ``jgdm``; ForeignSender when it is not ``sender``."""
    try:
        code = _fold(doc.get("jgdm"))
    except InvalidValue:
        code = None
    if code is None:
        raise UnreadableUpload("the upload has no hospital code jgdm")
    code = code.upper()
    if code != sender:
        raise ForeignSender(_scrub(f"the upload names hospital {code[:40]!r}, "
                                   f"not the sender {sender}"))
    return code


def _hospital(doc: dict, code: str, notes: list[str]) -> dict:
    """The hospital Organization (name jgmc, level yydj as a second type).

    Upload-level oddities (unreadable name, level or upload time) are notes: they cannot be
    pinned on a visit, and rejecting every visit for them would lose the records.
    """
    name = _soft(doc, "jgmc", clean, notes)
    level = _soft(doc, "yydj", _fold, notes)
    _soft(doc, "scsj", parse_when, notes)  # read only to tell the sender when it is unreadable
    org = hospital_organization(code, name)
    if level in HOSPITAL_LEVELS:
        org["type"].append({"coding": [{"system": HOSPITAL_LEVEL_SYSTEM, "code": level,
                                        "display": HOSPITAL_LEVELS[level]}],
                            "text": HOSPITAL_LEVELS[level]})
    elif level is not None:
        notes.append(f"yydj: unknown hospital level {level[:20]!r}, not mapped")
    return org


def _soft(doc: dict, key: str, parse: Callable[[Any], Any], notes: list[str]) -> Any:
    """``parse(doc[key])``, or None with a note when it cannot be read."""
    try:
        return parse(doc.get(key))
    except InvalidValue as exc:
        notes.append(_scrub(f"{key}: {exc}, not mapped"))
        return None


def _duplicate_notes(records: list[Record]) -> list[str]:
    """A visit number sent twice in one upload: the later record replaces the earlier."""
    first: dict[str, str] = {}
    notes = []
    for record in records:
        if record.key in first:
            notes.append(f"{record.location}.jzlsh: same visit as {first[record.key]}; "
                         "the later one replaces the earlier")
        first.setdefault(record.key, record.location)
    return notes


# ---------------------------------------------------------------------------------------------
# Field access: every failure becomes a _Bad with the field's path
# ---------------------------------------------------------------------------------------------


class _Bad(Exception):
    """A visit that cannot be mapped: where and why (becomes a Rejection)."""

    def __init__(self, location: str, reason: str):
        super().__init__(location, reason)
        self.location = location
        self.reason = reason




def _fold(value: Any) -> str | None:
    """A code or number-like identifier: full-width folded, all spaces removed; absent -> None."""
    text = clean(value)
    return None if text is None else to_halfwidth(text).replace(" ", "")


def _field(obj: dict, key: str, path: str, parse: Callable[[Any], Any] = clean) -> Any:
    """``parse(obj[key])``; an InvalidValue becomes a _Bad at ``path.key``."""
    try:
        return parse(obj.get(key))
    except InvalidValue as exc:
        raise _Bad(f"{path}.{key}", str(exc)) from None


def _required(obj: dict, key: str, path: str, parse: Callable[[Any], Any] = _fold) -> Any:
    value = _field(obj, key, path, parse)
    if value is None:
        raise _Bad(f"{path}.{key}", f"{FIELD_LABELS.get(key, key)} {key} is missing")
    return value


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _object(obj: dict, key: str, path: str) -> dict:
    """A nested object; absent or empty -> {}; another shape -> _Bad."""
    value = obj.get(key)
    if _blank(value):
        return {}
    if not isinstance(value, dict):
        raise _Bad(f"{path}.{key}", "expected a JSON object")
    return value


def _items(obj: dict, key: str, path: str) -> list[tuple[str, dict]]:
    """The entries of a list field with their paths; entries whose values are all empty are
    absent and skipped; a non-list or a non-object entry -> _Bad."""
    value = obj.get(key)
    if _blank(value):
        return []
    if not isinstance(value, list):
        raise _Bad(f"{path}.{key}", "expected a JSON list")
    out = []
    for j, item in enumerate(value):
        where = f"{path}.{key}[{j}]"
        if not isinstance(item, dict):
            raise _Bad(where, "expected a JSON object")
        if not all(_blank(v) for v in item.values()):
            out.append((where, item))
    return out


def _compact(resource: dict[str, Any]) -> dict[str, Any]:
    """Drop keys whose value is None or empty (FHIR forbids empty elements)."""
    return {k: v for k, v in resource.items() if v is not None and v != [] and v != {}}


def _coded(system: str, code: str | None, display: str | None) -> dict[str, Any] | None:
    return None if code is None else _compact({"system": system, "code": code,
                                               "display": display})


# ---------------------------------------------------------------------------------------------
# One visit
# ---------------------------------------------------------------------------------------------


@dataclass
class _Visit:
    """What every resource of one visit needs, and the ids minted so far."""

    hospital: dict[str, Any]  # the Organization resource
    path: str
    number: str = ""
    when: datetime | date | None = None
    notes: list[str] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)

    @property
    def code(self) -> str:
        return self.hospital["identifier"][0]["value"]

    @property
    def org_ref(self) -> dict[str, Any]:
        return hospital_reference(self.code, self.hospital.get("name"))

    @property
    def encounter_ref(self) -> dict[str, str]:
        return {"reference": f"Encounter/{make_id('Encounter', self.code, self.number)}"}

    def new_id(self, rtype: str, *parts: str) -> str:
        """A deterministic id from the source's numbers; a repeat within the visit (the same
        lab item twice in one report) gets a counter so no two resources share an id."""
        rid, n = make_id(rtype, self.code, self.number, *parts), 1
        while rid in self.ids:
            n += 1
            rid = make_id(rtype, self.code, self.number, *parts, f"#{n}")
        self.ids.add(rid)
        return rid


def _map_visit(raw: Any, path: str, hospital: dict) -> tuple[Record, list[str]]:
    """One ``jzjl`` entry -> its Record and notes; _Bad / InvalidValue when it cannot be."""
    if not isinstance(raw, dict):
        raise _Bad(path, "a visit must be a JSON object")
    v = _Visit(hospital=hospital, path=path, number=_required(raw, "jzlsh", path))
    v.when = _field(raw, "jzsj", path, parse_when)
    patient = _patient(v, raw)
    practitioner = _practitioner(v, raw)
    conditions, diagnoses = _conditions(v, raw)
    clinical = (conditions + _labs(v, raw) + _imaging_reports(v, raw)
                + _medications(v, raw, practitioner) + _allergies(v, raw))
    encounter = _encounter(v, raw, practitioner, diagnoses)
    resources = [hospital] + ([practitioner] if practitioner else []) + [encounter] + clinical
    for resource in [patient, *resources]:
        validate(resource)
    record = Record(key=f"{v.code}|{v.number}", hospital=v.code, patient=patient,
                    resources=resources, location=path)
    return record, v.notes


# ---------------------------------------------------------------------------------------------
# Patient
# ---------------------------------------------------------------------------------------------


def _patient(v: _Visit, raw: dict) -> dict[str, Any]:
    """The Patient (no id, no managingOrganization: the patient is shared across hospitals)."""
    hpath = f"{v.path}.hzxx"
    hz = _object(raw, "hzxx", v.path)
    identifiers, rid = _documents(v, hz, hpath)
    identifiers += _insurance(hz, hpath)
    if not identifiers:
        # Nothing to match on: the hospital's own number (the visit serial is all there is).
        identifiers = [{"system": HOSPITAL_PATIENT_NO_SYSTEM, "value": v.number,
                        "assigner": v.org_ref}]
    name = _field(hz, "xm", hpath)
    phone = _field(hz, "lxdh", hpath, _fold)
    return _compact({
        "resourceType": "Patient",
        "identifier": identifiers,
        "name": [{"text": name}] if name else None,
        "telecom": [{"system": "phone", "value": phone}] if phone else None,
        "gender": _gender(hz, hpath, rid),
        "birthDate": fhir_date(_birth_date(hz, hpath, rid)),
        "address": _address(_field(hz, "xzz", hpath)),
    })


def _documents(v: _Visit, hz: dict, hpath: str) -> tuple[list[dict], str | None]:
    """The identity document as an identifier, and the resident ID number when it is one.

    An unknown document type is noted and not used for matching (the visit is still kept).
    """
    number = _field(hz, "zjhm", hpath)
    kind = _field(hz, "zjlx", hpath, _fold)
    if number is None:
        return [], None
    kind = kind.zfill(2) if kind and kind.isdigit() else kind  # 1 sent as a JSON number
    if kind == "01":
        rid = _field(hz, "zjhm", hpath, normalize_resident_id)
        return [{"system": RESIDENT_ID_SYSTEM, "value": rid}], rid
    system = DOCUMENT_SYSTEMS.get(kind or "")
    if system is None:
        why = (f"document type {kind[:10]!r} is not one the hub knows (01, 03, 06, 08)" if kind
               else "zjhm comes without a document type")
        v.notes.append(f"{hpath}.zjlx: {why}; the number is not used to match the patient")
        return [], None
    return [{"system": system, "value": to_halfwidth(number).replace(" ", "").upper()}], None


def _insurance(hz: dict, hpath: str) -> list[dict]:
    """The insurance card ybkh, issued by the insured place cbd (an area code)."""
    card = _field(hz, "ybkh", hpath, _fold)
    place = _field(hz, "cbd", hpath, _fold)
    return [] if card is None else [insurance_identifier(card, place)]


def _gender(hz: dict, hpath: str, rid: str | None) -> str | None:
    """xb by GB/T 2261.1; absent -> from the resident ID's sequence digit; unknown code -> _Bad."""
    code = _field(hz, "xb", hpath, _fold)
    if code is None:
        return resident_id_sex(rid) if rid else None
    try:
        return gbt_gender(code)
    except InvalidValue as exc:
        raise _Bad(f"{hpath}.xb", str(exc)) from None


def _birth_date(hz: dict, hpath: str, rid: str | None) -> date | None:
    """csrq, checked against the resident ID (which supplies it when csrq is absent).

    A disagreement is a _Bad at csrq: the hub cannot tell whether the ID or the date is wrong.
    """
    born = _field(hz, "csrq", hpath, parse_when)
    born = born.date() if isinstance(born, datetime) else born
    if rid is None:
        return born
    from_id = resident_id_birth_date(rid)
    if born is not None and born != from_id:
        raise _Bad(f"{hpath}.csrq", f"birth date {born.isoformat()} disagrees with the birth "
                   f"date in resident ID number {mask_resident_id(rid)}")
    return from_id


def _address(text: str | None) -> list[dict] | None:
    """xzz (current address) as Address: state/city/district as GB/T 2260 names them
    (``mappers.address``), the rest as line; none of them when the text names no district."""
    if text is None:
        return None
    return [fhir_address(text, use="home", country="CN")]


# ---------------------------------------------------------------------------------------------
# Encounter, doctor, diagnoses
# ---------------------------------------------------------------------------------------------


def _encounter(v: _Visit, raw: dict, practitioner: dict | None,
               diagnoses: list[dict]) -> dict[str, Any]:
    """The visit: class from jzlx (required, a code of VISIT_TYPES), department as serviceType."""
    kind = _required(raw, "jzlx", v.path)
    if kind not in VISIT_TYPES:
        raise _Bad(f"{v.path}.jzlx", f"unknown visit type {kind[:10]!r} (1, 2 or 3)")
    act, display, status = VISIT_TYPES[kind]
    return _compact({
        "resourceType": "Encounter",
        "id": v.encounter_ref["reference"].split("/")[1],
        "identifier": [{"system": OUTPATIENT_NO_SYSTEM, "value": v.number,
                        "assigner": v.org_ref}],
        "status": status,
        "class": {"system": ACT_CODE_SYSTEM, "code": act, "display": display},
        "serviceType": _department(v, raw),
        "subject": {"reference": PATIENT_REF},
        "participant": _participants(v, raw, practitioner),
        "period": {"start": fhir_datetime(v.when)} if v.when else None,
        "diagnosis": diagnoses,
        "serviceProvider": v.org_ref,
    })


def _department(v: _Visit, raw: dict) -> dict[str, Any] | None:
    return department_concept(_field(raw, "ksdm", v.path, _fold), _field(raw, "ksmc", v.path))


def _practitioner(v: _Visit, raw: dict) -> dict[str, Any] | None:
    """The doctor by staff number ysgh (shared across the hospital's records); None without."""
    number = _field(raw, "ysgh", v.path, _fold)
    if number is None:
        return None
    name = _field(raw, "ysxm", v.path)
    return _compact({
        "resourceType": "Practitioner",
        "id": make_id("Practitioner", v.code, number),
        "identifier": [{"system": PRACTITIONER_SYSTEM, "value": number, "assigner": v.org_ref}],
        "name": [{"text": name}] if name else None,
    })


def _doctor_ref(v: _Visit, raw: dict, practitioner: dict | None) -> dict[str, str] | None:
    """A reference to the doctor; a name alone (no staff number) is a display-only reference."""
    name = _field(raw, "ysxm", v.path)
    if practitioner is None:
        return {"display": name} if name else None
    return _compact({"reference": f"Practitioner/{practitioner['id']}", "display": name})


def _participants(v: _Visit, raw: dict, practitioner: dict | None) -> list[dict] | None:
    doctor = _doctor_ref(v, raw, practitioner)
    return [{"type": ATTENDER, "individual": doctor}] if doctor else None


def _conditions(v: _Visit, raw: dict) -> tuple[list[dict], list[dict]]:
    """Conditions, and the Encounter.diagnosis entries: a principal diagnosis ranks 1, the
    secondaries 2, 3... in the order sent; one without zdlx has neither use nor rank."""
    conditions, diagnoses, last_rank = [], [], 1
    for where, entry in _items(raw, "zdxx", v.path):
        condition, kind = _condition(v, where, entry)
        diagnosis: dict[str, Any] = {"condition": {"reference": f"Condition/{condition['id']}"}}
        if kind is not None:
            last_rank += kind != "1"
            diagnosis.update(use=DIAGNOSIS_TYPES[kind], rank=1 if kind == "1" else last_rank)
        conditions.append(condition)
        diagnoses.append(diagnosis)
    return conditions, diagnoses


def _condition(v: _Visit, where: str, entry: dict) -> tuple[dict, str | None]:
    """One diagnosis (ICD-10 code as sent, e.g. ``J06.900``) and its zdlx (None when absent);
    an unknown zdlx or a diagnosis with neither code nor name -> _Bad."""
    kind = _field(entry, "zdlx", where, _fold)
    if kind is not None and kind not in DIAGNOSIS_TYPES:
        raise _Bad(f"{where}.zdlx", f"unknown diagnosis type {kind[:10]!r} (1 or 2)")
    code = _field(entry, "zddm", where, _fold)
    name = _field(entry, "zdmc", where)
    if code is None and name is None:
        raise _Bad(f"{where}.zddm", "diagnosis has neither a code zddm nor a name zdmc")
    use = DIAGNOSIS_TYPES.get(kind or "")
    coding = _coded(ICD10_SYSTEM, code, name)
    condition = _compact({
        "resourceType": "Condition",
        "id": v.new_id("Condition", code or name),
        "clinicalStatus": CONDITION_ACTIVE,
        "verificationStatus": CONDITION_CONFIRMED,
        "category": [ENCOUNTER_DIAGNOSIS] + ([use] if use else []),
        "code": _compact({"coding": [coding] if coding else None, "text": name}),
        "subject": {"reference": PATIENT_REF},
        "encounter": v.encounter_ref,
        "recordedDate": fhir_datetime(_field(entry, "zdsj", where, parse_when)),
    })
    return condition, kind


# ---------------------------------------------------------------------------------------------
# Laboratory
# ---------------------------------------------------------------------------------------------


def _labs(v: _Visit, raw: dict) -> list[dict]:
    """Lab lines grouped by report number bgdh: per report its Observations and one
    DiagnosticReport (in order of first appearance). A line without bgdh -> _Bad."""
    reports: dict[str, list[dict]] = {}
    for where, line in _items(raw, "jyjg", v.path):
        number = _required(line, "bgdh", where)
        reports.setdefault(number, []).append(_observation(v, number, where, line))
    out: list[dict] = []
    for number, observations in reports.items():
        out += observations + [_lab_report(v, number, observations)]
    return out


def _observation(v: _Visit, report: str, where: str, line: dict) -> dict[str, Any]:
    """One result line: code (LOINC when mapped + the local code), value, range, flag."""
    unit = _field(line, "dw", where)
    return _compact({
        "resourceType": "Observation",
        "id": v.new_id("Observation", report, _lab_item_key(line, where)),
        "status": "final",
        "category": [LAB_OBSERVATION_CATEGORY],
        "code": _lab_code(line, where),
        "subject": {"reference": PATIENT_REF},
        "encounter": v.encounter_ref,
        "effectiveDateTime": fhir_datetime(_field(line, "bgsj", where, parse_when)),
        **_field(line, "jgz", where, lambda raw: lab_value(raw, unit)),
        "interpretation": _field(line, "ycts", where, interpretation),
        "referenceRange": _field(line, "ckfw", where, lambda raw: reference_range(raw, unit)),
    })


def _lab_item_key(line: dict, where: str) -> str:
    return (_field(line, "jyxmdm", where, _fold) or _field(line, "loinc", where, _fold)
            or _field(line, "jyxmmc", where) or "")


def _lab_code(line: dict, where: str) -> dict[str, Any]:
    """LOINC (when given) and the local code; a line with neither code nor name -> _Bad."""
    name = _field(line, "jyxmmc", where)
    codings = [c for c in (
        _coded(LOINC_SYSTEM, _field(line, "loinc", where, _fold), None),
        _coded(LOCAL_LAB_SYSTEM, _field(line, "jyxmdm", where, _fold), name)) if c]
    if not codings and name is None:
        raise _Bad(f"{where}.jyxmdm", "lab item has neither a code jyxmdm/loinc nor a name")
    return _compact({"coding": codings, "text": name})


def _lab_report(v: _Visit, number: str, observations: list[dict]) -> dict[str, Any]:
    """The report: its time is the first result line's time that has one."""
    times = [o["effectiveDateTime"] for o in observations if "effectiveDateTime" in o]
    return _compact({
        "resourceType": "DiagnosticReport",
        "id": v.new_id("DiagnosticReport", "LAB", number),
        "identifier": [{"system": LAB_REPORT_SYSTEM, "value": number, "assigner": v.org_ref}],
        "status": "final",
        "category": [LAB_REPORT_CATEGORY],
        "code": {"coding": [LAB_REPORT_CODE], "text": "检验报告"},
        "subject": {"reference": PATIENT_REF},
        "encounter": v.encounter_ref,
        "effectiveDateTime": times[0] if times else None,
        "performer": [v.org_ref],
        "result": [{"reference": f"Observation/{o['id']}"} for o in observations],
    })


# ---------------------------------------------------------------------------------------------
# Imaging
# ---------------------------------------------------------------------------------------------


def _imaging_reports(v: _Visit, raw: dict) -> list[dict]:
    out: list[dict] = []
    for where, entry in _items(raw, "jcbg", v.path):
        out += _imaging(v, where, entry)
    return out


def _imaging(v: _Visit, where: str, entry: dict) -> list[dict]:
    """One imaging report (+ its ImagingStudy when jcuid is given). The findings yxbx go to
    presentedForm as UTF-8 text, the conclusion jcjl to conclusion: neither is lost."""
    number = _required(entry, "bgdh", where)
    modality = _modality(v, where, entry)
    site = _field(entry, "jcbw", where)
    title = " ".join(t for t in (site, f"{modality}检查" if modality else "影像检查") if t)
    when = fhir_datetime(_field(entry, "jcsj", where, parse_when))
    study = _imaging_study(v, where, entry, modality, title, when)
    findings = _field(entry, "yxbx", where)
    report = _compact({
        "resourceType": "DiagnosticReport",
        "id": v.new_id("DiagnosticReport", "RAD", number),
        "identifier": [{"system": IMAGING_REPORT_SYSTEM, "value": number, "assigner": v.org_ref}],
        "status": "final",
        "category": [RAD_REPORT_CATEGORY],
        "code": {"coding": [IMAGING_REPORT_CODE], "text": title},
        "subject": {"reference": PATIENT_REF},
        "encounter": v.encounter_ref,
        "effectiveDateTime": when,
        "performer": [v.org_ref],
        "imagingStudy": [{"reference": f"ImagingStudy/{study['id']}"}] if study else None,
        "conclusion": _field(entry, "jcjl", where),
        "presentedForm": [_text_attachment(findings, "影像表现")] if findings else None,
    })
    return [study, report] if study else [report]


def _modality(v: _Visit, where: str, entry: dict) -> str | None:
    """jclx upper-cased; one outside DICOM_MODALITIES is kept as text only, with a note."""
    modality = _field(entry, "jclx", where, _fold)
    modality = modality.upper() if modality else None
    if modality and modality not in DICOM_MODALITIES:
        v.notes.append(f"{where}.jclx: modality {modality[:10]!r} is not a DICOM code the hub "
                       "knows; kept as text only")
    return modality


def _text_attachment(text: str, title: str) -> dict[str, str]:
    return {"contentType": "text/plain; charset=utf-8", "language": "zh-CN", "title": title,
            "data": base64.b64encode(text.encode("utf-8")).decode("ascii")}


def _imaging_study(v: _Visit, where: str, entry: dict, modality: str | None, title: str,
                   started: str | None) -> dict[str, Any] | None:
    """The study by its DICOM Study Instance UID; None without jcuid; a malformed UID -> _Bad."""
    uid = _field(entry, "jcuid", where, _fold)
    if uid is None:
        return None
    if len(uid) > 64 or not _DICOM_UID_RE.match(uid):
        raise _Bad(f"{where}.jcuid", "not a DICOM UID (digits and dots, at most 64 characters)")
    coding = _coded(DICOM_MODALITY_SYSTEM, modality, DICOM_MODALITIES.get(modality or ""))
    return _compact({
        "resourceType": "ImagingStudy",
        "id": v.new_id("ImagingStudy", uid),
        "identifier": [{"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{uid}"}],
        "status": "available",
        "modality": [coding] if coding and modality in DICOM_MODALITIES else None,
        "subject": {"reference": PATIENT_REF},
        "encounter": v.encounter_ref,
        "started": started,
        "description": title,
    })


# ---------------------------------------------------------------------------------------------
# Prescriptions and allergies
# ---------------------------------------------------------------------------------------------


def _medications(v: _Visit, raw: dict, practitioner: dict | None) -> list[dict]:
    """One MedicationRequest per cfxx line; lines are numbered 1, 2... within their cfh."""
    out, lines = [], {}
    doctor = _doctor_ref(v, raw, practitioner)
    for where, line in _items(raw, "cfxx", v.path):
        number = _required(line, "cfh", where)
        lines[number] = lines.get(number, 0) + 1
        out.append(_medication(v, where, line, (number, lines[number]), doctor))
    return out


def _medication(v: _Visit, where: str, line: dict, number: tuple[str, int],
                doctor: dict | None) -> dict[str, Any]:
    """One line, identifier ``<cfh>-<n>``, groupIdentifier the prescription cfh. Status active:
    the order as written (the hub is not told whether it was dispensed)."""
    line_id = f"{number[0]}-{number[1]}"
    return _compact({
        "resourceType": "MedicationRequest",
        "id": v.new_id("MedicationRequest", line_id),
        "identifier": [{"system": PRESCRIPTION_SYSTEM, "value": line_id, "assigner": v.org_ref}],
        "groupIdentifier": {"system": PRESCRIPTION_SYSTEM, "value": number[0],
                            "assigner": v.org_ref},
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": _drug(where, line),
        "subject": {"reference": PATIENT_REF},
        "encounter": v.encounter_ref,
        "authoredOn": fhir_datetime(v.when),
        "requester": doctor,
        "dosageInstruction": [_dosage(v, where, line)],
    })


def _drug(where: str, line: dict) -> dict[str, Any]:
    """National drug code ypdm + name ypmc; text ``name spec``; neither code nor name -> _Bad."""
    code = _field(line, "ypdm", where, _fold)
    name = _field(line, "ypmc", where)
    spec = _field(line, "gg", where)
    if code is None and name is None:
        raise _Bad(f"{where}.ypdm", "prescription line has neither a drug code nor a name")
    coding = _coded(NATIONAL_DRUG_SYSTEM, code, name)
    text = " ".join(t for t in (name, spec) if t) or None
    return _compact({"coding": [coding] if coding else None, "text": text})


def _dosage(v: _Visit, where: str, line: dict) -> dict[str, Any]:
    """Dose dcjl+jldw, route tj, frequency pc (FREQUENCIES), duration ts days."""
    dose = _field(line, "dcjl", where, _positive)
    unit = _field(line, "jldw", where)
    route = _field(line, "tj", where)
    frequency = _field(line, "pc", where, _fold)
    frequency = frequency.lower() if frequency else None
    days = _field(line, "ts", where, _positive)
    text = "，".join(t for t in (f"每次{dose}{unit or ''}" if dose is not None else None, route,
                                frequency, f"共{days}天" if days is not None else None) if t)
    quantity = _compact({"value": decimal_json(dose), "unit": unit}) if dose is not None else None
    as_needed = FREQUENCIES.get(frequency or "", (None, None, None, False))[3]
    return _compact({
        "text": text or None,
        "timing": _timing(v, where, frequency, days),
        "asNeededBoolean": True if as_needed else None,
        "route": {"text": route} if route else None,
        "doseAndRate": [{"doseQuantity": quantity}] if quantity else None,
    })


def _positive(value: Any) -> Decimal | None:
    """A dose or a number of days: a number above zero (InvalidValue otherwise); absent -> None."""
    number = parse_decimal(value)
    if number is not None and not number > 0:
        raise InvalidValue(f"expected a number above zero, got {number}")
    return number


def _timing(v: _Visit, where: str, frequency: str | None,
            days: Decimal | None) -> dict[str, Any] | None:
    """Timing from pc and ts; an unknown pc is kept as text with a note."""
    repeat: dict[str, Any] = {}
    if days is not None:
        repeat["boundsDuration"] = {"value": decimal_json(days), "unit": "d", "system": UCUM,
                                    "code": "d"}
    code = None
    if frequency is not None:
        gts, per_day, when, _ = FREQUENCIES.get(frequency, (None, None, None, False))
        if frequency not in FREQUENCIES:
            v.notes.append(f"{where}.pc: frequency {frequency[:10]!r} is not one the hub codes; "
                           "kept as text")
        code = _compact({"coding": [{"system": GTS_SYSTEM, "code": gts}] if gts else None,
                         "text": frequency})
        if per_day:
            repeat.update(frequency=per_day, period=1, periodUnit="d")
        if when:
            repeat["when"] = [when]
    return _compact({"repeat": repeat or None, "code": code}) or None


def _allergies(v: _Visit, raw: dict) -> list[dict]:
    """One AllergyIntolerance per gmxx entry: substance gmy as code text, reaction gmfy."""
    out = []
    for where, entry in _items(raw, "gmxx", v.path):
        substance = _field(entry, "gmy", where)
        reaction = _field(entry, "gmfy", where)
        out.append(_compact({
            "resourceType": "AllergyIntolerance",
            "id": v.new_id("AllergyIntolerance", substance or reaction or ""),
            "clinicalStatus": ALLERGY_ACTIVE,
            "code": {"text": substance} if substance else None,
            "patient": {"reference": PATIENT_REF},
            "encounter": v.encounter_ref,
            "recordedDate": fhir_datetime(v.when),
            "reaction": [{"manifestation": [{"text": reaction}]}] if reaction else None,
        }))
    return out
