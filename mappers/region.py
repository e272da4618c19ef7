"""The region's facts, written once and imported by ``mappers``, ``settlement`` and ``hub`` alike
(pure: no I/O but the packaged table):

- the four provinces: codes, names, province area codes, and ``province_of`` (one contract);
- GB/T 2260 administrative divisions (province, prefecture-level city, county-level district),
  current and retired, read from the packaged table ``mappers/data/gb2260.csv`` (its source and
  how it was made: ``mappers/data/README.md``), and ``area_prefix``;
- China Standard Time (``CST``) and money as the region writes it (yuan, two places, half up);
- resident ID numbers (GB 11643): normalising, masking, and ``scrub`` for every text that leaves.

Errors: ``normalize_resident_id`` raises ``mappers.errors.InvalidValue`` (its reason never holds
the number); the table reader raises ValueError naming the row of a broken table.
"""

from __future__ import annotations

import csv
import re
import unicodedata
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache
from importlib import resources
from typing import Any, Iterator

from stdnum.cn import ric
from stdnum.exceptions import ValidationError

from mappers.errors import InvalidValue

# -- the provinces ------------------------------------------------------------------------------

PROVINCES = ("SH", "JS", "ZJ", "AH")
PROVINCE_NAMES = {"SH": "上海市", "JS": "江苏省", "ZJ": "浙江省", "AH": "安徽省"}
PROVINCE_ADMDVS = {"SH": "310000", "JS": "320000", "ZJ": "330000", "AH": "340000"}
PROVINCE_OF_PREFIX = {code[:2]: province for province, code in PROVINCE_ADMDVS.items()}


def province_of(code: str) -> str | None:
    """The province (``SH``/``JS``/``ZJ``/``AH``) of a province code, an area code (its first two
    digits) or a hospital code (``H`` and its area); None for anything outside the region.

    ``"ZJ"`` -> ``"ZJ"``, ``"330421"`` -> ``"ZJ"``, ``"H31010100001"`` -> ``"SH"``,
    ``"000000"``/``""``/``"XY"`` -> None."""
    if code in PROVINCE_ADMDVS:
        return code
    digits = code[1:] if code[:1] == "H" else code
    return PROVINCE_OF_PREFIX.get(digits[:2]) if digits[:2].isdigit() else None


def area_prefix(code: str) -> str:
    """An area code as a prefix: trailing ``00`` pairs dropped.

    ``310000`` -> ``31``, ``320100`` -> ``3201``, ``310110`` -> ``310110``, ``000000`` -> ``""``
    (the whole country: a prefix of every code)."""
    while code.endswith("00"):
        code = code[:-2]
    return code


# -- time and money -------------------------------------------------------------------------------

CST = timezone(timedelta(hours=8))
CENT = Decimal("0.01")
ZERO = Decimal("0.00")


def round_money(value: Decimal) -> Decimal:
    """Rounded half up to 0.01 (``0.225`` -> ``0.23``, ``-0.001`` -> ``0.00``, never ``-0.00``)."""
    rounded = value.quantize(CENT, rounding=ROUND_HALF_UP)
    return rounded if rounded else ZERO


def money_text(value: Decimal | str | int) -> str:
    """A yuan amount as the region writes it: a two-place decimal string, rounded half up
    (``Decimal("18.6")`` -> ``"18.60"``); a float is refused (TypeError): money never passes
    through binary floating point."""
    if isinstance(value, float):
        raise TypeError("money must not be a float")
    return str(round_money(Decimal(str(value))))

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


# -- resident ID numbers (GB 11643) ------------------------------------------------------------------


def to_halfwidth(text: str) -> str:
    """Full-width ASCII (``６.８``, ``ＡＢ``) and the ideographic space to their ASCII forms."""
    return unicodedata.normalize("NFKC", text) if text.isascii() is False else text


def normalize_resident_id(value: Any) -> str:
    """A resident ID number, checked and in its 18-character form.

    Full-width characters and a lower-case ``x`` are folded; the 15-digit legacy form is widened
    (``19`` inserted after the area, the check character computed). A number that is empty, fails
    its check digit, has an impossible birth date, or is not 15/18 characters raises InvalidValue:
    it is refused, never repaired. The reason never contains the number itself.
    """
    if value is None:
        raise InvalidValue("resident ID number is empty")
    if isinstance(value, bool):
        value = str(value).lower()
    elif isinstance(value, (int, float, Decimal)):
        value = str(value)  # a spreadsheet cell read as a number
    elif not isinstance(value, str):
        raise InvalidValue(f"expected text, got {type(value).__name__}")
    text = value.strip().strip("\u3000").strip()
    if not text:
        raise InvalidValue("resident ID number is empty")
    text = to_halfwidth(text).replace(" ", "").upper()
    if len(text) == 15 and text.isdigit():
        body = text[:6] + "19" + text[6:]
        text = body + check_character(body)
    if len(text) != 18:
        raise InvalidValue(f"resident ID number has {len(text)} characters, expected 18 (or 15)")
    if not (text[:17].isdigit() and (text[17].isdigit() or text[17] == "X")):
        raise InvalidValue("resident ID number has characters other than digits and a final X")
    # stdnum's ric.validate also demands a birth place from its own list of current area codes;
    # numbers issued under since-retired area codes are real, so only date and check are checked.
    try:
        ric.get_birth_date(text)
    except ValidationError:
        raise InvalidValue("resident ID number holds an impossible birth date") from None
    if ric.calc_check_digit(text) != text[17]:
        raise InvalidValue("resident ID number fails its check character (GB 11643)")
    return text


def check_character(first17: str) -> str:
    """The GB 11643 check character of the first 17 digits (stdnum wants a placeholder 18th)."""
    return ric.calc_check_digit(first17 + "0")


def resident_id_birth_date(resident_id: str) -> date:
    return ric.get_birth_date(resident_id)


def resident_id_sex(resident_id: str) -> str:
    """FHIR gender from the sequence digit: odd for men, even for women."""
    return "male" if int(resident_id[16]) % 2 else "female"


def mask_resident_id(resident_id: str) -> str:
    """``33042119850412002X`` -> ``3304**********002X`` (the hub's masking and every log line)."""
    if len(resident_id) < 8:
        return "*" * len(resident_id)
    return resident_id[:4] + "*" * (len(resident_id) - 8) + resident_id[-4:]


# Anything that could hold a resident ID number: a run of 15 or more digits and Xs, however long
# (an ID glued to a phone number in a mangled cell is still an ID). Letters may touch it (in a
# URL it follows "%7C", an encoded |).
_ID_LIKE_RE = re.compile(r"(?<![\dXx])([\dXx]{15,})")


def scrub(text: str) -> str:
    """``text`` with everything that could hold a resident ID masked (``3304**********002X``,
    first and last four kept): for every message to a sender, every log line and every error.
    Hospital codes (11 digits) and timestamps (14) are left alone; longer runs, message ids
    among them, are masked too: privacy before convenience in a log."""
    return _ID_LIKE_RE.sub(lambda m: mask_resident_id(m.group(1)), text)
