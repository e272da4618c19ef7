"""One province's simulated platform: persons, accounts, ledgers and the handlers of every
``infno`` of ``world/insurer-api.md``, with no HTTP here (``server`` serves it, ``faults`` decides
what happens to a message on the wire).

- SH, JS, ZJ keep each ``msgid`` for 72 h: the same ``msgid`` and input returns the first answer
  (whatever it was), the same ``msgid`` with another input is refused ``MSGID_REUSED``.
- AH keeps no such record: a 2207 it already processed, sent again, commits a further settlement,
  without the ``setl_id`` and totals-version checks (the hazard 5205 exists for).
- Every province records every answered message for 5205, and marks a ``msgid`` dead when a 2601
  names it before it was processed (the late original is then refused ``MSG_REVERSED``).
- Transfers (4101/4102/4201/4103) are keyed by ``(infno, transfer_id)`` on every province: a repeat
  for the same transfer returns the first answer, under any ``msgid``.

The platforms of one ``World`` share one lock and one registry of coverage records (参保凭证),
so a destination can check the record an origin issued, and an origin knows when a destination
has used it (a 4103 after that is refused ``CERT_INVALID``).
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import logging
import os
import random
import threading
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import orjson

from mappers.region import CST, PROVINCE_ADMDVS, PROVINCE_OF_PREFIX, area_prefix, money_text
from settlement.simulated.faults import Faults, Plan, draw

log = logging.getLogger(__name__)

# Province code -> its platform's own area code (insurer-api.md, first table).
# Whether the platform keeps each msgid for 72 h (insurer-api.md). Data, not an if chain.
DEDUPLICATES: dict[str, bool] = {"SH": True, "JS": True, "ZJ": True, "AH": False}
DEDUP_WINDOW = timedelta(hours=72)
DEFAULT_PERSONS = Path(__file__).resolve().parents[2] / "fixtures" / "persons.json"
TRANSFER_INFNOS = frozenset({"4101", "4102", "4201", "4103"})
SPLIT_FIELDS = ("medfee_sumamt", "fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt",
                "inscp_scp_amt", "act_pay_dedc", "hifp_pay", "acct_pay", "psn_cash_pay",
                "fund_pay_sumamt")
RECON_FIELDS = ("medfee_sumamt", "fund_pay_sumamt", "acct_pay")

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


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------


class SimRefusal(Exception):
    """A business refusal (answered infcode -1); ``extra`` goes into ``output`` next to err_code."""

    def __init__(self, code: str, detail: str = "", **extra: Any):
        super().__init__(code)
        self.code, self.detail, self.extra = code, detail, extra


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


def canonical(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def fmt_time(when: datetime) -> str:
    return when.astimezone(CST).strftime("%Y-%m-%d %H:%M:%S")


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
        the Content-Type and the connection's fate differ by province (``server``). A client
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
        return {"year": year, "dedc_accu": money_text(acc["dedc_accu"]),
                "fund_pay_accu": money_text(acc["fund_pay_accu"]), "version": acc["version"]}

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
            "insuinfo": [{k: (money_text(v) if k == "balc" else v) for k, v in ins.items() if k != "stop_date"}
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
            raise SimRefusal("INSUFFICIENT_BALANCE", balc=money_text(coverage["balc"]))
        coverage["balc"] -= split["acct_pay"]
        accum["dedc_accu"] += split["act_pay_dedc"]
        accum["fund_pay_accu"] += split["hifp_pay"]
        accum["version"] += 1
        entry = self._commit("2207", env, psn_no=psn_no, insutype=insutype, mdtrt_id=mdtrt_id,
                             setl_id=setl_id, insurer_setl_id=f"S{self.admdvs[:2]}{self.world.now():%Y%m%d}{self.world.next_no():06d}",
                             setl_time=setl_time, accum_year=year, status="settled",
                             mdtrtarea_admvs=env.get("mdtrtarea_admvs") or str(env.get("fixmedins_code", ""))[1:7],
                             fixmedins_code=env.get("fixmedins_code"),
                             **{k: money_text(v) for k, v in split.items()})
        return {"setl_id": setl_id, "insurer_setl_id": entry["insurer_setl_id"],
                "accum": self._accum_out(person, year), "balc": money_text(coverage["balc"])}

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
                "balc": money_text(self._coverage(person, entry["insutype"])["balc"])}
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
                **{f: money_text(v) for f, v in totals.items()}}

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
            diff = {f: {"hub": money_text(Decimal(str(theirs.get(f, "0")))), "insurer": entry[f]}
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
                     insutype=insutype, to_admdvs=to_admdvs, acct_balc=money_text(coverage["balc"]))
        return {"cert_no": cert_no, "psn_no": person["psn_no"], "insu_months": int(person.get("insu_months", 0)),
                "acct_balc": money_text(coverage["balc"]), "last_month": f"{now:%Y-%m}", "stop_date": now.date().isoformat()}

    def _transfer_funds(self, env: dict, inp: dict, repeat: bool) -> dict:
        transfer_id, _cert_no, _to = required(inp, "transfer_id", "cert_no", "to_admdvs")
        amount = parse_money(inp, "amount")
        cert = self._origin_cert(inp)
        if cert["state"] != "issued":
            raise SimRefusal("CERT_INVALID")
        if amount != cert["acct_balc"] or cert["fund_state"] == "moved":
            raise SimRefusal("FUNDS_MISMATCH", acct_balc=money_text(cert["acct_balc"]))
        person = self._find(psn_no=cert["psn_no"])
        self._coverage(person, cert["insutype"])["balc"] -= amount
        fund_txn_id = f"FT{self.admdvs[:2]}{self.world.now():%Y%m%d}{self.world.next_no():06d}"
        cert.update(fund_txn_id=fund_txn_id, fund_state="moved")
        self._commit("4102", env, transfer_id=transfer_id, cert_no=cert["cert_no"], amount=money_text(amount),
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
                     insutype=insutype, acct_balc=money_text(acct_balc), fund_txn_id=fund_txn_id)
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
            return draw(self.faults, self.rng)

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


