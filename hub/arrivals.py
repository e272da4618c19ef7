"""What arrived, record by record (``record_arrival``): written in the transaction that stores an
upload, so the cooperation indicators (``hub/indicators.py``) count exactly what the answers
counted, and nothing is kept as a counter that could drift.

One row per record an answer counted: ``stored`` or ``unchanged`` with the units the answer
counted for it (1, or the rows of a record made of spreadsheet rows), and one ``rejected`` row
per rejection with its reason. An HL7 v2 message is one record: ``AA`` is stored (or unchanged),
``AE``/``AR`` rejected with its first reason. Re-runs of archived originals write none (the
hospital sent nothing new). ``delay_s``: from the visit's start (``visit_start``) to the
arrival, for stored records only (a re-send of what was held says nothing about lateness).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable

from sqlalchemy import insert

from hub.models import RecordArrival
from mappers.common import Record, Rejection
from mappers.region import CST, province_of


def month_of(when: datetime) -> str:
    """``yyyy-mm`` of an aware time in +08:00."""
    return when.astimezone(CST).strftime("%Y-%m")


def _parse(value: Any) -> datetime | None:
    """An ISO 8601 FHIR dateTime as an aware time (a date alone is its midnight in +08:00);
    None when absent or unreadable."""
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=CST)


def visit_start(record: Record) -> datetime | None:
    """The start of the visit a record describes: its Encounter's ``period.start``; a record
    without one (a report sent alone) by its earliest ``effectiveDateTime``; None when neither."""
    starts = [_parse((r.get("period") or {}).get("start")) for r in record.resources
              if r.get("resourceType") == "Encounter"]
    if not any(starts):
        starts = [_parse(r.get("effectiveDateTime")) for r in record.resources]
    found = [s for s in starts if s is not None]
    return min(found) if found else None


def _delay(record: Record, arrived: datetime) -> int | None:
    start = visit_start(record)
    return None if start is None else int((arrived - start).total_seconds())


def _row(upload_id: int, sender: str, arrived: datetime, outcome: str, units: int = 1,
         reason: str | None = None, delay_s: int | None = None) -> dict:
    return {"upload_id": upload_id, "hospital": sender, "province": province_of(sender),
            "month": month_of(arrived), "arrived": arrived, "outcome": outcome, "units": units,
            "reason": reason[:500] if reason else None, "delay_s": delay_s}


def of_upload(upload_id: int, sender: str, arrived: datetime, channel: str,
              records: list[Record], put: Any, rejections: Iterable[Rejection]) -> list[dict]:
    """The rows of one upload's answer (``put``: ``store.PutResult``)."""
    rows = []
    for record in {f"{channel}:{r.hospital}|{r.key}": r for r in records}.values():
        key = f"{channel}:{record.hospital}|{record.key}"
        outcome = put.outcomes.get(key)
        if isinstance(outcome, str):
            delay = _delay(record, arrived) if outcome == "stored" else None
            rows.append(_row(upload_id, sender, arrived, outcome, put.units[key], None, delay))
    rows += [_row(upload_id, sender, arrived, "rejected", reason=r.reason) for r in rejections]
    return rows


def of_message(upload_id: int, sender: str, arrived: datetime, mapped: Any, put: Any) -> dict:
    """The one row of an HL7 v2 message (``mapped``: ``shanghai_hl7v2.MessageResult``)."""
    if mapped.ack_code != "AA":
        reasons = [r.reason for r in mapped.result.rejected] + [e.reason for e in mapped.errors]
        return _row(upload_id, sender, arrived, "rejected",
                    reason=reasons[0] if reasons else f"answered {mapped.ack_code}")
    records = mapped.result.records
    stored = [r for r in records if put.outcomes.get(f"sh:{r.hospital}|{r.key}") == "stored"]
    delays = [d for d in (_delay(r, arrived) for r in stored) if d is not None]
    return _row(upload_id, sender, arrived, "stored" if stored else "unchanged",
                delay_s=delays[0] if delays else None)


def write(conn, rows: list[dict]) -> None:
    if rows:
        conn.execute(insert(RecordArrival), rows)
