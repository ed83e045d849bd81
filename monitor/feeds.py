"""Pure helpers for managing feeds: OPML subscription lists, URL checks, status words.

OPML is read with the standard library's XML parser, hardened: defusedxml when it is
installed, otherwise any DOCTYPE is refused before its internal subset is read, so no
entity (an "entity expansion bomb" or an external file) is ever declared or expanded.
OPML has no use for a DOCTYPE, so refusing it loses nothing.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

from monitor.errors import ParseError

try:
    from defusedxml.ElementTree import fromstring as _defused_fromstring
except ImportError:  # the stdlib parser below refuses DOCTYPEs instead
    _defused_fromstring = None


@dataclass(frozen=True)
class OpmlFeed:
    """One subscription from an OPML file; ``category`` is the folder path ("News/Asia")."""

    url: str
    title: str | None = None
    outlet: str | None = None
    category: str | None = None


class _NoDoctype(ET.TreeBuilder):
    def doctype(self, name: str, pubid: str | None, system: str | None) -> None:
        raise ValueError("a DOCTYPE is not allowed in OPML (entities are refused)")


def _root(content: bytes) -> ET.Element:
    if _defused_fromstring is not None:
        return _defused_fromstring(content)  # type: ignore[no-any-return]
    parser = ET.XMLParser(target=_NoDoctype())
    parser.feed(content)
    return parser.close()


def parse_opml(content: bytes, name: str) -> tuple[OpmlFeed, ...]:
    """Every outline with an ``xmlUrl``, in document order, however deeply nested.

    URLs are not validated here (see :func:`url_problem`) so that a caller can count the
    invalid ones. Raises ParseError naming ``name`` when the bytes are not OPML.
    """
    try:
        root = _root(content)
    except (ET.ParseError, ValueError) as exc:
        raise ParseError(f"{name}: not valid OPML: {_one_line(exc)}") from exc
    except Exception as exc:  # noqa: BLE001 - defusedxml's refusals share no base class
        raise ParseError(f"{name}: not valid OPML: {exc.__class__.__name__}") from exc
    body = root.find("body") if _local(root.tag) == "opml" else None
    if body is None:
        raise ParseError(f"{name}: not an OPML file (expected <opml> with a <body>)")
    return tuple(_walk(body, ()))


def _walk(node: ET.Element, folders: tuple[str, ...]) -> Iterator[OpmlFeed]:
    for child in node:
        if _local(child.tag) != "outline":
            continue
        attrs = {key.lower(): value.strip() for key, value in child.attrib.items()}
        label = attrs.get("title") or attrs.get("text") or None
        if "xmlurl" in attrs:
            category = "/".join(folders) or _first_category(attrs.get("category", ""))
            yield OpmlFeed(attrs["xmlurl"], label, label, category or None)
        yield from _walk(child, (*folders, label) if label and "xmlurl" not in attrs
                         else folders)


def _first_category(value: str) -> str:
    return value.split(",")[0].strip().strip("/")


def _local(tag: object) -> str:
    return str(tag).rsplit("}", 1)[-1].lower()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or exc.__class__.__name__


@dataclass(frozen=True)
class ImportPlan:
    """An OPML file sorted against the feeds already stored."""

    new: tuple[OpmlFeed, ...]
    present: tuple[OpmlFeed, ...]
    invalid: tuple[tuple[OpmlFeed, str], ...]


def plan_import(entries: Iterable[OpmlFeed], known: Collection[str]) -> ImportPlan:
    """New feeds, feeds already stored (or repeated in the file), and invalid URLs."""
    new: list[OpmlFeed] = []
    present: list[OpmlFeed] = []
    invalid: list[tuple[OpmlFeed, str]] = []
    seen = set(known)
    for entry in entries:
        if (why := url_problem(entry.url)) is not None:
            invalid.append((entry, why))
        elif entry.url in seen:
            present.append(entry)
        else:
            seen.add(entry.url)
            new.append(entry)
    return ImportPlan(tuple(new), tuple(present), tuple(invalid))


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be polled, or None when it is an absolute http(s) URL."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return f"not a URL: {url!r}"
    if parts.scheme.lower() not in ("http", "https"):
        return f"not an http(s) URL: {url!r}"
    if not parts.hostname:
        return f"no host in {url!r}"
    if any(ch.isspace() for ch in url):
        return f"whitespace in {url!r}"
    return None


def status_word(status: str, error_count: int) -> str:
    """What `feeds list` shows: muted (410 Gone), unhealthy (failing), or active."""
    if status == "muted":
        return "muted"
    return "unhealthy" if error_count > 0 else "active"
