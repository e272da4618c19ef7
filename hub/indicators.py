"""Cooperation indicators (考核评估, hub-interface.md "Administrators: cooperation indicators").

Every figure is an SQL aggregate (``COUNT``, ``SUM``, ``GROUP BY``; medians from ordered values:
``LIMIT``/``OFFSET`` on an index on SQLite, ``percentile_cont(0.5)`` on PostgreSQL) over what the
hub recorded as it happened; nothing is a counter kept aside. A month runs in +08:00. What each figure reads:

- ``records``: ``record_arrival`` (``hub/arrivals.py``), by the month it arrived in.
- ``lookups``: the read audit's ``lookup`` rows (one per ``/fhir`` request that read patients'
  data) of hospitals: ``allowed`` (purpose treatment), ``emergency`` (allowed with
  ``X-Emergency-Reason``: the audit's purpose says so, treating or not), ``refused`` (403).
- ``settlements``: by settlement time (``setl_time``, +08:00; a settlement refused before any
  2207 has none and counts by the time it was received). ``refused`` is what the caller sees as
  refused (states refused, invalid, reversed), by its code; ``amount`` sums ``medfee_sumamt`` of
  those that stand settled, in whole fen (exact on both databases). Both come from columns the
  settlement service writes with the JSON they are read from (``settlement.service.figures_of``).
- ``transfers``: final ones by the time they became final (``updated``), by origin province.
- ``corrections``: ``opened`` by creation; ``answered_on_time`` by answer time, answered on or
  before the deadline day; ``overdue`` by deadline day: not answered by it (and not withdrawn
  before it), counted once the day has passed.

A closed month therefore answers the same every time: each figure is fixed by rows whose times
fall in it, and those rows are appended (arrivals, audit) or final (transfers, answers). The one
exception is the interface's own: ``settled`` counts what stands settled now, so a later void
moves a settlement of a closed month from ``settled`` to ``voided``.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from sqlalchemy import Date, and_, case, cast, exists, func, not_, or_, select, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import StaticPool

from hub.errors import Unprocessable
from hub.models import AuditRecord, Correction, RecordArrival
from mappers.region import CST, PROVINCES, province_of
from settlement.models import Settlement
from settlement.transfer_models import Transfer, TransferStep

TOP_REASONS = 5
REFUSED_STATES = ("refused", "invalid", "reversed")  # settlement.states.STATUS_OF_STATE
SETTLEMENT_STATES = ("settled", "voided", *REFUSED_STATES)
_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
A, AU, C = RecordArrival.__table__, AuditRecord.__table__, Correction.__table__
S, T, TS = Settlement.__table__, Transfer.__table__, TransferStep.__table__
LOOKUPS = text("audit_event.lookup AND audit_event.party_kind = 'hospital'")


def empty(section: str) -> dict[str, Any]:
    """A section with nothing counted (a new dict each time)."""
    return {"records": lambda: {"received": 0, "rejected": 0, "top_reasons": [],
                                "median_delay_hours": None},
            "lookups": lambda: {"allowed": 0, "refused": 0, "emergency": 0},
            "settlements": lambda: {"settled": 0, "refused": 0, "voided": 0, "amount": "0.00",
                                    "refusals": {}},
            "transfers": lambda: {"completed": 0, "refused": 0, "on_time": 0},
            "corrections": lambda: {"opened": 0, "answered_on_time": 0, "overdue": 0}}[section]()


PROVINCE_SECTIONS = ("records", "lookups", "settlements", "transfers", "corrections")
HOSPITAL_SECTIONS = ("records", "lookups", "settlements", "corrections")


@dataclass(frozen=True)
class Month:
    """One calendar month in +08:00: ``label`` ``yyyy-mm``, its first day and the next's."""

    label: str
    first: date
    next_first: date

    @property
    def start(self) -> datetime:
        """Its first moment, in UTC (as the tables keep times)."""
        return datetime(self.first.year, self.first.month, 1, tzinfo=CST).astimezone(timezone.utc)

    @property
    def end(self) -> datetime:
        """The next month's first moment, in UTC."""
        return datetime(self.next_first.year, self.next_first.month, 1, tzinfo=CST).astimezone(timezone.utc)

    def back(self, months: int) -> "Month":
        index = self.first.year * 12 + self.first.month - 1 - months
        return month_of(index // 12, index % 12 + 1)


def month_of(year: int, month: int) -> Month:
    first = date(year, month, 1)
    return Month(f"{year:04d}-{month:02d}", first, (first + timedelta(days=32)).replace(day=1))


def parse_month(value: str | None) -> Month:
    """``yyyy-mm`` (01-12, years 2000-2099); Unprocessable naming the parameter otherwise."""
    found = _MONTH.match(value or "")
    if not found or not 2000 <= int(found[1]) <= 2099:
        raise Unprocessable(f"query parameter month: {value!r} is not a month as yyyy-mm "
                            f"(e.g. 2026-11)", code="INVALID_MONTH")
    return month_of(int(found[1]), int(found[2]))


def current_month(now: datetime) -> Month:
    local = now.astimezone(CST)
    return month_of(local.year, local.month)


# -- SQL pieces that differ by database ------------------------------------------------------------


def _cst_day(conn: Connection, column):
    """The day (+08:00) of a stored UTC time, comparable with a ``Date`` column."""
    if conn.dialect.name == "sqlite":
        return func.date(column, "+8 hours")
    return cast(func.timezone("Asia/Shanghai", column), Date)


# -- the figures -----------------------------------------------------------------------------------


class Figures:
    """One month's figures, filled section by section, then ``as_json``."""

    def __init__(self, month: Month):
        self.month = month
        self.provinces = {p: {s: empty(s) for s in PROVINCE_SECTIONS} for p in PROVINCES}
        self.hospitals: dict[str, dict] = defaultdict(lambda: {s: empty(s) for s in HOSPITAL_SECTIONS})

    def province(self, code: str | None) -> dict | None:
        return self.provinces.get(code or "")

    def add(self, party: dict | None, section: str, figure: str, n: int) -> None:
        if party is not None:
            party[section][figure] += n

    def as_json(self) -> dict[str, Any]:
        return {"month": self.month.label, "provinces": self.provinces,
                "hospitals": dict(sorted(self.hospitals.items()))}


def compute(engine: Engine, month: Month, today: date | None = None) -> dict[str, Any]:
    """The figures of ``month`` (hub-interface.md's JSON). ``today`` (+08:00) bounds which
    deadlines have passed (default: now). The reads run at once, each on its own connection
    (the database works on them in parallel; the drivers let go of the GIL meanwhile), and
    their results are applied in a fixed order."""
    today = today or datetime.now(CST).date()
    figures = Figures(month)

    def fetch(read: Read):
        with engine.connect() as conn:
            return read.fetch(conn, month, today)

    reads = READS[engine.dialect.name == "postgresql"]
    # an in-memory SQLite database is one connection (StaticPool): its reads take turns
    workers = 1 if isinstance(engine.pool, StaticPool) else len(reads)
    with ThreadPoolExecutor(workers, thread_name_prefix="indicators") as pool:
        results = list(pool.map(fetch, reads))
    for read, result in zip(reads, results):
        read.apply(figures, result)
    return figures.as_json()


@dataclass(frozen=True)
class Read:
    """One read of a month: ``fetch(conn, month, today)`` -> rows, ``apply(figures, rows)``."""

    fetch: Callable[[Connection, Month, date], Any]
    apply: Callable[[Figures, Any], None]


def _record_counts(conn: Connection, month: Month, _today: date) -> list:
    """Per hospital and outcome: units, and how many delays were measured (one pass over a
    covering index)."""
    return conn.execute(select(A.c.hospital, A.c.outcome, func.sum(A.c.units), func.count(A.c.delay_s))
                        .where(A.c.month == month.label).group_by(A.c.hospital, A.c.outcome)).all()


def _records(conn: Connection, month: Month, _today: date) -> tuple[list, dict, dict]:
    """SQLite: the counts, then the medians of hospitals and provinces by offset from them."""
    rows = _record_counts(conn, month, _today)
    by_hospital: Counter = Counter()
    by_province: Counter = Counter()
    for hospital, _outcome, _units, delays in rows:
        by_hospital[hospital] += delays
        by_province[province_of(hospital)] += delays
    return (rows, medians(conn, month.label, A.c.hospital, by_hospital),
            medians(conn, month.label, A.c.province, by_province))


def _apply_records(f: Figures, found: tuple[list, dict, dict]) -> None:
    rows, hospitals, provinces = found
    _apply_record_counts(f, rows)
    _apply_medians(f, hospitals)
    _apply_medians(f, provinces)


def _apply_record_counts(f: Figures, rows: list) -> None:
    for hospital, outcome, units, _delays in rows:
        for party in (f.hospitals[hospital], f.province(province_of(hospital))):
            f.add(party, "records", "received", int(units))
            f.add(party, "records", "rejected", int(units) if outcome == "rejected" else 0)


def _apply_medians(f: Figures, hours: dict[str, str]) -> None:
    for party, median in hours.items():
        found = f.provinces[party] if party in f.provinces else f.hospitals[party]
        found["records"]["median_delay_hours"] = median


def _hours(seconds: Decimal) -> str:
    return str((seconds / 3600).quantize(Decimal("0.01")))


def pg_medians(column):
    """PostgreSQL: the same medians in one grouped ``percentile_cont(0.5)`` (the mean of the
    middle two for an even count), on the same index read in order."""
    def fetch(conn: Connection, month: Month, _today: date) -> dict[str, str]:
        median = func.percentile_cont(0.5).within_group(A.c.delay_s)
        rows = conn.execute(select(column, median).where(
            A.c.month == month.label, A.c.delay_s.is_not(None), column.is_not(None)).group_by(column))
        return {party: _hours(Decimal(value)) for party, value in rows}
    return fetch


def _reasons(conn: Connection, month: Month, _today: date) -> list:
    return conn.execute(select(A.c.hospital, A.c.reason, func.count())
                        .where(A.c.month == month.label, A.c.outcome == "rejected")
                        .group_by(A.c.hospital, A.c.reason)).all()


def _apply_reasons(f: Figures, rows: list) -> None:
    counts: dict[str, Counter] = defaultdict(Counter)
    for hospital, reason, n in rows:
        counts[hospital][reason or ""] += n
        counts["province:" + (province_of(hospital) or "")][reason or ""] += n
    for key, counter in counts.items():
        party = (f.province(key.split(":", 1)[1]) if key.startswith("province:")
                 else f.hospitals[key])
        if party is not None:
            top = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_REASONS]
            party["records"]["top_reasons"] = [{"reason": r, "count": n} for r, n in top]


def medians(conn: Connection, month: str, column, counts: Counter) -> dict[str, str]:
    """Median delay in hours (two places) per value of ``column`` (hospital or province) with
    ``counts[value]`` delays measured: the middle of its ordered delays (the mean of the middle
    two for an even count), read on the index of (month, column, delay) by offset, one short
    query per party."""
    known = and_(A.c.month == month, A.c.delay_s.is_not(None))
    out = {}
    for party, n in counts.items():
        if not n or party is None:
            continue
        middle = conn.execute(select(A.c.delay_s).where(known, column == party)
                              .order_by(A.c.delay_s).offset((n - 1) // 2)
                              .limit(2 - n % 2)).scalars().all()
        out[party] = _hours(Decimal(sum(middle)) / len(middle))
    return out


def _lookups(conn: Connection, month: Month, _today: date) -> list:
    return conn.execute(select(AU.c.party_code, AU.c.purpose, AU.c.outcome, func.count())
                        .where(LOOKUPS, AU.c.recorded >= month.start, AU.c.recorded < month.end)
                        .group_by(AU.c.party_code, AU.c.purpose, AU.c.outcome)).all()


def _apply_lookups(f: Figures, rows: list) -> None:
    for hospital, purpose, outcome, n in rows:
        figure = ("refused" if outcome != "allowed" else
                  "emergency" if purpose == "emergency" else "allowed")
        for party in (f.hospitals[hospital], f.province(province_of(hospital or ""))):
            f.add(party, "lookups", figure, n)


def _settlements(sent: bool):
    """The settlements of the month by ``setl_time`` (``sent``), or, never sent to a platform,
    by the time received: two ranges of covering indexes (an OR of them would read the table)."""
    def fetch(conn: Connection, month: Month, _today: date) -> list:
        columns = (S.c.insuplc, S.c.fixmedins_code, S.c.state,
                   case((S.c.state.in_(REFUSED_STATES), S.c.refusal_code)))
        when = (and_(S.c.setl_time >= f"{month.first} 00:00:00",
                     S.c.setl_time < f"{month.next_first} 00:00:00") if sent else
                and_(S.c.created_at >= month.start, S.c.created_at < month.end, S.c.setl_time.is_(None)))
        fen = func.sum(case((S.c.state == "settled", S.c.medfee_fen), else_=0))
        return conn.execute(select(*columns, func.count(), fen)
                            .where(when, S.c.state.in_(SETTLEMENT_STATES)).group_by(*columns)).all()
    return fetch


def _apply_settlements(f: Figures, rows: list) -> None:
    for insured, hospital, state, refusal, n, fen_sum in rows:
        for party in (f.hospitals[hospital], f.province(insured)):
            _add_settlements(party, state, refusal, n, int(fen_sum or 0))


def _add_settlements(party: dict | None, state: str, refusal: str | None, n: int, fen: int) -> None:
    if party is None:
        return
    figures = party["settlements"]
    if state in REFUSED_STATES:
        figures["refused"] += n
        figures["refusals"][refusal or "UNKNOWN"] = figures["refusals"].get(refusal or "UNKNOWN", 0) + n
    else:
        figures[state] += n
    figures["amount"] = str(Decimal(figures["amount"]) + Decimal(fen) / 100)


def _transfers(conn: Connection, month: Month, _today: date) -> list:
    late = exists().where(TS.c.transfer_id == T.c.id, TS.c.status == "done",
                          _cst_day(conn, TS.c.done_at) > TS.c.deadline)
    on_time = func.sum(case((and_(T.c.status == "completed", not_(late)), 1), else_=0))
    return conn.execute(select(T.c.from_admdvs, T.c.status, func.count(), on_time)
                        .where(T.c.status.in_(("completed", "refused")),
                               T.c.updated >= month.start, T.c.updated < month.end)
                        .group_by(T.c.from_admdvs, T.c.status)).all()


def _apply_transfers(f: Figures, rows: list) -> None:
    for origin, status, n, timely in rows:
        party = f.province(province_of(origin))
        f.add(party, "transfers", status, n)
        f.add(party, "transfers", "on_time", int(timely or 0))


def _corrections(conn: Connection, month: Month, today: date) -> list:
    answered_day, withdrawn_day = _cst_day(conn, C.c.answered), _cst_day(conn, C.c.withdrawn)
    queries = {
        "opened": and_(C.c.created >= month.start, C.c.created < month.end),
        "answered_on_time": and_(C.c.answered >= month.start, C.c.answered < month.end,
                                 answered_day <= C.c.deadline),
        "overdue": and_(C.c.deadline >= month.first, C.c.deadline < month.next_first,
                        C.c.deadline < today,
                        or_(C.c.answered.is_(None), answered_day > C.c.deadline),
                        or_(C.c.withdrawn.is_(None), withdrawn_day > C.c.deadline)),
    }
    return [(figure, hospital, n) for figure, where in queries.items()
            for hospital, n in conn.execute(select(C.c.hospital, func.count()).where(where)
                                            .group_by(C.c.hospital))]


def _apply_corrections(f: Figures, rows: list) -> None:
    for figure, hospital, n in rows:
        for party in (f.hospitals[hospital], f.province(province_of(hospital))):
            f.add(party, "corrections", figure, n)


_OTHERS = (
    Read(_reasons, _apply_reasons),
    Read(_lookups, _apply_lookups),
    Read(_settlements(sent=True), _apply_settlements),
    Read(_settlements(sent=False), _apply_settlements),
    Read(_transfers, _apply_transfers),
    Read(_corrections, _apply_corrections),
)
# [SQLite, PostgreSQL]: SQLite's medians walk the index from counts the first read makes;
# PostgreSQL's are three reads at once (its backends are processes of their own)
READS = (
    (Read(_records, _apply_records), *_OTHERS),
    (Read(_record_counts, _apply_record_counts), Read(pg_medians(A.c.hospital), _apply_medians),
     Read(pg_medians(A.c.province), _apply_medians), *_OTHERS),
)


# -- CSV -------------------------------------------------------------------------------------------


def csv_rows(body: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(party, figure, value)`` for every figure of every party: provinces first, then
    hospitals; nested figures as dotted names (``records.top_reasons.<reason>``,
    ``settlements.refusals.<code>``); a figure with no value (no median) as an empty value."""
    rows = []
    for party, sections in [*body["provinces"].items(), *body["hospitals"].items()]:
        for section, figures in sections.items():
            for name, value in figures.items():
                rows += _flat(party, f"{section}.{name}", value)
    return rows


def _flat(party: str, figure: str, value: Any) -> list[tuple[str, str, str]]:
    if isinstance(value, dict):
        return [(party, f"{figure}.{k}", str(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [(party, f"{figure}.{item['reason']}", str(item["count"])) for item in value]
    return [(party, figure, "" if value is None else str(value))]
