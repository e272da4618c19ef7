"""Benchmark: how fast ``fhir.resources`` (R4B) validates the resources an HL7 v2 ORU^R01 with ten
OBX maps to, on one core, and what that alone allows in messages/s. It bounds every ingest path
(the mappers validate every resource they build).

    python bench/validation_rate.py [--messages 300]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fhir.resources.R4B import get_fhir_model_class  # noqa: E402

from bench.ingest_formats import oru  # noqa: E402
from mappers import shanghai_hl7v2 as sh  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=300)
    args = ap.parse_args()
    mapped = [sh.map_message(oru(n), "H31010100001").result for n in range(args.messages)]
    resources = [[r.patient, *r.resources] for m in mapped for r in m.records]
    count = sum(len(rs) for rs in resources)
    start = time.perf_counter()
    for rs in resources:
        for r in rs:
            get_fhir_model_class(r["resourceType"]).model_validate(r)
    seconds = time.perf_counter() - start
    per_message = count / args.messages
    rate = count / seconds
    print(f"{count} resources ({per_message:.1f} per message) validated in {seconds:.2f} s on one core: "
          f"{rate:.0f} resources/s, so validation alone allows {rate / per_message:.0f} messages/s "
          f"per core, {os.cpu_count() * rate / per_message:.0f} on all {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
