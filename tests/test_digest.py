"""The daily digest: content, safety, and delivery exactly once against a real SMTP server
(aiosmtpd on 127.0.0.1, started by the tests)."""

from __future__ import annotations

import re
import socket
import tempfile
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from monitor import config, db, digest, digest_job, mailer, store
from monitor.config import Settings, Topic
from monitor.models import DigestAttemptRow, DigestSentRow, ItemRow, StoryRow
from monitor.store import DigestItem, DigestStory, FeedHealth
from tests.conftest import CONFIG, SEEDS, Invoke

if TYPE_CHECKING:
    from tests.smtpserver import SmtpFactory


DAY = "2025-08-21"
TOKYO = ZoneInfo("Asia/Tokyo")


def _config_in(timezone: str) -> Path:
    """The shipped config.toml with the digest sent in ``timezone`` (these tests pin it)."""
    folder = Path(tempfile.mkdtemp(prefix="monitor-digest-config-"))
    path = folder / "config.toml"
    path.write_text(re.sub(r'(?m)^timezone = .*$', f'timezone = "{timezone}"',
                           CONFIG.read_text(encoding="utf-8")), encoding="utf-8")
    return path


TOKYO_CONFIG = _config_in("Asia/Tokyo")
PAYLOAD = ('<script>alert("x")</script> <a href="javascript:alert(1)">click</a> '
           '&amp; &lt;b&gt;bold&lt;/b&gt; &#60;script&#62; ')
LONG = PAYLOAD + "A" * 10_000


# --- helpers ---------------------------------------------------------------------------


def closed_port() -> int:
    """A loopback port nothing listens on: the SMTP server is down."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _sessions(database_url: str) -> sessionmaker[Session]:
    engine = db.make_engine(database_url)
    db.ensure_schema(engine)
    return db.session_factory(engine)


def _count(database_url: str, model: type) -> int:
    with _sessions(database_url)() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def _parts(message: EmailMessage) -> tuple[str, str]:
    """The plain-text and HTML parts of a multipart/alternative message."""
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    return str(text.get_content()), str(html.get_content())


class _Tags(HTMLParser):
    """Every tag and attribute of an HTML document, and its text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        if self.tags and self.tags[-1][0] != "style":
            self.text.append(data)


SAFE_TAGS = {"html", "head", "meta", "title", "style", "body", "div", "h1", "h2", "h3", "p",
             "span", "strong", "ul", "li", "a", "br", "code"}


def _assert_safe_html(html: str) -> _Tags:
    """No script, no remote resource, no event handler; every link http(s)."""
    parsed = _Tags()
    parsed.feed(html)
    assert {tag for tag, _ in parsed.tags} <= SAFE_TAGS
    for tag, attrs in parsed.tags:
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
        assert "src" not in attrs
        if tag == "a":
            assert re.match(r"https?://", attrs.get("href") or ""), attrs
    assert not re.search(r"<\s*script", html, re.I)
    return parsed


def _hrefs(html: str) -> list[str]:
    parsed = _Tags()
    parsed.feed(html)
    return [attrs.get("href") or "" for tag, attrs in parsed.tags if tag == "a"]


def _entries(text: str) -> list[str]:
    """The story entries of the text part (each starts with "* " under a topic)."""
    body = text.split("== Feed health ==")[0]
    return [e for e in re.split(r"\n(?=\* )", body) if e.startswith("* ")]


def _assert_one_story(text: str, html: str, outlets: dict[str, str]) -> None:
    """Exactly one entry names these outlets, with every outlet and language once."""
    entries = [e for e in _entries(text) if any(name in e for name in outlets)]
    assert len(entries) == 1, entries
    languages = ", ".join(sorted(set(outlets.values())))
    assert f"reported by {len(outlets)} outlets in {languages}" in entries[0]
    for name, language in outlets.items():
        assert f"{name} ({language})" in entries[0]
    assert html.count(f"reported by {len(outlets)} outlets in {languages}") == 1
    assert all(re.match(r"https?://", href) for href in _hrefs(html))


def _send(monitor: Invoke, url: str, *to: str, day: str = DAY, env: dict[str, str] | None = None,
          config_path: Path | str = TOKYO_CONFIG):  # type: ignore[no-untyped-def]
    recipients = [arg for address in to for arg in ("--to", address)]
    return monitor("digest", "--send", "--date", day, "--smtp-url", url, *recipients, env=env,
                   config=config_path)


def _rss(path: Path, outlet: str, language: str, title: str, link: str, body: str) -> Path:
    path.write_text(f"""<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0"><channel><title>{outlet}</title><link>https://example.org/</link>
<language>{language}</language>
<item><title>{title}</title><link>{link}</link><guid>{link}</guid>
<pubDate>Wed, 20 Aug 2025 12:00:00 +0000</pubDate><description>{body}</description></item>
</channel></rss>""", encoding="utf-8")
    return path


# --- the seeds, end to end -------------------------------------------------------------


def test_seed_digest_is_delivered_once_per_recipient(monitor: Invoke,
                                                     smtp_server: SmtpFactory) -> None:
    """Each recipient gets one multipart message with proper headers and only http(s) links."""
    server = smtp_server()
    assert monitor("backfill", str(SEEDS)).exit_code == 0
    result = _send(monitor, server.url(), "a@example.org", "b@example.org")
    assert result.exit_code == 0, result.output
    assert sorted(m.rcpt_tos[0] for m in server.messages) == ["a@example.org", "b@example.org"]
    for received in server.messages:
        message = received.message
        text, html = _parts(message)
        assert message["To"] == received.rcpt_tos[0]
        assert message["From"] == "monitor@localhost"
        assert parsedate_to_datetime(message["Date"]).tzinfo is not None
        assert message["Message-ID"].startswith("<digest.2025-08-21.")
        assert message["Subject"] == "monitor digest 2025-08-21: 1 story"
        assert "Japan seeks defense cooperation with Türkiye" in text
        assert "Japan seeks defense cooperation with Türkiye" in html
        _assert_safe_html(html)
    ids = {m.message["Message-ID"] for m in server.messages}
    assert len(ids) == 2


def test_seed_story_002_003_004_appears_once(monitor: Invoke, smtp_server: SmtpFactory) -> None:
    """The 002/003/004 story appears once with its three outlets and both languages."""
    server = smtp_server()
    monitor("backfill", str(SEEDS))
    assert _send(monitor, server.url(), "a@example.org", config_path=CONFIG).exit_code == 0
    text, html = _parts(server.messages[0].message)
    _assert_one_story(text, html, {"002_58a6c8d8ec398895": "en", "003_fad2442ff10ea89f": "en",
                                   "004_70b1c450042b8635": "nb"})


def test_story_of_three_outlets_in_two_languages_appears_once(
        monitor: Invoke, smtp_server: SmtpFactory, tmp_path: Path) -> None:
    """Three outlets with one wire text (one in Norwegian) make one entry; links are http(s)."""
    body = ("ANKARA/TOKYO 2025-08-19: Gen Nakatani, Yasar Guler; Baykar TB2, Akinci, "
            "Kizilelma; ACSL SOTEN; Terra Drone; MHI; KHI; IHI; SSB; ASELSAN; ROKETSAN; TUSAS.")
    feeds = [("Wire Desk", "en", "Japan weighs buying Turkish drones after minister visit"),
             ("Harbour Times", "en", "Tokyo and Ankara talk drones in first defence visit"),
             ("Fjordposten", "nb", "Japan vurderer tyrkiske droner etter ministerbesøk i Ankara")]
    for n, (outlet, language, title) in enumerate(feeds):
        _rss(tmp_path / f"{n}.xml", outlet, language, title,
             f"https://outlet{n}.example/news/{n}?utm_source=x", body)
    assert monitor("backfill", str(tmp_path)).exit_code == 0
    server = smtp_server()
    result = _send(monitor, server.url(), "a@example.org")
    assert result.exit_code == 0, result.output
    text, html = _parts(server.messages[0].message)
    _assert_one_story(text, html, {"Wire Desk": "en", "Harbour Times": "en", "Fjordposten": "nb"})
    assert len(_hrefs(html)) == 3
    assert "Fjordposten (nb, translation pending): Japan vurderer" in text


# --- safety ------------------------------------------------------------------------------


def _payload_digest() -> digest.Digest:
    seen = datetime(2025, 8, 20, 12, tzinfo=UTC)
    item = DigestItem(1, 1, LONG, "en", LONG, None, LONG, None, "javascript:alert(1)", seen,
                      "not_needed", ("<b>topic</b>",), True)
    other = replace(item, id=2, url="https://ok.example/" + "p" * 5000, outlet="<i>o</i>")
    feed = FeedHealth("javascript:alert(2)", None, LONG, "active", 3, LONG, seen)
    story = DigestStory(1, LONG, seen, seen, (item, other))
    window = digest.Window(seen - timedelta(days=1), seen + timedelta(hours=1))
    return digest.build_digest(date(2025, 8, 21), window, [story], [feed])


def test_hostile_feed_text_renders_safely_and_bounded() -> None:
    """<script>, javascript: links, entities and 10,000 characters stay inert and capped."""
    built = _payload_digest()
    text, html = digest.render_text(built), digest.render_html(built)
    parsed = _assert_safe_html(html)
    assert _hrefs(html) == []  # the javascript: URL and the 5,000-char URL are text only
    assert "&lt;script&gt;" in html  # shown as text, not dropped and not run
    assert "A" * (digest.TITLE_CHARS + 1) not in html + text
    assert len(html) < 30_000 and len(text) < 10_000
    longest = digest.NAME_CHARS + digest.TITLE_CHARS + digest.REASON_CHARS  # one line's fields
    assert max(len(line) for line in text.splitlines()) <= longest
    assert max(len(chunk) for chunk in parsed.text) <= longest
    assert "javascript:alert(1)" in text and "not a web link" in text


def test_hostile_feed_file_renders_safely_end_to_end(monitor: Invoke, tmp_path: Path) -> None:
    """A feed whose title, item and link are hostile yields a safe, bounded digest."""
    escaped = PAYLOAD.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    title = escaped + "A" * 10_000
    _rss(tmp_path / "evil.xml", title, "en", title, "javascript:alert(1)",
         f"<![CDATA[{PAYLOAD}<img src='http://evil.example/x.png' onerror='alert(1)'>"
         f"<script>alert(2)</script>{'B' * 10_000}]]>")
    assert monitor("backfill", str(tmp_path / "evil.xml")).exit_code == 0
    out = tmp_path / "digest.html"
    result = monitor("digest", "--dry-run", "--date", DAY, "--out", str(out))
    assert result.exit_code == 0, result.output
    html, text = out.read_text(encoding="utf-8"), result.stdout
    _assert_safe_html(html)
    assert "javascript:" not in "".join(_hrefs(html))
    assert "A" * (digest.TITLE_CHARS + 1) not in html + text
    assert "B" * (digest.SUMMARY_CHARS + 1) not in html + text
    assert len(html) < 30_000 and len(text) < 10_000


def test_feed_health_lists_failed_and_muted_feeds_with_reason(monitor: Invoke,
                                                               database_url: str,
                                                               tmp_path: Path) -> None:
    """Feeds that failed in the window or are muted are listed with why; others are not."""
    failed_at = _tokyo(20, 12)
    feeds = [config.Feed("https://ok.example/rss", outlet="Healthy"),
             config.Feed("https://down.example/rss", outlet="Down Daily"),
             config.Feed("https://gone.example/rss", outlet="Gone Gazette"),
             config.Feed("https://old.example/rss", outlet="Old Trouble"),
             config.Feed("https://evil.example/rss")]
    with db.transaction(_sessions(database_url)) as session:
        store.add_feeds(session, feeds, failed_at, 60)
        ids = {row.url: row.id for row in store.feed_rows(session)}
        store.update_feed(session, ids["https://down.example/rss"], error_count=3,
                          last_error="HTTP 503", last_error_at=failed_at)
        store.update_feed(session, ids["https://gone.example/rss"], status="muted", error_count=1,
                          last_error="HTTP 410 Gone", last_error_at=failed_at - timedelta(days=9))
        store.update_feed(session, ids["https://old.example/rss"], error_count=1,
                          last_error="timeout", last_error_at=failed_at - timedelta(days=3))
        store.update_feed(session, ids["https://evil.example/rss"], title=LONG[:500],
                          error_count=1, last_error=LONG, last_error_at=failed_at)
    out = tmp_path / "digest.html"
    result = monitor("digest", "--dry-run", "--date", DAY, "--out", str(out),
                     config=TOKYO_CONFIG)
    assert result.exit_code == 0, result.output
    health = result.stdout.split("== Feed health ==")[1]
    assert "* Down Daily: failing: HTTP 503 (3 failures in a row)" in health
    assert "* Gone Gazette: muted: HTTP 410 Gone" in health
    assert "Healthy" not in health and "Old Trouble" not in health
    html = out.read_text(encoding="utf-8")
    _assert_safe_html(html)
    assert "A" * (digest.REASON_CHARS + 1) not in html + health
    assert "Down Daily" in html and "HTTP 410 Gone" in html


def test_html_is_dark_mode_safe_and_narrow_friendly() -> None:
    """The HTML declares both color schemes, keeps a dark rule set, and has no fixed width."""
    html = digest.render_html(_payload_digest())
    assert '<meta name="color-scheme" content="light dark">' in html
    assert "@media (prefers-color-scheme: dark)" in html
    assert 'name="viewport"' in html and "max-width: 640px" in html
    assert not re.search(r"\bwidth\s*[:=]\s*\"?\d{3,}px", html.replace("max-width", ""))
    assert "overflow-wrap: anywhere" in html


# --- building: order, sections, translation ----------------------------------------------


def _item(item_id: int, story: int, outlet: str, language: str, title: str, *,
          topics: tuple[str, ...] = ("drones",), status: str = "not_needed",
          translated: str | None = None, hours: int = 0) -> DigestItem:
    seen = datetime(2025, 8, 20, 12, tzinfo=UTC) + timedelta(hours=hours)
    return DigestItem(item_id, story, outlet, language, title, translated, f"lead {title}",
                      f"lead {translated}" if translated else None,
                      f"https://{outlet.lower()}.example/{item_id}", seen, status, topics, True)


def _story(story_id: int, *items: DigestItem) -> DigestStory:
    seen = [i.seen for i in items]
    return DigestStory(story_id, items[0].title, min(seen), max(seen), items)


WINDOW = digest.Window(datetime(2025, 8, 19, 22, tzinfo=UTC), datetime(2025, 8, 20, 22, tzinfo=UTC))
TOPICS = (Topic("drones", ("drone*",), "Drone industry"), Topic("osa", ("OSA",), "OSA"))


def test_stories_rank_by_outlets_then_languages_then_recency() -> None:
    """More outlets first, then more languages, then the most recent."""
    wide = _story(1, _item(1, 1, "A", "en", "wide"), _item(2, 1, "B", "en", "wide b"),
                  _item(3, 1, "C", "en", "wide c"))
    bilingual = _story(2, _item(4, 2, "D", "en", "bi"),
                       _item(5, 2, "E", "nb", "to", status="done", translated="two"))
    recent = _story(3, _item(6, 3, "F", "en", "recent", hours=5), _item(7, 3, "G", "en", "r2"))
    older = _story(4, _item(8, 4, "H", "en", "older"), _item(9, 4, "I", "en", "o2"))
    built = digest.build_digest(date(2025, 8, 21), WINDOW, [older, recent, bilingual, wide], [],
                                topics=TOPICS)
    assert [s.headline for s in built.sections[0].stories] == ["wide", "bi", "recent", "older"]


def test_translated_story_shows_english_and_original_headline() -> None:
    """A story told only in Norwegian leads with its translation, the original beside it."""
    story = _story(1, _item(1, 1, "NRK", "nb", "Japan kjøper droner", status="done",
                            translated="Japan buys drones"))
    entry = digest.build_digest(date(2025, 8, 21), WINDOW, [story], []).sections[0].stories[0]
    assert (entry.headline, entry.original_headline) == ("Japan buys drones", "Japan kjøper droner")
    assert entry.original_language == "nb" and entry.summary == "lead Japan buys drones"
    assert entry.reported_by == "reported by 1 outlet in nb"
    text = digest.render_text(digest.build_digest(date(2025, 8, 21), WINDOW, [story], []))
    assert "Original (nb): Japan kjøper droner" in text


def test_pending_translation_shows_the_original_and_says_so() -> None:
    """An untranslated story shows its original headline, marked pending, and counts it."""
    story = _story(1, _item(1, 1, "NRK", "nb", "Japan kjøper droner", status="pending"))
    built = digest.build_digest(date(2025, 8, 21), WINDOW, [story], [])
    entry = built.sections[0].stories[0]
    assert entry.headline == "Japan kjøper droner" and entry.translation_pending
    assert built.counts == digest.Counts(1, 1, 1, 1, 0, 1)
    assert "(nb, translation pending)" in digest.render_text(built)


def test_one_section_per_topic_each_story_once() -> None:
    """A story matching two topics sits once, under the topic most of its items matched."""
    both = _story(1, _item(1, 1, "A", "en", "both", topics=("osa", "drones")),
                  _item(2, 1, "B", "en", "both b", topics=("osa",)))
    plain = _story(2, _item(3, 2, "C", "en", "none", topics=()))
    built = digest.build_digest(date(2025, 8, 21), WINDOW, [both, plain], [], topics=TOPICS)
    assert [(s.topic, [e.headline for e in s.stories]) for s in built.sections] == [
        ("osa", ["both"]), ("other", ["none"])]
    assert built.sections[0].stories[0].also_in == ("drones",)


def test_counts_cover_only_the_window() -> None:
    """Counts at the top: stories, new stories, new items, languages, translated, pending."""
    old = replace(_item(1, 1, "A", "en", "old", hours=-48), in_window=False)
    story = DigestStory(1, "old", old.seen, old.seen + timedelta(hours=48),
                        (old, _item(2, 1, "B", "nb", "ny", status="done", translated="new"),
                         _item(3, 1, "C", "ja", "新", status="pending")))
    counts = digest.build_digest(date(2025, 8, 21), WINDOW, [story], []).counts
    assert counts == digest.Counts(stories=1, new_stories=0, items=2, languages=2,
                                   translated=1, pending=1)


def test_send_time_and_due_day_follow_the_timezone() -> None:
    """07:00 in Tokyo is 22:00 UTC the day before; before it, yesterday's digest is the due one."""
    assert digest.send_time(date(2025, 8, 21), "07:00", "Asia/Tokyo") == datetime(
        2025, 8, 20, 22, tzinfo=UTC)
    before = datetime(2025, 8, 20, 21, 59, tzinfo=UTC)
    assert digest.latest_due_day(before, "07:00", "Asia/Tokyo") == date(2025, 8, 20)
    assert digest.latest_due_day(before + timedelta(minutes=1), "07:00",
                                 "Asia/Tokyo") == date(2025, 8, 21)


# --- the command -------------------------------------------------------------------------


def test_dry_run_prints_text_and_writes_nothing(monitor: Invoke, database_url: str) -> None:
    """--dry-run prints the text digest and leaves the database as it was."""
    monitor("backfill", str(SEEDS))
    before = [_count(database_url, m) for m in (ItemRow, StoryRow)]
    result = monitor("digest", "--dry-run", "--date", DAY)
    assert result.exit_code == 0, result.output
    assert "monitor digest for 2025-08-21" in result.stdout
    assert "1 story (0 new), 1 new item in 1 language" in result.stdout
    assert [_count(database_url, m) for m in (ItemRow, StoryRow)] == before
    assert _count(database_url, DigestSentRow) == _count(database_url, DigestAttemptRow) == 0
    both = monitor("digest", "--dry-run", "--send", "--date", DAY)
    assert both.exit_code == 2


def test_empty_digest_is_not_sent_unless_configured(monitor: Invoke, smtp_server: SmtpFactory,
                                                    tmp_path: Path) -> None:
    """Nothing new: not sent and exit 0; with digest.send_empty the same day is sent."""
    server = smtp_server()
    result = _send(monitor, server.url(), "a@example.org", day="2025-09-01")
    assert result.exit_code == 0 and "nothing new for 2025-09-01" in result.stdout
    assert server.messages == []
    eager = tmp_path / "config.toml"
    eager.write_text(TOKYO_CONFIG.read_text(encoding="utf-8").replace(
        "send_empty = false", "send_empty = true"), encoding="utf-8")
    assert _send(monitor, server.url(), "a@example.org", day="2025-09-01",
                 config_path=eager).exit_code == 0
    assert len(server.messages) == 1
    assert server.messages[0].message["Subject"] == "monitor digest 2025-09-01: 0 stories"


def test_twice_the_same_day_sends_once(monitor: Invoke, smtp_server: SmtpFactory,
                                       database_url: str) -> None:
    """A second --send for the same day sends nothing and says it was already sent."""
    server = smtp_server()
    monitor("backfill", str(SEEDS))
    assert _send(monitor, server.url(), "a@example.org").exit_code == 0
    again = _send(monitor, server.url(), "a@example.org")
    assert again.exit_code == 0 and "already sent the 2025-08-21 digest to a@example.org" in (
        again.stdout)
    assert len(server.messages) == 1
    assert _count(database_url, DigestSentRow) == 1


def _one_line_error(result) -> str:  # type: ignore[no-untyped-def]
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return str(lines[0])


def test_server_down_fails_cleanly_then_sends(monitor: Invoke, smtp_server: SmtpFactory,
                                              database_url: str) -> None:
    """SMTP down: exit 1 with one line, nothing marked sent; the next run sends it."""
    monitor("backfill", str(SEEDS))
    down = _send(monitor, f"smtp://127.0.0.1:{closed_port()}?tls=none", "a@example.org")
    line = _one_line_error(down)
    assert line.startswith("monitor: digest 2025-08-21 not delivered to a@example.org: SMTP ")
    assert "connection refused" in line
    assert _count(database_url, DigestSentRow) == 0
    server = smtp_server()
    assert _send(monitor, server.url(), "a@example.org").exit_code == 0
    assert len(server.messages) == 1 and _count(database_url, DigestSentRow) == 1


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_rejected_auth_fails_cleanly_then_sends(monitor: Invoke, smtp_server: SmtpFactory,
                                                database_url: str) -> None:
    """Wrong password: one line without the password, nothing sent; the right one sends."""
    monitor("backfill", str(SEEDS))
    server = smtp_server(users={"digest": "s3cret-right"})
    url = server.url(user="digest")
    rejected = _send(monitor, url, "a@example.org", env={"MONITOR_SMTP_PASSWORD": "s3cret-wrong"})
    line = _one_line_error(rejected)
    assert "authentication rejected (535" in line
    assert "s3cret" not in rejected.output
    assert _count(database_url, DigestSentRow) == 0 and server.messages == []
    ok = _send(monitor, url, "a@example.org", env={"MONITOR_SMTP_PASSWORD": "s3cret-right"})
    assert ok.exit_code == 0, ok.output
    assert len(server.messages) == 1


def test_rejected_recipient_fails_alone_then_sends(monitor: Invoke, smtp_server: SmtpFactory,
                                                   database_url: str) -> None:
    """A refused recipient: exit 1 naming it, the other is served; the rerun serves only it."""
    monitor("backfill", str(SEEDS))
    server = smtp_server(reject={"b@example.org"})
    first = _send(monitor, server.url(), "a@example.org", "b@example.org")
    line = _one_line_error(first)
    assert "refused recipient b@example.org: 550" in line
    with _sessions(database_url)() as session:
        assert store.sent_to(session, date(2025, 8, 21)) == {"a@example.org"}
    server.recorder.reject.clear()
    again = _send(monitor, server.url(), "a@example.org", "b@example.org")
    assert again.exit_code == 0, again.output
    assert sorted(m.rcpt_tos[0] for m in server.messages) == ["a@example.org", "b@example.org"]


# --- the daemon's job ----------------------------------------------------------------------


def _settings(database_url: str, port: int) -> Settings:
    loaded = config.load(TOKYO_CONFIG, database_url=database_url, environ={})
    return replace(loaded, digest=replace(
        loaded.digest, recipients=("a@example.org",), smtp_host="127.0.0.1", smtp_port=port,
        smtp_tls="none"))


def _tokyo(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2025, 8, day, hour, minute, tzinfo=TOKYO).astimezone(UTC)


def test_daemon_restarted_across_send_time_sends_once(monitor: Invoke, smtp_server: SmtpFactory,
                                                      database_url: str) -> None:
    """Down at 07:00, back at 07:30: the catch-up sends once; later runs and ticks do not."""
    monitor("backfill", str(SEEDS))
    server = smtp_server()
    settings, sessions = _settings(database_url, server.port), _sessions(database_url)
    assert digest_job.digest_job(settings, sessions, now=_tokyo(21, 6, 59)) is None
    report = digest_job.digest_job(settings, sessions, now=_tokyo(21, 7, 30))
    assert report is not None and report.sent == ("a@example.org",)
    for now in (_tokyo(21, 7, 45), _tokyo(21, 8), _tokyo(21, 23, 59)):
        assert digest_job.digest_job(settings, sessions, now=now) is None
        assert digest_job.digest_job(settings, sessions, now=now, retries_only=True) is None
    assert len(server.messages) == 1
    assert server.messages[0].message["Subject"] == "monitor digest 2025-08-21: 1 story"


def test_failed_send_is_retried_at_the_next_tick_and_bounded(
        monitor: Invoke, smtp_server: SmtpFactory, database_url: str) -> None:
    """A failure is recorded and retried by the retry tick; after MAX_ATTEMPTS it stops."""
    monitor("backfill", str(SEEDS))
    down = _settings(database_url, closed_port())
    sessions = _sessions(database_url)
    first = digest_job.digest_job(down, sessions, now=_tokyo(21, 7))
    assert first is not None and first.failed and "connection refused" in first.failed[0][1]
    server = smtp_server()
    up = _settings(database_url, server.port)
    retried = digest_job.digest_job(up, sessions, now=_tokyo(21, 7, 10), retries_only=True)
    assert retried is not None and retried.sent == ("a@example.org",)
    assert len(server.messages) == 1
    # The next day fails every time: the retries stop at MAX_ATTEMPTS.
    for minute in range(digest_job.MAX_ATTEMPTS):
        digest_job.digest_job(down, sessions, now=_tokyo(22, 7, minute), retries_only=minute > 0)
    with sessions() as session:
        attempts = session.scalar(select(DigestAttemptRow.attempts).where(
            DigestAttemptRow.digest_date == date(2025, 8, 22)))
    assert attempts == digest_job.MAX_ATTEMPTS
    held = digest_job.digest_job(up, sessions, now=_tokyo(22, 8), retries_only=True)
    assert held is not None and held.held == ("a@example.org",) and len(server.messages) == 1


def test_next_digest_starts_where_the_last_one_ended(monitor: Invoke, smtp_server: SmtpFactory,
                                                     database_url: str) -> None:
    """The 22nd's digest covers from the 21st's send time on, so 004 (nb) is its only new
    item: it joined the 21st's story of 002/003, which comes back as an update."""
    monitor("backfill", str(SEEDS))
    server = smtp_server()
    settings, sessions = _settings(database_url, server.port), _sessions(database_url)
    digest_job.digest_job(settings, sessions, now=_tokyo(21, 7))
    second = digest_job.build(settings, sessions, date(2025, 8, 22))
    assert second.window.since == _tokyo(21, 7)
    assert second.counts.items == 1 and second.counts.pending == 1
    entry = second.sections[0].stories[0]
    assert not entry.is_new and entry.languages == ("en", "nb")
    assert [i.language for i in entry.items if i.pending] == ["nb"]


def test_schedule_adds_a_cron_job_at_local_time_and_a_retry_job() -> None:
    """The daemon's cron job fires at digest.time in digest.timezone and runs on start."""
    from apscheduler.schedulers.background import BackgroundScheduler

    settings = config.load(TOKYO_CONFIG, environ={})
    settings = replace(settings, digest=replace(settings.digest, recipients=("a@example.org",)))
    scheduler = BackgroundScheduler(timezone="UTC")
    digest_job.schedule_digest(scheduler, settings, sessionmaker())
    jobs = {job.id: job for job in scheduler.get_jobs()}
    cron = jobs["digest"].trigger
    assert str(cron.timezone) == "Asia/Tokyo"
    assert {f.name: str(f) for f in cron.fields}["hour"] == "7"
    assert jobs["digest-retry"].kwargs == {"retries_only": True}


# --- SMTP details --------------------------------------------------------------------------


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
def test_tls_modes_deliver(smtp_server: SmtpFactory, tls: str) -> None:
    """STARTTLS and implicit TLS both deliver to a server with a trusted certificate."""
    server = smtp_server(tls=tls)
    target = mailer.parse_smtp_url(server.url())
    message = mailer.compose(subject="s", text="t", html="<p>h</p>", sender="m@example.org",
                             recipient="a@example.org", day=date(2025, 8, 21),
                             now=datetime.now(UTC))
    with mailer.connect(target, timeout=10) as connection:
        connection.send(message, "m@example.org", "a@example.org")
    assert [m.rcpt_tos for m in server.messages] == [["a@example.org"]]


def test_smtp_url_parsing() -> None:
    """--smtp-url takes user, host, port and tls; a password or unknown option is refused."""
    target = mailer.parse_smtp_url("smtp://me@relay.example:2525?tls=none", "pw")
    assert (target.host, target.port, target.tls, target.user) == (
        "relay.example", 2525, "none", "me")
    assert "pw" not in repr(target)
    assert mailer.parse_smtp_url("smtp://h?tls=implicit").port == 465
    assert mailer.parse_smtp_url("smtp://h").tls == "starttls"
    for bad in ("smtp://me:pw@h", "http://h", "smtp://h?tls=ssl", "smtp://h?x=1", "smtp://"):
        with pytest.raises(ValueError):
            mailer.parse_smtp_url(bad)


@pytest.mark.parametrize("address", ["a@x.org\r\nBcc: b@y.org", "A <a@x.org>", "a@x.org, b@y.org",
                                     "nobody", "@x.org"])
def test_addresses_that_could_break_headers_are_refused(address: str) -> None:
    """Only one plain mailbox is an address: no display name, list or header injection."""
    with pytest.raises(ValueError):
        mailer.check_address(address)
