"""Benchmark: what the writer saves per message, in-process, CPU time (steadier than rates on a
shared machine): ORU^R01 (10 OBX) messages mapped beforehand, then stored on a SQLite WAL file

- one transaction per message (what ``POST /ingest/sh`` did before the writer);
- N messages per transaction, each in its own savepoint and ``_store_all`` (shared commit only);
- N messages per transaction stored by one ``_store_all`` (the writer's run of one kind).

    python -m bench.writer_batches [--messages 400] [--sizes 2 4 8 32]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ingest_formats import SH_H, oru  # noqa: E402
from hub import hl7_ingest  # noqa: E402
from hub.db import make_engine, writer  # noqa: E402
from hub.migrate import upgrade  # noqa: E402
from mappers import shanghai_hl7v2 as sh  # noqa: E402


def store(engine, items, size: int, shared: bool) -> tuple[float, float]:
    """(CPU ms, wall ms) per message storing ``items`` ``size`` to a transaction."""
    t, c = time.perf_counter(), time.process_time()
    for i in range(0, len(items), size):
        part = items[i:i + size]
        with writer(engine).begin() as conn:
            runs = [part] if shared else [[one] for one in part]
            for run in runs:
                with conn.begin_nested():
                    hl7_ingest._store_all(conn, SH_H, run, "er7")
    n = len(items)
    return (time.process_time() - c) / n * 1000, (time.perf_counter() - t) / n * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=400, help="per line")
    ap.add_argument("--sizes", type=int, nargs="+", default=[2, 4, 8, 32])
    args = ap.parse_args()
    engine = make_engine(f"sqlite:///{tempfile.mkdtemp(prefix='yrdhub-writer-')}/hub.db")
    upgrade(engine)
    lines = [("one transaction per message", 1, False)]
    for size in args.sizes:
        lines += [(f"{size} per transaction, a store call each", size, False),
                  (f"{size} per transaction, one store call", size, True)]
    total = args.messages * (len(lines) + 1)
    messages = [oru(n) for n in range(total)]
    mapped = list(zip(messages, (sh.map_message(m, SH_H) for m in messages)))
    store(engine, mapped[:args.messages], 4, True)  # warm: statement cache, first pages
    print(f"storing ORU^R01 (10 OBX) on SQLite WAL, {args.messages} messages a line")
    for n, (label, size, shared) in enumerate(lines, start=1):
        cpu, wall = store(engine, mapped[n * args.messages:(n + 1) * args.messages], size, shared)
        print(f"  {label:40s} CPU {cpu:5.2f} ms/msg, wall {wall:5.2f} ms/msg")


if __name__ == "__main__":
    main()
