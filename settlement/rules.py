"""The outpatient settlement rules (``world/settlement-rules.md``) as pure functions over Decimal.

"The treatment place's catalogue, the insured place's policy": given the hospital's request (the
hub-interface's ``/settlement/presettle`` body), the insured place's 1101 answer and the reference
data, ``compute_split`` answers the ten amounts of the split, or a ``Refusal``. Nothing here does
I/O, reads a clock or keeps state: the same three inputs always give the same answer.

Order of the checks (each step only runs when the ones before it passed):

1. ``validate_request``: the request itself (422, ``RequestInvalid``): known hospital, each
   line's amount = cnt x pric rounded to 0.01.
2. ``check_accum_year``: the 1101 totals must be of the visit's year (``PersonInfoInvalid``).
3. ``select_coverage``: the ``insuinfo`` entry of the request's insutype (none: ``NOT_ACTIVE``);
   ``check_insured_province``: its place agrees with the request's at province level (else 422).
4. ``check_eligibility``: rules 1-6 of section 1 -> the ratio adjustment, or ``NOT_ACTIVE`` /
   ``NOT_FILED``.
5. ``fund_terms``: the insured place's policy, age band and level ratio (none: ``NO_POLICY``).
6. ``split_lines``: each line under the treatment province's catalogue on the visit date.
7. ``apportion``: deductible, fund, annual cap, personal account, cash.

Money: ``Decimal`` only, rounded half up to 0.01 where the rules round (each line's
over-limit and pre-self-pay amounts, the fund payment); every amount of a ``Split`` has exactly
two places.
"""

# ---------------------------------------------------------------------------------------------
# Failures and refusals
#
#   ValueError                (defined in settlement.errors, the package's one tree)
#    ├── RequestInvalid       the request breaks the interface's rules (the service makes it an
#    │                        InvalidRequest); ``code`` is a key of REQUEST_ERRORS
#    │                        (LINE_AMOUNT_MISMATCH, UNKNOWN_HOSPITAL, INVALID_AMOUNT, ...),
#    │                        ``location`` the field (``lines[2].pric``)
#    ├── PersonInfoInvalid    the platform's 1101 answer cannot be used (malformed, or totals of
#    │                        another year): the platform's fault, never the hospital's
#    └── ReferenceDataError   the reference data is broken: fails at load
#
#   Refusal                   not an exception: a business outcome, answered 200 with status
#                             "refused"; ``code`` is a key of REFUSALS (NOT_ACTIVE, NOT_FILED,
#                             NO_POLICY)
# ---------------------------------------------------------------------------------------------

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from mappers.errors import InvalidValue
from mappers.region import (CST, ZERO, area_prefix, division, is_current, money_text, normalize_resident_id,
                            province_of, resident_id_birth_date, round_money)

from .errors import PersonInfoInvalid, RequestInvalid
from .reference import INSUTYPES, CatalogueItem, Hospital, Policy, Reference, default_reference

REFUSALS: Mapping[str, str] = {
    "NOT_ACTIVE": "参保状态异常，不能直接结算",
    "NOT_FILED": "未办理异地就医备案，请全额垫付后回参保地报销",
    "NO_POLICY": "参保地无适用的门诊统筹政策",
}


@dataclass(frozen=True)
class Refusal:
    """A business refusal (status ``refused``): ``code`` of REFUSALS, a Chinese message."""

    code: str
    message: str

    def as_json(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def refuse(code: str, detail: str = "") -> Refusal:
    """A Refusal with the code's standard message, and the detail after it when given."""
    return Refusal(code, f"{REFUSALS[code]}：{detail}" if detail else REFUSALS[code])


# ---------------------------------------------------------------------------------------------
# Money
# ---------------------------------------------------------------------------------------------



# Bounded so that cnt x pric always fits the default 28-digit Decimal context exactly.
_MONEY_RE = re.compile(r"^\d{1,12}(\.\d{1,2})?$")
_QUANTITY_RE = re.compile(r"^\d{1,8}(\.\d{1,4})?$")
_AREA_RE = re.compile(r"^\d{6}$")


def parse_money(value: Any, location: str) -> Decimal:
    """Request money: a JSON string ``"12.50"``/``"12.5"``/``"12"``, >= 0, at most two places.

    A JSON number is refused (the interface sends money as text, and a float has already lost
    exactness), as are signs, exponents, blanks and more than two places: ``INVALID_AMOUNT``.
    Absent (None or ``""``): ``MISSING_FIELD``.
    """
    if value is None or value == "":
        raise RequestInvalid("MISSING_FIELD", "required", location)
    if not isinstance(value, str) or not _MONEY_RE.match(value):
        # The value is not echoed: a message must never carry what might be an ID number.
        raise RequestInvalid("INVALID_AMOUNT", "not a decimal string with at most two places",
                             location)
    return Decimal(value)


def parse_quantity(value: Any, location: str) -> Decimal:
    """A quantity: a decimal string (or a JSON integer) > 0 with at most four places.

    ``"2"``, ``"0.5"``, ``2`` pass; ``0``, ``"-1"``, ``"0.00001"``, ``2.0`` (a float) fail with
    ``INVALID_QUANTITY``. Absent (None or ``""``): ``MISSING_FIELD``.
    """
    if value is None or value == "":
        raise RequestInvalid("MISSING_FIELD", "required", location)
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not _QUANTITY_RE.match(text) or Decimal(text) <= 0:
        raise RequestInvalid("INVALID_QUANTITY", "not a positive quantity with at most four places",
                             location)
    return Decimal(text)


def line_amount(cnt: Decimal, pric: Decimal) -> Decimal:
    """cnt x pric to two places, half up (``0.3333`` x ``30.00`` = 9.999 -> ``10.00``)."""
    return round_money(cnt * pric)


# ---------------------------------------------------------------------------------------------
# The request (hub-interface: POST /settlement/presettle and /settlement/settle)
# ---------------------------------------------------------------------------------------------

CERT_TYPES = {"01": "医保电子凭证", "02": "居民身份证", "03": "社会保障卡"}
VISIT_TYPES = {"outpatient": "门诊", "emergency": "急诊"}


def _text(raw: Mapping[str, Any], name: str, codes: Mapping[str, str] | None = None) -> str:
    """A required non-empty string field; with ``codes``, one of its keys."""
    value = raw.get(name)
    if value is None or value == "":
        raise RequestInvalid("MISSING_FIELD", "required", name)
    if not isinstance(value, str) or (codes is not None and value not in codes):
        allowed = f" (one of {sorted(codes)})" if codes else ""
        raise RequestInvalid("INVALID_FIELD", f"not a valid value{allowed}", name)
    return value


def parse_visit_time(value: Any) -> datetime:
    """ISO 8601 date and time, e.g. ``2024-03-15T09:30:00+08:00``; no offset means +08:00.

    The answer is in +08:00 (``2024-06-30T17:00:00Z`` -> ``2024-07-01 01:00+08:00``). A date
    without a time, or an impossible time, raises ``INVALID_VISIT_TIME``.
    """
    if value is None or value == "":
        raise RequestInvalid("MISSING_FIELD", "required", "visit_time")
    try:
        if not isinstance(value, str) or len(value) < 16:
            raise ValueError
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise RequestInvalid("INVALID_VISIT_TIME", "not an ISO 8601 date and time",
                             "visit_time") from None
    return moment.replace(tzinfo=CST) if moment.tzinfo is None else moment.astimezone(CST)


@dataclass(frozen=True)
class FeeLine:
    """A fee line: national code, quantity, unit price and amount (all Decimal)."""

    med_list_codg: str
    cnt: Decimal
    pric: Decimal
    det_item_fee_sumamt: Decimal

    @classmethod
    def from_json(cls, raw: Any, location: str = "lines[0]") -> FeeLine:
        """Parse one line; raises RequestInvalid naming ``location.<field>``.

        The amount is not compared with cnt x pric here: ``validate_request`` does that.
        """
        if not isinstance(raw, Mapping):
            raise RequestInvalid("INVALID_FIELD", "a line must be a JSON object", location)
        code = raw.get("med_list_codg")
        if not isinstance(code, str) or not code.strip():
            raise RequestInvalid("MISSING_FIELD", "required", f"{location}.med_list_codg")
        return cls(code.strip(), parse_quantity(raw.get("cnt"), f"{location}.cnt"),
                   parse_money(raw.get("pric"), f"{location}.pric"),
                   parse_money(raw.get("det_item_fee_sumamt"), f"{location}.det_item_fee_sumamt"))


@dataclass(frozen=True)
class SettleRequest:
    """The hospital's settlement request. ``visit_time`` is aware, in +08:00.

    ``mdtrt_cert_no`` is kept out of ``repr`` so that logging a request never shows an ID number.
    """

    request_key: str
    fixmedins_code: str
    mdtrt_id: str
    mdtrt_cert_type: str
    mdtrt_cert_no: str = field(repr=False)
    insuplc_admdvs: str
    insutype: str
    visit_type: str
    visit_time: datetime
    use_personal_account: bool
    lines: tuple[FeeLine, ...]

    @property
    def visit_date(self) -> date:
        """The visit's day in +08:00: it picks catalogue rows, filings, policy year and age."""
        return self.visit_time.astimezone(CST).date()

    @classmethod
    def from_json(cls, raw: Any) -> SettleRequest:
        """Parse the request body (a dict from JSON); raises RequestInvalid (422) on the first fault.

        ``use_personal_account`` absent means false; present it must be a JSON boolean. A type
        ``02`` certificate must be a valid resident ID number (15 digits are widened to 18).
        """
        if not isinstance(raw, Mapping):
            raise RequestInvalid("INVALID_BODY", "the body must be a JSON object")
        cert_type = _text(raw, "mdtrt_cert_type", CERT_TYPES)
        return cls(
            request_key=_text(raw, "request_key"), fixmedins_code=_text(raw, "fixmedins_code"),
            mdtrt_id=_text(raw, "mdtrt_id"), mdtrt_cert_type=cert_type,
            mdtrt_cert_no=_cert_no(raw, cert_type), insuplc_admdvs=_insuplc(raw),
            insutype=_text(raw, "insutype", INSUTYPES), visit_type=_text(raw, "visit_type", VISIT_TYPES),
            visit_time=parse_visit_time(raw.get("visit_time")),
            use_personal_account=_flag(raw, "use_personal_account"), lines=_lines(raw.get("lines")))


def _cert_no(raw: Mapping[str, Any], cert_type: str) -> str:
    number = _text(raw, "mdtrt_cert_no")
    if cert_type != "02":
        return number
    try:
        return normalize_resident_id(number)
    except InvalidValue as exc:  # its reason never contains the number
        raise RequestInvalid("INVALID_CERT_NO", str(exc), "mdtrt_cert_no") from None


def _insuplc(raw: Mapping[str, Any]) -> str:
    """A current GB/T 2260 code (``mappers.region``) in the region: ``339999`` is no place,
    ``341400`` (巢湖市) was retired in 2011."""
    code = _text(raw, "insuplc_admdvs")
    if not _AREA_RE.match(code) or province_of(code) is None:
        raise RequestInvalid("UNKNOWN_INSUPLC", "not an area code of the region", "insuplc_admdvs")
    if not is_current(code):
        known = division(code)
        why = f"retired in {known.retired} ({known.name})" if known else "not a GB/T 2260 area code"
        raise RequestInvalid("UNKNOWN_INSUPLC", f"{code}: {why}", "insuplc_admdvs")
    return code


def _flag(raw: Mapping[str, Any], name: str) -> bool:
    value = raw.get(name, False)
    if not isinstance(value, bool):
        raise RequestInvalid("INVALID_FIELD", "must be true or false", name)
    return value


def _lines(raw: Any) -> tuple[FeeLine, ...]:
    if raw is None:
        raise RequestInvalid("MISSING_FIELD", "required", "lines")
    if not isinstance(raw, list):
        raise RequestInvalid("INVALID_FIELD", "must be a list of lines", "lines")
    if not raw:
        raise RequestInvalid("NO_LINES", "no fee lines", "lines")
    return tuple(FeeLine.from_json(line, f"lines[{i}]") for i, line in enumerate(raw))


def check_line_amounts(lines: Iterable[FeeLine]) -> None:
    """Each line's amount must equal cnt x pric rounded half up to 0.01 (``37.2`` = ``37.20``).

    The first that does not refuses the whole request: ``LINE_AMOUNT_MISMATCH``.
    """
    for i, line in enumerate(lines):
        expected = line_amount(line.cnt, line.pric)
        if line.det_item_fee_sumamt != expected:
            raise RequestInvalid("LINE_AMOUNT_MISMATCH",
                                 f"{line.det_item_fee_sumamt} is not {line.cnt} x {line.pric} "
                                 f"= {expected}",
                                 f"lines[{i}].det_item_fee_sumamt")


def validate_request(request: SettleRequest, reference: Reference) -> Hospital:
    """The request's own rules against the reference: returns the hospital.

    Raises RequestInvalid: ``UNKNOWN_HOSPITAL`` (not in hospitals.csv), ``NO_LINES``,
    ``LINE_AMOUNT_MISMATCH``. Which hospital may call is the service's concern (403), not this.
    """
    hospital = reference.hospital(request.fixmedins_code)
    if hospital is None:
        raise RequestInvalid("UNKNOWN_HOSPITAL", "not a hospital of the region", "fixmedins_code")
    if not request.lines:
        raise RequestInvalid("NO_LINES", "no fee lines", "lines")
    check_line_amounts(request.lines)
    return hospital


# ---------------------------------------------------------------------------------------------
# The person (insurer-api: the output of 1101)
# ---------------------------------------------------------------------------------------------

_PLATFORM_MONEY_RE = re.compile(r"^-?\d{1,12}(\.\d{1,2})?$")


def _platform_money(value: Any, where: str, default: Decimal | None = None) -> Decimal:
    """Platform money: a decimal string with at most two places (a sign allowed: an overdrawn
    account). Tolerated from other implementations: a JSON integer, a Decimal, or a float read
    through its shortest repr (``1234.56``). Absent -> ``default`` when one is given.
    """
    if value is None and default is not None:
        return default
    if isinstance(value, float):
        value = repr(value)
    elif isinstance(value, (int, Decimal)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not _PLATFORM_MONEY_RE.match(value.strip()):
        raise PersonInfoInvalid(f"1101 {where}: not money with at most two places")
    return Decimal(value.strip())


def _platform_date(value: Any, where: str) -> date | None:
    """``yyyy-MM-dd`` (a longer ``yyyy-MM-dd HH:mm:ss`` keeps its day); empty -> None."""
    if value is None or value == "":
        return None
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError:
        raise PersonInfoInvalid(f"1101 {where}: not a date") from None


def _platform_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not str(value).strip().lstrip("-").isdigit():
        raise PersonInfoInvalid(f"1101 {where}: not a whole number")
    return int(str(value).strip())


def _platform_text(value: Any) -> str:
    return "" if value is None else str(value).strip()


@dataclass(frozen=True)
class Coverage:
    """An ``insuinfo`` entry. ``balc`` is the personal account (0 when the platform omits it)."""

    insutype: str
    psn_type: str
    insuplc_admdvs: str
    psn_insu_stas: str
    psn_insu_date: date | None
    balc: Decimal

    @classmethod
    def from_json(cls, raw: Mapping[str, Any], where: str = "insuinfo[0]") -> Coverage:
        area = _platform_text(raw.get("insuplc_admdvs"))
        if not _AREA_RE.match(area):
            raise PersonInfoInvalid(f"1101 {where}.insuplc_admdvs: not a six-digit area code")
        return cls(_platform_text(raw.get("insutype")), _platform_text(raw.get("psn_type")), area,
                   _platform_text(raw.get("psn_insu_stas")),
                   _platform_date(raw.get("psn_insu_date"), f"{where}.psn_insu_date"),
                   _platform_money(raw.get("balc"), f"{where}.balc", default=ZERO))


@dataclass(frozen=True)
class Filing:
    """A filing (异地就医备案): ``resident`` or ``temporary``, an area, dates (None: open end)."""

    type: str
    mdtrtarea_admvs: str
    begndate: date | None
    enddate: date | None

    @classmethod
    def from_json(cls, raw: Mapping[str, Any], where: str = "filing[0]") -> Filing:
        return cls(_platform_text(raw.get("type")), _platform_text(raw.get("mdtrtarea_admvs")),
                   _platform_date(raw.get("begndate"), f"{where}.begndate"),
                   _platform_date(raw.get("enddate"), f"{where}.enddate"))


@dataclass(frozen=True)
class Accumulation:
    """This year's totals: deductible paid, pooled fund paid, and their version (for 2207)."""

    year: int
    dedc_accu: Decimal
    fund_pay_accu: Decimal
    version: int

    @classmethod
    def from_json(cls, raw: Any) -> Accumulation:
        if not isinstance(raw, Mapping):
            raise PersonInfoInvalid("1101 accum: missing")
        return cls(_platform_int(raw.get("year"), "accum.year"),
                   _platform_money(raw.get("dedc_accu"), "accum.dedc_accu"),
                   _platform_money(raw.get("fund_pay_accu"), "accum.fund_pay_accu"),
                   _platform_int(raw.get("version"), "accum.version"))


@dataclass(frozen=True)
class PersonInfo:
    """The 1101 output. Name and ID number are kept out of ``repr`` (never in a log line)."""

    psn_no: str
    psn_name: str = field(repr=False)
    gend: str
    brdy: date
    certno: str = field(repr=False)
    psn_cert_type: str
    coverages: tuple[Coverage, ...]
    accum: Accumulation
    filings: tuple[Filing, ...]

    @classmethod
    def from_json(cls, output: Any) -> PersonInfo:
        """Parse 1101's ``output``; raises PersonInfoInvalid for what the rules cannot use.

        ``brdy`` absent: the birth date of ``certno`` when that is a resident ID number.
        """
        if not isinstance(output, Mapping) or not isinstance(output.get("baseinfo"), Mapping):
            raise PersonInfoInvalid("1101 output: no baseinfo")
        base = output["baseinfo"]
        insuinfo, filing = output.get("insuinfo") or [], output.get("filing") or []
        if not isinstance(insuinfo, list) or not isinstance(filing, list):
            raise PersonInfoInvalid("1101 output: insuinfo and filing must be lists")
        return cls(
            psn_no=_platform_text(base.get("psn_no")), psn_name=_platform_text(base.get("psn_name")),
            gend=_platform_text(base.get("gend")), brdy=_birth_date(base),
            certno=_platform_text(base.get("certno")),
            psn_cert_type=_platform_text(base.get("psn_cert_type")),
            coverages=tuple(Coverage.from_json(c, f"insuinfo[{i}]") for i, c in enumerate(insuinfo)),
            accum=Accumulation.from_json(output.get("accum")),
            filings=tuple(Filing.from_json(f, f"filing[{i}]") for i, f in enumerate(filing)))


def _birth_date(base: Mapping[str, Any]) -> date:
    brdy = _platform_date(base.get("brdy"), "baseinfo.brdy")
    if brdy is not None:
        return brdy
    try:
        return resident_id_birth_date(normalize_resident_id(base.get("certno")))
    except (InvalidValue, ValueError):
        raise PersonInfoInvalid("1101 baseinfo: no brdy, and certno gives no birth date") from None


def check_accum_year(person: PersonInfo, visit_date: date) -> None:
    """The totals must be the visit year's (1101 is asked with ``year`` = the visit's year).

    Otherwise the deductible and cap would come from another year: PersonInfoInvalid.
    """
    if person.accum.year != visit_date.year:
        raise PersonInfoInvalid(f"1101 accum is of {person.accum.year}, the visit of {visit_date.year}")


# ---------------------------------------------------------------------------------------------
# Section 1: who may settle directly
# ---------------------------------------------------------------------------------------------

ACTIVE = "1"
INSU_STATUS = {"1": "正常参保", "2": "暂停参保", "4": "终止参保"}
DEMONSTRATION_ZONE = frozenset({"310118", "320509", "330421"})  # 青浦 吴江 嘉善
FILING_ADJUSTMENTS: Mapping[str, Decimal] = {"resident": Decimal("0.00"), "temporary": Decimal("-0.10")}
EMERGENCY_ADJUSTMENT = Decimal("-0.10")


@dataclass(frozen=True)
class Eligibility:
    """May settle directly: the ratio ``adjustment`` and which rule decided (``basis``)."""

    adjustment: Decimal
    basis: str  # same_province | demonstration_zone | filing:resident | filing:temporary | emergency


def in_range(day: date, begndate: date | None, enddate: date | None) -> bool:
    """Both ends included; an empty (None) end of either side is open."""
    return (begndate is None or begndate <= day) and (enddate is None or day <= enddate)


def filing_covers(filing: Filing, area: str, day: date) -> bool:
    """The filing's area, as a prefix, begins ``area`` and its dates contain ``day``.

    A malformed area code, or one that is all zeros (an empty prefix would cover everywhere),
    covers nothing.
    """
    prefix = area_prefix(filing.mdtrtarea_admvs) if _AREA_RE.match(filing.mdtrtarea_admvs) else ""
    return bool(prefix) and area.startswith(prefix) and in_range(day, filing.begndate, filing.enddate)


def best_filing(filings: Iterable[Filing], area: str, day: date) -> Filing | None:
    """The most favourable filing covering ``area`` on ``day`` (``resident`` before
    ``temporary``); None when none does. A filing of a type other than ``resident``/``temporary``
    is not one the rules know and is ignored.
    """
    covering = [f for f in filings if f.type in FILING_ADJUSTMENTS and filing_covers(f, area, day)]
    return max(covering, key=lambda f: FILING_ADJUSTMENTS[f.type], default=None)


def select_coverage(person: PersonInfo, insutype: str) -> Coverage | None:
    """The ``insuinfo`` entry of ``insutype``: an active one first, else the first listed.

    (1101 may list an old, terminated entry beside the current one, e.g. after a transfer.)
    """
    entries = [c for c in person.coverages if c.insutype == insutype]
    return next((c for c in entries if c.psn_insu_stas == ACTIVE), entries[0] if entries else None)


def check_insured_province(request: SettleRequest, coverage: Coverage) -> None:
    """The request's ``insuplc_admdvs`` must agree with the coverage's at province level (422)."""
    if request.insuplc_admdvs[:2] != coverage.insuplc_admdvs[:2]:
        raise RequestInvalid("INSUPLC_MISMATCH",
                             f"the platform places the coverage in {coverage.insuplc_admdvs}",
                             "insuplc_admdvs")


def check_active(coverage: Coverage, day: date) -> Refusal | None:
    """Rule 1: ``psn_insu_stas`` must be ``1`` and the coverage begun by ``day`` (else NOT_ACTIVE).

    A ``psn_insu_date`` after the visit means the person was not yet insured there that day.
    """
    if coverage.psn_insu_stas != ACTIVE:
        status = INSU_STATUS.get(coverage.psn_insu_stas, f"状态{coverage.psn_insu_stas or '未知'}")
        return refuse("NOT_ACTIVE", status)
    if coverage.psn_insu_date is not None and coverage.psn_insu_date > day:
        return refuse("NOT_ACTIVE", f"参保日期{coverage.psn_insu_date}晚于就诊日期")
    return None


def check_eligibility(coverage: Coverage, filings: Iterable[Filing], hospital: Hospital,
                      day: date, visit_type: str) -> Eligibility | Refusal:
    """Section 1, rules 1-6 in order; the first that applies decides.

    1 not active -> NOT_ACTIVE; 2 same province -> 0; 3 hospital and insured place both in the
    demonstration zone -> 0 (filing exempt); 4 a covering filing -> resident 0 / temporary -0.10,
    the most favourable; 5 emergency -> -0.10; 6 otherwise NOT_FILED.
    """
    refusal = check_active(coverage, day)
    if refusal is not None:
        return refusal
    if hospital.admdvs[:2] == coverage.insuplc_admdvs[:2]:
        return Eligibility(Decimal("0.00"), "same_province")
    if hospital.admdvs in DEMONSTRATION_ZONE and coverage.insuplc_admdvs in DEMONSTRATION_ZONE:
        return Eligibility(Decimal("0.00"), "demonstration_zone")
    filing = best_filing(filings, hospital.admdvs, day)
    if filing is not None:
        return Eligibility(FILING_ADJUSTMENTS[filing.type], f"filing:{filing.type}")
    if visit_type == "emergency":
        return Eligibility(EMERGENCY_ADJUSTMENT, "emergency")
    return refuse("NOT_FILED", f"就医地{hospital.admdvs}无有效备案")


# ---------------------------------------------------------------------------------------------
# Section 2: each fee line, by the treatment place's catalogue
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LineSplit:
    """How one line's (or several lines') amount divides; the four parts sum to the amount."""

    fulamt_ownpay_amt: Decimal = ZERO
    overlmt_selfpay: Decimal = ZERO
    preselfpay_amt: Decimal = ZERO
    inscp_scp_amt: Decimal = ZERO

    @property
    def amount(self) -> Decimal:
        return self.fulamt_ownpay_amt + self.overlmt_selfpay + self.preselfpay_amt + self.inscp_scp_amt

    def __add__(self, other: LineSplit) -> LineSplit:
        return LineSplit(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


def split_line(line: FeeLine, item: CatalogueItem | None) -> LineSplit:
    """One line under its catalogue row (``item``: a CatalogueItem, or None when unlisted).

    - unlisted or category C: the whole amount is ``fulamt_ownpay_amt``;
    - a ``price_cap`` below ``pric``: ``overlmt_selfpay`` = (pric - cap) x cnt rounded half up,
      the rest of the amount is the base (a cap at or above the price changes nothing);
    - B: ``preselfpay_amt`` = base x ratio rounded half up; the rest of the base is in scope;
    - A: the whole base is in scope.
    """
    amount = line.det_item_fee_sumamt
    if item is None or item.category == "C":
        return LineSplit(fulamt_ownpay_amt=amount)
    over = ZERO
    if item.price_cap is not None and item.price_cap < line.pric:
        over = round_money((line.pric - item.price_cap) * line.cnt)
    base = amount - over
    pre = round_money(base * item.preselfpay_ratio) if item.category == "B" else ZERO
    return LineSplit(overlmt_selfpay=over, preselfpay_amt=pre, inscp_scp_amt=base - pre)


def split_lines(lines: Iterable[FeeLine], reference: Reference, province: str,
                day: date) -> LineSplit:
    """The sum of each line's split under ``province``'s catalogue row valid on ``day``."""
    total = LineSplit()
    for line in lines:
        total = total + split_line(line, reference.catalogue_item(province, line.med_list_codg, day))
    return total


# ---------------------------------------------------------------------------------------------
# Section 3: the insured place's policy
# ---------------------------------------------------------------------------------------------


def age_on(birth: date, day: date) -> int:
    """Whole years on ``day``: the difference of years, less one if (month, day) of ``day``
    comes before the birth's. A 29 February birthday thus falls on 1 March in other years
    (on 28 February 2025 a child born 29 February 2024 is still 0). Negative before birth.
    """
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


@dataclass(frozen=True)
class FundTerms:
    """The parameters one settlement uses: from the policy, the age band and the level."""

    deductible: Decimal
    ratio: Decimal
    annual_cap: Decimal


def fund_terms(policy: Policy | None, age: int, level: int) -> FundTerms | Refusal:
    """The band for ``age`` and its ratio for ``level``; NO_POLICY when the policy, the band
    (e.g. a birth date after the visit) or the level's ratio is missing.
    """
    if policy is None:
        return refuse("NO_POLICY")
    band = policy.band(age)
    if band is None:
        return refuse("NO_POLICY", f"无适用于{age}岁的年龄段")
    ratio = band.ratio(level)
    if ratio is None:
        return refuse("NO_POLICY", f"无{level}级医院的报销比例")
    return FundTerms(band.deductible, ratio, policy.annual_cap)


def effective_ratio(ratio: Decimal, adjustment: Decimal) -> Decimal:
    """``max(0, ratio + adjustment)``: an adjustment never makes the fund take money back."""
    return max(Decimal(0), ratio + adjustment)


def deductible_paid(inscp: Decimal, deductible: Decimal, dedc_accu: Decimal) -> Decimal:
    """``act_pay_dedc = min(inscp, max(0, deductible - dedc_accu))``: what of the in-scope amount
    goes to the remaining deductible (0 once the year's deductible is met or overpaid).
    """
    return min(inscp, max(ZERO, deductible - dedc_accu))


def fund_payment(inscp: Decimal, act_pay_dedc: Decimal, ratio_eff: Decimal,
                 annual_cap: Decimal, fund_pay_accu: Decimal) -> Decimal:
    """``hifp_pay = min(round((inscp - dedc) x ratio_eff, 2), max(0, cap - fund_pay_accu))``.

    Rounded half up before the cap; never more than the cap's remainder (0 once it is used up).
    """
    fund_raw = round_money((inscp - act_pay_dedc) * ratio_eff)
    return min(fund_raw, max(ZERO, annual_cap - fund_pay_accu))


def account_payment(share: Decimal, balc: Decimal, use_account: bool, insutype: str) -> Decimal:
    """``acct_pay = min(max(0, balc), share)`` when asked for and insutype is 310, else 0.

    Residents (390) have no personal account; an overdrawn (negative) balance pays nothing.
    """
    if not use_account or insutype != "310":
        return ZERO
    return min(max(ZERO, balc), share)


# ---------------------------------------------------------------------------------------------
# The answer
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """The ten amounts of the hub-interface answer's ``split``, each a Decimal of two places.

    Construction rounds half up to 0.01 (the rules have already rounded, so this only fixes the
    exponent) and refuses anything but a Decimal.
    """

    medfee_sumamt: Decimal
    fulamt_ownpay_amt: Decimal
    overlmt_selfpay: Decimal
    preselfpay_amt: Decimal
    inscp_scp_amt: Decimal
    act_pay_dedc: Decimal
    hifp_pay: Decimal
    fund_pay_sumamt: Decimal
    acct_pay: Decimal
    psn_cash_pay: Decimal

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, Decimal):
                raise TypeError(f"Split.{f.name} must be a Decimal, got {type(value).__name__}")
            object.__setattr__(self, f.name, round_money(value))

    def as_json(self) -> dict[str, str]:
        """Two-place strings in the interface's order: ``{"medfee_sumamt": "37.20", ...}``."""
        return {f.name: money_text(getattr(self, f.name)) for f in fields(self)}


def apportion(lines: LineSplit, terms: FundTerms, adjustment: Decimal, coverage: Coverage,
              accum: Accumulation, use_account: bool) -> Split:
    """Section 3's formulas over the lines' totals: deductible, fund (capped), account, cash."""
    dedc = deductible_paid(lines.inscp_scp_amt, terms.deductible, accum.dedc_accu)
    hifp = fund_payment(lines.inscp_scp_amt, dedc, effective_ratio(terms.ratio, adjustment),
                        terms.annual_cap, accum.fund_pay_accu)
    share = lines.amount - hifp
    acct = account_payment(share, coverage.balc, use_account, coverage.insutype)
    return Split(medfee_sumamt=lines.amount, fulamt_ownpay_amt=lines.fulamt_ownpay_amt,
                 overlmt_selfpay=lines.overlmt_selfpay, preselfpay_amt=lines.preselfpay_amt,
                 inscp_scp_amt=lines.inscp_scp_amt, act_pay_dedc=dedc, hifp_pay=hifp,
                 fund_pay_sumamt=hifp, acct_pay=acct, psn_cash_pay=share - acct)


def compute_split(request: SettleRequest, person_info: PersonInfo,
                  reference: Reference | None = None) -> Split | Refusal:
    """The split of one outpatient bill, or the refusal (see the module's order of checks).

    Raises RequestInvalid (422) for a request that breaks the interface's rules, including an
    ``insuplc_admdvs`` in another province than the coverage's, and PersonInfoInvalid for 1101
    totals of another year than the visit's. ``reference`` defaults to the packaged data.
    """
    reference = reference if reference is not None else default_reference()
    hospital = validate_request(request, reference)
    day = request.visit_date
    check_accum_year(person_info, day)
    coverage = select_coverage(person_info, request.insutype)
    if coverage is None:
        return refuse("NOT_ACTIVE", f"未查询到险种{request.insutype}的参保信息")
    check_insured_province(request, coverage)
    eligibility = check_eligibility(coverage, person_info.filings, hospital, day, request.visit_type)
    if isinstance(eligibility, Refusal):
        return eligibility
    policy = reference.policy(coverage.insuplc_admdvs, day.year, request.insutype)
    terms = fund_terms(policy, age_on(person_info.brdy, day), hospital.level)
    if isinstance(terms, Refusal):
        return terms
    lines = split_lines(request.lines, reference, hospital.province, day)
    return apportion(lines, terms, eligibility.adjustment, coverage, person_info.accum,
                     request.use_personal_account)
