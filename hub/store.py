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
from typing import Any

import orjson
from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection

from hub import patients, search, sensitivity
from hub.models import Record as RecordRow
from hub.models import Resource, ResourceHistory, SearchIndex
from mappers.common import PATIENT_REF, SHARED_TYPES, Record, Rejection, province_of

_PATIENT_REF = PATIENT_REF.encode()
R = Resource.__table__
H = ResourceHistory.__table__
SI = SearchIndex.__table__


@dataclass
class PutResult:
    stored: int = 0
    unchanged: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    patients: set[str] = field(default_factory=set)


def record_digest(record: Record) -> str:
    """A digest of everything a record would store; equal digests mean nothing to change."""
    body = orjson.dumps({"p": record.patient, "r": record.resources},
                        option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(body).hexdigest()


def dumps(resource: dict[str, Any]) -> bytes:
    """Stored form: orjson, keys sorted (so equal resources are equal bytes), no ``meta``."""
    return orjson.dumps({k: v for k, v in resource.items() if k != "meta"},
                        option=orjson.OPT_SORT_KEYS)


def with_meta(content: bytes, version: int, last_updated: datetime) -> bytes:
    """Stored bytes with ``meta`` spliced in (cheaper than a parse and a dump per read)."""
    stamp = last_updated.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    meta = b'{"meta":{"versionId":"%d","lastUpdated":"%s"},' % (version, stamp.encode())
    return meta + content[1:]


def put_records(conn: Connection, channel: str, records: list[Record],
                upload_id: int | None) -> PutResult:
    """Store ``records`` (already mapped and validated) in ``conn``'s transaction."""
    result = PutResult()
    now = datetime.now(timezone.utc)
    for record in records:
        outcome = _put_record(conn, channel, record, upload_id, now)
        if isinstance(outcome, Rejection):
            result.rejected.append(outcome)
            continue
        changed, pid = outcome
        result.patients.add(pid)
        if changed:
            result.stored += 1
        else:
            result.unchanged += 1
    return result


def _put_record(conn: Connection, channel: str, record: Record, upload_id: int | None,
                now: datetime) -> tuple[bool, str] | Rejection:
    key = f"{channel}:{record.hospital}|{record.key}"
    digest = record_digest(record)
    version = getattr(record, "version", None)
    row = conn.execute(select(RecordRow.digest, RecordRow.patient_id, RecordRow.source_version)
                       .where(RecordRow.key == key)).first()
    if row is not None and row.digest == digest:
        return False, row.patient_id
    if row is not None and version is not None and (row.source_version or 0) > version:
        return Rejection(record.location or record.key,
                         f"version {version} is older than the stored version "
                         f"{row.source_version}; not replaced")
    keys = patients.match_keys(record.patient, record.hospital, record.key)
    pid, _ = patients.resolve(conn, keys)
    _put_patient(conn, record.patient, pid, upload_id, now)
    ref = f"Patient/{pid}".encode()
    contents = {(r["resourceType"], r["id"]): (dumps(r).replace(_PATIENT_REF, ref), r)
                for r in record.resources}
    _write_resources(conn, key, record.hospital, pid, contents, upload_id, now,
                     existing=row is not None)
    values = {"key": key, "hospital": record.hospital, "patient_id": pid, "digest": digest,
              "source_version": version, "upload_id": upload_id, "updated": now}
    if row is None:
        conn.execute(insert(RecordRow), [values])
    else:
        conn.execute(update(RecordRow).where(RecordRow.key == key).values(**values))
    return True, pid


def _put_patient(conn, incoming: dict, pid: str, upload_id, now) -> None:
    current = conn.execute(select(R.c.content).where(R.c.res_type == "Patient",
                                                     R.c.res_id == pid)).first()
    existing = orjson.loads(current.content) if current else None
    merged = patients.merge_patient(existing, incoming, pid)
    _upsert(conn, {("Patient", pid): (dumps(merged), merged)}, record_key=None,
            hospital=None, pid=pid, upload_id=upload_id, now=now)


def _write_resources(conn, key, hospital, pid, contents, upload_id, now, existing: bool) -> None:
    shared = {k: v for k, v in contents.items() if k[0] in SHARED_TYPES}
    owned = {k: v for k, v in contents.items() if k[0] not in SHARED_TYPES}
    if shared:
        _upsert(conn, shared, record_key=None, hospital=hospital, pid=None,
                upload_id=upload_id, now=now)
    _upsert(conn, owned, record_key=key, hospital=hospital, pid=pid, upload_id=upload_id,
            now=now)
    if existing:
        _retire_missing(conn, key, set(owned), upload_id, now)


def _upsert(conn, contents: dict, record_key, hospital, pid, upload_id, now) -> None:
    """Write each resource whose bytes differ from its current version as a new version."""
    if not contents:
        return
    ids_by_type: dict[str, list[str]] = {}
    for t, i in contents:
        ids_by_type.setdefault(t, []).append(i)
    current = {}
    for t, ids in ids_by_type.items():
        for row in conn.execute(select(R.c.res_id, R.c.version, R.c.content, R.c.deleted)
                                .where(R.c.res_type == t, R.c.res_id.in_(ids))):
            current[(t, row.res_id)] = row
    inserts, history, index = [], [], []
    for (t, i), (content, resource) in contents.items():
        old = current.get((t, i))
        if old is not None and old.content == content and not old.deleted:
            continue
        version = old.version + 1 if old is not None else 1
        values = _resource_values(t, i, version, content, resource, record_key, hospital, pid,
                                  now)
        if old is None:
            inserts.append(values)
        else:
            conn.execute(update(R).where(R.c.res_type == t, R.c.res_id == i).values(**values))
            conn.execute(delete(SI).where(SI.c.res_type == t, SI.c.res_id == i))
        history.append({"res_type": t, "res_id": i, "version": version, "deleted": False,
                        "last_updated": now, "upload_id": upload_id, "content": content})
        index.extend(_index_rows(t, i, resource, pid))
    if inserts:
        conn.execute(insert(R), inserts)
    if history:
        conn.execute(insert(H), history)
    if index:
        conn.execute(insert(SI), index)


def _index_rows(t: str, i: str, resource: dict, pid: str | None) -> list[dict]:
    rows = search.index_rows(t, i, resource)
    if pid:
        placeholder = PATIENT_REF.split("/")[1]
        for row in rows:
            if row["value"] == placeholder:
                row["value"] = pid
    return rows


def _resource_values(t, i, version, content, resource, record_key, hospital, pid, now) -> dict:
    return {"res_type": t, "res_id": i, "version": version, "patient_id": pid,
            "hospital": hospital, "province": province_of(hospital) if hospital else None,
            "record_key": record_key, "sort_date": search.sort_date(t, resource),
            "sensitive": sensitivity.category_of(resource), "deleted": False,
            "last_updated": now, "content": content}


def _retire_missing(conn, key: str, keep: set, upload_id, now) -> None:
    """Mark deleted (as a new version) the record's resources that the new version dropped."""
    rows = conn.execute(select(R.c.res_type, R.c.res_id, R.c.version, R.c.content)
                        .where(R.c.record_key == key, R.c.deleted.is_(False))).all()
    for row in rows:
        if (row.res_type, row.res_id) in keep:
            continue
        conn.execute(update(R).where(R.c.res_type == row.res_type, R.c.res_id == row.res_id)
                     .values(deleted=True, version=row.version + 1, last_updated=now))
        conn.execute(delete(SI).where(SI.c.res_type == row.res_type, SI.c.res_id == row.res_id))
        conn.execute(insert(H), [{"res_type": row.res_type, "res_id": row.res_id,
                                  "version": row.version + 1, "deleted": True,
                                  "last_updated": now, "upload_id": upload_id,
                                  "content": row.content}])
