"""What the HL7 v2 tests share: the Shanghai fixtures and an ACK read back into its fields."""

from __future__ import annotations

from tests.support.common import FIXTURES

SH_FIXTURES = FIXTURES / "sh"


def sh_fixture(name: str) -> bytes:
    return (SH_FIXTURES / name).read_bytes()


def ack_segments(ack: bytes) -> dict[str, list[list[str]]]:
    """An ER7 ACK (``|``-separated, UTF-8, ``\\r`` ends) as segment id -> each one's fields."""
    assert ack.endswith(b"\r")
    out: dict[str, list[list[str]]] = {}
    for seg in ack.decode("utf-8").split("\r")[:-1]:
        fields = seg.split("|")
        out.setdefault(fields[0], []).append(fields)
    return out
