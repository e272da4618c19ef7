"""The person's records as the pages show them: FHIR resources in, visits out (pure).

``visits(resources)`` groups what the hub holds by visit (Encounter), newest first; each visit
has its diagnoses, results (value, unit, reference range, flag), reports (lab and imaging, with
the imaging findings), imaging studies, prescriptions and allergies. What names no visit (an
allergy recorded on its own, a report sent without its visit) is grouped as ``others``. Every
item keeps its ``Type/id`` (to ask for a correction) and whether it is ``disputed``.
Nothing here reads the database or decides who sees what: ``hub.access`` did.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

from hub.access import DISPUTED_TAG
from mappers.common import HOSPITAL_SYSTEM

# v3-ObservationInterpretation -> what the flag means to a person (data)
FLAGS = {"H": "偏高", "HH": "危急偏高", "L": "偏低", "LL": "危急偏低", "N": "正常", "A": "异常",
         "AA": "危急异常", "POS": "阳性", "NEG": "阴性", "W": "恶化", "U": "显著升高", "D": "显著降低"}
# Encounter.class -> words
CLASSES = {"AMB": "门诊", "EMER": "急诊", "IMP": "住院", "VR": "远程", "HH": "家庭"}
# the kinds of item, in the order a visit shows them
SECTIONS = {"Condition": "诊断", "Observation": "检验结果", "DiagnosticReport": "检验/检查报告",
            "ImagingStudy": "影像检查", "MedicationRequest": "处方", "AllergyIntolerance": "过敏史"}


@dataclass
class Item:
    ref: str  # "Type/id"
    title: str
    detail: str = ""
    date: str = ""
    disputed: bool = False
    # results: value, unit, reference range, flag
    value: str = ""
    unit: str = ""
    range: str = ""
    flag: str = ""
    flag_code: str = ""


@dataclass
class Visit:
    ref: str | None
    date: str = ""
    hospital: str = ""
    department: str = ""
    kind: str = ""
    disputed: bool = False
    sections: dict[str, list[Item]] = field(default_factory=dict)


def text_of(concept: dict | None) -> str:
    """A CodeableConcept's words: its text, else the first coding's display, else its code."""
    if not concept:
        return ""
    if concept.get("text"):
        return concept["text"]
    for coding in concept.get("coding") or []:
        if coding.get("display") or coding.get("code"):
            return coding.get("display") or coding["code"]
    return ""


def _number(q: dict | None) -> str:
    if not q or q.get("value") is None:
        return ""
    return f"{q.get('comparator', '')}{q['value']}"


def _value(obs: dict) -> tuple[str, str]:
    """An Observation's value and unit, whichever ``value[x]`` it has."""
    if "valueQuantity" in obs:
        q = obs["valueQuantity"]
        return _number(q), q.get("unit") or q.get("code") or ""
    if "valueRange" in obs:
        r = obs["valueRange"]
        unit = (r.get("low") or r.get("high") or {}).get("unit", "")
        return f"{_number(r.get('low'))}–{_number(r.get('high'))}", unit
    if "valueRatio" in obs:
        r = obs["valueRatio"]
        return f"{_number(r.get('numerator'))}:{_number(r.get('denominator'))}", ""
    if "valueCodeableConcept" in obs:
        return text_of(obs["valueCodeableConcept"]), ""
    for key in ("valueString", "valueDateTime", "valueInteger", "valueBoolean", "valueTime"):
        if key in obs:
            return str(obs[key]), ""
    return "", ""


def _range(obs: dict) -> str:
    ranges = obs.get("referenceRange") or []
    if not ranges:
        return ""
    r = ranges[0]
    if r.get("text"):
        return r["text"]
    return f"{_number(r.get('low'))}–{_number(r.get('high'))}"


def _flag(obs: dict) -> tuple[str, str]:
    for concept in obs.get("interpretation") or []:
        codes = [c.get("code") for c in concept.get("coding") or [] if c.get("code")]
        code = codes[0] if codes else concept.get("text", "")
        if code:
            return FLAGS.get(code, text_of(concept) or code), code
    return "", ""


def _findings(report: dict) -> str:
    """The text of a report's attached plain-text forms (imaging findings), decoded."""
    parts = []
    for form in report.get("presentedForm") or []:
        if not str(form.get("contentType", "")).startswith("text/plain") or not form.get("data"):
            continue
        try:
            body = base64.b64decode(form["data"], validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            continue
        parts.append(f"{form['title']}：{body}" if form.get("title") else body)
    return "\n".join(parts)


def _date(resource: dict, *keys: str) -> str:
    for key in keys:
        value = resource.get(key)
        if isinstance(value, dict):
            value = value.get("start")
        if value:
            return str(value)[:16].replace("T", " ")
    return ""


def _item(resource: dict) -> Item:
    """One resource as an item of its section."""
    t = resource["resourceType"]
    item = Item(f"{t}/{resource['id']}", "", disputed=is_disputed(resource))
    if t == "Condition":
        codes = [c.get("code") for c in (resource.get("code") or {}).get("coding") or []]
        roles = [text_of(c) for c in resource.get("category") or [] if c.get("text")]
        item.title, item.date = text_of(resource.get("code")), _date(resource, "recordedDate")
        item.detail = " · ".join(x for x in [*roles, *(c for c in codes if c)] if x)
    elif t == "Observation":
        item.title, item.date = text_of(resource.get("code")), _date(resource, "effectiveDateTime")
        item.value, item.unit = _value(resource)
        item.range = _range(resource)
        item.flag, item.flag_code = _flag(resource)
    elif t == "DiagnosticReport":
        item.title, item.date = text_of(resource.get("code")), _date(resource, "effectiveDateTime")
        item.detail = "\n".join(x for x in (_findings(resource), resource.get("conclusion")) if x)
    elif t == "ImagingStudy":
        item.title = resource.get("description") or text_of((resource.get("procedureCode") or [None])[0])
        item.detail = " ".join(m.get("code", "") for m in resource.get("modality") or [])
        item.date = _date(resource, "started")
    elif t == "MedicationRequest":
        item.title, item.date = text_of(resource.get("medicationCodeableConcept")), _date(resource, "authoredOn")
        item.detail = "；".join(d.get("text", "") for d in resource.get("dosageInstruction") or [])
    elif t == "AllergyIntolerance":
        item.title, item.date = text_of(resource.get("code")), _date(resource, "recordedDate")
        item.detail = "、".join(text_of(m) for r in resource.get("reaction") or []
                               for m in r.get("manifestation") or [])
    item.title = item.title or SECTIONS.get(t, t)
    return item


def is_disputed(resource: dict) -> bool:
    return DISPUTED_TAG in ((resource.get("meta") or {}).get("tag") or [])


def _visit(encounter: dict, organisations: dict[str, str]) -> Visit:
    provider = encounter.get("serviceProvider") or {}
    hospital = provider.get("display") or organisations.get(provider.get("reference", ""), "")
    kind = (encounter.get("class") or {}).get("code", "")
    return Visit(f"Encounter/{encounter['id']}", _date(encounter, "period"), hospital,
                 text_of(encounter.get("serviceType")), CLASSES.get(kind, kind),
                 is_disputed(encounter))


def _organisation_name(organisation: dict, hospital_names: dict[str, str]) -> str:
    """Its own name, else the region's name for its hospital code (HL7 senders give no name)."""
    if organisation.get("name"):
        return organisation["name"]
    codes = [i.get("value") for i in organisation.get("identifier") or []
             if i.get("system") == HOSPITAL_SYSTEM]
    return next((hospital_names[c] for c in codes if c in hospital_names), "")


def visits(resources: list[dict], hospital_names: dict[str, str] | None = None
           ) -> tuple[list[Visit], Visit]:
    """(visits newest first, the items that name no visit) of one person's resources;
    ``hospital_names`` (code -> name) names the hospitals that sent no name of their own."""
    organisations = {f"Organization/{r['id']}": _organisation_name(r, hospital_names or {})
                     for r in resources if r["resourceType"] == "Organization"}
    by_ref = {f"Encounter/{r['id']}": _visit(r, organisations) for r in resources
              if r["resourceType"] == "Encounter"}
    others = Visit(None)
    for resource in resources:
        if resource["resourceType"] not in SECTIONS:
            continue
        visit = by_ref.get((resource.get("encounter") or {}).get("reference", ""), others)
        visit.sections.setdefault(SECTIONS[resource["resourceType"]], []).append(_item(resource))
    for visit in [*by_ref.values(), others]:
        visit.sections = {name: visit.sections[name] for name in SECTIONS.values()
                          if name in visit.sections}
    return sorted(by_ref.values(), key=lambda v: v.date, reverse=True), others


def find(resources: list[dict], ref: str, hospital_names: dict[str, str] | None = None
         ) -> tuple[Visit | None, Item | None]:
    """The visit and item of ``ref`` (``Type/id``, a visit itself too) among ``resources``;
    Nones when absent or not a kind of record the pages show."""
    all_visits, others = visits(resources, hospital_names)
    for visit in [*all_visits, others]:
        if visit.ref == ref:
            title = f"{visit.kind}就诊 · {visit.department}".strip(" ·")
            return visit, Item(ref, title, "", visit.date, visit.disputed)
        for items in visit.sections.values():
            for item in items:
                if item.ref == ref:
                    return visit, item
    return None, None
