"""ER7, HL7 v2's pipe-and-hat encoding: messages split into segments, fields, repetitions,
components and subcomponents; escapes; encoding characters (MSH-1/MSH-2); the character set
(MSH-18). Pure: bytes in, text and tokens out. The mappers (``mappers.shanghai_hl7v2``) and the
ACK builder (``mappers.hl7_ack``) read messages through it.

Failure semantics: what cannot be read as ER7 raises ``Er7Error`` carrying an ``AckError`` (the
segment, its occurrence and the field where it went wrong, the reason, the HL7 table 0357 code),
which is what one ERR segment of the ACK reports. Reasons never hold a full resident ID number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from mappers.region import scrub

BOM = b"\xef\xbb\xbf"

# MSH-18 character set -> Python codec, used only when the bytes are not UTF-8 (the format says
# UTF-8; ASCII is a subset). Data, not an if chain.
CHARSETS: dict[str, str] = {
    "UNICODE UTF-8": "utf-8", "ASCII": "utf-8", "UNICODE": "utf-8",
    "GB 18030-2000": "gb18030", "8859/1": "latin-1",
}


# ---------------------------------------------------------------------------------------------
# Located errors
# ---------------------------------------------------------------------------------------------


class AckError(NamedTuple):
    """One ERR segment: where (segment id, its occurrence, field position) and why.

    ``code`` is from HL7 table 0357. ``reason`` never holds a full resident ID number.
    """

    segment: str
    sequence: int
    field: int
    reason: str
    code: str = "207"

    def location(self) -> str:
        return f"{self.segment}[{self.sequence}]-{self.field}" if self.segment else "message"


class Er7Error(Exception):
    """A located reason why a message or a unit of it cannot be read or mapped (one ERR segment
    of the ACK, and a Rejection)."""

    def __init__(self, error: AckError):
        super().__init__(error.reason)
        self.error = error


# ---------------------------------------------------------------------------------------------
# Splitting and decoding
# ---------------------------------------------------------------------------------------------


def segments_of(body: bytes) -> list[bytes]:
    """Non-empty segment lines; BOM (also one per message in a concatenation) and line ends folded."""
    if body.startswith(BOM):
        body = body[len(BOM):]
    lines = body.replace(b"\r\n", b"\r").replace(b"\n", b"\r").split(b"\r")
    out = []
    for line in lines:
        if line.startswith(BOM):
            line = line[len(BOM):]
        line = line.rstrip(b" \t\x00")
        if line.strip():
            out.append(line)
    return out


def _is_envelope(line: bytes) -> bool:
    return line[:3] in (b"FHS", b"BHS", b"BTS", b"FTS") and not line[3:4].isalnum()


def split_messages(body: bytes) -> list[bytes]:
    """One body -> its messages, each ending in ``\\r``; FHS/BHS/BTS/FTS envelopes dropped.

    Lines before the first MSH (garbage, a stray header) are kept together as one item of their
    own so that it is answered AR rather than silently lost. An empty body gives ``[]``.
    """
    messages: list[list[bytes]] = []
    preamble: list[bytes] = []
    for line in segments_of(body):
        if _is_envelope(line):
            continue
        if line[:3] == b"MSH":
            messages.append([line])
        elif messages:
            messages[-1].append(line)
        else:
            preamble.append(line)
    out = [b"\r".join(preamble) + b"\r"] if preamble else []
    return out + [b"\r".join(m) + b"\r" for m in messages]


def _declared_charset(lines: list[bytes]) -> str | None:
    """MSH-18 read from the raw MSH line (before the text is decoded)."""
    msh = lines[0]
    if len(msh) < 4:
        return None
    parts = msh.split(msh[3:4])
    if len(parts) <= 17:
        return None
    return parts[17].decode("ascii", "replace").split(msh[4:5].decode("latin-1") or "^")[0].strip()


def decode(message: bytes) -> str:
    """The message as text with ``\\r`` segment ends. Raises ``Er7Error`` (AR) when it cannot."""
    lines = segments_of(message)
    if not lines:
        raise Er7Error(AckError("", 0, 0, "empty message", "100"))
    raw = b"\r".join(lines)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    codec = CHARSETS.get(_declared_charset(lines) or "")
    if codec and codec != "utf-8":
        try:
            return raw.decode(codec)
        except UnicodeDecodeError:
            pass
    raise Er7Error(AckError("MSH", 1, 18, "message is not UTF-8 text (MSH-18 UNICODE UTF-8)",
                             "102"))


def check_encoding_characters(text: str) -> None:
    """MSH-1/MSH-2 must be 4 or 5 distinct, non-alphanumeric characters (``^~\\&`` or ``^~\\&#``)."""
    if not text.startswith("MSH") or len(text) < 8:
        raise Er7Error(AckError("", 0, 0, "not an HL7 v2 message: it does not begin with MSH",
                                 "100"))
    field_sep = text[3]
    end = text.find(field_sep, 4)
    chars = text[4:end] if end != -1 else ""
    allowed = field_sep + chars
    if (
        not 4 <= len(chars) <= 5
        or len(set(allowed)) != len(allowed)
        or any(c.isalnum() or c.isspace() for c in allowed)
    ):
        raise Er7Error(AckError("MSH", 1, 2, "unsupported encoding characters in MSH-1/MSH-2",
                                 "102"))


# ---------------------------------------------------------------------------------------------
# Reading fields: every field is held as repetitions -> components -> subcomponents of raw
# strings (never collapsed, so a field without components is not mistaken for its first
# character, python-hl7's trap), and read through these helpers.
# ---------------------------------------------------------------------------------------------

Leaves = list[list[list[str]]]


@dataclass(frozen=True)
class Encoding:
    field: str
    component: str
    repetition: str
    escape: str
    subcomponent: str


def unescape(text: str, enc: Encoding) -> str:
    """HL7 escapes: ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\``, ``\\.br\\`` (a newline), ``\\Xhh..\\`` (UTF-8 bytes).

    ``\\H\\``/``\\N\\`` (highlighting) and other formatting commands are dropped; an unterminated
    escape or a bad ``\\X\\`` is kept literally rather than failing the message.
    """
    esc = enc.escape
    if esc not in text:
        return text
    simple = {"F": enc.field, "S": enc.component, "T": enc.subcomponent, "R": enc.repetition,
              "E": esc, "H": "", "N": "", ".br": "\n", ".sp": "\n", ".fi": "", ".nf": "",
              ".ce": "\n", ".in": "", ".ti": "", ".sk": " "}
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] != esc:
            out.append(text[i])
            i += 1
            continue
        j = text.find(esc, i + 1)
        if j == -1:
            out.append(text[i:])
            break
        seq = text[i + 1:j]
        if seq in simple:
            out.append(simple[seq])
        elif seq[:1] == "X" and len(seq) > 1:
            try:
                out.append(bytes.fromhex(seq[1:]).decode("utf-8", "replace"))
            except ValueError:
                out.append(text[i:j + 1])
        elif seq[:3] in (".sp", ".in", ".ti", ".sk"):
            out.append("\n" if seq.startswith(".sp") else "")
        else:
            out.append(text[i:j + 1])
        i = j + 1
    return "".join(out)


def escape(text: str, enc: Encoding | None = None) -> str:
    """Text -> ER7 field content (separators and the escape character escaped, newlines as .br)."""
    enc = enc or Encoding("|", "^", "~", "\\", "&")
    table = {enc.escape: f"{enc.escape}E{enc.escape}", enc.field: f"{enc.escape}F{enc.escape}",
             enc.component: f"{enc.escape}S{enc.escape}",
             enc.subcomponent: f"{enc.escape}T{enc.escape}",
             enc.repetition: f"{enc.escape}R{enc.escape}", "\n": f"{enc.escape}.br{enc.escape}",
             "\r": ""}
    return "".join(table.get(c, c) for c in text)


class Segment:
    """One segment: ``name``, ``seq`` (its occurrence among segments of that name, from 1)."""

    def __init__(self, name: str, seq: int, fields: list[Leaves], enc: Encoding):
        self.name, self.seq, self.fields, self.enc = name, seq, fields, enc

    def reps(self, n: int) -> Leaves:
        """Field n (HL7 numbering; for MSH, n=3 is MSH-3) as raw leaves; [] when absent."""
        return self.fields[n] if 0 < n < len(self.fields) else []

    def text(self, n: int, comp: int = 1, sub: int = 1, rep: int = 1) -> str:
        """The unescaped, stripped text at field.rep.comp.sub; "" when absent or HL7 null ``""``."""
        reps = self.reps(n)
        try:
            value = reps[rep - 1][comp - 1][sub - 1]
        except IndexError:
            return ""
        value = value.strip()
        return "" if value == '""' else unescape(value, self.enc).strip()

    def comps(self, n: int, rep: int = 1) -> list[str]:
        """Each component's text (subcomponents joined with the subcomponent separator)."""
        reps = self.reps(n)
        if len(reps) < rep:
            return []
        return [self.enc.subcomponent.join(unescape(s, self.enc) for s in c).strip()
                for c in reps[rep - 1]]

    def rep_count(self, n: int) -> int:
        return len(self.reps(n))

    def raw(self, n: int) -> str:
        """The whole field as sent (escapes resolved per leaf), for types we do not read."""
        e = self.enc
        return e.repetition.join(
            e.component.join(e.subcomponent.join(unescape(s, e) for s in c) for c in r)
            for r in self.reps(n)).strip()

    def err(self, n: int, reason: str, code: str = "102") -> Er7Error:
        return Er7Error(AckError(self.name, self.seq, n, scrub(reason), code))

    def need(self, n: int, what: str, comp: int = 1) -> str:
        value = self.text(n, comp)
        if not value:
            raise self.err(n, f"{self.name}-{n} {what} is empty", "101")
        return value


class Message:
    """A message split into segments, fields, repetitions, components and subcomponents.

    Our own lean tokenizer, not ``hl7.parse``: a profile of ORU^R01 with ten OBX showed
    python-hl7's parse and the reshaping of its containers at about a quarter of the mapping
    time, and the mapper needs only the split. The text has already passed
    ``check_encoding_characters`` (MSH-1/MSH-2 are sane) and has ``\r`` segment ends; python-hl7
    still reads MLLP frames (``hub/mllp.py``). The same tests, peers' messages included, cover it.
    """

    def __init__(self, text: str):
        field_sep = text[3]
        end = text.find(field_sep, 4)
        chars = text[4:end] if end != -1 else text[4:].split("\r", 1)[0]
        self.enc = Encoding(field_sep, chars[0], chars[1], chars[2], chars[3])
        self.segments: list[Segment] = []
        counts: dict[str, int] = {}
        for line in text.split("\r"):
            if not line.strip():
                continue
            parts = line.split(field_sep)
            name = parts[0].strip()
            counts[name] = counts.get(name, 0) + 1
            if name == "MSH":  # MSH-1 is the separator itself, MSH-2 the encoding characters
                fields = [[[[name]]], [[[field_sep]]], [[[parts[1] if len(parts) > 1 else ""]]]]
                fields += [self._split(p) for p in parts[2:]]
            else:
                fields = [[[[name]]]] + [self._split(p) for p in parts[1:]]
            self.segments.append(Segment(name, counts[name], fields, self.enc))

    def _split(self, value: str) -> Leaves:
        enc = self.enc
        return [[comp.split(enc.subcomponent) for comp in rep.split(enc.component)]
                for rep in value.split(enc.repetition)]

    @property
    def msh(self) -> Segment:
        return self.segments[0]

    def first(self, name: str) -> Segment | None:
        return next((s for s in self.segments if s.name == name), None)

    def all(self, name: str) -> list[Segment]:
        return [s for s in self.segments if s.name == name]


STANDARD = Encoding("|", "^", "~", "\\", "&")


def raw_msh_fields(message: bytes | None) -> tuple[list[str], Encoding | None]:
    """The first MSH line's raw fields (index n = MSH-n) and its encoding, without python-hl7."""
    if not message:
        return [], None
    try:
        text = decode(message)
        check_encoding_characters(text)
    except Er7Error:
        return [], None
    line = text.split("\r", 1)[0]
    sep = line[3]
    parts = line.split(sep)
    chars = parts[1] + "\\&"  # pad a short MSH-2 to the defaults
    enc = Encoding(sep, chars[0], chars[1], chars[2], chars[3])
    return ["MSH", sep, *parts[1:]], enc

