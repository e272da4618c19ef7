"""The only gate between a caller and stored records: who may read whose data, what they see.

Every FHIR read (read by id, search, ``$everything``) calls one of ``read``, ``search`` or
``everything`` here; they call ``decide`` first and only then ``hub.queries``. The sharing rules
(treating relationship, consent, masking, audit) are filled in here and nowhere else.

Now (foundation): hospitals and administrators may read; insurance platforms and anyone else may
not (insurance platforms never see clinical records).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.engine import Connection

from hub import queries
from hub.auth import Party
from hub.errors import Forbidden, NotFound

READERS = frozenset({"hospital", "admin"})


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""
    # SQL conditions on ``resource`` limiting what the caller sees of an allowed patient.
    extra: list = field(default_factory=list)


def decide(party: Party, patient_id: str | None) -> Decision:
    """May ``party`` read ``patient_id``'s records (None: a search not tied to one patient)?"""
    if party.kind not in READERS:
        return Decision(False, f"a {party.kind} may not read clinical records")
    return Decision(True)


def _require(party: Party, patient_id: str | None) -> Decision:
    decision = decide(party, patient_id)
    if not decision.allowed:
        raise Forbidden(decision.reason)
    return decision


def read(conn: Connection, party: Party, res_type: str, res_id: str):
    """One resource by id; 404 when absent or withheld, 403 when the patient is not readable."""
    if party.kind not in READERS:
        raise Forbidden(f"a {party.kind} may not read clinical records")
    row = queries.read_one(conn, res_type, res_id)
    if row is None:
        raise NotFound(f"{res_type}/{res_id} is not known")
    _require(party, row.patient_id)
    if row.deleted:
        raise NotFound(f"{res_type}/{res_id} was replaced by a later version of its record")
    return row


def search(conn: Connection, party: Party, res_type: str, params: list[tuple[str, str]],
           count: int, offset: int) -> queries.Page:
    patient_ids = [v for n, v in params if n == "patient"]
    decision = _require(party, patient_ids[0] if len(patient_ids) == 1 else None)
    return queries.search_page(conn, res_type, params, count, offset, decision.extra)


def everything(conn: Connection, party: Party, patient_id: str) -> list:
    decision = _require(party, patient_id)
    if queries.read_one(conn, "Patient", patient_id) is None:
        raise NotFound(f"Patient/{patient_id} is not known")
    return queries.patient_resources(conn, patient_id, decision.extra)


def present(party: Party, row, content: bytes) -> bytes:
    """The bytes of a resource as this party may see them (masking hooks in here)."""
    return content
