"""安徽 Anhui spreadsheet exports (one CSV, or a ZIP of CSVs) -> FHIR R4 records.

Format: ``world/formats/anhui-csv.md``; ZIP limits: ``world/hub-interface.md``. Pure: bytes in,
``MapResult`` out, no I/O.

Reading
- A body starting with a ZIP signature is an archive (read from memory with ``zipfile``, limits
  enforced while reading, see ``_read_archive``); anything else is one CSV file.
- Encoding: strict UTF-8 (with or without BOM) first, then GB18030 (a superset of GBK), and only
  when both fail ``charset-normalizer``'s best guess (the header row then decides whether the
  guess was right: a wrong one does not match any known header and the file is unreadable).
- What a file holds is told by its header row (``KIND_OF_HEADER``), not by its name; columns may
  come in any order, extra columns are ignored (and noted).
- Row numbers are the rows a person sees in a spreadsheet: 1-based, every CSV record counts
  (blank ones too, a quoted cell with a line break is still one row), so the header is row 1.

What a Record is (the unit stored or replaced as a whole)
- 患者 row -> one Record holding only the Patient (no other resources); key
  ``<hospital>|patient|<hash of the identifier>``; a changed row replaces the stored details.
- 就诊 rows -> one Record per visit (就诊流水号), all its diagnosis rows together, even across the
  files of one ZIP: an Encounter (with ``diagnosis``) and one Condition per diagnosis. A re-sent
  visit replaces the earlier one, so a diagnosis removed at the source disappears. Key
  ``<hospital>|visit|<流水号>``.
- 检验 rows -> one Record per result row, key ``<hospital>|lab|<报告单号>|<检验项目编码>``, holding
  the Observation (id from hospital + report + item, so the same result in two uploads is stored
  once) and the report's DiagnosticReport (id from hospital + report). Why per row and not per
  report: a re-export may carry only part of a report (a filtered export, a file split in two);
  with a per-report Record the later, partial upload would retire the results it does not
  repeat. Per row, no upload can retire another row's result. The DiagnosticReport is the same
  resource (same id) in every row Record of its report; its ``result`` lists the report's
  results found in *this* upload, sorted by item code. When a report arrives in parts the
  stored report lists the last part's results (the Observations of every part stay stored and
  searchable by patient, encounter and code); the hub may union ``result`` on upsert to close
  this gap.
- Lab rows point at the visit's Encounter by its deterministic id (hospital + 流水号) even when
  the visit file comes in another upload; the reference resolves once it does.

Row rules
- Rows that carry no data are skipped, neither stored nor rejected: blank, only commas, a
  repeated header, the totals row (first non-empty cell starts with ``合计``).
- A bad cell sets the row aside as ``Rejection(f"{file}:row {n}:column {name}", reason)``; the
  first bad cell from the left is named, one rejection per row.
- Within one upload the first row of a visit/report decides the visit/report-level values; a
  later row that disagrees with it is rejected (never merged or guessed). A row repeated exactly
  (two exports pasted together) is stored once; a repetition with different values is rejected.

Counting (the answer counts rows, not records)
- Every Record lists the digests of the rows it is made of (``Record.row_digests``, an exact
  repeat listed again), so the hub answers per row: a row the stored record already holds
  exactly so (same normalised values), or that repeats an earlier row of the upload, is
  ``unchanged``; any other row is ``stored``. Two diagnosis rows of a new visit are 2 stored; a
  re-export of that visit with a third row is 2 unchanged and 1 stored (the visit's record is
  still replaced as a whole). Rows without data count nowhere; every other row counts as stored,
  unchanged or rejected (exact repeats of a rejected row share its one rejection).
- Resident ID numbers destroyed by a spreadsheet (``3.40104E+17``; 18 digits ending in ``000``
  that fail the check character) are refused with that reason, never repaired. An ID ending in
  ``000`` that passes its check is accepted: it cannot be told from a real one.
- A 医疗机构代码 naming another hospital than the sender rejects that row (column 医疗机构代码).
- Reasons never contain a resident ID number.
- ``ForeignSender`` is never raised: a CSV names no sender of its own, only rows name hospitals.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
import zipfile
import zlib
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Callable, Iterator

from charset_normalizer import from_bytes

from mappers.address import fhir_address
from mappers.region import CST, check_character, normalize_resident_id, resident_id_birth_date, scrub, to_halfwidth
from mappers.common import (ICD10_SYSTEM, INSURANCE_CARD_SYSTEM, LAB_REPORT_SYSTEM, LOCAL_LAB_SYSTEM, LOINC_SYSTEM, OUTPATIENT_NO_SYSTEM, PATIENT_REF, RESIDENT_ID_SYSTEM, MapResult, Record, Rejection, clean, fhir_date, fhir_datetime, hospital_organization, hospital_reference, insurance_identifier, interpretation, lab_value, make_id, parse_when, reference_range, row_digest, validate)
from mappers.errors import ForeignSender, InvalidValue, UnreadableUpload

__all__ = ["map_upload", "ArchiveTooLarge", "ForeignSender", "UnreadableUpload"]


class ArchiveTooLarge(UnreadableUpload):
    """The upload is over the hub's size limits (the hub answers 413 with ``str(exc)``).

    Raised for a body over 20 MB, and for a ZIP that unpacks (or says it unpacks) to more than
    200 MB or 1,000 files, or one of whose entries, or the whole, compresses more than 100:1.
    """


# ---------------------------------------------------------------------------------------------
# Limits (hub-interface.md). MB read as MiB.
# ---------------------------------------------------------------------------------------------

MAX_BODY_BYTES = 20 * 1024 * 1024
MAX_UNPACKED_BYTES = 200 * 1024 * 1024
MAX_ARCHIVE_FILES = 1000
MAX_RATIO = 100
# Read in zipfile's minimum read size: each read then pulls at most 4 KB of compressed data, so
# the compressed bytes counted overshoot the ones the entry really used by 4 KB at most.
_CHUNK = 4096

ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
# Archive formats refused inside a ZIP: by name, and by the first bytes of the content.
NESTED_ARCHIVE_SUFFIXES = (".zip", ".rar", ".7z", ".gz", ".tgz", ".tar", ".bz2", ".xz",
                           ".zipx", ".cab", ".arj", ".lzh", ".z")
NESTED_ARCHIVE_MAGICS = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08", b"Rar!\x1a\x07",
                         b"7z\xbc\xaf\x27\x1c", b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"MSCF")
# Entries that operating systems add by themselves: skipped, not rejected.
OS_METADATA_NAMES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})
OS_METADATA_FOLDERS = ("__MACOSX/",)
ACCEPTED_COMPRESSION = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}

# ---------------------------------------------------------------------------------------------
# The three kinds of file: columns (as in the header) -> fields. Data, not code.
# ---------------------------------------------------------------------------------------------

PATIENT, VISIT, LAB = "患者", "就诊", "检验"

KIND_COLUMNS: dict[str, dict[str, str]] = {
    PATIENT: {"姓名": "name", "性别": "sex", "出生日期": "birth_date", "身份证号": "resident_id",
              "联系电话": "phone", "现住址": "address", "医保卡号": "insurance_card",
              "参保地": "insured_place"},
    VISIT: {"就诊流水号": "visit_no", "身份证号": "resident_id", "姓名": "name",
            "就诊日期": "visit_date", "就诊类型": "visit_type", "医疗机构代码": "hospital_code",
            "医疗机构名称": "hospital_name", "医院等级": "hospital_level", "科室": "department",
            "医生": "doctor", "诊断编码": "diagnosis_code", "诊断名称": "diagnosis_name",
            "主诊断": "principal"},
    LAB: {"报告单号": "report_no", "就诊流水号": "visit_no", "身份证号": "resident_id",
          "检验项目编码": "item_code", "检验项目名称": "item_name", "结果": "result",
          "单位": "unit", "参考范围": "range", "异常标识": "flag", "报告时间": "report_time"},
}
# The known header sets -> kind.
KIND_OF_HEADER: dict[frozenset[str], str] = {frozenset(c): k for k, c in KIND_COLUMNS.items()}

# Fields a row cannot do without (an empty cell rejects the row).
REQUIRED: dict[str, frozenset[str]] = {
    PATIENT: frozenset(),  # but one of resident_id / insurance_card, see _check_patient
    VISIT: frozenset({"visit_no", "resident_id", "visit_date", "visit_type", "diagnosis_code"}),
    LAB: frozenset({"report_no", "resident_id", "item_code", "result", "report_time"}),
}
# Fields that describe the visit / the report as a whole: every row of it must agree.
VISIT_LEVEL = ("resident_id", "name", "visit_date", "visit_type", "hospital_code",
               "hospital_name", "hospital_level", "department", "doctor")
REPORT_LEVEL = ("visit_no", "resident_id", "report_time")

TOTAL_ROW_MARKS = ("合计", "总计")

SEX_CODES: dict[str, str] = {  # words and GB/T 2261.1 digits -> FHIR gender
    "男": "male", "男性": "male", "女": "female", "女性": "female", "未知": "unknown",
    "0": "unknown", "1": "male", "2": "female", "5": "male", "6": "female", "9": "unknown",
}
ACT_CODE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
VISIT_TYPES: dict[str, tuple[str, str]] = {
    "门诊": ("AMB", "ambulatory"), "急诊": ("EMER", "emergency"), "住院": ("IMP", "inpatient encounter"),
}
YES_NO: dict[str, bool] = {"是": True, "否": False}
HOSPITAL_LEVELS: dict[str, str] = {"一级": "1", "二级": "2", "三级": "3", "1": "1", "2": "2", "3": "3"}
# Spreadsheet flag spellings -> the HL7 interpretation codes understood by common.interpretation.
FLAG_WORDS: dict[str, str] = {
    "↑": "H", "↓": "L", "↑↑": "HH", "↓↓": "LL", "高": "H", "偏高": "H", "低": "L", "偏低": "L",
    "正常": "N", "异常": "A", "阳性": "POS", "阴性": "NEG",
}

DIAGNOSIS_ROLE_SYSTEM = "http://terminology.hl7.org/CodeSystem/diagnosis-role"
CONDITION_CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/condition-category"
OBSERVATION_CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"
V2_0074_SYSTEM = "http://terminology.hl7.org/CodeSystem/v2-0074"
# Principal diagnosis: rank 1, role DD (the diagnosis at the end of the visit); others CM.
DIAGNOSIS_ROLES: dict[bool, dict[str, str]] = {
    True: {"code": "DD", "display": "Discharge diagnosis"},
    False: {"code": "CM", "display": "Comorbidity diagnosis"},
}

# ---------------------------------------------------------------------------------------------
# Cells
# ---------------------------------------------------------------------------------------------

_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SCIENTIFIC_RE = re.compile(r"^[+-]?\d+(\.\d+)?[eE][+-]?\d+$")
_SERIAL_RE = re.compile(r"^(\d{1,5})(\.\d+)?$")
_CN_DATE_RE = re.compile(r"^(\d{4})年(\d{1,2})月(\d{1,2})日?(?:\s*(\d{1,2}):(\d{2})(?::(\d{2}))?)?$")
_PHONE_RE = re.compile(r"^\+?\d[\d-]{5,19}$")
_AREA_RE = re.compile(r"^\d{6}$")
_ICD_RE = re.compile(r"^[A-Za-z]\d{2}[0-9A-Za-z.+*/-]*$")


def _text(raw: str | None) -> str | None:
    """Free text (names, places): stripped of spaces (full-width too), kept as written."""
    text = clean(raw)
    if text is not None and _CONTROL_RE.search(text):
        raise InvalidValue("contains control characters")
    return text


def _code(raw: str | None) -> str | None:
    """An identifier-like cell: full-width folded, spaces removed, Excel text tricks undone.

    ``="0123"`` and a leading apostrophe (ways to make a spreadsheet keep digits as text) are
    unwrapped. A number the spreadsheet wrote in scientific notation has lost its digits and
    raises InvalidValue.
    """
    text = _text(raw)
    if text is None:
        return None
    text = re.sub(r"\s+", "", to_halfwidth(text))
    if text.startswith('="') and text.endswith('"') and len(text) > 3:
        text = text[2:-1]
    text = text.lstrip("'") or None
    if text and _SCIENTIFIC_RE.match(text):
        raise InvalidValue("the spreadsheet turned it into a number in scientific notation "
                           "(like 3.40104E+17): its digits are lost; export the column as text")
    return text


def _resident_id(raw: str | None) -> str | None:
    """A resident ID number, checked (common.normalize_resident_id), spreadsheet damage named."""
    text = _code(raw)
    if text is None:
        return None
    # Spreadsheets keep 15 significant digits: the last three of an 18-digit number become 000.
    if len(text) == 18 and text.isdigit() and text.endswith("000") \
            and check_character(text[:17]) != "0":
        raise InvalidValue("resident ID number ends in 000 and fails its check character: the "
                           "spreadsheet lost its last digits (precision); export the column as text")
    return normalize_resident_id(text)


def spreadsheet_serial(serial: Decimal) -> datetime | date:
    """A spreadsheet day number (1900 system) as a date, or a datetime when it has a fraction.

    Day 1 is 1900-01-01. The 1900 leap-year bug: day 60 is 1900-02-29, which does not exist
    (raises InvalidValue), and every day after it is counted one too many (61 is 1900-03-01).
    Day 0 and below raise InvalidValue.
    """
    days = int(serial)
    if days < 1:
        raise InvalidValue(f"spreadsheet day number {serial} is before 1900-01-01")
    if days == 60:
        raise InvalidValue("spreadsheet day number 60 is 1900-02-29, a day that does not exist")
    day = date(1899, 12, 31 if days < 60 else 30) + timedelta(days=days)
    seconds = int(((serial - days) * 86400).to_integral_value())
    if serial == days:
        return day
    return datetime(day.year, day.month, day.day, tzinfo=CST) + timedelta(seconds=seconds)


def _when(raw: str | None) -> datetime | date | None:
    """A date or date-time in any form the format lists, +08:00; a ``date`` when no time."""
    text = _text(raw)
    if text is None:
        return None
    text = re.sub(r"\s+", " ", to_halfwidth(text))
    if _SERIAL_RE.match(text):
        return spreadsheet_serial(Decimal(text))
    m = _CN_DATE_RE.match(text)
    if m:
        y, mo, d, hh, mm, ss = (int(g) if g else None for g in m.groups())
        try:
            if hh is None:
                return date(y, mo, d)
            return datetime(y, mo, d, hh, mm, ss or 0, tzinfo=CST)
        except ValueError:
            raise InvalidValue(f"not a real date/time: {text!r}") from None
    return parse_when(text)


def _date(raw: str | None) -> date | None:
    when = _when(raw)
    return when.date() if isinstance(when, datetime) else when


def _lookup(table: dict[str, Any], what: str) -> Callable[[str | None], Any]:
    def parse(raw: str | None) -> Any:
        text = _code(raw)
        if text is None:
            return None
        if text not in table:
            raise InvalidValue(f"unknown {what} {text!r}; expected one of {', '.join(table)}")
        return table[text]
    return parse


def _matching(pattern: re.Pattern[str], what: str) -> Callable[[str | None], str | None]:
    def parse(raw: str | None) -> str | None:
        text = _code(raw)
        if text is not None and not pattern.match(text):
            raise InvalidValue(f"not a {what}: {text!r}")
        return text
    return parse


def _flag(raw: str | None) -> str | None:
    text = _code(raw)
    if text is None:
        return None
    code = FLAG_WORDS.get(text, text)
    interpretation(code)  # raises InvalidValue for an unknown flag
    return code.upper()


FIELD_PARSERS: dict[str, Callable[[str | None], Any]] = {
    "name": _text, "sex": _lookup(SEX_CODES, "sex"), "birth_date": _date,
    "resident_id": _resident_id, "phone": _matching(_PHONE_RE, "phone number"),
    "address": _text, "insurance_card": _code,
    "insured_place": _matching(_AREA_RE, "six-digit area code"),
    "visit_no": _code, "visit_date": _when, "visit_type": _lookup(VISIT_TYPES, "visit type"),
    "hospital_code": _code, "hospital_name": _text,
    "hospital_level": _lookup(HOSPITAL_LEVELS, "hospital level"), "department": _text,
    "doctor": _text, "diagnosis_code": _matching(_ICD_RE, "ICD-10 code"),
    "diagnosis_name": _text, "principal": _lookup(YES_NO, "主诊断 value"),
    "report_no": _code, "item_code": _code, "item_name": _text, "result": _text, "unit": _text,
    "range": _text, "flag": _flag, "report_time": _when,
}

# ---------------------------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------------------------


class _CellError(InvalidValue):
    """A bad cell: the column it is in, and why."""

    def __init__(self, column: str, reason: str):
        super().__init__(reason)
        self.column = column


@dataclass
class _Row:
    file: str
    n: int
    kind: str
    values: dict[str, Any]
    columns: dict[str, str] = field(repr=False)  # field -> column name, for locations
    # How many times the upload holds this row exactly so (two exports pasted together).
    copies: int = 1

    def digests(self) -> list[str]:
        """The row's digest once per copy: the hub counts each copy as a row."""
        return [row_digest({"kind": self.kind, **self.values})] * self.copies

    def where(self, fld: str | None = None) -> str:
        if fld is None:
            return f"{self.file}:row {self.n}"
        return f"{self.file}:row {self.n}:column {self.columns[fld]}"


def _header_cell(cell: str) -> str:
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", cell.replace("\ufeff", "")))


def _trimmed(cells: list[str]) -> list[str]:
    """Cells without the trailing empty ones (trailing commas)."""
    end = len(cells)
    while end and not cells[end - 1].strip():
        end -= 1
    return cells[:end]


def _kind_of(header: list[str]) -> str:
    """The kind whose columns the header holds; raises UnreadableUpload naming what is missing."""
    present = set(header)
    if len(present) != len(header):
        twice = sorted({c for c in header if header.count(c) > 1})
        raise UnreadableUpload(f"header names a column twice: {', '.join(twice)}")
    kinds = [kind for cols, kind in KIND_OF_HEADER.items() if cols <= present]
    if len(kinds) == 1:
        return kinds[0]
    if kinds:
        raise UnreadableUpload("header holds the columns of several kinds of file")
    closest = max(KIND_COLUMNS, key=lambda k: len(present & set(KIND_COLUMNS[k])))
    missing = [c for c in KIND_COLUMNS[closest] if c not in present]
    shown = "、".join(header[:8])[:80]
    raise UnreadableUpload(f"header row not recognised ({shown!r}); closest is a {closest} file, "
                           f"which lacks {'、'.join(missing)}")


def _is_total_row(cells: list[str]) -> bool:
    first = next((c for c in (_header_cell(x) for x in cells) if c), "")
    return first.startswith(TOTAL_ROW_MARKS)


def _parse_row(kind: str, header: list[str], cells: list[str], sender: str) -> dict[str, Any]:
    """Field values of one data row; raises _CellError for the first bad cell from the left."""
    columns = KIND_COLUMNS[kind]
    values: dict[str, Any] = {}
    for index, column in enumerate(header):
        fld = columns.get(column)
        if fld is None:
            continue
        raw = cells[index] if index < len(cells) else None
        try:
            values[fld] = FIELD_PARSERS[fld](raw)
        except InvalidValue as exc:
            raise _CellError(column, str(exc)) from None
        if values[fld] is None and fld in REQUIRED[kind]:
            raise _CellError(column, "empty")
    CHECKS[kind](values, sender)
    return values


def _check_patient(values: dict[str, Any], sender: str) -> None:
    if values["resident_id"] is None and values["insurance_card"] is None:
        raise _CellError("身份证号", "empty, and no 医保卡号 either: the patient cannot be identified")
    rid, born = values["resident_id"], values["birth_date"]
    if rid and born and born != resident_id_birth_date(rid):
        raise _CellError("出生日期", "disagrees with the birth date in the resident ID number")


def _check_visit(values: dict[str, Any], sender: str) -> None:
    code = values["hospital_code"]
    if code is not None and code.upper() != sender:
        raise _CellError("医疗机构代码", f"names hospital {code}, but the upload comes from {sender}")


CHECKS: dict[str, Callable[[dict[str, Any], str], None]] = {
    PATIENT: _check_patient, VISIT: _check_visit, LAB: lambda values, sender: None,
}


@dataclass
class _FileRows:
    rows: list[_Row] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _read_table(text: str, file: str, sender: str) -> _FileRows:
    """Parse one decoded CSV into good rows and rejections; UnreadableUpload if not a known kind."""
    out = _FileRows()
    header: list[str] | None = None
    kind = ""
    skipped = 0
    try:
        for n, cells in enumerate(csv.reader(io.StringIO(text, newline="")), start=1):
            trimmed = _trimmed(cells)
            if not trimmed:
                skipped += header is not None
                continue
            if header is None:
                header = [_header_cell(c) for c in trimmed]
                kind = _kind_of(header)
                extra = [c for c in header if c not in KIND_COLUMNS[kind]]
                if extra:
                    out.notes.append(f"{file}: columns ignored: {'、'.join(extra)}")
                continue
            normalized = [_header_cell(c) for c in trimmed]
            if normalized == header or _is_total_row(trimmed):
                skipped += 1
                continue
            other = KIND_OF_HEADER.get(frozenset(normalized))
            if other is not None:
                out.rejected.append(Rejection(f"{file}:row {n}", f"a header row of a {other} "
                                              f"file inside a {kind} file"))
                continue
            if len(trimmed) > len(header):
                out.rejected.append(Rejection(
                    f"{file}:row {n}", f"row has {len(trimmed)} values but the header names "
                                       f"{len(header)} columns"))
                continue
            _take_row(out, file, n, kind, header, trimmed, sender)
    except csv.Error as exc:
        raise UnreadableUpload(f"not readable as CSV: {exc}") from None
    if header is None:
        raise UnreadableUpload("no header row: the file is empty")
    if skipped:
        out.notes.append(f"{file}: {skipped} rows without data skipped (blank, repeated header, 合计)")
    return out


def _take_row(out: _FileRows, file: str, n: int, kind: str, header: list[str],
              cells: list[str], sender: str) -> None:
    columns = {fld: col for col, fld in KIND_COLUMNS[kind].items()}
    try:
        values = _parse_row(kind, header, cells, sender)
    except _CellError as exc:
        out.rejected.append(Rejection(f"{file}:row {n}:column {exc.column}", str(exc)))
        return
    out.rows.append(_Row(file, n, kind, values, columns))


# ---------------------------------------------------------------------------------------------
# Bytes -> text, archives
# ---------------------------------------------------------------------------------------------


def decode_text(data: bytes | bytearray) -> str:
    """UTF-8 (BOM or not), else GB18030 (reads GBK), else charset-normalizer's best guess.

    Raises UnreadableUpload when nothing reads the bytes as text.
    """
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return data.decode(encoding).lstrip("\ufeff")
        except UnicodeDecodeError:
            continue
    best = from_bytes(data).best()
    if best is None:
        raise UnreadableUpload("not text in UTF-8, GBK/GB18030 or another known encoding")
    return str(best).lstrip("\ufeff")


def _entry_name(info: zipfile.ZipInfo) -> str:
    """The entry's path; names from Chinese Windows are GBK without the UTF-8 flag."""
    if info.flag_bits & 0x800:
        return info.filename
    try:
        return info.filename.encode("cp437").decode("gb18030")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return info.filename


def _check_entry_name(name: str) -> None:
    """Refuse paths that climb out (``..``) or are absolute (``/x``, ``\\x``, ``C:``)."""
    if not name:
        raise UnreadableUpload("an archive entry has no name")
    parts = re.split(r"[\\/]", name)
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise UnreadableUpload(f"archive entry {name!r} has an absolute path")
    if ".." in parts:
        raise UnreadableUpload(f"archive entry {name!r} climbs out of the archive with '..'")
    if name.lower().endswith(NESTED_ARCHIVE_SUFFIXES):
        raise UnreadableUpload(f"archive entry {name!r} is itself an archive; nested archives "
                               "are refused")


class _CountingReader(io.BytesIO):
    """The archive bytes, counting what zipfile actually reads (compressed bytes consumed)."""

    consumed = 0

    def read(self, n: int | None = -1) -> bytes:
        data = super().read(n)
        self.consumed += len(data)
        return data


def _check_declared(infos: list[zipfile.ZipInfo]) -> None:
    """Refuse early on what the central directory claims (a claim over a limit is refused).

    Claims under the limits are not trusted: ``_stream_entry`` counts the real bytes.
    """
    if len(infos) > MAX_ARCHIVE_FILES:
        raise ArchiveTooLarge(f"archive holds {len(infos)} files; at most {MAX_ARCHIVE_FILES}")
    if sum(i.file_size for i in infos) > MAX_UNPACKED_BYTES:
        raise ArchiveTooLarge("archive says it unpacks to more than 200 MB")
    for info in infos:
        if info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise ArchiveTooLarge(f"archive entry {_entry_name(info)!r} compresses more than "
                                  f"{MAX_RATIO}:1")


def _stream_entry(zf: zipfile.ZipFile, fp: _CountingReader, info: zipfile.ZipInfo,
                  budget: int, keep: bool) -> tuple[bytearray, int, int]:
    """Decompress one entry in chunks, counting real bytes; (data if keep, out, compressed in).

    Stops with ArchiveTooLarge as soon as the output passes ``budget`` (what is left of the
    200 MB) or 100 times the entry's compressed size (zipfile never reads past that size, so
    the real ratio is then over 100:1 too); after the last chunk the ratio is checked against
    the compressed bytes actually read.
    """
    name = _entry_name(info)
    kept = bytearray()
    out = 0
    with zf.open(info) as stream:
        start = fp.consumed
        while chunk := stream.read(_CHUNK):
            if out == 0 and chunk.startswith(NESTED_ARCHIVE_MAGICS):
                raise UnreadableUpload(f"archive entry {name!r} is itself an archive; nested "
                                       "archives are refused")
            out += len(chunk)
            if out > budget:
                raise ArchiveTooLarge("archive unpacks to more than 200 MB")
            if out > MAX_RATIO * max(info.compress_size, 1):
                raise ArchiveTooLarge(f"archive entry {name!r} compresses more than {MAX_RATIO}:1")
            if keep:
                kept += chunk
        compressed = fp.consumed - start
    if out > MAX_RATIO * max(compressed, 1):
        raise ArchiveTooLarge(f"archive entry {name!r} compresses more than {MAX_RATIO}:1")
    return kept, out, compressed


# What zipfile and zlib raise for damaged archives (CRC, truncation, bad headers, bad streams).
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError,
               RuntimeError, NotImplementedError, ValueError)


def _archive_files(body: bytes) -> Iterator[tuple[str, bytearray]]:
    """The files of a ZIP, as (path, bytes), after checking the whole archive against the limits.

    Pass 1 streams every entry and throws the bytes away, so an archive over a limit is refused
    before anything is mapped and a bomb never sits in memory; pass 2 reads them again, one at a
    time, for mapping (zipfile's CRC check guarantees the same bytes). Folders and operating
    system metadata (``__MACOSX/``, ``.DS_Store``) are skipped. Raises ArchiveTooLarge for the
    limits, UnreadableUpload for a broken or refused archive (nested, ``..``, absolute, encrypted,
    other compression than stored/deflate).
    """
    fp = _CountingReader(body)
    try:
        zf = zipfile.ZipFile(fp)
        for info in zf.infolist():
            _check_entry_name(_entry_name(info))
        infos = [i for i in zf.infolist() if not i.is_dir() and not _is_os_metadata(i)]
        for info in infos:
            if info.flag_bits & 0x1:
                raise UnreadableUpload(f"archive entry {_entry_name(info)!r} is encrypted")
            if info.compress_type not in ACCEPTED_COMPRESSION:
                raise UnreadableUpload(f"archive entry {_entry_name(info)!r} uses a compression "
                                       "other than deflate")
        if not infos:
            raise UnreadableUpload("the archive holds no files")
        _check_declared(infos)
        total_out = total_in = 0
        for info in infos:
            _, out, compressed = _stream_entry(zf, fp, info, MAX_UNPACKED_BYTES - total_out, False)
            total_out, total_in = total_out + out, total_in + compressed
        if total_out > MAX_RATIO * max(total_in, 1):
            raise ArchiveTooLarge(f"archive compresses more than {MAX_RATIO}:1")
        for info in infos:
            data, _, _ = _stream_entry(zf, fp, info, MAX_UNPACKED_BYTES, True)
            yield _entry_name(info), data
    except UnreadableUpload:
        raise
    except _ZIP_ERRORS as exc:
        raise UnreadableUpload(f"not a readable ZIP archive: {exc}") from None


def _is_os_metadata(info: zipfile.ZipInfo) -> bool:
    name = _entry_name(info)
    return name.startswith(OS_METADATA_FOLDERS) or name.rsplit("/", 1)[-1] in OS_METADATA_NAMES


# ---------------------------------------------------------------------------------------------
# Resources
# ---------------------------------------------------------------------------------------------


def _patient(values: dict[str, Any]) -> dict[str, Any]:
    """The Patient (no id) from whatever a row says about the person."""
    patient: dict[str, Any] = {"resourceType": "Patient", "identifier": []}
    if values.get("resident_id"):
        patient["identifier"].append({"system": RESIDENT_ID_SYSTEM, "value": values["resident_id"]})
    if values.get("insurance_card"):
        patient["identifier"].append(
            insurance_identifier(values["insurance_card"], values.get("insured_place")))
    if values.get("name"):
        patient["name"] = [{"text": values["name"]}]
    if values.get("sex"):
        patient["gender"] = values["sex"]
    if values.get("birth_date"):
        patient["birthDate"] = fhir_date(values["birth_date"])
    if values.get("phone"):
        patient["telecom"] = [{"system": "phone", "value": values["phone"]}]
    if values.get("address"):
        patient["address"] = [fhir_address(values["address"])]
    return patient


def encounter_id(hospital: str, visit_no: str) -> str:
    return make_id("Encounter", hospital, visit_no)


def _encounter(head: dict[str, Any], hospital: str, diagnoses: list[tuple[str, bool]]) -> dict:
    code, display = VISIT_TYPES_BY_CODE[head["visit_type"][0]]
    enc: dict[str, Any] = {
        "resourceType": "Encounter", "id": encounter_id(hospital, head["visit_no"]),
        "identifier": [{"system": OUTPATIENT_NO_SYSTEM, "value": head["visit_no"],
                        "assigner": hospital_reference(hospital)}],
        "status": "finished",
        "class": {"system": ACT_CODE_SYSTEM, "code": code, "display": display},
        "subject": {"reference": PATIENT_REF},
        "period": {"start": fhir_datetime(head["visit_date"])},
        "serviceProvider": hospital_reference(hospital, head.get("hospital_name")),
    }
    if head.get("department"):
        enc["serviceType"] = {"text": head["department"]}
    if head.get("doctor"):
        enc["participant"] = [{"individual": {"display": head["doctor"]}}]
    if diagnoses:
        enc["diagnosis"] = [_encounter_diagnosis(cid, principal) for cid, principal in diagnoses]
    return enc


VISIT_TYPES_BY_CODE = {code: (code, display) for code, display in VISIT_TYPES.values()}


def _encounter_diagnosis(condition_id: str, principal: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "condition": {"reference": f"Condition/{condition_id}"},
        "use": {"coding": [{"system": DIAGNOSIS_ROLE_SYSTEM, **DIAGNOSIS_ROLES[principal]}]},
    }
    if principal:
        entry["rank"] = 1
    return entry


def _condition(values: dict[str, Any], hospital: str) -> dict[str, Any]:
    code: dict[str, Any] = {"coding": [{"system": ICD10_SYSTEM, "code": values["diagnosis_code"]}]}
    if values.get("diagnosis_name"):
        code["coding"][0]["display"] = values["diagnosis_name"]
        code["text"] = values["diagnosis_name"]
    return {
        "resourceType": "Condition",
        "id": make_id("Condition", hospital, values["visit_no"], values["diagnosis_code"]),
        "category": [{"coding": [{"system": CONDITION_CATEGORY_SYSTEM,
                                  "code": "encounter-diagnosis", "display": "Encounter Diagnosis"}]}],
        "code": code,
        "subject": {"reference": PATIENT_REF},
        "encounter": {"reference": f"Encounter/{encounter_id(hospital, values['visit_no'])}"},
        "recordedDate": fhir_datetime(values["visit_date"]),
    }


def observation_id(hospital: str, report_no: str, item_code: str) -> str:
    return make_id("Observation", hospital, "lab", report_no, item_code)


def _observation(values: dict[str, Any], hospital: str) -> dict[str, Any]:
    name = values.get("item_name")
    coding = {"system": LOCAL_LAB_SYSTEM, "code": values["item_code"]}
    if name:
        coding["display"] = name
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": observation_id(hospital, values["report_no"], values["item_code"]),
        "status": "final",
        "category": [{"coding": [{"system": OBSERVATION_CATEGORY_SYSTEM, "code": "laboratory",
                                  "display": "Laboratory"}]}],
        "code": {"coding": [coding], **({"text": name} if name else {})},
        "subject": {"reference": PATIENT_REF},
        "effectiveDateTime": fhir_datetime(values["report_time"]),
        "performer": [hospital_reference(hospital)],
        **lab_value(values["result"], values.get("unit")),
    }
    if isinstance(values["report_time"], datetime):
        obs["issued"] = values["report_time"].isoformat()
    if values.get("visit_no"):
        obs["encounter"] = {"reference": f"Encounter/{encounter_id(hospital, values['visit_no'])}"}
    ranges = reference_range(values.get("range"), values.get("unit"))
    if ranges:
        obs["referenceRange"] = ranges
    if values.get("flag"):
        obs["interpretation"] = interpretation(values["flag"])
    return obs


def _diagnostic_report(head: dict[str, Any], hospital: str, item_codes: list[str]) -> dict:
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": make_id("DiagnosticReport", hospital, "lab", head["report_no"]),
        "identifier": [{"system": LAB_REPORT_SYSTEM, "value": head["report_no"],
                        "assigner": hospital_reference(hospital)}],
        "status": "final",
        "category": [{"coding": [{"system": V2_0074_SYSTEM, "code": "LAB",
                                  "display": "Laboratory"}]}],
        "code": {"coding": [{"system": LOINC_SYSTEM, "code": "11502-2",
                             "display": "Laboratory report"}], "text": "检验报告"},
        "subject": {"reference": PATIENT_REF},
        "effectiveDateTime": fhir_datetime(head["report_time"]),
        "performer": [hospital_reference(hospital)],
        "result": [{"reference": f"Observation/{observation_id(hospital, head['report_no'], c)}"}
                   for c in sorted(item_codes)],
    }
    if isinstance(head["report_time"], datetime):
        report["issued"] = head["report_time"].isoformat()
    if head.get("visit_no"):
        report["encounter"] = {"reference": f"Encounter/{encounter_id(hospital, head['visit_no'])}"}
    return report


# ---------------------------------------------------------------------------------------------
# Rows -> records
# ---------------------------------------------------------------------------------------------


def _group(rows: list[_Row], key: Callable[[_Row], str]) -> dict[str, list[_Row]]:
    groups: dict[str, list[_Row]] = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    return groups


def _disagreement(row: _Row, head: _Row, fields: tuple[str, ...]) -> str | None:
    return next((f for f in fields if row.values.get(f) != head.values.get(f)), None)


def _units(group: list[_Row], level: tuple[str, ...], unit_key: Callable[[_Row], str],
           what: str, result: MapResult) -> list[_Row]:
    """The rows of one visit/report that make it up: a row disagreeing with the first row on
    ``level`` fields, or repeating a unit with other values, is rejected; an exact repeat is
    folded into the row it repeats (``copies``), so it is counted but never stored twice."""
    head, kept, seen = group[0], [], {}
    for row in group:
        fld = _disagreement(row, head, level)
        if fld is not None:
            result.rejected.append(Rejection(row.where(fld), f"disagrees with {head.where()} "
                                                             f"of the same {what}"))
            continue
        earlier = seen.get(unit_key(row))
        if earlier is None:
            seen[unit_key(row)] = row
            kept.append(row)
        elif earlier.values == row.values:
            earlier.copies += 1
        else:
            result.rejected.append(Rejection(row.where(), f"repeats {earlier.where()} with "
                                                          "other values"))
    return kept


def _validated(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for resource in resources:
        validate(resource)
    return resources


def _patient_records(rows: list[_Row], hospital: str, result: MapResult) -> None:
    def identity(row: _Row) -> str:
        v = row.values
        if v["resident_id"]:
            return make_id(RESIDENT_ID_SYSTEM, v["resident_id"])
        return make_id(INSURANCE_CARD_SYSTEM, v["insurance_card"])

    for key, group in _group(rows, identity).items():
        row = _units(group, (), lambda r: "", "person", result)[0]
        patient = _patient(row.values)
        try:
            validate(patient)
        except InvalidValue as exc:
            result.rejected.append(Rejection(row.where(), str(exc)))
            continue
        result.records.append(Record(f"{hospital}|patient|{key}", hospital, patient, [],
                                     row.where(), row.digests()))


def _visit_records(rows: list[_Row], hospital: str, result: MapResult) -> None:
    for visit_no, group in _group(rows, lambda r: r.values["visit_no"]).items():
        kept = _units(group, VISIT_LEVEL, lambda r: r.values["diagnosis_code"], "visit", result)
        principal = next((r for r in kept if r.values["principal"]), None)
        for row in [r for r in kept if r.values["principal"] and r is not principal]:
            result.rejected.append(Rejection(row.where("principal"), "a second principal "
                                             f"diagnosis; {principal.where()} is the first"))
            kept.remove(row)
        head = kept[0].values
        conditions = [_condition(r.values, hospital) for r in kept]
        diagnoses = [(c["id"], bool(r.values["principal"])) for c, r in zip(conditions, kept)]
        resources = [hospital_organization(hospital, head.get("hospital_name")),
                     _encounter(head, hospital, diagnoses), *conditions]
        try:
            _validated(resources)
        except InvalidValue as exc:
            result.rejected.extend(Rejection(r.where(), str(exc)) for r in kept)
            continue
        result.records.append(Record(f"{hospital}|visit|{visit_no}", hospital,
                                     _patient(head), resources, kept[0].where(),
                                     [d for r in kept for d in r.digests()]))


def _lab_records(rows: list[_Row], hospital: str, result: MapResult) -> None:
    organization = hospital_organization(hospital)
    for report_no, group in _group(rows, lambda r: r.values["report_no"]).items():
        kept = _units(group, REPORT_LEVEL, lambda r: r.values["item_code"], "report", result)
        observations: list[tuple[_Row, dict[str, Any]]] = []
        for row in kept:
            try:
                observations.append((row, validate(_observation(row.values, hospital))))
            except InvalidValue as exc:
                result.rejected.append(Rejection(row.where(), str(exc)))
        if not observations:
            continue
        report = _diagnostic_report(kept[0].values, hospital,
                                    [row.values["item_code"] for row, _ in observations])
        try:
            _validated([report, organization])
        except InvalidValue as exc:
            result.rejected.extend(Rejection(row.where(), str(exc)) for row, _ in observations)
            continue
        for row, observation in observations:
            result.records.append(Record(
                f"{hospital}|lab|{report_no}|{row.values['item_code']}", hospital,
                _patient(row.values), [observation, report, organization], row.where(),
                row.digests()))


RECORD_BUILDERS: dict[str, Callable[[list[_Row], str, MapResult], None]] = {
    PATIENT: _patient_records, VISIT: _visit_records, LAB: _lab_records,
}

# ---------------------------------------------------------------------------------------------
# The mapper
# ---------------------------------------------------------------------------------------------


def is_zip(body: bytes) -> bool:
    return body.startswith(ZIP_MAGICS)


def map_upload(body: bytes, sender: str, filename: str = "upload.csv") -> MapResult:
    """Map one Anhui upload (a CSV file, or a ZIP of CSV files) from hospital ``sender``.

    Locations are ``<file>:row <n>:column <name>`` where ``<file>`` is ``filename`` for a CSV and
    ``<filename>/<path in the ZIP>`` for an archive entry, and ``n`` is the spreadsheet row
    (header = row 1). Raises ArchiveTooLarge (413) for a body over 20 MB or an archive over its
    limits; UnreadableUpload (400) for a CSV that is not text with a known header, a broken or
    refused archive, or an archive none of whose files could be read. In an archive a file that
    is not a known CSV is one rejection (location the file) and the other files still map.
    """
    if len(body) > MAX_BODY_BYTES:
        raise ArchiveTooLarge("the upload is larger than 20 MB")
    result = MapResult()
    by_kind: dict[str, list[_Row]] = {PATIENT: [], VISIT: [], LAB: []}
    try:
        if is_zip(body):
            _map_archive(body, filename, sender, result, by_kind)
        else:
            _collect(_read_table(decode_text(body), filename, sender), result, by_kind)
    except UnreadableUpload as exc:
        raise type(exc)(scrub(str(exc))) from None
    for kind, rows in by_kind.items():
        RECORD_BUILDERS[kind](rows, sender, result)
    # Reasons and locations may quote cells (a header row that was really data, a file name):
    # whatever looks like a resident ID number is masked on the way out.
    result.rejected = [Rejection(scrub(r.location), scrub(r.reason)) for r in result.rejected]
    result.notes = [scrub(n) for n in result.notes]
    return result


def _map_archive(body: bytes, zipname: str, sender: str, result: MapResult,
                 by_kind: dict[str, list[_Row]]) -> None:
    readable = 0
    for name, data in _archive_files(body):
        file = f"{zipname}/{name}"
        try:
            table = _read_table(decode_text(data), file, sender)
        except UnreadableUpload as exc:
            result.rejected.append(Rejection(file, str(exc)))
            continue
        readable += 1
        _collect(table, result, by_kind)
    if not readable:
        raise UnreadableUpload("no file in the archive is a readable Anhui CSV: " +
                               "; ".join(f"{r.location}: {r.reason}" for r in result.rejected)[:500])


def _collect(table: _FileRows, result: MapResult, by_kind: dict[str, list[_Row]]) -> None:
    result.rejected.extend(table.rejected)
    result.notes.extend(table.notes)
    for row in table.rows:
        by_kind[row.kind].append(row)
