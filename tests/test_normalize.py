"""Tests for monitor.normalize: HTML to text, cleaning, canonical URLs, identity keys."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.normalize import (
    canonical_url,
    clean_text,
    clean_title,
    content_key,
    html_to_text,
    sha256_hex,
    short_hash,
    title_key,
)


@pytest.mark.parametrize(
    ("url", "base", "expected"),
    [
        ("https://example.com/a?utm_source=x&utm_medium=y&id=3", None, "https://example.com/a?id=3"),
        ("https://example.com/a?fbclid=1&gclid=2&mc_cid=3&mc_eid=4&igshid=5", None,
         "https://example.com/a"),
        ("https://example.com/a?ref=tw&ref_src=x&cmpid=1&_ga=2&yclid=3&spm=4&b=2", None,
         "https://example.com/a?b=2"),
        ("https://example.com/a?b=2&a=1", None, "https://example.com/a?a=1&b=2"),
        ("https://example.com/story#comments", None, "https://example.com/story"),
        ("HTTPS://Example.COM:443/Path", None, "https://example.com/Path"),
        ("http://example.com:80/", None, "http://example.com"),
        ("http://example.com:8080/x", None, "http://example.com:8080/x"),
        ("https://example.com/", None, "https://example.com"),
        ("https://example.com/dir/", None, "https://example.com/dir/"),
        ("/news/1.html", "https://example.com/feed/rss.xml", "https://example.com/news/1.html"),
        ("2.html", "https://example.com/news/", "https://example.com/news/2.html"),
        ("//cdn.example.com/x", "https://example.com/", "https://cdn.example.com/x"),
        ("https://bücher.de/straße", None, "https://xn--bcher-kva.de/stra%C3%9Fe"),
        ("https://example.com/a%7eb%2fc%c3%a9", None, "https://example.com/a~b%2Fc%C3%A9"),
        ("https://example.com/a b", None, "https://example.com/a%20b"),
        ("https://user:pw@example.com/x", None, "https://example.com/x"),
        ("  https://example.com/x\n", None, "https://example.com/x"),
        ("https://example.com/?utm_campaign=z", None, "https://example.com"),
        ("https://example.com?q=1", None, "https://example.com/?q=1"),
        ("mailto:someone@example.com", None, None),
        ("javascript:alert(1)", None, None),
        ("ftp://example.com/file", None, None),
        ("/relative/only", None, None),
        ("", None, None),
        ("http://[::1", None, None),
        ("http://example.com:99999/", None, None),
        ("http://exa mple.com/", None, None),
        ("http://" + "a" * 1_000_000, None, None),
    ],
)
def test_canonical_url(url: str, base: str | None, expected: str | None) -> None:
    """canonical_url gives one spelling per http(s) URL and None for everything else."""
    assert canonical_url(url, base) == expected


def test_canonical_url_same_article_spellings_meet() -> None:
    """Differently decorated links to one article canonicalize to the same string."""
    spellings = [
        "https://www.Example.com/news/story?id=7&utm_source=rss",
        "HTTPS://www.example.com:443/news/story?utm_medium=feed&id=7#top",
        "https://www.example.com/news/story?id=7&fbclid=abc",
    ]
    assert len({canonical_url(u) for u in spellings}) == 1


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        ("<p>One</p><p>Two</p>", "One\n\nTwo"),
        ("a<br>b<br/>c", "a\nb\nc"),
        ("Tom &amp; Jerry &lt;3 &eacute;t&#233; &#x2013; ok", "Tom & Jerry <3 été – ok"),
        ("<script>var x = '<p>no</p>';</script>Yes<style>p{}</style>", "Yes"),
        ("<!-- hidden -->shown", "shown"),
        ("<b>bold</b> and <a href='x'>link</a>", "bold and link"),
        ("1 < 2 and 3 > 2", "1 < 2 and 3 > 2"),
        ("<ul><li>a</li><li>b</li></ul>", "a\nb"),
        ("<![CDATA[kept]]>", "kept"),
        ("plain text", "plain text"),
        ("<div>unclosed <script>drop all of this", "unclosed"),
    ],
)
def test_html_to_text(html: str, expected: str) -> None:
    """html_to_text strips markup, decodes entities and keeps block structure."""
    assert clean_text(html_to_text(html)) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("fÃ¼hrende", "führende"),
        ("KÃ¸benhavn", "København"),
        ("Itâ€™s", "It’s"),
        ("Ð¯Ð½Ð´ÐµÐºÑ\x81.Ð\x9dÐ¾Ð²Ð¾Ñ\x81Ñ‚Ð¸", "Яндекс.Новости"),
        ("café au lait », São Paulo", "café au lait », São Paulo"),
        ("e\u0301te\u0301", "été"),
        ("a\x00b\x07c\u200bd", "abcd"),
        ("  many   spaces\there  \n\n\n\n next  ", "many spaces here\n\nnext"),
        ("line\r\nbreaks\rhere", "line\nbreaks\nhere"),
        ("", ""),
        ("  a \t b  \n  c  ", "a b\nc"),
        ("a \n \n b", "a\n\nb"),
        ("a\r\n\r\n\r\n\r\nb", "a\n\nb"),
        ("a\u2028b\u2029\u2029\u2029c", "a\nb\n\nc"),
        ("\u00a0a\u3000\u3000b\u00a0\n\u200b c", "a b\nc"),
        ("a \x0b\x0c\x1c b", "a b"),
        ("line\x85next", "linenext"),
        ("\n\n\n", ""),
    ],
)
def test_clean_text(text: str, expected: str) -> None:
    """clean_text repairs mojibake, normalizes to NFC and tidies whitespace: runs of spaces
    become one, lines lose their edge spaces, at most one blank line; clean text stays."""
    assert clean_text(text) == expected
    assert clean_text(expected) == expected


def test_clean_title_is_one_line() -> None:
    """clean_title folds every line break into a single space."""
    assert clean_title("  Breaking:\n\n news\t today ") == "Breaking: news today"


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Ærø Ferry Cancelled!", "ærø ferry cancelled"),
        ("Café — Crème Brûlée", "cafe creme brulee"),
        ("STRASSE", "straße"),
        ("Drones: “over” Oslo?", "drones over oslo"),
        ("  Köln   Silvester ", "koln silvester"),
    ],
)
def test_title_key_folds(a: str, b: str) -> None:
    """title_key ignores case, diacritics, punctuation and spacing."""
    assert title_key(a) == title_key(b)


def test_title_key_value() -> None:
    """title_key produces lowercase words separated by single spaces."""
    assert title_key("Ein Führer – durch's Ärgernis!") == "ein fuhrer durch s argernis"


def test_title_key_keeps_distinct_titles_apart() -> None:
    """title_key still separates headlines that differ in words."""
    assert title_key("Drones over Oslo") != title_key("Drones over Bergen")


def test_content_key_ignores_markup_spacing() -> None:
    """content_key matches texts that differ only in whitespace and punctuation."""
    assert content_key("Hello,  world!\n\nSecond  para.") == content_key("hello world second para")


def test_hashes() -> None:
    """sha256_hex is the hex SHA-256 of UTF-8 and short_hash is its 16-byte prefix."""
    assert sha256_hex("abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    assert short_hash("abc") == sha256_hex("abc")[:32]


@settings(max_examples=200, deadline=None)
@given(st.text(), st.one_of(st.none(), st.text()))
def test_functions_are_total(text: str, base: str | None) -> None:
    """Every normalize function returns a value of the right type for any text."""
    assert isinstance(html_to_text(text), str)
    assert isinstance(clean_text(text), str)
    assert "\n" not in clean_title(text)
    assert isinstance(title_key(text), str)
    assert isinstance(content_key(text), str)
    assert len(sha256_hex(text)) == 64
    result = canonical_url(text, base)
    assert result is None or (result.isascii() and result.startswith(("http://", "https://")))


@settings(max_examples=200, deadline=None)
@given(st.from_regex(r"https?://[a-zA-Z0-9.-]{1,20}(:\d{1,6})?(/[^#\s]{0,30})?(\?[^#\s]{0,30})?"
                     r"(#.{0,10})?", fullmatch=True))
def test_canonical_url_is_idempotent(url: str) -> None:
    """Canonicalizing a canonical URL changes nothing."""
    once = canonical_url(url)
    assert once is None or canonical_url(once) == once


@pytest.mark.parametrize("link", [
    "https://example.com/a/b?x=1#f", "http://example.com", "https://example.com/a/../b/./c",
    "https://example.com/a?", "https://example.com/a#", "https://example.com/a;",
    "https://example.com/a;p?q", "https://?x", "https://#f", "http://h/?#", "http://h/p?q#",
    "https://example.com//double", "https://[::1]/v6", "https://ex ample.com/sp ace",
])
@pytest.mark.parametrize("base", ["https://base.example/dir/page", "http://base.example/", None])
def test_absolute_links_resolve_as_urljoin_does(link: str, base: str | None) -> None:
    """The shortcut for links that are already absolute gives what urljoin gives."""
    from urllib.parse import urljoin

    from monitor.normalize import _resolve

    expected = urljoin(base, link) if base else link
    resolved = _resolve(link, base)
    assert (resolved[0] if resolved else None) == expected
