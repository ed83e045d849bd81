"""The digest as an attack surface: XSS payloads from a cheat sheet travel the whole path (a
loopback feed server, `monitor run --once`, `monitor digest --send` to a real SMTP server) in
every feed field, and the HTML that arrives runs nothing, loads nothing, links only to
http(s) and carries no feed text in a style or any other attribute but an escaped href."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape, quoteattr

import pytest

from monitor import digest
from tests.conftest import Invoke
from tests.httpserver import LoopbackServer, Reply
from tests.pollkit import write_config

if TYPE_CHECKING:
    from tests.smtpserver import SmtpFactory

# Payloads from the OWASP Cheat Sheet Series, "XSS Filter Evasion Cheat Sheet"
# (https://cheatsheetseries.owasp.org/cheatsheets/XSS_Filter_Evasion_Cheat_Sheet.html),
# in its order, then the attribute, style, comment, CDATA, encoding and scheme tricks that
# the brief of this test names (attribute breakouts, double encoding, unicode escapes).
PAYLOADS: tuple[str, ...] = (
    "<SCRIPT SRC=https://cdn.jsdelivr.net/gh/Moksh45/host-xss.rocks/index.js></SCRIPT>",
    "javascript:/*--></title></style></textarea></script></xmp><svg/onload='+/\"/+/"
    "onmouseover=1/+/[*/[]/+alert(1)//'>",
    "<IMG SRC=\"javascript:alert('XSS');\">",
    "<IMG SRC=javascript:alert('XSS')>",
    "<IMG SRC=JaVaScRiPt:alert('XSS')>",
    "<IMG SRC=javascript:alert(&quot;XSS&quot;)>",
    "<IMG SRC=`javascript:alert(\"RSnake says, 'XSS'\")`>",
    "<a onmouseover=\"alert(document.cookie)\">xxs link</a>",
    "<IMG \"\"\"><SCRIPT>alert(\"XSS\")</SCRIPT>\"\\>",
    "<IMG SRC=javascript:alert(String.fromCharCode(88,83,83))>",
    "<IMG SRC=# onmouseover=\"alert('xxs')\">",
    "<IMG SRC=/ onerror=\"alert(String.fromCharCode(88,83,83))\"></img>",
    "<img src=x onerror=\"&#0000106&#0000097&#0000118&#0000097&#0000115&#0000099&#0000114"
    "&#0000105&#0000112&#0000116&#0000058&#0000097&#0000108&#0000101&#0000114&#0000116"
    "&#0000040&#0000039&#0000088&#0000083&#0000083&#0000039&#0000041\">",
    "<IMG SRC=&#106;&#97;&#118;&#97;&#115;&#99;&#114;&#105;&#112;&#116;&#58;&#97;&#108;"
    "&#101;&#114;&#116;&#40;&#39;&#88;&#83;&#83;&#39;&#41;>",
    "<IMG SRC=&#x6A&#x61&#x76&#x61&#x73&#x63&#x72&#x69&#x70&#x74&#x3A&#x61&#x6C&#x65&#x72"
    "&#x74&#x28&#x27&#x58&#x53&#x53&#x27&#x29>",
    "<IMG SRC=\"jav\tascript:alert('XSS');\">",
    "<IMG SRC=\"jav&#x09;ascript:alert('XSS');\">",
    "<IMG SRC=\"jav&#x0A;ascript:alert('XSS');\">",
    "<IMG SRC=\"jav&#x0D;ascript:alert('XSS');\">",
    "<IMG SRC=\" &#14;  javascript:alert('XSS');\">",
    "<SCRIPT/XSS SRC=\"http://xss.rocks/xss.js\"></SCRIPT>",
    "<BODY onload!#$%&()*~+-_.,:;?@[/|\\]^`=alert(\"XSS\")>",
    "<<SCRIPT>alert(\"XSS\");//\\<</SCRIPT>",
    "<SCRIPT SRC=http://xss.rocks/xss.js?< B >",
    "<IMG SRC=\"`('XSS')\"`",
    "</TITLE><SCRIPT>alert(\"XSS\");</SCRIPT>",
    "<INPUT TYPE=\"IMAGE\" SRC=\"javascript:alert('XSS');\">",
    "<BODY BACKGROUND=\"javascript:alert('XSS')\">",
    "<IMG DYNSRC=\"javascript:alert('XSS')\">",
    "<STYLE>li {list-style-image: url(\"javascript:alert('XSS')\");}</STYLE><UL><LI>XSS</br>",
    "<svg/onload=alert('XSS')>",
    "<BODY ONLOAD=alert('XSS')>",
    "<LINK REL=\"stylesheet\" HREF=\"javascript:alert('XSS');\">",
    "<STYLE>@import'http://xss.rocks/xss.css';</STYLE>",
    "<META HTTP-EQUIV=\"Link\" Content=\"<http://xss.rocks/xss.css>; REL=stylesheet\">",
    "<STYLE>BODY{-moz-binding:url(\"http://xss.rocks/xssmoz.xml#xss\")}</STYLE>",
    "<IMG STYLE=\"xss:expr/*XSS*/ession(alert('XSS'))\">",
    "<META HTTP-EQUIV=\"refresh\" CONTENT=\"0;url=javascript:alert('XSS');\">",
    "<META HTTP-EQUIV=\"refresh\" CONTENT=\"0;url=data:text/html base64,"
    "PHNjcmlwdD5hbGVydCgnWFNTJyk8L3NjcmlwdD4K\">",
    "<IFRAME SRC=\"javascript:alert('XSS');\"></IFRAME>",
    "<FRAMESET><FRAME SRC=\"javascript:alert('XSS');\"></FRAMESET>",
    "<TABLE BACKGROUND=\"javascript:alert('XSS')\">",
    "<DIV STYLE=\"background-image: url(javascript:alert('XSS'))\">",
    "<DIV STYLE=\"background-image:\\0075\\0072\\006C\\0028'\\006a\\0061\\0076\\0061\\0073"
    "\\0063\\0072\\0069\\0070\\0074\\003a\\0061\\006c\\0065\\0072\\0074\\0028.1027\\0058"
    ".1053\\0053\\0027\\0029'\\0029\">",
    "<DIV STYLE=\"width: expression(alert('XSS'));\">",
    "<!--[if gte IE 4]><SCRIPT>alert('XSS');</SCRIPT><![endif]-->",
    "<BASE HREF=\"javascript:alert('XSS');//\">",
    "<OBJECT TYPE=\"text/x-scriptlet\" DATA=\"http://xss.rocks/scriptlet.html\"></OBJECT>",
    "<EMBED SRC=\"data:image/svg+xml;base64,PHN2ZyB4bWxuczpzdmc9Imh0dHA6Ly93d3cudzMub3JnLzIwMDAv"
    "c3ZnIj48c2NyaXB0PmFsZXJ0KCJYU1MiKTwvc2NyaXB0Pjwvc3ZnPg==\" type=\"image/svg+xml\" "
    "AllowScriptAccess=\"always\"></EMBED>",
    "<XML ID=\"xss\"><I><B><IMG SRC=\"javas<!-- -->cript:alert('XSS')\"></B></I></XML>",
    "<? echo('<SCR)';echo('IPT>alert(\"XSS\")</SCRIPT>'); ?>",
    "<HEAD><META HTTP-EQUIV=\"CONTENT-TYPE\" CONTENT=\"text/html; charset=UTF-7\"> </HEAD>"
    "+ADw-SCRIPT+AD4-alert('XSS');+ADw-/SCRIPT+AD4-",
    "<SCRIPT a=\">\" SRC=\"httx://xss.rocks/xss.js\"></SCRIPT>",
    # Attribute and element breakouts.
    "\"><script>alert(1)</script>",
    "'><script>alert(1)</script>",
    "\" onmouseover=\"alert(1)",
    "' onmouseover='alert(1)",
    "\" style=\"background:url(javascript:alert(1))\" x=\"",
    "</style><script>alert(1)</script>",
    "</a><img src=x onerror=alert(1)>",
    "<details open ontoggle=alert(1)>",
    "<math><mi xlink:href=\"javascript:alert(1)\">x</mi></math>",
    "<noscript><p title=\"</noscript><img src=x onerror=alert(1)>\">",
    # Comments and CDATA.
    "<!-- <script>alert(1)</script> -->",
    "<!--",
    "<![CDATA[<script>alert(1)</script>]]>",
    "]]><script>alert(1)</script>",
    # Encodings: entity-encoded, double-encoded, URL-encoded, unicode escapes, look-alikes.
    "&lt;script&gt;alert(1)&lt;/script&gt;",
    "&amp;lt;script&amp;gt;alert(1)&amp;lt;/script&amp;gt;",
    "&#60;script&#62;alert(1)&#60;/script&#62;",
    "%3Cscript%3Ealert(1)%3C%2Fscript%3E",
    "\\u003cscript\\u003ealert(1)\\u003c/script\\u003e",
    "\\x3cscript\\x3ealert(1)\\x3c/script\\x3e",
    "\uff1cscript\uff1ealert(1)\uff1c/script\uff1e",
    "\u202egnp.exe<script>alert(1)</script>\u202c",
    # Schemes, as links and as text.
    "javascript:alert(1)",
    "JaVaScRiPt:alert(1)",
    "&#106;avascript:alert(1)",
    "java\tscript:alert(1)",
    "java\nscript:alert(1)",
    " javascript:alert(1)",
    "\x01javascript:alert(1)",
    "javascript&colon;alert(1)",
    "javascript://%0Aalert(1)",
    "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
    "data:text/html,<script>alert(1)</script>",
    "vbscript:msgbox(\"XSS\")",
    "style=\"expression(alert(1))\"",
)
# Links an attacker can still make pass as http(s): they must arrive escaped, inside href.
HTTP_LINKS = (
    "https://evil{n}.example/\"onmouseover=\"alert(1)\"x=\"",
    "https://evil{n}.example/'onmouseover='alert(1)'",
    "https://evil{n}.example/<script>alert(1)</script>",
    "https://evil{n}.example/\"><img/src=x/onerror=alert(1)>",
    "https://evil{n}.example/x?a=1&b=<svg/onload=alert(1)>",
    "http://evil{n}.example/%22%3E%3Cscript%3Ealert(1)%3C/script%3E",
)
# The tags of the digest template, and how many of each it has whatever the content.
TEMPLATE_TAGS = {"html", "head", "meta", "title", "style", "body", "div", "h1", "h2", "h3", "p",
                 "span", "strong", "ul", "li", "a", "br", "code"}
FIXED_COUNTS = {"html": 1, "head": 1, "body": 1, "title": 1, "style": 1, "meta": 4}
ALLOWED_ATTRIBUTES = {"class", "style", "href", "rel", "lang", "charset", "name", "content"}
FORBIDDEN_SCHEMES = re.compile(r"(?:java|vb)script:|data:|livescript:", re.I)
# What a style attribute may hold: the template's own declarations, inlined.
SAFE_STYLE = re.compile(r"[a-z0-9#:;,.%\"' !-]*", re.I)
ENGLISH = "Japanese drone makers report record exports to partner countries this year"


def _cdata(text: str) -> str:
    return "<![CDATA[" + text.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def _link(n: int, payload: str) -> str:
    """The payload itself when it poses as a URL, else a page whose query carries it."""
    if re.match(r"\W*(?:[a-z]+[\t\n]*)+(?:&#\d+;|:|&colon;)", payload, re.I):
        return payload
    return f"https://outlet{n:02d}.example/story?q={payload}"


def _http_link(n: int) -> str:
    """A hostile http(s) link of feed ``n`` (each feed's own: a shared URL is a duplicate)."""
    return HTTP_LINKS[n % len(HTTP_LINKS)].replace("{n}", f"{n:02d}")


def rss_feed(n: int, payload: str) -> bytes:
    """RSS 2.0: the payload in the channel title, item title, description (CDATA, read as
    HTML), author, link and GUID; a second item with a hostile http(s) link."""
    item = (f"<item><title>{escape(f'title{n:02d} {ENGLISH} {payload}')}</title>"
            f"<link>{escape(_link(n, payload))}</link><guid isPermaLink=\"false\">"
            f"{escape(payload)}</guid><author>{escape(payload)}</author>"
            f"<description>{_cdata(f'lead{n:02d} {ENGLISH}. {payload}')}</description></item>"
            f"<item><title>{escape(f'title{n:02d}b {ENGLISH} {payload}')}</title>"
            f"<link>{escape(_http_link(n))}</link>"
            f"<description>{escape(payload)}</description></item>")
    return (f'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>'
            f"<title>{escape(f'outlet{n:02d} {payload}')}</title>"
            f"<link>https://outlet{n:02d}.example/</link><language>en</language>{item}"
            "</channel></rss>").encode()


def atom_feed(n: int, payload: str) -> bytes:
    """Atom: the payload in the feed title (text), entry title (text: kept literally),
    summary (html), content (html), author name, link href and id."""
    entry = (f"<entry><title type=\"text\">{escape(f'title{n:02d} {ENGLISH} {payload}')}"
             f"</title><link href={quoteattr(_link(n, payload))}/><id>{escape(payload)}</id>"
             f"<author><name>{escape(payload)}</name></author>"
             f"<summary type=\"html\">{escape(f'lead{n:02d} {ENGLISH}. {payload}')}</summary>"
             f"<content type=\"html\">{escape(payload)}</content></entry>"
             f"<entry><title type=\"html\">{escape(f'title{n:02d}b {ENGLISH} {payload}')}"
             f"</title><link href={quoteattr(_http_link(n))}/>"
             f"<id>urn:x:{n}b</id></entry>")
    return (f'<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom"'
            f' xml:lang="en"><title type="text">{escape(f"outlet{n:02d} {payload}")}</title>'
            f"<id>urn:feed:{n}</id>{entry}</feed>").encode()


XHTML_FEED = b"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom" xml:lang="en"><title>xhtml outlet</title>
<id>urn:feed:xhtml</id><entry><title type="xhtml"><div xmlns="http://www.w3.org/1999/xhtml">
titlexhtml Japanese drone makers report record exports <script>alert(1)</script>
<img src="x" onerror="alert(2)"/><svg xmlns="http://www.w3.org/2000/svg" onload="alert(3)"/>
</div></title><id>urn:x:xhtml</id><link href="https://xhtml.example/a"/>
<content type="xhtml"><div xmlns="http://www.w3.org/1999/xhtml">leadxhtml
<iframe src="javascript:alert(4)"></iframe><a href="javascript:alert(5)">click</a>
<style>body{background:url(javascript:alert(6))}</style></div></content></entry></feed>"""


# --- reading the delivered HTML ---------------------------------------------------------------


class Document(HTMLParser):
    """Every element, attribute, comment, declaration and text run of an HTML document."""

    def __init__(self, source: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.style_text: list[str] = []
        self.comments: list[str] = []
        self.declarations: list[str] = []
        self._open: list[str] = []
        self.feed(source)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))
        self._open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        if tag in self._open:
            del self._open[len(self._open) - 1 - self._open[::-1].index(tag):]

    def handle_data(self, data: str) -> None:
        (self.style_text if self._open[-1:] == ["style"] else self.text).append(data)

    def handle_comment(self, data: str) -> None:
        self.comments.append(data)

    def handle_decl(self, decl: str) -> None:
        self.declarations.append(decl)

    def unknown_decl(self, data: str) -> None:
        self.declarations.append(data)

    def handle_pi(self, data: str) -> None:
        self.declarations.append(data)

    def attributes(self) -> Iterator[tuple[str, str, str]]:
        for tag, attrs in self.tags:
            for name, value in attrs.items():
                yield tag, name, value


def _squeezed(value: str) -> str:
    """An attribute value (already unescaped by the parser) as a browser reads a URL in it:
    controls and whitespace ignored."""
    return re.sub(r"[\x00-\x20\x7f]+", "", value)


def assert_inert(source: str) -> Document:
    """The HTML part runs nothing, loads nothing and carries feed text only as text."""
    doc = Document(source)
    counts = Counter(tag for tag, _ in doc.tags)
    assert set(counts) <= TEMPLATE_TAGS, set(counts) - TEMPLATE_TAGS
    assert {t: counts[t] for t in FIXED_COUNTS} == FIXED_COUNTS
    assert doc.comments == [] and doc.declarations == ["DOCTYPE html"], (
        doc.comments, doc.declarations)
    for tag, name, value in doc.attributes():
        assert name in ALLOWED_ATTRIBUTES, (tag, name, value)
        assert not name.startswith("on"), (tag, name)
        if name == "href":  # an http(s) URL; its path or query may quote anything, escaped
            assert tag == "a" and re.match(r"https?://[^/\s]", value), value
            assert re.match(r"https?://", _squeezed(value), re.I), value
        else:
            assert not FORBIDDEN_SCHEMES.search(_squeezed(value)), (tag, name, value)
        if name == "style":
            assert SAFE_STYLE.fullmatch(value), value
            assert not re.search(r"alert|title\d|lead\d|outlet\d|evil|url|expression", value,
                                 re.I), value
        if name not in ("href", "style"):
            assert not re.search(r"alert|title\d|lead\d|outlet\d|evil", value), (tag, name)
    assert doc.style_text == _template_style()  # the template's own <style>, nothing added
    assert not re.search(r"<\s*/?\s*(?:script|iframe|object|embed|svg|img|math|base|link|"
                         r"frame|input|body\s+on|details|noscript|xml)\b", _outside_tags(source),
                         re.I)
    return doc


def _template_style() -> list[str]:
    """The <style> text of a digest without any feed content."""
    since = datetime(2025, 8, 20, tzinfo=UTC)
    empty = digest.build_digest(since.date(), digest.Window(since, since + timedelta(days=1)),
                                [], [])
    return Document(digest.render_html(empty)).style_text


def _outside_tags(source: str) -> str:
    """The raw HTML with the template's own elements removed: what is left is text, and a
    ``<`` in text must always be escaped."""
    tags = "|".join(TEMPLATE_TAGS)
    return re.sub(rf"<(?:/?(?:{tags})\b[^<>]*|!DOCTYPE html)>", "", source)


def assert_inert_by_lxml(source: str) -> None:
    """A second parser (libxml2's HTML parser) agrees: only template elements, no handlers."""
    lxml_html = pytest.importorskip("lxml.html")
    root = lxml_html.document_fromstring(source)
    tags = Counter(element.tag for element in root.iter() if isinstance(element.tag, str))
    assert set(tags) <= TEMPLATE_TAGS, set(tags) - TEMPLATE_TAGS
    for element in root.iter():
        for name, value in element.attrib.items():
            assert not name.lower().startswith("on"), (element.tag, name)
            if name == "href":
                assert re.match(r"https?://", _squeezed(value), re.I), value
            else:
                assert not FORBIDDEN_SCHEMES.search(_squeezed(value)), (element.tag, name)


# --- the whole path ---------------------------------------------------------------------------


def _serve(server: LoopbackServer) -> list[dict[str, str]]:
    """One feed per payload (RSS and Atom in turn), the XHTML feed, and failing feeds
    whose URL or error carries a payload (they show in the digest's feed health)."""
    feeds = []
    for n, payload in enumerate(PAYLOADS):
        body = rss_feed(n, payload) if n % 2 == 0 else atom_feed(n, payload)
        feeds.append({"url": server.route(f"/feed{n:02d}", Reply(body=body))})
    feeds.append({"url": server.route("/xhtml", Reply(body=XHTML_FEED))})
    broken = "http://x:<script>alert('health')</script>/"  # the error quotes the bad port
    feeds.append({"url": server.route("/bad-redirect", Reply.redirect(broken, 302))})
    feeds.append({"url": server.url("/health\"onmouseover=\"alert(1)\"<script>alert(2)</script>")})
    return feeds


def _config(tmp_path: Path, feeds: list[dict[str, str]]) -> Path:
    path = write_config(tmp_path / "config.toml", feeds)
    with path.open("a", encoding="utf-8") as extra:
        extra.write('\n[translation]\nenabled = false\n[dedup]\nembedder = "none"\n'
                    '[digest]\ntimezone = "UTC"\nsender = "monitor@example.org"\n')
    return path


def test_payloads_are_inert_in_the_delivered_digest(
        monitor: Invoke, smtp_server: SmtpFactory, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every payload, in every feed field, reaches the digest only as escaped text: the HTML
    part has the template's elements alone, no handler, no script scheme, http(s) links only;
    the text part carries the same items, bounded."""
    assert len(PAYLOADS) >= 40
    # Every payload's item in one digest (near duplicates share a story, so show them all).
    monkeypatch.setattr(digest, "MAX_STORIES", 1000)
    monkeypatch.setattr(digest, "ITEMS_PER_STORY", 1000)
    with LoopbackServer() as server:
        config = _config(tmp_path, _serve(server))
        polled = monitor("-v", "run", "--once", config=config)
    assert polled.exit_code == 1, polled.output  # the two failing feeds, nothing else
    assert polled.stdout.count("FAILED") == 2, polled.stdout
    now = datetime.now(UTC)
    mail = smtp_server()
    sent = monitor("digest", "--send", "--since", (now - timedelta(days=1)).isoformat(),
                   "--until", (now + timedelta(hours=1)).isoformat(), "--smtp-url", mail.url(),
                   "--to", "reader@example.org", config=config)
    assert sent.exit_code == 0, sent.output
    (received,) = mail.messages
    text_part = received.message.get_body(("plain",))
    html_part = received.message.get_body(("html",))
    assert text_part is not None and html_part is not None
    text = str(text_part.get_content()).replace("\r\n", "\n")
    source = str(html_part.get_content()).replace("\r\n", "\n")

    doc = assert_inert(source)
    assert_inert_by_lxml(source)
    shown = " ".join(doc.text)
    for n in range(len(PAYLOADS)):  # each feed reached the digest: outlet, titles, links
        for marker in (f"outlet{n:02d}", f"title{n:02d} ", f"title{n:02d}b"):
            assert marker in shown and marker in text, marker
    assert "titlexhtml" in shown and "alert('health')" in shown
    literal = [p for p in PAYLOADS[1::2] if re.fullmatch(r"[!-~]{1,120}", p)]  # Atom text titles
    assert len(literal) > 10
    for payload in literal:  # shown as the very characters the feed sent
        assert payload in text and payload in shown, payload
    assert "alert(2)</script>" in shown  # the failing feed's URL, as text
    hrefs = [attrs["href"] for tag, attrs in doc.tags if tag == "a"]
    # The hostile http(s) links stay links, their quotes and brackets percent-encoded.
    assert any("/%22onmouseover=%22alert(1)%22x=%22" in href for href in hrefs), hrefs
    assert any("/%3Cscript%3Ealert(1)%3C/script%3E" in href for href in hrefs), hrefs
    assert not [href for href in hrefs if re.search(r"[\"'<>`\s]", href)]

    longest = digest.NAME_CHARS + digest.TITLE_CHARS + digest.REASON_CHARS
    # Every line holds a few capped fields; "reported by" lists every outlet here (the
    # patched ITEMS_PER_STORY), each capped at NAME_CHARS.
    lines = [line for line in text.splitlines() if not line.startswith("  reported by ")]
    assert max(len(line) for line in lines) <= longest
    assert len(text) < 400_000 and len(source) < 1_500_000

