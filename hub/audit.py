"""The audit of reads: every read of a patient's data, allowed or refused, is recorded, and
rendered as a FHIR AuditEvent shaped like the IHE Basic Audit Log Patterns (BALP).

Rows are written in their own short transaction as the read is answered, so a read that was
answered is always on record; there is no update or delete path.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import insert
from sqlalchemy.engine import Engine

from hub.db import writer
from hub.logs import scrub
from hub.models import AuditRecord
from mappers.common import HOSPITAL_SYSTEM, make_id

# purpose -> v3-ActReason code (BALP purposeOfEvent)
PURPOSE_CODES = {"treatment": "TREAT", "emergency": "ETREAT", "administration": "HOPERAT"}
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


def record(engine: Engine, events: list[ReadEvent]) -> None:
    """Write the events (one transaction). Text is scrubbed of resident IDs before it is kept."""
    if not events:
        return
    now = datetime.now(timezone.utc)
    rows = [{"recorded": now, "party_kind": e.party_kind, "party_code": e.party_code,
             "patient_id": e.patient_id, "purpose": e.purpose, "outcome": e.outcome,
             "what": scrub(e.what)[:300], "reason": scrub(e.reason)[:500] if e.reason else None,
             "detail": scrub(e.detail)[:500] if e.detail else None} for e in events]
    with writer(engine).begin() as conn:
        conn.execute(insert(AuditRecord), rows)


def as_fhir(row, hospital_names: dict[str, str]) -> dict:
    """One audit row as a FHIR R4 AuditEvent (BALP-shaped)."""
    interaction = row.what.split(" ", 1)[0]
    agent_who = ({"identifier": {"system": HOSPITAL_SYSTEM, "value": row.party_code},
                  "display": hospital_names.get(row.party_code, row.party_code)}
                 if row.party_kind == "hospital" else {"display": row.party_kind})
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
