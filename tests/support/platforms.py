"""The insurance platforms that platform-facing tests run against, behind one interface.

Two independent implementations of ``world/insurer-api.md``:

- ``simulator``: the hub's own (``settlement.simulated``), in this process.
- ``sandbox``: the provinces' integration sandbox (``shared/peers/insurer-sandbox/sandbox.py``),
  started as it is in a process of its own. The hub talks to it through a pass-through proxy
  per province that records what arrived and injects the same faults as the simulator
  (``settlement.simulated.Faults``: next faults, rates, latency, maintenance), so that a test
  states its faults once; what is committed, and how, is the sandbox's own business logic.

Both answer the same questions (``urls``, ``received``, ``ledger``, ``settlements``, ``person``,
``set_faults``, ``clear_faults``, ``set_latency``, ``lose_settlement``, ``stop``), with the
ledger and persons in the simulator's shapes. Totals versions differ between the two (the
contract only says a version changes): compare them with what was read before, never with a
number.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import tempfile
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
import pytest

from settlement.simulated import (LEDGER_KINDS, PROVINCE_ADMDVS, Platform, ProvinceServer, Simulators, World,
                                  load_persons, start_simulators)

ROOT = Path(__file__).resolve().parents[2]
PERSONS = ROOT / "fixtures" / "persons.json"
SANDBOX = ROOT.parent / "shared" / "peers" / "insurer-sandbox" / "sandbox.py"
KINDS = ("simulator", "sandbox")


class SimulatorPlatforms:
    """The hub's simulator, with the few test hooks the sandbox also has."""

    kind = "simulator"

    def __init__(self, **kwargs: Any):
        self.sims = start_simulators(**kwargs)

    def __getattr__(self, name: str) -> Any:  # urls, received, set_faults, ledger, person, ...
        return getattr(self.sims, name)

    def person_by_psn(self, province: str, psn_no: str) -> dict[str, Any] | None:
        with self.sims.world.lock:
            return copy.deepcopy(self.sims.platforms[province]._find(psn_no=psn_no))

    def lose_settlement(self, province: str, setl_id: str) -> None:
        """The platform forgets a settlement (for reconciliation tests)."""
        platform = self.sims.platforms[province]
        with self.sims.world.lock:
            platform.ledger = [e for e in platform.ledger if e.get("setl_id") != setl_id]


class _Forwarder(ProvinceServer):
    """The simulator's HTTP layer and fault injection, processing by passing the message on
    (an aiohttp client on the same loop: concurrent messages pass concurrently)."""

    def __init__(self, address: tuple[str, int], platform: Platform, upstream: str):
        super().__init__(address, platform)
        self.upstream = upstream
        self.http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        await super().start()

    async def close(self) -> None:
        await super().close()
        if self.http is not None:
            await self.http.close()

    async def _process(self, infno: str, body: bytes) -> tuple[int, dict]:
        async with self.http.post(f"{self.upstream}/api/{infno}", data=body,
                                  headers={"Content-Type": "application/json"}) as r:
            return r.status, orjson.loads(await r.read())


class SandboxPlatforms(Simulators):
    """The provinces' sandbox behind fault-injecting proxies (see the module docstring)."""

    kind = "sandbox"

    def __init__(self, persons: list[dict[str, Any]]):
        self._seed = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
        json.dump(persons, self._seed, ensure_ascii=False)
        self._seed.close()
        self.proc = subprocess.Popen([sys.executable, str(SANDBOX), "--port", "0", "--seed-file", self._seed.name],
                                     stdout=subprocess.PIPE, text=True)
        port = int(self.proc.stdout.readline().strip())
        self.control = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, trust_env=False)
        world = World()
        servers = {}
        for province in PROVINCE_ADMDVS:
            world.platforms[province] = Platform(province, world, [])
            servers[province] = _Forwarder(("127.0.0.1", 0), world.platforms[province],
                                           f"http://127.0.0.1:{port}/{province}")
        super().__init__(world, servers, "127.0.0.1")

    def reset(self) -> None:
        """Back to the seed persons, nothing received, no faults."""
        self.control.post("/_control/reset").raise_for_status()
        self.control.post("/_control/rules/clear").raise_for_status()
        for platform in self.platforms.values():
            with self.world.lock:
                platform.received.clear()
        self.clear_faults()

    def ledger(self, province: str) -> list[dict[str, Any]]:
        """What the sandbox committed, in the simulator's shape: settlements (live or voided)
        and transfer steps that were processed (not replayed, not refused)."""
        raw = self.control.get("/_control/ledger").json()
        entries = []
        for s in raw["settlements"]:
            if s["province"] != province or s["status"] == "deleted":
                continue
            commit_no = 1 + sum(1 for e in entries if e["kind"] == "settlement" and e["msgid"] == s["msgid"])
            entries.append({"kind": "settlement", "infno": "2207", "msgid": s["msgid"], "commit_no": commit_no,
                            "setl_id": s["setl_id"], "insurer_setl_id": s["insurer_setl_id"],
                            "status": s["status"], "psn_no": s["psn_no"], **s["amounts"], "seq": s["seq"]})
        for step in raw["transfer_steps"]:
            if step["province"] == province and not step["replayed"] and step["outcome"] == "ok":
                entries.append({"kind": LEDGER_KINDS[step["infno"]], "infno": step["infno"], "msgid": step["msgid"],
                                "transfer_id": step["transfer_id"], "commit_no": 1, "seq": step["seq"]})
        entries.sort(key=lambda e: e.pop("seq"))
        return entries

    def person(self, province: str, certno: str) -> dict[str, Any] | None:
        """The sandbox's record of a person, in the simulator's shape (money as Decimal)."""
        return self._person({"province": province, "certno": certno})

    def person_by_psn(self, province: str, psn_no: str) -> dict[str, Any] | None:
        return self._person({"province": province, "psn_no": psn_no})

    def _person(self, params: dict[str, str]) -> dict[str, Any] | None:
        r = self.control.get("/_control/person", params=params)
        if r.status_code == 404:
            return None
        view = r.json()
        state = view["_state"]
        insuinfo = [{**i, "balc": Decimal(state["balc"]), "psn_insu_stas": state["psn_insu_stas"]}
                    for i in view["insuinfo"]]
        accum = {int(y): {"dedc_accu": Decimal(a["dedc_accu"]), "fund_pay_accu": Decimal(a["fund_pay_accu"]),
                          "version": a["version"]} for y, a in state["accum"].items()}
        return {**view["baseinfo"], "insuinfo": insuinfo, "accum": accum, "insu_months": state["insu_months"]}

    def direct_env(self) -> dict[str, str]:
        """The hub's configuration for the sandbox itself, without the proxies: its own faults
        (``set_native_faults``) then reach the hub as the sandbox makes them."""
        base = str(self.control.base_url).rstrip("/")
        return {f"YRDHUB_INSURER_{p}_URL": f"{base}/{p}" for p in PROVINCE_ADMDVS}

    def set_native_faults(self, spec: dict[str, dict | None]) -> None:
        """The sandbox's own fault profiles (its README), ``None`` clearing a province's."""
        self.control.post("/_control/faults", json=spec).raise_for_status()

    def lose_settlement(self, province: str, setl_id: str) -> None:
        assert self.control.post("/_control/tamper", json={"province": province, "setl_id": setl_id,
                                                           "action": "delete"}).json()["ok"]

    def stop(self) -> None:
        super().stop()
        self.control.close()
        self.proc.terminate()
        self.proc.wait(10)
        self.proc.stdout.close()  # the pipe its port was read from
        Path(self._seed.name).unlink(missing_ok=True)


def sandbox_persons(path: Path = PERSONS) -> list[dict[str, Any]]:
    """``fixtures/persons.json`` (the simulator's shape) as the sandbox's seed persons."""
    out = []
    for p in load_persons(path):
        [coverage] = p["insuinfo"]  # the sandbox holds one coverage per person
        out.append({
            "psn_no": p["psn_no"], "certno": p["certno"], "name": p["psn_name"], "gend": p["gend"],
            "brdy": p["brdy"], "insutype": coverage["insutype"], "psn_type": coverage["psn_type"],
            "insuplc_admdvs": coverage["insuplc_admdvs"], "psn_insu_stas": coverage["psn_insu_stas"],
            "psn_insu_date": coverage["psn_insu_date"], "balc": str(coverage["balc"]),
            "accum": {str(y): {"dedc_accu": str(a["dedc_accu"]), "fund_pay_accu": str(a["fund_pay_accu"])}
                      for y, a in p["accum"].items()},
            "filings": copy.deepcopy(p["filing"]),
            "tokens": [{"token": e["code"], "expires": e["expires"]} for e in p["evoucher"]],
            "insu_months": p.get("insu_months", 60), "arrears": bool(p.get("arrears_months")),
            "pending_settlement": bool(p.get("pending_settlement")), "ss_card_no": p.get("card_no", ""),
        })
    return out


_SANDBOX: SandboxPlatforms | None = None


def platforms(kind: str):
    """A context of running platforms of ``kind`` with the fixture persons: the simulator is
    started anew; the sandbox is started once per test session and reset."""
    global _SANDBOX
    if kind == "simulator":
        return SimulatorPlatforms()
    if _SANDBOX is None:
        _SANDBOX = SandboxPlatforms(sandbox_persons())
    _SANDBOX.reset()
    return _SANDBOX


def stop_sandbox() -> None:
    global _SANDBOX
    if _SANDBOX is not None:
        _SANDBOX.stop()
        _SANDBOX = None


@pytest.fixture(params=KINDS)
def sims(request):
    """The platforms, once per implementation."""
    running = platforms(request.param)
    yield running
    if running.kind == "simulator":
        running.stop()
    else:
        running.clear_faults()
