"""The daily digest: built from plain values into a frozen :class:`Digest` (pure), then
rendered as plain text and HTML from the Jinja2 templates in ``monitor/templates``.

Everything that comes from a feed is untrusted. Building cleans it (control and
bidirectional-override characters removed, whitespace collapsed, length capped) and
decides which links may be links (http and https only, with a host, of sane length);
the HTML template autoescapes every value and loads nothing remote.

Order: one section per topic (in the configured order, then unknown topics, then the
stories that matched none); a story appears once, under the topic most of its items
matched. Inside a section the stories reported by more outlets, then in more languages,
then more recently, come first.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from monitor.config import Topic
from monitor.store import DigestItem, DigestStory, FeedHealth

TITLE_CHARS = 300
SUMMARY_CHARS = 400
NAME_CHARS = 80
REASON_CHARS = 300
URL_CHARS = 2048
URL_LABEL_CHARS = 70
ITEMS_PER_STORY = 10
MAX_STORIES = 100
NO_TOPIC = "other"
# C0/C1 controls, zero-width marks, line/paragraph separators and bidi overrides: none
# belongs in a headline, and the overrides can make text read as something it is not.
_INVISIBLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")
# Characters a URL must not carry raw (RFC 3986; browsers percent-encode them when they
# follow the link). Encoded here, an href holds nothing an HTML serializer might leave
# unescaped: css_inline re-serializes the document and writes "<" and ">" in attribute
# values as they are, which a strict HTML5 parser reads safely but older mail clients may not.
_URL_UNSAFE = re.compile(r"[\"'<>`]")


@dataclass(frozen=True)
class Window:
    """The digest covers items first seen after ``since`` up to ``until`` (UTC)."""

    since: datetime
    until: datetime


@dataclass(frozen=True)
class Link:
    """A link to show: ``href`` is None when it is not a safe http(s) URL (text only)."""

    href: str | None
    label: str


@dataclass(frozen=True)
class ItemLine:
    outlet: str
    language: str
    title: str
    original_title: str | None
    link: Link | None
    pending: bool = False  # not translated yet


@dataclass(frozen=True)
class StoryEntry:
    headline: str
    original_headline: str | None  # set when the headline is a translation
    original_language: str | None  # the language of the original (or untranslated) headline
    translation_pending: bool
    reported_by: str  # "3 outlets in en, nb"
    outlets: tuple[str, ...]  # "Outlet (en)"
    languages: tuple[str, ...]
    first_seen: str
    summary: str
    items: tuple[ItemLine, ...]
    more_items: int
    is_new: bool
    also_in: tuple[str, ...]  # the story's other topics


@dataclass(frozen=True)
class Section:
    topic: str
    description: str
    stories: tuple[StoryEntry, ...]


@dataclass(frozen=True)
class HealthLine:
    feed: str
    link: Link | None
    status: str  # muted | failing | recovered
    reason: str


@dataclass(frozen=True)
class Counts:
    stories: int
    new_stories: int
    items: int
    languages: int
    translated: int
    pending: int


@dataclass(frozen=True)
class Digest:
    day: date
    timezone: str
    since: str
    until: str
    window: Window
    counts: Counts
    sections: tuple[Section, ...]
    health: tuple[HealthLine, ...]
    more_stories: int  # stories left out beyond MAX_STORIES

    @property
    def empty(self) -> bool:
        """Nothing new and no feed trouble: not worth a message unless asked."""
        return self.counts.stories == 0 and not self.health

    @property
    def subject(self) -> str:
        n = self.counts.stories
        return f"monitor digest {self.day.isoformat()}: {n} {'story' if n == 1 else 'stories'}"


# --- time ----------------------------------------------------------------------------


def send_time(day: date, hhmm: str, timezone: str) -> datetime:
    """The UTC instant of ``day``'s send time (local ``hhmm`` in ``timezone``)."""
    hour, minute = (int(part) for part in hhmm.split(":"))
    return datetime.combine(day, time(hour, minute), ZoneInfo(timezone)).astimezone(UTC)


def latest_due_day(now: datetime, hhmm: str, timezone: str) -> date:
    """The newest digest date whose send time has come (today after the send time,
    yesterday before it)."""
    today = now.astimezone(ZoneInfo(timezone)).date()
    return today if now >= send_time(today, hhmm, timezone) else today - timedelta(days=1)


def _local(when: datetime, timezone: str) -> str:
    return when.astimezone(ZoneInfo(timezone)).strftime("%Y-%m-%d %H:%M %Z")


# --- cleaning --------------------------------------------------------------------------


def clean(text: str | None, cap: int) -> str:
    """One line of at most ``cap`` characters: invisible characters dropped, whitespace
    collapsed, cut at a word boundary when one is near, with an ellipsis."""
    flat = " ".join(_INVISIBLE.sub(" ", text or "").split())
    if len(flat) <= cap:
        return flat
    cut = flat[:cap - 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > cap * 0.6 else cut).rstrip() + "…"


def safe_link(url: str | None) -> Link | None:
    """A link for ``url``: clickable only for a well-formed http(s) URL with a host, with
    quotes, angle brackets and backticks percent-encoded."""
    if not url or not url.strip():
        return None
    raw = url.strip()
    label = clean(raw, URL_LABEL_CHARS)
    if len(raw) > URL_CHARS or _INVISIBLE.search(raw) or any(c.isspace() for c in raw):
        return Link(None, label)
    try:
        parts = urlsplit(raw)
        host = parts.hostname
    except ValueError:
        return Link(None, label)
    if parts.scheme.lower() not in ("http", "https") or not host:
        return Link(None, label)
    href = _URL_UNSAFE.sub(lambda m: f"%{ord(m.group()):02X}", raw)
    return Link(href, clean(f"{parts.netloc}{parts.path}", URL_LABEL_CHARS))


# --- building --------------------------------------------------------------------------


def build_digest(day: date, window: Window, stories: Sequence[DigestStory],
                 health: Sequence[FeedHealth], *, topics: Sequence[Topic] = (),
                 timezone: str = "UTC", target: str = "en") -> Digest:
    """The digest of ``stories`` (each with every item; ``in_window`` marks the new ones)."""
    ranked = sorted(stories, key=_rank)
    kept = ranked[:MAX_STORIES]
    order = [t.name for t in topics]
    placed: dict[str, list[StoryEntry]] = {}
    for story in kept:
        section, others = _section_of(story, order)
        placed.setdefault(section, []).append(_entry(story, others, window, timezone, target))
    return Digest(
        day=day, timezone=timezone, since=_local(window.since, timezone),
        until=_local(window.until, timezone), window=window,
        counts=_counts(stories, window, target),
        sections=_sections(placed, topics), health=tuple(_health(h) for h in health),
        more_stories=len(ranked) - len(kept))


def _rank(story: DigestStory) -> tuple[int, int, float, int]:
    outlets = len({i.outlet for i in story.items})
    languages = len({i.language for i in story.items})
    return (-outlets, -languages, -story.last_seen.timestamp(), story.id)


def _section_of(story: DigestStory, order: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """The topic most of the story's items matched (the configured order breaks ties),
    and its other topics."""
    votes = Counter(t for item in story.items for t in set(item.topics))
    if not votes:
        return NO_TOPIC, ()
    position = {name: i for i, name in enumerate(order)}
    ranked = sorted(votes, key=lambda t: (-votes[t], position.get(t, len(order)), t))
    return ranked[0], tuple(ranked[1:])


def _sections(placed: dict[str, list[StoryEntry]], topics: Sequence[Topic]) -> tuple[Section, ...]:
    described = {t.name: t.description for t in topics}
    names = [t.name for t in topics if t.name in placed]
    names += sorted(n for n in placed if n not in described and n != NO_TOPIC)
    names += [NO_TOPIC] if NO_TOPIC in placed else []
    return tuple(Section(clean(name, NAME_CHARS), clean(described.get(name, ""), SUMMARY_CHARS),
                         tuple(placed[name])) for name in names)


def _english(item: DigestItem, target: str) -> tuple[str | None, str | None]:
    """The item's headline and lead in the target language, when it has them."""
    if item.language == target:
        return item.title, item.lead
    if item.translation_status == "done" and item.translated_title:
        return item.translated_title, item.translated_lead
    return None, None


def _entry(story: DigestStory, others: tuple[str, ...], window: Window, timezone: str,
           target: str) -> StoryEntry:
    items = story.items
    readable = [(item, *_english(item, target)) for item in items]
    lead = next(((i, t, s) for i, t, s in readable if t), None)
    if lead is None:  # nothing in the target language yet: show the original
        first = items[0] if items else None
        headline = first.title if first else story.headline
        original, language, summary = None, first.language if first else None, ""
    else:
        item, headline, summary = lead[0], lead[1] or "", lead[2] or ""
        translated = item.language != target
        original = clean(item.title, TITLE_CHARS) if translated else None
        language = item.language if translated else None
    outlets = _outlets(items)
    languages = tuple(sorted({i.language for i in items}))
    return StoryEntry(
        headline=clean(headline, TITLE_CHARS), original_headline=original,
        original_language=language, translation_pending=lead is None and language != target,
        reported_by=_reported_by(len({i.outlet for i in items}), languages), outlets=outlets,
        languages=languages, first_seen=_local(story.first_seen, timezone),
        summary=clean(summary, SUMMARY_CHARS),
        items=tuple(_line(i, target) for i in items[:ITEMS_PER_STORY]),
        more_items=max(0, len(items) - ITEMS_PER_STORY),
        is_new=story.first_seen > window.since, also_in=tuple(clean(o, NAME_CHARS) for o in others))


def _outlets(items: Sequence[DigestItem]) -> tuple[str, ...]:
    languages: dict[str, set[str]] = {}
    for item in items:
        languages.setdefault(item.outlet, set()).add(item.language)
    named = [f"{clean(name, NAME_CHARS)} ({', '.join(sorted(langs))})"
             for name, langs in languages.items()]
    more = len(named) - ITEMS_PER_STORY
    return tuple(named[:ITEMS_PER_STORY] + ([f"{more} more"] if more > 0 else []))


def _reported_by(outlets: int, languages: Sequence[str]) -> str:
    noun = "outlet" if outlets == 1 else "outlets"
    return f"reported by {outlets} {noun} in {', '.join(languages)}"


def _line(item: DigestItem, target: str) -> ItemLine:
    title, _ = _english(item, target)
    original = clean(item.title, TITLE_CHARS) if title and item.language != target else None
    return ItemLine(clean(item.outlet, NAME_CHARS), clean(item.language, 16),
                    clean(title or item.title, TITLE_CHARS), original, safe_link(item.url),
                    pending=title is None and item.translation_status == "pending")


def _counts(stories: Sequence[DigestStory], window: Window, target: str) -> Counts:
    new_items = [i for s in stories for i in s.items if i.in_window]
    return Counts(
        stories=len(stories), new_stories=sum(s.first_seen > window.since for s in stories),
        items=len(new_items), languages=len({i.language for i in new_items}),
        translated=sum(i.translation_status == "done" for i in new_items),
        pending=sum(i.translation_status == "pending" for i in new_items))


def _health(feed: FeedHealth) -> HealthLine:
    name = feed.outlet or feed.title or feed.url
    status = "muted" if feed.status == "muted" else (
        "failing" if feed.error_count else "recovered")
    reason = feed.last_error or "no reason recorded"
    if status == "failing" and feed.error_count > 1:
        reason = f"{reason} ({feed.error_count} failures in a row)"
    return HealthLine(clean(name, NAME_CHARS), safe_link(feed.url), status,
                      clean(reason, REASON_CHARS))


# --- rendering -------------------------------------------------------------------------


@cache
def _environment():  # type: ignore[no-untyped-def]
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    return Environment(
        loader=PackageLoader("monitor", "templates"),
        autoescape=select_autoescape(enabled_extensions=("html.j2",), default=False),
        undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        keep_trailing_newline=True)


def render_text(digest: Digest) -> str:
    """The plain-text part."""
    return str(_environment().get_template("digest.txt.j2").render(d=digest))


def render_html(digest: Digest) -> str:
    """The HTML part: autoescaped, CSS inlined (the dark-mode rules stay in <style>)."""
    import css_inline

    html = _environment().get_template("digest.html.j2").render(d=digest)
    inliner = css_inline.CSSInliner(keep_at_rules=True, load_remote_stylesheets=False)
    return str(inliner.inline(html))
