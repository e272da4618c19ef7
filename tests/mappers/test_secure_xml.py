"""The secure XML reader: encodings, the prolog scan, the parse that resolves nothing, and the
refusals after it. The attack documents are the Jiangsu fixtures (fixtures/js)."""

from __future__ import annotations

import pytest
from lxml import etree

from mappers import secure_xml
from mappers.errors import UnreadableUpload
from tests.support.common import FIXTURES

ATTACKS = ("xxe.xml", "billion_laughs.xml", "external_dtd.xml")
HL7 = {"h": "urn:hl7-org:v3"}


def raw(name: str) -> bytes:
    return (FIXTURES / "js" / name).read_bytes()


def variant(name: str, old: str, new: str) -> bytes:
    text = raw(name).decode("utf-8")
    assert old in text, old
    return text.replace(old, new, 1).encode("utf-8")


# ---------------------------------------------------------------------------------------------
# Encodings
# ---------------------------------------------------------------------------------------------


def test_a_declared_gbk_document_is_read_as_gb18030_and_its_declaration_dropped():
    text = secure_xml.decode_body(raw("gbk.xml"))
    assert not text.startswith("<?xml") and "王喆" in text
    gb2312 = raw("gbk.xml").replace(b'encoding="GBK"', b"encoding='gb2312'")
    assert secure_xml.decode_body(gb2312) == text


def test_a_bom_wins_over_the_declaration():
    body = raw("gbk.xml").decode("gb18030").split("?>", 1)[1].encode("utf-8")
    assert "王喆" in secure_xml.decode_body(b"\xef\xbb\xbf" + b'<?xml version="1.0" encoding="GBK"?>' + body)


@pytest.mark.parametrize("body,reason", [
    (raw("gbk.xml").replace(b'encoding="GBK"', b'encoding="UTF-8"'), "not valid UTF-8 .* at byte"),
    (b'<?xml version="1.0" encoding="ISO-8859-1"?><a/>', "'ISO-8859-1' is not accepted"),
    ("\ufeff<a/>".encode("utf-16-le"), "UTF-16"),
    (b"  \n", "empty body: expected an XML document"),
])
def test_unreadable_encodings(body, reason):
    with pytest.raises(UnreadableUpload, match=reason):
        secure_xml.decode_body(body)


def test_the_empty_body_refusal_names_what_was_expected():
    with pytest.raises(UnreadableUpload, match="expected a CDA document"):
        secure_xml.parse(b"", "a CDA document")


# ---------------------------------------------------------------------------------------------
# The prolog scan
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prolog", ["", "  \n", "<!-- c -->\n", '<?xml-stylesheet href="x.xsl"?>\n'])
def test_comments_and_processing_instructions_may_precede_the_root(prolog):
    secure_xml.check_prolog(prolog + "<a/>")


@pytest.mark.parametrize("text,reason", [
    ("<!-- never closed <a/>", "unterminated comment"),
    ("<?pi never closed <a/>", "unterminated processing instruction"),
    ("text<a/>", "text before the root element"),
    ("   ", "no root element"),
    ('<!DOCTYPE a SYSTEM "http://e.invalid/a.dtd"><a/>', "an external DTD"),
])
def test_the_prolog_scan_refuses(text, reason):
    with pytest.raises(UnreadableUpload, match=reason):
        secure_xml.check_prolog(text)


# ---------------------------------------------------------------------------------------------
# Attacks: refused before anything is resolved
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,what", [
    ("xxe.xml", "external entity declarations"),
    ("billion_laughs.xml", "entity declarations"),
    ("external_dtd.xml", "an external DTD"),
])
def test_attacks_are_refused_before_the_parser_sees_them(name, what, monkeypatch):
    def no_parse(*args, **kwargs):
        raise AssertionError("the parser must not be reached")

    monkeypatch.setattr(etree, "fromstring", no_parse)
    with pytest.raises(UnreadableUpload) as exc:
        secure_xml.parse(raw(name))
    assert f"declares a DTD (<!DOCTYPE> with {what})" in str(exc.value)
    assert "never resolved" in str(exc.value)
    assert "root:" not in str(exc.value) and "lollol" not in str(exc.value)


@pytest.mark.parametrize("name", ATTACKS)
def test_attacks_are_still_refused_if_the_prolog_scan_were_bypassed(name, monkeypatch):
    # Defence in depth: the parser itself resolves nothing and the DTD is seen after parsing.
    monkeypatch.setattr(secure_xml, "check_prolog", lambda text: None)
    with pytest.raises(UnreadableUpload) as exc:
        secure_xml.parse(raw(name))
    assert "DTD" in str(exc.value) or "entity" in str(exc.value)
    assert "root:" not in str(exc.value) and "lollol" not in str(exc.value)


def test_the_parser_itself_resolves_no_external_entity():
    # Below the prolog scan: the external entity stays an unresolved reference node...
    text = raw("xxe.xml").decode().split("?>", 1)[1]
    root = etree.fromstring(text.encode(), secure_xml.parser())
    name = root.find(".//h:patient/h:name", HL7)
    assert name.text is None and [type(c).__name__ for c in name] == ["_Entity"]
    # ...and the billion laughs are stopped by the parser rather than expanded.
    text = raw("billion_laughs.xml").decode().split("?>", 1)[1]
    with pytest.raises(etree.XMLSyntaxError, match="amplification"):
        etree.fromstring(text.encode(), secure_xml.parser())


@pytest.mark.parametrize("prolog,reason", [
    ('<!-- exported by HIS -->\n<!DOCTYPE x [<!ENTITY % p SYSTEM "http://e.invalid/p">%p;]>\n',
     "parameter entity declarations"),
    ("<!doctype ClinicalDocument>\n", "DTD"),
    ("<![CDATA[x]]>\n", "markup declaration"),
])
def test_other_dtd_forms_are_refused(prolog, reason):
    text = raw("outpatient.xml").decode()
    decl, rest = text.split("?>\n", 1)
    with pytest.raises(UnreadableUpload, match=reason):
        secure_xml.parse((decl + "?>\n" + prolog + rest).encode())


def test_xinclude_is_refused():
    body = variant("outpatient.xml", "<name>周建国</name>",
                   '<name><xi:include xmlns:xi="http://www.w3.org/2001/XInclude" '
                   'href="file:///etc/passwd" parse="text"/></name>')
    with pytest.raises(UnreadableUpload, match="XInclude"):
        secure_xml.parse(body)


def test_an_undeclared_entity_reference_is_not_well_formed():
    body = variant("outpatient.xml", "<name>周建国</name>", "<name>&xxe;</name>")
    with pytest.raises(UnreadableUpload, match="not well-formed"):
        secure_xml.parse(body)


def test_parse_errors_never_quote_a_resident_id_in_full():
    body = variant("outpatient.xml", "<name>周建国</name>", "<name>320509197811230012</nam>")
    with pytest.raises(UnreadableUpload) as exc:
        secure_xml.parse(body)
    assert "320509197811230012" not in str(exc.value)


def test_comments_and_processing_instructions_are_dropped_from_the_tree():
    root = secure_xml.parse(b'<?xml version="1.0"?><!-- a --><a><!-- b --><?pi x?><b/></a>')
    assert [child.tag for child in root] == ["b"]
