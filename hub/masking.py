"""动态脱敏: identity details as a hospital may see them (pure functions over resource dicts).

- resident ID and other person documents: ``3304**********002X`` (first four, last four);
- phones: ``138****0000`` (first three, last four);
- addresses: down to the district, as GB/T 2260 names it (state, city, district; street, lines,
  postcode and anything the table does not name removed);
- a masked resource carries the security label ``MASKED``.

Only administrators see the full values. The full values must never reach a hospital's answer.
"""

from __future__ import annotations

import re
from typing import Any

from mappers.address import best_place
from mappers.common import PERSON_DOCUMENT_SYSTEMS
from mappers.region import mask_resident_id

MASKED_LABEL = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
                "code": "MASKED", "display": "masked"}
_DIGITS = re.compile(r"\d")


def mask_phone(phone: str) -> str:
    """``13857300000`` -> ``138****0000``; a short number keeps only its last two digits."""
    digits = _DIGITS.findall(phone)
    if len(digits) >= 7:
        return "".join(digits[:3]) + "****" + "".join(digits[-4:])
    return "*" * max(len(digits) - 2, 0) + "".join(digits[-2:])


def mask_address(address: dict[str, Any]) -> dict[str, Any]:
    """Down to the district, by the GB/T 2260 table: what is shown is the province, city and
    district names the table knows, read from the address's text or from its state/city/
    district (whichever names more); nothing finer, and nothing the table does not name (a
    stored district that is a compound is dropped). ``use``, ``type`` and ``country`` stay."""
    kept = {k: address[k] for k in ("use", "type", "country") if k in address}
    fields = "".join(str(address.get(k) or "") for k in ("state", "city", "district"))
    place = best_place(address.get("text"), fields)
    kept.update(place.fields())
    if text := place.names():
        kept["text"] = text
    return kept


def _mask_identifier(identifier: dict[str, Any]) -> dict[str, Any]:
    if identifier.get("system") in PERSON_DOCUMENT_SYSTEMS and identifier.get("value"):
        return {**identifier, "value": mask_resident_id(identifier["value"])}
    return identifier


def mask_patient(patient: dict[str, Any]) -> dict[str, Any]:
    """A copy of a Patient with identity details masked and the MASKED label set."""
    out = dict(patient)
    if "identifier" in out:
        out["identifier"] = [_mask_identifier(i) for i in out["identifier"]]
    if "telecom" in out:
        out["telecom"] = [{**t, "value": mask_phone(t["value"])} if t.get("value") else t
                          for t in out["telecom"]]
    if "address" in out:
        out["address"] = [mask_address(a) for a in out["address"]]
    for contact in out.get("contact", []) or []:
        contact.pop("telecom", None)
        contact.pop("address", None)
    meta = dict(out.get("meta") or {})
    meta["security"] = [*meta.get("security", []), MASKED_LABEL]
    out["meta"] = meta
    return out
