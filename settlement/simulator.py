"""Simulated insurance platforms of the four provinces: real HTTP servers with fault injection.

One HTTP/1.1 server per province, all four served by one asyncio event loop in a background
thread (a listen backlog of 1024; a fixed latency or slow answer is a non-blocking wait, so
hundreds of concurrent calls are served at once), implementing every transaction of
``world/insurer-api.md`` with its per-province behaviour:

- SH, JS, ZJ keep each ``msgid`` for 72 h: the same ``msgid`` and input returns the first answer
  (whatever it was), the same ``msgid`` with another input is refused ``MSGID_REUSED``.
- AH keeps no such record: a 2207 it already processed, sent again, commits a further settlement,
  without the ``setl_id`` and totals-version checks (the hazard 5205 exists for).
- Every province records every answered message for 5205, and marks a ``msgid`` dead when a 2601
  names it before it was processed (the late original is then refused ``MSG_REVERSED``).
- Transfers (4101/4102/4201/4103) are keyed by ``(infno, transfer_id)`` on every province: a repeat
  for the same transfer returns the first answer, under any ``msgid``.

The platforms of one ``Simulators`` share one lock and one registry of coverage records (参保凭证),
so a destination can check the record an origin issued, and an origin knows when a destination
has used it (a 4103 after that is refused ``CERT_INVALID``). Run all four in one process.

Faults are set per province at runtime (``Simulators.set_faults`` or ``POST /_sim/faults``):
fixed latency, slow answers, 503 (maintenance or random, with or without ``Retry-After``), abrupt
connection resets before processing, answers dropped after processing, non-JSON answers, and a
queue of faults for the next messages (``next_faults=["reset", "drop", ...]``) for exact tests.
What the platform received (every arrival, faulted or not) and committed (the ledger) can be read
back, and the ledger can be written to a JSON file after every change.

``python -m settlement.simulator --host 127.0.0.1 --base-port 9101`` runs SH, JS, ZJ, AH on 9101..9104.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import itertools
import json
import logging
import os
import random
import re
import signal
import socket
import struct
import threading
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from mappers.region import CST

log = logging.getLogger(__name__)

# Province code -> its platform's own area code (insurer-api.md, first table).
PROVINCE_ADMDVS: dict[str, str] = {"SH": "310000", "JS": "320000", "ZJ": "330000", "AH": "340000"}
PROVINCE_OF_PREFIX: dict[str, str] = {v[:2]: k for k, v in PROVINCE_ADMDVS.items()}
# Whether the platform keeps each msgid for 72 h (insurer-api.md). Data, not an if chain.
DEDUPLICATES: dict[str, bool] = {"SH": True, "JS": True, "ZJ": True, "AH": False}
DEDUP_WINDOW = timedelta(hours=72)
DEFAULT_PERSONS = Path(__file__).resolve().parent.parent / "fixtures" / "persons.json"
TRANSFER_INFNOS = frozenset({"4101", "4102", "4201", "4103"})
SPLIT_FIELDS = ("medfee_sumamt", "fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt",
                "inscp_scp_amt", "act_pay_dedc", "hifp_pay", "acct_pay", "psn_cash_pay",
                "fund_pay_sumamt")
RECON_FIELDS = ("medfee_sumamt", "fund_pay_sumamt", "acct_pay")
CENT = Decimal("0.01")

# Refusal code -> the Chinese err_msg the platform sends with it.
REFUSAL_MESSAGES: dict[str, str] = {
    "PERSON_NOT_FOUND": "未查询到该人员参保信息",
    "TOKEN_INVALID": "医保电子凭证无效",
    "TOKEN_EXPIRED": "医保电子凭证已过期，请刷新后重试",
    "ACCUM_CONFLICT": "累计信息已变更，请重新获取人员信息后重新计算",
    "INSUFFICIENT_BALANCE": "个人账户余额不足",
    "NOT_ACTIVE": "人员参保状态非正常参保",
    "AMOUNT_MISMATCH": "结算金额不平衡",
    "DUPLICATE_SETL_ID": "该结算已存在",
    "MSGID_REUSED": "报文ID重复且报文内容不一致",
    "MSG_REVERSED": "该报文已冲正",
    "SETL_NOT_FOUND": "未找到该结算记录",
    "ARREARS": "存在欠费，请补缴后再办理转移",
    "PENDING_SETTLEMENT": "存在未完成的结算，暂不能办理转移",
    "DUPLICATE_COVERAGE": "该人员在转入地已有正常参保记录",
    "CERT_INVALID": "参保凭证无效或已使用",
    "FUNDS_MISMATCH": "个人账户转移金额或资金流水不一致",
    "INVALID_INPUT": "入参不完整或格式错误",
}
# Ledger entry kind of each committing transaction.
LEDGER_KINDS: dict[str, str] = {"2207": "settlement", "4101": "transfer_out", "4102": "transfer_funds",
                                "4201": "transfer_in", "4103": "transfer_cancel"}
# Transactions that may change a ledger (the file is rewritten after them only).
CHANGES_STATE = frozenset({"2207", "2208", "2601", "4101", "4102", "4201", "4103"})
# Busy answers: (processed first?). 429 and 503 turn the message away; 502 and 504 are what a
# gateway says when the platform behind it took the message and did not answer in time.
BUSY_FAULTS: dict[str, tuple[int, bool]] = {"503": (503, False), "429": (429, False),
                                            "502": (502, True), "504": (504, True)}
FAULT_KINDS = frozenset({"reset", "drop", "non_json", "slow", *BUSY_FAULTS})


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------


class SimRefusal(Exception):
    """A business refusal (answered infcode -1); ``extra`` goes into ``output`` next to err_code."""

    def __init__(self, code: str, detail: str = "", **extra: Any):
        super().__init__(code)
        self.code, self.detail, self.extra = code, detail, extra


def money(value: Decimal) -> str:
    return str(value.quantize(CENT, ROUND_HALF_UP))


def parse_money(inp: dict, name: str) -> Decimal:
    """A decimal string (or number) of the input; absent or unreadable refuses INVALID_INPUT."""
    try:
        return Decimal(str(inp[name]))
    except (KeyError, InvalidOperation):
        raise SimRefusal("INVALID_INPUT", f"{name} 缺失或不是金额") from None


def required(inp: dict, *names: str) -> list[Any]:
    missing = [n for n in names if inp.get(n) in (None, "")]
    if missing:
        raise SimRefusal("INVALID_INPUT", "缺少入参: " + ",".join(missing))
    return [inp[n] for n in names]


def area_prefix(code: str) -> str:
    """``310000`` -> ``31``, ``320100`` -> ``3201``, ``310110`` unchanged (trailing 00 pairs)."""
    while len(code) > 2 and code.endswith("00"):
        code = code[:-2]
    return code


def canonical(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def fmt_time(when: datetime) -> str:
    return when.astimezone(CST).strftime("%Y-%m-%d %H:%M:%S")


# ---------------------------------------------------------------------------------------------
# Faults
# ---------------------------------------------------------------------------------------------


@dataclass
class Faults:
    """Fault settings of one province. ``set_faults`` replaces them whole (unnamed: defaults).

    Rates are probabilities per message. ``maintenance`` answers 503 to everything without
    processing. ``fail_503_rate`` answers 503 without processing; both send ``Retry-After:
    retry_after`` when it is set (maintenance: 60 when unset). ``reset_rate`` resets the connection
    (TCP RST) after the request arrived, before processing. ``drop_answer_rate`` processes, then
    resets instead of answering. ``non_json_rate`` processes, then answers 200 with an HTML page.
    ``slow_rate`` delays the answer by ``slow_ms`` more (processing at once, or only then with
    ``slow_before_processing``); ``latency_ms``: every answer leaves that long after its request
    arrived (processed at once, then held), whatever processing took. ``next_faults`` is a queue
    ("reset", "drop", "non_json", "slow", "503", "429" - not processed - or "502", "504" -
    processed, then the gateway's error) applied to the next messages before any rate.
    """

    latency_ms: int = 0
    slow_ms: int = 0
    slow_rate: float = 0.0
    slow_before_processing: bool = False
    fail_503_rate: float = 0.0
    retry_after: int | None = None
    maintenance: bool = False
    reset_rate: float = 0.0
    drop_answer_rate: float = 0.0
    non_json_rate: float = 0.0
    seed: int | None = None
    next_faults: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        unknown = set(self.next_faults) - FAULT_KINDS
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {sorted(FAULT_KINDS)}")


@dataclass
class Plan:
    """What happens to one message: drawn when it arrives."""

    kind: str | None = None  # one of FAULT_KINDS other than "slow", or None
    slow: bool = False
    maintenance: bool = False


# ---------------------------------------------------------------------------------------------
# The shared world: one lock, the coverage-record registry, counters, the clock, persistence
# ---------------------------------------------------------------------------------------------


class World:
    def __init__(self, clock: Callable[[], datetime] | None = None, ledger_path: str | Path | None = None):
        self.lock = threading.RLock()
        self.clock = clock or (lambda: datetime.now(CST))
        self.certs: dict[str, dict[str, Any]] = {}  # cert_no -> coverage record of a transfer
        self.counter = itertools.count(1)
        self.ledger_path = Path(ledger_path) if ledger_path else None
        self.platforms: dict[str, Platform] = {}

    def now(self) -> datetime:
        return self.clock().astimezone(CST)

    def next_no(self) -> int:
        return next(self.counter)

    def persist(self) -> None:
        """Write every ledger to ``ledger_path`` (atomically), when one was given."""
        if self.ledger_path is None:
            return
        data = {p: plat.ledger_copy() for p, plat in self.platforms.items()}
        tmp = self.ledger_path.with_suffix(self.ledger_path.suffix + ".tmp")
        tmp.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
        os.replace(tmp, self.ledger_path)


# ---------------------------------------------------------------------------------------------
# Persons
# ---------------------------------------------------------------------------------------------


def load_persons(path: str | Path | None = None) -> list[dict[str, Any]]:
    """Read ``fixtures/persons.json``: ``{"persons": [...]}``; money becomes Decimal.

    Each person is insured in one province (all its ``insuinfo`` entries' ``insuplc_admdvs`` share
    their first two digits, else ValueError); the same ``certno`` may appear in two provinces
    (a person insured twice, 重复参保).
    """
    raw = json.loads(Path(path or DEFAULT_PERSONS).read_text(encoding="utf-8"))
    persons = []
    for item in raw["persons"]:
        person = copy.deepcopy(item)
        provinces = {PROVINCE_OF_PREFIX[i["insuplc_admdvs"][:2]] for i in person["insuinfo"]}
        provinces |= {person["province"]} if person.get("province") else set()
        if len(provinces) != 1:
            raise ValueError(f"person {person['psn_no']} must be insured in exactly one province")
        person["province"] = provinces.pop()
        for ins in person["insuinfo"]:
            ins["balc"] = Decimal(ins.get("balc") or "0")
        person["accum"] = {int(y): {"dedc_accu": Decimal(a["dedc_accu"]),
                                    "fund_pay_accu": Decimal(a["fund_pay_accu"]),
                                    "version": int(a["version"])}
                           for y, a in (person.get("accum") or {}).items()}
        person.setdefault("filing", [])
        person.setdefault("evoucher", [])
        persons.append(person)
    return persons


# ---------------------------------------------------------------------------------------------
# One province's platform: state and transactions (no HTTP here)
# ---------------------------------------------------------------------------------------------


@dataclass
class Message:
    infno: str
    input: bytes  # canonical JSON of the input
    answer: dict[str, Any]
    at: datetime
    status: str = "processed"  # or "reversed"


class Platform:
    """The state and business logic of one province's platform. Every method runs under the
    world lock (``process`` takes it)."""

    def __init__(self, province: str, world: World, persons: Iterable[dict[str, Any]]):
        self.province = province
        self.admdvs = PROVINCE_ADMDVS[province]
        self.deduplicates = DEDUPLICATES[province]
        self.world = world
        self.persons: list[dict[str, Any]] = [p for p in persons if p["province"] == province]
        self.messages: dict[str, Message] = {}
        self.dead: set[str] = set()  # msgids a 2601 named before they were processed
        self.transfer_answers: dict[tuple[str, str], dict[str, Any]] = {}
        self.ledger: list[dict[str, Any]] = []
        self.received: list[dict[str, Any]] = []
        self.faults = Faults()
        self.rng = random.Random()
        self.in_flight = 0
        self.max_in_flight = 0
        self.holds: dict[str, asyncio.Event] = {}  # infno -> answers wait for it (processed already)
        self.handlers: dict[str, Callable[[dict, dict, bool], dict]] = {
            "1101": self._person_info, "2207": self._settle, "2208": self._void,
            "2601": self._reverse, "5205": self._query, "3201": self._reconcile_total,
            "3202": self._reconcile_detail, "4101": self._transfer_out, "4102": self._transfer_funds,
            "4201": self._transfer_in, "4103": self._transfer_cancel,
        }

    # -- the generic message path -------------------------------------------------------------

    def process(self, infno: str, envelope: dict[str, Any]) -> dict[str, Any]:
        """Answer one message (a dict with infcode). Applies msgid dedup (SH/JS/ZJ), dead msgids,
        the transfer_id key, then the transaction; records the first answer of each msgid."""
        with self.world.lock:
            msgid, inp = envelope["msgid"], envelope.get("input") or {}
            now = self.world.now()
            if msgid in self.dead:
                return self._answer(msgid, refusal=SimRefusal("MSG_REVERSED"))
            seen = self.messages.get(msgid)
            if seen and self.deduplicates and now - seen.at < DEDUP_WINDOW:
                if seen.infno == infno and seen.input == canonical(inp):
                    return seen.answer
                return self._answer(msgid, refusal=SimRefusal("MSGID_REUSED"))
            key = (infno, str(inp.get("transfer_id"))) if infno in TRANSFER_INFNOS else None
            if key in self.transfer_answers:
                answer = self.transfer_answers[key]
            else:
                # AH only: a message it already processed successfully is committed again,
                # without the setl_id and totals-version checks (insurer-api.md).
                repeat = bool(seen and not self.deduplicates and seen.answer["infcode"] == 0)
                answer = self._run(infno, envelope, inp, repeat)
                if key is not None and inp.get("transfer_id") and answer["output"].get("err_code") != "INVALID_INPUT":
                    self.transfer_answers[key] = answer
            if seen is None:
                self.messages[msgid] = Message(infno, canonical(inp), answer, now)
            if infno in CHANGES_STATE:
                self.world.persist()
            return answer

    def _run(self, infno: str, envelope: dict, inp: dict, repeat: bool) -> dict[str, Any]:
        try:
            output = self.handlers[infno](envelope, inp, repeat)
        except SimRefusal as refusal:
            return self._answer(envelope["msgid"], refusal=refusal)
        return self._answer(envelope["msgid"], output=output)

    def _answer(self, msgid: str, output: dict | None = None, refusal: SimRefusal | None = None) -> dict:
        """An answer as the national platform forms it, where the contract leaves the choice open:
        ``inf_refmsgid`` is the platform's own id (its area code, the time, a serial), never an
        echo of ``msgid``; the output comes first; fields the contract does not name ride along;
        the Content-Type and the connection's fate differ by province (``_Server``). A client
        that leans on anything else breaks here first."""
        now = self.world.now()
        answer: dict[str, Any] = {
            "output": output or {}, "warn_msg": "", "cainfo": "", "signtype": "",
            "refmsg_time": f"{now:%Y%m%d%H%M%S}",
            "inf_refmsgid": f"{self.admdvs}{now:%Y%m%d%H%M%S}{self.world.next_no():08d}",
            "respond_time": fmt_time(now), "err_msg": "", "infcode": 0,
        }
        if refusal is not None:
            message = REFUSAL_MESSAGES.get(refusal.code, refusal.code)
            answer.update(infcode=-1, err_msg=f"{message}{'：' + refusal.detail if refusal.detail else ''}",
                          output={"err_code": refusal.code, **refusal.extra})
        return answer

    # -- persons ----------------------------------------------------------------------------

    def _find(self, **match: str) -> dict[str, Any] | None:
        return next((p for p in self.persons if all(p.get(k) == v for k, v in match.items())), None)

    def _by_token(self, token: str) -> dict[str, Any]:
        for person in self.persons:
            for voucher in person["evoucher"]:
                if voucher["code"] == token:
                    expires = datetime.strptime(voucher["expires"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=CST)
                    if expires < self.world.now():
                        raise SimRefusal("TOKEN_EXPIRED")
                    return person
        raise SimRefusal("TOKEN_INVALID")

    def _coverage(self, person: dict, insutype: str) -> dict[str, Any] | None:
        return next((i for i in person["insuinfo"] if i["insutype"] == insutype), None)

    def _accum(self, person: dict, year: int) -> dict[str, Any]:
        return person["accum"].setdefault(
            year, {"dedc_accu": Decimal("0"), "fund_pay_accu": Decimal("0"), "version": 0})

    def _accum_out(self, person: dict, year: int) -> dict[str, Any]:
        acc = self._accum(person, year)
        return {"year": year, "dedc_accu": money(acc["dedc_accu"]),
                "fund_pay_accu": money(acc["fund_pay_accu"]), "version": acc["version"]}

    # -- 1101 -------------------------------------------------------------------------------

    CERT_LOOKUP: dict[str, str] = {"02": "certno", "03": "card_no"}

    def _person_info(self, env: dict, inp: dict, repeat: bool) -> dict:
        cert_type, cert_no = required(inp, "mdtrt_cert_type", "mdtrt_cert_no")
        if cert_type == "01":
            person = self._by_token(cert_no)
        elif cert_type in self.CERT_LOOKUP:
            person = self._find(**{self.CERT_LOOKUP[cert_type]: cert_no})
        else:
            raise SimRefusal("INVALID_INPUT", "mdtrt_cert_type")
        if person is None:
            raise SimRefusal("PERSON_NOT_FOUND")
        year = int(inp.get("year") or self.world.now().year)
        return {
            "baseinfo": {k: person[k] for k in ("psn_no", "psn_name", "gend", "brdy", "certno", "psn_cert_type")},
            "insuinfo": [{k: (money(v) if k == "balc" else v) for k, v in ins.items() if k != "stop_date"}
                         for ins in person["insuinfo"]],
            "accum": self._accum_out(person, year),
            "filing": [dict(f) for f in person["filing"]],
        }

    # -- 2207, 2208 -------------------------------------------------------------------------

    def _settle(self, env: dict, inp: dict, repeat: bool) -> dict:
        psn_no, insutype, mdtrt_id, setl_id, setl_time = required(
            inp, "psn_no", "insutype", "mdtrt_id", "setl_id", "setl_time")
        year, version = int(required(inp, "accum_year")[0]), int(required(inp, "accum_version")[0])
        split = {name: parse_money(inp, name) for name in SPLIT_FIELDS}
        person = self._find(psn_no=psn_no)
        if person is None:
            raise SimRefusal("PERSON_NOT_FOUND")
        coverage = self._coverage(person, insutype)
        if coverage is None or coverage["psn_insu_stas"] != "1":
            raise SimRefusal("NOT_ACTIVE")
        if (split["medfee_sumamt"] != split["fund_pay_sumamt"] + split["acct_pay"] + split["psn_cash_pay"]
                or split["fund_pay_sumamt"] != split["hifp_pay"]):
            raise SimRefusal("AMOUNT_MISMATCH")
        committed = next((e for e in self.ledger if e["kind"] == "settlement" and e["setl_id"] == setl_id), None)
        # Before the version check: a late original's own commit moved the version.
        if committed is not None and not repeat:
            raise SimRefusal("DUPLICATE_SETL_ID", **self._settlement_view(committed))
        accum = self._accum(person, year)
        if accum["version"] != version and not repeat:
            raise SimRefusal("ACCUM_CONFLICT", accum=self._accum_out(person, year))
        if split["acct_pay"] > coverage["balc"]:
            raise SimRefusal("INSUFFICIENT_BALANCE", balc=money(coverage["balc"]))
        coverage["balc"] -= split["acct_pay"]
        accum["dedc_accu"] += split["act_pay_dedc"]
        accum["fund_pay_accu"] += split["hifp_pay"]
        accum["version"] += 1
        entry = self._commit("2207", env, psn_no=psn_no, insutype=insutype, mdtrt_id=mdtrt_id,
                             setl_id=setl_id, insurer_setl_id=f"S{self.admdvs[:2]}{self.world.now():%Y%m%d}{self.world.next_no():06d}",
                             setl_time=setl_time, accum_year=year, status="settled",
                             mdtrtarea_admvs=env.get("mdtrtarea_admvs") or str(env.get("fixmedins_code", ""))[1:7],
                             fixmedins_code=env.get("fixmedins_code"),
                             **{k: money(v) for k, v in split.items()})
        return {"setl_id": setl_id, "insurer_setl_id": entry["insurer_setl_id"],
                "accum": self._accum_out(person, year), "balc": money(coverage["balc"])}

    def _settlement_view(self, entry: dict) -> dict:
        keys = ("setl_id", "insurer_setl_id", "status", "setl_time", "mdtrt_id", *SPLIT_FIELDS)
        return {k: entry[k] for k in keys}

    def _commit(self, infno: str, env: dict, **fields_: Any) -> dict:
        msgid = env["msgid"]
        entry = {"kind": LEDGER_KINDS[infno], "infno": infno, "msgid": msgid,
                 "commit_no": 1 + sum(1 for e in self.ledger if e["msgid"] == msgid),
                 "committed_at": fmt_time(self.world.now()), **fields_}
        self.ledger.append(entry)
        log.info("%s committed %s msgid=%s (#%d)", self.province, infno, msgid, entry["commit_no"])
        return entry

    def _undo_settlement(self, entry: dict) -> None:
        """Give the account payment back and take the amounts off the year's totals."""
        person = self._find(psn_no=entry["psn_no"])
        coverage = self._coverage(person, entry["insutype"])
        accum = self._accum(person, entry["accum_year"])
        coverage["balc"] += Decimal(entry["acct_pay"])
        accum["dedc_accu"] -= Decimal(entry["act_pay_dedc"])
        accum["fund_pay_accu"] -= Decimal(entry["hifp_pay"])
        accum["version"] += 1
        entry["status"] = "voided"
        entry["voided_at"] = fmt_time(self.world.now())

    def _void(self, env: dict, inp: dict, repeat: bool) -> dict:
        psn_no, setl_id, insurer_setl_id = required(inp, "psn_no", "setl_id", "insurer_setl_id")
        entry = next((e for e in self.ledger if e["kind"] == "settlement" and e["setl_id"] == setl_id
                      and e["insurer_setl_id"] == insurer_setl_id and e["psn_no"] == psn_no), None)
        if entry is None:
            raise SimRefusal("SETL_NOT_FOUND")
        if "void_answer" not in entry:  # voiding a voided one returns the same answer
            if entry["status"] == "settled":
                self._undo_settlement(entry)
            person = self._find(psn_no=psn_no)
            entry["void_answer"] = {
                "setl_id": setl_id, "insurer_setl_id": insurer_setl_id, "status": "voided",
                "accum": self._accum_out(person, entry["accum_year"]),
                "balc": money(self._coverage(person, entry["insutype"])["balc"])}
        return dict(entry["void_answer"])

    # -- 2601, 5205 -------------------------------------------------------------------------

    def _reverse(self, env: dict, inp: dict, repeat: bool) -> dict:
        """Undo a processed message; an unknown one is marked dead ({"reversed": false}).

        Effects by the original's infno: 2207 voids its settlement(s) (on AH, every commit of
        that msgid), 4102 gives the funds back. A refused original, or another infno, has no
        effect to undo but is still marked reversed.
        """
        omsgid, _oinfno = required(inp, "omsgid", "oinfno")
        original = self.messages.get(omsgid)
        if original is None:
            self.dead.add(omsgid)
            return {"reversed": False, "omsgid": omsgid}
        if original.status != "reversed" and original.answer["infcode"] == 0:
            for entry in [e for e in self.ledger if e["msgid"] == omsgid]:
                undo = {"settlement": self._undo_settlement_if_settled,
                        "transfer_funds": self._undo_funds}.get(entry["kind"])
                if undo:
                    undo(entry)
        original.status = "reversed"
        return {"reversed": True, "omsgid": omsgid}

    def _undo_settlement_if_settled(self, entry: dict) -> None:
        if entry["status"] == "settled":
            self._undo_settlement(entry)

    def _query(self, env: dict, inp: dict, repeat: bool) -> dict:
        (omsgid,) = required(inp, "omsgid")
        original = self.messages.get(omsgid)
        if original is None:
            return {"found": False}
        return {"found": True, "infno": original.infno, "status": original.status,
                "response": copy.deepcopy(original.answer)}

    # -- 3201, 3202 -------------------------------------------------------------------------

    def _day_settlements(self, inp: dict) -> list[dict]:
        stmt_date, area = required(inp, "stmt_date", "mdtrtarea_admvs")
        prefix = area_prefix(str(area))
        return [e for e in self.ledger if e["kind"] == "settlement" and e["status"] == "settled"
                and str(e["setl_time"])[:10] == stmt_date and str(e["mdtrtarea_admvs"]).startswith(prefix)]

    def _reconcile_total(self, env: dict, inp: dict, repeat: bool) -> dict:
        mine = self._day_settlements(inp)
        totals = {f: sum((Decimal(e[f]) for e in mine), Decimal("0")) for f in RECON_FIELDS}
        theirs = {f: parse_money(inp, f) for f in RECON_FIELDS}
        balanced = int(inp.get("setl_cnt", -1)) == len(mine) and theirs == totals
        return {"stmt_rslt": "0" if balanced else "1", "setl_cnt": len(mine),
                **{f: money(v) for f, v in totals.items()}}

    def _reconcile_detail(self, env: dict, inp: dict, repeat: bool) -> dict:
        mine = self._day_settlements(inp)
        hub = {s["setl_id"]: s for s in inp.get("setl_ids") or []}
        matched: set[str] = set()
        unknown, mismatch = [], []
        for entry in mine:
            theirs = hub.get(entry["setl_id"])
            if theirs is None or entry["setl_id"] in matched:  # AH's second commit of one setl_id
                unknown.append({"setl_id": entry["setl_id"], "insurer_setl_id": entry["insurer_setl_id"],
                                **{f: entry[f] for f in RECON_FIELDS}})
                continue
            matched.add(entry["setl_id"])
            diff = {f: {"hub": money(Decimal(str(theirs.get(f, "0")))), "insurer": entry[f]}
                    for f in RECON_FIELDS if Decimal(str(theirs.get(f, "0"))) != Decimal(entry[f])}
            if diff:
                mismatch.append({"setl_id": entry["setl_id"], "insurer_setl_id": entry["insurer_setl_id"],
                                 "fields": diff})
        return {"missing_at_insurer": [s for s in hub if s not in matched],
                "unknown_to_hub": unknown, "amount_mismatch": mismatch}

    # -- transfers ----------------------------------------------------------------------------

    def _origin_cert(self, inp: dict) -> dict:
        cert = self.world.certs.get(str(inp.get("cert_no")))
        if cert is None or cert["origin"] != self.province or cert["transfer_id"] != inp.get("transfer_id"):
            raise SimRefusal("CERT_INVALID")
        return cert

    # Checked in this order; the first that applies refuses a 4101.
    def _transfer_out(self, env: dict, inp: dict, repeat: bool) -> dict:
        transfer_id, certno, psn_name, insutype, to_admdvs = required(
            inp, "transfer_id", "certno", "psn_name", "insutype", "to_admdvs")
        person = self._find(certno=certno)
        if person is None or person["psn_name"] != psn_name:
            raise SimRefusal("PERSON_NOT_FOUND")
        coverage = self._coverage(person, insutype)
        if coverage is None or coverage["psn_insu_stas"] == "4":
            raise SimRefusal("NOT_ACTIVE")
        if person.get("arrears_months"):
            raise SimRefusal("ARREARS", arrears_months=person["arrears_months"])
        if coverage["psn_insu_stas"] != "1":
            raise SimRefusal("NOT_ACTIVE")
        if person.get("pending_settlement"):
            raise SimRefusal("PENDING_SETTLEMENT")
        now = self.world.now()
        cert_no = f"CB{self.admdvs[:2]}{now:%Y%m%d}{self.world.next_no():06d}"
        coverage["psn_insu_stas"], coverage["stop_date"] = "4", now.date().isoformat()
        self.world.certs[cert_no] = {
            "cert_no": cert_no, "transfer_id": transfer_id, "origin": self.province, "to_admdvs": to_admdvs,
            "certno": certno, "psn_no": person["psn_no"], "psn_name": psn_name, "insutype": insutype,
            "insu_months": int(person.get("insu_months", 0)), "acct_balc": coverage["balc"],
            "state": "issued", "fund_txn_id": None, "fund_state": None}
        self._commit("4101", env, transfer_id=transfer_id, cert_no=cert_no, psn_no=person["psn_no"],
                     insutype=insutype, to_admdvs=to_admdvs, acct_balc=money(coverage["balc"]))
        return {"cert_no": cert_no, "psn_no": person["psn_no"], "insu_months": int(person.get("insu_months", 0)),
                "acct_balc": money(coverage["balc"]), "last_month": f"{now:%Y-%m}", "stop_date": now.date().isoformat()}

    def _transfer_funds(self, env: dict, inp: dict, repeat: bool) -> dict:
        transfer_id, _cert_no, _to = required(inp, "transfer_id", "cert_no", "to_admdvs")
        amount = parse_money(inp, "amount")
        cert = self._origin_cert(inp)
        if cert["state"] != "issued":
            raise SimRefusal("CERT_INVALID")
        if amount != cert["acct_balc"] or cert["fund_state"] == "moved":
            raise SimRefusal("FUNDS_MISMATCH", acct_balc=money(cert["acct_balc"]))
        person = self._find(psn_no=cert["psn_no"])
        self._coverage(person, cert["insutype"])["balc"] -= amount
        fund_txn_id = f"FT{self.admdvs[:2]}{self.world.now():%Y%m%d}{self.world.next_no():06d}"
        cert.update(fund_txn_id=fund_txn_id, fund_state="moved")
        self._commit("4102", env, transfer_id=transfer_id, cert_no=cert["cert_no"], amount=money(amount),
                     fund_txn_id=fund_txn_id, psn_no=cert["psn_no"], insutype=cert["insutype"])
        return {"fund_txn_id": fund_txn_id}

    def _undo_funds(self, entry: dict) -> None:
        cert = self.world.certs[entry["cert_no"]]
        if cert["fund_state"] == "moved":
            person = self._find(psn_no=cert["psn_no"])
            self._coverage(person, cert["insutype"])["balc"] += Decimal(entry["amount"])
            cert["fund_state"] = "returned"
        entry["status"] = "reversed"

    def _transfer_in(self, env: dict, inp: dict, repeat: bool) -> dict:
        transfer_id, cert_no, _from, certno, psn_name, insutype = required(
            inp, "transfer_id", "cert_no", "from_admdvs", "certno", "psn_name", "insutype")
        insu_months, acct_balc = int(required(inp, "insu_months")[0]), parse_money(inp, "acct_balc")
        cert = self.world.certs.get(str(cert_no))
        if (cert is None or cert["state"] != "issued" or cert["transfer_id"] != transfer_id
                or cert["certno"] != certno or cert["insutype"] != insutype or cert["insu_months"] != insu_months
                or PROVINCE_OF_PREFIX.get(str(cert["to_admdvs"])[:2]) != self.province):
            raise SimRefusal("CERT_INVALID")
        fund_txn_id = inp.get("fund_txn_id") or None
        moved_ok = cert["fund_state"] == "moved" and fund_txn_id == cert["fund_txn_id"]
        if acct_balc != cert["acct_balc"] or (acct_balc > 0 and not moved_ok) or (acct_balc == 0 and fund_txn_id and not moved_ok):
            raise SimRefusal("FUNDS_MISMATCH")
        person = self._find(certno=certno)
        if person is not None and any(i["psn_insu_stas"] == "1" for i in person["insuinfo"]):
            raise SimRefusal("DUPLICATE_COVERAGE")
        person = person or self._new_person(certno, psn_name)
        today = self.world.now().date().isoformat()
        area = env.get("insuplc_admdvs") if str(env.get("insuplc_admdvs", ""))[:2] == self.admdvs[:2] else cert["to_admdvs"]
        person["insuinfo"] = [i for i in person["insuinfo"] if i["insutype"] != insutype] + [{
            "insutype": insutype, "psn_type": "11" if insutype == "310" else "21", "insuplc_admdvs": area,
            "psn_insu_stas": "1", "psn_insu_date": today, "balc": acct_balc}]
        person["insu_months"] = int(person.get("insu_months", 0)) + insu_months
        cert["state"] = "used"
        self._commit("4201", env, transfer_id=transfer_id, cert_no=cert_no, psn_no=person["psn_no"],
                     insutype=insutype, acct_balc=money(acct_balc), fund_txn_id=fund_txn_id)
        return {"psn_no": person["psn_no"], "begndate": today, "insu_months_total": person["insu_months"]}

    def _new_person(self, certno: str, psn_name: str) -> dict:
        person = {"psn_no": f"{self.admdvs[:2]}0000{self.world.next_no():08d}", "psn_name": psn_name,
                  "gend": "1" if int(certno[16]) % 2 else "2",
                  "brdy": f"{certno[6:10]}-{certno[10:12]}-{certno[12:14]}", "certno": certno,
                  "psn_cert_type": "01", "province": self.province, "insuinfo": [], "accum": {},
                  "filing": [], "evoucher": [], "insu_months": 0}
        self.persons.append(person)
        return person

    def _transfer_cancel(self, env: dict, inp: dict, repeat: bool) -> dict:
        transfer_id, _cert_no = required(inp, "transfer_id", "cert_no")
        cert = self._origin_cert(inp)
        if cert["state"] != "issued":  # used by the destination, or already cancelled
            raise SimRefusal("CERT_INVALID")
        fund_txn_id = inp.get("fund_txn_id") or None
        if (cert["fund_state"] == "moved" and fund_txn_id != cert["fund_txn_id"]) or \
                (cert["fund_state"] != "moved" and fund_txn_id and fund_txn_id != cert["fund_txn_id"]):
            raise SimRefusal("FUNDS_MISMATCH")
        person = self._find(psn_no=cert["psn_no"])
        coverage = self._coverage(person, cert["insutype"])
        coverage["psn_insu_stas"] = "1"
        coverage.pop("stop_date", None)
        if cert["fund_state"] == "moved":
            coverage["balc"] += cert["acct_balc"]
            cert["fund_state"] = "returned"
        cert["state"] = "cancelled"
        self._commit("4103", env, transfer_id=transfer_id, cert_no=cert["cert_no"], psn_no=cert["psn_no"],
                     fund_txn_id=fund_txn_id)
        return {"restored": True}

    # -- faults and observation -----------------------------------------------------------------

    def set_faults(self, **settings: Any) -> None:
        with self.world.lock:
            self.faults = Faults(**settings)
            self.rng = random.Random(self.faults.seed)

    def plan(self) -> Plan:
        """Draw what happens to the message that just arrived (under the lock: seeded order)."""
        with self.world.lock:
            f = self.faults
            if f.maintenance:
                return Plan(maintenance=True)
            if f.next_faults:
                kind = f.next_faults.pop(0)
                return Plan(slow=True) if kind == "slow" else Plan(kind=kind)
            for kind, rate in (("503", f.fail_503_rate), ("reset", f.reset_rate),
                               ("drop", f.drop_answer_rate), ("non_json", f.non_json_rate)):
                if rate and self.rng.random() < rate:
                    return Plan(kind=kind)
            return Plan(slow=bool(f.slow_rate and self.rng.random() < f.slow_rate))

    def note_received(self, infno: str, body: bytes) -> None:
        try:
            msgid = orjson.loads(body).get("msgid")
        except (orjson.JSONDecodeError, AttributeError):
            msgid = None
        with self.world.lock:
            self.received.append({"infno": infno, "msgid": msgid, "at": fmt_time(self.world.now())})

    @contextmanager
    def in_flight_call(self):
        with self.world.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            yield
        finally:
            with self.world.lock:
                self.in_flight -= 1

    def ledger_copy(self) -> list[dict[str, Any]]:
        with self.world.lock:
            return copy.deepcopy(self.ledger)


# ---------------------------------------------------------------------------------------------
# HTTP (asyncio: one event loop in one thread serves every connection of the four platforms)
# ---------------------------------------------------------------------------------------------

API_PATH = re.compile(r"/api/(\d{4})")
IDLE_TIMEOUT = 120.0  # an idle keep-alive connection is closed after this
MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024
JSON_TYPE = "application/json; charset=utf-8"
# Where the contract leaves the choice open the provinces differ: SH and JS send no charset in
# Content-Type, and SH and AH close the connection after every answer (HTTP/1.0 style) while JS
# and ZJ keep it alive.
BARE_JSON_TYPE = {"SH": "application/json", "JS": "application/json"}
CLOSE_AFTER_ANSWER = frozenset({"SH", "AH"})


class _BadRequest(Exception):
    """A request the server cannot read: answered 400, then the connection is closed."""


@dataclass
class _Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool
    arrived: float = 0.0  # the loop's time when the head was read: latency counts from it


@dataclass
class _Response:
    status: int
    body: bytes = b""
    content_type: str = JSON_TYPE
    headers: dict[str, str] = field(default_factory=dict)
    reset: bool = False  # close with a TCP RST instead of answering

    def encode(self, keep_alive: bool) -> bytes:
        """Status line, headers and body as one buffer: one send, so Nagle's algorithm and the
        client's delayed ACK never hold the body back."""
        try:
            reason = HTTPStatus(self.status).phrase
        except ValueError:
            reason = ""
        lines = [f"HTTP/1.1 {self.status} {reason}", f"Content-Type: {self.content_type}",
                 f"Content-Length: {len(self.body)}", *(f"{k}: {v}" for k, v in self.headers.items())]
        if not keep_alive:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


async def _sleep_until(when: float) -> None:
    """Sleep until the loop's time ``when`` (not at all when it has passed)."""
    delay = when - asyncio.get_running_loop().time()
    if delay > 0:
        await asyncio.sleep(delay)


def _json(status: int, value: Any) -> _Response:
    return _Response(status, orjson.dumps(value))


def _abort_with_reset(transport: asyncio.BaseTransport) -> None:
    """Close with a TCP RST (SO_LINGER 0): the client sees 'connection reset', no answer."""
    sock = transport.get_extra_info("socket")
    try:
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    transport.abort()


async def _read_request(reader: asyncio.StreamReader) -> _Request | None:
    """The next request of a keep-alive connection; None when the client closed it."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise _BadRequest("incomplete request head") from None
        return None
    except asyncio.LimitOverrunError:
        raise _BadRequest("request head too long") from None
    arrived = asyncio.get_running_loop().time()
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, version = lines[0].split(" ")
    except ValueError:
        raise _BadRequest("bad request line") from None
    if not version.startswith("HTTP/1."):
        raise _BadRequest("not HTTP/1.x")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise _BadRequest("bad header line")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    else:
        try:
            length = int(headers.get("content-length") or 0)
        except ValueError:
            raise _BadRequest("bad Content-Length") from None
        if not 0 <= length <= MAX_BODY:
            raise _BadRequest("bad Content-Length")
        body = await reader.readexactly(length) if length else b""
    connection = headers.get("connection", "").lower()
    keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
    return _Request(method, urlsplit(target).path, headers, body, keep_alive, arrived)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts, size = [], 0
    while True:
        line = await reader.readuntil(b"\r\n")
        try:
            length = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise _BadRequest("bad chunk size") from None
        if length == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return b"".join(parts)
        size += length
        if size > MAX_BODY:
            raise _BadRequest("body too large")
        parts.append(await reader.readexactly(length))
        await reader.readexactly(2)


class _Server:
    """One province's platform over HTTP/1.1 with keep-alive, on the simulators' event loop.

    The listening socket is bound at construction (OSError when the port is taken, listen
    backlog 1024: 200 and more clients connect at once); ``start`` serves it on the loop. Fixed
    latency and slow answers are non-blocking waits, so any number of calls wait at once.
    """

    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], platform: Platform, *, keep_alive: bool = True):
        self.platform = platform
        self.keep_alive = keep_alive  # False: every answer says Connection: close, then closes
        self.json_type = BARE_JSON_TYPE.get(platform.province, JSON_TYPE)
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind(address)
            self.socket.listen(self.request_queue_size)
            self.socket.setblocking(False)
        except OSError:
            self.socket.close()
            raise
        self.server_address = self.socket.getsockname()
        self.connections: set[asyncio.Transport] = set()
        self.tasks: set[asyncio.Task] = set()
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, sock=self.socket,
                                                  backlog=self.request_queue_size, limit=MAX_HEAD)

    async def close(self) -> None:
        """Stop listening, drop every connection, end every handler."""
        if self._server is not None:
            self._server.close()
        else:
            self.socket.close()
        self.drop_connections()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)

    def drop_connections(self) -> None:
        for transport in list(self.connections):
            transport.abort()

    # -- one connection --------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        transport = writer.transport
        task = asyncio.current_task()
        self.connections.add(transport)
        if task is not None:
            self.tasks.add(task)
        try:
            while True:
                try:
                    async with asyncio.timeout(IDLE_TIMEOUT):
                        request = await _read_request(reader)
                except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
                    return
                except _BadRequest as exc:
                    writer.write(_json(400, {"error": str(exc)}).encode(keep_alive=False))
                    return
                if request is None:
                    return
                response = await self._route(request)
                if response.reset:
                    _abort_with_reset(transport)
                    return
                keep_alive = request.keep_alive and self.keep_alive
                writer.write(response.encode(keep_alive))
                if not keep_alive:
                    return
                try:
                    await writer.drain()
                except ConnectionError:  # the client went away (it timed out): nothing to tell it
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: connection failed", self.platform.province)
        finally:
            self.connections.discard(transport)
            if task is not None:
                self.tasks.discard(task)
            if not transport.is_closing():
                transport.close()

    # -- routes ----------------------------------------------------------------------------------

    async def _route(self, request: _Request) -> _Response:
        platform = self.platform
        log.debug("%s %s %s", platform.province, request.method, request.path)
        if request.method == "GET":
            views: dict[str, Callable[[], Any]] = {
                "/_sim/ledger": platform.ledger_copy,
                "/_sim/received": lambda: list(platform.received),
                "/_sim/health": lambda: {"province": platform.province, "ok": True},
            }
            view = views.get(request.path)
            return _json(404, {"error": "not found"}) if view is None else _json(200, view())
        if request.method != "POST":
            return _json(501, {"error": "unsupported method"})
        if request.path == "/_sim/faults":
            return self._control_faults(request.body)
        match = API_PATH.fullmatch(request.path)
        if match is None or match.group(1) not in platform.handlers:
            return _json(404, {"infcode": -1, "err_msg": "未知交易", "output": {"err_code": "NO_SUCH_INFNO"}})
        with platform.in_flight_call():
            return await self._api(platform, match.group(1), request.body, request.arrived)

    def _control_faults(self, body: bytes) -> _Response:
        try:
            self.platform.set_faults(**(orjson.loads(body) if body else {}))
        except (TypeError, ValueError) as exc:
            return _json(400, {"error": str(exc)})
        return _json(200, {"ok": True})

    async def _api(self, platform: Platform, infno: str, body: bytes, arrived: float) -> _Response:
        """One platform call. ``latency_ms`` (and a slow answer's ``slow_ms``) count from the
        request's arrival: the answer leaves then, whatever reading and processing took, so
        that a fixed latency is what the caller sees (the benchmark subtracts it)."""
        platform.note_received(infno, body)
        plan, faults = platform.plan(), platform.faults
        status, processed_first = (503, False) if plan.maintenance else BUSY_FAULTS.get(plan.kind, (0, False))
        if status:
            if processed_first:
                self._process(platform, infno, body)
            retry = faults.retry_after if faults.retry_after is not None else (60 if plan.maintenance else None)
            headers = {"Retry-After": str(retry)} if retry is not None else {}
            return _Response(status, "系统繁忙或维护中，请稍后再试".encode(), "text/plain; charset=utf-8", headers)
        if plan.kind == "reset":
            return _Response(0, reset=True)
        answer_at = arrived + faults.latency_ms / 1000 + (faults.slow_ms / 1000 if plan.slow else 0.0)
        if plan.slow and faults.slow_before_processing:
            await _sleep_until(answer_at)
        status, answer = self._process(platform, infno, body)
        await _sleep_until(answer_at)
        if (hold := platform.holds.get(infno)) is not None:
            await hold.wait()
        if plan.kind == "drop":
            return _Response(0, reset=True)
        if plan.kind == "non_json":
            return _Response(200, b"<html><body>502 Bad Gateway</body></html>", "text/html")
        return _Response(status, orjson.dumps(answer), self.json_type)

    @staticmethod
    def _process(platform: Platform, infno: str, body: bytes) -> tuple[int, dict]:
        """Decode the envelope and run the transaction; a malformed envelope is 400."""
        try:
            envelope = orjson.loads(body)
        except orjson.JSONDecodeError:
            envelope = None
        if not isinstance(envelope, dict) or not envelope.get("msgid") or envelope.get("infno") != infno \
                or len(str(envelope["msgid"])) > 30 or not isinstance(envelope.get("input", {}), dict):
            return 400, {"infcode": -1, "err_msg": "报文格式错误", "output": {"err_code": "BAD_MESSAGE"}}
        try:
            return 200, platform.process(infno, envelope)
        except Exception:  # a bug in the simulator: answer as a platform would, 500
            log.exception("%s failed on %s", platform.province, infno)
            return 500, {"infcode": -1, "err_msg": "系统内部错误", "output": {"err_code": "INTERNAL"}}


# ---------------------------------------------------------------------------------------------
# Running them
# ---------------------------------------------------------------------------------------------


class Simulators:
    """The four running platforms, served by one event loop in a background thread.
    ``urls[province]`` is each base URL."""

    def __init__(self, world: World, servers: dict[str, _Server], host: str):
        self.world, self.servers = world, servers
        self.platforms = {p: s.platform for p, s in servers.items()}
        self.urls = {p: f"http://{host}:{s.server_address[1]}" for p, s in servers.items()}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="simulators", daemon=True)
        self._thread.start()
        self._stopped = False
        try:
            self._on_loop(self._start_all(), timeout=10)
        except BaseException:
            self.stop()
            raise

    def _on_loop(self, coro, timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _start_all(self) -> None:
        for server in self.servers.values():
            await server.start()

    async def _close_all(self) -> None:
        await asyncio.gather(*(server.close() for server in self.servers.values()), return_exceptions=True)

    def env(self) -> dict[str, str]:
        """The hub's configuration for these platforms: ``YRDHUB_INSURER_SH_URL`` and so on."""
        return {f"YRDHUB_INSURER_{p}_URL": url for p, url in self.urls.items()}

    def ledger(self, province: str) -> list[dict[str, Any]]:
        """Committed settlements and transfer steps, oldest first, each with ``msgid`` and
        ``commit_no`` (the n-th commit of that msgid: 2 means a resend committed again)."""
        return self.platforms[province].ledger_copy()

    def settlements(self, province: str, setl_id: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.ledger(province) if e["kind"] == "settlement"
                and (setl_id is None or e["setl_id"] == setl_id)]

    def received(self, province: str, infno: str | None = None, msgid: str | None = None) -> list[dict]:
        """Every message that arrived (faulted or not): ``{"infno", "msgid", "at"}``."""
        with self.world.lock:
            return [dict(r) for r in self.platforms[province].received
                    if (infno is None or r["infno"] == infno) and (msgid is None or r["msgid"] == msgid)]

    def set_faults(self, province: str, **settings: Any) -> None:
        """Replace the province's fault settings (see ``Faults``); unnamed settings reset."""
        self.platforms[province].set_faults(**settings)

    def clear_faults(self, province: str | None = None) -> None:
        for p in [province] if province else list(self.platforms):
            self.platforms[p].set_faults()

    def set_latency(self, latency_ms: int, province: str | None = None) -> None:
        """Answer every call after ``latency_ms`` (the benchmark's fixed latency); no other fault."""
        for p in [province] if province else list(self.platforms):
            self.platforms[p].set_faults(latency_ms=latency_ms)

    def hold_answers(self, province: str, infno: str) -> Callable[[], None]:
        """From now on, messages ``infno`` to ``province`` are processed as they arrive but
        answered only once the returned function is called (tests: let another party act
        between a message's processing and its answer, with no timing involved)."""
        event = self.platforms[province].holds[infno] = asyncio.Event()

        def release() -> None:
            self.platforms[province].holds.pop(infno, None)
            self._loop.call_soon_threadsafe(event.set)
        return release

    def max_in_flight(self, province: str) -> int:
        return self.platforms[province].max_in_flight

    def person(self, province: str, certno: str) -> dict[str, Any] | None:
        """A copy of the platform's current record of a person (money as Decimal)."""
        with self.world.lock:
            found = self.platforms[province]._find(certno=certno)
            return copy.deepcopy(found)

    def stop(self) -> None:
        """Stop listening, drop every connection (clients see them closed), end the loop."""
        if self._stopped:
            return
        self._stopped = True
        if self._loop.is_running():
            try:
                self._on_loop(self._close_all(), timeout=5)
            except Exception:  # noqa: BLE001 - stopping anyway
                log.exception("stopping the simulators")
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()
        for server in self.servers.values():
            server.socket.close()

    def __enter__(self) -> Simulators:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_simulators(ports: dict[str, int] | None = None, persons_path: str | Path | None = None, *,
                     host: str = "127.0.0.1", clock: Callable[[], datetime] | None = None,
                     ledger_path: str | Path | None = None,
                     close_after_answer: frozenset[str] = CLOSE_AFTER_ANSWER) -> Simulators:
    """Start the four platforms (one event loop in a background thread) and return them running.

    ``ports``: province -> port; absent or 0 picks a free port. ``persons_path``: the persons to
    seed (default ``fixtures/persons.json``). ``clock``: the platforms' "now" (+08:00), for the
    72 h window, token expiry and dates. ``ledger_path``: a JSON file rewritten after every
    message with every province's ledger. ``close_after_answer``: the provinces that close the
    connection after each answer (the rest keep it alive). Raises OSError when a port is taken.
    """
    world = World(clock=clock, ledger_path=ledger_path)
    persons = load_persons(persons_path)
    servers: dict[str, _Server] = {}
    try:
        for province in PROVINCE_ADMDVS:
            platform = Platform(province, world, persons)
            world.platforms[province] = platform
            servers[province] = _Server((host, (ports or {}).get(province, 0)), platform,
                                        keep_alive=province not in close_after_answer)
    except OSError:
        for server in servers.values():
            server.socket.close()
        raise
    return Simulators(world, servers, host)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Simulated province insurance platforms (SH, JS, ZJ, AH)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--base-port", type=int, default=9101, help="SH on it, then JS, ZJ, AH")
    parser.add_argument("--persons", default=None, help="persons JSON (default fixtures/persons.json)")
    parser.add_argument("--ledger-file", default=None, help="write the ledgers to this JSON file")
    parser.add_argument("--latency-ms", type=int, default=0, help="answer every call after N ms")
    parser.add_argument("--keep-alive", action="store_true",
                        help="every province keeps connections alive (default: SH and AH close them after each answer)")
    args = parser.parse_args(argv)
    from hub.cli import tune_gc

    tune_gc()  # the collector's pauses would be the platforms' latency
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    ports = {p: args.base_port + i for i, p in enumerate(PROVINCE_ADMDVS)}
    sims = start_simulators(ports, args.persons, host=args.host, ledger_path=args.ledger_file,
                            close_after_answer=frozenset() if args.keep_alive else CLOSE_AFTER_ANSWER)
    if args.latency_ms:
        sims.set_latency(args.latency_ms)
    for name, url in sims.env().items():
        print(f"{name}={url}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    sims.stop()


if __name__ == "__main__":
    main()
