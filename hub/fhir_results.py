"""What a FHIR request asks of its answer: the result parameters (R4 §3.1.1.5) and the hub's
handling of a parameter it does not know (R4 §3.1.1.5.7).

``asked`` splits a query string into the search criteria (``hub.search`` runs them) and the
result parameters: ``_count``/``_offset`` (paging), ``_sort``, ``_total``, ``_summary``,
``_elements`` and ``_format``. Any other parameter, or one the interaction does not take, is
unknown: ``400`` naming them all, by default and under ``Prefer: handling=strict``; under
``Prefer: handling=lenient`` a search, ``_history`` or ``$everything`` ignores them and says so
in an ``OperationOutcome`` entry of its Bundle. A read has no Bundle to say it in, so it refuses
them whatever the ``Prefer``: nothing a caller asks for is dropped in silence.

``View.shape`` is applied to each resource after ``hub.access`` has masked it and cut what it
withholds: a summary only ever removes elements, so nothing withheld comes back through one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

import orjson

from hub import search
from hub.errors import BadRequest, NotAcceptable

DEFAULT_COUNT, MAX_COUNT = 50, 500
SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
             "code": "SUBSETTED", "display": "subsetted"}

# name -> (its type in the CapabilityStatement, what the hub does with it)
RESULT_PARAMS: dict[str, tuple[str, str]] = {
    "_count": ("number", f"page size: default {DEFAULT_COUNT}, at most {MAX_COUNT}"),
    "_offset": ("number", "where a page starts (the Bundle's next link carries it)"),
    "_sort": ("string", "comma-separated keys, '-' before one for descending: the type's date "
                        "and token parameters, _id and _lastUpdated; missing values last, ties "
                        "broken by id. Default: newest first by the type's date"),
    "_total": ("token", "accurate or estimate (both counted), none (not counted: no total); "
                        "fhirpy's _totalMethod=count|estimate|none is taken as the same"),
    "_summary": ("token", "true, text, data, count or false; a resource that lost elements is "
                          "tagged SUBSETTED"),
    "_elements": ("string", "comma-separated top-level elements (a choice element by its stem, "
                            "e.g. effective); id, meta and mandatory elements are always kept"),
    "_format": ("token", "json, application/json or application/fhir+json: only JSON is served"),
}
# Another client's spelling of a result parameter -> ours, and its values in ours.
ALIASES = {"_totalMethod": ("_total", {"count": "accurate", "estimate": "estimate",
                                       "none": "none"})}
# Which result parameters each interaction takes.
TAKES = {
    "search": frozenset(RESULT_PARAMS),
    "read": frozenset({"_summary", "_elements", "_format"}),
    "everything": frozenset({"_summary", "_elements", "_format"}),
    "history": frozenset({"_count", "_offset", "_summary", "_elements", "_format"}),
}
SUMMARY_MODES = ("true", "text", "data", "count", "false")
TOTAL_MODES = ("accurate", "estimate", "none")
JSON_FORMATS = frozenset({"json", "application/json", "application/fhir+json"})
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")
_ALWAYS = frozenset({"resourceType", "id", "meta"})


@dataclass(frozen=True)
class View:
    """Which elements of each resource the answer shows (``_summary``, ``_elements``)."""

    summary: str = "false"
    elements: frozenset[str] = frozenset()

    @property
    def whole(self) -> bool:
        return self.summary in ("false", "count") and not self.elements

    def shape(self, content: bytes) -> bytes:
        """One resource's bytes with only the elements this view keeps; ``SUBSETTED`` in its
        ``meta.tag`` when any was left out (unchanged bytes otherwise)."""
        if self.whole:
            return content
        resource = orjson.loads(content)
        table = _element_table(resource.get("resourceType", ""))
        kept = {k: v for k, v in resource.items() if self._keeps(table, k.lstrip("_"))}
        if len(kept) == len(resource):
            return content
        meta = dict(kept.get("meta") or {})
        meta["tag"] = [*meta.get("tag", []), SUBSETTED]
        return orjson.dumps({**kept, "meta": meta})

    def _keeps(self, table: "_Elements", name: str) -> bool:
        if name in _ALWAYS or name in table.mandatory or table.unknown:
            return True
        if self.elements:
            return name in self.elements or table.choice.get(name) in self.elements
        return {"true": name in table.summary, "text": name == "text",
                "data": name != "text"}[self.summary]


@dataclass
class Asked:
    """A request's parameters, read: what to search, which page, in what order, shown how."""

    criteria: list[tuple[str, str]] = field(default_factory=list)
    count: int = DEFAULT_COUNT
    offset: int = 0
    sort: list[tuple[str, bool]] = field(default_factory=list)
    with_total: bool = True
    view: View = View()
    ignored: list[str] = field(default_factory=list)  # unknown, ignored under handling=lenient
    carried: list[tuple[str, str]] = field(default_factory=list)  # for the paging links


def asked(items: list[tuple[str, str]], prefer: str | None, res_type: str,
          interaction: str) -> Asked:
    """Read a query string for ``interaction`` (a key of ``TAKES``) on ``res_type``.

    Raises BadRequest naming every unknown parameter (unless ``prefer`` is lenient and the
    interaction answers a Bundle), a result parameter given twice, or a value it cannot take;
    NotAcceptable for a ``_format`` other than JSON."""
    out, results, unknown = Asked(), {}, []
    for name, value in items:
        if name in ALIASES:
            name, values = ALIASES[name]
            value = values.get(value, value)
        if name in TAKES[interaction]:
            if name in results:
                raise BadRequest(f"{name} is given twice; give it once")
            results[name] = value
        elif interaction == "search" and search.supported(res_type, name):
            out.criteria.append((name, value))
        else:
            unknown.append(name)
    if unknown:
        if handling(prefer) != "lenient" or interaction == "read":
            raise BadRequest(f"unknown or unsupported parameter(s) for {res_type} "
                             f"{interaction}: {', '.join(unknown)}")
        out.ignored = unknown
    _read_results(out, results, res_type)
    if out.view.summary == "count" and interaction != "search":
        raise BadRequest(f"_summary=count applies to searches, not to a {interaction}")
    return out


def _read_results(out: Asked, results: dict[str, str], res_type: str) -> None:
    out.count, out.offset = _whole("_count", results, DEFAULT_COUNT), _whole("_offset", results, 0)
    out.count = min(out.count, MAX_COUNT)
    if results.get("_format", "json") not in JSON_FORMATS:
        raise NotAcceptable(f"_format {results['_format']!r}: only JSON is served "
                            f"({', '.join(sorted(JSON_FORMATS))})")
    out.sort = _sort(results.get("_sort"), res_type)
    total = _one_of("_total", results, TOTAL_MODES, "accurate")
    out.with_total = total != "none"
    out.view = _view(results)
    if out.view.summary == "count":
        out.count = 0
    out.carried = [(n, v) for n, v in results.items() if n not in ("_count", "_offset")]


def _whole(name: str, results: dict[str, str], default: int) -> int:
    try:
        value = int(results.get(name, default))
    except ValueError:
        raise BadRequest(f"{name} must be a whole number, not {results[name]!r}") from None
    if value < 0:
        raise BadRequest(f"{name} must not be negative")
    return value


def _one_of(name: str, results: dict[str, str], modes: tuple[str, ...], default: str) -> str:
    value = results.get(name, default)
    if value not in modes:
        raise BadRequest(f"{name}={value!r} is not supported; it takes {', '.join(modes)}")
    return value


def _sort(raw: str | None, res_type: str) -> list[tuple[str, bool]]:
    if raw is None:
        return []
    keys = [(k[1:], True) if k.startswith("-") else (k, False) for k in raw.split(",")]
    allowed = search.sort_keys(res_type)
    for name, _ in keys:
        if name not in allowed:
            raise BadRequest(f"_sort: {res_type} is not sorted by {name!r}; it sorts by "
                             f"{', '.join(allowed)}")
    return keys


def _view(results: dict[str, str]) -> View:
    summary = _one_of("_summary", results, SUMMARY_MODES, "false")
    raw = results.get("_elements")
    if raw is None:
        return View(summary)
    if summary != "false":
        raise BadRequest("_summary and _elements cannot be combined; give one")
    names = [n.strip() for n in raw.split(",") if n.strip()]
    bad = [n for n in names if not _NAME.match(n)]
    if bad or not names:
        raise BadRequest(f"_elements takes top-level element names, not {raw!r}")
    return View("false", frozenset(names))


def handling(prefer: str | None) -> str:
    """The ``handling`` preference of a ``Prefer`` header (``""`` when none)."""
    for part in re.split(r"[,;]", prefer or ""):
        name, _, value = part.partition("=")
        if name.strip().lower() == "handling":
            return value.strip().strip('"').lower()
    return ""


def ignored_outcome(names: list[str]) -> dict:
    """The OperationOutcome a lenient answer carries about the parameters it ignored."""
    return {"resourceType": "OperationOutcome", "issue": [
        {"severity": "warning", "code": "not-supported",
         "diagnostics": f"parameter {n!r} is unknown or unsupported here and was ignored "
                        f"(Prefer: handling=lenient)"} for n in names]}


@dataclass(frozen=True)
class _Elements:
    summary: frozenset = frozenset()
    mandatory: frozenset = frozenset()
    choice: dict = field(default_factory=dict)  # valueQuantity -> value
    unknown: bool = False  # a type the model library lacks: kept whole


@lru_cache(maxsize=None)
def _element_table(res_type: str) -> _Elements:
    """The summary and mandatory top-level elements of a type, as the R4 definitions (through
    ``fhir.resources``) mark them: data, not a list kept by hand."""
    from fhir.resources.R4B import get_fhir_model_class

    try:
        model = get_fhir_model_class(res_type)
    except (KeyError, ValueError):
        return _Elements(unknown=True)
    summary, mandatory, choice = set(), set(), {}
    for info in model.model_fields.values():
        extra = info.json_schema_extra or {}
        if not extra.get("element_property"):
            continue
        if extra.get("summary_element_property"):
            summary.add(info.alias)
        if info.is_required() or extra.get("element_required") \
                or extra.get("one_of_many_required"):
            mandatory.add(info.alias)
        if extra.get("one_of_many"):
            choice[info.alias] = extra["one_of_many"]
    return _Elements(frozenset(summary), frozenset(mandatory), choice)
