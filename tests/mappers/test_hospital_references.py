"""Every reference to a hospital in everything the four mappers make, from every fixture and every
peer message, carries the hospital's code as ``identifier`` beside its literal reference
(world/README.md "Identifiers": an identifier's assigner, an Encounter's serviceProvider, a
report's performer, ...)."""

from __future__ import annotations

from collections import Counter

import pytest

from mappers.common import validate
from tests.support.corpus import CHANNELS
from tests.support.corpus import resources as _resources
from tests.support.references import hospital_code_problems, organization_references


@pytest.mark.parametrize("channel", CHANNELS)
def test_every_hospital_reference_carries_the_hospital_code(channel):
    mapper, paths = CHANNELS[channel]
    assert paths
    problems, seen = [], Counter()
    for path in paths:
        for resource in _resources(mapper(path)):
            problems += [f"{path.name}: {p}" for p in hospital_code_problems(resource)]
            seen.update(p.rsplit(".", 1)[-1].split("[")[0]
                        for p, _ in organization_references(resource))
            validate(resource)
    assert problems == []
    # Not vacuous: every channel's output names hospitals in each of these places.
    assert {"assigner", "serviceProvider", "performer"} <= set(seen), seen


def test_the_check_finds_a_reference_without_the_code():
    encounter = {"resourceType": "Encounter",
                 "serviceProvider": {"reference": "Organization/x", "display": "某医院"},
                 "identifier": [{"value": "MZ1", "assigner": {"reference": "Organization/y"}}]}
    assert [p.split(":")[0] for p in hospital_code_problems(encounter)] == [
        "Encounter.serviceProvider", "Encounter.identifier[0].assigner"]
