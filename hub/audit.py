"""The audit of reads: every read of a patient's data, allowed or refused, is recorded, and
rendered as a FHIR AuditEvent shaped like the IHE Basic Audit Log Patterns (BALP).

Writing is write-behind: a read hands its events to the engine's ``AuditWriter``, which commits
them in batches every few milliseconds (a synchronous commit per read cost a quarter of a
``$everything``). Whatever reads the audit (admins' ``/fhir/AuditEvent``, a patient's access log)
flushes first, and the hub flushes on shutdown, so nothing is missing from what anyone sees. The
price, stated plainly: a hub killed outright (SIGKILL, power) loses at most the last
``FLUSH_SECONDS`` of read events. There is no update or delete path.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import structlog

from sqlalchemy import insert
from sqlalchemy.engine import Engine

from hub.db import writer
from hub.logs import scrub
from hub.models import AuditRecord
from mappers.common import HOSPITAL_SYSTEM, make_id

# purpose -> v3-ActReason code (BALP purposeOfEvent)
PURPOSE_CODES = {"treatment": "TREAT", "emergency": "ETREAT", "administration": "HOPERAT",
                 "patient": "PATRQT"}
# outcome -> AuditEvent.outcome (0 success, 4 minor failure: the request was refused)
OUTCOME_CODES = {"allowed": "0", "refused": "4"}
# interaction -> restful-interaction code
INTERACTIONS = {"read": "read", "search": "search-type", "everything": "operation"}


@dataclass(frozen=True)
class ReadEvent:
    party_kind: str
    party_code: str | None
    patient_id: str | None
    purpose: str
    outcome: str
    what: str
    reason: str | None = None
    detail: str | None = None
    # the first (or only) event of one request: the indicators count requests by it
    lookup: bool = True


FLUSH_SECONDS = 0.02
log = structlog.get_logger("hub.audit")


def _row(e: ReadEvent, now: datetime) -> dict:
    """A table row; text is scrubbed of resident IDs before it is kept."""
    return {"recorded": now, "party_kind": e.party_kind, "party_code": e.party_code,
            "patient_id": e.patient_id, "purpose": e.purpose, "outcome": e.outcome,
            "what": scrub(e.what)[:300], "reason": scrub(e.reason)[:500] if e.reason else None,
            "detail": scrub(e.detail)[:500] if e.detail else None, "lookup": e.lookup}


class AuditWriter:
    """Batches read events for one engine and commits them from a background thread."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.pending: list[dict] = []
        self.lock = threading.Lock()        # guards ``pending``
        self.write_lock = threading.Lock()  # one batch written at a time, in order
        self.wake = threading.Event()
        threading.Thread(target=self._run, name="audit-writer", daemon=True).start()

    def submit(self, events: list[ReadEvent]) -> None:
        now = datetime.now(timezone.utc)
        with self.lock:
            self.pending.extend(_row(e, now) for e in events)
        self.wake.set()

    def flush(self) -> None:
        """Commit everything submitted so far; on a database error the batch is kept and the
        error raised (the next flush tries again)."""
        with self.write_lock:
            with self.lock:
                batch, self.pending = self.pending, []
            if not batch:
                return
            try:
                with writer(self.engine).begin() as conn:
                    conn.execute(insert(AuditRecord), batch)
            except Exception:
                with self.lock:
                    self.pending[:0] = batch
                raise

    def _run(self) -> None:
        while True:
            self.wake.wait()
            time.sleep(FLUSH_SECONDS)  # let a burst of reads share one commit
            self.wake.clear()
            try:
                self.flush()
            except Exception as exc:  # kept for the next round; say so, loudly
                log.error("audit flush failed; will retry", error=type(exc).__name__)
                self.wake.set()
                time.sleep(0.5)


_writers: dict[int, AuditWriter] = {}
_writers_lock = threading.Lock()


def _writer_for(engine: Engine) -> AuditWriter:
    with _writers_lock:
        if id(engine) not in _writers:
            _writers[id(engine)] = AuditWriter(engine)
        return _writers[id(engine)]


def record(engine: Engine, events: list[ReadEvent]) -> None:
    """Hand the events to the engine's writer (committed within ``FLUSH_SECONDS``)."""
    if events:
        _writer_for(engine).submit(events)


def flush(engine: Engine) -> None:
    """Commit every event recorded so far (before anything reads the audit; at shutdown)."""
    with _writers_lock:
        w = _writers.get(id(engine))
    if w is not None:
        w.flush()


def flush_all() -> None:
    """``flush`` for every engine of this process (a test wiping a database first commits what
    earlier requests recorded, so none of it lands after the wipe)."""
    with _writers_lock:
        writers = list(_writers.values())
    for w in writers:
        w.flush()


def as_fhir(row, hospital_names: dict[str, str]) -> dict:
    """One audit row as a FHIR R4 AuditEvent (BALP-shaped)."""
    interaction = row.what.split(" ", 1)[0]
    agent_who = ({"identifier": {"system": HOSPITAL_SYSTEM, "value": row.party_code},
                  "display": hospital_names.get(row.party_code, row.party_code)}
                 if row.party_kind == "hospital" else {"display": row.party_kind})
    if row.party_kind == "patient":  # the person reading their own records
        agent_who["reference"] = f"Patient/{row.patient_id}"
    purpose = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                           "code": PURPOSE_CODES.get(row.purpose, "TREAT")}]}
    if row.reason:
        purpose["text"] = row.reason
    event = {
        "resourceType": "AuditEvent", "id": make_id("AuditEvent", str(row.id)),
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
                 "code": "rest", "display": "Restful Operation"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction",
                     "code": INTERACTIONS.get(interaction, "read")}],
        "action": "E" if interaction == "everything" else "R",
        "recorded": row.recorded.replace(tzinfo=row.recorded.tzinfo or timezone.utc).isoformat(),
        "outcome": OUTCOME_CODES.get(row.outcome, "4"),
        "outcomeDesc": row.detail or row.outcome,
        "purposeOfEvent": [purpose],
        "agent": [{"type": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
            "code": "IRCP", "display": "information recipient"}]},
            "who": agent_who, "requestor": True}],
        "source": {"observer": {"display": "yrdhub"},
                   "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                             "code": "4", "display": "Application Server"}]},
        "entity": [{"description": row.what}],
    }
    if row.patient_id:
        event["entity"].insert(0, {
            "what": {"reference": f"Patient/{row.patient_id}"},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                     "code": "1", "display": "Person"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role",
                     "code": "1", "display": "Patient"}})
    return event
