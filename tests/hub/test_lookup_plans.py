"""The access checks stay index reads: the statements ``hub.access`` runs for a lookup, the
treating check, the consent filter and ``$everything`` neither grow in number with the store
nor read any table whole.

Each read path runs against a store, then against the same store with many more patients and
encounters at the reading hospital (recent and old), and the statements it ran are captured.
Their number must be the same at both sizes, and each statement's plan must read no table
whole: on SQLite no ``SCAN <table>`` and no index search on a type's rows alone in ``EXPLAIN
QUERY PLAN`` (its planner has no statistics here, so the plan is the one a large store gets), on
PostgreSQL no ``Seq Scan`` with ``enable_seqscan`` off (a sequential scan then appears only
where no index can serve).
"""

from __future__ import annotations

import json
import re
import threading
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import event, text

from hub import access, audit
from hub.auth import Party
from hub.db import writer
from hub.store import put_records
from mappers.common import RESIDENT_ID_SYSTEM
from mappers.region import CST, check_character
from mappers.zhejiang_json import map_upload
from tests.support.common import FIXTURES
from tests.support.visits import RID, ZJ_H, zj_visit

TABLES = ("resource", "search_index", "sharing", "correction", "audit_event", "patient",
          "patient_key", "record", "resource_history")


def _rid(n: int) -> str:
    body = f"3304211960{(n // 28) % 12 + 1:02d}{n % 28 + 1:02d}{n % 1000:03d}"
    return body + check_character(body)


def _visits(start: int, count: int, when: datetime) -> bytes:
    """``count`` visits at ZJ_H of people ``start``.. (one each), at ``when``."""
    template = json.loads((FIXTURES / "zj" / "upload_basic.json").read_bytes())["jzjl"][0]
    visits = []
    for n in range(start, start + count):
        v = json.loads(json.dumps(template))
        v["jzlsh"] = f"MZ{n:014d}"
        v["jzsj"] = when.astimezone(CST).strftime("%Y-%m-%d %H:%M:%S")
        v["hzxx"].update(zjhm=_rid(n), csrq=_rid(n)[6:14], ybkh=f"A{n:014d}", xm=f"患者{n}")
        for group, key in (("jyjg", "bgdh"), ("jcbg", "bgdh"), ("cfxx", "cfh")):
            for item in v[group]:
                item[key] = f"{key.upper()}{n:012d}"
        for item in v["jcbg"]:
            item["jcuid"] = f"1.2.156.{n}"
        visits.append(v)
    doc = {"jgdm": ZJ_H, "jgmc": "嘉善县第一人民医院", "yydj": "2",
           "scsj": "2024-03-15 14:30:00", "jzjl": visits}
    return json.dumps(doc, ensure_ascii=False).encode()


def _store(engine, raw: bytes) -> None:
    result = map_upload(raw, ZJ_H)
    assert result.records and not result.rejected, result.rejected
    with writer(engine).begin() as conn:
        put_records(conn, "zj", result.records, None)


class Captured:
    """The statements (and their parameters) this thread runs on ``engine`` while open; with
    ``table``, those of any thread that write ``table`` (the audit is written by its own)."""

    def __init__(self, engine, table: str | None = None):
        self.engine, self.statements, self.thread = engine, [], threading.get_ident()
        self.table = table

    def __enter__(self):
        event.listen(self.engine, "before_cursor_execute", self._note)
        return self

    def __exit__(self, *exc):
        event.remove(self.engine, "before_cursor_execute", self._note)

    def _note(self, _conn, _cursor, statement, parameters, _context, _many):
        if self.table is not None:
            if re.match(r"\s*INSERT INTO %s\b" % self.table, statement):
                self.statements.append((statement, parameters))
        elif threading.get_ident() == self.thread and statement.lstrip().upper().startswith(
                ("SELECT", "INSERT", "UPDATE", "DELETE")):
            self.statements.append((statement, parameters))


# Reading every resource of a type, or every index row of a parameter, is a whole-table read
# too, though the plan calls it an index search: these columns alone pick no few rows.
BROAD = {"res_type", "param", "deleted"}


def whole_table_reads(engine, statement: str, parameters) -> list[str]:
    """The lines of the statement's plan that read a table of the hub whole (or all of one
    type's rows in it)."""
    with engine.begin() as conn:
        raw = conn.connection.driver_connection.cursor()
        if engine.dialect.name == "sqlite":
            raw.execute("EXPLAIN QUERY PLAN " + statement, parameters)
            return [line for line in (row[-1].strip() for row in raw.fetchall())
                    if _sqlite_whole(line)]
        raw.execute("SET LOCAL enable_seqscan = off")
        raw.execute("EXPLAIN " + statement, parameters)
        return [line for line in (row[0].strip() for row in raw.fetchall())
                if _postgres_whole(line)]


def _sqlite_whole(line: str) -> bool:
    if re.match(r"SCAN (%s)\b" % "|".join(TABLES), line):
        return True
    found = re.match(r"SEARCH (%s) USING .*?\((.*)\)" % "|".join(TABLES), line)
    return bool(found) and set(re.findall(r"(\w+)[=<>]", found.group(2))) <= BROAD


def _postgres_whole(line: str) -> bool:
    # Only a sequential scan, which enable_seqscan=off leaves where no index serves: which index
    # PostgreSQL picks depends on its statistics, and on the few rows here a type's prefix of
    # the primary key can be its cheapest plan (SQLite, without statistics, plans as for a
    # large store: there the broad index read is caught too).
    return bool(re.search(r"Seq Scan on (%s)\b" % "|".join(TABLES), line))


def read_paths(engine, pid: str, observation: str) -> dict[str, list]:
    """Each read path of ``hub.access`` as the treating hospital: the statements it ran."""
    hospital = access.Caller(Party("hospital", ZJ_H))
    paths = {
        "Patient?identifier=": lambda c: access.search(
            c, engine, hospital, "Patient", [("identifier", f"{RESIDENT_ID_SYSTEM}|{RID}")], 20, 0),
        "Observation?patient=": lambda c: access.search(
            c, engine, hospital, "Observation", [("patient", pid)], 20, 0),
        "Observation?code= (across patients)": lambda c: access.search(
            c, engine, hospital, "Observation", [("code", "2345-7")], 20, 0),
        "$everything": lambda c: access.everything(c, engine, hospital, pid),
        "read": lambda c: access.read(c, engine, hospital, "Observation", observation),
    }
    ran = {}
    with Captured(engine, "audit_event") as audited:
        for name, path in paths.items():
            with Captured(engine) as captured, engine.connect() as conn:
                answer = path(conn)
            assert answer.rows, name
            ran[name] = captured.statements
        audit.flush(engine)
    ran["audit"] = audited.statements
    return ran


def _analyze(engine) -> None:
    """PostgreSQL plans from its statistics, which autovacuum keeps in a running database; a table
    just filled has none yet, and the planner's pick between two usable indexes is then a toss."""
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(text("ANALYZE resource, search_index, sharing"))


@pytest.fixture()
def small_then_large(db):
    """The store at two sizes: 李四 (treated at ZJ_H two days ago) and a few others; then 120
    more people at ZJ_H, 60 of them treated now and 60 seen a year ago."""
    now = datetime.now(timezone.utc)
    _store(db, zj_visit(now - timedelta(days=2)))
    _store(db, _visits(1, 5, now - timedelta(days=1)))
    with db.connect() as conn:
        pid = conn.execute(text("SELECT patient_id FROM patient_key WHERE key = :k"),
                           {"k": f"rid:{RID}"}).scalar_one()
        observation = conn.execute(text("SELECT res_id FROM resource WHERE res_type = "
                                        "'Observation' AND patient_id = :p"), {"p": pid}).scalar()
    _analyze(db)
    small = read_paths(db, pid, observation)
    _store(db, _visits(100, 60, now - timedelta(days=3)))
    _store(db, _visits(200, 60, now - timedelta(days=365)))
    _analyze(db)
    large = read_paths(db, pid, observation)
    return db, small, large


def test_the_number_of_statements_does_not_grow_with_the_store(small_then_large):
    _engine, small, large = small_then_large
    reads = [name for name in large if name != "audit"]
    assert {name: len(large[name]) for name in reads} == \
        {name: len(small[name]) for name in reads}
    # and none is an unbounded per-row loop in disguise: a handful per lookup
    assert all(len(large[name]) <= 6 for name in reads), \
        {name: len(s) for name, s in large.items()}
    # the audit: inserts only, batched by its writer (at most one per read, however timed)
    assert 1 <= len(large["audit"]) <= len(reads), large["audit"]


def test_no_read_path_reads_a_table_whole(small_then_large):
    engine, _small, large = small_then_large
    scans = {}
    for name, statements in large.items():
        for statement, parameters in statements:
            if statement.lstrip().upper().startswith("SELECT"):
                found = whole_table_reads(engine, statement, parameters)
                if found:
                    scans.setdefault(name, []).append((found, statement))
    assert not scans, scans


def test_the_check_of_a_whole_table_read_would_catch_one(db):
    """The checks above are not blind: a statement without an index to use is caught."""
    parameters = ("x",) if db.dialect.name == "sqlite" else {"c": "x"}
    marker = "?" if db.dialect.name == "sqlite" else "%(c)s"
    assert whole_table_reads(db, f"SELECT res_id FROM resource WHERE content = {marker}",
                             parameters)


def plan_lines(engine, statement: str, parameters) -> list[str]:
    with engine.begin() as conn:
        raw = conn.connection.driver_connection.cursor()
        raw.execute(("EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN ")
                    + statement, parameters)
        return [str(row[-1] if engine.dialect.name == "sqlite" else row[0]).strip()
                for row in raw.fetchall()]


def test_the_treating_check_reads_the_patients_encounters_not_the_hospitals(small_then_large):
    """One patient's treating check is read from that patient's encounters: not from the
    hospital's encounters of the month, which grow with the hospital's visits."""
    engine, _small, large = small_then_large
    checks = [(s, p) for s, p in large["$everything"] if "AS treating" in s]
    assert len(checks) == 1
    lines = plan_lines(engine, *checks[0])
    reads = [line for line in lines if "resource" in line or "Index Cond" in line]
    assert any("patient_id" in line for line in reads), lines
    assert not any("ix_resource_type_hospital_sort" in line for line in lines), lines
