"""GB/T 2260 administrative divisions (province, prefecture-level city, county-level district),
current and retired, read from the packaged table ``mappers/data/gb2260.csv`` (its source and
how it was made: ``mappers/data/README.md``).

Every place the hub reads or checks an area code or a place name uses these lookups: the address
reader (``mappers.address``), masking, a settlement's ``insuplc_admdvs``, a transfer's
``to_admdvs``. Pure and importable from ``mappers``, ``settlement`` and ``hub`` alike.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Iterator

TABLE_FILE = "gb2260.csv"
LEVELS = ("province", "city", "county")


@dataclass(frozen=True)
class Division:
    """One (code, name) of GB/T 2260. ``parent`` is the code of the city, or of the province when
    the division is directly under it (a municipality's districts), None for a province.
    ``retired`` is the year of the first list without this name for this code (None: current)."""

    code: str
    name: str
    parent: str | None
    level: str
    since: int
    retired: int | None

    @property
    def current(self) -> bool:
        return self.retired is None


class Table:
    """The divisions, by code and by name (a code may have had several names, a name may be
    several places' name: 鼓楼区 is in Nanjing and in Xuzhou)."""

    def __init__(self, divisions: list[Division]):
        self.divisions = divisions
        self.by_code: dict[str, list[Division]] = defaultdict(list)
        self.by_name: dict[str, list[Division]] = defaultdict(list)
        for d in divisions:
            self.by_code[d.code].append(d)
            self.by_name[d.name].append(d)
        # The current name first, then the most recently retired.
        for rows in self.by_code.values():
            rows.sort(key=lambda d: -(d.retired or 10_000))

    def division(self, code: str) -> Division | None:
        rows = self.by_code.get(code)
        return rows[0] if rows else None

    def parent(self, d: Division) -> Division | None:
        """The parent as it is named now (or was last named, if it is retired)."""
        return self.division(d.parent) if d.parent else None

    def ancestors(self, d: Division) -> Iterator[Division]:
        while (d := self.parent(d)) is not None:  # type: ignore[assignment]
            yield d


def _rows(text: str) -> Iterator[Division]:
    lines = (line for line in text.splitlines() if not line.startswith("#"))
    for where, row in enumerate(csv.DictReader(lines), start=2):
        if row["level"] not in LEVELS or len(row["code"]) != 6 or not row["code"].isdigit():
            raise ValueError(f"{TABLE_FILE} row {where}: bad code or level")
        yield Division(row["code"], row["name"], row["parent"] or None, row["level"], int(row["since"]),
                       int(row["retired"]) if row["retired"] else None)


@lru_cache(maxsize=1)
def table() -> Table:
    """The packaged table, read once per process."""
    text = resources.files("mappers").joinpath("data", TABLE_FILE).read_text(encoding="utf-8")
    return Table(list(_rows(text)))


def division(code: str) -> Division | None:
    """The division of a six-digit code: its current name, else its last name before it was
    retired; None for a code GB/T 2260 never had (``339999``) or anything not a code."""
    return table().division(code) if isinstance(code, str) else None


def is_current(code: str) -> bool:
    """True for a code in force today (``330421``); False for a retired (``341400``, 巢湖市, 2011)
    or unknown one."""
    d = division(code)
    return d is not None and d.current


def province_division(code: str) -> Division | None:
    """The province (or municipality) a known code is in; None for an unknown code."""
    d = division(code)
    return None if d is None else table().division(d.code[:2] + "0000")


def full_name(code: str) -> str | None:
    """The names from province down, a municipality named once: ``330421`` -> 浙江省嘉兴市嘉善县,
    ``310118`` -> 上海市青浦区; None for an unknown code."""
    d = division(code)
    if d is None:
        return None
    return "".join(a.name for a in reversed([d, *table().ancestors(d)]))
