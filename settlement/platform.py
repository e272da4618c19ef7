"""The hub's one client of the provinces' insurance platforms (``world/insurer-api.md``).

Nothing else in the hub calls a platform. Every call is ``POST {base}/api/{infno}`` with the
envelope built here; the answer is classified into exactly one outcome:

    PlatformError                  any failure of a platform call
    ├── PlatformNotConfigured      no base URL for that province: nothing sent
    ├── NotSent                    connection refused, DNS, connect timeout, no free connection:
    │                              nothing left the hub, sending again is always safe
    ├── OutcomeUnknown             sent, no usable answer: read timeout, reset or close after
    │   │                          sending, 5xx, an answer that is not JSON or whose infcode is
    │   │                          neither 0 nor -1;
    │   │                          the platform may have processed it
    │   └── PlatformBusy           HTTP 429/502/503/504 (maintenance, overload), with
    │                              ``retry_after`` seconds when the platform sent Retry-After
    └── Refused                    a business refusal (infcode != 0): ``err_code``, ``err_msg``,
                                   ``output``; final for that input, never resent as it is

(The classes are drawn with the package's other exceptions in ``settlement.errors``.)

``PlatformBusy`` is an ``OutcomeUnknown``, not a ``NotSent``: the contract lists 429/502/503/504
among the answers after which "the outcome may be unknown", and the hub must work against any
platform that keeps the contract, so a 503 is never taken as proof that nothing was processed.

Retries (tenacity, inside ``call``) happen only where resending cannot settle twice:

- ``NotSent``: always (nothing arrived).
- ``OutcomeUnknown``: under the same msgid when the province deduplicates msgids
  (``DEDUPLICATES``: SH, JS, ZJ), or the transaction cannot commit twice whatever the province
  (``RESEND_SAFE``: reads, 5205, the void of a setl_id, the transfer steps keyed by
  ``transfer_id``). On AH a 2207 or 2601 is never resent: the caller asks 5205 first and sends
  again under a new msgid only when 5205 says it was not processed.
- A ``PlatformBusy`` whose Retry-After exceeds ``max_retry_after`` is raised at once (the caller
  schedules the retry; a call does not sleep through minutes of maintenance).
- What a call raises is what the caller may rely on over all its attempts: when an earlier
  attempt ended ``OutcomeUnknown`` and the last ``NotSent``, it raises ``OutcomeUnknown``.

Logs name the province, infno and msgid, never an input: inputs hold resident ID numbers. A
platform's ``err_msg`` is scrubbed (``mappers.common.scrub``, the hub's one mask) of anything
that could hold a resident ID number before it reaches an exception.
"""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import httpx
import orjson
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_exponential, wait_random

from mappers.region import CST, PROVINCE_ADMDVS, PROVINCES, money_text, province_of, scrub

from .errors import NotSent, OutcomeUnknown, PlatformBusy, PlatformError, PlatformNotConfigured, Refused
from .transport import AiohttpTransport

log = logging.getLogger(__name__)

# Province code -> the platform's own area code (insurer-api.md, first table).
# Whether the province keeps each msgid for 72 h and answers a repeat with the first answer.
DEDUPLICATES: dict[str, bool] = {"SH": True, "JS": True, "ZJ": True, "AH": False}
# Transactions a repeat of which cannot commit anything twice on any platform: reads, outcome
# queries, the void of one setl_id ("voiding a voided settlement returns the same answer"), and
# the transfer steps ("keyed by transfer_id ... on every province"). 2207 and 2601 are not.
RESEND_SAFE: dict[str, bool] = {
    "1101": True, "5205": True, "3201": True, "3202": True, "2208": True,
    "4101": True, "4102": True, "4201": True, "4103": True,
    "2207": False, "2601": False,
}
BUSY_STATUSES = frozenset({429, 502, 503, 504})
# The answer's infcode (a number or a string of one): 0 success, -1 a business refusal.
INFCODES: dict[str, str] = {"0": "ok", "-1": "refused"}
HUB_PARTY = "YRDHUB"
ENVELOPE_CONSTANTS = {"recer_sys_code": "YRDHUB", "infver": "V1.0", "opter_type": "1"}
JSON_HEADERS = {"Content-Type": "application/json; charset=utf-8"}
DEFAULT_TIMEOUT = httpx.Timeout(connect=3.0, read=30.0, write=10.0, pool=10.0)
# The ten amounts of a 2207 split, and the three that reconciliation compares.
SPLIT_FIELDS = ("medfee_sumamt", "fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt", "inscp_scp_amt",
                "act_pay_dedc", "hifp_pay", "acct_pay", "psn_cash_pay", "fund_pay_sumamt")
RECON_FIELDS = ("medfee_sumamt", "fund_pay_sumamt", "acct_pay")


# ---------------------------------------------------------------------------------------------
# Envelope pieces
# ---------------------------------------------------------------------------------------------


def province_of_place(place: str) -> str:
    """``SH``/``JS``/``ZJ``/``AH`` from a province code or a six-digit area code (``province_of``);
    ValueError for anything else: a place outside the region, or a hospital code."""
    valid = place in PROVINCES or (isinstance(place, str) and len(place) == 6 and place.isdigit())
    province = province_of(place) if valid else None
    if province is None:
        raise ValueError(f"not a province or area code of the region: {place!r}")
    return province


def area_of(place: str) -> str:
    """The area code to put in an envelope: a province code becomes its ``xx0000``."""
    return PROVINCE_ADMDVS.get(place, place)


def party_code(code: str) -> str:
    """The 12-character party of a msgid: a hospital code as it is, ``YRDHUB`` padded with 0."""
    padded = code.rjust(12, "0")
    if len(padded) != 12:
        raise ValueError(f"party code longer than 12 characters: {code!r}")
    return padded


def to_cst(when: datetime) -> datetime:
    """An aware time in +08:00; a naive one is taken to be +08:00 already."""
    return when.replace(tzinfo=CST) if when.tzinfo is None else when.astimezone(CST)


def new_msgid(party: str, now: datetime, seq: int) -> str:
    """``party`` (12, see ``party_code``) + ``now`` as ``yyyyMMddHHmmss`` (+08:00) + ``seq`` as 4
    digits: 30 characters. ValueError when ``seq`` is outside 0..9999 (the caller's sequence
    must then wait for the next second)."""
    if not 0 <= seq <= 9999:
        raise ValueError(f"msgid sequence out of range 0..9999: {seq}")
    return f"{party_code(party)}{to_cst(now):%Y%m%d%H%M%S}{seq:04d}"


def fmt_time(when: datetime) -> str:
    return f"{to_cst(when):%Y-%m-%d %H:%M:%S}"


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - (now or datetime.now(when.tzinfo))).total_seconds())


# ---------------------------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------------------------


# next_msgid's sequence, per (party, second): one for the process, shared by every client.
_SEQ_LOCK = threading.Lock()
_SEQ: dict[tuple[str, str], tuple[int, itertools.count]] = {}  # -> (random start, issued)


def _unobserved(province: str, infno: str, seconds: float) -> None:
    """The observer of a client nobody watches."""


class PlatformClient:
    """The hub's client of the four platforms: per province, up to ``max_connections`` pooled
    connections (``settlement.transport``).

    ``base_urls``: province -> base URL (``YRDHUB_INSURER_<P>_URL``); a missing or empty one
    makes that province's calls raise ``PlatformNotConfigured``. ``sender_code``: the hub's party
    (``YRDHUB``). ``attempts``: sends per call at most (retries only where safe, see the module
    docstring). ``max_retry_after``: the longest Retry-After honoured inside a call.
    ``transport``: an httpx transport (tests). ``observe``: called with (province, infno,
    seconds) after every send, answered or not (the hub passes its histogram; the domain imports
    no metrics). Use as ``async with`` or call ``aclose``.
    """

    def __init__(self, base_urls: Mapping[str, str | None], *, sender_code: str = HUB_PARTY,
                 timeout: httpx.Timeout | float = DEFAULT_TIMEOUT, attempts: int = 3,
                 backoff: float = 0.2, max_backoff: float = 2.0, max_retry_after: float = 5.0,
                 max_connections: int = 256, transport: httpx.AsyncBaseTransport | None = None,
                 observe: Callable[[str, str, float], None] | None = None):
        self.base_urls = {p: u.rstrip("/") for p, u in base_urls.items() if u}
        self.sender_code = sender_code
        self.attempts = attempts
        self.max_retry_after = max_retry_after
        self._observe = observe or _unobserved
        # Exponential with jitter, so that 200 calls failing together do not come back together.
        self._backoff_wait = wait_exponential(multiplier=backoff, max=max_backoff) + wait_random(0, backoff)
        # Requests go straight to the transport (with httpx's timeouts): the client layer (URL
        # building, cookies, auth and redirect handling) was a third of a call's CPU.
        self._timeout = {"timeout": (timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)).as_dict()}
        self._urls: dict[tuple[str, str], httpx.URL] = {}
        if transport is not None:  # the caller's (tests), shared by the provinces
            self._transports = {p: transport for p in PROVINCE_ADMDVS}
        else:
            # One TLS context for every province (making one loads the CA bundle: ~20 ms of CPU).
            tls = httpx.create_ssl_context(trust_env=False)
            self._transports = {p: AiohttpTransport(max_connections=max_connections, verify=tls)
                                for p in PROVINCE_ADMDVS}

    async def aclose(self) -> None:
        for transport in set(self._transports.values()):
            await transport.aclose()

    async def __aenter__(self) -> PlatformClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- msgids and envelopes -------------------------------------------------------------------

    def next_msgid(self, party: str | None = None, now: datetime | None = None) -> str:
        """A fresh msgid for ``party`` (default the hub), unique within this process: the
        sequence is the module's, so two clients in one process (the service's and a
        reconciliation's, say) do not hand out the same msgid in the same second. Each
        (party, second) starts at a random number, so another hub process clashes seldom (the
        platform then refuses ``MSGID_REUSED``, and a read may simply ask again).

        Not unique across processes or restarts within the same second: a caller that must
        find the message again after a crash (2207, transfers) should persist it. ValueError
        past 10,000 a second.
        """
        now = to_cst(now or datetime.now(CST))
        party = party_code(party or self.sender_code)
        stamp = f"{now:%Y%m%d%H%M%S}"
        global _SEQ
        with _SEQ_LOCK:
            if len(_SEQ) > 1000:  # forget past seconds
                _SEQ = {k: v for k, v in _SEQ.items() if k[1] == stamp}
            start, count = _SEQ.setdefault((party, stamp), (random.randrange(10_000), itertools.count()))
            issued = next(count)
        if issued >= 10_000:
            raise ValueError(f"more than 10,000 msgids for {party} in one second")
        return new_msgid(party, now, (start + issued) % 10_000)

    def envelope(self, infno: str, input: Mapping[str, Any], msgid: str, *, insuplc_admdvs: str,
                 mdtrtarea_admvs: str | None = None, fixmedins_code: str | None = None,
                 now: datetime | None = None) -> dict[str, Any]:
        """The request body, fields in the order of insurer-api.md. The hub's own calls carry
        the hub's party code as ``fixmedins_code`` and the insured place as treatment area."""
        return {
            "infno": infno, "msgid": msgid,
            "mdtrtarea_admvs": area_of(mdtrtarea_admvs or insuplc_admdvs),
            "insuplc_admdvs": area_of(insuplc_admdvs),
            **ENVELOPE_CONSTANTS,
            "inf_time": fmt_time(now or datetime.now(CST)),
            "fixmedins_code": fixmedins_code or party_code(self.sender_code),
            "input": dict(input),
        }

    # -- the call -------------------------------------------------------------------------------

    def may_resend(self, province: str, infno: str, exc: BaseException) -> bool:
        """Whether ``exc`` may be followed by the same message again (see the module docstring)."""
        if isinstance(exc, NotSent):
            return True
        if isinstance(exc, PlatformBusy) and (exc.retry_after or 0) > self.max_retry_after:
            return False
        if isinstance(exc, OutcomeUnknown):
            return DEDUPLICATES[province] or RESEND_SAFE.get(infno, False)
        return False

    def _wait(self, state: RetryCallState) -> float:
        base = self._backoff_wait(state)
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None) or 0.0
        return max(base, retry_after)

    async def call(self, place: str, infno: str, input: Mapping[str, Any], msgid: str, *,
                   insuplc_admdvs: str | None = None, mdtrtarea_admvs: str | None = None,
                   fixmedins_code: str | None = None) -> dict[str, Any]:
        """Send one message to the platform of ``place`` (a province code or any area code of it)
        and return the answer's ``output``.

        ``insuplc_admdvs`` defaults to ``place`` as an area. The envelope (and its ``inf_time``)
        is built once: a resend is the same message byte for byte. Raises ``Refused``,
        ``PlatformNotConfigured``, ``NotSent``, ``OutcomeUnknown`` / ``PlatformBusy`` once the
        safe retries are spent (or at once when no retry is safe).
        """
        province = province_of_place(place)
        base = self.base_urls.get(province)
        if base is None:
            raise PlatformNotConfigured(f"no platform URL configured for {province} "
                                        f"(YRDHUB_INSURER_{province}_URL)", province=province,
                                        infno=infno, msgid=msgid)
        body = orjson.dumps(self.envelope(infno, input, msgid, insuplc_admdvs=insuplc_admdvs or area_of(place),
                                          mdtrtarea_admvs=mdtrtarea_admvs, fixmedins_code=fixmedins_code))
        url = f"{base}/api/{infno}"
        try:
            return await self._send_once(province, infno, msgid, url, body)
        except PlatformError as exc:
            if self.attempts <= 1 or not self.may_resend(province, infno, exc):
                raise
            first = exc
        return await self._resend(province, infno, msgid, url, body, first)

    async def _resend(self, province: str, infno: str, msgid: str, url: str, body: bytes,
                      first: PlatformError) -> dict[str, Any]:
        """The same message again after a first send failed with ``first`` (which ``may_resend``
        allows), under tenacity: ``first`` is its attempt 1, so the waits, the stop and the
        retry test are tenacity's throughout.

        The first send goes without it because an AsyncRetrying lives in reference cycles (with
        its call state, futures and locks, some 40 objects a call): made for every call, they
        left the cycle collector 14,000 objects to free every few hundred calls, a 20-30 ms
        pause of the event loop (measured with gc.callbacks under ``bench/settle.py``).
        """
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.attempts), wait=self._wait, reraise=True,
            retry=retry_if_exception(lambda exc: self.may_resend(province, infno, exc)),
            before_sleep=lambda s: log.warning("resending %s %s msgid=%s after %s", province, infno, msgid,
                                               type(s.outcome.exception()).__name__))
        maybe_sent: list[OutcomeUnknown] = [first] if isinstance(first, OutcomeUnknown) else []
        failed: PlatformError | None = first
        try:
            async for attempt in retrying:
                with attempt:
                    if failed is not None:  # attempt 1: the send that already failed
                        exc, failed = failed, None
                        raise exc
                    try:
                        return await self._send_once(province, infno, msgid, url, body)
                    except OutcomeUnknown as exc:
                        maybe_sent.append(exc)
                        raise
        except NotSent as exc:
            # The last attempt never left, but an earlier one may have been processed: what the
            # caller knows is the weaker of the two.
            if maybe_sent:
                raise OutcomeUnknown(f"{province} {infno}: an earlier attempt may have been processed "
                                     f"({type(maybe_sent[0].__cause__ or maybe_sent[0]).__name__}), the last "
                                     f"was not sent", province=province, infno=infno, msgid=msgid) from exc
            raise
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    async def reachable(self, province: str, timeout: float = 2.0) -> bool:
        """Whether the province's platform accepts a TCP connection (for ``/healthz``); False
        when unconfigured. Sends no message: the contract has no health transaction."""
        base = self.base_urls.get(province)
        if base is None:
            return False
        url = httpx.URL(base)
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            _reader, writer = await asyncio.wait_for(asyncio.open_connection(url.host, port), timeout)
        except (OSError, asyncio.TimeoutError):
            return False
        writer.close()
        return True

    async def _send_once(self, province: str, infno: str, msgid: str, url: str, body: bytes) -> dict[str, Any]:
        where = {"province": province, "infno": infno, "msgid": msgid}
        target = self._urls.get((province, url))
        if target is None:
            target = self._urls[(province, url)] = httpx.URL(url)
        request = httpx.Request("POST", target, headers=JSON_HEADERS, content=body, extensions=self._timeout)
        started = time.perf_counter()
        try:
            response = await self._transports[province].handle_async_request(request)
            try:
                await response.aread()
            finally:
                await response.aclose()
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol) as exc:
            # Connecting failed: not a byte of the message reached the platform.
            raise NotSent(f"{province} {infno} not sent: {type(exc).__name__}", **where) from exc
        except httpx.TransportError as exc:
            # Read timeout, reset or close after the request went out, a write cut short.
            raise OutcomeUnknown(f"{province} {infno} sent, no answer: {type(exc).__name__}", **where) from exc
        finally:
            self._observe(province, infno, time.perf_counter() - started)
        return self._read_answer(response, where)

    def _read_answer(self, response: httpx.Response, where: dict[str, str]) -> dict[str, Any]:
        label = f"{where['province']} {where['infno']}"
        if response.status_code in BUSY_STATUSES:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise PlatformBusy(f"{label}: HTTP {response.status_code}, retry after {retry_after}",
                               status_code=response.status_code, retry_after=retry_after, **where)
        if response.status_code != 200:
            # Not an answer of the contract (every business outcome is 200): nothing to rely on.
            raise OutcomeUnknown(f"{label}: unexpected HTTP {response.status_code}", **where)
        try:
            answer = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise OutcomeUnknown(f"{label}: answer is not JSON", **where) from None
        return interpret(answer, **where)

    # -- typed helpers, one per transaction ------------------------------------------------------

    async def person_info(self, insuplc_admdvs: str, cert_type: str, cert_no: str, *, year: int | None = None,
                          msgid: str | None = None, mdtrtarea_admvs: str | None = None,
                          fixmedins_code: str | None = None) -> dict[str, Any]:
        """1101: person, coverage, ``year``'s totals (this year when None), filings.
        ``cert_type``: ``01`` e-voucher, ``02`` resident ID, ``03`` social security card.
        Refusals: PERSON_NOT_FOUND, TOKEN_INVALID, TOKEN_EXPIRED."""
        inp: dict[str, Any] = {"mdtrt_cert_type": cert_type, "mdtrt_cert_no": cert_no}
        if year is not None:
            inp["year"] = year
        party = fixmedins_code or self.sender_code
        return await self.call(insuplc_admdvs, "1101", inp, msgid or self.next_msgid(party),
                               mdtrtarea_admvs=mdtrtarea_admvs, fixmedins_code=fixmedins_code)

    async def settle(self, insuplc_admdvs: str, *, msgid: str, mdtrtarea_admvs: str, fixmedins_code: str,
                     psn_no: str, insutype: str, mdtrt_id: str, setl_id: str, setl_time: datetime,
                     accum_year: int, accum_version: int, split: Mapping[str, Decimal | str]) -> dict[str, Any]:
        """2207: commit a settlement. ``msgid`` is required: record it before calling, it is what
        5205 and 2601 name after an unknown outcome. ``split`` holds the ten amounts of the
        contract (Decimal or decimal strings). Output: setl_id, insurer_setl_id, accum, balc.
        Refusals: ACCUM_CONFLICT (output.accum), INSUFFICIENT_BALANCE, NOT_ACTIVE, AMOUNT_MISMATCH,
        DUPLICATE_SETL_ID (output: the committed settlement), MSGID_REUSED, MSG_REVERSED."""
        inp: dict[str, Any] = {"psn_no": psn_no, "insutype": insutype, "mdtrt_id": mdtrt_id, "setl_id": setl_id,
                               "setl_time": fmt_time(setl_time), "accum_year": accum_year,
                               "accum_version": accum_version}
        inp.update({name: money_text(split[name]) for name in SPLIT_FIELDS})
        return await self.call(insuplc_admdvs, "2207", inp, msgid, mdtrtarea_admvs=mdtrtarea_admvs,
                               fixmedins_code=fixmedins_code)

    async def void(self, insuplc_admdvs: str, *, msgid: str, psn_no: str, setl_id: str, insurer_setl_id: str,
                   mdtrtarea_admvs: str | None = None, fixmedins_code: str | None = None) -> dict[str, Any]:
        """2208: void a settlement (idempotent on every platform). Refusal: SETL_NOT_FOUND."""
        return await self.call(insuplc_admdvs, "2208", {"psn_no": psn_no, "setl_id": setl_id,
                                                        "insurer_setl_id": insurer_setl_id}, msgid,
                               mdtrtarea_admvs=mdtrtarea_admvs, fixmedins_code=fixmedins_code)

    async def reverse(self, insuplc_admdvs: str, *, msgid: str, psn_no: str, omsgid: str, oinfno: str,
                      mdtrtarea_admvs: str | None = None, fixmedins_code: str | None = None) -> dict[str, Any]:
        """2601: undo message ``omsgid``. ``{"reversed": false}``: it was never processed and is
        now dead (arriving late, it is refused MSG_REVERSED)."""
        return await self.call(insuplc_admdvs, "2601", {"psn_no": psn_no, "omsgid": omsgid, "oinfno": oinfno},
                               msgid, mdtrtarea_admvs=mdtrtarea_admvs, fixmedins_code=fixmedins_code)

    async def query_outcome(self, insuplc_admdvs: str, omsgid: str, *, msgid: str | None = None,
                            mdtrtarea_admvs: str | None = None, fixmedins_code: str | None = None) -> dict[str, Any]:
        """5205: ``{"found": false}`` or ``{"found": true, "infno", "status": "processed" |
        "reversed", "response": the first answer, whole}``."""
        party = fixmedins_code or self.sender_code
        return await self.call(insuplc_admdvs, "5205", {"omsgid": omsgid}, msgid or self.next_msgid(party),
                               mdtrtarea_admvs=mdtrtarea_admvs, fixmedins_code=fixmedins_code)

    async def reconcile_total(self, insuplc: str, *, stmt_date: date, mdtrtarea_admvs: str, setl_cnt: int,
                              medfee_sumamt: Decimal, fund_pay_sumamt: Decimal, acct_pay: Decimal,
                              msgid: str | None = None) -> dict[str, Any]:
        """3201 on the insured place ``insuplc`` for the settlements of ``stmt_date`` treated in
        ``mdtrtarea_admvs`` (a province ``310000`` or a district). Output ``stmt_rslt`` "0"
        balanced / "1", and the platform's own totals."""
        inp = {"stmt_date": stmt_date.isoformat(), "mdtrtarea_admvs": area_of(mdtrtarea_admvs),
               "setl_cnt": setl_cnt, "medfee_sumamt": money_text(medfee_sumamt),
               "fund_pay_sumamt": money_text(fund_pay_sumamt), "acct_pay": money_text(acct_pay)}
        return await self.call(insuplc, "3201", inp, msgid or self.next_msgid(), mdtrtarea_admvs=mdtrtarea_admvs)

    async def reconcile_detail(self, insuplc: str, *, stmt_date: date, mdtrtarea_admvs: str,
                               settlements: Iterable[Mapping[str, Any]], msgid: str | None = None) -> dict[str, Any]:
        """3202: the hub's settlements of the day (each ``setl_id``, ``medfee_sumamt``,
        ``fund_pay_sumamt``, ``acct_pay``) against the platform's. Output ``missing_at_insurer``,
        ``unknown_to_hub``, ``amount_mismatch``."""
        rows = [{"setl_id": s["setl_id"], **{f: money_text(s[f]) for f in RECON_FIELDS}} for s in settlements]
        inp = {"stmt_date": stmt_date.isoformat(), "mdtrtarea_admvs": area_of(mdtrtarea_admvs), "setl_ids": rows}
        return await self.call(insuplc, "3202", inp, msgid or self.next_msgid(), mdtrtarea_admvs=mdtrtarea_admvs)

    async def transfer_out(self, from_admdvs: str, *, msgid: str, transfer_id: str, certno: str, psn_name: str,
                           insutype: str, to_admdvs: str) -> dict[str, Any]:
        """4101 on the origin: close coverage, issue the coverage record. Output cert_no, psn_no,
        insu_months, acct_balc, last_month, stop_date. Refusals: NOT_ACTIVE, ARREARS,
        PENDING_SETTLEMENT, PERSON_NOT_FOUND."""
        inp = {"transfer_id": transfer_id, "certno": certno, "psn_name": psn_name, "insutype": insutype,
               "to_admdvs": to_admdvs}
        return await self.call(from_admdvs, "4101", inp, msgid)

    async def transfer_funds(self, from_admdvs: str, *, msgid: str, transfer_id: str, cert_no: str,
                             amount: Decimal, to_admdvs: str) -> dict[str, Any]:
        """4102 on the origin: move the account balance. Output fund_txn_id. Refusals:
        CERT_INVALID, FUNDS_MISMATCH."""
        inp = {"transfer_id": transfer_id, "cert_no": cert_no, "amount": money_text(amount), "to_admdvs": to_admdvs}
        return await self.call(from_admdvs, "4102", inp, msgid)

    async def transfer_in(self, to_admdvs: str, *, msgid: str, transfer_id: str, cert_no: str, from_admdvs: str,
                          certno: str, psn_name: str, insutype: str, insu_months: int, acct_balc: Decimal,
                          fund_txn_id: str | None) -> dict[str, Any]:
        """4201 on the destination (``to_admdvs`` is also the envelope's insured place): open
        coverage. Output psn_no, begndate, insu_months_total. Refusals: DUPLICATE_COVERAGE,
        CERT_INVALID, FUNDS_MISMATCH."""
        inp = {"transfer_id": transfer_id, "cert_no": cert_no, "from_admdvs": from_admdvs, "certno": certno,
               "psn_name": psn_name, "insutype": insutype, "insu_months": insu_months,
               "acct_balc": money_text(acct_balc), "fund_txn_id": fund_txn_id or ""}
        return await self.call(to_admdvs, "4201", inp, msgid)

    async def cancel_transfer_out(self, from_admdvs: str, *, msgid: str, transfer_id: str, cert_no: str,
                                  fund_txn_id: str | None = None) -> dict[str, Any]:
        """4103 on the origin (compensation): restore coverage and funds. Output
        ``{"restored": true}``. Refusals: CERT_INVALID (also once the destination used the
        record), FUNDS_MISMATCH (a 4102 ran and ``fund_txn_id`` does not name it)."""
        inp: dict[str, Any] = {"transfer_id": transfer_id, "cert_no": cert_no}
        if fund_txn_id:
            inp["fund_txn_id"] = fund_txn_id
        return await self.call(from_admdvs, "4103", inp, msgid)



def interpret(answer: Any, *, province: str | None = None, infno: str | None = None,
              msgid: str | None = None) -> dict[str, Any]:
    """The ``output`` of a platform answer (a call's, or the first answer a 5205 returns).

    Raises ``Refused`` for infcode -1 (``err_code`` ``UNKNOWN`` when the output names none) and
    ``OutcomeUnknown`` for anything that is not an answer of the contract (no infcode, or one
    other than 0 and -1). ``inf_refmsgid`` is the platform's own id for its answer, not an echo
    of ``msgid``: it is logged for the record and never matched against the request. Fields the
    contract does not name are ignored.
    """
    where = {"province": province, "infno": infno, "msgid": msgid}
    label = f"{province} {infno}"
    if not isinstance(answer, dict) or "infcode" not in answer:
        raise OutcomeUnknown(f"{label}: answer has no infcode", **where)
    log.debug("%s answered msgid=%s inf_refmsgid=%s", label, msgid, answer.get("inf_refmsgid"))
    infcode = INFCODES.get(str(answer["infcode"]).strip())
    if infcode is None:
        raise OutcomeUnknown(f"{label}: infcode {str(answer['infcode'])[:20]!r} is not 0 or -1", **where)
    output = answer.get("output")
    output = output if isinstance(output, dict) else {}
    if infcode == "refused":
        err_code = str(output.get("err_code") or "UNKNOWN")
        raise Refused(err_code, scrub(str(answer.get("err_msg") or "")), output, **where)
    return output


def client_from_env(environ: Mapping[str, str], **kwargs: Any) -> PlatformClient:
    """A client configured from ``YRDHUB_INSURER_{SH,JS,ZJ,AH}_URL`` (unset: not configured)."""
    return PlatformClient({p: environ.get(f"YRDHUB_INSURER_{p}_URL") for p in PROVINCE_ADMDVS}, **kwargs)
