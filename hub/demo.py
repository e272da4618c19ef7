"""``yrdhub demo``: the hub on its embedded default (SQLite), with the four provinces' simulated
insurance platforms and the sample uploads of ``fixtures/`` loaded, so a newcomer sees it work.

Run from the checkout (it reads ``fixtures/``). Everything listens on loopback. The database is
``<workdir>/demo.db``, made afresh on every start.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from hub import logs
from hub.app import create_app
from hub.auth import create_token
from hub.config import Settings, get_settings
from mappers.common import province_of

# Which fixtures each channel loads (sender hospital from the file, or fixed for HL7/CDA/CSV).
UPLOADS = [
    ("zj", "zj/upload_basic.json", "application/json"),
    ("zj", "zj/upload_two_visits.json", "application/json"),
    ("zj", "zj/upload_other_hospital.json", "application/json"),
    ("sh", "sh/adt_a04.hl7", "x-application/hl7-v2+er7"),
    ("sh", "sh/adt_a01.hl7", "x-application/hl7-v2+er7"),
    ("sh", "sh/oru_r01_lab.hl7", "x-application/hl7-v2+er7"),
    ("sh", "sh/oru_r01_rad.hl7", "x-application/hl7-v2+er7"),
    ("js", "js/outpatient.xml", "application/xml"),
    ("js", "js/lab_report.xml", "application/xml"),
    ("js", "js/imaging_report.xml", "application/xml"),
    ("ah", "ah/patients_gbk.csv", "text/csv"),
    ("ah", "ah/visits_gbk.csv", "text/csv"),
    ("ah", "ah/labs_gbk.csv", "text/csv"),
]


def sender_of(channel: str, body: bytes) -> str:
    """The hospital a fixture comes from, read from the fixture itself."""
    import re

    if channel == "zj":
        return json.loads(body)["jgdm"]
    if channel == "sh":
        return body.split(b"\r", 1)[0].split(b"|")[3].decode()
    if channel == "js":
        return re.search(rb'(H32\d{9})', body).group(1).decode()
    return "H34010400001"  # the Anhui fixtures' hospital (a patients file names none)


def load_fixtures(base: str, engine, fixtures: Path) -> list[str]:
    lines = []
    for channel, name, content_type in UPLOADS:
        path = fixtures / name
        if not path.exists():
            continue
        body = path.read_bytes()
        sender = sender_of(channel, body)
        token = create_token(engine, "hospital", sender)
        answer = httpx.post(f"{base}/ingest/{channel}", content=body, timeout=60,
                            headers={"Authorization": f"Bearer {token}",
                                     "Content-Type": content_type})
        summary = answer.text[:120].replace("\r", " | ")
        lines.append(f"  {name:32} from {sender}: {answer.status_code} {summary}")
    return lines


def run(port: int = 8000, workdir: Path = Path("demo-data")) -> int:
    from settlement.simulator import start_simulators

    fixtures = Path.cwd() / "fixtures"
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in workdir.glob("demo.db*"):
        stale.unlink()
    sims = start_simulators(persons_path=fixtures / "persons.json")
    env = get_settings()
    settings = Settings(database_url=f"sqlite:///{workdir.resolve()}/demo.db",
                        mllp_port=env.mllp_port, log_json=False, log_level="WARNING",
                        **{f"insurer_{p.lower()}_url": u for p, u in sims.urls.items()})
    log_config = logs.configure(settings.log_level, json=False)
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_config=log_config))
    threading.Thread(target=_announce, args=(server, app, port, fixtures, sims), daemon=True).start()
    try:
        server.run()
    finally:
        sims.stop()
    return 0


def _announce(server, app, port: int, fixtures: Path, sims) -> None:
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    loaded = load_fixtures(base, app.state.engine, fixtures)
    admin = create_token(app.state.engine, "admin", None)
    persons = json.loads((fixtures / "persons.json").read_text("utf-8"))["persons"]
    codes = [f"  {province_of(p['insuinfo'][0]['insuplc_admdvs'])} {p['psn_name']}: "
             f"{p['evoucher'][0]['code']}"
             for p in persons if p.get("evoucher")][:4]
    print("\n".join([
        "", f"yrdhub demo is running at {base}", "", "Loaded fixtures:", *loaded, "",
        f"Admin token: {admin}",
        f"  curl -H 'Authorization: Bearer {admin}' '{base}/fhir/Patient?"
        "identifier=urn:oid:2.16.156.10011.1.3|33042119850412002X'",
        "", "Simulated platforms: " + ", ".join(f"{p} {u}" for p, u in sims.urls.items()),
        f"Patient portal: {base}/portal/login  (e-voucher codes below)", *codes,
        "", "Ctrl-C stops it.", ""]), flush=True)
