"""上海 Shanghai: HL7 v2 (ER7) ADT and ORU messages -> FHIR R4 records.

See ``world/formats/shanghai-hl7v2.md``. Pure: bytes in, records/rejections out. Reading ER7
(splitting a body into messages, tokens, escapes, character sets) is ``mappers.er7``; the ACK
that answers a message is ``mappers.hl7_ack``.

Entry points:

- ``map_message(message, sender)`` - one message -> ``MessageResult`` (ACK code, ERR list, records).
  Never raises: what is not HL7 is ``AR``, HL7 that cannot be mapped is ``AE`` with located errors.
- ``map_upload(body, sender)`` - the ``common`` mapper contract over a whole body (re-mapping the
  archived originals); AE/AR messages become Rejections.

Decisions where the format is silent (also in the report to the lead):

- Record key for ADT: ``{hospital}|{PV1-19}``. Without PV1-19 the visit is keyed by the hospital's
  own patient number and the visit time: ``{hospital}|MR:{PID-3 MR}|{PV1-44 or MSH-7}`` (MSH-7 only
  for ADT; an A08 without PV1-44 then makes a new record, so senders should send PV1-19). The
  Encounter id is ``make_id("Encounter", hospital, visit number)`` (or ``..., "MR", mr, time``), and
  ORU^R01 references exactly that id when its PV1 carries the same numbers.
- An ADT^A08 is a snapshot of the visit: it replaces the A04/A01 record (its DG1/AL1 included).
- A message with several OBR: each OBR is its own record; a bad OBR is a Rejection and the message
  is answered AE while the good reports still map.
- Unknown OBX-8 flags and unknown OBX-2 types never fail a message (text kept, note added).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Callable
from urllib.parse import quote

from mappers.address import fhir_address
from mappers.region import scrub as _scrub
from mappers.common import (DICOM_MODALITY_SYSTEM, DICOM_UID_SYSTEM, DOCUMENT_SYSTEMS, HOSPITAL_PATIENT_NO_SYSTEM, ICD10_SYSTEM, IMAGING_REPORT_SYSTEM, INSURANCE_CARD_SYSTEM, INTERPRETATION_SYSTEM, INTERPRETATIONS, LAB_REPORT_SYSTEM, LOCAL_LAB_SYSTEM, LOINC_SYSTEM, OUTPATIENT_NO_SYSTEM, PATIENT_REF, PERSON_DOCUMENT_SYSTEMS, PRACTITIONER_SYSTEM, RESIDENT_ID_SYSTEM, SNOMED_SYSTEM, MapResult, Record, Rejection, decimal_json, department_concept, hospital_organization, hospital_reference, lab_value, make_id, parse_decimal, reference_range, validate)
from mappers.er7 import (
    AckError,
    Er7Error,
    Message,
    Segment,
    check_encoding_characters,
    decode,
    split_messages,
)
from mappers.errors import ForeignSender, InvalidValue, UnreadableUpload
from mappers.region import division, normalize_resident_id

# Versions the hub reads (MSH-12, major.minor): the format names 2.3-2.6, peers send up to 2.8.
SUPPORTED_VERSIONS = frozenset({"2.3", "2.4", "2.5", "2.6", "2.7", "2.8"})
RESIDENT_ID_OID = "2.16.156.10011.1.3"

# ---------------------------------------------------------------------------------------------
# Code tables (HL7 tables and the v2-to-FHIR concept maps in peers/v2-to-fhir-maps)
# ---------------------------------------------------------------------------------------------

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
V2_0357 = "HL70357"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
DIAGNOSIS_ROLE = "http://terminology.hl7.org/CodeSystem/diagnosis-role"
ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
UCUM = "http://unitsofmeasure.org"
# Generic systems for identifiers/codings the hub has no system of its own for.
GENERIC_ID_SYSTEM = "urn:yrdhub:hl7v2-identifier"
GENERIC_CODING_SYSTEM = "urn:yrdhub:hl7v2-coding-system"

# HL7 table 0001 -> FHIR gender (v2-to-FHIR AdministrativeSex map).
GENDERS: dict[str, str] = {"M": "male", "F": "female", "O": "other", "U": "unknown",
                           "A": "other", "N": "other"}
# HL7 table 0004 -> v3 ActCode (v2-to-FHIR PatientClass[EncounterClass]); others are refused.
PATIENT_CLASSES: dict[str, tuple[str, str]] = {
    "O": ("AMB", "ambulatory"), "E": ("EMER", "emergency"), "I": ("IMP", "inpatient encounter"),
    "P": ("PRENC", "pre-admission"),
}
# CE/CWE coding system names (component 3) -> FHIR system.
CODING_SYSTEMS: dict[str, str] = {
    "LN": LOINC_SYSTEM, "LOINC": LOINC_SYSTEM, "L": LOCAL_LAB_SYSTEM, "99LOCAL": LOCAL_LAB_SYSTEM,
    "ICD10CN": ICD10_SYSTEM, "ICD10": ICD10_SYSTEM, "I10": ICD10_SYSTEM, "I10C": ICD10_SYSTEM,
    "I9": "http://hl7.org/fhir/sid/icd-9-cm", "I9C": "http://hl7.org/fhir/sid/icd-9-cm",
    "SCT": SNOMED_SYSTEM, "SNM": SNOMED_SYSTEM, "SNOMED": SNOMED_SYSTEM,
    "DCM": DICOM_MODALITY_SYSTEM, "UCUM": UCUM,
}
# CX-5 identifier type -> system (resident ID handled by its OID too).
ID_TYPE_SYSTEMS: dict[str, str] = {
    "NNCHN": RESIDENT_ID_SYSTEM, "MR": HOSPITAL_PATIENT_NO_SYSTEM, "SS": INSURANCE_CARD_SYSTEM,
    "PPN": DOCUMENT_SYSTEMS["03"],
}
# XPN-7 name type -> HumanName.use.
NAME_USES: dict[str, str] = {"L": "official", "D": "usual", "M": "maiden", "A": "nickname",
                             "N": "nickname", "C": "old"}
# XAD-7 address type -> Address.use.
ADDRESS_USES: dict[str, str] = {"H": "home", "B": "work", "O": "work", "C": "temp"}
# XTN-2 use code / XTN-3 equipment -> ContactPoint.use / .system.
TELECOM_USES: dict[str, str] = {"PRN": "home", "WPN": "work", "ORN": "temp", "VHN": "temp"}
TELECOM_SYSTEMS: dict[str, str] = {"PH": "phone", "CP": "phone", "FX": "fax", "BP": "pager",
                                   "Internet": "email", "X.400": "email", "MD": "other"}
# DG1-6 diagnosis type -> (Condition.verificationStatus, Encounter.diagnosis.use or None).
DIAGNOSIS_TYPES: dict[str, tuple[str, tuple[str, str] | None]] = {
    "A": ("provisional", ("AD", "Admission diagnosis")),
    "W": ("provisional", None),
    "F": ("confirmed", ("DD", "Discharge diagnosis")),
    "P": ("provisional", None),
}
# HL7 table 0127 allergen type -> (AllergyIntolerance.category, type) per v2-to-FHIR map.
ALLERGEN_TYPES: dict[str, tuple[str | None, str | None]] = {
    "DA": ("medication", "allergy"), "FA": ("food", "allergy"), "EA": ("environment", "allergy"),
    "MA": (None, "allergy"), "MC": (None, "intolerance"), "AA": ("biologic", "allergy"),
    "PA": ("environment", "allergy"), "LA": ("environment", "allergy"),
}
# HL7 table 0128 allergy severity -> (criticality or None, reaction.severity or None).
ALLERGY_SEVERITIES: dict[str, tuple[str | None, str | None]] = {
    "SV": ("high", "severe"), "MO": (None, "moderate"), "MI": ("low", "mild"), "U": (None, None),
}
# HL7 table 0123 (OBR-25) -> DiagnosticReport.status.
REPORT_STATUSES: dict[str, str] = {
    "F": "final", "C": "corrected", "P": "preliminary", "X": "cancelled", "O": "registered",
    "I": "registered", "S": "registered", "A": "partial", "R": "partial", "M": "corrected",
    "N": "partial",
}
# HL7 table 0085 (OBX-11) -> Observation.status.
OBSERVATION_STATUSES: dict[str, str] = {
    "F": "final", "C": "corrected", "P": "preliminary", "X": "cancelled", "A": "amended",
    "D": "entered-in-error", "W": "entered-in-error", "R": "preliminary", "S": "preliminary",
    "I": "registered", "V": "final", "U": "final", "B": "amended",
}
# HL7 table 0074 (OBR-24) -> which kind of report (LAB / RAD) it is.
SERVICE_SECTIONS: dict[str, str] = {
    "LAB": "LAB", "HM": "LAB", "CH": "LAB", "MB": "LAB", "SR": "LAB", "BLB": "LAB", "CP": "LAB",
    "SP": "LAB", "IMM": "LAB", "MCB": "LAB", "MYC": "LAB", "PAR": "LAB", "TX": "LAB", "VR": "LAB",
    "CG": "LAB", "URN": "LAB", "HLA": "LAB", "PHR": "LAB",
    "RAD": "RAD", "CT": "RAD", "NMR": "RAD", "MR": "RAD", "US": "RAD", "RX": "RAD", "NMS": "RAD",
    "VUS": "RAD", "CUS": "RAD", "OUS": "RAD", "XRC": "RAD", "RC": "RAD",
}
# OBR-24 values that also name a DICOM modality (ImagingStudy.modality).
MODALITIES: dict[str, tuple[str, str]] = {
    "CT": ("CT", "Computed Tomography"), "NMR": ("MR", "Magnetic Resonance"),
    "MR": ("MR", "Magnetic Resonance"), "US": ("US", "Ultrasound"), "VUS": ("US", "Ultrasound"),
    "CUS": ("US", "Ultrasound"), "OUS": ("US", "Ultrasound"), "NMS": ("NM", "Nuclear Medicine"),
}
REPORT_KINDS: dict[str, tuple[str, str, str]] = {
    # kind -> (0074 display, report identifier system, observation category)
    "LAB": ("Laboratory", LAB_REPORT_SYSTEM, "laboratory"),
    "RAD": ("Radiology", IMAGING_REPORT_SYSTEM, "imaging"),
}
# OBX-3 codes (DCM) that carry the Study Instance UID; 113014 is what older engines send.
STUDY_UID_CODES = frozenset({"110180", "113014"})
# OBX-3 codes whose text is the impression (the report's conclusion) rather than the findings.
IMPRESSION_CODES = frozenset({"19005-8", "&IMP", "IMP", "121073"})
TEXT_TYPES = frozenset({"ST", "TX", "FT"})
SN_COMPARATORS: dict[str, str | None] = {"": None, "=": None, "<": "<", ">": ">", "<=": "<=",
                                         ">=": ">="}
_UID_RE = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")
_SEGMENT_ID_RE = re.compile(r"^[A-Z][A-Z0-9]{2}$")
_HOSPITAL_CODE_RE = re.compile(r"^H\d{11}$")
_DTM_RE = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,4})?([+-]\d{4})?$")
_CJK_RE = re.compile(r"[\u3400-\u9fff]")


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@dataclass
class MessageResult:
    control_id: str
    sending_facility: str
    message_type: str
    version: str
    ack_code: str
    errors: list[AckError] = field(default_factory=list)
    result: MapResult = field(default_factory=MapResult)


# ---------------------------------------------------------------------------------------------
# Data types
# ---------------------------------------------------------------------------------------------


def hl7_datetime(text: str) -> tuple[str, bool]:
    """HL7 DTM/TS ``YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ]`` -> (FHIR dateTime, has_time).

    Without a zone the time is China Standard Time (+08:00). Raises InvalidValue for text that is
    not a real date/time.
    """
    m = _DTM_RE.match(text.strip())
    if not m:
        raise InvalidValue(f"not an HL7 date/time: {text!r}")
    y, mo, d, h, mi, s, frac, zone = m.groups()
    try:
        if h is None:
            if d is not None:
                return date(int(y), int(mo), int(d)).isoformat(), False
            if mo is not None:
                date(int(y), int(mo), 1)
                return f"{y}-{mo}", False
            return y, False
        zone = zone or "+0800"
        if int(zone[1:3]) > 14 or int(zone[3:5]) > 59:
            raise ValueError("zone")
        stamp = datetime(int(y), int(mo), int(d), int(h), int(mi or 0), int(s or 0))
    except ValueError:
        raise InvalidValue(f"not a real date/time: {text!r}") from None
    out = stamp.strftime("%Y-%m-%dT%H:%M:%S") + (frac or "")
    return f"{out}{zone[:3]}:{zone[3:]}", True


def _when(seg: Segment, n: int) -> str | None:
    text = seg.text(n)
    if not text:
        return None
    try:
        return hl7_datetime(text)[0]
    except InvalidValue as exc:
        raise seg.err(n, f"{seg.name}-{n}: {exc}") from None


def _coding_system(name: str, default: str | None) -> str | None:
    if not name:
        return default
    return CODING_SYSTEMS.get(name.upper(), f"{GENERIC_CODING_SYSTEM}:{quote(name, safe='')}")


def _codeable(seg: Segment, n: int, rep: int = 1, default_system: str | None = None
              ) -> dict[str, Any] | None:
    """CE/CWE ``code^text^system^altCode^altText^altSystem^^^originalText`` -> CodeableConcept."""
    c = seg.comps(n, rep) + [""] * 9
    codings = []
    for code, display, system in ((c[0], c[1], c[2]), (c[3], c[4], c[5])):
        if code:
            coding: dict[str, Any] = {"code": code}
            sys = _coding_system(system, default_system)
            if sys:
                coding["system"] = sys
            if display:
                coding["display"] = display
            codings.append(coding)
    text = c[8] or c[1] or c[4]
    if not codings and not text:
        return None
    concept: dict[str, Any] = {}
    if codings:
        concept["coding"] = codings
    if text:
        concept["text"] = text
    return concept


def _quantity(number: Any, unit: dict[str, Any]) -> dict[str, Any]:
    return {"value": decimal_json(number), **unit}


def _unit(seg: Segment, n: int = 6) -> dict[str, Any]:
    """OBX-6 ``code^text^system`` -> Quantity unit fields (UCUM code only when it says UCUM)."""
    c = seg.comps(n) + ["", "", ""]
    unit = c[0] or c[1]
    if not unit:
        return {}
    out: dict[str, Any] = {"unit": unit}
    if c[2].upper() == "UCUM" and c[0]:
        out.update(system=UCUM, code=c[0])
    return out


# ---------------------------------------------------------------------------------------------
# Patient
# ---------------------------------------------------------------------------------------------


def _identifier(seg: Segment, rep: int, hospital: str) -> dict[str, Any] | None:
    """One PID-3 CX repetition -> Identifier. Raises ``Er7Error`` for a bad resident ID."""
    c = seg.comps(3, rep) + [""] * 6
    value, id_type = c[0], c[4].upper()
    if not value:
        return None
    authority = seg.text(3, 4, 1, rep)
    authority_oid = seg.text(3, 4, 2, rep)
    if id_type == "NNCHN" or RESIDENT_ID_OID in (authority, authority_oid):
        try:
            return {"system": RESIDENT_ID_SYSTEM, "value": normalize_resident_id(value)}
        except InvalidValue as exc:
            raise seg.err(3, f"PID-3 repetition {rep}: {exc}", "102") from None
    system = ID_TYPE_SYSTEMS.get(id_type)
    if system == HOSPITAL_PATIENT_NO_SYSTEM:
        assigner = authority if _HOSPITAL_CODE_RE.match(authority) else hospital
        return {"system": system, "value": value, "assigner": hospital_reference(assigner)}
    if system:
        return {"system": system, "value": value}
    # Others are kept with a generic system named after the assigning authority and the type.
    generic = GENERIC_ID_SYSTEM + (f":{quote(authority, safe='')}" if authority else "")
    ident: dict[str, Any] = {"system": generic, "value": value}
    if id_type:
        ident["type"] = {"coding": [{"system": V2_0203, "code": id_type}]}
    return ident


def _identifiers(pid: Segment, hospital: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for rep in range(1, pid.rep_count(3) + 1):
        ident = _identifier(pid, rep, hospital)
        if ident and ident not in out:
            out.append(ident)
    keyed = PERSON_DOCUMENT_SYSTEMS + (INSURANCE_CARD_SYSTEM, HOSPITAL_PATIENT_NO_SYSTEM)
    if not any(i["system"] in keyed for i in out):
        raise pid.err(3, "PID-3 has no identifier the hub can key a patient by "
                         "(resident ID NNCHN, insurance card SS or hospital number MR)", "101")
    return out


def _names(pid: Segment) -> list[dict[str, Any]]:
    """PID-5 ``family^given`` or the full name alone in the first component (never split)."""
    names = []
    for rep in range(1, pid.rep_count(5) + 1):
        family, given = pid.text(5, 1, 1, rep), pid.text(5, 2, 1, rep)
        if not family and not given:
            continue
        cjk = bool(_CJK_RE.search(family + given))
        full = f"{family}{given}" if cjk else " ".join(p for p in (given, family) if p)
        name: dict[str, Any] = {"text": full}
        if family and given:
            name.update(family=family, given=[given])
        use = NAME_USES.get(pid.text(5, 7, 1, rep).upper())
        if use:
            name["use"] = use
        names.append(name)
    return names


def _address(pid: Segment, rep: int) -> dict[str, Any] | None:
    """XAD as Address. A Chinese one is read by ``mappers.address`` from state, city, XAD-9
    (a district name or GB/T 2260 code) and the street lines (黄浦区南京东路1号); another keeps
    its parts as sent, with no district."""
    c = pid.comps(11, rep) + [""] * 9
    street = pid.text(11, 1, 1, rep)
    other, city, state, postal, country, kind, county = c[1], c[2], c[3], c[4], c[5], c[6], c[8]
    if not any((street, other, city, state, postal)):
        return None
    extra = {"postalCode": postal or None, "country": country or None, "use": ADDRESS_USES.get(kind.upper())}
    if _CJK_RE.search(street + city + state):
        if known := division(county):
            county = known.name
        parts = [state, city if city != state else "", "" if street.startswith(county) else county, street, other]
        return fhir_address("".join(p for p in parts if p), **extra)
    address = {"text": ", ".join(p for p in (street, other, city, state, postal) if p),
               "line": [x for x in (street, other) if x] or None, "city": city or None, "state": state or None,
               **extra}
    return {k: v for k, v in address.items() if v is not None}


def _telecoms(pid: Segment) -> list[dict[str, Any]]:
    out = []
    for n in (13, 14):
        for rep in range(1, pid.rep_count(n) + 1):
            c = pid.comps(n, rep) + [""] * 12
            equipment = c[2]
            system = TELECOM_SYSTEMS.get(equipment, "phone")
            if system == "email" or c[1] == "NET":
                system, value = "email", c[3] or c[0]
            else:
                local = c[6] if not c[5] or c[6].startswith(c[5]) else c[5] + c[6]
                value = c[11] or local or c[0]
            if not value:
                continue
            point: dict[str, Any] = {"system": system, "value": value}
            use = "mobile" if equipment == "CP" else TELECOM_USES.get(c[1])
            if n == 14 and not use:
                use = "work"
            if use:
                point["use"] = use
            out.append(point)
    return out


def _patient(pid: Segment, hospital: str, notes: list[str]) -> dict[str, Any]:
    """PID -> Patient (no id, no managingOrganization). Raises ``Er7Error`` for bad fields."""
    patient: dict[str, Any] = {"resourceType": "Patient",
                               "identifier": _identifiers(pid, hospital)}
    names = _names(pid)
    if names:
        patient["name"] = names
    sex = pid.text(8).upper()
    if sex in GENDERS:
        patient["gender"] = GENDERS[sex]
    elif sex:
        notes.append(f"PID[{pid.seq}]-8 gender {sex!r} is not in HL7 table 0001; left out")
    birth = pid.text(7)
    if birth:
        try:
            patient["birthDate"] = hl7_datetime(birth[:8] if len(birth) >= 8 else birth)[0]
        except InvalidValue as exc:
            raise pid.err(7, f"PID-7 birth date: {exc}") from None
    telecom = _telecoms(pid)
    if telecom:
        patient["telecom"] = telecom
    addresses = [a for r in range(1, pid.rep_count(11) + 1) if (a := _address(pid, r))]
    if addresses:
        patient["address"] = addresses
    return _valid(patient, pid, 3)


def _valid(resource: dict[str, Any], seg: Segment, n: int) -> dict[str, Any]:
    try:
        return validate(resource)
    except InvalidValue as exc:
        raise seg.err(n, str(exc), "207") from None


# ---------------------------------------------------------------------------------------------
# Visit (PV1) -> Encounter
# ---------------------------------------------------------------------------------------------


@dataclass
class _Visit:
    key: str
    encounter_id: str
    number: str | None


def _mr_number(pid: Segment | None) -> str:
    if pid is None:
        return ""
    for rep in range(1, pid.rep_count(3) + 1):
        if pid.text(3, 5, 1, rep).upper() == "MR":
            return pid.text(3, 1, 1, rep)
    return ""


def _visit(hospital: str, pv1: Segment, pid: Segment | None, fallback_time: str
           ) -> _Visit | None:
    """The visit's record key and Encounter id (one scheme for ADT and ORU); None if unkeyable.

    PV1-19 when present; else the hospital's patient number (PID-3 MR) with PV1-44 or, for ADT
    only, ``fallback_time`` (MSH-7).
    """
    number = pv1.text(19)
    if number:
        return _Visit(f"{hospital}|{number}", make_id("Encounter", hospital, number), number)
    mr, when = _mr_number(pid), pv1.text(44) or fallback_time
    if mr and when:
        return _Visit(f"{hospital}|MR:{mr}|{when}", make_id("Encounter", hospital, "MR", mr, when),
                      None)
    return None


def _practitioner(seg: Segment, n: int, hospital: str) -> dict[str, Any] | None:
    """XCN ``id^family^given`` -> Practitioner (id from hospital + staff id, else the name)."""
    staff, family, given = seg.text(n, 1), seg.text(n, 2), seg.text(n, 3)
    if not (staff or family or given):
        return None
    cjk = bool(_CJK_RE.search(family + given))
    full = f"{family}{given}" if cjk else " ".join(p for p in (given, family) if p)
    practitioner: dict[str, Any] = {
        "resourceType": "Practitioner",
        "id": make_id("Practitioner", hospital, staff or full),
    }
    if staff:
        practitioner["identifier"] = [{"system": PRACTITIONER_SYSTEM, "value": staff,
                                       "assigner": hospital_reference(hospital)}]
    if full:
        practitioner["name"] = [{"text": full}]
    return _valid(practitioner, seg, n)


def _encounter(pv1: Segment, visit: _Visit, hospital: str
               ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """PV1 -> (Encounter, [Practitioner]). Raises ``Er7Error`` for an unusable class or time."""
    cls = pv1.need(2, "patient class").upper()
    if cls not in PATIENT_CLASSES:
        raise pv1.err(2, f"PV1-2 patient class {cls!r} is not one of O/E/I/P (table 0004)", "103")
    code, display = PATIENT_CLASSES[cls]
    facility = pv1.text(3, 4)
    if _HOSPITAL_CODE_RE.match(facility) and facility != hospital:
        raise pv1.err(3, f"PV1-3.4 names another hospital ({facility}) than the sender", "102")
    end = _when(pv1, 45)
    encounter: dict[str, Any] = {
        "resourceType": "Encounter", "id": visit.encounter_id,
        "status": "finished" if end else "in-progress",
        "class": {"system": ACT_CODE, "code": code, "display": display},
        "subject": {"reference": PATIENT_REF},
        "serviceProvider": hospital_reference(hospital),
    }
    if visit.number:
        encounter["identifier"] = [{"system": OUTPATIENT_NO_SYSTEM, "value": visit.number,
                                    "assigner": hospital_reference(hospital)}]
    period = {k: v for k, v in (("start", _when(pv1, 44)), ("end", end)) if v}
    if period:
        encounter["period"] = period
    service = department_concept(pv1.text(3, 1), pv1.text(3, 9))
    if service:
        encounter["serviceType"] = service
    doctors = []
    doctor = _practitioner(pv1, 7, hospital)
    if doctor:
        doctors.append(doctor)
        encounter["participant"] = [{
            "type": [{"coding": [{"system": PARTICIPATION, "code": "ATND",
                                  "display": "attender"}]}],
            "individual": {"reference": f"Practitioner/{doctor['id']}"}}]
    return encounter, doctors


# ---------------------------------------------------------------------------------------------
# DG1 -> Condition, AL1 -> AllergyIntolerance
# ---------------------------------------------------------------------------------------------


def _condition(dg1: Segment, visit: _Visit, rank: int) -> tuple[dict[str, Any], dict | None]:
    """DG1 -> (Condition, Encounter.diagnosis entry)."""
    concept = _codeable(dg1, 3, default_system=None)
    description = dg1.text(4)
    if concept is None and not description:
        raise dg1.err(3, "DG1-3 diagnosis code is empty", "101")
    concept = concept or {}
    if description and "text" not in concept:
        concept["text"] = description
    kind = dg1.text(6).upper()
    code = dg1.text(3) or concept.get("text", "")
    condition: dict[str, Any] = {
        "resourceType": "Condition",
        "id": make_id("Condition", visit.key, code, kind),
        "category": [{"coding": [{"system": CONDITION_CATEGORY, "code": "encounter-diagnosis",
                                  "display": "Encounter Diagnosis"}]}],
        "code": concept,
        "subject": {"reference": PATIENT_REF},
        "encounter": {"reference": f"Encounter/{visit.encounter_id}"},
    }
    if kind and kind not in DIAGNOSIS_TYPES:
        raise dg1.err(6, f"DG1-6 diagnosis type {kind!r} is not A/W/F", "103")
    verification, use = DIAGNOSIS_TYPES.get(kind, (None, None))
    if verification:
        condition["verificationStatus"] = {"coding": [{"system": CONDITION_VERIFICATION,
                                                       "code": verification}]}
    recorded = _when(dg1, 5)
    if recorded:
        condition["recordedDate"] = recorded
    priority = dg1.text(15)
    entry: dict[str, Any] = {"condition": {"reference": f"Condition/{condition['id']}"},
                             "rank": int(priority) if priority.isdigit() and int(priority) > 0
                             else rank}
    if use:
        entry["use"] = {"coding": [{"system": DIAGNOSIS_ROLE, "code": use[0], "display": use[1]}]}
    return _valid(condition, dg1, 3), entry


def _allergy(al1: Segment, visit: _Visit, notes: list[str]) -> dict[str, Any]:
    allergen = _codeable(al1, 3)
    if allergen is None:
        raise al1.err(3, "AL1-3 allergen is empty", "101")
    kind = al1.text(2).upper()
    allergy: dict[str, Any] = {
        "resourceType": "AllergyIntolerance",
        "id": make_id("AllergyIntolerance", visit.key, al1.text(3) or allergen.get("text", "")),
        "clinicalStatus": {"coding": [{"system": ALLERGY_CLINICAL, "code": "active"}]},
        "code": allergen,
        "patient": {"reference": PATIENT_REF},
        "encounter": {"reference": f"Encounter/{visit.encounter_id}"},
    }
    if kind in ALLERGEN_TYPES:
        category, kind_type = ALLERGEN_TYPES[kind]
        if category:
            allergy["category"] = [category]
        if kind_type:
            allergy["type"] = kind_type
    elif kind:
        notes.append(f"AL1[{al1.seq}]-2 allergen type {kind!r} is not in HL7 table 0127")
    severity = al1.text(4).upper()
    criticality, reaction_severity = ALLERGY_SEVERITIES.get(severity, (None, None))
    if severity and severity not in ALLERGY_SEVERITIES:
        notes.append(f"AL1[{al1.seq}]-4 severity {severity!r} is not in HL7 table 0128")
    if criticality:
        allergy["criticality"] = criticality
    reactions = [al1.text(5, 1, 1, r) for r in range(1, al1.rep_count(5) + 1)]
    reactions = [r for r in reactions if r]
    if reactions:
        reaction: dict[str, Any] = {"manifestation": [{"text": r} for r in reactions]}
        if reaction_severity:
            reaction["severity"] = reaction_severity
        allergy["reaction"] = [reaction]
    onset = _when(al1, 6)
    if onset:
        allergy["onsetDateTime"] = onset
    return _valid(allergy, al1, 3)


# ---------------------------------------------------------------------------------------------
# ADT^A01 / A04 / A08
# ---------------------------------------------------------------------------------------------


@dataclass
class _Context:
    message: Message
    hospital: str
    trigger: str
    control_id: str
    notes: list[str] = field(default_factory=list)


def _map_adt(ctx: _Context) -> tuple[list[Record], list[AckError]]:
    msg, hospital = ctx.message, ctx.hospital
    pid, pv1 = msg.first("PID"), msg.first("PV1")
    if pid is None:
        raise Er7Error(AckError("PID", 1, 0, "PID segment missing", "100"))
    if pv1 is None:
        raise Er7Error(AckError("PV1", 1, 0, "PV1 segment missing: the visit cannot be keyed",
                                 "100"))
    patient = _patient(pid, hospital, ctx.notes)
    visit = _visit(hospital, pv1, pid, msg.msh.text(7))
    if visit is None:
        raise pv1.err(19, "PV1-19 visit number is empty and there is no PID-3 MR number with a "
                          "visit time to key the visit by", "101")
    encounter, doctors = _encounter(pv1, visit, hospital)
    conditions, diagnoses, seen = [], [], set()
    for position, dg1 in enumerate(msg.all("DG1"), start=1):
        condition, entry = _condition(dg1, visit, position)
        if condition["id"] not in seen:
            seen.add(condition["id"])
            conditions.append(condition)
            diagnoses.append(entry)
    if diagnoses:
        encounter["diagnosis"] = diagnoses
    allergies: dict[str, dict] = {}
    for al1 in msg.all("AL1"):
        allergy = _allergy(al1, visit, ctx.notes)
        allergies.setdefault(allergy["id"], allergy)
    encounter = _valid(encounter, pv1, 2)
    resources = [hospital_organization(hospital), *doctors, encounter, *conditions,
                 *allergies.values()]
    return [Record(key=visit.key, hospital=hospital, patient=patient, resources=resources,
                   location=f"{ctx.control_id} PV1[{pv1.seq}]")], []


# ---------------------------------------------------------------------------------------------
# ORU^R01
# ---------------------------------------------------------------------------------------------


def _observation_value(obx: Segment, value_type: str, unit: dict[str, Any], notes: list[str]
                       ) -> dict[str, Any]:
    """OBX-5 by OBX-2 (``value_type``, upper-cased) with OBX-6 (``unit``, from ``_unit``) ->
    Observation value[x] ({} when empty). Never raises for odd content."""
    if not obx.rep_count(5) or not obx.raw(5):
        return {}
    if value_type in TEXT_TYPES:
        return {"valueString": _text_value(obx)}
    if value_type == "NM":
        value = lab_value(obx.text(5), unit.get("unit"))
        if "valueQuantity" in value:
            value["valueQuantity"].update(unit)
        else:
            notes.append(f"OBX[{obx.seq}]-5 is not a number for type NM; kept as sent")
        return value
    if value_type in ("CE", "CWE", "CNE", "CF", "IS", "ID"):
        concept = _codeable(obx, 5)
        return {"valueCodeableConcept": concept} if concept else {}
    if value_type == "SN":
        return _structured_numeric(obx, unit)
    if value_type == "NR":
        return _range(obx.text(5, 1), obx.text(5, 2), unit) or {"valueString": obx.raw(5)}
    if value_type in ("DT", "TS", "DTM"):
        try:
            return {"valueDateTime": hl7_datetime(obx.text(5))[0]}
        except InvalidValue:
            return {"valueString": obx.raw(5)}
    if value_type == "TM":
        m = re.match(r"^(\d{2})(\d{2})?(\d{2})?", obx.text(5))
        if m and int(m.group(1)) < 24 and int(m.group(2) or 0) < 60 and int(m.group(3) or 0) < 60:
            return {"valueTime": f"{m.group(1)}:{m.group(2) or '00'}:{m.group(3) or '00'}"}
        return {"valueString": obx.raw(5)}
    notes.append(f"OBX[{obx.seq}]-2 value type {value_type!r} is not read; kept as text")
    return {"valueString": obx.raw(5)}


def _text_value(obx: Segment) -> str:
    """ST/TX/FT: repetitions are lines; a stray component separator is kept as sent."""
    lines = [obx.enc.component.join(c for c in obx.comps(5, r))
             for r in range(1, obx.rep_count(5) + 1)]
    return "\n".join(lines).strip("\n")


def _number(text: str) -> Any:
    try:
        return parse_decimal(text)
    except InvalidValue:
        return None


def _range(low: str, high: str, unit: dict[str, Any]) -> dict[str, Any] | None:
    lo, hi = _number(low), _number(high)
    if lo is None or hi is None:
        return None
    return {"valueRange": {"low": _quantity(lo, unit), "high": _quantity(hi, unit)}}


def _structured_numeric(obx: Segment, unit: dict[str, Any]) -> dict[str, Any]:
    """SN ``comparator^num1^separator^num2``: ``<^0.5``, ``^7.2``, ``^10^-^20``, ``^1^:^128``."""
    c = [obx.text(5, i) for i in range(1, 5)]
    comparator, n1, sep, n2 = c
    raw = {"valueString": obx.raw(5)}
    if comparator not in SN_COMPARATORS:
        return raw
    if not sep and not n2:
        number = _number(n1)
        if number is None:
            return raw
        quantity = _quantity(number, unit)
        if SN_COMPARATORS[comparator]:
            quantity["comparator"] = SN_COMPARATORS[comparator]
        return {"valueQuantity": quantity}
    if comparator:
        return raw
    if sep == "-":
        return _range(n1, n2, unit) or raw
    if sep in (":", "/"):
        a, b = _number(n1), _number(n2)
        if a is None or b is None:
            return raw
        return {"valueRatio": {"numerator": _quantity(a, unit), "denominator": _quantity(b, {})}}
    if sep == "+" and not n2 and _number(n1) is not None:
        return {"valueString": f"{n1}+"}
    return raw


def _interpretations(obx: Segment, notes: list[str]) -> list[dict[str, Any]]:
    out = []
    for rep in range(1, obx.rep_count(8) + 1):
        flag = obx.text(8, 1, 1, rep).upper()
        if not flag:
            continue
        if flag in INTERPRETATIONS:
            out.append({"coding": [{"system": INTERPRETATION_SYSTEM, "code": flag,
                                    "display": INTERPRETATIONS[flag]}]})
        else:
            # Unknown flags are tolerated: kept as text, the sender is told.
            out.append({"text": flag})
            notes.append(f"OBX[{obx.seq}]-8 abnormal flag {flag!r} is not a known code; kept as text")
    return out


def _observation(obx: Segment, value_type: str, report: "_Report", obs_id: str, kind: str,
                 notes: list[str]) -> dict[str, Any]:
    """One OBX as an Observation; ``value_type`` is OBX-2 upper-cased (the caller has it)."""
    code = _codeable(obx, 3, default_system=LOCAL_LAB_SYSTEM)
    if code is None:
        raise obx.err(3, "OBX-3 observation identifier is empty", "101")
    status_code = obx.text(11).upper()
    status = OBSERVATION_STATUSES.get(status_code)
    if status is None:
        if status_code:
            raise obx.err(11, f"OBX-11 result status {status_code!r} not in table 0085", "103")
        status = report.observation_status
    observation: dict[str, Any] = {
        "resourceType": "Observation", "id": obs_id, "status": status,
        "category": [{"coding": [{"system": OBSERVATION_CATEGORY,
                                  "code": REPORT_KINDS[kind][2]}]}],
        "code": code, "subject": {"reference": PATIENT_REF},
    }
    if report.encounter_ref:
        observation["encounter"] = report.encounter_ref
    unit = _unit(obx)
    observation.update(_observation_value(obx, value_type, unit, notes))
    ranges = reference_range(obx.text(7), unit.get("unit"))
    if ranges:
        observation["referenceRange"] = ranges
    flags = _interpretations(obx, notes)
    if flags:
        observation["interpretation"] = flags
    effective = _when(obx, 14) or report.effective
    if effective:
        observation["effectiveDateTime"] = effective
    return _valid(observation, obx, 5)


@dataclass
class _Report:
    obr: Segment
    obxs: list[Segment]
    number: str
    kind: str
    effective: str | None
    encounter_ref: dict[str, str] | None
    observation_status: str


def _report_kind(obr: Segment, obxs: list[Segment], sending_app: str) -> str:
    """OBR-24 via table 0074, else inferred: a study UID, or a PACS/RIS sender, makes it RAD."""
    section = obr.text(24).upper()
    if section in SERVICE_SECTIONS:
        return SERVICE_SECTIONS[section]
    if any(o.text(3) in STUDY_UID_CODES for o in obxs):
        return "RAD"
    if any(tag in sending_app.upper() for tag in ("PACS", "RIS", "IMAGING")):
        return "RAD"
    return "LAB"


def _study_uid(obx: Segment) -> str | None:
    if obx.text(3) not in STUDY_UID_CODES or obx.text(3, 3).upper() not in ("DCM", ""):
        return None
    uid = obx.text(5)
    if not (uid and len(uid) <= 64 and _UID_RE.match(uid)):
        raise obx.err(5, "OBX-5 Study Instance UID is not a DICOM UID (digits and dots, <= 64)")
    return uid


def _imaging_study(report: _Report, uid: str, hospital: str) -> dict[str, Any]:
    study: dict[str, Any] = {
        "resourceType": "ImagingStudy", "id": make_id("ImagingStudy", hospital, uid),
        "identifier": [{"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{uid}"}],
        "status": "available", "subject": {"reference": PATIENT_REF},
    }
    modality = MODALITIES.get(report.obr.text(24).upper())
    if modality:
        study["modality"] = [{"system": DICOM_MODALITY_SYSTEM, "code": modality[0],
                              "display": modality[1]}]
    if report.encounter_ref:
        study["encounter"] = report.encounter_ref
    if report.effective:
        study["started"] = report.effective
    procedure = _codeable(report.obr, 4)
    if procedure:
        study["procedureCode"] = [procedure]
    return study


def _group_orders(msg: Message) -> list[tuple[Segment, list[Segment]]]:
    groups: list[tuple[Segment, list[Segment]]] = []
    for seg in msg.segments:
        if seg.name == "OBR":
            groups.append((seg, []))
        elif seg.name == "OBX" and groups:
            groups[-1][1].append(seg)
    return groups


def _map_report(ctx: _Context, obr: Segment, obxs: list[Segment], patient: dict,
                encounter_ref: dict | None) -> Record:
    hospital = ctx.hospital
    number = obr.text(3) or obr.text(2)
    if not number:
        raise obr.err(3, "OBR-3 filler and OBR-2 placer order numbers are both empty", "101")
    kind = _report_kind(obr, obxs, ctx.message.msh.text(3))
    status_code = obr.text(25).upper()
    if status_code and status_code not in REPORT_STATUSES:
        raise obr.err(25, f"OBR-25 result status {status_code!r} not in table 0123", "103")
    status = REPORT_STATUSES.get(status_code, "unknown")
    report = _Report(obr, obxs, number, kind, _when(obr, 7), encounter_ref,
                     OBSERVATION_STATUSES.get(status_code, "unknown"))
    code = _codeable(obr, 4)
    if code is None:
        raise obr.err(4, "OBR-4 universal service identifier is empty", "101")
    display, id_system, _ = REPORT_KINDS[kind]
    categories = [{"coding": [{"system": V2_0074, "code": kind, "display": display}]}]
    section = obr.text(24).upper()
    if section and section != kind:
        categories.append({"coding": [{"system": V2_0074, "code": section}]})
    dr_id = make_id("DiagnosticReport", hospital, number)
    diagnostic: dict[str, Any] = {
        "resourceType": "DiagnosticReport", "id": dr_id, "status": status,
        "category": categories, "code": code, "subject": {"reference": PATIENT_REF},
        "identifier": [{"system": id_system, "value": number,
                        "assigner": hospital_reference(hospital)}],
        "performer": [hospital_reference(hospital)],
    }
    if encounter_ref:
        diagnostic["encounter"] = encounter_ref
    if report.effective:
        diagnostic["effectiveDateTime"] = report.effective
    issued = _when(obr, 22)
    if issued and "T" in issued:  # an instant needs a time; a bare date is left out
        diagnostic["issued"] = issued
    observations, studies, findings, impressions = [], [], [], []
    used: dict[str, int] = {}
    for obx in obxs:
        uid = _study_uid(obx)
        if uid:
            studies.append(_imaging_study(report, uid, hospital))
            continue
        value_type = obx.text(2).upper()
        if kind == "RAD" and value_type in ("TX", "FT", "ST"):
            text = _text_value(obx)
            if text:
                target = impressions if obx.text(3) in IMPRESSION_CODES else findings
                target.append(text)
            continue
        # Observation ids: OBX-3 code + OBX-4 sub-id, so a corrected report replaces in place.
        base = f"{obx.text(3) or obx.text(3, 2)}|{obx.text(4)}"
        used[base] = used.get(base, 0) + 1
        obs_id = make_id("Observation", hospital, number, base, str(used[base]))
        observations.append(_observation(obx, value_type, report, obs_id, kind, ctx.notes))
    if observations:
        diagnostic["result"] = [{"reference": f"Observation/{o['id']}"} for o in observations]
    if studies:
        diagnostic["imagingStudy"] = [{"reference": f"ImagingStudy/{s['id']}"} for s in studies]
    full_text = "\n".join(findings + impressions)
    if full_text:
        diagnostic["conclusion"] = "\n".join(impressions) or full_text
        diagnostic["presentedForm"] = [{
            "contentType": "text/plain; charset=utf-8",
            "data": base64.b64encode(full_text.encode("utf-8")).decode("ascii"),
            "title": code.get("text") or "report"}]
    diagnostic = _valid(diagnostic, obr, 4)
    studies = [_valid(s, obr, 4) for s in studies]
    return Record(key=f"{hospital}|{number}", hospital=hospital, patient=patient,
                  resources=[hospital_organization(hospital), diagnostic, *observations, *studies],
                  location=f"{ctx.control_id} OBR[{obr.seq}]")


def _map_oru(ctx: _Context) -> tuple[list[Record], list[AckError]]:
    msg, hospital = ctx.message, ctx.hospital
    pid = msg.first("PID")
    if pid is None:
        raise Er7Error(AckError("PID", 1, 0, "PID segment missing", "100"))
    groups = _group_orders(msg)
    if not groups:
        raise Er7Error(AckError("OBR", 1, 0, "no OBR segment: nothing to map", "100"))
    patient = _patient(pid, hospital, ctx.notes)
    pv1 = msg.first("PV1")
    encounter_ref = None
    if pv1 is not None:
        # Only PV1-19, or MR + PV1-44: MSH-7 is the report's time, not the visit's.
        visit = _visit(hospital, pv1, pid, "")
        if visit:
            encounter_ref = {"reference": f"Encounter/{visit.encounter_id}"}
    records, errors = [], []
    for obr, obxs in groups:
        try:
            records.append(_map_report(ctx, obr, obxs, patient, encounter_ref))
        except Er7Error as exc:
            errors.append(exc.error)
    return records, errors


# Message type -> mapper. Data: adding a trigger is one line.
MAPPERS: dict[tuple[str, str], Callable[[_Context], tuple[list[Record], list[AckError]]]] = {
    ("ADT", "A01"): _map_adt, ("ADT", "A04"): _map_adt, ("ADT", "A08"): _map_adt,
    ("ORU", "R01"): _map_oru,
}


# ---------------------------------------------------------------------------------------------
# One message
# ---------------------------------------------------------------------------------------------


def _header(msg: Message) -> tuple[str, str, str, str, str]:
    """(control id, sending facility, message code, trigger, version) from MSH."""
    msh = msg.msh
    code, trigger = msh.text(9, 1).upper(), msh.text(9, 2).upper()
    if code and not trigger:
        evn = msg.first("EVN")
        trigger = evn.text(1).upper() if evn else ""
    return msh.text(10), msh.text(4), code, trigger, msh.text(12)


def map_message(message: bytes, sender: str) -> MessageResult:
    """One HL7 v2 message -> ``MessageResult``. Never raises.

    AR: not HL7 (no MSH, undecodable, bad encoding characters, no MSH-9/MSH-10, version outside
    2.3-2.8). AE: HL7 that cannot be mapped (unsupported type, MSH-4 not ``sender``, a bad field;
    ERR names segment/field/reason). AA: mapped. An unexpected bug is answered AE "internal
    error" (the message is kept for a person) rather than dropping the connection.
    """
    try:
        return _map_message(message, sender)
    except Exception as exc:  # noqa: BLE001 - last line of defence, see docstring
        error = AckError("", 0, 0, f"internal error while mapping ({type(exc).__name__})", "207")
        return MessageResult("", "", "", "", "AE", [error],
                             MapResult(rejected=[Rejection("message", error.reason)]))


def _reject(code: str, errors: list[AckError], header: tuple[str, ...] = ("", "", "", "")
            ) -> MessageResult:
    control_id, facility, mtype, version = header
    where = f"{control_id} " if control_id else ""
    rejected = [Rejection(f"{where}{e.location()}".strip(), e.reason) for e in errors]
    return MessageResult(control_id, facility, mtype, version, code, errors,
                         MapResult(rejected=rejected))


def _map_message(message: bytes, sender: str) -> MessageResult:
    try:
        text = decode(message)
        check_encoding_characters(text)
    except Er7Error as exc:
        return _reject("AR", [exc.error])
    try:
        msg = Message(text)
    except Exception:  # noqa: BLE001 - last line of defence on garbage: AR, never a crash
        return _reject("AR", [AckError("", 0, 0, "not an HL7 v2 message: cannot be parsed",
                                       "100")])
    control_id, facility, code, trigger, version = _header(msg)
    header = (control_id, facility, f"{code}^{trigger}" if trigger else code, version)
    if not control_id:
        return _reject("AR", [AckError("MSH", 1, 10, "MSH-10 message control id is empty",
                                       "101")], header)
    if not code:
        return _reject("AR", [AckError("MSH", 1, 9, "MSH-9 message type is empty", "101")],
                       header)
    if ".".join(version.split(".")[:2]) not in SUPPORTED_VERSIONS:
        return _reject("AR", [AckError("MSH", 1, 12, f"HL7 version {version!r} not supported "
                                       "(2.3 to 2.8)", "203")], header)
    bad = [s for s in msg.segments if not _SEGMENT_ID_RE.match(s.name)]
    if bad:
        return _reject("AE", [AckError(bad[0].name[:3], bad[0].seq, 0,
                                       "a line is not an HL7 segment", "100")], header)
    if not facility:
        return _reject("AE", [AckError("MSH", 1, 4, "MSH-4 sending facility is empty", "101")],
                       header)
    if facility != sender:
        return _reject("AE", [AckError("MSH", 1, 4, f"MSH-4 sending facility {facility!r} is not "
                                       f"the sender {sender!r}", "207")], header)
    mapper = MAPPERS.get((code, trigger))
    if mapper is None:
        known_code = any(c == code for c, _ in MAPPERS)
        return _reject("AE", [AckError("MSH", 1, 9, f"message type {header[2]} not supported",
                                       "201" if known_code else "200")], header)
    ctx = _Context(msg, sender, trigger, control_id)
    try:
        records, errors = mapper(ctx)
    except Er7Error as exc:
        records, errors = [], [exc.error]
    result = _reject("AE" if errors else "AA", errors, header)
    result.result.records = records
    result.result.notes = [_scrub(n) for n in ctx.notes]
    return result


# ---------------------------------------------------------------------------------------------
# The common mapper contract
# ---------------------------------------------------------------------------------------------


def map_upload(body: bytes, sender: str) -> MapResult:
    """All messages of a body merged (re-mapping archived originals).

    AE/AR messages become Rejections (located by MSH-10 and segment). Raises UnreadableUpload
    when nothing in the body is HL7 (every message AR, or an empty body), ForeignSender when
    every message names another hospital in MSH-4.
    """
    messages = split_messages(body)
    if not messages:
        raise UnreadableUpload("empty body: no HL7 message")
    merged = MapResult()
    results = [map_message(m, sender) for m in messages]
    for res in results:
        merged.records.extend(res.result.records)
        merged.rejected.extend(res.result.rejected)
        merged.notes.extend(res.result.notes)
    if all(r.ack_code == "AR" for r in results):
        raise UnreadableUpload(f"not HL7 v2: {results[0].errors[0].reason}")
    foreign = [r for r in results if r.errors and r.errors[0][:3] == ("MSH", 1, 4)]
    if len(foreign) == len(results):
        raise ForeignSender(f"MSH-4 names {foreign[0].sending_facility!r}, not the sender")
    return merged
