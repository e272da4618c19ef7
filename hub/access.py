"""The only gate between a caller and stored records: who may read whose data, what they see,
and the audit of it. Every FHIR read (read by id, search, ``$everything``, AuditEvent) calls
``read``, ``search`` or ``everything`` here, and only these call ``hub.queries``.

The rules (world/README.md, "What may be shared, and with whom"):

- **Treating relationship.** A hospital reads a patient's records only while it has an encounter
  with the patient that started in the last 30 x 24 hours (a date-only visit counts from 00:00
  +08:00 of its day). Otherwise 403, unless the request carries ``X-Emergency-Reason``, which is
  allowed and recorded with its reason. A search not pinned to one patient sees only patients the
  hospital is treating. Insurance platforms never see clinical records. Admins see everything.
- **Consent.** A patient who withdrew cross-province sharing is seen by a hospital only through
  records from the hospital's own province; diagnoses and results in a sensitive category
  (``hub.sensitivity``) cross a province border only with the patient's permission for that
  category. What is withheld is left out by the database (totals and paging stay right), a
  searchset says *that* something was withheld (``suppressed``), and references to withheld
  resources are removed from what is shown.
- **Masking.** Hospitals see identity details masked (``hub.masking``); admins in full.
- **Audit.** Every read of a patient's data, allowed or refused, is recorded (``hub.audit``).
- **The person themselves** (a ``patient`` party, from the portal) sees all of their own records,
  nothing withheld, identity masked as for a hospital; the read is recorded with purpose
  ``patient``. Nobody else's.
- **Disputed.** While a correction of a resource is open (``hub.corrections``), every answer
  holding it carries ``meta.tag`` ``disputed``: one indexed look-up per answer, by its patients.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass
from datetime import datetime, timedelta, timezone

import orjson
from sqlalchemy import bindparam, exists, false, literal, or_, select
from sqlalchemy.engine import Connection

from hub import audit, masking, queries, sensitivity
from hub.auth import Party
from hub.errors import Forbidden, Gone, NotFound
from hub.models import Correction, Resource, Sharing
from hub.search import utc_text
from hub.sensitivity import CATEGORIES
from hub.sharing import SharingChoices
from mappers.common import SHARED_TYPES
from mappers.region import province_of

R = Resource.__table__
C = Correction.__table__
TREATING_WINDOW = timedelta(hours=30 * 24)
EMERGENCY_HEADER = "x-emergency-reason"
SUPPRESSED = {"resourceType": "OperationOutcome", "issue": [{
    "severity": "information", "code": "suppressed",
    "diagnostics": "Some information was withheld under the patient's sharing choices."}]}
DISPUTED_TAG = {"system": "urn:yrdhub:tag", "code": "disputed"}
# the purpose a read is recorded with, by party kind (a hospital's: treatment or emergency)
PURPOSES = {"admin": "administration", "patient": "patient"}


@dataclass(frozen=True)
class Caller:
    """Who asks and why: the party and, for a hospital, its emergency reason if it gave one."""

    party: Party
    emergency_reason: str | None = None

    @property
    def purpose(self) -> str:
        if self.party.kind in PURPOSES:
            return PURPOSES[self.party.kind]
        return "emergency" if self.emergency_reason else "treatment"


@dataclass
class Decision:
    allowed: bool
    reason: str = ""
    masked: bool = True
    # What of an allowed patient the caller may see, as facts for ``consent_allows`` (None: no
    # consent filter, e.g. an admin) ...
    choices: SharingChoices | None = None
    province: str | None = None
    # ... and, for a search across patients, which patients: those this hospital treats at
    # this time (``treated_patients``).
    scope: tuple[str, datetime] | None = None

    @property
    def filter(self) -> queries.Filter:
        """The same as SQL conditions on ``resource``, built once per shape (``queries``)."""
        if self.choices is not None:
            choices, province = self.choices, self.province
            return queries.Filter(("consent", *astuple(choices), province),
                                  lambda: consent_conditions(choices, province))
        if self.scope is not None:
            hospital, now = self.scope
            return queries.Filter(("scope",), _scope_conditions, {
                "scope_hospital": hospital, "scope_cutoff": treating_cutoff(now),
                "scope_now": utc_text(now)})
        return queries.NO_FILTER

    def shows(self, row) -> bool:
        province = row.province
        if self.choices is None or row.patient_id is None or province is None \
                or province == self.province:
            return True  # the common case, decided without a call
        return consent_allows(self.choices, self.province, province, row.sensitive)


# ---------------------------------------------------------------------------------------------
# Decisions (pure given the facts; the facts come from the database)
# ---------------------------------------------------------------------------------------------


def treating_cutoff(now: datetime) -> str:
    return utc_text(now - TREATING_WINDOW)


def _treating(hospital, cutoff, now, one_patient: bool = False) -> tuple:
    """The treating rule in SQL, once: an encounter of ``hospital`` that started between
    ``cutoff`` and ``now`` (values, or bind parameters for a statement built once).

    ``one_patient``: the rule for one patient, read from that patient's encounters
    (``ix_resource_patient_type_sort``). There the hospital is compared as ``hospital || ''``,
    which no index serves: otherwise SQLite reads the hospital's encounters of the window
    instead (``ix_resource_type_hospital_sort``, as many as the hospital has visits in a
    month) for what the patient's few encounters answer."""
    at = R.c.hospital.concat("") if one_patient else R.c.hospital
    return (R.c.res_type == "Encounter", at == hospital, R.c.deleted.is_(False),
            R.c.sort_date >= cutoff, R.c.sort_date <= now)


def treated_patients(hospital, cutoff, now):
    """SQL: the patients ``hospital`` has an encounter with that started in the window (an
    index read of the hospital's encounters in the window, ``ix_resource_type_hospital_sort``,
    not of all its encounters)."""
    return select(R.c.patient_id).where(*_treating(hospital, cutoff, now))


def _scope_conditions() -> list:
    return [R.c.patient_id.in_(treated_patients(
        bindparam("scope_hospital"), bindparam("scope_cutoff"), bindparam("scope_now")))]


def treating_exists(hospital, patient_id, now: datetime):
    """SQL: is ``hospital`` treating ``patient_id`` at ``now`` (values or columns: the same rule
    as ``decide``, for one statement over many pairs, e.g. every active Subscription)."""
    return exists(select(R.c.patient_id).where(
        *_treating(hospital, treating_cutoff(now), utc_text(now)), R.c.patient_id == patient_id))


def _facts_statement():
    """Built once with bind parameters: SQLAlchemy then reuses the compiled form (building the
    statement per read cost more than running it)."""
    S = Sharing.__table__
    treating = exists(select(R.c.patient_id).where(
        *_treating(bindparam("hospital"), bindparam("cutoff"), bindparam("now"), True),
        R.c.patient_id == bindparam("pid")))
    return (select(treating.label("treating"), S.c.cross_province, S.c.mental, S.c.hiv, S.c.sti)
            .select_from(select(literal(1).label("one")).subquery())
            .outerjoin(S, S.c.patient_id == bindparam("pid")))


_FACTS = _facts_statement()


def facts(conn: Connection, hospital: str, patient_id: str,
          now: datetime) -> tuple[bool, SharingChoices]:
    """Is ``hospital`` treating the patient, and what has the patient chosen: one round trip."""
    row = conn.execute(_FACTS, {"hospital": hospital, "pid": patient_id,
                                "cutoff": treating_cutoff(now), "now": utc_text(now)}).one()
    choices = SharingChoices(*row[1:]) if row.cross_province is not None else SharingChoices()
    return bool(row.treating), choices


def consent_allows(sharing: SharingChoices, reader_province: str | None,
                   province: str | None, sensitive: str | None) -> bool:
    """The consent rule for one resource (pure). ``consent_conditions`` is the same rule in SQL;
    a test checks the two agree on every combination."""
    if province is None or province == reader_province:
        return True
    if not sharing.cross_province:
        return False
    return sensitive is None or bool(getattr(sharing, sensitive))


def consent_conditions(sharing: SharingChoices, province: str | None) -> list:
    """SQL conditions holding back what ``sharing`` does not let cross into ``province``."""
    own = R.c.province == province if province else false()
    conditions = []
    if not sharing.cross_province:
        conditions.append(or_(R.c.province.is_(None), own))
    blocked = [c for c in CATEGORIES if not getattr(sharing, c)]
    if blocked:
        conditions.append(or_(R.c.sensitive.is_(None), R.c.sensitive.notin_(blocked),
                              R.c.province.is_(None), own))
    return conditions


def decide(conn: Connection, caller: Caller, patient_id: str | None,
           now: datetime | None = None) -> Decision:
    """May the caller read ``patient_id``'s records (None: a search across patients)?"""
    party, now = caller.party, now or datetime.now(timezone.utc)
    if party.kind == "admin":
        return Decision(True, masked=False)
    if party.kind == "patient":  # the person themselves: everything of their own, masked
        own = patient_id is not None and patient_id == party.code
        return Decision(own, "" if own else "a patient reads only their own records")
    if party.kind != "hospital" or not party.code:
        return Decision(False, f"a {party.kind} may not read clinical records")
    province = province_of(party.code)
    if patient_id is None:
        return Decision(True, scope=(party.code, now))
    treating, choices = facts(conn, party.code, patient_id, now)
    if not (treating or caller.emergency_reason):
        return Decision(False, "no encounter with this patient in the last 30 days; "
                               "send the visit first, or state an emergency reason")
    return Decision(True, choices=choices, province=province)


# ---------------------------------------------------------------------------------------------
# The read paths
# ---------------------------------------------------------------------------------------------


@dataclass
class Answer:
    """What a read path hands back to the route: rows to show, how, and whether to say
    something was withheld."""

    rows: list
    total: int | None  # None: not counted (``_total=none``)
    withheld: bool
    caller: Caller
    hidden_ids: frozenset = frozenset()
    masked: bool = True
    more: bool = False  # another page follows
    # ``Type/id`` of the shown resources under an open correction (tagged ``disputed``)
    disputed: frozenset = frozenset()

    def render(self, row, content: bytes) -> bytes:
        return present(self, row, content)


def _audit(engine, caller: Caller, patient_ids, what: str, outcome: str,
           detail: str | None = None) -> None:
    # a patient reading their own: ``patient_id`` already says who
    code = None if caller.party.kind == "patient" else caller.party.code
    # one request, one ``lookup`` row, however many patients it showed
    events = [audit.ReadEvent(caller.party.kind, code, pid, caller.purpose,
                              outcome, what, caller.emergency_reason, detail, lookup=n == 0)
              for n, pid in enumerate(patient_ids or [None])]
    audit.record(engine, events)


def _refuse(engine, caller: Caller, patient_id, what: str, decision: Decision):
    _audit(engine, caller, [patient_id], what, "refused", decision.reason)
    raise Forbidden(decision.reason)


def _hidden(conn: Connection, patient_id: str, decision: Decision) -> frozenset:
    """Ids of the patient's resources the caller may not see (to cut references to them)."""
    if decision.choices is None or not consent_conditions(decision.choices, decision.province):
        return frozenset()
    rows = queries.hidden_ids(conn, patient_id, decision.filter)
    return frozenset(f"{t}/{i}" for t, i in rows)


WITHHELD = "withheld under the patient's sharing choices"


def read(conn: Connection, engine, caller: Caller, res_type: str, res_id: str) -> Answer:
    """One resource by id: 403 when its patient is not readable, 404 when absent or withheld,
    410 when retired (after the same checks: a retired record's existence is the patient's too)."""
    what = f"read {res_type}/{res_id}"
    row = queries.read_one(conn, res_type, res_id)
    if row is None:
        _reader_only(engine, caller, what)
        raise NotFound(f"{res_type}/{res_id} is not known")
    decision = _gate(conn, engine, caller, row, what)
    _audit_one(engine, caller, row, what)
    _not_retired(row)
    return Answer([row], 1, False, caller, _hidden_of(conn, row, decision), decision.masked,
                  disputed=_disputed(conn, [row]))


def history(conn: Connection, engine, caller: Caller, res_type: str, res_id: str,
            version: int | None = None) -> Answer:
    """The kept versions of one resource, newest first, or only ``version`` (vread), under the
    rules of ``read``: 403 when its patient is not readable, 404 when it is unknown or its
    current version is withheld (what it became is not to be guessed from what it was). An
    earlier version is judged by its own content: one the patient's choices hold back is left
    out (the answer says *that* something was withheld), and a vread of it is 404. A retired
    version is listed with ``deleted`` set; a vread of it is 410."""
    what = (f"vread {res_type}/{res_id}/_history/{version}" if version is not None
            else f"history {res_type}/{res_id}")
    rows = queries.versions(conn, res_type, res_id)
    if not rows:
        _reader_only(engine, caller, what)
        raise NotFound(f"{res_type}/{res_id} is not known")
    current = rows[0]
    decision = _gate(conn, engine, caller, current, what)
    judged = [current] + [_judged(r) for r in rows[1:]]
    if version is not None:
        judged = [r for r in judged if r.version == version]
    shown, hidden = _partition(decision, judged)
    _audit_one(engine, caller, current, what, WITHHELD if hidden else None)
    if version is not None and not shown:
        raise NotFound(f"{res_type}/{res_id} has no version {version}")
    if version is not None:
        _not_retired(shown[0])
    return Answer(shown, len(shown), bool(hidden), caller, _hidden_of(conn, current, decision),
                  decision.masked, disputed=_disputed(conn, shown))


def _not_retired(row) -> None:
    if row.deleted:
        raise Gone(f"{row.res_type}/{row.res_id} was retired in version {row.version} (its "
                   f"sender's record no longer has it); earlier versions: "
                   f"{row.res_type}/{row.res_id}/_history")


def _judged(row):
    """An earlier version (``queries.versions``) with the sensitive category of its own content."""
    row.sensitive = sensitivity.category_of(orjson.loads(row.content))
    return row


def _reader_only(engine, caller: Caller, what: str) -> None:
    if caller.party.kind not in ("hospital", "admin"):
        _refuse(engine, caller, None, what, Decision(False, "insurance platforms never see "
                                                            "clinical records"))


def _gate(conn: Connection, engine, caller: Caller, row, what: str) -> Decision:
    """May the caller see this one resource (its current version)? 403 when its patient is not
    readable (audited), 404 when the patient's choices withhold it (audited as such)."""
    _reader_only(engine, caller, what)
    if row.patient_id is None:  # a hospital or a practitioner: not a patient's data
        return Decision(True, masked=False)
    decision = decide(conn, caller, row.patient_id)
    if not decision.allowed:
        _refuse(engine, caller, row.patient_id, what, decision)
    if not decision.shows(row):
        _audit_one(engine, caller, row, what, WITHHELD)
        raise NotFound(f"{row.res_type}/{row.res_id} is not known")
    return decision


def _audit_one(engine, caller: Caller, row, what: str, detail: str | None = None) -> None:
    if row.patient_id is not None:
        _audit(engine, caller, [row.patient_id], what, "allowed", detail)


def _hidden_of(conn: Connection, row, decision: Decision) -> frozenset:
    return _hidden(conn, row.patient_id, decision) if row.patient_id else frozenset()


def search(conn: Connection, engine, caller: Caller, res_type: str,
           params: list[tuple[str, str]], count: int, offset: int,
           sort: list[tuple[str, bool]] | None = None, with_total: bool = True) -> Answer:
    """One page of a search (``sort`` and ``with_total`` as ``queries.search_page``): what the
    caller may not see is left out by the database, so ``total`` counts only what it may see,
    and a search pinned to one patient says whether anything was withheld."""
    what = f"search {res_type}"
    if res_type == "AuditEvent":
        return _search_audit(conn, engine, caller, params, count, offset, sort)
    pinned, found = _pinned_patient(conn, res_type, params)
    if res_type in SHARED_TYPES and caller.party.kind in ("hospital", "admin"):
        # hospitals and practitioners are nobody's personal data
        page = queries.search_page(conn, res_type, params, count, offset, queries.NO_FILTER,
                                   sort, with_total)
        return Answer(page.rows, page.total, False, caller, masked=False, more=page.more)
    decision = decide(conn, caller, pinned)
    if not decision.allowed:
        _refuse(engine, caller, pinned, what, decision)
    if found is not None:  # the search itself, already run: its one match
        page = _page_of_one(found, decision, count, offset, with_total)
    else:
        page = queries.search_page(conn, res_type, params, count, offset, decision.filter, sort,
                                   with_total, withheld=pinned is not None)
    patients = sorted({r.patient_id for r in page.rows if r.patient_id} | ({pinned} - {None}))
    _audit(engine, caller, patients, what, "allowed")
    # only the types that reference others need to know what is hidden (``_cut_hidden``)
    cuts = pinned and res_type in _REFERENCE_LISTS
    hidden = _hidden(conn, pinned, decision) if cuts else frozenset()
    return Answer(page.rows, page.total, page.withheld > 0, caller, hidden, decision.masked,
                  page.more, _disputed(conn, page.rows))


def _pinned_patient(conn: Connection, res_type: str, params) -> tuple[str | None, object]:
    """The one patient a search is about, if it names exactly one (``patient``, or ``_id`` /
    ``identifier`` on Patient resolving to one); and, when finding it ran the search itself
    (``identifier``), its one match (the Patient row), else None."""
    values = [v for n, v in params if n == "patient"]
    if res_type == "Patient":
        values += [v for n, v in params if n == "_id"]
    if len(values) == 1 and "," not in values[0]:
        return values[0].split("/")[-1], None
    if res_type == "Patient" and any(n == "identifier" for n, _ in params):
        page = queries.search_page(conn, "Patient", params, 1, 0, with_total=False)
        if len(page.rows) == 1 and not page.more:  # one query, no count
            return page.rows[0].res_id, page.rows[0]
    return None, None


def _page_of_one(row, decision: Decision, count: int, offset: int,
                 with_total: bool) -> queries.Page:
    """The page of a search whose only match is ``row`` (found with every criterion, before
    the caller's rules): shown or withheld by ``decision``, then paged like any answer. A
    lookup by identifier reads the Patient once, not three times (find, count, page)."""
    shown = decision.shows(row)
    rows = [row] if shown and count and offset == 0 else []
    return queries.Page(int(shown) if with_total or not count else None, rows, False,
                        int(not shown))


def everything(conn: Connection, engine, caller: Caller, patient_id: str) -> Answer:
    """All of one patient's records the caller may see. An unknown patient is 403 for a
    hospital (it is not treating them: existence is not revealed) and 404 for an admin."""
    what = f"everything Patient/{patient_id}"
    decision = decide(conn, caller, patient_id)
    if not decision.allowed:
        _refuse(engine, caller, patient_id, what, decision)
    rows = queries.patient_resources(conn, patient_id)
    if not rows or rows[0].res_type != "Patient":
        raise NotFound(f"Patient/{patient_id} is not known")
    shown, hidden = _partition(decision, rows)
    _audit(engine, caller, [patient_id], what, "allowed")
    return Answer(shown, len(shown), bool(hidden), caller, hidden, decision.masked,
                  disputed=_disputed(conn, shown))


def _disputed(conn: Connection, rows: list) -> frozenset:
    """``Type/id`` of those of ``rows`` under an open correction: one query on the index of
    (patient, status), whatever the number of rows (open corrections are few per person)."""
    patients = sorted({r.patient_id for r in rows if r.patient_id})
    if not patients:
        return frozenset()
    found = conn.execute(_OPEN_CORRECTIONS, {"pids": patients}).all()
    return frozenset(f"{t}/{i}" for t, i in found)


_OPEN_CORRECTIONS = select(C.c.res_type, C.c.res_id).where(
    C.c.patient_id.in_(bindparam("pids", expanding=True)), C.c.status == "open")


def _partition(decision: Decision, rows: list) -> tuple[list, frozenset]:
    """The rows the caller may see, and the ``Type/id`` of those it may not (one pass)."""
    if decision.choices is None:
        return rows, frozenset()
    shown, hidden = [], []
    for row in rows:
        (shown if decision.shows(row) else hidden).append(row)
    return shown, frozenset(f"{r.res_type}/{r.res_id}" for r in hidden)


def _search_audit(conn, engine, caller: Caller, params, count: int, offset: int,
                  sort) -> Answer:
    if caller.party.kind != "admin":
        raise Forbidden("only an administrator may search the audit")
    audit.flush(engine)
    page = queries.audit_page(conn, params, count, offset, sort)
    return Answer(page.rows, page.total, False, caller, masked=False, more=page.more)


# ---------------------------------------------------------------------------------------------
# What the caller sees of one resource
# ---------------------------------------------------------------------------------------------

_REFERENCE_LISTS = {"DiagnosticReport": ("result",), "Encounter": ("diagnosis",),
                    "ImagingStudy": ("basedOn",), "Observation": ("hasMember", "derivedFrom")}


def _cut_hidden(resource: dict, hidden: frozenset) -> dict:
    """Drop references (and their display text) to resources the caller may not see."""
    for element in _REFERENCE_LISTS.get(resource["resourceType"], ()):
        items = resource.get(element)
        if not items:
            continue
        kept = [i for i in items if _target(i) not in hidden]
        if kept:
            resource[element] = kept
        else:
            resource.pop(element)
    return resource


def _target(item: dict) -> str | None:
    ref = item.get("reference") or (item.get("condition") or {}).get("reference")
    return ref


def present(answer: Answer, row, content: bytes) -> bytes:
    """The bytes of one resource as this caller may see them (``content`` with its ``meta``)."""
    masked = answer.masked and row.res_type == "Patient"
    cut = answer.hidden_ids and any(h.split("/")[1].encode() in content
                                    for h in answer.hidden_ids)
    disputed = answer.disputed and f"{row.res_type}/{row.res_id}" in answer.disputed
    if not (masked or cut or disputed):
        return content
    resource = orjson.loads(content)
    if disputed:
        resource.setdefault("meta", {}).setdefault("tag", []).append(DISPUTED_TAG)
    if cut:
        resource = _cut_hidden(resource, answer.hidden_ids)
    if masked:
        resource = masking.mask_patient(resource)
    return orjson.dumps(resource)


__all__ = ["Caller", "Answer", "decide", "read", "history", "search", "everything", "present",
           "EMERGENCY_HEADER", "DISPUTED_TAG"]
