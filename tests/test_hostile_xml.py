"""Hostile XML through the parse stage, a real backfill and a real poll: no entity expands,
nothing is read from disk or the network, time and memory stay bounded, and every case ends
in a clear outcome (a ParseError, or a feed cut at the documented limits)."""

from __future__ import annotations

import json
import re
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from monitor.errors import ParseError
from monitor.models import ItemRow
from monitor.parse import (
    MAX_AUTHOR_CHARS,
    MAX_ITEMS,
    MAX_SUMMARY_CHARS,
    MAX_TEXT_CHARS,
    MAX_TITLE_CHARS,
    MAX_URL_CHARS,
    parse_feed,
)
from monitor.types import Article, ParsedFeed
from tests.conftest import Invoke
from tests.httpserver import LoopbackServer, Reply
from tests.pollkit import feed_id, item_counts, poller_for, rows, write_config

MIB = 1024 * 1024
# Text that must never show up in a result: it only appears if an entity was expanded
# or an external resource was read.
LEAKS = ("lollollol", "root:x:0:0", "FETCHED-BY-PARSER", "A" * 1000)


# --- the hostile documents -----------------------------------------------------------------

def rss(items: str, prolog: str = "", declaration: str = '<?xml version="1.0"?>') -> bytes:
    return (f'{declaration}\n{prolog}\n<rss version="2.0"><channel><title>Hostile</title>'
            f"<link>https://hostile.example/</link>{items}</channel></rss>").encode()


def laughs(first: str = "") -> str:
    """Ten levels of ten: a billion "lol"s from a few hundred bytes."""
    levels = [f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10)]
    return "<!DOCTYPE rss [\n" + first + '<!ENTITY lol0 "lol">\n' + "\n".join(levels) + "\n]>"


LAUGH_ITEM = "<item><title>Laughs &lol9;</title><description>&lol9;</description></item>"
# feedparser keeps "safe" declarations and drops the rest, but it stops reading the DTD at
# the first "<" followed by a letter: an entity value holding "<b>" hides all the others.
HIDE = '<!ENTITY hide "<b>">\n'


def billion_laughs(_trap: str) -> bytes:
    return rss(LAUGH_ITEM, laughs())


def billion_laughs_hidden(_trap: str) -> bytes:
    return rss(LAUGH_ITEM, laughs(HIDE))


def billion_laughs_utf16(_trap: str) -> bytes:
    return rss(LAUGH_ITEM, laughs(HIDE)).decode().replace(
        'version="1.0"?>', 'version="1.0" encoding="utf-16"?>', 1).encode("utf-16")


def billion_laughs_utf7(_trap: str) -> bytes:
    body = rss(LAUGH_ITEM, laughs(HIDE), declaration="").decode()
    return b'<?xml version="1.0" encoding="utf-7"?>' + body.encode("utf-7")


def quadratic_blowup(_trap: str) -> bytes:
    """One 100 kB entity referenced 50,000 times: 5 GB of text from 250 kB."""
    prolog = f'<!DOCTYPE rss [\n{HIDE}<!ENTITY a "{"A" * 100_000}">\n]>'
    return rss(f"<item><title>Blowup</title><description>{'&a;' * 50_000}</description></item>",
               prolog)


def external_file(_trap: str) -> bytes:
    prolog = f'<!DOCTYPE rss [\n{HIDE}<!ENTITY xxe SYSTEM "file:///etc/passwd">\n]>'
    return rss("<item><title>File &xxe; here</title><description>&xxe;</description></item>",
               prolog)


def external_url(trap: str) -> bytes:
    prolog = f'<!DOCTYPE rss [\n{HIDE}<!ENTITY xxe SYSTEM "{trap}/entity">\n]>'
    return rss("<item><title>URL &xxe; here</title><description>&xxe;</description></item>",
               prolog)


def external_dtd(trap: str) -> bytes:
    return rss("<item><title>DTD &ext; here</title></item>",
               f'<!DOCTYPE rss SYSTEM "{trap}/feed.dtd">')


def parameter_entity(trap: str) -> bytes:
    prolog = f'<!DOCTYPE rss [\n{HIDE}<!ENTITY % remote SYSTEM "{trap}/param.dtd">\n%remote;\n]>'
    return rss("<item><title>Parameter &ext; here</title></item>", prolog)


def unclosed_doctype(_trap: str) -> bytes:
    return rss("<item><title>x</title></item>", '<!DOCTYPE rss [ <!ENTITY a "' + " " * MIB)


def deep_nesting(_trap: str) -> bytes:
    depth = 100_000
    return rss(f"<item><title>Deep</title><description>{'<x>' * depth}deep{'</x>' * depth}"
               "</description></item>")


def wide_element(_trap: str) -> bytes:
    attributes = " ".join(f'a{i}=">"' for i in range(200_000))
    return rss(f"<item><title>Wide</title><x {attributes}/></item>")


def many_attributes(_trap: str) -> bytes:
    """600 elements of 90 attributes: each element is allowed, their sum is not."""
    element = "<x " + " ".join(f'a{i}="v"' for i in range(90)) + "/>"
    return rss(f"<item><title>Attributes</title>{element * 600}</item>")


def many_items(_trap: str) -> bytes:
    return rss("".join(f"<item><title>Item {i} of many</title><link>https://hostile.example/"
                       f"{i}</link><guid>many-{i}</guid></item>" for i in range(100_000)))


def huge_fields(_trap: str) -> bytes:
    """A 10 MB title, summary and body, a 1 MB URL, GUID and author."""
    words = "word " * (2 * MIB)
    return rss(f"<item><title>{words}</title><description>{words}</description>"
               f"<author>{'x' * MIB}</author><link>https://hostile.example/{'a' * MIB}</link>"
               f"<guid>{'g' * MIB}</guid></item>")


def long_metadata(_trap: str) -> bytes:
    """Just past the database's columns: a 3,000-character URL, a 400-character author, a
    2,100-character GUID and a 100-character language."""
    return rss(f"<item><title>Long metadata</title><link>https://hostile.example/{'u' * 3000}"
               f"</link><guid>{'g' * 2100}</guid><dc:creator>{'Name ' * 80}</dc:creator>"
               f"</item>").replace(b'version="2.0"',
                                   b'version="2.0" xmlns:dc="http://purl.org/dc/elements/1.1/"'
                                   ).replace(b"<channel>", b"<channel><language>"
                                             + b"x" * 100 + b"</language>")


def nul_bytes(_trap: str) -> bytes:
    return rss("<item><title>Nul\x00byte</title></item>")


def nul_references(_trap: str) -> bytes:
    """NUL and control characters by reference: the loose parser lets them through."""
    return rss("<item><title>Nul &#0; ref</title><guid>nul&#0;&#1;guid</guid>"
               "<link>https://hostile.example/a&#0;b</link><author>x&#0;y</author></item>")


def late_nul_bytes(_trap: str) -> bytes:
    filler = "".join(f"<item><title>Filler item {i}</title></item>" for i in range(400))
    return rss(filler + "<item><title>Late\x00nul</title></item>")


def unknown_encoding(_trap: str) -> bytes:
    return rss("<item><title>CafXX unknown</title></item>",
               declaration='<?xml version="1.0" encoding="x-no-such-codec"?>'
               ).replace(b"XX", b"\xe9")


def mixed_encoding(_trap: str) -> bytes:
    """UTF-8 in the title, cp1252 and bytes invalid in both in the description."""
    return rss("<item><title>Café mixed</title><description>cafXX</description></item>",
               declaration='<?xml version="1.0" encoding="utf-8"?>'
               ).replace(b"XX", b"\xe9 \x81\xff")


Build = Callable[[str], bytes]


@dataclass(frozen=True)
class Case:
    """A hostile document and what the parse stage must make of it."""

    build: Build
    refused: str | None = None  # a part of the ParseError message; None: parsed
    items: int = 1

    @property
    def name(self) -> str:
        return self.build.__name__.replace("_", "-")


CASES = (
    Case(billion_laughs), Case(billion_laughs_hidden), Case(billion_laughs_utf16),
    Case(billion_laughs_utf7), Case(quadratic_blowup), Case(external_file), Case(external_url),
    Case(external_dtd), Case(parameter_entity),
    Case(unclosed_doctype, refused="unreadable document type declaration"),
    Case(deep_nesting, refused="XML elements, more than the limit"),
    Case(wide_element, refused="more than 100 attributes"),
    Case(many_attributes, refused="more XML attributes than the limit"),
    Case(many_items, items=MAX_ITEMS), Case(huge_fields), Case(long_metadata),
    Case(nul_bytes, refused="binary content"), Case(nul_references),
    Case(late_nul_bytes, items=401),
    Case(unknown_encoding), Case(mixed_encoding),
)


# --- the parse stage ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trap() -> Iterator[LoopbackServer]:
    """A server that logs every request: a hostile document must never make one."""
    with LoopbackServer() as server:
        for path in ("/entity", "/feed.dtd", "/param.dtd"):
            server.route(path, Reply(body=b'<!ENTITY ext "FETCHED-BY-PARSER">'))
        yield server


@dataclass(frozen=True)
class Run:
    feed: ParsedFeed | None
    error: str | None
    seconds: float
    peak: int


def _parse(content: bytes) -> tuple[ParsedFeed | None, str | None]:
    try:
        return parse_feed(content, {}, "https://hostile.example/feed"), None
    except ParseError as exc:
        return None, str(exc)


def measured(content: bytes) -> Run:
    """parse_feed on ``content``: its outcome and time, then its peak of Python memory in a
    second, traced run (tracing slows allocation-heavy code several times)."""
    start = time.perf_counter()
    feed, error = _parse(content)
    seconds = time.perf_counter() - start
    tracemalloc.start()
    try:
        _parse(content)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return Run(feed, error, seconds, peak)


def assert_within_limits(article: Article) -> None:
    fields = (article.title, article.summary, article.text, article.author or "",
              article.url or "", article.guid or "")
    assert not [leak for leak in LEAKS for text in fields if leak in text]
    assert len(article.title) <= MAX_TITLE_CHARS
    assert len(article.summary) <= MAX_SUMMARY_CHARS
    assert len(article.text) <= MAX_TEXT_CHARS
    assert len(article.author or "") <= MAX_AUTHOR_CHARS
    assert len(article.url or "") <= MAX_URL_CHARS
    assert len(article.guid or "") <= 2048
    assert not re.search(r"[\x00-\x1f\x7f]", "".join(fields).replace("\n", ""))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_hostile_document_is_parsed_safely_or_refused(case: Case,
                                                      trap: LoopbackServer) -> None:
    """Nothing expands or is fetched; under 3 s and 64 MiB + 8x the input; a clear outcome."""
    content = case.build(trap.url("").rstrip("/"))
    run = measured(content)
    assert run.seconds < 3.0, f"{run.seconds:.2f} s"
    assert run.peak < 64 * MIB + 8 * len(content), f"{run.peak / MIB:.0f} MiB"
    assert trap.requests() == []
    if case.refused is not None:
        assert run.error is not None and case.refused in run.error, run.error
        return
    assert run.feed is not None, run.error
    assert len(run.feed.articles) == case.items
    for article in run.feed.articles:
        assert_within_limits(article)


def test_laughs_stay_unexpanded_references() -> None:
    """The entity reference is read as text (or dropped), never as the billion "lol"s."""
    feed = parse_feed(billion_laughs_hidden(""))
    assert feed.articles[0].title in ("Laughs &lol9;", "Laughs")
    assert feed.warning and "undefined entity" in feed.warning


def test_long_fields_are_cut_at_the_limits() -> None:
    """Titles, summaries and authors end in "…" at their limits; a 1 MB URL is dropped and a
    1 MB GUID becomes its hash."""
    article = parse_feed(huge_fields("")).articles[0]
    assert len(article.title) <= MAX_TITLE_CHARS and article.title.endswith("…")
    assert len(article.summary) <= MAX_SUMMARY_CHARS and article.summary.endswith("…")
    assert article.author is not None and article.author.endswith("…")
    assert article.url is None
    assert article.guid is not None and article.guid.startswith("sha256:")


def test_many_items_keep_the_first_and_say_so() -> None:
    """A 100,000-item feed yields its first MAX_ITEMS items and a warning naming the rest."""
    feed = parse_feed(many_items(""))
    assert [a.guid for a in feed.articles[:2]] == ["many-0", "many-1"]
    assert feed.articles[-1].guid == f"many-{MAX_ITEMS - 1}"
    assert feed.warning and "99,000 entries after the first 1,000 ignored" in feed.warning


def test_encodings_are_read_not_crashed_on() -> None:
    """An unknown charset falls back to cp1252; bytes invalid in UTF-8 and cp1252 alike to
    ISO-8859-2 (which reads any byte), each with a warning."""
    unknown = parse_feed(unknown_encoding(""))
    mixed = parse_feed(mixed_encoding(""))
    assert unknown.articles[0].title == "Café unknown"
    assert unknown.warning and "parsed as windows-1252" in unknown.warning
    assert mixed.articles[0].summary.startswith("café")
    assert mixed.warning and "parsed as iso-8859-2" in mixed.warning


# --- a real backfill and a real poll -----------------------------------------------------------

def stored_items(database_url: str) -> list[ItemRow]:
    engine = create_engine(database_url)
    try:
        with Session(engine) as session:
            return list(session.scalars(select(ItemRow)))
    finally:
        engine.dispose()


def assert_stored_within_limits(items: list[ItemRow]) -> None:
    for item in items:
        texts = (item.title, item.summary, item.text, item.url or "", item.canonical_url or "",
                 item.author or "", item.guid)
        assert not [leak for leak in LEAKS for text in texts if leak in text], item.title
        assert len(item.title) <= MAX_TITLE_CHARS and len(item.summary) <= MAX_SUMMARY_CHARS
        assert len(item.text) <= MAX_TEXT_CHARS and len(item.url or "") <= MAX_URL_CHARS


def test_backfill_of_hostile_files(monitor: Invoke, database_url: str, tmp_path: Path,
                                   trap: LoopbackServer) -> None:
    """Each refused file gets one error line naming its limit; the rest are stored within
    the limits, with nothing expanded or fetched, in bounded time."""
    base = trap.url("").rstrip("/")
    paths = {case.name: tmp_path / f"{case.name}.xml" for case in CASES}
    for case in CASES:
        paths[case.name].write_bytes(case.build(base))
    start = time.perf_counter()
    result = monitor("backfill", "--json", str(tmp_path))
    assert time.perf_counter() - start < 60
    assert result.exit_code == 1, result.output
    sources = {s["source"]: s for s in json.loads(result.stdout)["sources"]}
    for case in CASES:
        source = sources[str(paths[case.name])]
        error, read = source["error"], source["new"] + sum(source["duplicates"].values())
        assert (error is None) == (case.refused is None), (case.name, error)
        assert case.refused is None or case.refused in error
        assert case.refused is not None or read == case.items, (case.name, read)
    assert_stored_within_limits(stored_items(database_url))
    assert trap.requests() == []


def test_poll_of_hostile_feeds(tmp_path: Path, database_url: str,
                               trap: LoopbackServer) -> None:
    """One cycle over every hostile feed: refused ones are an error on their row, the rest
    are stored within the limits, only the feeds themselves are requested."""
    base = trap.url("").rstrip("/")
    with LoopbackServer() as server:
        urls = {case.name: server.route(f"/{case.name}", Reply(
            body=case.build(base), headers={"Content-Type": "application/rss+xml"}))
            for case in CASES}
        config = write_config(tmp_path / "c.toml", [{"url": u} for u in urls.values()],
                              max_body_mib=32, total_deadline=30, read_timeout=10)
        with poller_for(config, database_url) as poller:
            start = time.perf_counter()
            outcomes = {o.url: o for o in poller.cycle()}
            assert time.perf_counter() - start < 90
            states, counts = rows(poller.sessions), item_counts(poller.sessions)
            for case in CASES:
                row = states[feed_id(poller.sessions, urls[case.name])]
                assert outcomes[urls[case.name]].failed == (case.refused is not None), case.name
                if case.refused is not None:
                    assert row.error_count == 1 and case.refused in (row.last_error or "")
                else:
                    assert counts.get(row.id, 0) >= 1, case.name
            assert counts[feed_id(poller.sessions, urls["many-items"])] == MAX_ITEMS
        assert sorted(r.path for r in server.requests()) == sorted(f"/{c.name}" for c in CASES)
    assert_stored_within_limits(stored_items(database_url))
    assert trap.requests() == []
