"""Backfill sources: feed files, article files (.txt/.md, with optional sidecar
metadata in ``NAME.meta.toml``), directories of them, and http(s) feed URLs.

Reading a source gives articles plus the context the pipeline needs; every failure is
a :class:`SourceError` whose message names the file or URL in one line.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from urllib.parse import urlsplit

from monitor.errors import MonitorError, ParseError, SourceError
from monitor.parse import DEFAULT_LIMITS, ParseLimits, parse_article, parse_feed
from monitor.pipeline import SourceContext
from monitor.types import Article, FetchResult

FEED_SUFFIXES = {".xml", ".rss", ".atom", ".rdf", ".feed"}
ARTICLE_SUFFIXES = {".txt", ".md"}
SIDECAR = ".meta.toml"
SIDECAR_KEYS = {"outlet", "url", "published", "language", "title", "author"}
MAX_FILE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Source:
    location: str
    kind: str  # "feed" | "article" | "url"

    @property
    def label(self) -> str:
        return self.location


def discover(spec: str) -> list[Source]:
    """The sources a command-line SOURCE names (a directory is walked recursively)."""
    if urlsplit(spec).scheme in ("http", "https"):
        return [Source(spec, "url")]
    if "://" in spec:
        raise SourceError(f"{spec}: only http(s) URLs, files and directories can be read")
    path = Path(spec)
    if path.is_dir():
        found = [s for p in _walk(path) if (s := _classify(p, explicit=False)) is not None]
        if not found:
            raise SourceError(f"{spec}: no feed files (.xml, .rss, .atom, .rdf) or "
                              f"articles (.txt, .md) in this directory")
        return found
    if not path.exists():
        raise SourceError(f"{spec}: no such file or directory")
    return [s for s in [_classify(path, explicit=True)] if s is not None]


def _walk(root: Path) -> Iterator[Path]:
    for folder, dirs, files in os.walk(root, onerror=None):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(folder) / name


def _classify(path: Path, *, explicit: bool) -> Source | None:
    name = path.name.lower()
    if name.endswith(SIDECAR):
        return None
    suffix = path.suffix.lower()
    if suffix in FEED_SUFFIXES:
        return Source(str(path), "feed")
    if suffix in ARTICLE_SUFFIXES:
        return Source(str(path), "article")
    # A file named explicitly is read whatever its name; the parse stage judges it.
    return Source(str(path), "feed") if explicit else None


def _read_bytes(path: Path) -> bytes:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise SourceError(f"{path}: larger than {MAX_FILE_BYTES // 2**20} MiB")
        return path.read_bytes()
    except PermissionError:
        raise SourceError(f"{path}: permission denied") from None
    except IsADirectoryError:
        raise SourceError(f"{path}: is a directory") from None
    except OSError as exc:
        raise SourceError(f"{path}: cannot read ({exc.strerror or exc})") from None


Fetcher = Callable[[str], FetchResult]


def read(source: Source, *, outlet: str | None = None, fetcher: Fetcher | None = None,
         limits: ParseLimits = DEFAULT_LIMITS) -> tuple[list[Article], SourceContext]:
    """Articles and context of one source, fields cut at ``limits``; raises SourceError
    naming it."""
    try:
        if source.kind == "article":
            return _read_article(Path(source.location), outlet, limits)
        if source.kind == "url":
            return _read_url(source.location, outlet, fetcher, limits)
        return _read_feed_file(Path(source.location), outlet, limits)
    except SourceError:
        raise
    except MonitorError as exc:
        raise SourceError(f"{source.location}: {exc}") from exc


def _with_name(path: Path | str, exc: ParseError) -> SourceError:
    message = str(exc)
    return ParseError(message if message.startswith(str(path)) else f"{path}: {message}")


def _read_feed_file(path: Path, outlet: str | None,
                    limits: ParseLimits) -> tuple[list[Article], SourceContext]:
    try:
        feed = parse_feed(_read_bytes(path), {}, None, limits=limits)
    except ParseError as exc:
        raise _with_name(path, exc) from None
    key = feed.link or f"file:{path.resolve()}"
    ctx = SourceContext(source_key=key, outlet=outlet or feed.title or _host(feed.link),
                        language=feed.language)
    return list(feed.articles), ctx


def _read_url(url: str, outlet: str | None, fetcher: Fetcher | None,
              limits: ParseLimits) -> tuple[list[Article], SourceContext]:
    if fetcher is None:
        from monitor.fetch import fetch_once
        fetcher = fetch_once
    result = fetcher(url)
    try:
        feed = parse_feed(result.content or b"", dict(result.headers), result.final_url or url,
                          limits=limits)
    except ParseError as exc:
        raise _with_name(url, exc) from None
    ctx = SourceContext(source_key=url, outlet=outlet or feed.title or _host(url),
                        language=feed.language)
    return list(feed.articles), ctx


def _read_article(path: Path, outlet: str | None,
                  limits: ParseLimits) -> tuple[list[Article], SourceContext]:
    meta = read_sidecar(path)
    try:
        article = parse_article(_read_bytes(path), name=str(path), meta=meta, limits=limits)
    except ParseError as exc:
        raise _with_name(path, exc) from None
    ctx = SourceContext(source_key="articles", outlet=outlet or path.stem)
    return [article], ctx


def read_sidecar(path: Path) -> dict[str, str]:
    """The metadata beside an article (``NAME.meta.toml``), validated."""
    sidecar = path.with_name(path.name + SIDECAR)
    if not sidecar.exists():
        return {}
    try:
        raw = tomllib.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SourceError(f"{sidecar}: cannot read metadata: {exc}") from None
    unknown = sorted(set(raw) - SIDECAR_KEYS)
    if unknown:
        raise SourceError(f"{sidecar}: unknown key(s) {', '.join(unknown)}; "
                          f"allowed: {', '.join(sorted(SIDECAR_KEYS))}")
    return {k: _meta_value(sidecar, k, v) for k, v in raw.items()}


def _meta_value(sidecar: Path, key: str, value: object) -> str:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        return value
    raise SourceError(f"{sidecar}: {key} must be a string or a date")


def _host(url: str | None) -> str | None:
    return urlsplit(url).hostname if url else None
