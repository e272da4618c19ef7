"""A large store, quickly: ``--resources`` (default 1,000,000) resources straight into the tables,
in the shapes the hub stores.

The shapes come from the hub itself: a handful of template visits (one per hospital and day,
``bench.zj_load.visit``) are mapped by the Zhejiang mapper and stored by ``hub.store`` in a
scratch database; every row they wrote (``resource``, ``search_index``, ``patient``,
``patient_key``, ``record``) is then copied per patient and visit with its identities replaced
(resource ids, the patient id, the resident ID, the visit number), and bulk-inserted. Nothing
is mapped, validated or indexed per copy, so a million resources take about a minute on SQLite.

The store: ``--patients`` people (default: as many as the size needs at ``--visits`` visits
each), each with visits at the three hospitals of ``bench.zj_load.HOSPITALS`` on older days
(so the first hospital holds a third of all encounters, most of them outside the treating
window), and the first ``--treated`` patients with a visit yesterday at the first hospital
(so it is treating them). Hospitals and practitioners are shared, as the hub stores them.

    python -m bench.make_store --url sqlite:////tmp/big.db [--resources 1000000] [--visits 5]
    python -m bench.make_store --url postgresql+psycopg://postgres@127.0.0.1:55433/dev_perf

Prints what it wrote and the resident IDs of the treated patients are ``resident_id(n)``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from datetime import date, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import insert, select, text  # noqa: E402

from bench.zj_load import HOSPITALS, visit  # noqa: E402
from hub.db import make_engine, writer  # noqa: E402
from hub.migrate import upgrade  # noqa: E402
from hub.models import Patient, PatientKey, Record, Resource, SearchIndex  # noqa: E402
from mappers.common import SHARED_TYPES, make_id# noqa: E402
from mappers.region import CST, check_character

TEMPLATE_VISIT = 987654321  # appears in the template's visit, lab and prescription numbers
TEMPLATE_PATIENT = 0
OLD_DAYS = ("2023-03-14", "2023-09-02", "2024-01-20", "2024-06-11")
BENCH_HOSPITAL = HOSPITALS[0]
TABLES = (Resource, SearchIndex, Patient, PatientKey, Record)


def resident_id(n: int) -> str:
    """The ``n``-th person's resident ID: unique for n below 21 million (a birth day per 1000)."""
    born = date(1950, 1, 1) + timedelta(days=n // 1000)
    body = f"330421{born:%Y%m%d}{n % 1000:03d}"
    return body + check_character(body)


def yesterday() -> str:
    return (datetime.now(CST) - timedelta(days=1)).strftime("%Y-%m-%d")


def _template_upload(hospital: str, day: str) -> bytes:
    v = visit(TEMPLATE_VISIT, TEMPLATE_PATIENT, day)
    v["hzxx"].update(zjhm=resident_id(TEMPLATE_PATIENT), csrq=resident_id(TEMPLATE_PATIENT)[6:14],
                     ybkh="A" + "7" * 14)
    v["jyjg"][0]["jgz"] = "5.4"  # fixed: a template is copied as it is
    doc = {"jgdm": hospital, "jgmc": "测试医院", "yydj": "2", "scsj": f"{day} 18:00:00",
           "jzjl": [v]}
    return json.dumps(doc, ensure_ascii=False).encode()


def templates(days: dict[str, tuple[str, ...]]) -> dict[tuple[str, str], dict[str, list[dict]]]:
    """(hospital, day) -> table -> the rows one visit of the template patient wrote there."""
    from hub.store import put_records
    from mappers.zhejiang_json import map_upload

    out = {}
    for hospital, hdays in days.items():
        for day in hdays:
            engine = make_engine(f"sqlite:///{tempfile.mkdtemp(prefix='yrdhub-tpl-')}/t.db")
            upgrade(engine)
            records = map_upload(_template_upload(hospital, day), hospital).records
            with writer(engine).begin() as conn:
                put_records(conn, "zj", records, None)
            with engine.connect() as conn:
                out[(hospital, day)] = {
                    t.__tablename__: [dict(r._mapping) for r in conn.execute(select(t))]
                    for t in TABLES}
            engine.dispose()
    return out


class Copier:
    """Rows of a template with one person's and one visit's identities put in."""

    def __init__(self, tpl: dict[str, list[dict]]):
        self.tpl = tpl
        rid = resident_id(TEMPLATE_PATIENT)
        self.pid = make_id("Patient", f"rid:{rid}")
        ids = {r["res_id"] for r in tpl["resource"] if r["res_type"] not in SHARED_TYPES}
        self.visit_ids = sorted(ids - {self.pid})
        words = [rid, "A" + "7" * 14, str(TEMPLATE_VISIT), self.pid, *self.visit_ids]
        self.pattern = re.compile("|".join(re.escape(w) for w in words))
        self.bpattern = re.compile("|".join(re.escape(w) for w in words).encode())

    def mapping(self, person: int, visit_no: int) -> dict[str, str]:
        rid = resident_id(person)
        m = {resident_id(TEMPLATE_PATIENT): rid, "A" + "7" * 14: f"A{person:014d}",
             str(TEMPLATE_VISIT): f"{visit_no:09d}", self.pid: make_id("Patient", f"rid:{rid}")}
        m.update({i: make_id(i, str(visit_no)) for i in self.visit_ids})
        return m

    def rows(self, table: str, m: dict[str, str], bm: dict[bytes, bytes], patient: bool
             ) -> list[dict]:
        """The table's rows for this copy: the visit's own (``patient`` False) or the person's
        (the Patient, its index rows and match keys; ``patient`` True)."""
        out = []
        for row in self.tpl[table]:
            if _is_patient_row(table, row, self.pid) != patient or _is_shared(table, row):
                continue
            new = {}
            for k, v in row.items():
                if isinstance(v, str):
                    v = self.pattern.sub(lambda x: m[x.group(0)], v)
                elif isinstance(v, bytes):
                    v = self.bpattern.sub(lambda x: bm[x.group(0)], v)
                new[k] = v
            new.pop("id", None) if table == "search_index" else None
            out.append(new)
        return out


def _is_patient_row(table: str, row: dict, pid: str) -> bool:
    if table in ("patient", "patient_key"):
        return not row.get("key", "").startswith("visit:")
    if table in ("resource", "search_index"):
        return row["res_type"] == "Patient"
    return False


def _is_shared(table: str, row: dict) -> bool:
    return table in ("resource", "search_index") and row["res_type"] in SHARED_TYPES


def plan(resources: int, visits: int, per_visit: int) -> int:
    """How many people give about ``resources`` resources at ``visits`` visits each."""
    return max(1, resources // (visits * per_visit + 1))


def generate(engine, resources: int, visits: int, treated: int, batch: int = 20000,
             say=print) -> dict:
    """Fill ``engine``'s (migrated, empty) database; returns counts per table."""
    days = {h: OLD_DAYS for h in HOSPITALS}
    days[BENCH_HOSPITAL] = OLD_DAYS + (yesterday(),)
    tpls = templates(days)
    copiers = {k: Copier(t) for k, t in tpls.items()}
    any_tpl = next(iter(tpls.values()))
    per_visit = sum(1 for r in any_tpl["resource"]
                    if r["res_type"] not in SHARED_TYPES and r["res_type"] != "Patient")
    people = plan(resources, visits, per_visit)
    counts = {t.__tablename__: 0 for t in TABLES}
    pending: dict[str, list[dict]] = {t.__tablename__: [] for t in TABLES}
    shared = {}
    for tpl in tpls.values():
        for table in ("resource", "search_index"):
            for row in tpl[table]:
                if row["res_type"] in SHARED_TYPES:
                    shared.setdefault((table, row["res_type"], row["res_id"], row.get("param"),
                                       row.get("value")), row)
    for (table, *_), row in shared.items():
        pending[table].append({k: v for k, v in row.items() if k != "id"})
    visit_no = 0
    t0 = time.perf_counter()
    for person in range(1, people + 1):
        for v in range(visits + (person <= treated)):
            if v == visits:
                key = (BENCH_HOSPITAL, days[BENCH_HOSPITAL][-1])
            else:
                key = (HOSPITALS[(person + v) % len(HOSPITALS)], OLD_DAYS[v % len(OLD_DAYS)])
            copier = copiers[key]
            visit_no += 1
            m = copier.mapping(person, visit_no)
            bm = {a.encode(): b.encode() for a, b in m.items()}
            for table in pending:
                pending[table] += copier.rows(table, m, bm, patient=False)
                if v == 0:
                    pending[table] += copier.rows(table, m, bm, patient=True)
        if len(pending["resource"]) >= batch:
            _flush(engine, pending, counts)
            say(f"  {counts['resource']:,} resources, {time.perf_counter() - t0:.0f} s")
    _flush(engine, pending, counts)
    return {"people": people, "visits": visit_no, **counts}


def _flush(engine, pending: dict[str, list[dict]], counts: dict[str, int]) -> None:
    by_name = {t.__tablename__: t for t in TABLES}
    with writer(engine).begin() as conn:
        for table, rows in pending.items():
            if rows:
                conn.execute(insert(by_name[table]), rows)
                counts[table] += len(rows)
                rows.clear()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", required=True, help="database URL (an empty or new database)")
    ap.add_argument("--resources", type=int, default=1_000_000)
    ap.add_argument("--visits", type=int, default=5, help="visits per person (older days)")
    ap.add_argument("--treated", type=int, default=2000,
                    help="people with a visit yesterday at the first hospital")
    args = ap.parse_args()
    engine = make_engine(args.url)
    upgrade(engine)
    with engine.connect() as conn:
        if conn.execute(text("SELECT count(*) FROM resource")).scalar_one():
            sys.exit("the database already holds resources; give an empty one")
    t = time.perf_counter()
    counts = generate(engine, args.resources, args.visits, args.treated)
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    print(f"wrote in {time.perf_counter() - t:.0f} s: " + ", ".join(
        f"{k} {v:,}" for k, v in counts.items()))
    print(f"bench hospital {BENCH_HOSPITAL} treats people 1..{args.treated}; person n's resident "
          f"ID is bench.make_store.resident_id(n)")


if __name__ == "__main__":
    main()
