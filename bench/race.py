"""Benchmark and check: the same uploads to several hub processes at once, on one database.

A hospital that retries an upload through a load balancer may reach another hub process while
the first is still storing it. Each of ``--uploads`` Zhejiang uploads (``--visits`` visits of
distinct people each) is posted to every hub at the same moment (a thread per hub); then the
database is asked, with the queries printed beside their answers, whether anything was stored
twice: a person with two Patients, a visit with two records, a resource with a second version
(an identical re-send must be ``unchanged``), and whether each visit was stored once and found
unchanged by every other hub.

    python -m bench.race --url postgresql+psycopg://postgres@127.0.0.1:55433/dev_perf \\
        [--processes 2] [--uploads 40] [--visits 10]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
from sqlalchemy import bindparam, text  # noqa: E402

from tests.support import hubproc  # noqa: E402
from bench.zj_load import HOSPITALS, resident_id, upload  # noqa: E402
from hub.auth import create_token  # noqa: E402
from hub.db import make_engine  # noqa: E402
from tests.support.common import free_port  # noqa: E402

HOSPITAL = HOSPITALS[2]

CHECKS = {
    "Patients of these people (one each expected)":
        "SELECT count(DISTINCT patient_id) FROM patient_key WHERE key IN :person_keys",
    "Patient resources of them": "SELECT count(*) FROM resource WHERE res_type = 'Patient' AND "
                                 "res_id IN (SELECT patient_id FROM patient_key WHERE key IN "
                                 ":person_keys)",
    "records of these visits (one each expected)": "SELECT count(*) FROM record WHERE key LIKE :keys",
    "their resources with a second version":
        "SELECT count(*) FROM resource WHERE record_key LIKE :keys AND version > 1",
    "their earlier versions kept": "SELECT count(*) FROM resource_history h JOIN resource r ON "
                                   "r.res_type = h.res_type AND r.res_id = h.res_id "
                                   "WHERE r.record_key LIKE :keys",
}


def race(urls: list[str], token: str, bodies: list[bytes]) -> tuple[list[dict], float]:
    """Each body to every hub at once; the answers (JSON) and the wall time."""
    answers: list[dict] = []
    lock = threading.Lock()

    def send(url: str, body: bytes, start: threading.Barrier):
        with httpx.Client(base_url=url, timeout=120,
                          headers={"Authorization": f"Bearer {token}"}) as c:
            start.wait()
            r = c.post("/ingest/zj", content=body)
        with lock:
            answers.append({"status": r.status_code, **(r.json() if r.status_code == 200 else {})})

    t0 = time.perf_counter()
    for body in bodies:
        start = threading.Barrier(len(urls))
        threads = [threading.Thread(target=send, args=(u, body, start)) for u in urls]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return answers, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", required=True, help="the database (PostgreSQL for several hubs)")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--uploads", type=int, default=40)
    ap.add_argument("--visits", type=int, default=10)
    args = ap.parse_args()
    run = int(time.time()) % 10**6  # visits of this run only: a database used before is fine
    first = run * 1000
    bodies = [upload(HOSPITAL, first + i * args.visits, args.visits, 100)
              for i in range(args.uploads)]
    engine = make_engine(args.url)
    token = create_token(engine, "hospital", HOSPITAL)
    ports = [free_port() for _ in range(args.processes)]
    hubs = [hubproc.start(args.url, p) for p in ports]
    try:
        answers, wall = race([f"http://127.0.0.1:{p}" for p in ports], token, bodies)
    finally:
        for h in hubs:
            hubproc.stop(h)
    statuses: dict[int, int] = {}
    for a in answers:
        statuses[a["status"]] = statuses.get(a["status"], 0) + 1
    stored = sum(a.get("stored", 0) for a in answers)
    unchanged = sum(a.get("unchanged", 0) for a in answers)
    visits = args.uploads * args.visits
    print(f"{args.uploads} uploads of {args.visits} visits, each to {args.processes} hubs at once: "
          f"{len(answers) / wall:.1f} uploads/s answered; statuses {statuses}; visits stored "
          f"{stored} (of {visits}), unchanged {unchanged} (of {visits * (args.processes - 1)})")
    people = sorted({(first + n) % 100 for n in range(visits)})
    keys = [f"zj:{HOSPITAL}|{HOSPITAL}|MZ{first + n:014d}" for n in range(visits)]
    params = {"person_keys": [f"rid:{resident_id(p)}" for p in people],
              "keys": _common_prefix(keys) + "%"}
    with engine.connect() as conn:
        for name, sql in CHECKS.items():
            stmt = text(sql)
            if ":person_keys" in sql:
                stmt = stmt.bindparams(bindparam("person_keys", expanding=True))
            found = conn.execute(stmt, {k: v for k, v in params.items() if f":{k}" in sql}
                                 ).scalar_one()
            print(f"  {name}: {found}    [{sql}]")
    print(f"  ({len(people)} people; record keys {params['keys']})")


def _common_prefix(keys: list[str]) -> str:
    prefix = keys[0]
    for k in keys[1:]:
        while not k.startswith(prefix):
            prefix = prefix[:-1]
    return prefix


if __name__ == "__main__":
    main()
