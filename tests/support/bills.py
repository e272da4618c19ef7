"""Outpatient bills of cloned insured persons, and a hub in its own process to settle them: what
the settlement benchmark (``bench/settle.py``) and the fault tests (``tests/settlement/test_faults.py``)
both send."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.support import hubproc
from tests.support.common import ROOT

# Template person (psn_no of fixtures/persons.json) -> (hospital, token province, insuplc_admdvs).
CASES = {
    "33000012345678": ("H31011800012", "SH", "330421"),  # ZJ, demonstration zone, at Qingpu
    "34000040000001": ("H31010100001", "SH", "340104"),  # AH, resident filing for Shanghai
    "32000030000002": ("H31011800012", "SH", "320509"),  # JS, demonstration zone, at Qingpu
    "31000020000001": ("H33010600001", "ZJ", "310104"),  # SH, resident filing for Hangzhou
}


def make_persons(path: Path, per_case: int) -> list[dict]:
    """Write ``per_case`` clones of each CASES person to ``path``; returns the clones, each
    with its ``case`` (card_no is the certificate: type 03), the cases taking turns: bills of
    the four insured provinces arrive mixed, as they would, not a province at a time."""
    source = json.loads((ROOT / "fixtures" / "persons.json").read_text())
    by_psn = {p["psn_no"]: p for p in source["persons"]}
    persons = []
    for i in range(per_case):
        for template_no in CASES:
            clone = {k: v for k, v in by_psn[template_no].items() if k != "note"}
            clone.update(psn_no=f"{template_no[:6]}9{i:07d}", card_no=f"C{template_no[:2]}{i:07d}", evoucher=[])
            clone["case"] = template_no
            persons.append(clone)
    path.write_text(json.dumps({"about": "bench clones", "persons": persons}, ensure_ascii=False))
    return persons


def bill(person: dict, key: str) -> tuple[str, dict]:
    """(token province, settle body) of one outpatient bill of ``person``."""
    hospital, province, insuplc = CASES[person["case"]]
    return province, {
        "request_key": key, "fixmedins_code": hospital, "mdtrt_id": f"MZ-{key}", "mdtrt_cert_type": "03",
        "mdtrt_cert_no": person["card_no"], "insuplc_admdvs": insuplc, "insutype": "310",
        "visit_type": "outpatient", "visit_time": "2024-03-15T09:30:00+08:00", "use_personal_account": True,
        "lines": [{"med_list_codg": "XJ01CAA040A001", "cnt": "1", "pric": "18.60", "det_item_fee_sumamt": "18.60"}]}


def start_hub(db: Path | str, sims_env: dict, port: int, extra_env: dict | None = None) -> subprocess.Popen:
    """The hub as a subprocess (``tests.support.hubproc``) on a SQLite file or a database URL;
    waits for /healthz."""

    url = db if isinstance(db, str) else f"sqlite:///{db}"
    return hubproc.start(url, port, 0, {**sims_env, "YRDHUB_MAP_WORKERS": "0", **(extra_env or {})})


def tokens(db: Path | str) -> dict[str, str]:
    from hub.auth import create_token
    from hub.db import make_engine

    engine = make_engine(db if isinstance(db, str) else f"sqlite:///{db}")
    out = {p: create_token(engine, "insurer", p) for p in ("SH", "JS", "ZJ", "AH")}
    out["admin"] = create_token(engine, "admin", None)
    engine.dispose()
    return out
