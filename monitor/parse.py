"""Bytes to articles: feed documents (via feedparser) and single article files.

This is the only module that imports feedparser; its dicts never leave it. Every
value that leaves is cleaned text, a canonical URL, or an aware UTC datetime.
"""

from __future__ import annotations

import codecs
import io
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from time import struct_time
from typing import Any

import feedparser
from feedparser.encodings import convert_to_utf8

from monitor.config import LimitSettings
from monitor.defuse import MAX_ELEMENT_ATTRIBUTES, defuse
from monitor.errors import ParseError
from monitor.normalize import (
    MAX_URL_CHARS,
    absolute_url,
    canonical_url,
    clean_text,
    clean_title,
    html_to_text,
    sha256_hex,
)
from monitor.types import Article, ParsedFeed

# --- limits (SECURITY.md, "Limits") ----------------------------------------------------------

MAX_ITEMS = 1000  # entries read from one document; later ones are ignored
MAX_ELEMENTS = 20_000  # start tags outside CDATA (after MAX_ITEMS); more is refused
MAX_ATTRIBUTES = 50_000  # attributes of those tags (MAX_ELEMENT_ATTRIBUTES in one); more: refused
MAX_TITLE_CHARS = 500
MAX_SUMMARY_CHARS = 20_000
MAX_TEXT_CHARS = 200_000
MAX_AUTHOR_CHARS = 300
MAX_GUID_CHARS = 2048  # a longer GUID is replaced by "sha256:" and its hash
MAX_LANGUAGE_CHARS = 35  # a longer language tag is ignored
__all__ = [
    "DEFAULT_LIMITS", "MAX_ATTRIBUTES", "MAX_AUTHOR_CHARS", "MAX_ELEMENTS",
    "MAX_ELEMENT_ATTRIBUTES", "MAX_GUID_CHARS", "MAX_ITEMS", "MAX_LANGUAGE_CHARS",
    "MAX_SUMMARY_CHARS", "MAX_TEXT_CHARS", "MAX_TITLE_CHARS", "MAX_URL_CHARS",
    "ParseLimits", "limits_for", "parse_article", "parse_feed",
]


@dataclass(frozen=True)
class ParseLimits:
    """How much of one document the parse stage reads (the defaults are the constants above)."""

    max_items: int = MAX_ITEMS
    max_elements: int = MAX_ELEMENTS
    max_attributes: int = MAX_ATTRIBUTES
    max_title_chars: int = MAX_TITLE_CHARS
    max_summary_chars: int = MAX_SUMMARY_CHARS
    max_text_chars: int = MAX_TEXT_CHARS
    max_author_chars: int = MAX_AUTHOR_CHARS


DEFAULT_LIMITS = ParseLimits()


def limits_for(caps: LimitSettings, max_items: int = MAX_ITEMS) -> ParseLimits:
    """The parse limits of the ``[limits]`` settings, reading at most ``max_items`` entries
    (config.py keeps every value at or under the constants above)."""
    return ParseLimits(max_items=min(max_items, MAX_ITEMS),
                       max_title_chars=min(caps.max_title_chars, MAX_TITLE_CHARS),
                       max_summary_chars=min(caps.max_summary_chars, MAX_SUMMARY_CHARS),
                       max_text_chars=min(caps.max_text_chars, MAX_TEXT_CHARS),
                       max_author_chars=min(caps.max_author_chars, MAX_AUTHOR_CHARS))


# Cleaning reads at most this many raw characters per allowed character: the cost of one
# field stays bounded however long the feed makes it.
_RAW_PER_CHAR = 4

_EARLIEST = datetime(1990, 1, 1, tzinfo=UTC)
_FUTURE_SLACK = timedelta(days=2)
_MAX_TITLE = 200
_MIN_LEAD = 60
_SNIFF_BYTES = 8192
# Byte patterns of UTF-16/32 XML, with or without BOM: legitimately full of NULs.
_WIDE_XML_STARTS = (
    codecs.BOM_UTF32_BE, codecs.BOM_UTF32_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF16_LE,
    b"\x00\x00\x00<", b"<\x00\x00\x00", b"\x00<\x00?", b"<\x00?\x00",
)
_CONTROL_BYTES = frozenset(range(0x20)) - {0x09, 0x0A, 0x0C, 0x0D}
_HTML_START = re.compile(rb"\s*(?:<\?xml[^>]*>\s*)?(?:<!--.*?-->\s*)*<(?:!doctype\s+)?html\b",
                         re.IGNORECASE | re.DOTALL)
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s")


# --- feeds -------------------------------------------------------------------------------------

def parse_feed(content: bytes, headers: Mapping[str, str] | None = None,
               url: str | None = None, *, now: datetime | None = None,
               limits: ParseLimits = DEFAULT_LIMITS) -> ParsedFeed:
    """Parse a feed document; ``headers`` are the HTTP response headers (charset counts).

    Raises ParseError when the bytes are not a feed, carry an unreadable DOCTYPE, or have
    more elements or attributes than ``limits`` allow (see monitor.defuse). A valid feed
    without entries is not an error. Fields are cut at ``limits``.
    """
    _reject_non_text(content, "feed")
    result, note = _run_feedparser(content, headers, url, limits)
    feed = result.get("feed", {})
    title = clean_title(_detail_text(feed, "title", limits.max_title_chars)) or None
    if not (result.get("entries") or title or _usable_version(result)):
        raise ParseError(f"feed: {_not_a_feed_reason(content, result)}")
    if _truncated(content, result):
        raise ParseError(f"feed: truncated XML ({_one_line(result.get('bozo_exception'))})")
    link = canonical_url(feed.get("link") or "", base=url)
    language = _language(feed.get("language"))
    base = link or url
    now = now or datetime.now(UTC)
    entries = result["entries"][:limits.max_items]
    articles = (_entry_article(e, base, language, now, limits) for e in entries)
    bozo = _one_line(result.get("bozo_exception")) if result.get("bozo") else None
    return ParsedFeed(
        articles=tuple(a for a in articles if a is not None),
        title=title,
        link=link,
        language=language,
        ttl_minutes=_ttl(feed.get("ttl")),
        warning="; ".join(w for w in (bozo, note) if w) or None,
    )


_UTF8_XML = "application/xml; charset=utf-8"
_AUTHOR_SEARCH_CHARS = 96
_sync_author_detail = feedparser.mixin._FeedParserMixin._sync_author_detail


def _bounded_sync_author_detail(self: Any, key: str = "author") -> None:
    """feedparser's author sync, on an author string cut to _AUTHOR_SEARCH_CHARS characters.

    It looks for an e-mail address in RSS authors (author, dc:creator, itunes:author,
    managingEditor, webMaster, dc:publisher) with a regex quadratic in their length:
    20,000 characters take 2 s, a megabyte hours. No real author string is that long."""
    context = self._get_context()
    value = context.get(key)
    if isinstance(value, str) and len(value) > _AUTHOR_SEARCH_CHARS:
        context[key] = value[:_AUTHOR_SEARCH_CHARS - 1] + "…"
    _sync_author_detail(self, key)


# Patched once, here: this module is feedparser's only importer (see _bounded_sync_author_detail).
feedparser.mixin._FeedParserMixin._sync_author_detail = _bounded_sync_author_detail


def _run_feedparser(content: bytes, headers: Mapping[str, str] | None, url: str | None,
                    limits: ParseLimits) -> tuple[Any, str | None]:
    """feedparser's result for the defused document, and a note on what was left out."""
    # feedparser reads keys lowercased; Content-Location is its base for relative links.
    response_headers = {k.lower(): v for k, v in (headers or {}).items()}
    if url:
        response_headers.setdefault("content-location", url)
    decoding: dict[str, Any] = {}
    try:
        # feedparser's own charset detection first, so that the checks see the very UTF-8
        # its parsers will read: a DTD in UTF-16 or UTF-7 would hide from a byte scan.
        data, dropped = defuse(convert_to_utf8(response_headers, content, decoding),
                               max_items=limits.max_items, max_elements=limits.max_elements,
                               max_attributes=limits.max_attributes)
        # A stream, not bytes: feedparser tries bytes as a file name (and str as a URL) first.
        # Sanitizing and link rewriting are wasted work: html_to_text drops all markup.
        result = feedparser.parse(io.BytesIO(data),
                                  response_headers=response_headers | {"content-type": _UTF8_XML},
                                  sanitize_html=False, resolve_relative_uris=False)
    except ParseError:
        raise
    except Exception as exc:  # feedparser has no error type of its own; any crash means unreadable
        raise ParseError(f"feed: feedparser failed: {_one_line(exc)}") from exc
    if decoding.get("bozo") and not result.get("bozo"):  # the charset note of the first pass
        result["bozo"], result["bozo_exception"] = True, decoding.get("bozo_exception")
    return result, (f"{dropped:,} entries after the first {limits.max_items:,} ignored"
                    if dropped else None)


def _reject_non_text(content: bytes, what: str) -> None:
    if not content.strip():
        raise ParseError(f"{what}: empty document")
    if content.lstrip(b" \t\r\n").startswith(_WIDE_XML_STARTS):
        return
    head = content[:_SNIFF_BYTES]
    controls = sum(1 for byte in head if byte in _CONTROL_BYTES)
    if b"\x00" in head or controls * 20 > len(head):
        raise ParseError(f"{what}: binary content, not text")


def _usable_version(result: Any) -> bool:
    """A recognised feed root, unless the XML broke: a clean channel with no items is fine."""
    exc = result.get("bozo_exception")
    soft = isinstance(exc, feedparser.ThingsNobodyCaresAboutButMe)  # charset or media type
    return bool(result.get("version")) and (not result.get("bozo") or soft)


_ROOT = re.compile(rb"<([A-Za-z_][\w.:-]*)")


def _truncated(content: bytes, result: Any) -> bool:
    """Broken XML whose root element never closes: a cut-off download, not a feed to salvage.

    Feeds that are merely sloppy (a stray newline before the declaration, an undefined
    entity) still close their root and are read, with a warning."""
    exc = result.get("bozo_exception")
    if not result.get("bozo") or isinstance(exc, feedparser.ThingsNobodyCaresAboutButMe):
        return False
    if content.lstrip(b" \t\r\n").startswith(_WIDE_XML_STARTS):
        return False  # UTF-16/32: the byte-level check below does not apply
    body = re.sub(rb"<\?.*?\?>|<!--.*?-->|<!.*?>", b"", content[:_SNIFF_BYTES], flags=re.S)
    root = _ROOT.search(body)
    if root is None:
        return False
    return re.search(rb"</" + re.escape(root.group(1)) + rb"\s*>", content[-4096:]) is None


def _not_a_feed_reason(content: bytes, result: Any) -> str:
    if _HTML_START.match(content[:_SNIFF_BYTES]):
        return "an HTML page, not a feed"
    if result.get("bozo"):
        return f"not a feed ({_one_line(result.get('bozo_exception'))})"
    return "no RSS, Atom or RDF document found"


def _entry_article(entry: Any, base: str | None, feed_language: str | None,
                   now: datetime, limits: ParseLimits) -> Article | None:
    summary = _detail_text(entry, "summary", limits.max_summary_chars)
    text = _content_text(entry, limits.max_text_chars) or summary
    title = (clean_title(_detail_text(entry, "title", limits.max_title_chars))
             or _headline_from(summary or text))
    if not title:
        return None
    return Article(
        title=title,
        url=absolute_url(entry.get("link") or "", base=base),
        guid=_guid(entry.get("id")),
        summary=summary,
        text=text,
        published=_entry_published(entry, now),
        author=_author(entry, limits.max_author_chars),
        language_hints=_language_hints(entry, feed_language),
    )


def _detail_text(node: Any, key: str, limit: int) -> str:
    detail = node.get(f"{key}_detail") or {"value": node.get(key) or "", "type": "text/plain"}
    return _as_text(detail, limit)


def _as_text(detail: Any, limit: int) -> str:
    value = (detail.get("value") or "")[:limit * _RAW_PER_CHAR]
    if "html" in (detail.get("type") or ""):
        value = html_to_text(value)
    return _cap(clean_text(value), limit)


def _content_text(entry: Any, limit: int) -> str:
    texts = (_as_text(part, limit) for part in entry.get("content") or ())
    return next((text for text in texts if text), "")


def _cap(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, at a space if one is near, marked "…"."""
    if len(text) <= limit:
        return text
    cut = text[:limit - 1]
    space = cut.rfind(" ", limit * 9 // 10)
    return (cut[:space] if space > 0 else cut).rstrip() + "…"


_ID_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _guid(value: object) -> str | None:
    """The entry's id without control characters (PostgreSQL refuses NUL); an absurdly long
    one is replaced by its hash (it still identifies)."""
    guid = _ID_CONTROLS.sub("", value).strip() if isinstance(value, str) else ""
    if len(guid) > MAX_GUID_CHARS:
        return "sha256:" + sha256_hex(guid)
    return guid or None


def _entry_published(entry: Any, now: datetime) -> datetime | None:
    for key in ("published_parsed", "updated_parsed", "created_parsed"):
        # dict.get: FeedParserDict aliases updated_parsed to published_parsed, with a warning.
        when = _from_struct(dict.get(entry, key))
        if when is not None:
            return _plausible(when, now)
    return None


def _from_struct(value: struct_time | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime(*value[:5], min(value[5], 59), tzinfo=UTC)
    except (TypeError, ValueError, OverflowError):
        return None


def _plausible(when: datetime, now: datetime | None = None) -> datetime | None:
    """``when`` in UTC if a news item could carry it (1990 up to two days ahead), else None."""
    now = now or datetime.now(UTC)
    when = when.astimezone(UTC)
    return when if _EARLIEST <= when <= now + _FUTURE_SLACK else None


def _author(entry: Any, limit: int) -> str | None:
    detail = entry.get("author_detail") or {}
    return _short_title(detail.get("name") or entry.get("author") or "", limit)


def _short_title(value: str, limit: int) -> str | None:
    return _cap(clean_title(value[:limit * _RAW_PER_CHAR]), limit) or None


def _language_hints(entry: Any, feed_language: str | None) -> tuple[str, ...]:
    details = [*(entry.get("content") or ())[:1],
               entry.get("summary_detail") or {}, entry.get("title_detail") or {}]
    hints = (_language(d.get("language")) for d in details)
    return _unique([*hints, feed_language])


def _language(value: object) -> str | None:
    tag = value.strip().lower() if isinstance(value, str) else ""
    return tag if 0 < len(tag) <= MAX_LANGUAGE_CHARS else None


def _unique(values: Iterable[str | None]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v for v in values if v))


_TTL = re.compile(r"[0-9]{1,6}")


def _ttl(value: object) -> int | None:
    # ASCII digits only: str.isdigit() admits "²", which int() refuses.
    text = value.strip() if isinstance(value, str) else ""
    return int(text) or None if _TTL.fullmatch(text) else None


def _one_line(exc: object) -> str:
    text = f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else str(exc)
    return " ".join(text.split())[:300]


def _headline_from(text: str) -> str:
    """First sentence of ``text`` on one line, cut at a word near :data:`_MAX_TITLE`."""
    first = clean_title(_SENTENCE_END.split(text.strip(), maxsplit=1)[0])
    if len(first) <= _MAX_TITLE:
        return first
    return first[:_MAX_TITLE].rsplit(" ", 1)[0].rstrip(",;:-–—") + "…"


# --- article files -----------------------------------------------------------------------------

_FRONT_MATTER_FENCE = "---"
_LEADING_DATE = re.compile(
    r"^\s*(?:date:?\s+)?(\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2})?(?:Z|[+-]\d{2}:?\d{2})?)?)"
    r"(?:\s+|$)",
    re.IGNORECASE,
)
_BYLINE = re.compile(r"^by\s+(?P<name>[^|]{2,80}?)\s*(?:\|.*)?$", re.IGNORECASE)
_NAME_JOINERS = frozenset({"and", "und", "og", "y", "et", "de", "da", "van", "von", "der", "&"})
_IMAGE_LINE = re.compile(r"^\s*!\[.*\]\(.*\)\s*$")
_IMAGE = re.compile(r"!\[[^\]]*\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_HEADING_MARK = re.compile(r"^#{1,6}\s+")
_SHARE_LINES = frozenset({
    "facebook icon", "twitter icon", "linkedin icon", "google icon", "e-mail icon", "email icon",
    "whatsapp icon", "reddit icon", "print icon", "share", "share this article", "share this",
})


def parse_article(raw: bytes, *, name: str, meta: Mapping[str, str] | None = None,
                  limits: ParseLimits = DEFAULT_LIMITS) -> Article:
    """One ``.txt``/``.md`` article: optional ``---`` front matter, headline line, body.

    ``meta`` (a sidecar) wins over front matter. A leading ``date YYYY-MM-DD`` on the
    headline line is its publication date; a leading ``By Name |`` line is its author.
    Title, summary, text and author are cut at ``limits``.
    """
    fields, body = _split_front_matter(_decode_article(raw, name))
    fields |= {k.strip().lower(): v for k, v in (meta or {}).items()}
    lines = _trim([line for line in map(_plain_line, body.split("\n")) if line is not None])
    author, lines = _take_byline(lines)
    dated, lines = _take_leading_date(lines)
    title, lines = _take_headline(lines, fields.get("title"))
    if not title:
        raise ParseError(f"{name}: no headline found")
    limit = limits.max_text_chars
    text = _cap(clean_text("\n".join(lines)[:limit * _RAW_PER_CHAR]), limit)
    return Article(
        title=_cap(title, limits.max_title_chars),
        url=absolute_url(fields.get("url") or ""),
        summary=_cap(_lead(text), limits.max_summary_chars),
        text=text,
        published=_parse_when(fields.get("published") or fields.get("date") or "") or dated,
        author=_short_title(fields.get("author") or author or "", limits.max_author_chars),
        outlet=_short_title(fields.get("outlet") or "", MAX_TITLE_CHARS),
        language_hints=_unique([_language(fields.get("language"))]),
    )


def _lead(text: str) -> str:
    """First sentence of the first real paragraph (datelines and photo credits are short)."""
    lines = (line for line in text.split("\n") if len(line) >= _MIN_LEAD)
    return _headline_from(next(lines, ""))


def _decode_article(raw: bytes, name: str) -> str:
    for bom, codec in ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"),
                       (codecs.BOM_UTF16_BE, "utf-16-be")):
        if raw.startswith(bom):
            return raw[len(bom):].decode(codec, errors="replace")
    _reject_non_text(raw, name)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def _split_front_matter(text: str) -> tuple[dict[str, str], str]:
    lines = text.replace("\r\n", "\n").split("\n")
    if not lines or lines[0].strip() != _FRONT_MATTER_FENCE:
        return {}, text
    for end, line in enumerate(lines[1:], start=1):
        if line.strip() in (_FRONT_MATTER_FENCE, "..."):
            return _read_pairs(lines[1:end]), "\n".join(lines[end + 1:])
    return {}, text


def _read_pairs(lines: list[str]) -> dict[str, str]:
    """A tiny ``key: value`` reader (no nesting, no lists): all our front matter needs."""
    pairs = {}
    for line in lines:
        key, sep, value = line.partition(":")
        if sep and key.strip() and not line[:1].isspace():
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            pairs[key.strip().lower()] = value
    return pairs


def _plain_line(line: str) -> str | None:
    """A body line without markdown images, link targets or heading marks; None drops it."""
    if _IMAGE_LINE.match(line):
        return None
    line = _LINK.sub(r"\1", _IMAGE.sub("", line))
    line = _HEADING_MARK.sub("", line.strip())
    return None if line.casefold() in _SHARE_LINES else line


def _trim(lines: list[str]) -> list[str]:
    """``lines`` from the first non-blank one on."""
    start = next((i for i, line in enumerate(lines) if line.strip()), len(lines))
    return lines[start:]


def _take_byline(lines: list[str]) -> tuple[str | None, list[str]]:
    author = _byline_author(lines[0]) if lines else None
    return (author, _trim(lines[1:])) if author else (None, lines)


def _byline_author(line: str) -> str | None:
    match = _BYLINE.match(line.strip())
    if match is None:
        return None
    name = match.group("name").strip()
    words = name.split()
    looks_like_name = len(words) <= 6 and all(
        w[0].isupper() or w.lower() in _NAME_JOINERS for w in words)
    return clean_title(name) if looks_like_name or "|" in line else None


def _take_leading_date(lines: list[str]) -> tuple[datetime | None, list[str]]:
    match = _LEADING_DATE.match(lines[0]) if lines else None
    when = _parse_when(match.group(1)) if match else None
    if match is None or when is None:
        return None, lines
    return when, _trim([lines[0][match.end():], *lines[1:]])


def _take_headline(lines: list[str], given: str | None) -> tuple[str, list[str]]:
    line, rest = (clean_title(lines[0]), lines[1:]) if lines else ("", [])
    title = _short_title(given or "", MAX_TITLE_CHARS) or ""
    if title:
        return title, (rest if line.casefold() == title.casefold() else [line, *rest])
    if len(line) > _MAX_TITLE:
        # A lead paragraph standing in for a headline: title it, but keep every word.
        return _headline_from(line), [line, *rest]
    return line, rest


def _parse_when(value: str) -> datetime | None:
    """ISO 8601 (a bare date is midnight UTC; naive times are UTC) or RFC 822, else None."""
    value = value.strip()
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
    return _plausible(when if when.tzinfo else when.replace(tzinfo=UTC))
