"""Benchmark: ingest speed with 1,000 active Subscriptions against none, in the same run, and
how long a notification takes from store to delivery at a real receiver.

    python bench/subscriptions.py [--messages 600] [--rounds 6] [--clients 4] [--latency 100]

A real hub (its own process, SQLite file unless ``--database-url``) and a real HTTP receiver (a
thread of this process). 250 patients are seen today at a Zhejiang hospital, which subscribes to
four types of each (Encounter, Observation, DiagnosticReport, Condition: 1,000 Subscriptions).
A Shanghai hospital then sends HL7 v2 ORU^R01 lab results (10 OBX), one message per request as
hospitals send them, from ``--clients`` clients, in three phases: no Subscription active;
1,000 active but the messages about 250 other (known) patients, the common case (the look-up
finds nothing); 1,000 active and every message matching two of its patient's Subscriptions
(Observation, DiagnosticReport): two notifications written and delivered per message, while
the load runs. Subscriptions are switched in the database; the phases take turns being first,
so that a database growing over the run and the machine's other work weigh on all alike. Per
phase: messages/s (wall) and the CPU the hub's processes spent per message until the outbox was
empty (delivery included; steadier than wall time on a busy machine), as ratios to "none".

Latency: ``--latency`` messages one at a time; for each, the first notification's arrival at
the receiver minus the time the store began (the stored resources' ``lastUpdated``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import func, select, update  # noqa: E402

from bench import hubproc  # noqa: E402
from bench.ingest_formats import OBX  # noqa: E402
from bench.zj_load import resident_id, upload  # noqa: E402
from hub.auth import create_token  # noqa: E402
from hub.db import make_engine  # noqa: E402
from hub.models import Notification, PatientKey, Resource, Subscription  # noqa: E402
from mappers.region import CST  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.support.receiver import Receiver  # noqa: E402

SH_H, ZJ_H = "H31010100001", "H33042100015"
TYPES = ("Encounter", "Observation", "DiagnosticReport", "Condition")


def oru(n: int, patient: int) -> bytes:
    rid = resident_id(patient)
    stamp = datetime.now(CST).strftime("%Y%m%d%H%M%S")
    lines = [f"MSH|^~\\&|LIS|{SH_H}|YRDHUB|YRD|{stamp}||ORU^R01^ORU_R01|S{n:010d}|P|2.5|||AL|NE||UNICODE UTF-8",
             f"PID|1||{rid}^^^&2.16.156.10011.1.3&ISO^NNCHN||张^三||{rid[6:14]}|{'M' if int(rid[16]) % 2 else 'F'}",
             f"PV1|1|O|0301^^^{SH_H}^^^^^检验科||||D0456^李^医生||||||||||||MZ{n:012d}|||||||||||||||||||||||||{stamp}",
             f"OBR|1|SQ{n:010d}|LIS{n:010d}|LAB001^血常规^L|||{stamp}|||||||||||||||{stamp}|||F"]
    lines += [f"OBX|{i + 1}|{o.split('|')[1]}|{o.split('|')[0]}||{'|'.join(o.split('|')[2:])}|||F"
              for i, o in enumerate(OBX)]
    return ("\r".join(lines) + "\r").encode()


class Load:
    def __init__(self, base: str, token: str, patients: int):
        self.base, self.token, self.patients = base, token, patients
        self.n = 0
        self.lock = threading.Lock()

    def next_message(self, subscribed: bool = True) -> bytes:
        """The next message, about a subscribed patient or (``subscribed=False``) about one of
        as many others, whom nobody subscribed to."""
        with self.lock:
            self.n += 1
            return oru(self.n, self.n % self.patients + (0 if subscribed else self.patients))

    def send(self, body: bytes) -> None:
        r = hubproc.client(self.base, self.token).post(
            "/ingest/sh", content=body, headers={"Content-Type": "x-application/hl7-v2+er7"})
        assert b"MSA|AA" in r.content, r.content[:300]

    def run(self, count: int, clients: int, subscribed: bool = True) -> float:
        bodies = [self.next_message(subscribed) for _ in range(count)]
        t = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            list(pool.map(self.send, bodies))
        return time.perf_counter() - t


def hub_cpu(proc) -> float:
    """CPU seconds (user + system) of the hub and its mapper processes so far."""
    import psutil

    root = psutil.Process(proc.pid)
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        try:
            times = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def subscribe_all(base: str, engine, receiver: Receiver, patients: int) -> int:
    """Each patient's visit at ZJ_H today (treating), then four Subscriptions per patient (of
    the first ``patients``; as many others have a visit and none)."""
    day = datetime.now(CST).strftime("%Y-%m-%d")
    zj = hubproc.client(base, create_token(engine, "hospital", ZJ_H))
    # the other patients (messages nobody subscribed to) are known to the hub beforehand too
    twice = 2 * patients
    assert zj.post("/ingest/zj", content=upload(ZJ_H, 0, twice, twice, day)).status_code == 200
    with engine.connect() as conn:
        pids = conn.execute(select(PatientKey.patient_id).where(PatientKey.key.in_(
            [f"rid:{resident_id(p)}" for p in range(patients)]))).scalars().all()
    assert len(set(pids)) == patients, len(set(pids))
    for pid in sorted(set(pids)):
        for res_type in TYPES:
            body = {"resourceType": "Subscription", "status": "requested", "reason": "bench",
                    "criteria": f"{res_type}?patient={pid}",
                    "channel": {"type": "rest-hook", "endpoint": receiver.url("/zj"),
                                "header": ["Authorization: Bearer bench"]}}
            answer = zj.post("/fhir/Subscription", json=body)
            assert answer.status_code == 201, answer.text
    return len(pids) * len(TYPES)


def set_active(engine, active: bool) -> None:
    with engine.begin() as conn:
        conn.execute(update(Subscription).values(status="active" if active else "off"))


def drain(engine, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            if not conn.execute(select(func.count()).select_from(Notification)).scalar_one():
                return
        time.sleep(0.05)
    raise RuntimeError("notifications still pending")


def latencies(load: Load, engine, receiver: Receiver, count: int) -> list[float]:
    """Store-to-delivery seconds of ``count`` messages sent one at a time."""
    out = []
    for _ in range(count):
        before = len(receiver.received())
        load.send(load.next_message())
        deadline = time.monotonic() + 30
        while len(receiver.received()) == before:
            if time.monotonic() > deadline:
                raise RuntimeError("a notification did not arrive")
            time.sleep(0.001)
        arrived = receiver.received()[before].at
        with engine.connect() as conn:
            stored = conn.execute(select(func.max(Resource.last_updated))).scalar_one()
        stored = stored if stored.tzinfo else stored.replace(tzinfo=timezone.utc)
        out.append(arrived - stored.timestamp())
        drain(engine)  # the next message's notifications are told apart from this one's
    return out


# phase -> (Subscriptions active, messages about the subscribed patients)
PHASES = {"none": (False, True), "1,000 active, not matched": (True, False),
          "1,000 active, matched": (True, True)}
MEANING = {"none": "no Subscription active",
           "1,000 active, not matched": "messages about other patients (the common case)",
           "1,000 active, matched": "every message matches 2 (Observation, DiagnosticReport): "
                                    "2 notifications written and delivered per message"}


def report(times: dict, cpu: dict, sent: int, subs: int, args) -> None:
    print(f"ingest, ORU^R01 (10 OBX), one message per request, {args.clients} clients, "
          f"{args.rounds} rounds of {sent // args.rounds} per phase, phases rotated; "
          f"{subs} Subscriptions:")
    base_rate, base_cpu = sent / times["none"], cpu["none"] / sent
    for phase in PHASES:
        rate, used = sent / times[phase], cpu[phase] / sent
        print(f"  {phase:26} {rate:6.1f} messages/s, ratio {rate / base_rate:.3f}; hub CPU "
              f"{used * 1000:5.1f} ms/message, ratio {used / base_cpu:.3f}  ({MEANING[phase]})")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=600, help="per phase, over all rounds")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--patients", type=int, default=250)
    parser.add_argument("--latency", type=int, default=100)
    parser.add_argument("--database-url")
    args = parser.parse_args()
    receiver = Receiver()
    workdir = tempfile.mkdtemp(prefix="bench-subs-")
    url = args.database_url or f"sqlite:///{workdir}/hub.db"
    engine = make_engine(url)
    port = free_port()
    hub = hubproc.start(url, port, extra_env={
        "YRDHUB_HOOK_ENDPOINTS": f"{ZJ_H}={receiver.url('/zj')}", "YRDHUB_MAP_WORKERS": "1"})
    base = f"http://127.0.0.1:{port}"
    try:
        subs = subscribe_all(base, engine, receiver, args.patients)
        load = Load(base, create_token(engine, "hospital", SH_H), args.patients)
        load.run(50, args.clients)  # warm-up
        load.run(50, args.clients, subscribed=False)
        drain(engine)
        per_round = args.messages // args.rounds
        times, cpu = dict.fromkeys(PHASES, 0.0), dict.fromkeys(PHASES, 0.0)
        for i in range(args.rounds):
            # each phase in turn first, second and third: none gains by its place
            names = list(PHASES)
            for phase in names[i % 3:] + names[:i % 3]:
                active, subscribed = PHASES[phase]
                set_active(engine, active)
                before = hub_cpu(hub)
                times[phase] += load.run(per_round, args.clients, subscribed)
                drain(engine)  # delivering is part of the hub's work: CPU counted until done
                cpu[phase] += hub_cpu(hub) - before
        report(times, cpu, per_round * args.rounds, subs, args)
        set_active(engine, True)
        lat = latencies(load, engine, receiver, args.latency)
        print(f"store to delivery at the receiver, {len(lat)} messages one at a time: "
              f"p50 {percentile(lat, 50) * 1000:.1f} ms, p99 {percentile(lat, 99) * 1000:.1f} ms, "
              f"mean {statistics.mean(lat) * 1000:.1f} ms")
        print(f"receiver got {len(receiver.received())} notifications in all")
    finally:
        hubproc.stop(hub)
        receiver.close()


if __name__ == "__main__":
    main()
