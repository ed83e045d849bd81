"""Tests for monitor.parse: feed documents and article files to Articles."""

from __future__ import annotations

import codecs
import random
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from monitor.errors import ParseError
from monitor.parse import parse_article, parse_feed
from monitor.types import Article, ParsedFeed

SHARED = Path(__file__).resolve().parents[2] / "shared"
CONFORMANCE = SHARED / "corpora" / "feedparser-tests" / "tests"
REAL_FEEDS = SHARED / "corpora" / "real-feeds"
SEEDS = Path(__file__).resolve().parents[1] / "seeds"

MOJIBAKE = ("Ã¸", "Ã¼", "Ã©", "Ã¤", "Ã¶", "Ã¥", "Ã³", "Ã±", "â€™", "â€œ", "â€“", "Â£", "Ð¾", "Ñ‚")
NOW = datetime(2026, 1, 1, tzinfo=UTC)
MAY_6 = datetime(2024, 5, 6, tzinfo=UTC)


def _skip_without(path: Path) -> None:
    if not path.is_dir():
        pytest.skip(f"shared corpus not found at {path}")


def _rss(items: str, channel: str = "<title>T</title><link>https://example.com/</link>") -> bytes:
    return (f'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>{channel}'
            f"{items}</channel></rss>").encode()


# --- feedparser conformance corpus -------------------------------------------------------------

# UTF-32 BOMs start with UTF-16 BOMs, so they are tried first.
_SIGNATURES = (
    (codecs.BOM_UTF32_BE, "utf-32-be"), (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_BE, "utf-16-be"),
    (codecs.BOM_UTF16_LE, "utf-16-le"), (b"\x00\x00\x00<", "utf-32-be"),
    (b"<\x00\x00\x00", "utf-32-le"), (b"\x00<\x00?", "utf-16-be"), (b"<\x00?\x00", "utf-16-le"),
)
_HEADER_LINE = re.compile(r"^Header:\s*([^:\s]+)\s*:\s*(.*?)\s*$", re.MULTILINE)


def _simulated_headers(raw: bytes) -> dict[str, str]:
    """The ``Header:`` lines of a conformance file's leading comment, as HTTP headers."""
    codec = next((name for sig, name in _SIGNATURES if raw.startswith(sig)), "latin-1")
    comment = raw.decode(codec, errors="replace").split("-->", 1)[0]
    return dict(_HEADER_LINE.findall(comment))


def _run_conformance(folder: str) -> tuple[Counter[str], list[str], list[str]]:
    outcomes: Counter[str] = Counter()
    rejected: list[str] = []
    crashes: list[str] = []
    for path in sorted(p for p in (CONFORMANCE / folder).rglob("*") if p.is_file()):
        raw = path.read_bytes()
        name = str(path.relative_to(CONFORMANCE))
        try:
            feed = parse_feed(raw, _simulated_headers(raw))
        except ParseError:
            outcomes["ParseError"] += 1
            rejected.append(name)
        except Exception as exc:  # the point of the test: nothing else may escape
            crashes.append(f"{name}: {exc!r}")
        else:
            outcomes["articles" if feed.articles else "no articles"] += 1
    return outcomes, rejected, crashes


def test_simulated_headers_read_utf16_comment() -> None:
    """Header lines are found even in a UTF-16 file's leading comment."""
    raw = "<!--\nHeader:      Content-type: text/xml; charset=utf-16\n-->\n<rss/>".encode("utf-16")
    assert _simulated_headers(raw) == {"Content-type": "text/xml; charset=utf-16"}


@pytest.mark.parametrize("folder", ["encoding", "entities", "illformed", "json", "wellformed"])
def test_conformance_corpus_only_raises_parse_error(
        folder: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Every conformance file parses or raises ParseError; no other exception escapes."""
    _skip_without(CONFORMANCE)
    outcomes, rejected, crashes = _run_conformance(folder)
    with capsys.disabled():
        print(f"\n  conformance/{folder}: {dict(outcomes)} rejected={rejected}")
    assert not crashes, crashes
    assert sum(outcomes.values()) > 0


def test_conformance_wellformed_feeds_are_accepted() -> None:
    """Well-formed RSS/Atom conformance files are never rejected (CDF channels may be)."""
    _skip_without(CONFORMANCE)
    outcomes, rejected, _ = _run_conformance("wellformed")
    assert [name for name in rejected if not name.startswith("wellformed/cdf/")] == []
    assert outcomes["articles"] > 600


# --- real feeds ----------------------------------------------------------------------------------

def _real_feed(name: str) -> ParsedFeed:
    _skip_without(REAL_FEEDS)
    return parse_feed((REAL_FEEDS / name).read_bytes())


def _real_feed_names() -> list[str]:
    if not REAL_FEEDS.is_dir():
        return ["<missing>"]
    return sorted(p.name for p in REAL_FEEDS.glob("*.xml"))


@pytest.mark.parametrize("name", _real_feed_names())
def test_real_feed_yields_clean_articles(name: str) -> None:
    """A real feed yields titled articles with repaired text and UTC (or no) dates."""
    feed = _real_feed(name)
    assert feed.articles
    for article in feed.articles:
        assert article.title.strip()
        for text in (article.title, article.summary, article.text, feed.title or ""):
            assert not [bad for bad in MOJIBAKE if bad in text], text[:200]
        assert article.published is None or article.published.utcoffset() == timedelta(0)
        assert article.url is None or article.url.startswith(("http://", "https://"))


@pytest.mark.parametrize(
    ("name", "feed_title", "first_title"),
    [
        ("de_spiegel_double-encoded-utf8.xml", "SPIEGEL ONLINE - Nachrichten",
         "Polizeieinsatz in Kölner Silvesternacht: Alles richtig gemacht. Alles?"),
        ("de_stadtfeuerwehr-weiz_rss091_iso-8859-1.xml", "Stadtfeuerwehr Weiz - Einsätze",
         "[19.08.2018 - 07:08 Uhr] Brandmeldeanlagenalarm"),
        ("pt-pt_jn-ultimas_iso-8859-1.xml", "Jornal de Notícias - Últimas Notícias",
         "Mãe de utente é a nova presidente da Raríssimas"),
        ("ru_oren-ru_windows-1251.xml", "Новости Оренбурга и области / Раздел Новости",
         "В Бузулуке главные стройплощадки – детсад и Ледовый дворец"),
        ("ru_yandex-news.xml", "Яндекс.Новости: Москва",
         "В Москве из-за сильных морозов объявлен «оранжевый» уровень опасности"),
    ],
    ids=["spiegel-double-utf8", "weiz-latin1", "jn-latin1", "oren-cp1251", "yandex-double-utf8"],
)
def test_real_feed_decoding(name: str, feed_title: str, first_title: str) -> None:
    """Legacy charsets and double-encoded UTF-8 come out as the intended text."""
    feed = _real_feed(name)
    assert (feed.title, feed.articles[0].title) == (feed_title, first_title)


def test_spiegel_summary_is_repaired() -> None:
    """Double-encoded umlauts inside a summary are repaired too."""
    feed = _real_feed("de_spiegel_double-encoded-utf8.xml")
    assert "fünf Menschen erschossen" in feed.articles[1].summary


def test_leading_newline_feed_still_yields_items() -> None:
    """A feed with a newline before its XML declaration is read, with a warning."""
    feed = _real_feed("en_londoner_enormous-2.7MB_leading-newline-not-wf.xml")
    assert len(feed.articles) == 40
    assert feed.warning and "\n" not in feed.warning


@pytest.mark.parametrize(
    ("name", "dated"),
    [
        ("no_dagbladet_missing-item-dates.xml", 47),
        ("en_japantimes_no-item-dates_118-items.xml", 0),
        ("no_tv2_dc-date.xml", 20),
        ("de-at_orf-at_rss10-rdf_bom.xml", 50),
    ],
)
def test_real_feed_dates(name: str, dated: int) -> None:
    """Items carry a date exactly when the feed gives one (pubDate, dc:date)."""
    assert sum(a.published is not None for a in _real_feed(name).articles) == dated


def test_real_feed_metadata() -> None:
    """Feed language, ttl and per-item language hints come from the document."""
    feed = _real_feed("sv_fz-se_2022.xml")
    assert (feed.language, feed.ttl_minutes, feed.link) == ("sv", 10, "https://www.fz.se")
    assert feed.articles[0].language_hints == ("sv",)


# --- parse_feed on small documents ---------------------------------------------------------------

@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"  \n\t ",
        random.Random(7).randbytes(4096),
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        b"<!DOCTYPE html><html><head><title>Home</title></head><body><p>Hi</p></body></html>",
        b"<rss version='2.0'><chan",
        b"just some words, not a feed",
    ],
    ids=["empty", "blank", "random", "png", "html", "truncated", "text"],
)
def test_not_a_feed_raises_parse_error(content: bytes) -> None:
    """Bytes that are not a feed raise ParseError with a one-line message."""
    with pytest.raises(ParseError, match=r"^feed: [^\n]+$"):
        parse_feed(content)


def test_bytes_are_never_a_file_name(tmp_path: Path) -> None:
    """Content that spells a file path is parsed as content, not opened."""
    path = tmp_path / "feed.xml"
    path.write_bytes(_rss("<item><title>Secret</title></item>"))
    with pytest.raises(ParseError):
        parse_feed(str(path).encode())


def test_html_page_is_named() -> None:
    """The error for an HTML page says so."""
    with pytest.raises(ParseError, match="HTML page"):
        parse_feed(b"<!doctype html>\n<html lang='en'><body>Hello</body></html>")


@pytest.mark.parametrize(
    "content",
    [
        _rss(""),
        b'<feed xmlns="http://www.w3.org/2005/Atom"><title>Quiet</title></feed>',
    ],
)
def test_feed_without_items_is_empty_not_error(content: bytes) -> None:
    """A well-formed feed with no entries returns no articles."""
    feed = parse_feed(content)
    assert feed.articles == () and feed.title


def test_entry_mapping() -> None:
    """Entry fields become a clean Article: canonical URL, text from content, UTC date."""
    item = """<item xmlns:content="http://purl.org/rss/1.0/modules/content/">
      <title>  Drones &amp; Oslo
      airport </title>
      <link>/news/1?utm_source=rss&amp;id=9#top</link>
      <guid isPermaLink="false">abc-1</guid>
      <description>&lt;p&gt;Short &lt;b&gt;summary&lt;/b&gt;.&lt;/p&gt;</description>
      <content:encoded><![CDATA[<p>Full</p><p>text.<script>x()</script></p>]]></content:encoded>
      <pubDate>Tue, 18 Oct 2022 09:17:00 +0200</pubDate>
      <author>desk@example.com (News Desk)</author>
    </item>"""
    article = parse_feed(_rss(item), url="https://example.com/feed.xml", now=NOW).articles[0]
    assert article == Article(
        title="Drones & Oslo airport",
        url="https://example.com/news/1?utm_source=rss&id=9#top",  # as published
        guid="abc-1",
        summary="Short summary.",
        text="Full\n\ntext.",
        published=datetime(2022, 10, 18, 7, 17, tzinfo=UTC),
        author="News Desk",
    )


def test_missing_title_falls_back_to_first_sentence() -> None:
    """An untitled entry takes the first sentence of its summary as title."""
    item = "<item><description>First sentence here. Second one.</description></item>"
    assert parse_feed(_rss(item)).articles[0].title == "First sentence here."


def test_empty_entry_is_skipped() -> None:
    """An entry with neither title nor text yields no article."""
    assert parse_feed(_rss("<item><link>https://example.com/x</link></item>")).articles == ()


@pytest.mark.parametrize(
    ("pub_date", "expected"),
    [
        ("Mon, 01 Jan 1979 00:00:00 GMT", None),
        ("Wed, 01 Jan 2031 00:00:00 GMT", None),
        ("Fri, 02 Jan 2026 12:00:00 GMT", datetime(2026, 1, 2, 12, tzinfo=UTC)),
        ("not a date", None),
    ],
)
def test_implausible_dates_become_none(pub_date: str, expected: datetime | None) -> None:
    """Dates before 1990 or more than two days ahead are dropped."""
    item = f"<item><title>x</title><pubDate>{pub_date}</pubDate></item>"
    assert parse_feed(_rss(item), now=NOW).articles[0].published == expected


def test_language_hints_most_specific_first() -> None:
    """Entry xml:lang comes before the feed's language, lowercased and deduplicated."""
    atom = b"""<feed xmlns="http://www.w3.org/2005/Atom" xml:lang="NB">
      <title>F</title>
      <entry xml:lang="nn"><title>Nynorsk</title><summary>Tekst</summary></entry>
      <entry><title>Bokmaal</title></entry>
    </feed>"""
    feed = parse_feed(atom)
    assert feed.language == "nb"
    assert [a.language_hints for a in feed.articles] == [("nn", "nb"), ("nb",)]


def test_http_charset_is_used() -> None:
    """A charset in the Content-Type header decodes a feed without an XML declaration."""
    body = "<rss version='2.0'><channel><title>Новости</title></channel></rss>".encode("cp1251")
    feed = parse_feed(body, {"Content-Type": "application/rss+xml; charset=windows-1251"})
    assert feed.title == "Новости"


def test_bozo_feed_with_items_has_warning() -> None:
    """A feed that is not well-formed but has items returns them and a warning."""
    feed = parse_feed(b"\n" + _rss("<item><title>Kept</title></item>"))
    assert [a.title for a in feed.articles] == ["Kept"]
    assert feed.warning


# --- article files -------------------------------------------------------------------------------

def _seed(prefix: str) -> Article:
    if not SEEDS.is_dir():
        pytest.skip(f"seeds not found at {SEEDS}")
    path = next(SEEDS.glob(f"{prefix}_*.txt"))
    return parse_article(path.read_bytes(), name=path.name)


@pytest.mark.parametrize(
    ("prefix", "title", "published"),
    [
        ("000", "With global demand for drones on the rise, Japan is using diplomatic aid to "
                "strengthen its position in the drone industry.", None),
        ("001", "Japan Explores Export of Dual-Use Drones Amid Growing Interest from OSA Countries",
         None),
        ("002", "Japan Explores Possibility of Acquiring Turkish Drones", None),
        ("003", "Japan seeks defense cooperation with Türkiye during rare visit",
         datetime(2025, 8, 20, tzinfo=UTC)),
    ],
)
def test_seed_headline_and_date(prefix: str, title: str, published: datetime | None) -> None:
    """The first line is the headline; a leading ``date YYYY-MM-DD`` is its date."""
    article = _seed(prefix)
    assert (article.title, article.published) == (title, published)
    assert article.text and article.guid is None


def test_seed_long_first_line_is_shortened_title() -> None:
    """A paragraph-long first line is cut into a title but kept whole in the text."""
    article = _seed("004")
    assert article.published == datetime(2025, 8, 21, tzinfo=UTC)
    assert article.title.startswith("Den japanske forsvarsministeren Gen Nakatani")
    assert len(article.title) <= 201 and not article.title.startswith("date")
    assert article.text.startswith("Den japanske forsvarsministeren")


def test_seed_byline_becomes_author() -> None:
    """A leading ``By Name |`` line is the author, not the headline."""
    article = _seed("000")
    assert article.author == "Wu Qiaoxi"
    assert "By Wu Qiaoxi" not in article.text


def test_seed_markdown_images_dropped() -> None:
    """Markdown image lines never reach the article text."""
    text = _seed("000").text
    assert "![" not in text and ".webp" not in text and "Launched in 2023" in text


def test_seed_share_buttons_dropped() -> None:
    """Share-button lines such as ``Facebook icon`` are removed."""
    assert "Facebook icon" not in _seed("002").text


def test_front_matter_and_meta() -> None:
    """Front matter fills fields, a sidecar ``meta`` wins, and markdown links keep their text."""
    raw = (b"---\ntitle: \"Front title\"\noutlet: NHK\nurl: https://Example.com/a?utm_source=x\n"
           b"published: 2025-08-19T10:00:00+09:00\nlanguage: NB\n---\n"
           b"Front title\n\nBody with [a link](https://x.example/) here.\n")
    article = parse_article(raw, name="a.md", meta={"outlet": "Sidecar", "Language": "nn"})
    assert article == Article(
        title="Front title",
        url="https://Example.com/a?utm_source=x",  # as given; canonical form is made later
        summary="",
        text="Body with a link here.",
        published=datetime(2025, 8, 19, 1, tzinfo=UTC),
        outlet="Sidecar",
        language_hints=("nn",),
    )


@pytest.mark.parametrize(
    ("raw", "title", "published"),
    [
        (b"Date: 2024-05-06 Headline here\nBody.", "Headline here", MAY_6),
        (b"2024-05-06\nHeadline below\nBody.", "Headline below", MAY_6),
        (b"\xef\xbb\xbfBOM headline\nBody.", "BOM headline", None),
        (b"Caf\xe9 \x93quoted\x94\nBody.", "Café “quoted”", None),
        (b"By the numbers: drones\nBody.", "By the numbers: drones", None),
        (b"# Markdown heading\nBody.", "Markdown heading", None),
    ],
)
def test_article_first_line_variants(raw: bytes, title: str, published: datetime | None) -> None:
    """Date prefixes, BOMs, cp1252 bytes and markdown headings are read sensibly."""
    article = parse_article(raw, name="x.txt")
    assert (article.title, article.published) == (title, published)


@pytest.mark.parametrize("raw", [b"", b"\n \n", b"\x00\x01\x02binary\x00" * 50])
def test_unreadable_article_raises(raw: bytes) -> None:
    """Empty or binary article files raise ParseError naming the file."""
    with pytest.raises(ParseError, match=r"^x\.txt: "):
        parse_article(raw, name="x.txt")
