"""FHIR search: which parameters each type has, how their values are indexed, and how a query
string becomes SQL over ``search_index``.

Parameters are data (``PARAMS``): a name, a kind and the element paths it reads. Indexing happens
once on write (``index_rows``); a search is a join per parameter on indexed columns, never a JSON
scan. Dates are half-open UTC ranges ``[lo, hi)`` in ISO text so they compare as strings on both
SQLite and PostgreSQL; a value's precision gives its range (a date is its whole day, +08:00).
"""

from __future__ import annotations

import re
from functools import lru_cache
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Iterable

from sqlalchemy import and_, exists, func, not_, or_, select

from hub.models import SearchIndex
from mappers.region import CST


class SearchError(ValueError):
    """A search the hub cannot run (unknown parameter, bad value); answered 400."""


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # token | date | reference | string
    paths: tuple[str, ...]


def _p(name: str, kind: str, *paths: str) -> Param:
    return Param(name, kind, paths)


_CLINICAL_COMMON = (_p("encounter", "reference", "encounter"),)

PARAMS: dict[str, tuple[Param, ...]] = {
    "Patient": (
        _p("identifier", "token", "identifier"),
        _p("birthdate", "date", "birthDate"),
        _p("gender", "token", "gender"),
    ),
    "Encounter": (
        _p("patient", "reference", "subject"),
        _p("date", "date", "period"),
        _p("identifier", "token", "identifier"),
        _p("class", "token", "class"),
    ),
    "Condition": (
        _p("patient", "reference", "subject"),
        _p("recorded-date", "date", "recordedDate"),
        _p("onset-date", "date", "onsetDateTime", "onsetPeriod"),
        _p("code", "token", "code"),
        _p("category", "token", "category"),
        *_CLINICAL_COMMON,
    ),
    "Observation": (
        _p("patient", "reference", "subject"),
        _p("date", "date", "effectiveDateTime", "effectivePeriod", "effectiveInstant"),
        _p("code", "token", "code"),
        _p("category", "token", "category"),
        *_CLINICAL_COMMON,
    ),
    "DiagnosticReport": (
        _p("patient", "reference", "subject"),
        _p("date", "date", "effectiveDateTime", "effectivePeriod"),
        _p("code", "token", "code"),
        _p("category", "token", "category"),
        _p("identifier", "token", "identifier"),
        *_CLINICAL_COMMON,
    ),
    "ImagingStudy": (
        _p("patient", "reference", "subject"),
        _p("started", "date", "started"),
        _p("identifier", "token", "identifier"),
        _p("modality", "token", "modality", "series.modality"),
        *_CLINICAL_COMMON,
    ),
    "AllergyIntolerance": (
        _p("patient", "reference", "patient"),
        _p("date", "date", "recordedDate"),
        _p("code", "token", "code"),
        _p("category", "token", "category"),
    ),
    "MedicationRequest": (
        _p("patient", "reference", "subject"),
        _p("authoredon", "date", "authoredOn"),
        _p("code", "token", "medicationCodeableConcept"),
        _p("category", "token", "category"),
        *_CLINICAL_COMMON,
    ),
    "Organization": (_p("identifier", "token", "identifier"),),
    "Practitioner": (_p("identifier", "token", "identifier"),),
}

# Parameters of every type, answered from columns of ``resource`` (not indexed).
COMMON_PARAMS = (_p("_id", "token"), _p("_lastUpdated", "date"))
# The audit is searched by these (``queries.audit_page``), by an administrator only.
AUDIT_PARAMS = (_p("patient", "reference"), _p("date", "date"), _p("outcome", "token"),
                _p("agent", "token"))

# The element that orders a type's searchset, newest first (the first date parameter).
SORT_PARAM: dict[str, str] = {
    t: next((p.name for p in ps if p.kind == "date"), "") for t, ps in PARAMS.items()
}
# Parameters answered from a column of ``resource`` rather than the index (every clinical
# resource's patient is ``resource.patient_id``): not indexed, a row per resource saved.
COLUMN_PARAMS = frozenset({"patient"})
CLINICAL_TYPES = tuple(t for t in PARAMS if t not in ("Patient", "Organization", "Practitioner"))
# ``_sort`` takes a type's parameters of these kinds (``_id`` and ``_lastUpdated`` included).
SORT_KINDS = ("date", "token")


def param_of(res_type: str, name: str) -> Param:
    for p in PARAMS.get(res_type, ()):
        if p.name == name:
            return p
    raise SearchError(f"unknown search parameter {name!r} for {res_type}")


def params_of(res_type: str) -> tuple[Param, ...]:
    """Every search parameter ``res_type`` takes (its own, then the common ones)."""
    if res_type == "AuditEvent":
        return AUDIT_PARAMS
    return PARAMS.get(res_type, ()) + COMMON_PARAMS


def supported(res_type: str, name: str) -> bool:
    """Is ``name`` a search parameter the hub runs for ``res_type``? (No modifier is.)"""
    return any(p.name == name for p in params_of(res_type))


def sort_keys(res_type: str) -> tuple[str, ...]:
    """The names ``_sort`` accepts for ``res_type``."""
    if res_type == "AuditEvent":
        return ("date",)
    return tuple(p.name for p in params_of(res_type) if p.kind in SORT_KINDS)


# ---------------------------------------------------------------------------------------------
# Values of an element path
# ---------------------------------------------------------------------------------------------


def _values(resource: dict[str, Any], path: str) -> list[Any]:
    """Every value at a dotted element path, lists flattened."""
    current: list[Any] = [resource]
    for step in path.split("."):
        nxt: list[Any] = []
        for node in current:
            if isinstance(node, dict) and step in node:
                v = node[step]
                nxt.extend(v if isinstance(v, list) else [v])
        current = nxt
    return current


def _tokens(value: Any) -> Iterable[tuple[str | None, str]]:
    """(system, code) pairs of a code, Coding, CodeableConcept or Identifier."""
    if isinstance(value, str):
        yield None, value
    elif isinstance(value, dict):
        if "coding" in value:
            for c in value["coding"]:
                if c.get("code"):
                    yield c.get("system"), c["code"]
        if "value" in value and isinstance(value["value"], str):  # Identifier
            yield value.get("system"), value["value"]
        if "code" in value and isinstance(value["code"], str):  # Coding
            yield value.get("system"), value["code"]


_DATE_RE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?"
                      r"(Z|[+-]\d{2}:\d{2})?)?)?)?$")


def utc_text(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


@lru_cache(maxsize=65536)
def date_range(text: str) -> tuple[str, str]:
    """The half-open UTC range ``[lo, hi)`` a FHIR date/dateTime value covers at its precision.

    A value without an offset is +08:00 (the region's time). Raises SearchError if unreadable.
    """
    m = _DATE_RE.match(text.strip())
    if not m:
        raise SearchError(f"not a FHIR date: {text!r}")
    y, mo, d, hh, mi, ss, tz = m.groups()
    tzinfo = CST
    if tz == "Z":
        tzinfo = timezone.utc
    elif tz:
        sign = 1 if tz[0] == "+" else -1
        tzinfo = timezone(sign * timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6])))
    try:
        if hh is not None:
            lo = datetime(int(y), int(mo), int(d), int(hh), int(mi), int(ss or 0), tzinfo=tzinfo)
            hi = lo + (timedelta(seconds=1) if ss else timedelta(minutes=1))
        elif d is not None:
            lo = datetime.combine(date(int(y), int(mo), int(d)), time(), tzinfo)
            hi = lo + timedelta(days=1)
        elif mo is not None:
            lo = datetime(int(y), int(mo), 1, tzinfo=tzinfo)
            hi = datetime(int(y) + (int(mo) == 12), int(mo) % 12 + 1, 1, tzinfo=tzinfo)
        else:
            lo = datetime(int(y), 1, 1, tzinfo=tzinfo)
            hi = datetime(int(y) + 1, 1, 1, tzinfo=tzinfo)
    except ValueError as exc:
        raise SearchError(f"not a real date: {text!r}") from exc
    return utc_text(lo), utc_text(hi)


def _element_range(value: Any) -> tuple[str, str] | None:
    """The range of a date, dateTime, instant or Period element.

    A Period with a start and no end covers its start only: the provinces send outpatient visits
    as a start time, and a search for that day must find them. A Period with only an end is open
    towards the past.
    """
    if isinstance(value, str):
        return date_range(value)
    if isinstance(value, dict) and ("start" in value or "end" in value):
        if not value.get("end"):
            return date_range(value["start"])
        lo = date_range(value["start"])[0] if value.get("start") else "0000-01-01T00:00:00"
        return lo, date_range(value["end"])[1]
    return None


def index_rows(res_type: str, res_id: str, resource: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``search_index`` rows of one resource (plain dicts for a bulk insert)."""
    rows: list[dict[str, Any]] = []
    for param in PARAMS.get(res_type, ()):
        if param.name in COLUMN_PARAMS:
            continue
        for path in param.paths:
            for value in _values(resource, path):
                rows.extend(_rows_for(param, value))
    for row in rows:
        row.update(res_type=res_type, res_id=res_id)
        for k in ("system", "value", "date_lo", "date_hi"):
            row.setdefault(k, None)
    return rows


def _rows_for(param: Param, value: Any) -> list[dict[str, Any]]:
    if param.kind == "token":
        return [{"param": param.name, "system": s, "value": v[:200]} for s, v in _tokens(value)]
    if param.kind == "reference":
        ref = value.get("reference") if isinstance(value, dict) else None
        return [{"param": param.name, "value": ref.split("/")[-1]}] if ref else []
    if param.kind == "date":
        try:
            rng = _element_range(value)
        except SearchError:
            return []
        return [{"param": param.name, "date_lo": rng[0], "date_hi": rng[1]}] if rng else []
    return []


def sort_date(res_type: str, resource: dict[str, Any]) -> str | None:
    """The start of the type's ordering date element, in UTC text (None when absent)."""
    name = SORT_PARAM.get(res_type)
    if not name:
        return None
    for path in param_of(res_type, name).paths:
        for value in _values(resource, path):
            try:
                rng = _element_range(value)
            except SearchError:
                continue
            if rng:
                return rng[0]
    return None


# ---------------------------------------------------------------------------------------------
# Query string -> SQL conditions on resource (type, id)
# ---------------------------------------------------------------------------------------------

_PREFIXES = ("eq", "ne", "ge", "le", "gt", "lt")


def split_prefix(raw: str) -> tuple[str, str]:
    """A date value's comparison prefix (``eq`` when none) and the date itself. An unsupported
    prefix (``sa``, ``ap`` ...) is left on the date, which then fails to read: a 400."""
    if raw[:2] in _PREFIXES:
        return raw[:2], raw[2:]
    return "eq", raw


def instant_condition(column, raw: str):
    """A date value with its prefix against a column holding one instant (``_lastUpdated``, the
    audit's time): the instant lies in, after or before the value's range at its precision."""
    prefix, (lo, hi) = _instant_parts(raw)
    return _instant_sql(column, prefix, iter((lo, hi)))


def _instant_parts(raw: str) -> tuple[str, list]:
    prefix, text = split_prefix(raw)
    return prefix, [datetime.fromisoformat(v + "+00:00") for v in date_range(text)]


def _instant_sql(column, prefix: str, b):
    lo, hi = next(b), next(b)
    within = and_(column >= lo, column < hi)
    return {"eq": within, "ne": not_(within), "ge": column >= lo, "gt": column >= hi,
            "le": column < hi, "lt": column < lo}[prefix]


# Each kind of value in two halves: its parts (a shape, which says what SQL it becomes, and the
# values that SQL binds, in order) and the SQL of a shape, taking its bind parameters from
# ``b`` in that order. A search's SQL is then built once per shape (``queries``), not per request.

def _date_parts(raw: str) -> tuple[str, list]:
    prefix, text = split_prefix(raw)
    return prefix, list(date_range(text))


def _date_sql(prefix: str, b):
    lo, hi = next(b), next(b)
    si = SearchIndex
    return {"eq": lambda: and_(si.date_lo >= lo, si.date_hi <= hi),
            "ne": lambda: or_(si.date_lo < lo, si.date_hi > hi),
            "ge": lambda: si.date_hi > lo,
            "gt": lambda: si.date_hi > hi,
            "le": lambda: si.date_lo < hi,
            "lt": lambda: si.date_lo < lo}[prefix]()


def _token_parts(raw: str) -> tuple[str, list]:
    if "|" not in raw:
        return "code", [raw]
    system, _, code = raw.partition("|")
    if not system:
        return "no-system", [code]
    if not code:
        return "system", [system]
    return "both", [system, code]


def _token_sql(shape: str, b):
    si = SearchIndex
    if shape == "code":
        return si.value == next(b)
    if shape == "no-system":
        return and_(si.system.is_(None), si.value == next(b))
    if shape == "system":
        return si.system == next(b)
    system = next(b)
    return and_(si.system == system, si.value == next(b))


def _reference_parts(raw: str) -> tuple[str, list]:
    return "id", [raw.split("/")[-1]]


def _reference_sql(_shape: str, b):
    return SearchIndex.value == next(b)


_PARTS = {"date": _date_parts, "token": _token_parts, "reference": _reference_parts}
_SQL = {"date": _date_sql, "token": _token_sql, "reference": _reference_sql}


def plan(res_type: str, params: list[tuple[str, str]], driven: bool = False
         ) -> tuple[tuple, list]:
    """The conditions of a search as a shape (hashable: the same for every search that differs
    only in values) and the values they bind, in order; ``build`` makes the SQL of a shape.
    One condition per parameter occurrence (AND), comma values OR'ed.

    ``params`` excludes result parameters (``_count`` ...). ``_id`` is matched on the resource
    itself. Unknown parameters and unreadable values raise SearchError (the hub answers 400
    rather than silently ignoring a filter the caller relies on).

    How each reads the index matters more than anything else a search does. A parameter is an
    EXISTS on ``search_index`` per candidate resource, which is right when something else picks
    the few candidates (``driven``: a patient, an ``_id``). Otherwise the first token or
    reference parameter picks them: ``res_id IN (the index rows of that value)``, an index read
    whatever the store's size. (As an EXISTS alone, SQLite walked every resource of the type
    and probed the index for each: ``Patient?identifier=`` cost 10 ms at 20,000 resources and
    grew with the store.) Dates never drive: ``date=ge2024`` matches most of a table.
    """
    driven = driven or any(name == "_id" for name, _ in params)
    shape: list[tuple] = []
    values: list = []
    for name, raw in params:
        if name == "_id":
            ids = raw.split(",")
            shape.append(("_id", len(ids)))
            values += ids
            continue
        if name == "_lastUpdated":
            parts = [_instant_parts(v) for v in _values_of(name, raw)]
        else:
            base, _, modifier = name.partition(":")
            if modifier:
                raise SearchError(f"search modifier {modifier!r} is not supported")
            param = param_of(res_type, base)
            parts = [_PARTS[param.kind](v) for v in _values_of(name, raw)]
            drives = not driven and param.kind in ("token", "reference")
            driven = driven or drives
            name = (param.name, param.kind, drives)
        shape.append((name, tuple(p[0] for p in parts)))
        values += [v for p in parts for v in p[1]]
    return tuple(shape), values


def build(res_type: str, shape: tuple, resource_table, b) -> list:
    """The SQL conditions of a ``plan`` shape; ``b`` yields bind parameters, taken in the order
    of ``plan``'s values."""
    out = []
    for name, parts in shape:
        if name == "_id":
            out.append(resource_table.c.res_id.in_([next(b) for _ in range(parts)]))
        elif name == "_lastUpdated":
            out.append(or_(*(_instant_sql(resource_table.c.last_updated, p, b) for p in parts)))
        else:
            out.append(_param_sql(res_type, *name, parts, resource_table, b))
    return out


def _param_sql(res_type: str, name: str, kind: str, drives: bool, parts: tuple,
               resource_table, b):
    si = SearchIndex
    alternatives = or_(*(_SQL[kind](p, b) for p in parts))
    if drives:
        return resource_table.c.res_id.in_(select(si.res_id).where(
            si.res_type == res_type, si.param == name, alternatives))
    return exists(select(si.id).where(si.res_type == res_type,
                                      si.res_id == resource_table.c.res_id,
                                      si.param == name, alternatives))


def _values_of(name: str, raw: str) -> list[str]:
    values = [v for v in raw.split(",") if v != ""]
    if not values:
        raise SearchError(f"empty value for search parameter {name!r}")
    return values


def order_by(res_type: str, sort: list[tuple[str, bool]], resource_table) -> list:
    """ORDER BY clauses for ``_sort`` keys ``(name, descending)``; none: newest first by the
    type's date element. Missing values come last either way, and the id breaks ties, so pages
    of one search never overlap or skip. A parameter with several values sorts by its least
    (ascending) or greatest (descending) one; a date by the start of its range, and the type's
    ordering date by the column the default order reads (its first value's start)."""
    R = resource_table.c
    if not sort:
        return [R.sort_date.desc().nulls_last(), R.res_id]
    clauses = []
    for name, descending in sort:
        key = _sort_column(res_type, name, descending, resource_table)
        clauses.append((key.desc() if descending else key.asc()).nulls_last())
    return clauses + [R.res_id]


def _sort_column(res_type: str, name: str, descending: bool, resource_table):
    R = resource_table.c
    if name not in sort_keys(res_type):
        raise SearchError(f"_sort: {res_type} cannot be sorted by {name!r}; "
                          f"it sorts by {', '.join(sort_keys(res_type))}")
    if name == "_id":
        return R.res_id
    if name == "_lastUpdated":
        return R.last_updated
    if name == SORT_PARAM.get(res_type):
        return R.sort_date  # the column the default order uses, kept on the resource row
    si = SearchIndex
    column = si.date_lo if param_of(res_type, name).kind == "date" else si.value
    pick = func.max(column) if descending else func.min(column)
    return (select(pick).where(si.res_type == res_type, si.res_id == R.res_id,
                               si.param == name).scalar_subquery())
