"""The one reader of Chinese addresses: province, city and county-level district found by their
GB/T 2260 names (``mappers.region``), never guessed from suffix characters.

``浙江省嘉兴市嘉善县罗星街道...`` reads as 浙江省 / 嘉兴市 / 嘉善县, line ``罗星街道...``. The
province, or the province and the city, may be left out (``嘉兴市嘉善县...``, ``嘉善县...``) and are
then filled in from the table; a municipality (上海市) is province and city at once. Province and
city may be written without their 省/市 (``浙江嘉兴嘉善县``) when a further part follows. District
names hold any character (鼓楼区, 路桥区, 镇海区); a street, compound (小区) or community (社区) is
never a district because no table name is. Text with no known district yields no district.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterator

from mappers.region import LEVELS, Division, Table, table

_SEPARATORS = " \t\u3000,，、"
_COUNTRY = ("中华人民共和国", "中国")
# Short forms of province and city names (浙江, 嘉兴, 广西): the name less these endings.
_SHORT_FORM_RE = re.compile(r"(壮族自治区|回族自治区|维吾尔自治区|自治区|省|市)$")


@dataclass(frozen=True)
class Place:
    """What an address says down to its district. ``city`` is None for a municipality's
    district (its province is its city). ``line`` is the rest after the last part read, None
    when nothing follows."""

    province: Division | None = None
    city: Division | None = None
    district: Division | None = None
    line: str | None = None

    def fields(self) -> dict[str, str]:
        """FHIR ``Address`` ``state``/``city``/``district``, those known."""
        out = {}
        if self.province:
            out["state"] = self.province.name
        city = self.city or (self.province if self.province and _index().municipal(self.province) else None)
        if city:
            out["city"] = city.name
        if self.district:
            out["district"] = self.district.name
        return out

    def names(self) -> str:
        """Province, city and district names as one text, a municipality named once."""
        return "".join(d.name for d in (self.province, self.city, self.district) if d)

    def depth(self) -> int:
        return 3 if self.district else 2 if self.city else 1 if self.province else 0


class _Index:
    """The table's names (and short forms) by level and by their first two characters, each
    head's names longest first, and every division's ancestors."""

    def __init__(self, t: Table):
        self.table = t
        words: dict[str, dict[tuple[str, bool], list[Division]]] = {lv: defaultdict(list) for lv in LEVELS}
        for d in t.divisions:
            words[d.level][d.name, False].append(d)
            short = _SHORT_FORM_RE.sub("", d.name)
            if d.level != "county" and len(short) >= 2 and short != d.name:
                words[d.level][short, True].append(d)
        self.heads: dict[str, dict[str, list[tuple[str, bool, list[Division]]]]] = {}
        for level, by_word in words.items():
            heads = self.heads[level] = defaultdict(list)
            for (word, short), ds in sorted(by_word.items(), key=lambda kv: -len(kv[0][0])):
                heads[word[:2]].append((word, short, ds))
        self.ancestors = {d.code: frozenset(a.code for a in t.ancestors(d)) for d in t.divisions}
        self.with_cities = {d.parent for d in t.divisions if d.level == "city" and d.current}

    def municipal(self, province: Division) -> bool:
        return province.code not in self.with_cities

    def matches(self, text: str, pos: int, level: str,
                under: Division | None) -> Iterator[tuple[Division, int, bool]]:
        """(division, end, short form?) of each name of ``level`` at ``pos`` whose division lies
        under ``under`` (any when None), longest first; a name that stays ambiguous is skipped."""
        for word, short, ds in self.heads[level].get(text[pos:pos + 2], ()):
            if text.startswith(word, pos):
                d = _pick([d for d in ds if under is None or under.code in self.ancestors[d.code]])
                if d is not None:
                    yield d, _skip(text, pos + len(word)), short


@lru_cache(maxsize=1)
def _index() -> _Index:
    return _Index(table())


def _pick(candidates: list[Division]) -> Division | None:
    """The one division meant: a current one before retired ones; None when several codes remain
    (鼓楼区 with no city before it)."""
    pool = [d for d in candidates if d.current] or candidates
    return pool[0] if len({d.code for d in pool}) == 1 else None


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _SEPARATORS:
        pos += 1
    return pos


def _start(text: str) -> int:
    pos = _skip(text, 0)
    for country in _COUNTRY:
        if text.startswith(country, pos):
            return _skip(text, pos + len(country))
    return pos


def read_address(text: str | None) -> Place:
    """The province, city and district at the start of ``text`` (see the module docstring);
    an empty ``Place`` (line = the text) when it names none."""
    if not text:
        return Place()
    idx, start = _index(), _start(text)
    best: tuple[tuple[int, int, int], Place] = ((0, 0, 0), Place(line=text.strip() or None))
    for province in [None, *idx.matches(text, start, "province", None)]:
        pos = province[1] if province else start
        p = province[0] if province else None
        for city in [None, *idx.matches(text, pos, "city", p)]:
            cpos = city[1] if city else pos
            c = city[0] if city else None
            for district in [None, *idx.matches(text, cpos, "county", c or p)]:
                parts = [x for x in (province, city, district) if x]
                if not parts or parts[-1][2]:  # a short form must be followed by a full name
                    continue
                # The most detailed, then the longest reading; then the one of current names
                # (重庆市渝中区: the municipality's, not Sichuan's city of before 1997).
                score = (3 if district else 2 if city else 1, parts[-1][1], sum(x[0].current for x in parts))
                if score > best[0]:
                    best = (score, _place(p, c, district[0] if district else None, text[parts[-1][1]:]))
    return best[1]


def _place(province: Division | None, city: Division | None, district: Division | None, rest: str) -> Place:
    """Fill in the parts left out from the table (嘉善县 -> 浙江省 嘉兴市)."""
    t = _index().table
    lowest = district or city or province
    for a in t.ancestors(lowest) if lowest else ():
        if a.level == "city" and city is None:
            city = a
        elif a.level == "province" and province is None:
            province = a
    return Place(province, city, district, rest.strip() or None)


def fhir_address(text: str, **extra: Any) -> dict[str, Any]:
    """A FHIR ``Address`` read from free text: ``text`` as written, ``state``/``city``/
    ``district`` as the table names them, ``line`` the rest after them; ``extra`` fields
    (``use``, ``country``, ``postalCode``) added when not None."""
    place = read_address(text)
    address: dict[str, Any] = {"text": text, **place.fields()}
    if place.line:
        address["line"] = [place.line]
    address.update({k: v for k, v in extra.items() if v is not None})
    return address


def best_place(*texts: str | None) -> Place:
    """The most detailed of the places the texts name (a stored address's text, its fields)."""
    return max((read_address(t) for t in texts), key=Place.depth, default=Place())

