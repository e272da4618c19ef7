"""The HL7 v2 ACK (ER7) that answers a message: MSA with the acknowledgment code, one ERR per
located error. Pure: the original message's bytes (or None, or garbage) in, ACK bytes out.

Used by the Shanghai channel (``hub.hl7_ingest``) and the MLLP listener (``hub.mllp``); the
message is read through ``mappers.er7``.
"""

from __future__ import annotations

from datetime import datetime

from mappers.er7 import STANDARD, AckError, Encoding, escape, raw_msh_fields, unescape
from mappers.region import scrub

ACK_VERSION = "2.5"
V2_0357 = "HL70357"
# HL7 table 0357 message error codes, for ERR-3.
ERROR_CODES: dict[str, str] = {
    "0": "Message accepted", "100": "Segment sequence error", "101": "Required field missing",
    "102": "Data type error", "103": "Table value not found", "200": "Unsupported message type",
    "201": "Unsupported event code", "202": "Unsupported processing id",
    "203": "Unsupported version id", "207": "Application internal error",
}


def _copy(fields: list[str], n: int, enc: Encoding | None) -> str:
    """MSH-n for the ACK, re-encoded in ``^~\\&`` when the original used other characters."""
    if n >= len(fields) or enc is None:
        return ""
    value = fields[n]
    if enc == STANDARD:
        return value
    comps = value.split(enc.component)
    return STANDARD.component.join(escape(unescape(c, enc)) for c in comps)


def build_ack(message: bytes | None, ack_code: str, errors: list[AckError] | list[tuple],
              control_id_for_ack: str, now: datetime | None = None) -> bytes:
    """An ER7 ACK (UTF-8, segments ending ``\\r``) for ``message``.

    MSH-3/4 and MSH-5/6 are the original's receiver and sender swapped, MSH-9 ``ACK^<trigger>^ACK``,
    MSA-1 ``ack_code``, MSA-2 the original MSH-10, one ERR per error: ERR-2 ``SEG^seq^field``,
    ERR-3 the table 0357 code, ERR-4 severity E, ERR-8 the reason. ``message`` may be None or
    garbage (AR): the ACK then has empty addresses and MSA-2.
    """
    fields, enc = raw_msh_fields(message)
    msh9 = fields[9] if len(fields) > 9 else ""
    trigger = msh9.split(enc.component)[1] if enc and enc.component in msh9 else ""
    stamp = (now or datetime.now()).strftime("%Y%m%d%H%M%S")
    original_id = _copy(fields, 10, enc)
    processing = _copy(fields, 11, enc) or "P"
    version = _copy(fields, 12, enc) or ACK_VERSION
    msh = ["MSH", "^~\\&", _copy(fields, 5, enc) or "YRDHUB", _copy(fields, 6, enc),
           _copy(fields, 3, enc), _copy(fields, 4, enc), stamp, "",
           f"ACK^{escape(unescape(trigger, enc)) if enc else ''}^ACK",
           escape(control_id_for_ack), processing, version, "", "", "", "", "", "UNICODE UTF-8"]
    segments = ["|".join(msh), "|".join(["MSA", escape(ack_code), original_id])]
    for error in errors:
        e = AckError(*error)
        location = f"{e.segment}^{e.sequence}^{e.field}" if e.segment else ""
        code = e.code if e.code in ERROR_CODES else "207"
        reason = escape(scrub(e.reason))
        severity = "I" if ack_code == "AA" else "E"
        # ERR-1 (ELD, read by v2.3/2.4 engines), ERR-2 location, ERR-3 code with the reason as
        # its original text (CWE-9), ERR-4 severity, ERR-8 the reason for a person.
        eld = f"{location}^{code}&{escape(ERROR_CODES[code])}" if location else ""
        err3 = f"{code}^{ERROR_CODES[code]}^{V2_0357}^^^^^^{reason}"
        segments.append("|".join(["ERR", eld, location, err3, severity, "", "", "", reason]))
    return ("\r".join(segments) + "\r").encode("utf-8")

