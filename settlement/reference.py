"""The settlement reference data: hospitals, each province's catalogue, each insured place's policy.

The region publishes three files (``world/data``); a copy ships in this package's ``data/`` folder
and is what ``default_reference()`` loads. ``load_reference(folder)`` loads another copy (tests,
or a newer publication dropped in by operations).

Everything money or ratio is a ``Decimal`` parsed from text: the CSVs are read as text and
``policy.json`` with ``parse_float=Decimal`` so no value ever passes through binary floating point.

Loading checks the data and raises ``ReferenceDataError`` (naming file, row and field) for anything
the rules could not use: an unknown category, a ratio outside 0..1, a reversed date range, a
policy band without a ratio. Broken data is a startup failure, never a wrong split later.

Lookups:
- ``Reference.hospital(code)`` -> ``Hospital | None``
- ``Reference.catalogue_item(province, code, visit_date)`` -> ``CatalogueItem | None``: the row
  valid on that date (both ends included, an empty end open); several valid rows: the latest
  ``begndate``.
- ``Reference.policy(insured_place, year, insutype)`` -> ``Policy | None``; the insured place is
  a province code (``ZJ``) or any area code of it (``330421``): only the first two digits count.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from mappers.region import PROVINCES, is_current, province_of

from .errors import ReferenceDataError

HOSPITALS_FILE = "hospitals.csv"
CATALOGUE_FILE = "catalogue.csv"
POLICY_FILE = "policy.json"


CATEGORIES = {"A": "甲类", "B": "乙类", "C": "丙类"}
HOSPITAL_LEVELS = frozenset({1, 2, 3})
INSUTYPES = {"310": "职工基本医疗保险", "390": "城乡居民基本医疗保险"}

_AREA_RE = re.compile(r"^\d{6}$")
_HOSPITAL_CODE_RE = re.compile(r"^H\d{11}$")
_DECIMAL_RE = re.compile(r"^\d+(\.\d+)?$")


# ---------------------------------------------------------------------------------------------
# The data types
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hospital:
    """A row of hospitals.csv; ``province`` is derived from ``admdvs``."""

    code: str
    name: str
    admdvs: str
    level: int
    province: str


@dataclass(frozen=True)
class CatalogueItem:
    """A row of one province's catalogue, valid from ``begndate`` to ``enddate`` (None: open).

    ``preselfpay_ratio`` is 0 for categories A and C (the CSV leaves it empty); ``price_cap`` is a
    per-unit cap or None.
    """

    province: str
    code: str
    name: str
    kind: str
    unit: str
    category: str
    preselfpay_ratio: Decimal
    price_cap: Decimal | None
    begndate: date
    enddate: date | None

    def valid_on(self, day: date) -> bool:
        """Both ends included; an open end (None) never ends."""
        return self.begndate <= day and (self.enddate is None or day <= self.enddate)


@dataclass(frozen=True)
class AgeBand:
    """Ages ``min_age``..``max_age`` inclusive (whole years), their deductible and ratio by level."""

    min_age: int
    max_age: int
    deductible: Decimal
    ratios: tuple[tuple[int, Decimal], ...]  # (hospital level, ratio), sorted by level

    def covers(self, age: int) -> bool:
        return self.min_age <= age <= self.max_age

    def ratio(self, level: int) -> Decimal | None:
        """The pooled-fund ratio at a hospital of that level; None when the band names none."""
        return dict(self.ratios).get(level)


@dataclass(frozen=True)
class Policy:
    """One insured place's outpatient parameters for one year and insurance type."""

    insuplc: str
    year: int
    insutype: str
    annual_cap: Decimal
    bands: tuple[AgeBand, ...]

    def band(self, age: int) -> AgeBand | None:
        """The first band covering ``age``; None when none does (e.g. a negative age)."""
        return next((b for b in self.bands if b.covers(age)), None)


@dataclass(frozen=True)
class Reference:
    """All three files, indexed for the lookups the rules make."""

    hospitals: Mapping[str, Hospital]
    catalogue: Mapping[tuple[str, str], tuple[CatalogueItem, ...]]
    policies: Mapping[tuple[str, int, str], Policy]

    def hospital(self, code: str) -> Hospital | None:
        return self.hospitals.get(code)

    def catalogue_item(self, province: str, code: str, visit_date: date) -> CatalogueItem | None:
        """The row of ``province``'s catalogue for ``code`` valid on ``visit_date``.

        Several valid rows: the one with the latest ``begndate`` (a later publication supersedes
        an earlier one whose end was left open). None: not listed on that date.
        """
        rows = [r for r in self.catalogue.get((province, code), ()) if r.valid_on(visit_date)]
        return max(rows, key=lambda r: r.begndate, default=None)

    def policy(self, insured_place: str, year: int, insutype: str) -> Policy | None:
        """The policy of the insured province (``ZJ`` or any ``33xxxx``), year and insutype."""
        province = province_of(insured_place)
        return self.policies.get((province, year, insutype)) if province else None


# ---------------------------------------------------------------------------------------------
# Parsing helpers: each raises ReferenceDataError naming where
# ---------------------------------------------------------------------------------------------


def _decimal(text: Any, where: str) -> Decimal:
    """A non-negative decimal from text (or a Decimal from policy.json); never from a float."""
    if isinstance(text, Decimal):
        value = text
    elif isinstance(text, str) and _DECIMAL_RE.match(text.strip()):
        value = Decimal(text.strip())
    else:
        raise ReferenceDataError(f"{where}: not a non-negative decimal: {text!r}")
    if not value.is_finite() or value < 0:
        raise ReferenceDataError(f"{where}: not a non-negative decimal: {text!r}")
    return value


def _ratio(text: Any, where: str) -> Decimal:
    value = _decimal(text, where)
    if value > 1:
        raise ReferenceDataError(f"{where}: a ratio must lie within 0..1, got {value}")
    return value


def _date(text: str | None, where: str) -> date | None:
    """``yyyy-MM-dd``; empty -> None (an open end)."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ReferenceDataError(f"{where}: not a date yyyy-MM-dd: {text!r}") from None


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit():
        raise ReferenceDataError(f"{where}: not a whole number: {value!r}")
    return int(value)


def _csv_rows(text: str, name: str, columns: Iterable[str]) -> list[tuple[str, dict[str, str]]]:
    """The rows of a CSV with its header checked; each with its location ``file:line``."""
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    missing = set(columns) - set(reader.fieldnames or ())
    if missing:
        raise ReferenceDataError(f"{name}: missing columns {sorted(missing)}")
    return [(f"{name}:{reader.line_num}", {k: (v or "").strip() for k, v in row.items() if k})
            for row in reader]


# ---------------------------------------------------------------------------------------------
# The three files
# ---------------------------------------------------------------------------------------------


def parse_hospitals(text: str) -> dict[str, Hospital]:
    """hospitals.csv -> hospitals by code. A duplicate code, or an area that is not a current
    GB/T 2260 code of the region (``mappers.region``), fails."""
    hospitals: dict[str, Hospital] = {}
    for where, row in _csv_rows(text, HOSPITALS_FILE, ("fixmedins_code", "name", "admdvs", "level")):
        code, admdvs = row["fixmedins_code"], row["admdvs"]
        if not _HOSPITAL_CODE_RE.match(code) or code in hospitals:
            raise ReferenceDataError(f"{where}: bad or repeated hospital code {code!r}")
        province = province_of(admdvs) if _AREA_RE.match(admdvs) else None
        if province is None or not is_current(admdvs):
            raise ReferenceDataError(f"{where}: area {admdvs!r} is not a current GB/T 2260 code of the region")
        level = _int(row["level"], f"{where} level")
        if level not in HOSPITAL_LEVELS:
            raise ReferenceDataError(f"{where}: level {level} is not 1, 2 or 3")
        hospitals[code] = Hospital(code, row["name"], admdvs, level, province)
    return hospitals


def _catalogue_item(where: str, row: dict[str, str]) -> CatalogueItem:
    category = row["category"]
    if category not in CATEGORIES:
        raise ReferenceDataError(f"{where}: category {category!r} is not A, B or C")
    if row["province"] not in PROVINCES:
        raise ReferenceDataError(f"{where}: province {row['province']!r} is not in the region")
    ratio = (_ratio(row["preselfpay_ratio"], f"{where} preselfpay_ratio")
             if row["preselfpay_ratio"] else Decimal(0))
    cap = _decimal(row["price_cap"], f"{where} price_cap") if row["price_cap"] else None
    begndate = _date(row["begndate"], f"{where} begndate")
    enddate = _date(row["enddate"], f"{where} enddate")
    if begndate is None or (enddate is not None and enddate < begndate):
        raise ReferenceDataError(f"{where}: begndate missing or after enddate")
    return CatalogueItem(row["province"], row["med_list_codg"], row["name"], row["kind"],
                         row["unit"], category, ratio, cap, begndate, enddate)


def parse_catalogue(text: str) -> dict[tuple[str, str], tuple[CatalogueItem, ...]]:
    """catalogue.csv -> rows by (province, national code), in begndate order."""
    columns = ("province", "med_list_codg", "name", "kind", "unit", "category",
               "preselfpay_ratio", "price_cap", "begndate", "enddate")
    grouped: dict[tuple[str, str], list[CatalogueItem]] = {}
    for where, row in _csv_rows(text, CATALOGUE_FILE, columns):
        item = _catalogue_item(where, row)
        grouped.setdefault((item.province, item.code), []).append(item)
    return {k: tuple(sorted(v, key=lambda r: r.begndate)) for k, v in grouped.items()}


def _band(raw: dict[str, Any], where: str) -> AgeBand:
    ratios = raw.get("ratio")
    if not isinstance(ratios, dict) or not ratios:
        raise ReferenceDataError(f"{where}: a band needs a ratio by hospital level")
    pairs = tuple(sorted((_int(level, f"{where} ratio level"), _ratio(value, f"{where} ratio {level}"))
                         for level, value in ratios.items()))
    band = AgeBand(_int(raw.get("min_age"), f"{where} min_age"),
                   _int(raw.get("max_age"), f"{where} max_age"),
                   _decimal(raw.get("deductible"), f"{where} deductible"), pairs)
    if band.max_age < band.min_age:
        raise ReferenceDataError(f"{where}: max_age below min_age")
    return band


def _policy(raw: dict[str, Any], where: str) -> Policy:
    if raw.get("insuplc") not in PROVINCES or raw.get("insutype") not in INSUTYPES:
        raise ReferenceDataError(f"{where}: unknown insuplc or insutype")
    bands = tuple(_band(b, f"{where} bands[{i}]") for i, b in enumerate(raw.get("bands") or ()))
    if not bands:
        raise ReferenceDataError(f"{where}: no age bands")
    return Policy(raw["insuplc"], _int(raw.get("year"), f"{where} year"), raw["insutype"],
                  _decimal(raw.get("annual_cap"), f"{where} annual_cap"), bands)


def parse_policies(text: str) -> dict[tuple[str, int, str], Policy]:
    """policy.json (floats read as Decimal) -> policies by (province, year, insutype); no repeats."""
    try:
        document = json.loads(text, parse_float=Decimal)
    except ValueError as exc:
        raise ReferenceDataError(f"{POLICY_FILE}: not JSON ({exc})") from None
    policies: dict[tuple[str, int, str], Policy] = {}
    for i, raw in enumerate(document.get("policies") or ()):
        policy = _policy(raw, f"{POLICY_FILE} policies[{i}]")
        key = (policy.insuplc, policy.year, policy.insutype)
        if key in policies:
            raise ReferenceDataError(f"{POLICY_FILE} policies[{i}]: repeats {key}")
        policies[key] = policy
    return policies


def _read(folder: Path | None, name: str) -> str:
    if folder is None:
        return resources.files(__package__).joinpath("data", name).read_text(encoding="utf-8")
    return (Path(folder) / name).read_text(encoding="utf-8")


def load_reference(folder: str | Path | None = None) -> Reference:
    """The three files from ``folder`` (None: the copy shipped in this package), checked.

    Raises ReferenceDataError for unusable data and OSError for a missing file.
    """
    path = Path(folder) if folder is not None else None
    return Reference(hospitals=parse_hospitals(_read(path, HOSPITALS_FILE)),
                     catalogue=parse_catalogue(_read(path, CATALOGUE_FILE)),
                     policies=parse_policies(_read(path, POLICY_FILE)))


@lru_cache(maxsize=1)
def default_reference() -> Reference:
    """The packaged reference, loaded once per process (it is immutable)."""
    return load_reference()

