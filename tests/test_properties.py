"""Property tests for the pure stages: normalize, canonical URLs, language detection, topic
matching, fingerprints and the parse stage. Whatever the input, each returns a value within
its documented bounds or raises one of our own errors, in bounded time.

CI runs a small budget (the ``ci`` profile); ``bench/fuzz.py`` runs the same properties with
``MONITOR_HYPOTHESIS_PROFILE=fuzz`` for as long as it is given, counting inputs in ``TRIED``.
"""

from __future__ import annotations

import contextlib
import html
import os
import re
import string
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import cache, wraps
from typing import Any, TypeVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.config import Topic
from monitor.errors import MonitorError
from monitor.language import Detector, detect_language, make_detector
from monitor.normalize import (
    MAX_URL_CHARS,
    absolute_url,
    canonical_url,
    clean_text,
    clean_title,
    content_key,
    html_to_text,
    title_key,
)
from monitor.parse import (
    MAX_AUTHOR_CHARS,
    MAX_ITEMS,
    MAX_SUMMARY_CHARS,
    MAX_TEXT_CHARS,
    MAX_TITLE_CHARS,
    parse_article,
    parse_feed,
)
from monitor.pipeline import DETECT_CHARS, fingerprints, guid_of, lead_text
from monitor.topics import fold, match_topics
from monitor.types import Article, ParsedFeed

settings.register_profile(
    "ci", max_examples=100, deadline=2000, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "fuzz", max_examples=2000, deadline=2000, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much])
PROFILE = settings.get_profile(os.environ.get("MONITOR_HYPOTHESIS_PROFILE", "ci"))
TRIED: Counter[str] = Counter()  # inputs each property has been run on, for bench/fuzz.py

F = TypeVar("F", bound=Callable[..., None])


def counted(test: F) -> F:
    """Count every input the property runs on under its own name."""
    @wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        TRIED[test.__name__] += 1
        test(*args, **kwargs)
    return run  # type: ignore[return-value]


# --- strategies --------------------------------------------------------------------------------

# Characters that have broken text pipelines before: controls, C1, surrogates, BOMs,
# separators, bidi overrides, combining marks, case oddities, ligatures, CJK, mojibake.
TRICKY = list("\x00\x01\x08\x0b\x0c\r\n\t \x7f\x80\x85\x9d\x9f\xa0\xad\u0301\u0345\u200b"
              "\u200d\u2028\u2029\u202e\ufeff\ufffe\uffff\ud800\udfffÃ©â€™Ð¾ßİıﬁǅςΣ東京한국"
              "<>&;#/=\"'!-[]?:%@*_.")
FRAGMENTS = [
    "<p>", "</p>", "<br/>", "<b>", "<script>", "</script>", "<style>", "<!--", "-->",
    "<![CDATA[", "]]>", "&amp;", "&lt;", "&#0;", "&#x110000;", "&#xD800;", "&nbsp;", "&lol;",
    "http://", "https://", "HTTPS://", "//", "%", "%zz", "%00", "%2F", "%7e", "?", "#", "@",
    ":", "[", "]", "..", "/", "utm_source=x", "&", "=", "xn--", "drone", "Drone", "DRONE",
    "droner", "OSA", "osa", "İHA", "iha", "無人機", " ", "\n", "\r\n", ".", "Ã", "©", "\x9d",
]
words = st.sampled_from(["drone", "drones", "Tyrkia", "İHA", "OSA", "UAV", "East", "News",
                         "forsvar", "Güler", "無人機", "東京", "한국", "наступ", "café"])
hostile_text = st.one_of(
    st.text(max_size=200),
    st.text(alphabet=st.sampled_from(TRICKY) | st.characters(), max_size=200),
    st.lists(st.sampled_from(FRAGMENTS) | words, max_size=30).map("".join),
    st.lists(words, max_size=20).map(" ".join),
)
_HOSTS = ["example.com", "EXAMPLE.com.", "bücher.example", "xn--bcher-kva.example", "[::1]",
          "[::1", "127.0.0.1", "a..b", "", "exa mple.com", "ex%41mple.com", "user:pw@host.io",
          "host.io:80", "host.io:443", "host.io:8080", "host.io:99999", "host.io:-1",
          "host.io:abc", "東京.jp", "xn--", "-bad-.com"]
urls = st.one_of(
    hostile_text,
    st.builds("{}{}{}{}{}{}".format,
              st.sampled_from(["http://", "https://", "HTTP://", "ftp://", "javascript:",
                               "data:", "//", "", "http:/", "https:///"]),
              st.sampled_from(_HOSTS),
              st.lists(st.sampled_from(["/", "a", "%7E", "%zz", "..", ".", "b c", "é", "%2f",
                                        ";p", "//"]), max_size=6).map("".join),
              st.lists(st.sampled_from(["utm_source=x", "b=2", "a=1", "a", "=", "", "%20=%",
                                        "fbclid=y", "q=é"]), max_size=5)
              .map(lambda q: ("?" + "&".join(q)) if q else ""),
              st.sampled_from(["", "#frag", "#"]),
              st.sampled_from(["", " ", "\t\n", "\x00"])),
)
bases = st.none() | urls


# --- normalize ---------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u2060\ufeff\ufffe\uffff\r"
                      r"\ud800-\udfff]")


@PROFILE
@given(hostile_text)
@counted
def test_html_to_text_is_total(text: str) -> None:
    """Any string, markup or not, gives a string."""
    assert isinstance(html_to_text(text), str)


@PROFILE
@given(hostile_text)
@counted
def test_clean_text_and_title_are_clean_and_idempotent(text: str) -> None:
    """No controls, surrogates or CR; tidy blank lines; cleaning twice changes nothing."""
    cleaned = clean_text(text)
    assert not _CONTROL.search(cleaned), repr(cleaned)
    assert "\n\n\n" not in cleaned and cleaned == cleaned.strip()
    assert clean_text(cleaned) == cleaned
    title = clean_title(text)
    assert "\n" not in title and clean_title(title) == title


@PROFILE
@given(urls, bases)
@counted
def test_canonical_url_is_http_bounded_and_idempotent(url: str, base: str | None) -> None:
    """None, or an http(s) URL within MAX_URL_CHARS that canonicalizes to itself."""
    canonical = canonical_url(url, base)
    if canonical is not None:
        assert canonical.startswith(("http://", "https://")), canonical
        assert len(canonical) <= MAX_URL_CHARS
        assert not re.search(r"[\s\x00-\x1f\x7f#]", canonical), canonical
        assert canonical_url(canonical) == canonical
    absolute = absolute_url(url, base)
    assert absolute is None or (absolute.lower().startswith(("http://", "https://"))
                                and len(absolute) <= MAX_URL_CHARS)


@PROFILE
@given(hostile_text, st.text(string.printable, max_size=80))
@counted
def test_identity_keys_ignore_case_space_and_punctuation(text: str, ascii_text: str) -> None:
    """Title keys are idempotent, and blind to case, spacing and punctuation (shown on ASCII:
    elsewhere how ftfy repairs a broken line depends on the whole line)."""
    key = title_key(text)
    assert title_key(key) == key
    assert isinstance(content_key(text), str)
    spelled = " ".join(ascii_text.upper().split()) + " !?"
    assert title_key(spelled) == title_key(ascii_text.lower())


# --- language detection ------------------------------------------------------------------------

@cache
def detector() -> Detector:
    """The default detector, its models loaded (they load on first use, script by script)."""
    models = make_detector()
    for text in ("The drones flew over the city", "Dronene fløy over byen",
                 "Les drones ont survolé la ville", "Беспилотники над городом",
                 "Дрони над містом", "东京的无人机", "ドローンが東京の上を飛んだ",
                 "Drones flew over the city centre " * 10):
        models.detect(text)
    return models


hints = st.lists(st.none() | st.sampled_from(["en", "nb-NO", "no", "zh-Hant", "und", "x", "",
                                              "en_US", "qqq", "EN"]) | hostile_text, max_size=3)


@settings(PROFILE, deadline=None)
@given(hostile_text, hints)
@counted
def test_detect_language_gives_a_short_code_and_a_confidence(
        text: str, declared: list[str | None]) -> None:
    """Any text and hints give a code that fits the database and a confidence in [0, 1],
    within 2 s (timed here: the first call loads the models)."""
    models = detector()
    start = time.perf_counter()
    found = detect_language(text, declared, models)
    assert time.perf_counter() - start < 2.0
    assert 2 <= len(found.language) <= 16 and found.language == found.language.lower()
    assert 0.0 <= found.confidence <= 1.0, found


# --- topics ------------------------------------------------------------------------------------

keywords = st.lists(hostile_text | words, min_size=1, max_size=5).map(tuple)
_WORDY = re.compile(r"\w(?:.*\w)?", re.DOTALL)


@PROFILE
@given(keywords, st.lists(hostile_text, max_size=3), st.lists(hostile_text, max_size=2))
@counted
def test_topic_matching_is_total_and_finds_each_keyword_in_its_own_text(
        keys: tuple[str, ...], original: list[str], translated: list[str]) -> None:
    """Folding is idempotent; matches name their own keywords; a keyword is found in a
    sentence that quotes it."""
    assert all(fold(fold(text)) == fold(text) for text in (*keys, *original))
    topics = (Topic("t", keys), Topic("u", keys[::-1]))
    for match in match_topics(topics, original, translated):
        assert match.topic in ("t", "u") and set(match.keywords) <= set(keys)
        assert match.matched_on in ("original", "translation")
    for key in keys:
        core = key.rstrip("*").strip()
        if _WORDY.fullmatch(core):
            assert match_topics([Topic("k", (key,))], [f"lorem {core} ipsum"]), key


# --- fingerprints ------------------------------------------------------------------------------

articles = st.builds(Article, title=hostile_text, url=st.none() | urls,
                     guid=st.none() | hostile_text, summary=hostile_text, text=hostile_text,
                     published=st.none() | st.datetimes(timezones=st.just(UTC)))
_HEX = re.compile(r"[0-9a-f]{32}")


@PROFILE
@given(articles, st.none() | urls)
@counted
def test_fingerprints_lead_and_guid_are_bounded(article: Article, url: str | None) -> None:
    """Hashes are hex digests, the lead fits the detector, a GUID always exists and fits."""
    title_hash, content_hash = fingerprints(article)
    assert title_hash == "" or _HEX.fullmatch(title_hash)
    assert content_hash is None or _HEX.fullmatch(content_hash)
    assert len(lead_text(article)) <= DETECT_CHARS
    guid = guid_of(article, url)
    assert guid and len(guid) <= 2048


# --- the parse stage ---------------------------------------------------------------------------

headers = st.dictionaries(
    st.sampled_from(["Content-Type", "content-location", "Content-Language"]),
    st.sampled_from(["application/rss+xml", "text/xml", "text/html; charset=utf-8",
                     "text/xml; charset=latin-1", "application/xml; charset=utf-16",
                     "text/plain", "http://example.com/", "nb", ""]), max_size=3)


def _field(value: str, how: str) -> str:
    if how == "escaped":
        return html.escape(value, quote=False)
    if how == "cdata":
        return f"<![CDATA[{value}]]>"
    return value  # raw: may break the XML on purpose


fields = st.tuples(hostile_text, st.sampled_from(["escaped", "cdata", "raw"]))
entries = st.fixed_dictionaries({"title": fields, "summary": fields, "link": st.tuples(
    urls, st.sampled_from(["escaped", "raw"])), "guid": fields, "date": st.sampled_from([
        "Mon, 01 Jun 2025 10:00:00 GMT", "2025-06-01T10:00:00Z", "1800-01-01", "tomorrow",
        "Mon, 99 Jun 2025 99:99:99 GMT", "", "9999-12-31T23:59:59+14:00"]) | hostile_text,
    "author": fields})


def _rss(channel: tuple[str, str], items: list[dict[str, Any]]) -> str:
    body = "".join(
        f"<item><title>{_field(*e['title'])}</title><link>{_field(*e['link'])}</link>"
        f"<guid>{_field(*e['guid'])}</guid><pubDate>{html.escape(e['date'])}</pubDate>"
        f"<description>{_field(*e['summary'])}</description>"
        f"<author>{_field(*e['author'])}</author></item>" for e in items)
    return (f'<rss version="2.0"><channel><title>{_field(*channel)}</title>'
            f"<ttl>{_field(*channel)}</ttl><language>{_field(*channel)}</language>"
            f"{body}</channel></rss>")


def _atom(channel: tuple[str, str], items: list[dict[str, Any]]) -> str:
    body = "".join(
        f'<entry><title type="html">{_field(*e["title"])}</title>'
        f'<link href="{html.escape(e["link"][0])}"/><id>{_field(*e["guid"])}</id>'
        f"<updated>{html.escape(e['date'])}</updated>"
        f'<summary type="xhtml">{_field(*e["summary"])}</summary>'
        f"<author><name>{_field(*e['author'])}</name></author></entry>" for e in items)
    return (f'<feed xmlns="http://www.w3.org/2005/Atom"><title>{_field(*channel)}</title>'
            f"{body}</feed>")


@st.composite
def feeds(draw: st.DrawFn) -> bytes:
    """An RSS or Atom document with hostile field contents, in a declared (or other) charset."""
    shape = draw(st.sampled_from([_rss, _atom]))
    document = shape(draw(fields), draw(st.lists(entries, max_size=4)))
    declared = draw(st.sampled_from(["utf-8", "iso-8859-1", "windows-1251", "utf-16", "x-bad"]))
    actual = draw(st.sampled_from(["utf-8", "iso-8859-1", "utf-16", declared]))
    prolog = draw(st.sampled_from(["", "\n", '<!DOCTYPE rss [<!ENTITY e "x">]>',
                                   '<!DOCTYPE rss SYSTEM "http://127.0.0.1:9/x.dtd">']))
    text = f'<?xml version="1.0" encoding="{declared}"?>{prolog}{document}'
    errors = "surrogatepass" if actual == "utf-8" else "replace"
    return text.encode(actual if actual != "x-bad" else "utf-8", errors=errors)


def _check_feed(feed: ParsedFeed) -> None:
    assert len(feed.articles) <= MAX_ITEMS
    assert feed.link is None or feed.link.startswith(("http://", "https://"))
    now = datetime.now(UTC)
    for article in feed.articles:
        assert article.title and "\n" not in article.title
        assert len(article.title) <= MAX_TITLE_CHARS and len(article.summary) <= MAX_SUMMARY_CHARS
        assert len(article.text) <= MAX_TEXT_CHARS
        assert len(article.author or "") <= MAX_AUTHOR_CHARS
        assert len(article.url or "") <= MAX_URL_CHARS and len(article.guid or "") <= 2048
        # PostgreSQL refuses NUL in text; no other control belongs in an identifier either.
        assert not re.search(r"[\x00-\x1f\x7f]", f"{article.guid or ''}{article.url or ''}")
        assert article.published is None or (
            article.published.utcoffset() == timedelta(0)
            and article.published <= now + timedelta(days=2))


@PROFILE
@given(st.binary(max_size=2000), headers)
@counted
def test_parse_feed_on_random_bytes(content: bytes, response: dict[str, str]) -> None:
    """Random bytes are a feed within the limits, or a MonitorError."""
    with contextlib.suppress(MonitorError):
        _check_feed(parse_feed(content, response, "http://example.com/feed"))


@PROFILE
@given(feeds(), headers)
@counted
def test_parse_feed_on_generated_feeds(content: bytes, response: dict[str, str]) -> None:
    """RSS and Atom with hostile fields, charsets and DTDs: within the limits, or refused."""
    with contextlib.suppress(MonitorError):
        _check_feed(parse_feed(content, response, "http://example.com/feed"))


articles_raw = st.one_of(
    st.binary(max_size=2000),
    st.builds(lambda head, body: f"---\n{head}\n---\n{body}".encode("utf-8", "surrogatepass"),
              st.lists(st.builds("{}: {}".format, st.sampled_from(
                  ["title", "url", "date", "published", "author", "outlet", "language"]),
                  hostile_text), max_size=5).map("\n".join), hostile_text),
    hostile_text.map(lambda t: t.encode("utf-8", "surrogatepass")),
)


@PROFILE
@given(articles_raw, st.sampled_from(["a.txt", "b.md", "c"]))
@counted
def test_parse_article_on_random_bytes(raw: bytes, name: str) -> None:
    """Any bytes are an article with a headline within the limits, or a MonitorError."""
    try:
        article = parse_article(raw, name=name)
    except MonitorError:
        return
    assert article.title and len(article.title) <= MAX_TITLE_CHARS
    assert len(article.text) <= MAX_TEXT_CHARS


# --- for bench/fuzz.py ----------------------------------------------------------------------

TARGETS: dict[str, Callable[[], None]] = {
    name.removeprefix("test_"): test for name, test in list(globals().items())
    if name.startswith("test_") and hasattr(test, "hypothesis")
}


class _Provider:
    """Stands in for atheris' FuzzedDataProvider: fixed answers."""

    def ConsumeUnicode(self, count: int) -> str:  # noqa: N802  (atheris' name)
        return "Drone İHA ™ <b>x</b> https://example.com/a?utm_source=x"[:count]

    def ConsumeIntInRange(self, low: int, high: int) -> int:  # noqa: N802  (atheris' name)
        return high


def test_fuzz_text_targets_still_fit_the_properties() -> None:
    """bench/fuzz.py's atheris text targets call these properties with the right arguments."""
    from bench import fuzz

    for target in fuzz.TEXT_TARGETS:
        fuzz._text_target(target, _Provider(), sys.modules[__name__])
