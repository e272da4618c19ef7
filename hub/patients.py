"""The patient index: one Patient per person across provinces.

A person is known by match keys, strongest first:

1. ``rid:<resident ID>`` (checked and widened by the mapper, never repaired);
2. ``doc:<system>|<number>`` for a passport, HK/Macao pass or permanent residence ID;
3. ``card:<insurance card number>``;
4. ``mrn:<hospital>|<number>``, the hospital's own patient number;
5. ``visit:<hospital>|<record key>``: a visit with nothing else is its own patient.

Name and birth date are never a key: two people may share them. A record joins the patient of
its strongest key already known; a weaker key only joins a patient that has no conflicting person
document. The rules are pure functions here; ``hub.store`` applies them to a whole upload.
"""

from __future__ import annotations

from typing import Any

from mappers.common import (
    HOSPITAL_PATIENT_NO_SYSTEM,
    INSURANCE_CARD_SYSTEM,
    PERSON_DOCUMENT_SYSTEMS,
    RESIDENT_ID_SYSTEM,
)

PERSON_KEY_PREFIXES = ("rid:", "doc:")


def match_keys(patient: dict[str, Any], hospital: str, record_key: str) -> list[str]:
    """The match keys of a mapped Patient, strongest first (never empty)."""
    ids = [(i.get("system"), i.get("value")) for i in patient.get("identifier", [])
           if i.get("value")]
    keys = [f"rid:{v}" for s, v in ids if s == RESIDENT_ID_SYSTEM]
    keys += [f"doc:{s}|{v}" for s, v in ids
             if s in PERSON_DOCUMENT_SYSTEMS and s != RESIDENT_ID_SYSTEM]
    keys += [f"card:{v}" for s, v in ids if s == INSURANCE_CARD_SYSTEM]
    keys += [f"mrn:{hospital}|{v}" for s, v in ids if s == HOSPITAL_PATIENT_NO_SYSTEM]
    keys.append(f"visit:{hospital}|{record_key}")
    return list(dict.fromkeys(keys))


def _is_person_key(key: str) -> bool:
    return key.startswith(PERSON_KEY_PREFIXES)


def choose(keys: list[str], known: dict[str, str], primaries: dict[str, str]) -> str | None:
    """Which known patient a record with ``keys`` belongs to (pure; None: a new patient).

    ``known`` maps key -> patient id for the keys already in the index; ``primaries`` maps those
    patients to the key they were created under. A weaker key (card, hospital number) does not
    join a patient created under a different person document: that is another person.
    """
    own_person = next((k for k in keys if _is_person_key(k)), None)
    for key in keys:
        pid = known.get(key)
        if pid is None:
            continue
        primary = primaries.get(pid, "")
        if own_person and _is_person_key(primary) and primary != own_person:
            continue
        return pid
    return None


def merge_patient(existing: dict[str, Any] | None, incoming: dict[str, Any], pid: str) -> dict:
    """The stored Patient after a new record: the newest details, every identifier kept.

    Identifiers are the union (by system, value and assigner) so each hospital's number stays
    findable; of one identifier held and sent again, the one sent wins, in the place it held
    (so a mapper's newer form of it, an assigner that now names the hospital's code, reaches
    the stored Patient). Other elements come from the incoming record when it has them, else
    stay as they were.
    """
    merged = dict(existing or {})
    merged.update({k: v for k, v in incoming.items() if k not in ("identifier", "meta")})
    by_mark: dict[tuple, dict] = {}
    for ident in (existing or {}).get("identifier", []) + incoming.get("identifier", []):
        by_mark[(ident.get("system"), ident.get("value"),
                 (ident.get("assigner") or {}).get("reference"))] = ident
    if by_mark:
        merged["identifier"] = list(by_mark.values())
    merged["resourceType"] = "Patient"
    merged["id"] = pid
    return merged
