"""Jiangsu hospitals' CDA R2 shared documents (WS/T 500) -> FHIR R4.

The format: ``world/formats/jiangsu-cda.md``.

``map_upload(body, sender)`` reads ONE ClinicalDocument and returns at most one ``CdaRecord``.

Order of checks, and what each failure becomes:

1. Reading (``UnreadableUpload``, the hub answers 400), by ``mappers.secure_xml``: the encoding
   (a BOM, else the XML declaration: UTF-8, or GB2312/GBK/GB18030 all read as GB18030, else
   UTF-8), then a scan of the prolog that refuses any ``<!DOCTYPE`` (so every DTD, entity
   declaration, billion-laughs and external-DTD attack) before any parser sees the bytes, then a
   parse with DTD loading, entity resolution and network access off, then a refusal of XInclude
   elements. Nothing is ever resolved. The root must be ``ClinicalDocument``.
2. Kind (``UnreadableUpload``): a document that is not WS/T 500 at all (a C-CDA document, say) is
   refused naming its template. A WS/T 500 document of a kind the hub does not take (neither
   outpatient record C0002, imaging report C0006 nor lab report C0007) is a ``Rejection``.
3. Sender (``ForeignSender``, 403): the custodian hospital (and an author's organisation, when it
   names one by hospital code) must be the authenticated sender.
4. Content: any unreadable value (bad resident ID, impossible time, unknown code) rejects the
   whole document with the location of the value (``Rejection``): a report with a silently missing
   result would be worse than a refused one. ``nullFlavor`` values are simply absent.

Versions: ``Record.key`` is ``"<hospital>|<setId>"`` so version 2 of a set replaces version 1.
The mapper is pure and cannot know what the hub holds, so each record carries ``version`` (the
``versionNumber``, 1 when absent) on ``CdaRecord``. The hub compares it with the held record's
version: higher replaces, equal is an ordinary re-send, LOWER is archived, changes nothing and is
answered with ``stale_version_rejection(record, held_version)``.
"""

from __future__ import annotations

import base64
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Iterator

from lxml import etree

from mappers import secure_xml
from mappers.address import fhir_address
from mappers.region import scrub as _scrub
from mappers.common import (DICOM_MODALITIES, DICOM_MODALITY_SYSTEM, DICOM_UID_SYSTEM, ICD10_SYSTEM, IMAGING_REPORT_SYSTEM, LAB_REPORT_SYSTEM, LOCAL_LAB_SYSTEM, LOINC_SYSTEM, NATIONAL_DRUG_SYSTEM, OUTPATIENT_NO_SYSTEM, PATIENT_REF, PRACTITIONER_SYSTEM, RESIDENT_ID_SYSTEM, SNOMED_SYSTEM, MapResult, Record, Rejection, clean, decimal_json, codeable_concept, department_concept, fhir_date, fhir_datetime, gbt_gender, hospital_organization, hospital_reference, interpretation, lab_value, make_id, parse_decimal, parse_when, reference_range, validate)
from mappers.errors import ForeignSender, InvalidValue, UnreadableUpload
from mappers.region import normalize_resident_id

HL7_NS = "urn:hl7-org:v3"
XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
NS = {"h": HL7_NS}

# Identifier roots of WS/T 500 (world/README.md "Identifiers" and the format file).
ROOT_RESIDENT_ID = "2.16.156.10011.1.3"
ROOT_OUTPATIENT_NO = "2.16.156.10011.1.11"
ROOT_INPATIENT_NO = "2.16.156.10011.1.12"
ROOT_HEALTH_CARD = "2.16.156.10011.1.19"
ROOT_HOSPITAL = "2.16.156.10011.1.5"
ROOT_LAB_REPORT = "2.16.156.10011.1.33"
ROOT_IMAGING_REPORT = "2.16.156.10011.1.32"
ROOT_STUDY_UID = "1.2.840.10008.2.16.4"
DOCUMENT_CODE_SYSTEM = "2.16.156.10011.2.4"
ENCOUNTER_TYPE_SYSTEM = "2.16.156.10011.2.3.1.271"
# Not in common.py (yet): the inpatient number and the resident health card (居民健康卡).
INPATIENT_NO_SYSTEM = "urn:oid:2.16.156.10011.1.12"
HEALTH_CARD_SYSTEM = "urn:oid:2.16.156.10011.1.19"

V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
DIAGNOSIS_ROLE = "http://terminology.hl7.org/CodeSystem/diagnosis-role"
DATA_ABSENT_REASON = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
MEDREQ_CATEGORY = "http://terminology.hl7.org/CodeSystem/medicationrequest-category"
PARTICIPATION_TYPE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"


@dataclass(frozen=True)
class DocKind:
    template: str
    code: str
    name: str


KINDS = (
    DocKind("2.16.156.10011.2.1.1.22", "C0002", "outpatient record (门(急)诊病历)"),
    DocKind("2.16.156.10011.2.1.1.26", "C0006", "imaging report (检查报告)"),
    DocKind("2.16.156.10011.2.1.1.27", "C0007", "lab report (检验报告)"),
)
KIND_BY_TEMPLATE = {k.template: k for k in KINDS}
KIND_BY_CODE = {k.code: k for k in KINDS}
WST500_TEMPLATE_PREFIX = "2.16.156.10011.2.1"

# C-CDA document templates, named in the refusal of a document that is not WS/T 500 at all.
CCDA_TEMPLATES = {
    "2.16.840.1.113883.10.20.22.1.2": "C-CDA CCD",
    "2.16.840.1.113883.10.20.22.1.3": "C-CDA History and Physical",
    "2.16.840.1.113883.10.20.22.1.4": "C-CDA Consultation Note",
    "2.16.840.1.113883.10.20.22.1.5": "C-CDA Diagnostic Imaging Report",
    "2.16.840.1.113883.10.20.22.1.6": "C-CDA Procedure Note",
    "2.16.840.1.113883.10.20.22.1.7": "C-CDA Operative Note",
    "2.16.840.1.113883.10.20.22.1.8": "C-CDA Discharge Summary",
    "2.16.840.1.113883.10.20.22.1.9": "C-CDA Progress Note",
    "2.16.840.1.113883.10.20.22.1.10": "C-CDA Unstructured Document",
    "2.16.840.1.113883.10.20.22.1.13": "C-CDA Transfer Summary",
    "2.16.840.1.113883.10.20.22.1.14": "C-CDA Referral Note",
    "2.16.840.1.113883.10.20.22.1.15": "C-CDA Care Plan",
    "2.16.840.1.113883.10.20.22.1.1": "C-CDA US Realm Header",
}

# Encounter type (2.16.156.10011.2.3.1.271) -> v3 ActCode class.
ENCOUNTER_CLASSES = {
    "1": ("AMB", "ambulatory"), "2": ("EMER", "emergency"), "3": ("IMP", "inpatient encounter"),
}
# Class when the document gives no encounter type: from the kind of visit number.
CLASS_OF_VISIT_ROOT = {ROOT_OUTPATIENT_NO: "1", ROOT_INPATIENT_NO: "3"}
VISIT_SYSTEMS = {ROOT_OUTPATIENT_NO: OUTPATIENT_NO_SYSTEM, ROOT_INPATIENT_NO: INPATIENT_NO_SYSTEM}

# CDA codeSystem OIDs with a FHIR system of their own; others become urn:oid:<oid>.
SYSTEM_OF_OID = {
    "2.16.840.1.113883.6.1": LOINC_SYSTEM,
    "2.16.840.1.113883.6.96": SNOMED_SYSTEM,
    "2.16.156.10011.2.3.3.11": ICD10_SYSTEM,
    "1.2.840.10008.2.16.4": DICOM_MODALITY_SYSTEM,
}
LOINC_OID = "2.16.840.1.113883.6.1"

# CDA nullFlavor -> FHIR data-absent-reason.
ABSENT_REASONS = {
    "UNK": "unknown", "NI": "unknown", "ASKU": "asked-unknown", "NAV": "temp-unknown",
    "NASK": "not-asked", "MSK": "masked", "NA": "not-applicable", "OTH": "unsupported",
    "NINF": "negative-infinity", "PINF": "positive-infinity", "NP": "unknown",
}
# Observation statusCode -> FHIR Observation.status (absent: final, a shared document is final).
OBSERVATION_STATUS = {
    "completed": "final", "active": "preliminary", "cancelled": "cancelled",
    "aborted": "cancelled", "nullified": "entered-in-error",
}
MEDICATION_STATUS = {
    "active": "active", "completed": "completed", "cancelled": "cancelled", "aborted": "stopped",
    "suspended": "on-hold", "nullified": "entered-in-error",
}
# PIVL_TS period units (UCUM) -> FHIR Timing periodUnit.
PERIOD_UNITS = {"s": "s", "min": "min", "h": "h", "d": "d", "wk": "wk", "mo": "mo", "a": "a"}
# Telecom URL scheme -> ContactPoint.system; CDA use -> ContactPoint.use.
TELECOM_SCHEMES = {"tel": "phone", "mailto": "email", "fax": "fax"}
TELECOM_USES = {"HP": "home", "H": "home", "MC": "mobile", "WP": "work", "TMP": "temp"}

# Imaging text observations: code -> role. WS/T 500 data elements, LOINC and DICOM (DCM) codes.
IMAGING_TEXT_ROLES = {
    "DE04.30.009.00": "findings", "59776-5": "findings", "121071": "findings",
    "DE04.50.132.00": "impression", "19005-8": "impression", "121073": "impression",
}
IMAGING_HEADINGS = {"findings": "检查所见", "impression": "诊断意见"}

SECTION_CHIEF_COMPLAINT = "10154-3"
SECTION_DIAGNOSES = "29548-5"
SECTION_LAB = "30954-2"
SECTION_IMAGING = "18782-3"
SECTION_MEDICATIONS = "10160-0"

_OID_RE = re.compile(r"^[0-2](\.(0|[1-9]\d*))+$")
_TS_RE = re.compile(r"^(\d{8}|\d{10}|\d{12}|\d{14})(?:\.\d{1,6})?(?:([+-])(\d{2})(\d{2}))?$")
_VERSION_RE = re.compile(r"^\d{1,9}$")
_NUMBER_LIKE_RE = re.compile(r"^(<=|>=|<|>|≤|≥)?\s*[+-]?[\d.]+([eE][+-]?\d+)?$")
# Anything shaped like a resident ID number, masked in every message that quotes source text.


# ---------------------------------------------------------------------------------------------
# The record and the version rule
# ---------------------------------------------------------------------------------------------


@dataclass
class CdaRecord(Record):
    """A ``Record`` that also knows which version of its document set it is.

    ``version`` is the CDA ``versionNumber`` (1 when absent); ``set_id`` the setId's extension
    (or root); the hub must not let a lower version replace a higher one it holds.
    """

    version: int = 1
    set_id: str = ""
    document_id: str = ""


def stale_version_rejection(record: CdaRecord, held_version: int) -> Rejection:
    """The answer for a version older than the one the hub holds (archived, nothing changed)."""
    return Rejection(record.location or "ClinicalDocument/versionNumber",
                     f"version {record.version} of document set {_scrub(record.set_id)} is "
                     f"older than the version {held_version} already held; archived, nothing "
                     "changed")


class FieldError(InvalidValue):
    """An unreadable value at a location in the document (becomes a Rejection)."""

    def __init__(self, location: str, reason: str):
        super().__init__(reason)
        self.location = location


@contextmanager
def _at(location: str) -> Iterator[None]:
    """Turn an InvalidValue raised inside into a FieldError at ``location`` (innermost wins)."""
    try:
        yield
    except FieldError:
        raise
    except InvalidValue as exc:
        raise FieldError(location, _scrub(str(exc))) from None


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def map_upload(body: bytes, sender: str) -> MapResult:
    """One WS/T 500 document -> at most one CdaRecord, or a Rejection naming where and why.

    Raises UnreadableUpload (not XML, not WS/T 500, DTD/entity/external reference, encoding) and
    ForeignSender (custodian is another hospital). Never resolves anything outside the body.
    """
    root = read_document(body)
    kind = document_kind(root)
    hospital_name = check_sender(root, sender)
    result = MapResult()
    if kind is None:
        result.rejected.append(Rejection("ClinicalDocument/templateId", _unaccepted_kind(root)))
        return result
    try:
        record = _map_document(root, kind, sender, hospital_name, result.notes)
    except FieldError as exc:
        result.rejected.append(Rejection(exc.location, exc.args[0]))
        return result
    result.records.append(record)
    return result


# ---------------------------------------------------------------------------------------------
# Reading: the secure parse (mappers.secure_xml), then the root element
# ---------------------------------------------------------------------------------------------


def read_document(body: bytes) -> etree._Element:
    """Bytes -> the ClinicalDocument element, or UnreadableUpload with the reason (the secure
    reading is ``mappers.secure_xml.parse``)."""
    root = secure_xml.parse(body, "a CDA document")
    if root.tag != f"{{{HL7_NS}}}ClinicalDocument":
        raise UnreadableUpload(f"root element is {etree.QName(root).localname!r}, expected "
                               "ClinicalDocument in namespace urn:hl7-org:v3")
    return root


# ---------------------------------------------------------------------------------------------
# Kind and sender
# ---------------------------------------------------------------------------------------------


def document_kind(root: etree._Element) -> DocKind | None:
    """The kind by templateId, else by document code; None for another WS/T 500 kind.

    Raises UnreadableUpload for a document that is not WS/T 500 (naming a C-CDA template when it
    has one) and for a template and code that name different kinds.
    """
    templates = [t for t in (_attr(e, "root") for e in root.findall("h:templateId", NS)) if t]
    code_el = root.find("h:code", NS)
    code, code_system = _attr(code_el, "code"), _attr(code_el, "codeSystem")
    by_template = next((KIND_BY_TEMPLATE[t] for t in templates if t in KIND_BY_TEMPLATE), None)
    by_code = KIND_BY_CODE.get(code or "") if code_system in (None, DOCUMENT_CODE_SYSTEM) else None
    if by_template and by_code and by_template != by_code:
        raise UnreadableUpload(f"templateId {by_template.template} ({by_template.code}) and "
                               f"document code {by_code.code} name different document kinds")
    if by_template or by_code:
        return by_template or by_code
    if code_system == DOCUMENT_CODE_SYSTEM or any(t.startswith(WST500_TEMPLATE_PREFIX)
                                                  for t in templates):
        return None
    raise UnreadableUpload(_not_wst500(templates))


def _not_wst500(templates: list[str]) -> str:
    known = [t for t in templates if t in CCDA_TEMPLATES]
    # The US Realm Header is on every C-CDA document: name the specific template before it.
    known.sort(key=lambda t: t.endswith(".22.1.1"))
    if known:
        return f"not a WS/T 500 document: template {known[0]} ({CCDA_TEMPLATES[known[0]]})"
    if templates:
        return f"not a WS/T 500 document: template {_scrub(templates[0][:80])}"
    return "not a WS/T 500 document: no templateId"


def _unaccepted_kind(root: etree._Element) -> str:
    code = _attr(root.find("h:code", NS), "code") or "?"
    template = next((t for t in (_attr(e, "root") for e in root.findall("h:templateId", NS))
                     if t), "?")
    return (f"WS/T 500 document kind {_scrub(code[:40])} (template {_scrub(template[:80])}) is "
            "not accepted: the hub takes C0002 outpatient records, C0006 imaging reports and "
            "C0007 lab reports")


def check_sender(root: etree._Element, sender: str) -> str | None:
    """Check that the custodian (and any author organisation) is ``sender``; return its name.

    No custodian hospital code -> UnreadableUpload; another hospital -> ForeignSender.
    """
    custodian = root.find("h:custodian/h:assignedCustodian/h:representedCustodianOrganization",
                          NS)
    codes = _hospital_codes(custodian)
    if not codes:
        raise UnreadableUpload("the document names no custodian hospital "
                               f"(representedCustodianOrganization/id root {ROOT_HOSPITAL})")
    for org in root.findall("h:author/h:assignedAuthor/h:representedOrganization", NS):
        codes += _hospital_codes(org)
    for code in codes:
        if code != sender:
            raise ForeignSender(f"the document names hospital {_scrub(code[:40])}, "
                                f"not the sender {sender}")
    return _text(custodian.find("h:name", NS))


def _hospital_codes(org: etree._Element | None) -> list[str]:
    if org is None:
        return []
    return [v for e in org.findall("h:id", NS)
            if _attr(e, "root") == ROOT_HOSPITAL and (v := _attr(e, "extension"))]


# ---------------------------------------------------------------------------------------------
# Small readers (nullFlavor -> absent everywhere)
# ---------------------------------------------------------------------------------------------


def _attr(el: etree._Element | None, name: str) -> str | None:
    """An attribute as clean text; None when absent, blank, or the element has a nullFlavor."""
    if el is None or el.get("nullFlavor"):
        return None
    return clean(el.get(name))


def _text(el: etree._Element | None) -> str | None:
    """All text inside an element, blanks collapsed at the ends; None for nullFlavor/empty."""
    if el is None or el.get("nullFlavor"):
        return None
    return clean(" ".join(t.strip() for t in el.itertext() if t.strip()))


def _xsi_type(el: etree._Element) -> str:
    return (el.get(XSI_TYPE) or "").rsplit(":", 1)[-1].upper()


def cda_time(value: Any) -> datetime | date | None:
    """A CDA TS (``yyyyMMdd[HH[mm[ss]]][.fff][+zzzz]``) -> date or aware datetime (+08:00 default).

    Raises InvalidValue for anything else, an impossible time included.
    """
    text = clean(value)
    if text is None:
        return None
    m = _TS_RE.match(text)
    if not m:
        raise InvalidValue(f"unreadable CDA time {text[:30]!r}")
    digits, sign, hh, mm = m.groups()
    when = parse_when(digits + "00" if len(digits) == 10 else digits)
    if sign and isinstance(when, datetime):
        if int(hh) > 14 or int(mm) > 59:
            raise InvalidValue(f"impossible time zone offset in {text!r}")
        offset = timedelta(hours=int(hh), minutes=int(mm)) * (1 if sign == "+" else -1)
        when = when.replace(tzinfo=timezone(offset))
    return when


def _time_of(el: etree._Element | None) -> datetime | date | None:
    """``effectiveTime``/``time`` as a value or the low end of an interval."""
    if el is None:
        return None
    return cda_time(_attr(el, "value") or _attr(el.find("h:low", NS), "value"))


def _number(value: Any) -> Decimal | None:
    """A decimal that FHIR can carry (finite, of sane magnitude); InvalidValue otherwise."""
    number = parse_decimal(value)
    if number is not None and (not number.is_finite() or abs(number.adjusted()) > 15):
        raise InvalidValue(f"number out of range: {str(value)[:30]!r}")
    return number


def _quantity(el: etree._Element | None) -> dict[str, Any] | None:
    number = _number(_attr(el, "value"))
    if number is None:
        return None
    q: dict[str, Any] = {"value": decimal_json(number)}
    if unit := _attr(el, "unit"):
        q["unit"] = unit
    return q


def _system(code_system: str | None) -> str | None:
    if code_system is None:
        return None
    if code_system in SYSTEM_OF_OID:
        return SYSTEM_OF_OID[code_system]
    return f"urn:oid:{code_system}" if _OID_RE.match(code_system) else None


def concept(el: etree._Element | None, system: str | None = None) -> dict[str, Any] | None:
    """A CD/CE/CV as CodeableConcept (``system`` overrides the codeSystem); None when empty."""
    if el is None:
        return None
    code = _attr(el, "code")
    display = _attr(el, "displayName")
    text = display or _text(el.find("h:originalText", NS))
    return codeable_concept(code, system or _system(_attr(el, "codeSystem")), display, text)


def _absent(el: etree._Element | None) -> dict[str, Any]:
    """dataAbsentReason for a value sent as nullFlavor (or not sent)."""
    flavor = el.get("nullFlavor", "UNK") if el is not None else "UNK"
    code = ABSENT_REASONS.get(flavor.upper(), "unknown")
    return {"dataAbsentReason": {"coding": [{"system": DATA_ABSENT_REASON, "code": code}]}}


# ---------------------------------------------------------------------------------------------
# Mapping one document
# ---------------------------------------------------------------------------------------------


@dataclass
class _Doc:
    """What every section needs to know about the document it is in."""

    kind: DocKind
    hospital: str
    set_id: str
    version: int
    effective: datetime | date
    notes: list[str]
    encounter: dict[str, Any] | None = None
    practitioner: dict[str, Any] | None = None
    resources: list[dict[str, Any]] = field(default_factory=list)

    def ref(self, resource: dict[str, Any]) -> dict[str, str]:
        return {"reference": f"{resource['resourceType']}/{resource['id']}"}

    def context(self) -> dict[str, Any]:
        """subject and encounter for a clinical resource."""
        ctx: dict[str, Any] = {"subject": {"reference": PATIENT_REF}}
        if self.encounter is not None:
            ctx["encounter"] = self.ref(self.encounter)
        return ctx


def _map_document(root: etree._Element, kind: DocKind, hospital: str,
                  hospital_name: str | None, notes: list[str]) -> CdaRecord:
    set_id, version, document_id = _identity(root)
    with _at("ClinicalDocument/effectiveTime"):
        effective = cda_time(_attr(root.find("h:effectiveTime", NS), "value"))
    if effective is None:
        raise FieldError("ClinicalDocument/effectiveTime", "the document has no effectiveTime")
    doc = _Doc(kind, hospital, set_id, version, effective, notes)
    patient, visit = _patient(root)
    doc.practitioner = _practitioner(root, hospital)
    doc.encounter = _encounter(root, doc, visit)
    _body(root, doc)
    resources = [hospital_organization(hospital, hospital_name)]
    resources += [r for r in (doc.practitioner, doc.encounter) if r is not None]
    resources += doc.resources
    for resource in [patient, *resources]:
        with _at(f"ClinicalDocument ({resource['resourceType']})"):
            validate(resource)
    return CdaRecord(key=f"{hospital}|{set_id}", hospital=hospital, patient=patient,
                     resources=resources, location=f"ClinicalDocument[setId={_scrub(set_id)}]",
                     version=version, set_id=set_id, document_id=document_id)


def _identity(root: etree._Element) -> tuple[str, int, str]:
    """(setId, versionNumber, document id): a document without setId is its own set."""
    doc_id_el = root.find("h:id", NS)
    document_id = _attr(doc_id_el, "extension") or _attr(doc_id_el, "root") or ""
    set_el = root.find("h:setId", NS)
    set_id = _attr(set_el, "extension") or _attr(set_el, "root") or document_id
    if not set_id:
        raise FieldError("ClinicalDocument/setId", "the document has neither setId nor id")
    raw = _attr(root.find("h:versionNumber", NS), "value")
    if raw is not None and not _VERSION_RE.match(raw):
        raise FieldError("ClinicalDocument/versionNumber",
                         f"versionNumber {raw[:20]!r} is not a whole number")
    return set_id, int(raw) if raw else 1, document_id


# ---- patient ---------------------------------------------------------------------------------

PATIENT_ROLE = "ClinicalDocument/recordTarget/patientRole"


def _patient(root: etree._Element) -> tuple[dict[str, Any], tuple[str, str] | None]:
    """The Patient (no id) and the visit number (root, value) found among the patient's ids.

    The resident ID number identifies the patient; without one the document is rejected (in
    Jiangsu the outpatient number is per visit, so nothing else could key the patient).
    """
    role = root.find("h:recordTarget/h:patientRole", NS)
    if role is None:
        raise FieldError(PATIENT_ROLE, "the document has no recordTarget/patientRole")
    person = role.find("h:patient", NS)
    ids: dict[str, str] = {}
    for el in role.findall("h:id", NS) + (person.findall("h:id", NS) if person is not None
                                          else []):
        root_, value = _attr(el, "root"), _attr(el, "extension")
        if root_ and value and root_ not in ids:
            ids[root_] = value
    where = f"{PATIENT_ROLE}/patient/id[@root='{ROOT_RESIDENT_ID}']"
    if ROOT_RESIDENT_ID not in ids:
        raise FieldError(where, "the patient has no resident ID number (the outpatient number "
                                "identifies a visit, not a patient, in Jiangsu)")
    with _at(where):
        resident_id = normalize_resident_id(ids[ROOT_RESIDENT_ID])
    patient: dict[str, Any] = {"resourceType": "Patient", "identifier": [
        {"use": "official", "system": RESIDENT_ID_SYSTEM, "value": resident_id}]}
    if ROOT_HEALTH_CARD in ids:
        patient["identifier"].append({"system": HEALTH_CARD_SYSTEM,
                                      "value": ids[ROOT_HEALTH_CARD]})
    if person is not None:
        _person_details(person, patient)
    _contact_details(role, patient)
    visit = next(((r, ids[r]) for r in VISIT_SYSTEMS if r in ids), None)
    return patient, visit


def _person_details(person: etree._Element, patient: dict[str, Any]) -> None:
    if name := _name(person.find("h:name", NS)):
        patient["name"] = [name]
    sex = _attr(person.find("h:administrativeGenderCode", NS), "code")
    if sex is not None:
        with _at(f"{PATIENT_ROLE}/patient/administrativeGenderCode"):
            patient["gender"] = gbt_gender(sex)
    with _at(f"{PATIENT_ROLE}/patient/birthTime"):
        born = cda_time(_attr(person.find("h:birthTime", NS), "value"))
    if born is not None:
        patient["birthDate"] = fhir_date(born)


def _name(el: etree._Element | None) -> dict[str, Any] | None:
    """A Chinese name: ``text`` always; family/given only when the source splits them."""
    if el is None or el.get("nullFlavor"):
        return None
    family = _text(el.find("h:family", NS))
    given = [g for g in (_text(e) for e in el.findall("h:given", NS)) if g]
    if family or given:
        name: dict[str, Any] = {"text": (family or "") + "".join(given)}
        if family:
            name["family"] = family
        if given:
            name["given"] = given
        return name
    text = _text(el)
    return {"text": text} if text else None


ADDRESS_ORDER = ("state", "city", "county", "township", "streetName", "streetAddressLine",
                 "houseNumber")


def _contact_details(role: etree._Element, patient: dict[str, Any]) -> None:
    telecoms = [t for t in (_telecom(e) for e in role.findall("h:telecom", NS)) if t]
    if telecoms:
        patient["telecom"] = telecoms
    addresses = [a for a in (_address(e) for e in role.findall("h:addr", NS)) if a]
    if addresses:
        patient["address"] = addresses


def _telecom(el: etree._Element) -> dict[str, Any] | None:
    value = _attr(el, "value")
    if value is None:
        return None
    scheme, _, rest = value.partition(":")
    system = TELECOM_SCHEMES.get(scheme.lower()) if rest else ("phone" if value.replace(
        "-", "").isdigit() else None)
    number = clean(rest if rest else value)
    if system is None or number is None:
        return None
    contact: dict[str, Any] = {"system": system, "value": number}
    if use := TELECOM_USES.get((_attr(el, "use") or "").split(" ")[0]):
        contact["use"] = use
    return contact


def _address(el: etree._Element) -> dict[str, Any] | None:
    """<addr> as Address: its parts (or its bare text) joined and read by ``mappers.address``,
    so state/city/district are GB/T 2260 names whatever <county> holds, and the rest is line."""
    if el.get("nullFlavor"):
        return None
    parts = [_text(el.find(f"h:{local}", NS)) for local in ADDRESS_ORDER]
    text = "".join(p for p in parts if p) or clean(el.text)
    if not text:
        return None
    return fhir_address(text, postalCode=_text(el.find("h:postalCode", NS)))


# ---- practitioner, encounter -----------------------------------------------------------------


def _practitioner(root: etree._Element, hospital: str) -> dict[str, Any] | None:
    """The author, when the document gives a staff number (the id keys it within the hospital)."""
    author = root.find("h:author/h:assignedAuthor", NS)
    if author is None:
        return None
    staff_no = next((v for e in author.findall("h:id", NS) if (v := _attr(e, "extension"))),
                    None)
    if staff_no is None:
        return None
    practitioner: dict[str, Any] = {
        "resourceType": "Practitioner", "id": make_id("Practitioner", hospital, staff_no),
        "identifier": [{"system": PRACTITIONER_SYSTEM, "value": staff_no,
                        "assigner": hospital_reference(hospital)}],
    }
    if name := _name(author.find("h:assignedPerson/h:name", NS)):
        practitioner["name"] = [name]
    return practitioner


ENCOUNTER = "ClinicalDocument/componentOf/encompassingEncounter"


def _encounter(root: etree._Element, doc: _Doc,
               visit: tuple[str, str] | None) -> dict[str, Any] | None:
    """The visit: keyed by hospital + visit number (shared by every document of that visit).

    Without a visit number but with an encompassingEncounter, the encounter is the document's
    own (keyed by setId). With neither, there is no Encounter.
    """
    ee = root.find("h:componentOf/h:encompassingEncounter", NS)
    if visit is None and ee is not None:
        visit = next(((r, v) for e in ee.findall("h:id", NS)
                      if (r := _attr(e, "root")) in VISIT_SYSTEMS and (v := _attr(e, "extension"))),
                     None)
    if visit is None and ee is None:
        return None
    act, display = _encounter_class(ee, visit)
    with _at(f"{ENCOUNTER}/effectiveTime"):
        start = _time_of(ee.find("h:effectiveTime", NS)) if ee is not None else None
        end = cda_time(_attr(ee.find("h:effectiveTime/h:high", NS), "value")) \
            if ee is not None else None
    key = ("visit", visit[1]) if visit else ("set", doc.set_id)
    encounter: dict[str, Any] = {
        "resourceType": "Encounter", "id": make_id("Encounter", doc.hospital, *key),
        "status": "finished" if end is not None or act != "IMP" else "in-progress",
        "class": {"system": V3_ACT_CODE, "code": act, "display": display},
        "period": {"start": fhir_datetime(start or doc.effective)},
        "serviceProvider": hospital_reference(doc.hospital),
    }
    if end is not None:
        encounter["period"]["end"] = fhir_datetime(end)
    if visit:
        encounter["identifier"] = [{"system": VISIT_SYSTEMS[visit[0]], "value": visit[1],
                                    "assigner": hospital_reference(doc.hospital)}]
    if ee is not None and (dept := _department(ee)):
        encounter["serviceType"] = dept
    if doc.practitioner is not None:
        encounter["participant"] = [{
            "type": [{"coding": [{"system": PARTICIPATION_TYPE, "code": "ATND",
                                  "display": "attender"}]}],
            "individual": doc.ref(doc.practitioner)}]
    return encounter


def _encounter_class(ee: etree._Element | None, visit: tuple[str, str] | None) -> tuple[str, str]:
    """(ActCode, display) from the encounter type; absent: from the kind of visit number."""
    type_code = _attr(ee.find("h:code", NS), "code") if ee is not None else None
    if type_code is None:
        type_code = CLASS_OF_VISIT_ROOT.get(visit[0] if visit else "", "1")
    if type_code not in ENCOUNTER_CLASSES:
        raise FieldError(f"{ENCOUNTER}/code", f"unknown encounter type {type_code[:10]!r} "
                                              f"({ENCOUNTER_TYPE_SYSTEM}: 1, 2, 3)")
    return ENCOUNTER_CLASSES[type_code]


def _department(ee: etree._Element) -> dict[str, Any] | None:
    org = ee.find("h:location/h:healthCareFacility/h:serviceProviderOrganization", NS)
    if org is None:
        return None
    code = next((v for e in org.findall("h:id", NS) if (v := _attr(e, "extension"))), None)
    return department_concept(code, _text(org.find("h:name", NS)))


# ---- body and sections -----------------------------------------------------------------------


def _body(root: etree._Element, doc: _Doc) -> None:
    """Dispatch each top-level section by its LOINC code; unknown ones are noted, not mapped."""
    body = root.find("h:component/h:structuredBody", NS)
    if body is None:
        if root.find("h:component/h:nonXMLBody", NS) is not None:
            doc.notes.append("nonXMLBody not mapped, kept in the archived original")
        return
    for n, section in enumerate(body.findall("h:component/h:section", NS), start=1):
        code = _attr(section.find("h:code", NS), "code")
        where = f"section[{n}]({code or 'no code'})"
        mapper = SECTION_MAPPERS.get(code or "")
        if mapper is None:
            doc.notes.append(f"section {_scrub(code or '(no code)')[:40]} not mapped, kept in "
                             "the archived original")
            continue
        with _at(where):
            mapper(section, doc, where)


def _entries(section: etree._Element, tag: str) -> list[etree._Element]:
    return section.findall(f"h:entry/h:{tag}", NS)


def _narrative_only(section: etree._Element, doc: _Doc, code: str, has_entries: bool) -> bool:
    """Note a section that carries only narrative text; True when there is nothing coded."""
    if has_entries:
        return False
    if _text(section.find("h:text", NS)):
        doc.notes.append(f"section {code} has only narrative text: not mapped, kept in the "
                         "archived original")
    return True


def _chief_complaint(section: etree._Element, doc: _Doc, where: str) -> None:
    """主诉 -> Encounter.reasonCode text; the narrative stands in when there is no entry."""
    texts = [t for t in (_text(o.find("h:value", NS)) for o in _entries(section, "observation"))
             if t]
    if not texts and (narrative := _text(section.find("h:text", NS))):
        texts = [narrative]
    if not texts:
        return
    if doc.encounter is None:
        doc.notes.append(f"section {SECTION_CHIEF_COMPLAINT}: no visit to attach the chief "
                         "complaint to; kept in the archived original")
        return
    doc.encounter["reasonCode"] = [{"text": t} for t in texts]


def _diagnoses(section: etree._Element, doc: _Doc, where: str) -> None:
    """诊断 -> Conditions; the first in document order is the principal diagnosis (rank 1)."""
    observations = _entries(section, "observation")
    if _narrative_only(section, doc, SECTION_DIAGNOSES, bool(observations)):
        return
    diagnoses = []
    for n, obs in enumerate(observations, start=1):
        with _at(f"{where}/entry[{n}]/observation/value"):
            code = concept(obs.find("h:value", NS))
            onset = _time_of(obs.find("h:effectiveTime", NS))
        if code is None:
            continue  # a diagnosis sent as nullFlavor is absent, not an empty Condition
        key = code["coding"][0]["code"] if "coding" in code else code["text"]
        condition: dict[str, Any] = {
            "resourceType": "Condition",
            "id": make_id("Condition", doc.hospital, doc.set_id, str(n), key),
            "category": [{"coding": [{"system": CONDITION_CATEGORY,
                                      "code": "encounter-diagnosis",
                                      "display": "Encounter Diagnosis"}]}],
            "code": code, **doc.context(), "recordedDate": fhir_datetime(doc.effective),
        }
        if onset is not None:
            condition["onsetDateTime"] = fhir_datetime(onset)
        if doc.practitioner is not None:
            condition["recorder"] = doc.ref(doc.practitioner)
        doc.resources.append(condition)
        diagnoses.append(condition)
    if doc.encounter is not None and diagnoses:
        doc.encounter["diagnosis"] = [
            {"condition": doc.ref(c), "rank": rank,
             "use": {"coding": [{"system": DIAGNOSIS_ROLE, "code": "DD" if rank == 1 else "CM"}]}}
            for rank, c in enumerate(diagnoses, start=1)]


# ---- lab -------------------------------------------------------------------------------------


def _lab(section: etree._Element, doc: _Doc, where: str) -> None:
    """检验 -> one DiagnosticReport (LAB) per organizer, with its Observations."""
    organizers = _entries(section, "organizer")
    loose = _entries(section, "observation")
    if _narrative_only(section, doc, SECTION_LAB, bool(organizers or loose)):
        return
    for n, organizer in enumerate(organizers, start=1):
        components = organizer.findall("h:component/h:observation", NS)
        _lab_report(organizer, components, doc, f"{where}/entry[{n}]/organizer", str(n))
    if loose:  # observations straight in the section: the section is their report
        _lab_report(section, loose, doc, f"{where}/entry", "section")


def _report_number(el: etree._Element, root_oid: str) -> str | None:
    return next((v for e in el.iter(f"{{{HL7_NS}}}id")
                 if _attr(e, "root") == root_oid and (v := _attr(e, "extension"))), None)


def _lab_report(container: etree._Element, observations: list[etree._Element], doc: _Doc,
                where: str, position: str) -> None:
    report_no = next((v for e in container.findall("h:id", NS)
                      if _attr(e, "root") == ROOT_LAB_REPORT and (v := _attr(e, "extension"))),
                     None)
    key = ("lab", report_no) if report_no else ("lab-set", doc.set_id, position)
    with _at(f"{where}/effectiveTime"):
        when = _time_of(container.find("h:effectiveTime", NS)) or doc.effective
    results = []
    for n, obs in enumerate(observations, start=1):
        with _at(f"{where}/component[{n}]/observation"):
            results.append(_lab_observation(obs, doc, when, (*key, str(n))))
    code = None
    if container.tag.endswith("organizer"):
        code_el = container.find("h:code", NS)
        code = concept(code_el, LOINC_SYSTEM if _attr(code_el, "codeSystem") == LOINC_OID
                       else LOCAL_LAB_SYSTEM)
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport", "id": make_id("DiagnosticReport", doc.hospital, *key),
        "status": "final",
        "category": [{"coding": [{"system": V2_0074, "code": "LAB", "display": "Laboratory"}]}],
        "code": code or {"coding": [{"system": LOINC_SYSTEM, "code": "11502-2",
                                     "display": "Laboratory report"}], "text": "检验报告"},
        **doc.context(), "effectiveDateTime": fhir_datetime(when),
        "performer": [hospital_reference(doc.hospital)],
        "result": [doc.ref(o) for o in results],
    }
    if report_no:
        report["identifier"] = [{"system": LAB_REPORT_SYSTEM, "value": report_no,
                                 "assigner": hospital_reference(doc.hospital)}]
    if isinstance(doc.effective, datetime):
        report["issued"] = fhir_datetime(doc.effective)
    doc.resources += [*results, report]


def _lab_observation(obs: etree._Element, doc: _Doc, when: datetime | date,
                     key: tuple[str, ...]) -> dict[str, Any]:
    code_el = obs.find("h:code", NS)
    loinc = _attr(code_el, "codeSystem") == LOINC_OID
    code = concept(code_el, LOINC_SYSTEM if loinc else LOCAL_LAB_SYSTEM)
    if code is None:
        raise InvalidValue("a lab result without a code or name")
    status = OBSERVATION_STATUS.get(_attr(obs.find("h:statusCode", NS), "code") or "", "final")
    result: dict[str, Any] = {
        "resourceType": "Observation", "id": make_id("Observation", doc.hospital, *key),
        "status": status,
        "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "laboratory",
                                  "display": "Laboratory"}]}],
        "code": code, **doc.context(),
        "effectiveDateTime": fhir_datetime(_time_of(obs.find("h:effectiveTime", NS)) or when),
        "performer": [hospital_reference(doc.hospital)],
    }
    value_el = obs.find("h:value", NS)
    value = observation_value(value_el)
    result.update(value or _absent(value_el))
    ranges = [r for el in obs.findall("h:referenceRange/h:observationRange", NS)
              for r in (_reference_range(el, _unit_of(value_el)) or [])]
    if ranges:
        result["referenceRange"] = ranges
    flags = [c for el in obs.findall("h:interpretationCode", NS)
             for c in (interpretation(_attr(el, "code")) or [])]
    if flags:
        result["interpretation"] = flags
    return result


def _unit_of(value: etree._Element | None) -> str | None:
    """The unit of a PQ, or of an IVL_PQ's ends (for a text reference range beside it)."""
    if value is None:
        return None
    return _attr(value, "unit") or next(
        (u for end in ("h:low", "h:high") if (u := _attr(value.find(end, NS), "unit"))), None)


def _value_pq(el: etree._Element) -> dict[str, Any]:
    # lab_value also reads "<0.5" and "阴性" when a hospital puts them in a PQ's value; a plain
    # number is range-checked first so that 1e999 is refused rather than sent as infinity.
    raw = _attr(el, "value")
    if raw is not None and (m := _NUMBER_LIKE_RE.match(raw.strip())):
        _number(raw.strip()[len(m.group(1) or ""):])
    return lab_value(raw, _attr(el, "unit"))


def _value_ivl_pq(el: etree._Element) -> dict[str, Any]:
    """An interval as a value: both ends -> valueRange; one end -> a quantity with comparator."""
    low_el, high_el = el.find("h:low", NS), el.find("h:high", NS)
    low, high = _quantity(low_el), _quantity(high_el)
    if low and high:
        return {"valueRange": {"low": low, "high": high}}
    if high:
        return {"valueQuantity": {**high, "comparator": "<" if high_el.get("inclusive") == "false"
                                  else "<="}}
    if low:
        return {"valueQuantity": {**low, "comparator": ">" if low_el.get("inclusive") == "false"
                                  else ">="}}
    return {}


def _value_text(el: etree._Element) -> dict[str, Any]:
    return lab_value(_text(el))


def _value_coded(el: etree._Element) -> dict[str, Any]:
    cc = concept(el)
    return {"valueCodeableConcept": cc} if cc else {}


def _value_bool(el: etree._Element) -> dict[str, Any]:
    raw = _attr(el, "value")
    if raw is None:
        return {}
    if raw not in ("true", "false"):
        raise InvalidValue(f"BL value {raw[:10]!r} is neither true nor false")
    return {"valueBoolean": raw == "true"}


def _value_number(el: etree._Element) -> dict[str, Any]:
    number = _number(_attr(el, "value"))
    return {"valueQuantity": {"value": decimal_json(number)}} if number is not None else {}


# xsi:type -> reader. Data, not an if chain.
VALUE_READERS = {
    "PQ": _value_pq, "IVL_PQ": _value_ivl_pq, "ST": _value_text, "ED": _value_text,
    "CD": _value_coded, "CE": _value_coded, "CV": _value_coded, "CO": _value_coded,
    "BL": _value_bool, "INT": _value_number, "REAL": _value_number,
}


def observation_value(el: etree._Element | None) -> dict[str, Any]:
    """An observation ``value`` -> FHIR value[x]; {} when absent or nullFlavor.

    An xsi:type the format does not use raises InvalidValue.
    """
    if el is None or el.get("nullFlavor"):
        return {}
    kind = _xsi_type(el) or "ST"
    reader = VALUE_READERS.get(kind)
    if reader is None:
        raise InvalidValue(f"value type {kind[:20]!r} is not one WS/T 500 lab results use")
    return reader(el)


def _reference_range(el: etree._Element, unit: str | None) -> list[dict] | None:
    """observationRange: an IVL_PQ (low/high) with its text, or the text alone."""
    text = _text(el.find("h:text", NS))
    value = el.find("h:value", NS)
    if value is not None and not value.get("nullFlavor"):
        low, high = _quantity(value.find("h:low", NS)), _quantity(value.find("h:high", NS))
        if low or high:
            rng: dict[str, Any] = {k: q for k, q in (("low", low), ("high", high)) if q}
            if text:
                rng["text"] = text
            return [rng]
        text = text or _text(value)
    return reference_range(text, unit)


# ---- imaging ---------------------------------------------------------------------------------


def _imaging(section: etree._Element, doc: _Doc, where: str) -> None:
    """检查 -> DiagnosticReport (RAD) with the findings and impression, + ImagingStudy by UID.

    A section with narrative only still makes the report: the narrative is its text.
    """
    report_no = _report_number(section, ROOT_IMAGING_REPORT)
    uid = _report_number(section, ROOT_STUDY_UID)
    parts: list[tuple[str, str]] = []  # (role or heading, text)
    modalities: dict[str, dict] = {}
    exam = next((c for o in _entries(section, "organizer")
                 if (c := concept(o.find("h:code", NS)))), None)
    when = None
    for obs in section.iter(f"{{{HL7_NS}}}observation"):
        _imaging_observation(obs, parts, modalities)
        with _at(f"{where}/observation/effectiveTime"):
            when = when or _time_of(obs.find("h:effectiveTime", NS))
    if not parts and (narrative := _text(section.find("h:text", NS))):
        parts = [("text", narrative)]
        doc.notes.append(f"section {SECTION_IMAGING} has only narrative text: mapped as the "
                         "report's text")
    if not parts and report_no is None and uid is None:
        return
    when = when or doc.effective
    key = ("rad", report_no) if report_no else ("rad-set", doc.set_id)
    report = _imaging_report(doc, key, report_no, exam, parts, when)
    if uid is not None:
        if not _OID_RE.match(uid) or len(uid) > 64:
            raise FieldError(f"{where}/id[@root='{ROOT_STUDY_UID}']",
                             f"Study Instance UID {uid[:70]!r} is not a DICOM UID")
        study = _imaging_study(doc, uid, exam, list(modalities.values()), when)
        report["imagingStudy"] = [doc.ref(study)]
        doc.resources.append(study)
    doc.resources.append(report)


def _imaging_observation(obs: etree._Element, parts: list[tuple[str, str]],
                         modalities: dict[str, dict]) -> None:
    code_el = obs.find("h:code", NS)
    value = obs.find("h:value", NS)
    if value is not None and _attr(value, "codeSystem") == ROOT_STUDY_UID:
        modality = _attr(value, "code")
        if modality in DICOM_MODALITIES:
            modalities[modality] = {"system": DICOM_MODALITY_SYSTEM, "code": modality,
                                    "display": DICOM_MODALITIES[modality]}
            return
    text = _text(value) if value is not None and _xsi_type(value) in ("ST", "ED", "") else None
    text = text or (_text(obs.find("h:text", NS)) if obs.find("h:text", NS) is not None else None)
    if text:
        role = IMAGING_TEXT_ROLES.get(_attr(code_el, "code") or "")
        parts.append((role or _attr(code_el, "displayName") or "findings", text))


def _imaging_report(doc: _Doc, key: tuple[str, ...], report_no: str | None,
                    exam: dict | None, parts: list[tuple[str, str]],
                    when: datetime | date) -> dict[str, Any]:
    full_text = "\n".join(f"{IMAGING_HEADINGS.get(h, h)}：{t}" if h != "text" else t
                          for h, t in parts)
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport", "id": make_id("DiagnosticReport", doc.hospital, *key),
        "status": "final",
        "category": [{"coding": [{"system": V2_0074, "code": "RAD", "display": "Radiology"}]}],
        "code": {"coding": [{"system": LOINC_SYSTEM, "code": "18748-4",
                             "display": "Diagnostic imaging study"}],
                 "text": (exam or {}).get("text") or "检查报告"},
        **doc.context(), "effectiveDateTime": fhir_datetime(when),
        "performer": [hospital_reference(doc.hospital)],
    }
    if report_no:
        report["identifier"] = [{"system": IMAGING_REPORT_SYSTEM, "value": report_no,
                                 "assigner": hospital_reference(doc.hospital)}]
    if isinstance(doc.effective, datetime):
        report["issued"] = fhir_datetime(doc.effective)
    impression = "\n".join(t for h, t in parts if h == "impression")
    if impression:
        report["conclusion"] = impression
    if full_text:
        report["presentedForm"] = [{"contentType": "text/plain;charset=utf-8",
                                    "language": "zh-CN", "title": "检查报告",
                                    "data": base64.b64encode(full_text.encode()).decode()}]
    return report


def _imaging_study(doc: _Doc, uid: str, exam: dict | None, modalities: list[dict],
                   when: datetime | date) -> dict[str, Any]:
    study: dict[str, Any] = {
        "resourceType": "ImagingStudy", "id": make_id("ImagingStudy", doc.hospital, uid),
        "identifier": [{"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{uid}"}],
        "status": "available", **doc.context(), "started": fhir_datetime(when),
    }
    if modalities:
        study["modality"] = modalities
    if exam and exam.get("text"):
        study["description"] = exam["text"]
    return study


# ---- medications -----------------------------------------------------------------------------


def _medications(section: etree._Element, doc: _Doc, where: str) -> None:
    """用药 -> MedicationRequests (drug by national code, dose, route, PIVL_TS frequency)."""
    entries = _entries(section, "substanceAdministration")
    if _narrative_only(section, doc, SECTION_MEDICATIONS, bool(entries)):
        return
    for n, sa in enumerate(entries, start=1):
        with _at(f"{where}/entry[{n}]/substanceAdministration"):
            request = _medication_request(sa, doc, str(n))
        if request is None:
            doc.notes.append(f"section {SECTION_MEDICATIONS} entry {n} names no drug: not "
                             "mapped, kept in the archived original")
        else:
            doc.resources.append(request)


def _medication_request(sa: etree._Element, doc: _Doc, position: str) -> dict[str, Any] | None:
    product = sa.find("h:consumable/h:manufacturedProduct", NS)
    drug_el = None
    if product is not None:
        drug_el = product.find("h:manufacturedLabeledDrug/h:code", NS)
        if drug_el is None:
            drug_el = product.find("h:manufacturedMaterial/h:code", NS)
    drug = concept(drug_el, NATIONAL_DRUG_SYSTEM)
    if drug is None:
        return None
    rx_no = next((v for e in sa.findall("h:id", NS) if (v := _attr(e, "extension"))), None)
    request: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": make_id("MedicationRequest", doc.hospital, doc.set_id, position),
        "status": MEDICATION_STATUS.get(_attr(sa.find("h:statusCode", NS), "code") or "",
                                        "unknown"),
        "intent": "order", "medicationCodeableConcept": drug, **doc.context(),
        "authoredOn": fhir_datetime(doc.effective),
    }
    if rx_no:
        request["identifier"] = [{"value": rx_no, "assigner": hospital_reference(doc.hospital)}]
    if doc.encounter is not None and doc.encounter["class"]["code"] in ("AMB", "EMER"):
        request["category"] = [{"coding": [{"system": MEDREQ_CATEGORY, "code": "outpatient",
                                            "display": "Outpatient"}]}]
    if doc.practitioner is not None:
        request["requester"] = doc.ref(doc.practitioner)
    if dosage := _dosage(sa):
        request["dosageInstruction"] = [dosage]
    return request


def _dosage(sa: etree._Element) -> dict[str, Any] | None:
    dosage: dict[str, Any] = {}
    if dose := _quantity(sa.find("h:doseQuantity", NS)):
        dosage["doseAndRate"] = [{"doseQuantity": dose}]
    if route := concept(sa.find("h:routeCode", NS)):
        dosage["route"] = route
    repeat: dict[str, Any] = {}
    for et in sa.findall("h:effectiveTime", NS):
        if _xsi_type(et) == "PIVL_TS":
            period = et.find("h:period", NS)
            value, unit = _number(_attr(period, "value")), _attr(period, "unit")
            if value is not None and value > 0:
                if unit not in PERIOD_UNITS:
                    raise InvalidValue(f"PIVL_TS period unit {str(unit)[:10]!r} is not s, min, "
                                       "h, d, wk, mo or a")
                repeat.update(frequency=1, period=decimal_json(value),
                              periodUnit=PERIOD_UNITS[unit])
        elif (start := _time_of(et)) is not None:
            bounds = {"start": fhir_datetime(start)}
            if end := cda_time(_attr(et.find("h:high", NS), "value")):
                bounds["end"] = fhir_datetime(end)
            repeat["boundsPeriod"] = bounds
    if repeat:
        dosage["timing"] = {"repeat": repeat}
    if text := _text(sa.find("h:text", NS)):
        dosage["text"] = text
    return dosage or None


SECTION_MAPPERS = {
    SECTION_CHIEF_COMPLAINT: _chief_complaint,
    SECTION_DIAGNOSES: _diagnoses,
    SECTION_LAB: _lab,
    SECTION_IMAGING: _imaging,
    SECTION_MEDICATIONS: _medications,
}
