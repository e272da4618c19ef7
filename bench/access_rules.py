"""Benchmark: what the sharing rules cost. ``$everything`` p50/p99 for a treating hospital with
the rules on (treating check, consent filters, masking, audit write) versus the same hub with
the rules bypassed in this script only, on the same data.

    python bench/access_rules.py [--visits 12000] [--patients 1000] [--lookups 1000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.zj_load import resident_id, upload  # noqa: E402
from hub import access  # noqa: E402
from hub.auth import create_token  # noqa: E402
from hub.config import Settings  # noqa: E402
from mappers.common import RESIDENT_ID_SYSTEM# noqa: E402
from mappers.region import CST
from tests.support.common import free_port, serve_in_thread  # noqa: E402

HOSPITAL, OTHER = "H33042100015", "H33020300004"


def timed(client, pids, lookups) -> list[float]:
    times = []
    for i in range(lookups):
        t = time.perf_counter()
        r = client.get(f"/fhir/Patient/{pids[i % len(pids)]}/$everything")
        times.append((time.perf_counter() - t) * 1000)
        assert r.status_code == 200, r.text
    return sorted(times)


def bypass() -> None:
    """The rules off: everyone allowed, nothing filtered, masked or audited."""
    access.decide = lambda conn, caller, pid, now=None: access.Decision(True, masked=False)
    access._audit = lambda *a, **k: None
    access._hidden = lambda *a, **k: frozenset()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--visits", type=int, default=12000)
    ap.add_argument("--patients", type=int, default=1000)
    ap.add_argument("--lookups", type=int, default=1000)
    args = ap.parse_args()
    from hub import logs
    from hub.app import create_app

    logs.configure("WARNING")
    url = f"sqlite:///{tempfile.mkdtemp(prefix='yrdhub-bench-')}/bench.db"
    app = create_app(Settings(database_url=url, mllp_port=0))
    port = free_port()
    server = serve_in_thread(app, port)
    base = f"http://127.0.0.1:{port}"
    engine = app.state.engine
    recent = (datetime.now(CST) - timedelta(days=1)).strftime("%Y-%m-%d")
    senders = {h: create_token(engine, "hospital", h) for h in (HOSPITAL, OTHER)}
    with httpx.Client(base_url=base, timeout=120) as c:
        for start in range(0, args.visits, 100):   # history at another hospital
            c.post("/ingest/zj", content=upload(OTHER, start, 100, args.patients),
                   headers={"Authorization": f"Bearer {senders[OTHER]}"}).raise_for_status()
        for start in range(0, args.patients, 100):  # today's visits: the hospital is treating
            c.post("/ingest/zj", content=upload(HOSPITAL, 10**7 + start, 100, args.patients, recent),
                   headers={"Authorization": f"Bearer {senders[HOSPITAL]}"}).raise_for_status()
    admin = create_token(engine, "admin", None)
    reader = create_token(engine, "hospital", HOSPITAL)
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {admin}"}) as c:
        pids = [c.get("/fhir/Patient", params={"identifier": f"{RESIDENT_ID_SYSTEM}|{resident_id(n)}"}
                      ).json()["entry"][0]["resource"]["id"] for n in range(0, args.patients, 10)]
        total = c.get("/fhir/Observation", params={"_count": "0"}).json()["total"]
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {reader}"}) as c:
        timed(c, pids, 100)  # warm up
        on = timed(c, pids, args.lookups)
        bypass()
        timed(c, pids, 100)
        off = timed(c, pids, args.lookups)
    p = lambda xs, q: xs[int(len(xs) * q) - 1]  # noqa: E731
    print(f"store: {args.visits + args.patients} visits, {total} observations; "
          f"{args.lookups} $everything lookups each way")
    print(f"rules on : p50 {statistics.median(on):.2f} ms  p99 {p(on, 0.99):.2f} ms")
    print(f"bypassed : p50 {statistics.median(off):.2f} ms  p99 {p(off, 0.99):.2f} ms")
    print(f"cost     : p50 {100 * (statistics.median(on) / statistics.median(off) - 1):+.0f}%  "
          f"p99 {100 * (p(on, 0.99) / p(off, 0.99) - 1):+.0f}%")
    server.should_exit = True


if __name__ == "__main__":
    main()
