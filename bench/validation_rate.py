"""Benchmark: the run-time validator (``mappers.validation``: the official R4 4.0.1 JSON schema
compiled by ``jsonschema-rs``, plus the required-element and real-date rules) against
``fhir.resources`` (R4B) ``model_validate``, on the same resources in the same run: the ones an
HL7 v2 ORU^R01 with ten OBX maps to. Prints µs per resource for each, their ratio, and what
validation alone then allows in messages/s per core; also the one-off costs a worker process pays
(loading the schema, compiling the validators of the types seen).

    python bench/validation_rate.py [--messages 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fhir.resources.R4B import get_fhir_model_class

from bench.ingest_formats import oru
from mappers import shanghai_hl7v2 as sh
from mappers import validation


def _resources(messages: int) -> list[dict]:
    mapped = [sh.map_message(oru(n), "H31010100001").result for n in range(messages)]
    return [res for m in mapped for r in m.records for res in [r.patient, *r.resources]]


def _one_off(resources: list[dict]) -> None:
    """Time the schema load and the compile of each type's validator, in a fresh cache."""
    validation._compiled.cache_clear()
    validation.validator_for.cache_clear()
    start = time.perf_counter()
    validation.load_schema()
    load = time.perf_counter() - start
    start = time.perf_counter()
    validation._compiled()
    registry = time.perf_counter() - start
    types = sorted({r["resourceType"] for r in resources})
    start = time.perf_counter()
    for t in types:
        validation.validator_for(t)
    compile_s = time.perf_counter() - start
    print(f"one-off per process: schema load (gunzip + orjson) {load * 1e3:.0f} ms, registry "
          f"{registry * 1e3:.0f} ms, compile {len(types)} types ({', '.join(types)}) "
          f"{compile_s * 1e3:.0f} ms ({compile_s / len(types) * 1e3:.0f} ms each)")


def _rate(check: Callable[[dict], object], resources: list[dict], rounds: int) -> float:
    """Best of ``rounds`` passes: seconds per resource."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for r in resources:
            check(r)
        best = min(best, (time.perf_counter() - start) / len(resources))
    return best


def _model_validate(resource: dict) -> None:
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    resources = _resources(args.messages)
    per_message = len(resources) / args.messages
    _one_off(resources)
    _model_validate(resources[0])  # both warm: imports and compiled validators
    validation.validate(resources[0])
    runtime = _rate(validation.validate, resources, args.rounds)
    model = _rate(_model_validate, resources, args.rounds)
    print(f"{len(resources)} resources ({per_message:.1f} per message), best of {args.rounds}, "
          "one core:")
    for name, seconds in (("runtime validator (jsonschema-rs, R4 4.0.1)", runtime),
                          ("fhir.resources R4B model_validate", model)):
        print(f"  {name:45s} {seconds * 1e6:7.1f} µs/resource, "
              f"{1 / seconds / per_message:8.0f} messages/s per core")
    print(f"ratio model_validate / runtime validator: {model / runtime:.1f}x")


if __name__ == "__main__":
    main()
