"""Sensitive categories (world/README.md): which diagnoses and results cross a province border
only with the patient's permission for that category.

ICD-10 ranges are data. A resource is in a category when any of its codes (Condition.code,
DiagnosticReport.conclusionCode, an Observation's code or coded value) falls in a range.
"""

from __future__ import annotations

import re
from typing import Any

# category -> inclusive ranges of ICD-10 three-character categories
SENSITIVE_RANGES: dict[str, tuple[tuple[str, str], ...]] = {
    "mental": (("F00", "F99"),),
    "hiv": (("B20", "B24"),),
    "sti": (("A50", "A64"),),
}
CATEGORIES = tuple(SENSITIVE_RANGES)
_ICD_RE = re.compile(r"^([A-Z])(\d{2})")


def category_of_code(code: str) -> str | None:
    """``F32.900`` -> ``mental``; ``J06.900`` -> None. Lower case and stray spaces tolerated."""
    m = _ICD_RE.match(code.strip().upper())
    if not m:
        return None
    head = m.group(1) + m.group(2)
    for category, ranges in SENSITIVE_RANGES.items():
        if any(lo <= head <= hi for lo, hi in ranges):
            return category
    return None


def _codes(resource: dict[str, Any]):
    for element in ("code", "conclusionCode", "valueCodeableConcept", "reasonCode"):
        value = resource.get(element)
        for concept in value if isinstance(value, list) else [value]:
            if isinstance(concept, dict):
                for coding in concept.get("coding", []):
                    if isinstance(coding.get("code"), str):
                        yield coding["code"]


def category_of(resource: dict[str, Any]) -> str | None:
    """The sensitive category of a resource, or None. Only clinical findings are classified."""
    if resource.get("resourceType") not in ("Condition", "Observation", "DiagnosticReport"):
        return None
    for code in _codes(resource):
        category = category_of_code(code)
        if category:
            return category
    return None
