"""Pure text and URL normalization shared by the parse and dedup stages.

Every function here is total: any ``str`` gives a value, never an exception, so
hostile feed content cannot stop a refresh.
"""

from __future__ import annotations

import hashlib
import html
import re
import unicodedata
from functools import cache
from urllib.parse import SplitResult, quote, unquote_plus, urljoin, urlsplit, urlunsplit

from ftfy import fix_encoding
from ftfy.badness import is_bad

# --- HTML -> text -------------------------------------------------------------------------

# Tags never span a "<" and unclosed blocks run to the end of input, so junk stays linear.
_DROPPED = re.compile(
    r"<(script|style|noscript|template|head)\b[^<>]*>.*?(?:</\1\s*>|\Z)"
    r"|<!--.*?(?:-->|\Z)",
    re.IGNORECASE | re.DOTALL,
)
_CDATA = re.compile(r"<!\[CDATA\[(.*?)(?:\]\]>|\Z)", re.DOTALL)
# Items open a line (their end tags may be omitted); blocks open and close paragraphs.
_LINE_TAGS = re.compile(r"<(?:br|li|tr|dt|dd)\b[^<>]*>", re.IGNORECASE)
_BLOCK_TAGS = re.compile(
    r"</?(?:p|div|h[1-6]|ul|ol|table|blockquote|pre|section|article|header|footer|"
    r"aside|nav|figure|figcaption|hr|dl|address|main|form|fieldset)\b[^<>]*>",
    re.IGNORECASE,
)
_ANY_TAG = re.compile(r"</?[a-zA-Z][^<>]*>|<![^<>]*>|<\?[^<>]*>")


def html_to_text(html_text: str) -> str:
    """Plain text of an HTML fragment: tags stripped, entities decoded, blocks as paragraphs.

    A few compiled regexes rather than an HTML parser: feeds carry fragments, not
    documents, and this path runs over megabytes of ``content:encoded``.
    """
    if "<" not in html_text and "&" not in html_text:
        return html_text
    text = _DROPPED.sub("", html_text)
    text = _CDATA.sub(r"\1", text)
    text = _LINE_TAGS.sub("\n", text)
    text = _BLOCK_TAGS.sub("\n\n", text)
    text = _ANY_TAG.sub("", text)
    return html.unescape(text)


# --- text cleaning -------------------------------------------------------------------------

_SURROGATES = re.compile(r"[\ud800-\udfff]")
_INVISIBLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b\u2060\ufeff\ufffe\uffff]")
_C1_CONTROLS = re.compile(r"[\x80-\x9f]")
_LINE_BREAKS = re.compile(r"\r\n?|[\u2028\u2029]")
_PARAGRAPH_GAP = re.compile(r"\n{3,}")
_ANY_SPACE = re.compile(r"\s+")
# Whatever the first three steps of a cleaning remove or rewrite: most text has none.
_UNUSUAL = re.compile("[\ud800-\udfff\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u2060"
                      "\ufeff\ufffe\uffff\r\u2028\u2029]")


# UTF-8 read as Latin-1/cp1252: a lead byte (Â..ô) then a continuation byte (0x80..0xBF),
# which cp1252 shows as one of its own characters (€‚ƒ„…†‡ˆ‰Š‹ŒŽ‘’“”•–—˜™š›œžŸ) or as itself.
_MOJIBAKE_HINT = re.compile(
    "[\u00c2-\u00f4][\u0080-\u00bf\u20ac\u201a\u0192\u201e\u2026\u2020\u2021\u02c6"
    "\u2030\u0160\u2039\u0152\u017d\u2018\u2019\u201c\u201d\u2022\u2013\u2014\u02dc"
    "\u2122\u0161\u203a\u0153\u017e\u0178]"
)


def repair_mojibake(text: str) -> str:
    """Undo double-encoded UTF-8 (``fÃ¼hrende`` -> ``führende``) when the text looks broken.

    ftfy costs milliseconds per kilobyte, so one cheap regex gates it; ftfy then
    decides for itself whether re-decoding really makes the text better.
    """
    if not _MOJIBAKE_HINT.search(text):
        return text
    # Line by line, like ftfy.fix_text: the cost stays with the broken lines.
    return "\n".join(_repair_line(line) for line in text.split("\n"))


def _repair_line(line: str) -> str:
    if _MOJIBAKE_HINT.search(line) and is_bad(line):
        return fix_encoding(line, explain=False)
    return line


def clean_text(text: str) -> str:
    """Readable text: mojibake repaired, NFC, no control characters, tidy whitespace.

    Cleaning clean text changes nothing."""
    cleaned = _clean_once(text)
    for _ in range(2):  # ftfy undoes one layer at a time; a repair can uncover another
        if not _MOJIBAKE_HINT.search(cleaned):
            break
        cleaned, previous = _clean_once(cleaned), cleaned
        if cleaned == previous:
            break
    return cleaned


def _clean_once(text: str) -> str:
    # C0 controls and invisible marks go first (one inside "Ã©" hides it from the repair);
    # C1 controls go after it: double-encoded Cyrillic needs them (Ð\x9d -> Н). NFC comes
    # last, so that no removal can leave a base letter and its accent apart.
    unusual = _UNUSUAL.search(text) is not None
    if unusual:
        text = _INVISIBLE.sub("", _LINE_BREAKS.sub("\n", _SURROGATES.sub("", text)))
    repaired = repair_mojibake(text)
    if unusual or repaired is not text:
        repaired = _C1_CONTROLS.sub("", repaired)
    text = unicodedata.normalize("NFC", repaired)
    # Each line's runs of spaces made one, and no space left at either end of a line
    # (str.split and the regex \s agree on what whitespace is).
    text = "\n".join(" ".join(line.split()) for line in text.split("\n"))
    return (_PARAGRAPH_GAP.sub("\n\n", text) if "\n\n\n" in text else text).strip()


def clean_title(text: str) -> str:
    """:func:`clean_text` squeezed onto one line (squeezed first too: the mojibake repair
    reads line by line, and must see the line the title will be)."""
    return " ".join(clean_text(_ANY_SPACE.sub(" ", text)).split())


# --- URLs ------------------------------------------------------------------------------------

# The longest URL kept (the database's URL columns hold 2048); a longer one gives None, since
# a cut URL would point elsewhere.
MAX_URL_CHARS = 2048
_TRACKING_PARAMS = frozenset({
    "fbclid", "gclid", "gclsrc", "dclid", "msclkid", "yclid", "twclid", "ttclid", "igshid",
    "mc_cid", "mc_eid", "_ga", "_gl", "_hsenc", "_hsmi", "mkt_tok", "ref", "ref_src", "ref_url",
    "cmpid", "cmp", "spm", "scm", "ncid", "ocid", "xtor", "at_medium", "at_campaign",
    "wt.mc_id", "wt_mc", "s_cid", "sr_share", "li_fat_id", "oly_anon_id", "oly_enc_id",
    "vero_id", "rb_clickid", "guccounter", "guce_referrer", "guce_referrer_sig",
    "__twitter_impression",
})
_TRACKING_PREFIXES = ("utm_", "pk_", "mtm_")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_URL_STRIPPED = re.compile(r"[\t\n\r]")
# An absolute http(s) link that urljoin would give back unchanged, whatever the base (it
# would split and join it again, which drops an empty "?", "#" or ";"): most links are.
_PLAIN_ABSOLUTE = re.compile(r"https?://[^/?#;]+(?:/[^?#;]*)?(?:\?[^#]+)?(?:#.+)?", re.DOTALL)
_URL_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # escaped, as browsers do (and PostgreSQL needs)
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_BARE_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HOST = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*|\[[0-9a-f:.]+\]")
# RFC 3986 sub-delims plus ":@/" may stay literal in a path; the query also keeps "?".
_PATH_SAFE = "/:@!$&'()*+,;=%"
_QUERY_PART_SAFE = "/:@!$'()*+,;?%"


def canonical_url(url: str, base: str | None = None) -> str | None:
    """One spelling per http(s) URL, so that the same article links compare equal.

    Lowercase scheme and host (IDN as punycode), no default port, userinfo or
    fragment, tracking parameters removed and the rest sorted, percent-escapes
    normalized. Anything that is not a usable http(s) URL gives None.
    """
    resolved = _resolve(url, base)
    if resolved is None:
        return None
    url, parts = resolved
    try:
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = _canonical_host(parts.hostname or "")
    if scheme not in _DEFAULT_PORTS or host is None:
        return None
    netloc = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    query = _canonical_query(parts.query)
    path = _normalize_escapes(parts.path, _PATH_SAFE)
    if path in ("", "/"):
        path = "/" if query else ""
    canonical = urlunsplit((scheme, netloc, path, query, ""))
    return canonical if len(canonical) <= MAX_URL_CHARS else None


def absolute_url(url: str, base: str | None = None) -> str | None:
    """The link as published, resolved against ``base``; None unless it is http(s).

    Kept beside the canonical form so every spelling of an article's URL is on record."""
    resolved = _resolve(url, base)
    if resolved is None:
        return None
    url, parts = resolved
    usable = parts.scheme.lower() in _DEFAULT_PORTS and parts.hostname
    url = _URL_CONTROL.sub(lambda m: f"%{ord(m.group()):02X}", url)
    return url if usable and len(url) <= MAX_URL_CHARS else None


def _resolve(url: str, base: str | None) -> tuple[str, SplitResult] | None:
    """The link without stray whitespace and controls, resolved against ``base``, and its
    parts; None when it is empty, too long or not a URL."""
    url = _URL_STRIPPED.sub("", url).strip()
    if not url or len(url) > MAX_URL_CHARS:
        return None
    try:
        if base and not _PLAIN_ABSOLUTE.fullmatch(url):
            url = urljoin(_URL_STRIPPED.sub("", base).strip(), url)
        return url, urlsplit(url)
    except ValueError:
        return None


def _canonical_host(host: str) -> str | None:
    host = host.rstrip(".")
    if ":" in host:
        host = f"[{host}]"
    elif not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    host = host.lower()
    return host if _HOST.fullmatch(host) else None


def _canonical_query(query: str) -> str:
    kept = []
    for pair in query.split("&"):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        name = unquote_plus(key).strip().lower()
        if name in _TRACKING_PARAMS or name.startswith(_TRACKING_PREFIXES):
            continue
        kept.append(
            _normalize_escapes(key, _QUERY_PART_SAFE) + sep
            + _normalize_escapes(value, _QUERY_PART_SAFE + "=")
        )
    return "&".join(sorted(kept))


def _normalize_escapes(part: str, safe: str) -> str:
    """Uppercase escapes, decode escaped unreserved bytes, escape whatever is not allowed."""
    part = _PERCENT.sub(_unescape_unreserved, _BARE_PERCENT.sub("%25", part))
    return quote(part, safe=safe, errors="replace")


def _unescape_unreserved(match: re.Match[str]) -> str:
    byte = int(match.group(1), 16)
    return chr(byte) if byte in _UNRESERVED else f"%{match.group(1).upper()}"


# --- identity keys ---------------------------------------------------------------------------

_NOT_WORD = re.compile(r"[\W_]+")
CONTENT_KEY_CHARS = 4000


@cache
def _combining() -> tuple[re.Pattern[str], re.Pattern[str]]:
    """Combining marks (what unicodedata.combining flags) as two regexes, those of the
    Basic Multilingual Plane and the rest: a class of BMP characters compiles to a
    bitmap, some 50 times faster than a class that also holds astral characters (which
    sre tests range by range). Built on first use (it scans the code space once)."""
    marks = [chr(c) for c in range(0x300, 0x20000) if unicodedata.combining(chr(c))]
    bmp = "".join(m for m in marks if m < "\U00010000")
    astral = "".join(m for m in marks if m >= "\U00010000")
    return re.compile(f"[{bmp}]"), re.compile(f"[{astral}]")


def strip_combining(text: str) -> str:
    """``text`` without combining marks (a decomposed text loses its diacritics)."""
    bmp, astral = _combining()
    bare = bmp.sub("", text)
    return astral.sub("", bare) if bare and max(bare) >= "\U00010000" else bare


def title_key(title: str) -> str:
    """Title folded for identity: casefold, no diacritics or punctuation, single spaces.

    Deliberately lossy (``Café!`` == ``cafe``): two outlets' spellings of one headline
    should meet, and a rare false match costs less than a duplicate story.
    """
    return _fold(clean_title(title))


def content_key(text: str) -> str:
    """Opening of the body folded like :func:`title_key`, so reflowed or re-punctuated
    copies match. Takes text as the parse stage returns it (already cleaned); the first
    CONTENT_KEY_CHARS characters identify a text well enough and bound the cost."""
    return _fold(text[:CONTENT_KEY_CHARS])


def _fold(text: str) -> str:
    # Casefolded again after NFKD, which can make capitals ("™" -> "TM", "ℭ" -> "C").
    decomposed = unicodedata.normalize("NFKD", text.casefold()).casefold()
    bare = decomposed if decomposed.isascii() else strip_combining(decomposed)
    return _NOT_WORD.sub(" ", unicodedata.normalize("NFC", bare)).strip()


def sha256_hex(text: str) -> str:
    """Hex SHA-256 of the UTF-8 text (lone surrogates included, so it is total)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def short_hash(text: str) -> str:
    """First 16 bytes of :func:`sha256_hex` as 32 hex digits: a compact identity key."""
    return sha256_hex(text)[:32]
