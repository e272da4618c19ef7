"""The ER7 tokenizer: splitting bodies into messages, escapes, encoding characters, the character
set, and reading fields as repetitions -> components -> subcomponents."""

from __future__ import annotations

import pytest

from mappers import er7
from mappers.er7 import STANDARD, AckError, Er7Error
from tests.support.hl7 import sh_fixture as fixture

# ---------------------------------------------------------------------------------------------
# Escapes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, text", [
    ("a\\F\\b", "a|b"), ("a\\S\\b", "a^b"), ("a\\T\\b", "a&b"), ("a\\R\\b", "a~b"),
    ("a\\E\\b", "a\\b"), ("x\\.br\\y", "x\ny"), ("\\XE4B8AD\\", "中"), ("\\H\\粗\\N\\", "粗"),
    ("unterminated \\F", "unterminated \\F"), ("bad \\XZZ\\ hex", "bad \\XZZ\\ hex"),
])
def test_unescape(raw, text):
    assert er7.unescape(raw, STANDARD) == text


def test_escape_round_trips():
    text = "a|b^c&d~e\\f\ng"
    assert er7.unescape(er7.escape(text), STANDARD) == text


def test_escape_in_other_encoding_characters():
    enc = er7.Encoding("|", "$", "~", "\\", "&")
    assert er7.escape("a$b^c", enc) == "a\\S\\b^c"
    assert er7.unescape("a\\S\\b", enc) == "a$b"


# ---------------------------------------------------------------------------------------------
# Splitting a body into messages
# ---------------------------------------------------------------------------------------------


def test_split_batch_drops_envelopes():
    messages = er7.split_messages(fixture("batch.hl7"))
    assert len(messages) == 3
    assert all(m.startswith(b"MSH|") and m.endswith(b"\r") for m in messages)
    assert not any(seg[:3] in (b"FHS", b"BHS", b"BTS", b"FTS")
                   for m in messages for seg in m.split(b"\r"))


def test_split_messages_one_after_another_with_boms_and_mixed_line_ends():
    body = fixture("adt_a04.hl7") + fixture("crlf_bom.hl7") + fixture("adt_a01.hl7").replace(
        b"\r", b"\n")
    messages = er7.split_messages(body)
    assert [m.split(b"|")[9] for m in messages] == [b"MSG0000123", b"QP0000000789",
                                                    b"XH20240402000391"]
    assert all(b"\n" not in m and er7.BOM not in m for m in messages)


def test_split_keeps_leading_garbage_as_its_own_item():
    messages = er7.split_messages(b"hello\r" + fixture("adt_a04.hl7"))
    assert messages[0] == b"hello\r" and len(messages) == 2
    assert er7.split_messages(b"") == []


def test_segments_of_drops_bom_blank_lines_and_trailing_padding():
    body = er7.BOM + b"MSH|^~\\&|A\r\n\r\nPID|1 \t\x00\nPV1|1"
    assert er7.segments_of(body) == [b"MSH|^~\\&|A", b"PID|1", b"PV1|1"]


# ---------------------------------------------------------------------------------------------
# Decoding and encoding characters
# ---------------------------------------------------------------------------------------------


def test_gb18030_declared_in_msh18_is_decoded():
    text = fixture("adt_a04.hl7").decode("utf-8").replace("UNICODE UTF-8", "GB 18030-2000")
    assert er7.decode(text.encode("gb18030")) == text.rstrip("\r")


def test_undecodable_bytes_are_located_at_msh18():
    with pytest.raises(Er7Error) as caught:
        er7.decode(b"MSH|^~\\&|A|B|\xff\xfe||")
    assert caught.value.error[:3] == ("MSH", 1, 18) and caught.value.error.code == "102"


def test_an_empty_message_is_an_error_of_the_whole_message():
    with pytest.raises(Er7Error) as caught:
        er7.decode(b"\r\n  \r")
    assert caught.value.error == AckError("", 0, 0, "empty message", "100")
    assert caught.value.error.location() == "message"


@pytest.mark.parametrize("text, where", [
    ("PID|1", ("", 0, 0)), ("MSH|^~|x|y", ("MSH", 1, 2)), ("MSH|^~\\\\&|a|b", ("MSH", 1, 2)),
    ("MSH|^~\\a|b|c", ("MSH", 1, 2)),
])
def test_bad_encoding_characters_are_refused(text, where):
    with pytest.raises(Er7Error) as caught:
        er7.check_encoding_characters(text)
    assert caught.value.error[:3] == where


@pytest.mark.parametrize("text", ["MSH|^~\\&|A|B", "MSH|^~\\&#|A|B", "MSH#$~\\&#A#B"])
def test_four_or_five_distinct_encoding_characters_are_read(text):
    er7.check_encoding_characters(text)


# ---------------------------------------------------------------------------------------------
# Reading fields
# ---------------------------------------------------------------------------------------------

MESSAGE = ("MSH|^~\\&|HIS|H31010100001|YRD|YRDHUB|20240315||ADT^A04|M1|P|2.5\r"
           "PID|1||A1^^^H^MR~310101199003071230^^^^NNCHN||张^三^^^^^L||\"\"|x&y^z\\T\\w\r"
           "OBX|1|ST\rOBX|2|NM\r")


def test_msh_fields_are_numbered_as_hl7_numbers_them():
    msg = er7.Message(MESSAGE)
    assert msg.msh.text(1) == "|" and msg.msh.text(2) == "^~\\&"
    assert msg.msh.text(4) == "H31010100001" and msg.msh.text(9, 2) == "A04"


def test_repetitions_components_and_subcomponents():
    pid = er7.Message(MESSAGE).first("PID")
    assert pid.rep_count(3) == 2
    assert pid.text(3, 1, 1, 2) == "310101199003071230" and pid.text(3, 5, 1, 2) == "NNCHN"
    assert pid.comps(5) == ["张", "三", "", "", "", "", "L"]
    assert pid.text(8, 1, 1) == "x" and pid.text(8, 1, 2) == "y"
    assert pid.comps(8) == ["x&y", "z&w"]  # an escaped & stays one subcomponent's text
    assert pid.raw(8) == "x&y^z&w"


def test_hl7_null_and_absent_fields_read_as_empty():
    pid = er7.Message(MESSAGE).first("PID")
    assert pid.text(7) == "" and pid.text(40) == "" and pid.comps(40) == []
    assert pid.text(3, 9, 9, 9) == ""


def test_segments_count_their_occurrences():
    msg = er7.Message(MESSAGE)
    assert [(s.name, s.seq) for s in msg.all("OBX")] == [("OBX", 1), ("OBX", 2)]
    assert msg.first("PV1") is None


def test_a_segment_locates_its_errors_and_scrubs_their_reasons():
    obx = er7.Message(MESSAGE).all("OBX")[1]
    error = obx.err(5, "OBX-5 value 310101199003071230 is bad").error
    assert error[:3] == ("OBX", 2, 5) and error.code == "102"
    assert "310101199003071230" not in error.reason
    with pytest.raises(Er7Error) as caught:
        obx.need(5, "observation value")
    assert caught.value.error == AckError("OBX", 2, 5, "OBX-5 observation value is empty", "101")


def test_raw_msh_fields_of_garbage_are_empty():
    assert er7.raw_msh_fields(None) == ([], None)
    assert er7.raw_msh_fields(b"this is not hl7") == ([], None)
    fields, enc = er7.raw_msh_fields(MESSAGE.encode())
    assert fields[4] == "H31010100001" and fields[10] == "M1" and enc == STANDARD
