"""References to hospitals in FHIR resources: finding them, and checking that each carries the
hospital's code as ``identifier`` beside its literal reference (world/README.md "Identifiers")."""

from __future__ import annotations

from typing import Any, Iterator

from mappers.common import HOSPITAL_SYSTEM, make_id

# Elements whose Reference can only point at an Organization (FHIR R4).
ORGANIZATION_ELEMENTS = ("assigner", "serviceProvider", "managingOrganization", "custodian")


def organization_references(node: Any, path: str = "") -> Iterator[tuple[str, dict]]:
    """``(path, reference)`` of every Reference to an Organization anywhere in ``node``: one whose
    ``reference`` is ``Organization/…``, or any literal reference in an element that only
    points at Organizations. (An insurance card's assigner, the insured place's bureau, has no
    literal reference and is no hospital: it is not one of them.)"""
    if isinstance(node, list):
        for i, item in enumerate(node):
            yield from organization_references(item, f"{path}[{i}]")
        return
    if not isinstance(node, dict):
        return
    ref = node.get("reference")
    element = path.rsplit(".", 1)[-1].split("[")[0]
    if isinstance(ref, str) and (ref.startswith("Organization/")
                                 or element in ORGANIZATION_ELEMENTS):
        yield path, node
    for key, value in node.items():
        yield from organization_references(value, f"{path}.{key}" if path else key)


def hospital_code_problems(resource: dict) -> list[str]:
    """What is wrong with the hospital references of one resource ([] when nothing): each must
    point at an Organization and carry, as ``identifier``, the code whose Organization it is."""
    problems = []
    for path, ref in organization_references(resource):
        where = f"{resource.get('resourceType')}.{path}"
        identifier = ref.get("identifier")
        if not isinstance(identifier, dict) or identifier.get("system") != HOSPITAL_SYSTEM:
            problems.append(f"{where}: no hospital code as identifier ({ref})")
        elif ref["reference"] != f"Organization/{make_id('Organization', identifier['value'])}":
            problems.append(f"{where}: identifier {identifier['value']} is not the hospital of "
                            f"{ref['reference']}")
    return problems
