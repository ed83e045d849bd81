"""Hostile servers at the poll level: one real poll cycle against loopback servers in which
every hostile feed is refused or cut at a documented limit and recorded on its own row,
while the good feeds of the same cycle are stored as usual; and the per-feed caps
(``fetch.max_items_per_poll``, ``feeds.max_items_per_poll``, ``[limits]``) as configured.

Cases already covered by a real poll cycle elsewhere are not repeated here:
tests/test_poll.py (redirect loop, redirect to ftp:, slow drip against the total
deadline, a 3 MiB stream and a 10 MiB gzip bomb against a 1 MiB cap, truncated XML, wrong
charset header) and tests/test_hostile_xml.py (NUL bytes, unknown and mixed encodings,
100,000 items at the default cap, 10 MB fields and a 1 MB URL at the default limits)."""

from __future__ import annotations

import gzip
import struct
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from monitor import config, parse
from monitor.errors import ConfigError, FetchError
from monitor.fetch import FetchLimits, TransportName, fetch_once
from monitor.models import ItemRow
from tests import httpserver
from tests.conftest import Invoke
from tests.httpserver import LoopbackServer, Reply
from tests.pollkit import feed_id, item_counts, poller_for, rows, rss, write_config

MIB = 1024 * 1024
GIB = 1024 * MIB
CAP_MIB = 16  # fetch.max_body_mib of the cycle: room for the 100,000-item feed (~10 MB)
ITEMS_CAP, FEED_ITEMS_CAP = 50, 7  # fetch.max_items_per_poll, and one feed's override
LIMITS = {"max_title_chars": 80, "max_summary_chars": 300, "max_text_chars": 1000,
          "max_author_chars": 20}
MAX_REDIRECTS = 5


# --- hostile bodies, built without holding what they expand to --------------------------------


def gzip_bomb(size: int) -> bytes:
    """A valid gzip stream of ``size`` zero bytes (a multiple of 1 MiB), about 1,000 times
    smaller: one fully flushed deflate run of 1 MiB repeated, so it never exists inflated."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflate.compress(bytes(MIB))
    deflate.flush(zlib.Z_FULL_FLUSH)
    run = deflate.compress(bytes(MIB)) + deflate.flush(zlib.Z_FULL_FLUSH)  # no back-reference
    crc = 0
    for _ in range(size // MIB):
        crc = zlib.crc32(bytes(MIB), crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    trailer = struct.pack("<II", crc, size & 0xFFFFFFFF)
    return header + run * (size // MIB) + deflate.flush(zlib.Z_FINISH) + trailer


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return gzip_bomb(GIB)


def many_items(name: str, count: int = 100_000) -> bytes:
    items = "".join(f"<item><title>{name} item {i}</title><link>https://{name}.example/{i}"
                    f"</link><guid>{name}-{i}</guid></item>" for i in range(count))
    return (f'<?xml version="1.0"?><rss version="2.0"><channel><title>{name}</title>'
            f"<link>https://{name}.example/</link>{items}</channel></rss>").encode()


def huge_fields() -> bytes:
    """A 10 MB title, a 1 MB summary, author, URL and GUID, in one item."""
    return (f'<?xml version="1.0"?><rss version="2.0"><channel><title>Huge</title>'
            f"<link>https://huge.example/</link><item><title>{'headline ' * (10 * MIB // 9)}"
            f"</title><description>{'summary ' * (MIB // 8)}</description>"
            f"<author>{'author ' * (MIB // 7)}</author>"
            f"<link>https://huge.example/{'u' * MIB}</link><guid>{'g' * MIB}</guid>"
            "</item></channel></rss>").encode()


class Sent:
    """Counts the bytes the loopback server generates for ``Reply(stream_size=...)``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bytes = 0
        self._lock = threading.Lock()
        real = httpserver._zeros

        def counted(size: int) -> Iterator[bytes]:
            for chunk in real(size):
                with self._lock:
                    self.bytes += len(chunk)
                yield chunk

        monkeypatch.setattr(httpserver, "_zeros", counted)


# --- the cycle ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A feed of the cycle: its routes, the outcome, the error on its row, its items."""

    name: str
    routes: Mapping[str, Reply]
    status: str = "error"
    error: str | None = None
    items: int = 0
    feed: Mapping[str, Any] = field(default_factory=dict)


def cases(server: LoopbackServer, other: LoopbackServer, bomb: bytes) -> list[Case]:
    chain = {f"/endless/{i}": Reply.redirect(f"/endless/{i + 1}", 302) for i in range(100)}
    moved = other.route("/moved", Reply(body=rss("moved", 2)))
    lent = other.route("/lent", Reply(body=rss("lent", 2)))
    stacked = gzip.compress(bomb)  # about 4 kB: gzip, gzip inflates to 1 GiB
    return [
        Case("ok", {"/ok": Reply(body=rss("okfeed", 3))}, "ok", items=3),
        Case("also-ok", {"/also-ok": Reply(body=rss("alsook", 2), gzip=True)}, "ok", items=2),
        Case("gigabyte", {"/gigabyte": Reply(stream_size=GIB)},
             error=f"body larger than {CAP_MIB} MiB"),
        Case("gzip-bomb", {"/gzip-bomb": Reply(body=bomb, chunked=True,
                                               headers={"Content-Encoding": "gzip"})},
             error=f"body larger than {CAP_MIB} MiB"),
        Case("stacked-gzip-bomb", {"/stacked-gzip-bomb": Reply(
            body=stacked, headers={"Content-Encoding": "gzip, gzip"})},
             error="stacked Content-Encoding (gzip, gzip) refused"),
        Case("brotli", {"/brotli": Reply(body=b"\x1b\xff\xff" * 100,
                                         headers={"Content-Encoding": "br"})},
             error="Content-Encoding 'br' refused"),  # decoded unbounded, if at all
        Case("endless", {"/endless": Reply.redirect("/endless/0", 301), **chain},
             error=f"too many redirects (more than {MAX_REDIRECTS})"),
        Case("to-file", {"/to-file": Reply.redirect("file:///etc/passwd")},
             error="redirect to unsupported scheme 'file'"),
        Case("to-data", {"/to-data": Reply.redirect("data:application/rss+xml,<rss/>")},
             error="redirect to unsupported scheme 'data'"),
        Case("to-javascript", {"/to-javascript": Reply.redirect("javascript:alert(1)")},
             error="redirect to unsupported scheme 'javascript'"),
        Case("to-broken-ipv6", {"/to-broken-ipv6": Reply.redirect("http://[::1/feed")},
             error="redirect to an invalid URL"),
        # Another port of the same loopback address is another http origin: followed.
        Case("lent-to-other-port", {"/lent-to-other-port": Reply.redirect(lent, 302)}, "ok",
             items=2),
        Case("moved-to-other-port", {"/moved-to-other-port": Reply.redirect(moved, 301)}, "ok",
             items=2),
        Case("many-items", {"/many-items": Reply(body=many_items("many"))}, "ok",
             items=ITEMS_CAP),
        Case("many-items-capped", {"/many-items-capped": Reply(body=many_items("capped"))},
             "ok", items=FEED_ITEMS_CAP, feed={"max_items_per_poll": FEED_ITEMS_CAP}),
        Case("huge-fields", {"/huge-fields": Reply(body=huge_fields())}, "ok", items=1),
    ]


def write(tmp_path: Path, feeds: list[dict[str, Any]]) -> Path:
    path = write_config(tmp_path / "config.toml", feeds, max_body_mib=CAP_MIB,
                        max_redirects=MAX_REDIRECTS, max_items_per_poll=ITEMS_CAP,
                        total_deadline=10, read_timeout=5)
    with path.open("a", encoding="utf-8") as extra:
        extra.write("\n[limits]\n" + "".join(f"{k} = {v}\n" for k, v in LIMITS.items()))
    return path


def stored(database_url: str, where: Any = None) -> list[ItemRow]:
    engine = create_engine(database_url)
    try:
        with Session(engine) as session:
            query = select(ItemRow) if where is None else select(ItemRow).where(where)
            return list(session.scalars(query.order_by(ItemRow.id)))
    finally:
        engine.dispose()


Check = Callable[[str], None]


def check(case: Case, outcome: Any, row: Any, items: int, fail: Check) -> None:
    if outcome is None or outcome.status != case.status:
        fail(f"outcome {outcome}")
    if case.error is None and (row.error_count, row.status) != (0, "active"):
        fail(f"should be healthy: {row.error_count} {row.last_error!r}")
    if case.error is not None and (row.error_count != 1 or case.error not in (
            row.last_error or "")):
        fail(f"row: {row.error_count} errors, last {row.last_error!r}")
    if "internal error" in (row.last_error or ""):
        fail(f"a crash, not a refusal: {row.last_error!r}")
    if items != case.items:
        fail(f"{items} items stored, not {case.items}")


def test_hostile_servers_in_one_cycle(tmp_path: Path, database_url: str, bomb: bytes,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Each hostile feed ends as an error on its row or cut at its cap, the good feeds of
    the same cycle are stored, and the 1 GiB stream stops near the cap."""
    sent = Sent(monkeypatch)
    with LoopbackServer() as server, LoopbackServer() as other:
        table = cases(server, other, bomb)
        for case in table:
            for path, reply in case.routes.items():
                server.route(path, reply)
        urls = {c.name: server.url(f"/{c.name}") for c in table}
        path = write(tmp_path, [{"url": urls[c.name], **c.feed} for c in table])
        with poller_for(path, database_url) as poller:
            started = time.monotonic()
            outcomes = {o.url: o for o in poller.cycle()}
            elapsed = time.monotonic() - started
            states, counts = rows(poller.sessions), item_counts(poller.sessions)
            ids = {c.name: feed_id(poller.sessions, urls[c.name]) for c in table}
        chain_requests = len([r for r in server.requests() if r.path.startswith("/endless")])
        moved_to = other.url("/moved")
    problems: list[str] = []
    for case in table:
        def fail(message: str, name: str = case.name) -> None:
            problems.append(f"{name}: {message}")

        row = states[ids[case.name]]
        check(case, outcomes.get(urls[case.name]), row, counts.get(row.id, 0), fail)
    assert not problems, "\n".join(problems)
    assert elapsed < 45, elapsed
    # The 1 GiB body: the client hung up a little past the cap (socket buffers aside).
    assert CAP_MIB * MIB < sent.bytes < CAP_MIB * MIB + 48 * MIB, sent.bytes / MIB
    assert chain_requests == MAX_REDIRECTS + 1
    assert states[ids["moved-to-other-port"]].url == moved_to  # 301: moved
    assert states[ids["lent-to-other-port"]].url == urls["lent-to-other-port"]  # 302: not
    assert_capped(database_url, ids)


def assert_capped(database_url: str, ids: Mapping[str, int]) -> None:
    """The capped feeds kept their first items; the huge one its fields cut at [limits]."""
    many = stored(database_url, ItemRow.feed_id == ids["many-items"])
    # (A GUID that is not a URL is a permalink relative to the feed, so it reads as one.)
    assert [i.guid.rpartition("/")[2] for i in many] == [f"many-{n}" for n in range(ITEMS_CAP)]
    capped = stored(database_url, ItemRow.feed_id == ids["many-items-capped"])
    assert [i.guid.rpartition("/")[2] for i in capped] == [
        f"capped-{n}" for n in range(FEED_ITEMS_CAP)]
    (huge,) = stored(database_url, ItemRow.feed_id == ids["huge-fields"])
    assert len(huge.title) <= LIMITS["max_title_chars"] and huge.title.endswith("…")
    assert len(huge.summary) <= LIMITS["max_summary_chars"] and huge.summary.endswith("…")
    assert len(huge.text) <= LIMITS["max_text_chars"]
    assert huge.author is not None and len(huge.author) <= LIMITS["max_author_chars"]
    assert huge.url is None and huge.guid.startswith("sha256:")


# --- the same refusals at the fetch stage, on both transports ----------------------------------


@pytest.mark.parametrize("transport", ["httpx", "aiohttp"])
def test_stacked_encodings_are_refused_before_inflating(bomb: bytes,
                                                       transport: TransportName) -> None:
    """gzip over gzip would inflate 1 GiB in one decoder step (the 1 KiB slices bound one
    layer only): it is refused from the headers, in a few MiB of memory."""
    with LoopbackServer() as server:
        url = server.route("/bomb", Reply(body=gzip.compress(bomb),
                                          headers={"Content-Encoding": "gzip, gzip"}))
        tracemalloc.start()
        try:
            with pytest.raises(FetchError, match=r"stacked Content-Encoding \(gzip, gzip\)"):
                fetch_once(url, limits=FetchLimits(max_body=MIB), transport=transport)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 32 * MIB, peak / MIB


@pytest.mark.parametrize("transport", ["httpx", "aiohttp"])
def test_redirect_to_a_broken_url_is_a_fetch_error(transport: TransportName) -> None:
    """A Location that urlsplit cannot read (an unclosed IPv6 bracket) is a FetchError, not
    a ValueError escaping to the caller (backfill of a URL, feeds check)."""
    with LoopbackServer() as server:
        url = server.route("/r", Reply.redirect("http://[::1/feed", 302))
        with pytest.raises(FetchError, match="redirect to an invalid URL"):
            fetch_once(url, transport=transport)


# --- the caps in backfill and in the configuration -----------------------------------------


def test_configured_caps_apply_to_backfill(monitor: Invoke, database_url: str,
                                           tmp_path: Path) -> None:
    """A backfilled feed file and article file are cut at the configured [limits] too."""
    sources = tmp_path / "sources"
    sources.mkdir()
    (sources / "huge.xml").write_bytes(huge_fields())
    (sources / "long.md").write_text(
        "---\nauthor: " + "Writer " * 50 + "\noutlet: Files\n---\n"
        + "A headline that goes on " * 20 + "\n\n" + "Body text of the article. " * 500,
        encoding="utf-8")
    path = write(tmp_path, [])
    result = monitor("backfill", "--json", str(sources), config=path)
    assert result.exit_code == 0, result.output
    items = stored(database_url)
    assert len(items) == 2
    for item in items:
        assert len(item.title) <= LIMITS["max_title_chars"], item.title
        assert len(item.summary) <= LIMITS["max_summary_chars"]
        assert len(item.text) <= LIMITS["max_text_chars"] and item.text.endswith("…")
        assert item.author is not None and len(item.author) <= LIMITS["max_author_chars"]


def test_caps_are_validated_with_their_key_paths(tmp_path: Path) -> None:
    """A cap must be a positive integer no larger than the built-in limit, everywhere."""
    path = tmp_path / "config.toml"
    path.write_text('[fetch]\nmax_items_per_poll = 1001\n[limits]\nmax_title_chars = 501\n'
                    'max_summary_chars = 0\nmax_author_chars = "20"\nmax_words = 3\n'
                    '[[feeds]]\nurl = "https://a.example/rss"\nmax_items_per_poll = 0\n',
                    encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        config.load(path, environ={})
    text = str(caught.value)
    for fragment in ("fetch.max_items_per_poll: must be at most 1,000",
                     "limits.max_title_chars: must be at most 500",
                     "limits.max_summary_chars: must be > 0",
                     "limits.max_author_chars: must be an integer",
                     "limits.max_words: unknown key",
                     "feeds[0].max_items_per_poll: must be > 0"):
        assert fragment in text, fragment


def test_caps_default_to_the_parse_stage_limits(tmp_path: Path) -> None:
    """The defaults are the parse stage's built-in limits, and limits_for applies a
    configured cap and a feed's item cap."""
    assert config.CEILINGS == {"max_title_chars": parse.MAX_TITLE_CHARS,
                               "max_summary_chars": parse.MAX_SUMMARY_CHARS,
                               "max_text_chars": parse.MAX_TEXT_CHARS,
                               "max_author_chars": parse.MAX_AUTHOR_CHARS}
    assert config.MAX_ITEMS_PER_POLL == parse.MAX_ITEMS
    assert parse.limits_for(config.LimitSettings()) == parse.DEFAULT_LIMITS
    settings = config.load(write(tmp_path, [{"url": "https://a.example/rss",
                                             "max_items_per_poll": 3}]), environ={})
    assert settings.feeds[0].max_items_per_poll == 3
    limits = parse.limits_for(settings.limits, 3)
    assert (limits.max_items, limits.max_title_chars, limits.max_author_chars) == (3, 80, 20)
    assert "limits" in settings.describe()
