"""Storing mapped records with their version history, and reading resources back.

Write path (``put_records``), in the caller's transaction: for each mapped record, compare its
digest with what was stored under the same key (same -> ``unchanged``), resolve its patient in the
index, then write every resource whose JSON changed as a new version, retire the resources the
record no longer has, and rebuild their search-index rows. Resources are stored as orjson bytes
without ``meta``; ``meta.versionId``/``lastUpdated`` come from columns when read.

Nothing here decides who may read what: reads go through ``hub.access``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

import orjson
from sqlalchemy import and_, bindparam, delete, insert, or_, select, update
from sqlalchemy.engine import Connection

from hub import notify, patients, search, sensitivity
from hub.models import Patient as PatientRow
from hub.models import PatientKey
from hub.models import Record as RecordRow
from hub.models import Resource, ResourceHistory, SearchIndex
from mappers.common import PATIENT_REF, SHARED_TYPES, Record, Rejection, make_id
from mappers.region import province_of

_PATIENT_REF = PATIENT_REF.encode()
# A visit is described by several records (Jiangsu's outpatient record and its lab and imaging
# reports each carry the Encounter): each adds to it, none retires it, elements a later record
# sends win. The cost: an element a re-sent record leaves out stays as it was.
# Hospitals and practitioners likewise: a lab file names the hospital without its name, a visit
# file with it, and neither should blank what the other said.
MERGED_TYPES = frozenset({"Encounter", *SHARED_TYPES})
R = Resource.__table__
H = ResourceHistory.__table__
SI = SearchIndex.__table__


@dataclass
class PutResult:
    stored: int = 0
    unchanged: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    patients: set[str] = field(default_factory=set)
    outcomes: dict[str, "str | Rejection"] = field(default_factory=dict)
    # per record key not rejected: what the answer counted for it (1, or its rows)
    units: dict[str, int] = field(default_factory=dict)


def record_digest(record: Record) -> str:
    """A digest of everything a record would store; equal digests mean nothing to change."""
    body = orjson.dumps({"p": record.patient, "r": record.resources},
                        option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(body).hexdigest()


def dumps(resource: dict[str, Any]) -> bytes:
    """Stored form: orjson, keys sorted (so equal resources are equal bytes), no ``meta``."""
    return orjson.dumps({k: v for k, v in resource.items() if k != "meta"},
                        option=orjson.OPT_SORT_KEYS)


@lru_cache(maxsize=4096)  # the resources of one upload share their time: $everything's rows
def instant(when: datetime) -> str:
    """A stored time as a FHIR instant, in UTC (``meta.lastUpdated``)."""
    return when.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def with_meta(content: bytes, version: int, last_updated: datetime) -> bytes:
    """Stored bytes with ``meta`` spliced in (cheaper than a parse and a dump per read)."""
    meta = b'{"meta":{"versionId":"%d","lastUpdated":"%s"},' % (version,
                                                                instant(last_updated).encode())
    return meta + content[1:]


def put_records(conn: Connection, channel: str, records: list[Record],
                upload_id: int | None, upload_ids: list[int] | None = None) -> PutResult:
    """Store ``records`` (already mapped and validated) in ``conn``'s transaction.

    The whole upload is written in a handful of set-wise statements (one look-up of the record
    rows, one of the patient index, one of the current resources; bulk inserts and updates),
    not statements per resource. Within one upload, a later record wins over an earlier one
    with the same key, and two records of one person resolve to one patient. ``upload_ids``
    (parallel to ``records``) stores several uploads at once, each version noting its own.
    ``PutResult.outcomes`` says per record key: ``stored``, ``unchanged`` or a Rejection.
    ``stored``/``unchanged`` count records, or the rows of records that list them (``_count``).
    """
    result = PutResult()
    now = datetime.now(timezone.utc)
    keyed = {f"{channel}:{r.hospital}|{r.key}": r for r in records}
    origin = {f"{channel}:{r.hospital}|{r.key}": (upload_ids[i] if upload_ids else upload_id)
              for i, r in enumerate(records)}
    digests = {k: record_digest(r) for k, r in keyed.items()}
    stored_rows = _load_records(conn, list(keyed))
    todo: dict[str, Record] = {}
    for key, record in keyed.items():
        row = stored_rows.get(key)
        outcome = _compare(record, digests[key], row)
        result.outcomes[key] = "stored" if outcome in ("new", "changed") else outcome
        if isinstance(outcome, Rejection):
            result.rejected.append(outcome)
            continue
        stored, unchanged = _count(record, row, outcome == "unchanged")
        result.units[key] = stored + unchanged
        result.stored += stored
        result.unchanged += unchanged
        if outcome == "unchanged":
            result.patients.add(row.patient_id)
        else:
            todo[key] = record
    if todo:
        pids = _resolve_patients(conn, todo)
        batch = _Batch(conn, upload_id, now, origin)
        _add_patients(conn, batch, todo, pids)
        for key, record in todo.items():
            batch.add_record(key, record, pids[key])
        batch.retire_dropped([k for k in todo if k in stored_rows])
        batch.flush()
        _write_record_rows(conn, todo, digests, pids, stored_rows, origin, now)
        result.patients.update(pids.values())
    return result


def _chunks(items: list, size: int = 800):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _load_records(conn: Connection, keys: list[str]) -> dict:
    rows = {}
    for part in _chunks(keys):
        for row in conn.execute(select(RecordRow.key, RecordRow.digest, RecordRow.patient_id,
                                       RecordRow.source_version, RecordRow.row_digests)
                                .where(RecordRow.key.in_(part))):
            rows[row.key] = row
    return rows


def _compare(record: Record, digest: str, row) -> str | Rejection:
    """``new``, ``changed``, ``unchanged``, or a Rejection for an older source version."""
    if row is None:
        return "new"
    if row.digest == digest:
        return "unchanged"
    version = getattr(record, "version", None)
    if version is not None and (row.source_version or 0) > version:
        return Rejection(record.location or record.key,
                         f"version {version} is older than the stored version "
                         f"{row.source_version}; not replaced")
    return "changed"


def _count(record: Record, row, unchanged: bool) -> tuple[int, int]:
    """(stored, unchanged) of one record that is not rejected. A record listing no rows counts
    as one. Of one that lists its rows, each row counts: ``unchanged`` when the stored record
    (``row``) holds its digest or an earlier row of the record has it, else ``stored``; a record
    whose digest is unchanged holds all of them."""
    digests = record.row_digests
    if not digests:
        return (0, 1) if unchanged else (1, 0)
    if unchanged:
        return 0, len(digests)
    held = set((row.row_digests or "").split()) if row is not None else set()
    stored = len(set(digests) - held)
    return stored, len(digests) - stored


def _resolve_patients(conn: Connection, todo: dict[str, Record]) -> dict[str, str]:
    """Record key -> patient id, resolving the whole upload against the index at once."""
    keys_of = {k: patients.match_keys(r.patient, r.hospital, r.key) for k, r in todo.items()}
    all_keys = list({m for ms in keys_of.values() for m in ms})
    known: dict[str, str] = {}
    for part in _chunks(all_keys):
        known.update(conn.execute(select(PatientKey.key, PatientKey.patient_id)
                                  .where(PatientKey.key.in_(part))).all())
    primaries: dict[str, str] = {}
    for part in _chunks(list(set(known.values()))):
        primaries.update(conn.execute(select(PatientRow.id, PatientRow.primary_key)
                                      .where(PatientRow.id.in_(part))).all())
    new_patients, new_keys, pids = [], [], {}
    for key, match in keys_of.items():
        pid = patients.choose(match, known, primaries)
        if pid is None:
            pid = make_id("Patient", match[0])
            if pid not in primaries:
                primaries[pid] = match[0]
                new_patients.append({"id": pid, "primary_key": match[0],
                                     "created": datetime.now(timezone.utc)})
        for m in match:
            if m not in known:
                known[m] = pid
                new_keys.append({"key": m, "patient_id": pid})
        pids[key] = pid
    if new_patients:
        conn.execute(insert(PatientRow), new_patients)
    if new_keys:
        conn.execute(insert(PatientKey), new_keys)
    return pids


def _add_patients(conn: Connection, batch: "_Batch", todo: dict[str, Record],
                  pids: dict[str, str]) -> None:
    """Merge each record's Patient into the stored one (in upload order) and queue the result."""
    merged: dict[str, dict] = {}
    for part in _chunks(list(set(pids.values()))):
        for row in conn.execute(select(R.c.res_id, R.c.content)
                                .where(R.c.res_type == "Patient", R.c.res_id.in_(part))):
            merged[row.res_id] = orjson.loads(row.content)
    for key, record in todo.items():
        pid = pids[key]
        merged[pid] = patients.merge_patient(merged.get(pid), record.patient, pid)
    for pid in set(pids.values()):
        batch.add("Patient", pid, merged[pid], record_key=None, hospital=None, pid=pid)


def _write_record_rows(conn, todo, digests, pids, stored_rows, origin, now) -> None:
    rows = [{"key": k, "hospital": r.hospital, "patient_id": pids[k], "digest": digests[k],
             "source_version": getattr(r, "version", None), "upload_id": origin[k],
             "row_digests": " ".join(sorted(set(r.row_digests))) or None, "updated": now}
            for k, r in todo.items()]
    new = [row for row in rows if row["key"] not in stored_rows]
    old = [dict(row, w_key=row.pop("key")) for row in rows if row["key"] in stored_rows]
    if new:
        conn.execute(insert(RecordRow), new)
    if old:
        conn.execute(update(RecordRow).where(RecordRow.key == bindparam("w_key")), old)


class _Batch:
    """The resource versions one upload writes, flushed in a few set-wise statements."""

    def __init__(self, conn: Connection, upload_id: int | None, now: datetime,
                 origin: dict[str, int | None] | None = None):
        self.conn, self.upload_id, self.now = conn, upload_id, now
        # record key -> the upload it came from (several uploads stored at once)
        self.origin = origin or {}
        self.writes: dict[tuple[str, str], dict] = {}
        self.retired: list = []

    def add(self, t: str, i: str, resource: dict, record_key, hospital, pid,
            content: bytes | None = None, upload_id: int | None = None) -> None:
        self.writes[(t, i)] = {
            "res_type": t, "res_id": i, "patient_id": pid, "hospital": hospital,
            "province": province_of(hospital) if hospital else None, "record_key": record_key,
            "sort_date": search.sort_date(t, resource),
            "sensitive": sensitivity.category_of(resource), "deleted": False,
            "last_updated": self.now, "upload_id": upload_id or self.upload_id,
            "content": content or dumps(resource),
            "_resource": resource}

    def add_record(self, key: str, record: Record, pid: str) -> None:
        ref = f"Patient/{pid}".encode()
        for r in record.resources:
            t = r["resourceType"]
            shared = t in SHARED_TYPES
            owner = None if t in MERGED_TYPES else key  # MERGED_TYPES holds SHARED_TYPES
            content = dumps(r).replace(_PATIENT_REF, ref)
            earlier = self.writes.get((t, r["id"]))
            if t in MERGED_TYPES and earlier is not None:  # two records of one upload
                r = {**orjson.loads(earlier["content"]), **orjson.loads(content)}
                content = dumps(r)
            elif t in PART_LISTS and earlier is not None:
                r = _union_parts(t, orjson.loads(earlier["content"]), orjson.loads(content))
                content = dumps(r)
            self.add(t, r["id"], r, owner, record.hospital, None if shared else pid, content,
                     self.origin.get(key))

    def retire_dropped(self, record_keys: list[str]) -> None:
        """Queue as deleted the resources of replaced records that the new versions dropped."""
        for part in _chunks(record_keys):
            for row in self.conn.execute(
                    select(R.c.res_type, R.c.res_id, R.c.version, R.c.content, R.c.deleted,
                           R.c.last_updated, R.c.upload_id, R.c.record_key)
                    .where(R.c.record_key.in_(part), R.c.deleted.is_(False))):
                if (row.res_type, row.res_id) not in self.writes:
                    self.retired.append(row)

    def _current(self) -> dict:
        """The stored versions of everything this batch writes, in one query per chunk of ids
        (not one per type: a single HL7 message touches six types)."""
        current = {}
        for part in _chunks(sorted(self.writes), 400):
            by_type: dict[str, list[str]] = {}
            for t, i in part:
                by_type.setdefault(t, []).append(i)
            # OR of (type, ids IN ...) keeps each branch on the primary key (a row-value IN
            # made SQLite scan the table)
            wanted = or_(*(and_(R.c.res_type == t, R.c.res_id.in_(ids))
                           for t, ids in by_type.items()))
            for row in self.conn.execute(
                    select(R.c.res_type, R.c.res_id, R.c.version, R.c.content, R.c.deleted,
                           R.c.last_updated, R.c.upload_id, R.c.record_key).where(wanted)):
                current[(row.res_type, row.res_id)] = row
        return current

    def flush(self) -> None:
        """Write what changed. ``resource`` holds each current version; ``resource_history``
        receives the version a write supersedes (so a first version costs one row, not two)."""
        current = self._current()
        inserts, updates, history, index, reindex = [], [], [], [], []
        for (t, i), values in self.writes.items():
            resource = values.pop("_resource")
            old = current.get((t, i))
            if t in MERGED_TYPES and old is not None and not old.deleted:
                resource = {**orjson.loads(old.content), **orjson.loads(values["content"])}
                values["content"] = dumps(resource)
            elif t in PART_LISTS:
                resource = self._gathered(t, old, orjson.loads(values["content"]))
                values["content"] = dumps(resource)
            if old is not None and old.content == values["content"] and not old.deleted:
                continue
            values["version"] = old.version + 1 if old is not None else 1
            if old is None:
                inserts.append(values)
            else:
                updates.append(dict(values, w_type=t, w_id=i))
                reindex.append((t, i))
                history.append(self._history(t, i, old))
            # The patient placeholder never reaches the index: ``patient`` is answered from
            # ``resource.patient_id`` (search.COLUMN_PARAMS).
            index.extend(search.index_rows(t, i, resource))
        for row in self.retired:
            updates.append({"w_type": row.res_type, "w_id": row.res_id, "deleted": True,
                            "version": row.version + 1, "last_updated": self.now,
                            "upload_id": self.origin.get(row.record_key, self.upload_id)})
            reindex.append((row.res_type, row.res_id))
            history.append(self._history(row.res_type, row.res_id, row))
        self._execute(inserts, updates, history, index, reindex)
        notify.on_stored(self.conn, inserts + updates, self.now)  # the outbox, in this transaction

    def _gathered(self, t: str, old, new: dict) -> dict:
        """``new`` with the part list gathered (see PART_LISTS)."""
        if old is not None and not old.deleted:
            new = _union_parts(t, orjson.loads(old.content), new)
        element = PART_LISTS[t]
        gone = {f"{r.res_type}/{r.res_id}" for r in self.retired}
        if gone and new.get(element):
            kept = [i for i in new[element] if i.get("reference") not in gone]
            new = {**new, element: kept} if kept else {k: v for k, v in new.items() if k != element}
        return new

    @staticmethod
    def _history(t: str, i: str, old) -> dict:
        return {"res_type": t, "res_id": i, "version": old.version, "deleted": old.deleted,
                "last_updated": old.last_updated, "upload_id": old.upload_id,
                "content": old.content}

    def _execute(self, inserts, updates, history, index, reindex) -> None:
        conn = self.conn
        for part in _chunks(reindex):
            for t in {t for t, _ in part}:
                conn.execute(delete(SI).where(SI.c.res_type == t,
                                              SI.c.res_id.in_([i for tt, i in part if tt == t])))
        if inserts:
            conn.execute(insert(R), inserts)
        for group in _group_by_keys(updates):
            conn.execute(update(R).where(R.c.res_type == bindparam("w_type"),
                                         R.c.res_id == bindparam("w_id")), group)
        if history:
            conn.execute(insert(H), history)
        if index:
            _insert_index(conn, index)


_INDEX_COLUMNS = ("res_type", "res_id", "param", "system", "value", "date_lo", "date_hi")


def _insert_index(conn: Connection, rows: list[dict]) -> None:
    """Bulk insert of index rows straight through the driver: the largest insert of an upload
    (several rows per resource), all plain text, so SQLAlchemy's per-row parameter processing is
    pure overhead here (a third of the store's time in a profile)."""
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    sql = (f"INSERT INTO search_index ({', '.join(_INDEX_COLUMNS)}) "
           f"VALUES ({', '.join([mark] * len(_INDEX_COLUMNS))})")
    conn.exec_driver_sql(sql, [tuple(r[c] for c in _INDEX_COLUMNS) for r in rows])


# Lists a report gathers when several records each bring part of it (Anhui sends a lab report
# as rows, one record per row, possibly over several uploads): the stored list is the union of
# what was sent, less what its records retired (a corrected HL7 report that drops a result
# retires that Observation, so it leaves the list too).
PART_LISTS = {"DiagnosticReport": "result"}


def _union_parts(t: str, old: dict, new: dict) -> dict:
    """``new`` with the part list of ``old`` kept: the union, old order first."""
    element = PART_LISTS[t]
    items = list(old.get(element, []))
    items += [i for i in new.get(element, []) if i not in items]
    return {**new, element: items} if items else new


def _group_by_keys(rows: list[dict]) -> list[list[dict]]:
    """executemany needs the same keys in every row: group updates by their key set."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(sorted(row)), []).append(row)
    return list(groups.values())


def patient_for_resident_id(engine, resident_id: str) -> str:
    """The index id of the person with this (checked) resident ID; a person the hub has no
    record of yet gets an index entry now (the same id their first record will join), so their
    sharing choices and access log have somewhere to live."""
    from hub.db import writer

    key = f"rid:{resident_id}"
    with writer(engine).begin() as conn:
        pid = conn.execute(select(PatientKey.patient_id).where(PatientKey.key == key)).scalar()
        if pid is not None:
            return pid
        pid = make_id("Patient", key)
        if conn.execute(select(PatientRow.id).where(PatientRow.id == pid)).first() is None:
            conn.execute(insert(PatientRow), [{"id": pid, "primary_key": key,
                                               "created": datetime.now(timezone.utc)}])
        conn.execute(insert(PatientKey), [{"key": key, "patient_id": pid}])
        return pid
