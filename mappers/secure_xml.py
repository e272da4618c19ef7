"""A secure reader of XML documents from outside: bytes -> an lxml element, nothing resolved.

In order, each failure an ``UnreadableUpload`` saying why:

1. The encoding: a UTF-8 BOM, else the XML declaration (UTF-8, or GB2312/GBK/GB18030, all read
   as GB18030), else UTF-8. UTF-16/32 and other declared encodings are refused; undecodable
   bytes are refused naming the offset.
2. The prolog is scanned before any parser sees the text: a ``<!DOCTYPE`` (so every DTD, entity
   declaration, billion-laughs and external-DTD attack) or another markup declaration before the
   root is refused.
3. lxml parses with DTD loading, entity resolution and network access off, no huge trees,
   comments and processing instructions dropped; what it finds malformed is refused (the
   message scrubbed of resident ID numbers).
4. Defence in depth after the parse: a DTD, an entity reference or an XInclude element is
   refused. XInclude is never processed.

Used by ``mappers.jiangsu_cda``; knows nothing of CDA.
"""

from __future__ import annotations

import re

from lxml import etree

from mappers.errors import UnreadableUpload
from mappers.region import scrub

XINCLUDE_NS = "http://www.w3.org/2001/XInclude"

# Declared encodings -> the codec that reads them. GB2312 files often hold GBK-only characters.
ENCODINGS = {
    "utf-8": "utf-8", "utf8": "utf-8", "us-ascii": "utf-8", "ascii": "utf-8",
    "gb2312": "gb18030", "gbk": "gb18030", "gb18030": "gb18030", "cp936": "gb18030",
    "x-gbk": "gb18030", "euc-cn": "gb18030",
}

_DECL_RE = re.compile(rb"^<\?xml[ \t\r\n][^<>]{0,300}?\?>")
_ENCODING_RE = re.compile(rb"""encoding\s*=\s*["']([A-Za-z0-9._-]{1,40})["']""")


def decode_body(body: bytes, what: str = "an XML document") -> str:
    """The document as text, its XML declaration removed (lxml is then handed UTF-8).

    A UTF-8 BOM wins over the declaration; UTF-16/32 BOMs are refused; a declared GB2312/GBK is
    read as GB18030 (its superset). Undecodable bytes raise UnreadableUpload naming the offset.
    """
    if not body or not body.strip():
        raise UnreadableUpload(f"empty body: expected {what}")
    if body[:4] in (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff") or body[:2] in (b"\xff\xfe",
                                                                              b"\xfe\xff"):
        raise UnreadableUpload("UTF-16/UTF-32 documents are not accepted: send UTF-8 or GBK")
    codec, label = "utf-8", "UTF-8"
    if body.startswith(b"\xef\xbb\xbf"):
        body = body[3:]
        declared = None
    else:
        declared = _declared_encoding(body)
    if declared is not None:
        if declared.lower() not in ENCODINGS:
            raise UnreadableUpload(f"encoding {declared!r} is not accepted: "
                                   "UTF-8, GB2312, GBK or GB18030")
        codec, label = ENCODINGS[declared.lower()], declared.upper()
    decl = _DECL_RE.match(body)
    if decl:
        body = body[decl.end():]
    try:
        return body.decode(codec)
    except UnicodeDecodeError as exc:
        offset = exc.start + (decl.end() if decl else 0)
        raise UnreadableUpload(f"the body is not valid {label} (read as {codec}) at byte "
                               f"{offset}") from None


def _declared_encoding(body: bytes) -> str | None:
    decl = _DECL_RE.match(body)
    if not decl:
        return None
    m = _ENCODING_RE.search(decl.group(0))
    return m.group(1).decode("ascii") if m else None


_REFUSED = ("DTDs, entity declarations and external references are refused and never resolved")


def check_prolog(text: str) -> None:
    """Refuse a DOCTYPE (and any other markup declaration) before the root element.

    Only whitespace, comments and processing instructions (``xml-stylesheet`` is never fetched)
    may precede the root. Runs in one pass over the prolog, before any parser sees the text.
    """
    pos, n = 0, len(text)
    while pos < n:
        if text[pos].isspace():
            pos += 1
        elif text.startswith("<!--", pos):
            end = text.find("-->", pos + 4)
            if end < 0:
                raise UnreadableUpload("unterminated comment before the root element")
            pos = end + 3
        elif text.startswith("<?", pos):
            end = text.find("?>", pos + 2)
            if end < 0:
                raise UnreadableUpload("unterminated processing instruction before the root")
            pos = end + 2
        elif text.startswith("<!", pos):
            what = (_describe_doctype(text, pos) if text[pos + 2:pos + 9].upper() == "DOCTYPE"
                    else "a markup declaration")
            raise UnreadableUpload(f"the document declares {what}: {_REFUSED}")
        elif text[pos] == "<":
            return
        else:
            raise UnreadableUpload("text before the root element: not an XML document")
    raise UnreadableUpload("no root element: not an XML document")


def _describe_doctype(text: str, pos: int) -> str:
    """Name what a DOCTYPE brings (for the refusal), without ever reading what it points at."""
    head = re.split(r"[\[>]", text[pos:pos + 2000], maxsplit=1)[0]
    found = []
    if "<!ENTITY" in text:
        found.append("parameter entity declarations" if re.search(r"<!ENTITY\s+%", text)
                     else "external entity declarations"
                     if re.search(r"<!ENTITY[^>]*\b(SYSTEM|PUBLIC)\b", text)
                     else "entity declarations")
    if re.search(r"\b(SYSTEM|PUBLIC)\b", head):
        found.append("an external DTD")
    return "a DTD (<!DOCTYPE>" + (" with " + " and ".join(found) if found else "") + ")"


def parser() -> etree.XMLParser:
    # A new parser per call: lxml parsers are not to be shared between threads.
    return etree.XMLParser(resolve_entities=False, load_dtd=False, no_network=True,
                           dtd_validation=False, huge_tree=False, remove_comments=True,
                           remove_pis=True)


def parse(body: bytes, what: str = "an XML document") -> etree._Element:
    """Bytes -> the root element, every refusal above applied; UnreadableUpload with the reason
    (``what`` names the expected document in the refusal of an empty body)."""
    text = decode_body(body, what)
    check_prolog(text)
    try:
        root = etree.fromstring(text.encode("utf-8"), parser())
    except (etree.XMLSyntaxError, ValueError) as exc:
        raise UnreadableUpload(f"not well-formed XML: {scrub(str(exc))[:200]}") from None
    docinfo = root.getroottree().docinfo
    if docinfo.internalDTD is not None or docinfo.doctype or docinfo.system_url:
        raise UnreadableUpload(f"the document declares a DTD: {_REFUSED}")
    if next(root.iter(etree.Entity), None) is not None:
        raise UnreadableUpload(f"the document uses entity references: {_REFUSED}")
    if next(root.iter(f"{{{XINCLUDE_NS}}}*"), None) is not None:
        raise UnreadableUpload(f"the document holds an XInclude: {_REFUSED}")
    return root
