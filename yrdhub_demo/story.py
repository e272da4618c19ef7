"""What the demo shows, step by step, through the hub's real HTTP endpoints: each step makes its
calls as the party would (a hospital, a province's platform, an administrator, a patient in the
portal) and returns the lines that say what happened. A step that goes wrong raises StepFailed
naming the call and the hub's answer.
"""

from __future__ import annotations

import re
import string
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from tqdm import tqdm

from hub.auth import create_token
from mappers.region import CST, province_of
from settlement.reference import default_reference
from settlement.transfer import region_places
from yrdhub_demo import shipped

RESIDENT_ID = "urn:oid:2.16.156.10011.1.3"
# The persons of the story (shipped persons.json): (name, insured province, e-voucher, resident ID).
LISI = ("李四", "ZJ", "ZJEV-LISI-8F3K2Q7M", "33042119850412002X")
CHEN = ("陈建国", "JS", "JSEV-CHENJIANGUO-6P1X", "320509197801020038")
QINGPU = "H31011800012"  # SH: registers 李四 today, then bills her visit
WUJIANG = "H32050900012"  # JS: never saw 李四
# hub-interface.md's settlement example: 李四 (ZJ) at Qingpu, a bill of 37.20 (its split is there).
BILL = {"request_key": "DEMO-0001", "fixmedins_code": QINGPU, "mdtrt_id": "MZ2024031500077",
        "mdtrt_cert_type": "02", "mdtrt_cert_no": LISI[3], "insuplc_admdvs": "330421", "insutype": "310",
        "visit_type": "outpatient", "visit_time": "2024-03-15T09:30:00+08:00", "use_personal_account": True,
        "lines": [{"med_list_codg": "XJ01CAA040A001", "cnt": "2", "pric": "18.60", "det_item_fee_sumamt": "37.20"}]}
TRANSFER = {"to_admdvs": "340104", "insutype": "310"}  # 陈建国: from Suzhou (JS) to Hefei (AH)
FINAL_TRANSFER = ("completed", "refused", "cancelled")


class StepFailed(Exception):
    """A call of the demo got an answer it did not expect."""


@dataclass
class Ctx:
    base: str
    engine: Any  # the hub's, to issue tokens as `yrdhub token create` does
    sims: Any  # the simulated platforms (to show what their ledgers hold)

    def client(self, kind: str | None = None, subject: str | None = None) -> httpx.Client:
        """A client of the hub, carrying a new token of that party (none without ``kind``)."""
        headers = {"Authorization": f"Bearer {create_token(self.engine, kind, subject)}"} if kind else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=60)


def expect(answer: httpx.Response, *statuses: int) -> httpx.Response:
    if answer.status_code not in statuses:
        raise StepFailed(f"{answer.request.method} {answer.request.url.path} answered "
                         f"{answer.status_code}: {answer.text[:300]}")
    return answer


def hospital_name(code: str) -> str:
    return default_reference().hospitals[code].name


def place_name(admdvs: str) -> str:
    return next((p["name"] for p in region_places() if p["admdvs"] == admdvs), admdvs)


# ---------------------------------------------------------------------------------------------
# 1. Records from the four provinces
# ---------------------------------------------------------------------------------------------


def post_upload(ctx: Ctx, upload: shipped.Upload, body: bytes) -> httpx.Response:
    with ctx.client("hospital", upload.sender) as http:
        return expect(http.post(f"/ingest/{upload.channel}", content=body,
                                headers={"Content-Type": upload.content_type}), 200)


def counts_of(channel: str, answer: httpx.Response) -> Counter:
    """stored / unchanged / rejected of one answer (an HL7 ACK per message: AA stored, else rejected)."""
    if channel == "sh":
        codes = re.findall(r"MSA\|(\w+)", answer.text)
        return Counter(stored=codes.count("AA"), rejected=len(codes) - codes.count("AA"))
    summary = answer.json()
    return Counter(stored=summary["stored"], unchanged=summary["unchanged"], rejected=len(summary["rejected"]))


def load_records(ctx: Ctx) -> list[str]:
    per_province: dict[str, Counter] = {}
    for upload in tqdm(shipped.UPLOADS, desc="loading records", unit="upload", leave=False):
        answer = post_upload(ctx, upload, shipped.read(upload.name))
        per_province.setdefault(upload.channel.upper(), Counter()).update(counts_of(upload.channel, answer))
    parts = [f"{p} {c['stored']} records stored" + (f", {c['rejected']} set aside" if c["rejected"] else "")
             for p, c in per_province.items()]
    return [f"Records: {len(shipped.UPLOADS)} uploads from {len(per_province)} provinces' hospitals "
            f"({'; '.join(parts)})"]


# ---------------------------------------------------------------------------------------------
# 2. A cross-province lookup under the sharing rules
# ---------------------------------------------------------------------------------------------


def todays_visit() -> bytes:
    """Qingpu registers 李四 now (the shipped template, dated a few minutes ago, +08:00)."""
    now = datetime.now(CST) - timedelta(minutes=5)
    template = string.Template(shipped.read(shipped.TODAY_VISIT).decode("utf-8"))
    return template.substitute(now=now.strftime("%Y%m%d%H%M%S"), today=now.strftime("%Y%m%d")).encode()


def visits_by_province(bundle: dict) -> Counter:
    """Province -> Encounters in a Bundle, by the hospital (``serviceProvider``) that saw them."""
    resources = [e["resource"] for e in bundle.get("entry", [])]
    hospital_of = {f"Organization/{r['id']}": i["value"] for r in resources
                   if r["resourceType"] == "Organization" for i in r.get("identifier", [])}
    return Counter(province_of(hospital_of.get(r.get("serviceProvider", {}).get("reference"), ""))
                   for r in resources if r["resourceType"] == "Encounter")


def lookup(ctx: Ctx) -> list[str]:
    upload = shipped.Upload("sh", shipped.TODAY_VISIT, QINGPU)
    post_upload(ctx, upload, todays_visit())
    with ctx.client("hospital", QINGPU) as qingpu, ctx.client("hospital", WUJIANG) as wujiang:
        found = expect(qingpu.get("/fhir/Patient", params={"identifier": f"{RESIDENT_ID}|{LISI[3]}"}), 200).json()
        patient = found["entry"][0]["resource"]["id"]
        everything = expect(qingpu.get(f"/fhir/Patient/{patient}/$everything"), 200).json()
        refused = expect(wujiang.get(f"/fhir/Patient/{patient}/$everything"), 403)
    visits = visits_by_province(everything)
    where = ", ".join(f"{n} in {p or 'unknown'}" for p, n in sorted(visits.items(), key=str))
    return [f"Lookup: {hospital_name(QINGPU)} (SH), treating {LISI[0]} since today's visit, read her "
            f"records: {len(everything.get('entry', []))} resources, visits {where}",
            f"        {hospital_name(WUJIANG)} (JS), not treating her, was refused ({refused.status_code})"]


# ---------------------------------------------------------------------------------------------
# 3. An outpatient settlement, and the same bill again
# ---------------------------------------------------------------------------------------------


def settle(ctx: Ctx) -> list[str]:
    with ctx.client("insurer", "SH") as platform:
        first = expect(platform.post("/settlement/settle", json=BILL), 200).json()
        again = expect(platform.post("/settlement/settle", json=BILL), 200).json()
    if first["status"] != "settled":
        raise StepFailed(f"the settlement was {first['status']}: {first.get('refusal')}")
    split = first["split"]
    committed = len(ctx.sims.settlements("ZJ", first["setl_id"]))
    same = "the first settlement" if again["setl_id"] == first["setl_id"] else "ANOTHER settlement"
    return [f"Settlement: {LISI[0]} (insured in ZJ) at {hospital_name(QINGPU)}, {split['medfee_sumamt']}: "
            f"fund {split['fund_pay_sumamt']}, personal account {split['acct_pay']}, "
            f"cash {split['psn_cash_pay']} ({first['setl_id']})",
            f"        the same bill sent again was answered by {same} ({again['setl_id']}); "
            f"the ZJ platform committed it {committed} time(s)"]


# ---------------------------------------------------------------------------------------------
# 4. The day reconciled
# ---------------------------------------------------------------------------------------------


def reconcile(ctx: Ctx) -> list[str]:
    day = datetime.now(CST).date().isoformat()
    with ctx.client("admin") as admin:
        result = expect(admin.post("/settlement/reconcile", json={"date": day}), 200).json()
    pairs = ", ".join(f"{b['insuplc']} insured, treated in {b['mdtrtarea']}" for b in result["balanced"])
    return [f"Reconciliation of {day}: balanced: {pairs or 'none'}; "
            f"{len(result['differences'])} difference(s)"]


# ---------------------------------------------------------------------------------------------
# 5. A transfer of insurance, from the patient portal
# ---------------------------------------------------------------------------------------------


@contextmanager
def portal_session(ctx: Ctx, person: tuple[str, str, str, str]):
    """A client signed in as a browser does: GET the form (its CSRF cookie and field), POST it back."""
    with ctx.client() as http:
        form = expect(http.get("/portal/login"), 200).text
        csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
        expect(http.post("/portal/login", data={"province": person[1], "code": person[2], "csrf": csrf}), 303)
        yield http


def transfer(ctx: Ctx, timeout: float = 40.0) -> list[str]:
    with portal_session(ctx, CHEN) as me:
        created = expect(me.post("/api/me/transfers", json=TRANSFER), 201).json()
        deadline = time.monotonic() + timeout
        state = created
        while state["status"] not in FINAL_TRANSFER:
            if time.monotonic() > deadline:
                raise StepFailed(f"the transfer is still {state['status']} after {timeout:.0f} s")
            time.sleep(0.2)
            state = expect(me.get(f"/api/me/transfers/{created['id']}"), 200).json()
    steps = ", ".join(f"{s['infno']} {s['status']}" for s in state["steps"])
    return [f"Transfer: {CHEN[0]}'s insurance from {place_name(state['from_admdvs'])} ({state['from_admdvs']}) "
            f"to {place_name(state['to_admdvs'])} ({state['to_admdvs']}): {steps}: {state['status']}"]


# ---------------------------------------------------------------------------------------------
# 6. Where to click
# ---------------------------------------------------------------------------------------------


def portal(ctx: Ctx) -> list[str]:
    return [f"Portal: {ctx.base}/portal/login  sign in as {LISI[0]}: province {LISI[1]}, e-voucher code "
            f"{LISI[2]}",
            "        (her records from the four provinces, who read them, and who was refused)"]


STEPS = [("records", load_records), ("lookup", lookup), ("settlement", settle),
         ("reconciliation", reconcile), ("transfer", transfer), ("portal", portal)]
