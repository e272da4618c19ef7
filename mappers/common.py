"""Shared pieces of every province mapper: the result contract, identifiers, dates, numbers, text.

A mapper is a pure function ``map_upload(body: bytes, sender: str) -> MapResult``: bytes in, FHIR
R4 resources (plain dicts, each checked by ``validate`` against the official R4 4.0.1 JSON
schema) and located rejections out. It never touches a database or the network.

Contract with the hub (``hub/ingest.py`` relies on it):

- A ``Record`` is the unit that is stored or replaced as a whole: one visit, one document, one
  report. ``Record.key`` is stable across re-sends of the same unit by the same hospital; a later
  record with the same key replaces the earlier one (resources it no longer contains are retired).
- ``Record.patient`` is a Patient resource without ``id``; the hub's patient index decides which
  stored Patient it is, from its identifiers (systems below). Every other resource points at the
  patient with ``{"reference": PATIENT_REF}``; the hub rewrites that to ``Patient/<index id>``.
- Every other resource carries a deterministic ``id`` (``make_id``) derived from the hospital and
  the source's own numbers, so a re-send produces the same ids and replaces in place.
- A ``Rejection`` names where (field path, row, segment) and why. A rejected unit produces no
  record; the rest of the upload still maps.
- ``Record.row_digests``: when a record is made of source rows (Anhui's spreadsheets), one digest
  per row (``row_digest``), an exact repeat of a row listed again. The hub then counts the
  upload's rows, not its records: a row whose digest the stored record already holds (or an
  earlier row of the record did) is ``unchanged``, any other ``stored``. Empty: the record counts
  as one.

Exceptions (``mappers.errors``): ``InvalidValue`` is raised by the parsing helpers below with a
human-readable reason; mappers catch it and turn it into a ``Rejection`` at the right location.
The region's facts (provinces, CST, resident IDs, ``scrub``) live in ``mappers.region``.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from mappers.errors import InvalidValue
from mappers.region import CST, to_halfwidth

# ---------------------------------------------------------------------------------------------
# The contract
# ---------------------------------------------------------------------------------------------

PATIENT_REF = "Patient/__patient__"


@dataclass(frozen=True)
class Rejection:
    location: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"location": self.location, "reason": self.reason}


@dataclass
class Record:
    key: str
    hospital: str
    patient: dict[str, Any]
    resources: list[dict[str, Any]]
    # Where in the upload this record came from (for messages about it), e.g. "jzjl[2]".
    location: str = ""
    # One digest per source row the record is made of (see the module docstring); [] for none.
    row_digests: list[str] = field(default_factory=list)


@dataclass
class MapResult:
    records: list[Record] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    # Things the sender should know that are not rejections (e.g. unknown keys kept in the archive).
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Identifier systems (world/README.md "Identifiers", plus the hub's own for other documents)
# ---------------------------------------------------------------------------------------------

RESIDENT_ID_SYSTEM = "urn:oid:2.16.156.10011.1.3"
OUTPATIENT_NO_SYSTEM = "urn:oid:2.16.156.10011.1.11"
HOSPITAL_SYSTEM = "urn:oid:2.16.156.10011.1.5"
LAB_REPORT_SYSTEM = "urn:oid:2.16.156.10011.1.33"
IMAGING_REPORT_SYSTEM = "urn:oid:2.16.156.10011.1.32"
# The world names no OID for these; the hub's own URNs, stable and documented in the README.
PASSPORT_SYSTEM = "urn:yrdhub:id:passport"
HK_MACAO_PASS_SYSTEM = "urn:yrdhub:id:hk-macao-pass"
PERMANENT_RESIDENCE_SYSTEM = "urn:yrdhub:id:foreigner-permanent-residence"
INSURANCE_CARD_SYSTEM = "urn:yrdhub:id:insurance-card"
# A hospital's own patient number (HL7 "MR"); assigner names the hospital.
HOSPITAL_PATIENT_NO_SYSTEM = "urn:yrdhub:id:hospital-patient-number"
DEPARTMENT_SYSTEM = "urn:yrdhub:department"
PRACTITIONER_SYSTEM = "urn:yrdhub:practitioner"
PRESCRIPTION_SYSTEM = "urn:yrdhub:prescription"
NATIONAL_DRUG_SYSTEM = "urn:yrdhub:national-drug-code"
ICD10_SYSTEM = "http://hl7.org/fhir/sid/icd-10"
LOINC_SYSTEM = "http://loinc.org"
LOCAL_LAB_SYSTEM = "urn:yrdhub:local-lab-code"
DICOM_MODALITY_SYSTEM = "http://dicom.nema.org/resources/ontology/DCM"
DICOM_UID_SYSTEM = "urn:dicom:uid"

# Document type codes (zjlx and the like) -> identifier system. Data, not an if chain.
DOCUMENT_SYSTEMS: dict[str, str] = {
    "01": RESIDENT_ID_SYSTEM,
    "03": PASSPORT_SYSTEM,
    "06": HK_MACAO_PASS_SYSTEM,
    "08": PERMANENT_RESIDENCE_SYSTEM,
}

# Identifier systems in the order the patient index trusts them: a person document first.
PERSON_DOCUMENT_SYSTEMS = (RESIDENT_ID_SYSTEM, PASSPORT_SYSTEM, HK_MACAO_PASS_SYSTEM,
                           PERMANENT_RESIDENCE_SYSTEM)

_NAMESPACE = uuid.UUID("6f1c1a52-8d64-4c1e-9a9e-7c2b7e1d0a11")


_NAMESPACE_BYTES = _NAMESPACE.bytes


def make_id(*parts: str) -> str:
    """A deterministic FHIR id (36 chars, [a-f0-9-]) from the source's own keys.

    Exactly ``str(uuid.uuid5(_NAMESPACE, "|".join(parts)))``, computed without building UUID
    objects (ids are made for every resource of every upload).
    """
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + "|".join(parts).encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    x = digest.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def row_digest(values: dict[str, Any]) -> str:
    """A short digest of one source row's normalised values (16 hex digits): rows that read the
    same (full-width or half-width, ``2024/3/5`` or ``2024-03-05``) have the same digest."""
    import orjson

    body = orjson.dumps(values, option=orjson.OPT_SORT_KEYS, default=str)
    return hashlib.sha256(body).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------


def clean(value: Any) -> str | None:
    """A source value as stripped text; ``None``, ``""`` and blanks are absent (None).

    Numbers sent where a string was expected are turned into their text. Full-width characters
    are folded to ASCII only by the number/identifier helpers, never in names or free text.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float, Decimal)):
        value = str(value)
    if not isinstance(value, str):
        raise InvalidValue(f"expected text, got {type(value).__name__}")
    value = value.strip().strip("\u3000").strip()
    return value or None


# ---------------------------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------------------------

_NUMBER_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def parse_decimal(value: Any) -> Decimal | None:
    """A number sent as a JSON number or a string, full-width digits and stray spaces allowed.

    Absent (None/"") -> None. Anything else that is not a plain number raises InvalidValue.
    Floats are read through their repr so ``6.8`` stays ``6.8``.
    """
    text = clean(value)
    if text is None:
        return None
    text = to_halfwidth(text).replace(" ", "")
    if not _NUMBER_RE.match(text):
        raise InvalidValue(f"not a number: {text!r}")
    try:
        return Decimal(text)
    except InvalidOperation as exc:  # pragma: no cover - the regex already guards this
        raise InvalidValue(f"not a number: {text!r}") from exc


def decimal_json(value: Decimal) -> int | float:
    """A Decimal as a JSON number for FHIR (which has no decimal string type)."""
    if value == value.to_integral_value() and "." not in str(value) and "E" not in str(value):
        return int(value)
    return float(value)


# ---------------------------------------------------------------------------------------------
# Dates and times (China Standard Time unless stated)
# ---------------------------------------------------------------------------------------------

_DT_PATTERNS = [
    # (regex, has_time) -- data, tried in order
    (re.compile(r"^(\d{4})-(\d{1,2})-(\d{1,2})[ T](\d{1,2}):(\d{2}):(\d{2})$"), "s"),
    (re.compile(r"^(\d{4})-(\d{1,2})-(\d{1,2})[ T](\d{1,2}):(\d{2})$"), "m"),
    (re.compile(r"^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})$"), "s"),
    (re.compile(r"^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})$"), "m"),
    (re.compile(r"^(\d{4})(\d{2})(\d{2})$"), "d"),
    (re.compile(r"^(\d{4})-(\d{1,2})-(\d{1,2})$"), "d"),
    (re.compile(r"^(\d{4})/(\d{1,2})/(\d{1,2})$"), "d"),
    (re.compile(r"^(\d{4})/(\d{1,2})/(\d{1,2})[ T](\d{1,2}):(\d{2})(?::(\d{2}))?$"), "s"),
]


def parse_when(value: Any) -> datetime | date | None:
    """A local time in any of the formats the provinces use; a ``date`` when there is no time.

    Returns an aware datetime (+08:00) or a date; None for absent. Raises InvalidValue for text
    that is not a real time (``2024-02-30`` included).
    """
    text = clean(value)
    if text is None:
        return None
    text = to_halfwidth(text)
    for pattern, kind in _DT_PATTERNS:
        m = pattern.match(text)
        if not m:
            continue
        parts = [int(p) if p else 0 for p in m.groups()]
        try:
            if kind == "d":
                return date(parts[0], parts[1], parts[2])
            return datetime(*parts[:6], tzinfo=CST) if len(parts) >= 5 else None
        except ValueError as exc:
            raise InvalidValue(f"not a real date/time: {text!r}") from exc
    raise InvalidValue(f"unreadable date/time: {text!r}")


def fhir_datetime(value: datetime | date | None) -> str | None:
    """FHIR dateTime text: ``2024-03-15T09:12:00+08:00`` or ``2024-03-15``."""
    return None if value is None else value.isoformat()


def fhir_date(value: datetime | date | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date().isoformat()
    return value.isoformat()


# ---------------------------------------------------------------------------------------------
# Resident ID numbers (GB 11643)
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Lab values, reference ranges, interpretation
# ---------------------------------------------------------------------------------------------

INTERPRETATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
INTERPRETATIONS: dict[str, str] = {
    "H": "High", "L": "Low", "HH": "Critical high", "LL": "Critical low", "N": "Normal",
    "A": "Abnormal", "AA": "Critical abnormal", "POS": "Positive", "NEG": "Negative",
}

# GB/T 2261.1 sex codes -> FHIR gender. 9 is "not stated", which FHIR only knows as unknown.
GENDERS = {"0": "unknown", "1": "male", "2": "female", "9": "unknown"}

# DICOM modality codes the hub codes; others keep their text only.
DICOM_MODALITIES = {
    "CT": "Computed Tomography", "MR": "Magnetic Resonance", "DX": "Digital Radiography",
    "US": "Ultrasound", "CR": "Computed Radiography", "MG": "Mammography",
    "NM": "Nuclear Medicine", "PT": "Positron emission tomography",
    "XA": "X-Ray Angiography", "RF": "Radio Fluoroscopy", "ES": "Endoscopy", "OT": "Other",
}

# Qualitative result words -> SNOMED CT codes (coded value) -- data, shared by all provinces.
SNOMED_SYSTEM = "http://snomed.info/sct"
QUALITATIVE_WORDS: dict[str, tuple[str, str]] = {
    "阴性": ("260385009", "Negative"),
    "阳性": ("10828004", "Positive"),
    "弱阳性": ("260408008", "Weakly positive"),
    "-": ("260385009", "Negative"),
    "+": ("10828004", "Positive"),
    "negative": ("260385009", "Negative"),
    "positive": ("10828004", "Positive"),
}

_COMPARATOR_RE = re.compile(r"^(<=|>=|<|>|≤|≥)\s*(.+)$")
_COMPARATORS = {"≤": "<=", "≥": ">="}


def interpretation(flag: Any) -> list[dict] | None:
    """An abnormal flag (``H``, ``LL``, ...) as Observation.interpretation; None when empty.

    An unknown flag raises InvalidValue so the mapper can reject it with its location.
    """
    code = clean(flag)
    if code is None:
        return None
    code = to_halfwidth(code).upper()
    if code not in INTERPRETATIONS:
        raise InvalidValue(f"unknown abnormal flag {code!r}")
    return [{"coding": [{"system": INTERPRETATION_SYSTEM, "code": code,
                         "display": INTERPRETATIONS[code]}]}]


def gbt_gender(code: str) -> str:
    """FHIR gender of a GB/T 2261.1 sex code; a code outside the table raises InvalidValue."""
    if code not in GENDERS:
        raise InvalidValue(f"unknown sex code {code[:10]!r} (GB/T 2261.1: 0, 1, 2, 9)")
    return GENDERS[code]


def lab_value(raw: Any, unit: str | None = None) -> dict[str, Any]:
    """An Observation ``value[x]`` from a result value as sent.

    - a number (string or JSON number, full-width allowed) -> valueQuantity (with UCUM-less unit)
    - a comparator and number (``<0.5``, ``>=1000``) -> valueQuantity with ``comparator``
    - a qualitative word (阴性/阳性/弱阳性) -> valueCodeableConcept (SNOMED CT) with the word as text
    - anything else -> valueString
    Returns {} for an absent value.
    """
    text = clean(raw)
    if text is None:
        return {}
    half = to_halfwidth(text).replace(" ", "")
    comparator = None
    m = _COMPARATOR_RE.match(half)
    if m:
        comparator, half = _COMPARATORS.get(m.group(1), m.group(1)), m.group(2)
    try:
        number = parse_decimal(half)
    except InvalidValue:
        number = None
    if number is not None:
        quantity: dict[str, Any] = {"value": decimal_json(number)}
        if comparator:
            quantity["comparator"] = comparator
        if unit:
            quantity["unit"] = unit
        return {"valueQuantity": quantity}
    word = QUALITATIVE_WORDS.get(text) or QUALITATIVE_WORDS.get(text.lower())
    if word:
        return {"valueCodeableConcept": {"coding": [{"system": SNOMED_SYSTEM, "code": word[0],
                                                      "display": word[1]}], "text": text}}
    return {"valueString": text}


_RANGE_RE = re.compile(r"^([+-]?\d+(?:\.\d+)?)\s*(?:-|~|～|—|－|–)\s*([+-]?\d+(?:\.\d+)?)$")


def reference_range(raw: Any, unit: str | None = None) -> list[dict] | None:
    """``3.9-6.1`` / ``3.9~6.1`` / ``<5`` / ``>=10`` as Observation.referenceRange; text otherwise."""
    text = clean(raw)
    if text is None:
        return None
    half = to_halfwidth(text).replace(" ", "")

    def qty(v: str) -> dict[str, Any]:
        q: dict[str, Any] = {"value": decimal_json(Decimal(v))}
        if unit:
            q["unit"] = unit
        return q

    m = _RANGE_RE.match(half)
    if m:
        return [{"low": qty(m.group(1)), "high": qty(m.group(2)), "text": text}]
    m = _COMPARATOR_RE.match(half)
    if m and _NUMBER_RE.match(m.group(2)):
        op = _COMPARATORS.get(m.group(1), m.group(1))
        bound = "high" if op.startswith("<") else "low"
        return [{bound: qty(m.group(2)), "text": text}]
    return [{"text": text}]


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def validate(resource: dict[str, Any]) -> dict[str, Any]:
    """Validate a resource dict as FHIR R4 4.0.1 (``mappers.validation``: the official JSON
    schema, compiled, and the rules it cannot state) and return it unchanged.

    Raises InvalidValue (``R4Error``) naming the first bad element and why, e.g.
    ``Observation.status: "bogus" is not one of ...``.
    """
    from mappers.validation import validate as validate_r4  # it imports this module

    validate_r4(resource)
    return resource


def insurance_identifier(card: str, place: str | None) -> dict[str, Any]:
    """The insurance card identifier; its issuer is the insured place's bureau (area code)."""
    identifier: dict[str, Any] = {"system": INSURANCE_CARD_SYSTEM, "value": card}
    if place:
        identifier["assigner"] = {"identifier": {"value": place}, "display": f"参保地 {place}"}
    return identifier


def codeable_concept(code: str | None, system: str | None, display: str | None,
                     text: str | None) -> dict[str, Any] | None:
    """A CodeableConcept: one coding when a code (with its system and display when given), the
    text when one; None with neither. Empty strings count as absent."""
    if not code and not text:
        return None
    concept: dict[str, Any] = {}
    if code:
        coding = {"system": system, "code": code, "display": display}
        concept["coding"] = [{k: v for k, v in coding.items() if v}]
    if text:
        concept["text"] = text
    return concept


def department_concept(code: str | None, name: str | None) -> dict[str, Any] | None:
    """A department as a CodeableConcept (coded when a code, text when a name); None with neither."""
    return codeable_concept(code, DEPARTMENT_SYSTEM, name, name)


def hospital_identifier(code: str) -> dict[str, str]:
    """A hospital's code (医疗机构代码) as an Identifier (system ``…1.5``)."""
    return {"system": HOSPITAL_SYSTEM, "value": code}


def hospital_organization(code: str, name: str | None = None) -> dict[str, Any]:
    """The Organization resource for a hospital, id derived from its code."""
    org: dict[str, Any] = {
        "resourceType": "Organization",
        "id": make_id("Organization", code),
        "identifier": [hospital_identifier(code)],
        "type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/organization-type",
                              "code": "prov", "display": "Healthcare Provider"}]}],
    }
    if name:
        org["name"] = name
    return org


def hospital_reference(code: str, name: str | None = None) -> dict[str, Any]:
    """Every Reference to a hospital (an identifier's ``assigner``, ``serviceProvider``,
    ``performer``, ...): the literal reference to its Organization, and the hospital's code as
    ``identifier`` beside it, so a reader knows the hospital without resolving anything
    (world/README.md "Identifiers"); ``display`` when a name is given. Mappers build no
    reference to a hospital any other way."""
    ref: dict[str, Any] = {"reference": f"Organization/{make_id('Organization', code)}",
                           "identifier": hospital_identifier(code)}
    if name:
        ref["display"] = name
    return ref


# Resources that many records point at (a hospital, a doctor). The hub upserts them and never
# retires them when one record stops mentioning them.
SHARED_TYPES = frozenset({"Organization", "Practitioner"})
