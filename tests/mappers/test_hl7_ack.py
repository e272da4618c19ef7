"""The HL7 v2 ACK: MSH addressed back to the sender, MSA, one ERR per located error, escaped."""

from __future__ import annotations

from datetime import datetime

from mappers import shanghai_hl7v2 as sh
from mappers.er7 import STANDARD, AckError, unescape
from mappers.hl7_ack import build_ack
from tests.support.hl7 import ack_segments
from tests.support.hl7 import sh_fixture as fixture

HP = "H31010100001"  # 上海市黄浦区第一医院
NOW = datetime(2024, 3, 15, 9, 30, 5)


def test_aa_ack():
    message = fixture("adt_a04.hl7")
    ack = build_ack(message, "AA", [], "ACK0001", now=NOW)
    segs = ack_segments(ack)
    msh = segs["MSH"][0]
    assert msh[1] == "^~\\&"
    assert msh[2:6] == ["YRDHUB", "YRD", "HIS", HP]  # sending/receiving swapped
    assert msh[6] == "20240315093005"
    assert msh[8] == "ACK^A04^ACK" and msh[9] == "ACK0001" and msh[11] == "2.5"
    assert msh[17] == "UNICODE UTF-8"
    assert segs["MSA"] == [["MSA", "AA", "MSG0000123"]]
    assert "ERR" not in segs


def test_ae_ack_names_segment_field_and_reason():
    result = sh.map_message(fixture("bad_id.hl7"), HP)
    segs = ack_segments(build_ack(fixture("bad_id.hl7"), result.ack_code, result.errors, "A2"))
    assert segs["MSA"] == [["MSA", "AE", "MSG0000199"]]
    [err] = segs["ERR"]
    assert err[2] == "PID^1^3"
    assert err[3].startswith("102^Data type error^HL70357")
    assert err[4] == "E"
    assert "check character" in err[8] and "check character" in err[3]
    assert err[1].startswith("PID^1^3^102")


def test_ae_ack_for_unsupported_type():
    message = fixture("adt_a04.hl7").replace(b"ADT^A04^ADT_A01", b"ADT^A60^ADT_A60")
    result = sh.map_message(message, HP)
    segs = ack_segments(build_ack(message, result.ack_code, result.errors, "A3"))
    assert segs["MSH"][0][8] == "ACK^A60^ACK"
    assert segs["ERR"][0][2] == "MSH^1^9" and segs["ERR"][0][3].startswith("201^")
    assert "message type ADT^A60 not supported" in unescape(segs["ERR"][0][8], STANDARD)


def test_ar_ack_on_garbage_is_minimal():
    result = sh.map_message(b"this is not hl7", HP)
    segs = ack_segments(build_ack(b"this is not hl7", "AR", result.errors, "A4"))
    assert segs["MSA"] == [["MSA", "AR", ""]]
    assert segs["MSH"][0][8] == "ACK^^ACK"
    assert "does not begin with MSH" in segs["ERR"][0][8]
    assert build_ack(None, "AR", [], "A5").startswith(b"MSH|^~\\&|YRDHUB|")


def test_ack_escapes_reasons_and_keeps_chinese_utf8():
    errors = [AckError("OBX", 2, 5, "值|含^分隔符&和~重复\\", "102")]
    ack = build_ack(fixture("oru_r01_lab.hl7"), "AE", errors, "A6")
    err = ack_segments(ack)["ERR"][0]
    assert unescape(err[8], STANDARD) == "值|含^分隔符&和~重复\\"
    assert len(err) == 9


def test_ack_reencodes_other_encoding_characters():
    message = fixture("adt_a04.hl7").replace(b"MSH|^~\\&|", b"MSH|$~\\&|").replace(
        b"ADT^A04^ADT_A01", b"ADT$A04$ADT_A01")
    ack = ack_segments(build_ack(message, "AA", [], "A7"))
    assert ack["MSH"][0][8] == "ACK^A04^ACK"


def test_unknown_error_code_is_207_and_an_aa_error_is_information():
    errors = [AckError("PID", 1, 8, "note", "999"), ("", 0, 0, "whole message", "100")]
    [first, second] = ack_segments(build_ack(fixture("adt_a04.hl7"), "AA", errors, "A8"))["ERR"]
    assert first[3].startswith("207^Application internal error^HL70357") and first[4] == "I"
    assert second[1] == "" and second[2] == "" and second[3].startswith("100^")


def test_a_resident_id_in_a_reason_never_reaches_the_ack():
    errors = [AckError("PID", 1, 3, "bad number 310101199003071230", "102")]
    ack = build_ack(fixture("adt_a04.hl7"), "AE", errors, "A9")
    assert b"310101199003071230" not in ack and b"bad number" in ack


def test_processing_id_and_version_are_copied_else_defaulted():
    msh = ack_segments(build_ack(fixture("adt_a04.hl7").replace(b"|P|2.5|", b"|T|2.3.1|"), "AA",
                                 [], "A10"))["MSH"][0]
    assert (msh[10], msh[11]) == ("T", "2.3.1")
    msh = ack_segments(build_ack(None, "AR", [], "A11"))["MSH"][0]
    assert (msh[2], msh[10], msh[11]) == ("YRDHUB", "P", "2.5")
