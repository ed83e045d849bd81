"""What the XML parsers never see: a feed document made safe and bounded before feedparser.

feedparser keeps "safe" entity declarations and hands the document to expat, which expands
internal entities (billion laughs) up to its own amplification limit; its loose parser
costs ~75 µs per element and expat's SAX layer is quadratic in the attributes of one
element. So, on the UTF-8 text feedparser will read:

- every document type declaration before the root is removed, so no entity is ever
  declared: nothing expands, and no external entity or DTD can be fetched;
- entries after the first ``max_items`` are cut out (entries are siblings, so the
  document stays well-formed);
- a document with more elements or attributes than its limits is refused.

Pure: bytes in, bytes out, :class:`ParseError` on refusal.
"""

from __future__ import annotations

import itertools
import re

from monitor.errors import ParseError

MAX_ELEMENT_ATTRIBUTES = 100  # in one element; expat's SAX layer is quadratic in them

_PROLOG_JUNK = re.compile(rb"(?:\s+|<\?.*?\?>|<!--.*?-->)*+", re.DOTALL)
# Possessive loops: a hostile declaration costs one linear scan, never a backtracking storm.
_DOCTYPE = re.compile(rb"""<!DOCTYPE\b(?:[^\[>"']|"[^"]*"|'[^']*')*+
    (?:\[(?:[^\]"'<]|"[^"]*"|'[^']*'|<!--.*?-->|<(?!!--))*+\])?\s*>""",
                      re.DOTALL | re.IGNORECASE | re.VERBOSE)
_ENTRY_START = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?(?:item|entry)(?=[\s/>])")
_ENTRY_END = re.compile(rb"</(?:[A-Za-z_][\w.-]*:)?(?:item|entry)\s*>")
_CDATA_SECTION = re.compile(rb"<!\[CDATA\[.*?(?:\]\]>|\Z)", re.DOTALL)
_START_TAG = re.compile(rb"""<[A-Za-z_][^<>"']*+(?:(?:"[^"<]*+"|'[^'<]*+')[^<>"']*+)*+""")
_ATTRIBUTE = re.compile(rb"""=\s*["']""")


def defuse(data: bytes, *, max_items: int, max_elements: int,
           max_attributes: int) -> tuple[bytes, int]:
    """The document without DTD and extra entries, and how many entries were cut.

    Raises ParseError for an unreadable DOCTYPE or a document over its limits."""
    data = without_doctype(data)
    data, dropped = first_entries(data, max_items)
    check_markup(data, max_elements, max_attributes)
    return data, dropped


def without_doctype(data: bytes) -> bytes:
    """``data`` without the document type declarations before its root element."""
    start = end = _after_prolog_junk(data, 0)
    while data[end:end + 9].upper() == b"<!DOCTYPE":
        doctype = _DOCTYPE.match(data, end)
        if doctype is None:
            raise ParseError("feed: unreadable document type declaration (DOCTYPE)")
        end = _after_prolog_junk(data, doctype.end())
    return data if end == start else data[:start] + data[end:]


def _after_prolog_junk(data: bytes, pos: int) -> int:
    match = _PROLOG_JUNK.match(data, pos)
    return match.end() if match else pos


def first_entries(data: bytes, limit: int) -> tuple[bytes, int]:
    """``data`` without the entries after the first ``limit``, and how many were cut.

    Cutting from the first extra entry to the end of the last keeps sibling entries
    well-formed; a cut that breaks the document only sends feedparser to its loose parser."""
    starts = _ENTRY_START.finditer(data)
    extra = next(itertools.islice(starts, limit, None), None)
    if extra is None:
        return data, 0
    dropped = 1 + sum(1 for _ in starts)
    last = None
    for last in _ENTRY_END.finditer(data, extra.start()):  # noqa: B007  (the last one is wanted)
        pass
    return data[:extra.start()] + (data[last.end():] if last else b""), dropped


def check_markup(data: bytes, max_elements: int, max_attributes: int) -> None:
    """Refuse more start tags or attributes than allowed (CDATA sections do not count)."""
    if data.count(b"<") <= max_elements and data.count(b"=") <= max_attributes:
        return  # the cheap upper bounds already fit
    markup = _CDATA_SECTION.sub(b"", data) if b"<![CDATA[" in data else data
    elements = (markup.count(b"<") - markup.count(b"</") - markup.count(b"<!")
                - markup.count(b"<?"))
    if elements > max_elements:
        raise ParseError(f"feed: {elements:,} XML elements, more than the limit of "
                         f"{max_elements:,}")
    total = 0
    for tag in _START_TAG.finditer(markup):
        total += _attributes(markup, *tag.span())
        if total > max_attributes:
            raise ParseError(f"feed: more XML attributes than the limit of {max_attributes:,}")


def _attributes(markup: bytes, start: int, end: int) -> int:
    """The attributes of the tag at ``markup[start:end]``, counted up to the limit of one."""
    if markup.count(b"=", start, end) == 0:
        return 0
    found = itertools.islice(_ATTRIBUTE.finditer(markup, start, end), MAX_ELEMENT_ATTRIBUTES + 1)
    count = sum(1 for _ in found)
    if count > MAX_ELEMENT_ATTRIBUTES:
        raise ParseError(f"feed: an element with more than {MAX_ELEMENT_ATTRIBUTES} attributes")
    return count
