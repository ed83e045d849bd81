"""The one orchestrator: articles from one source (a polled feed or a backfill file)
to stored items and stories, in the caller's transaction.

    normalize/parse (parse.py)  ->  prepare(): detect language, match topics,
    translation hook, fingerprints  ->  store.find_existing(): exact identity
    ->  place(): duplicate, join a story, or a new story  ->  stories.place_near():
    near duplicates (MinHash, LSH bands in the database)  ->  store: batched inserts,
    dedup fingerprints with the embedding ``pending`` (the sweep does stage 3)
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session

from monitor import store, stories
from monitor.config import Settings, Topic
from monitor.coordination import story_lock
from monitor.dedup import Document, Fingerprint, Thresholds
from monitor.dedup import fingerprints as near_fingerprints
from monitor.language import Detector, detect_languages, make_detector
from monitor.normalize import canonical_url, content_key, title_key
from monitor.topics import match_topics
from monitor.translate import can_translate
from monitor.types import Article, Detection, Existing, IngestReport, Placement, Prepared

DETECT_CHARS = 600
MIN_TITLE_WORDS = 3
MIN_CJK_TITLE_CHARS = 8
MIN_CONTENT_CHARS = 120


@dataclass(frozen=True)
class SourceContext:
    """What the caller knows about where the articles come from."""

    source_key: str
    outlet: str | None = None
    feed_id: int | None = None
    language: str | None = None
    topics: tuple[str, ...] = ()
    published: datetime | None = None


@dataclass(frozen=True)
class Filters:
    since: datetime | None = None
    until: datetime | None = None

    def admits(self, when: datetime | None) -> bool:
        if self.since is None and self.until is None:
            return True
        if when is None:
            return False
        return (self.since is None or when >= self.since) and (
            self.until is None or when <= self.until)


@dataclass(frozen=True)
class Pipeline:
    """The stages' shared, read-only equipment."""

    topics: tuple[Topic, ...]
    detector: Detector
    target_language: str = "en"
    can_translate: Callable[[str], bool] = field(default=lambda _lang: False)
    dedup: Thresholds = Thresholds()
    embed: bool = False  # whether new items wait for the embedding sweep (stage 3)

    @classmethod
    def from_settings(cls, settings: Settings) -> Pipeline:
        languages = settings.language.languages or None
        return cls(topics=settings.topics,
                   detector=make_detector(settings.language.detector, languages),
                   target_language=settings.translation.target,
                   can_translate=can_translate(settings),
                   dedup=stories.thresholds(settings.dedup),
                   embed=settings.dedup.embedder != "none")


# --- pure stages ---------------------------------------------------------------------


def _digest(text: str) -> str:
    # surrogatepass: total on any str (a lone surrogate must not crash an ingest).
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def fingerprints(article: Article) -> tuple[str, str | None]:
    """Title hash (empty when the title is too generic to identify an article) and
    content hash (None when there is too little text)."""
    key = title_key(article.title)
    words = key.split()
    long_enough = len(words) >= MIN_TITLE_WORDS or (
        bool(words) and not key.isascii() and len(key) >= MIN_CJK_TITLE_CHARS)
    body = content_key(article.text or article.summary)
    return (_digest(key) if long_enough else ""), (
        _digest(body) if len(body) >= MIN_CONTENT_CHARS else None)


def lead_text(article: Article) -> str:
    """Headline and opening text for language detection, without saying the same twice
    (an article's summary or body often starts with its headline)."""
    body = article.text or article.summary
    stem = article.title.rstrip("…. ")[:60]
    lead = body if stem and body.startswith(stem) else f"{article.title}\n{body}"
    return lead[:DETECT_CHARS]


def detect_all(articles: Sequence[Article], ctx: SourceContext,
               pipeline: Pipeline) -> list[Detection]:
    """The language of each article (metadata first), the detector asked once for all:
    py3langid scores a whole feed in one pass, several times cheaper than item by item."""
    return detect_languages([lead_text(a) for a in articles],
                            [(*a.language_hints, ctx.language) for a in articles],
                            pipeline.detector)


def translation_decision(detection: Detection, pipeline: Pipeline) -> tuple[str, str | None]:
    """The translation hook: what to do with an item in this language."""
    lang, target = detection.language, pipeline.target_language
    if lang == target:
        return "not_needed", None
    if lang == "und":
        return "skipped", "language unknown: nothing to translate from"
    if pipeline.can_translate(lang):
        return "pending", f"queued for {lang}->{target} translation"
    return "pending", (f"no {lang}->{target} translation model installed; "
                       f"run `monitor models install {lang}`, then `monitor translate --pending`")


def guid_of(article: Article, url: str | None) -> str:
    if article.guid:
        return article.guid[:2048]
    if url:
        return url[:2048]
    stamp = article.published.isoformat() if article.published else ""
    return "sha:" + _digest(f"{article.title}\n{stamp}\n{article.text or article.summary}")


def prepare(article: Article, ctx: SourceContext, pipeline: Pipeline,
            now: datetime, detection: Detection | None = None) -> Prepared:
    """Every pure stage for one article (its language given when already detected, see
    :func:`detect_all`)."""
    if article.published is None and ctx.published is not None:
        article = _with(article, published=ctx.published)
    url = canonical_url(article.url) if article.url else None
    if detection is None:
        detection = detect_all([article], ctx, pipeline)[0]
    topics = [t for t in pipeline.topics if not ctx.topics or t.name in ctx.topics]
    matches = match_topics(topics, (article.title, article.summary, article.text))
    status, reason = translation_decision(detection, pipeline)
    title_hash, content_hash = fingerprints(article)
    return Prepared(
        article=article, source_key=ctx.source_key, guid=guid_of(article, url),
        outlet=(article.outlet or ctx.outlet or "unknown")[:200], canonical_url=url,
        detection=detection, topics=matches, translation_status=status,
        translation_reason=reason, title_hash=title_hash, content_hash=content_hash,
        first_seen=article.published or now, feed_id=ctx.feed_id)


def fingerprints_of(batch: Sequence[Prepared], now: datetime) -> list[Fingerprint]:
    """Shingle signatures and LSH band keys for the near-duplicate stage."""
    return near_fingerprints([Document(p.article.title, p.article.text or p.article.summary,
                                  p.article.published, now, p.feed_id is not None,
                                  p.source_key, p.guid) for p in batch])


def _with(article: Article, **changes: object) -> Article:
    from dataclasses import replace
    return replace(article, **changes)  # type: ignore[arg-type]


def place(batch: Sequence[Prepared], existing: dict[int, Existing]) -> list[Placement]:
    """Exact identity decides: the same document is a duplicate; the same text from
    another outlet joins that story; anything else starts a story of its own, which the
    near-duplicate stage (inline, :func:`monitor.stories.place_near`) and the
    cross-lingual stage (the embedding sweep, :mod:`monitor.story_sweep`) refine."""
    placements: list[Placement] = []
    seen: dict[tuple[str, str], int] = {}
    for index, p in enumerate(batch):
        hit = existing.get(index)
        if hit is not None:
            placements.append(_place_hit(hit, p))
            continue
        placements.append(_place_in_batch(index, p, seen, placements, batch))
    return placements


def _place_hit(hit: Existing, p: Prepared) -> Placement:
    if hit.reason == "content" and hit.outlet != p.outlet and hit.story_id is not None:
        return Placement(story_id=hit.story_id, reason="content")
    return Placement(duplicate_of=hit.reason)


def _batch_keys(p: Prepared) -> list[tuple[str, str]]:
    keys = [("guid", f"{p.source_key}\n{p.guid}")]
    keys += [("url", u) for u in (p.canonical_url, p.article.url) if u]
    if p.title_hash:
        keys.append(("title", f"{p.outlet}\n{p.title_hash}"))
    if p.content_hash:
        keys.append(("content", p.content_hash))
    return keys


def _place_in_batch(index: int, p: Prepared, seen: dict[tuple[str, str], int],
                    placements: list[Placement], batch: Sequence[Prepared]) -> Placement:
    result = Placement()
    for key in _batch_keys(p):
        first = seen.get(key)
        if first is None:
            continue
        if key[0] != "content" or batch[first].outlet == p.outlet:
            return Placement(duplicate_of=key[0])
        leader = placements[first]
        result = Placement(story_id=leader.story_id, reason="content",
                           leader=None if leader.story_id is not None
                           else (leader.leader if leader.leader is not None else first))
        break
    for key in _batch_keys(p):
        seen.setdefault(key, index)
    return result


# --- the orchestrator ----------------------------------------------------------------


def ingest(session: Session, articles: Sequence[Article], ctx: SourceContext,
           pipeline: Pipeline, now: datetime, filters: Filters = Filters()) -> IngestReport:
    """Store one source's articles in the caller's transaction.

    Several workers may ingest copies of one story at the same moment. Each decision
    reads what is stored, so two copies decided side by side would each start a story.
    The decisions are therefore serialized on PostgreSQL advisory locks, held until the
    transaction ends (:func:`monitor.coordination.story_lock`), keyed by what can make
    two articles the same document or story: before exact identity is read, the batch's
    identity keys (GUID within its source, URLs, title within its outlet, content hash);
    before near duplicates are read, the band keys of the articles that would start a
    story. A worker that finds a key taken waits for that transaction to commit and
    then sees its items, so the second copy joins the first one's story (or is a
    duplicate). Two transactions wait for each other only when they share a key, so
    unrelated feeds are ingested in parallel; both phases take their keys in one sorted
    statement, identity before bands, so that no two ingests can deadlock.

    Why not detect and merge after commit: that would need every decision taken twice,
    and a merge that deletes a story other transactions may be linking items to at that
    moment. Cross-lingual joins (stage 3) come later, in the embedding sweep, which merges
    provisional stories under a lock of its own (:func:`monitor.story_sweep.join_across`).
    """
    admitted = [a for a in articles if filters.admits(a.published or ctx.published)]
    batch = [prepare(a, ctx, pipeline, now, detection) for a, detection in
             zip(admitted, detect_all(admitted, ctx, pipeline), strict=True)]
    story_lock(session, "identity", [f"{kind}\n{key}" for p in batch
                                     for kind, key in _batch_keys(p)])
    placements = place(batch, store.find_existing(session, batch))
    new = [i for i, pl in enumerate(placements) if pl.duplicate_of is None]
    prints = dict(zip(new, fingerprints_of([batch[i] for i in new], now), strict=True))
    story_lock(session, "bands", [k for i in _starting(placements, prints)
                                  for k in prints[i].bands])
    placements = stories.place_near(session, batch, placements, prints, pipeline.dedup)
    fresh = [i for i, pl in enumerate(placements) if pl.duplicate_of is None]
    ids = store.insert_items(session, [batch[i] for i in fresh], now)
    stored = {i: item_id for i, item_id in zip(fresh, ids, strict=True) if item_id is not None}
    story_of = _assign_stories(session, batch, placements, stored, now)
    _store_extras(session, batch, stored)
    stories.record(session, {item_id: prints[i] for i, item_id in stored.items()},
                   pipeline.embed)
    duplicates = Counter(pl.duplicate_of for pl in placements if pl.duplicate_of)
    duplicates["guid"] += len(fresh) - len(stored)  # lost a race to another writer
    return IngestReport(
        new=len(stored), duplicates={k: v for k, v in duplicates.items() if v},
        skipped=len(articles) - len(admitted),
        new_stories=sum(1 for i in stored if placements[i].story_id is None
                        and placements[i].leader is None),
        item_ids=tuple(stored.values()), story_ids=tuple(sorted(set(story_of.values()))))


def _starting(placements: Sequence[Placement], prints: dict[int, Fingerprint]) -> list[int]:
    """The articles that would start a story unless a near duplicate is found."""
    return [i for i, pl in enumerate(placements) if pl.duplicate_of is None
            and pl.story_id is None and pl.leader is None and i in prints]


def _assign_stories(session: Session, batch: Sequence[Prepared], placements: list[Placement],
                    stored: dict[int, int], now: datetime) -> dict[int, int]:
    leaders = [i for i in stored if placements[i].story_id is None
               and placements[i].leader is None]
    new_ids = store.insert_stories(
        session, [(batch[i].article.title, batch[i].first_seen) for i in leaders], now)
    story_of = dict(zip(leaders, new_ids, strict=True))
    touched: dict[int, list[datetime]] = {}
    for i in stored:
        pl = placements[i]
        if i not in story_of:
            story_of[i] = pl.story_id if pl.story_id is not None else story_of[pl.leader or 0]
            touched.setdefault(story_of[i], []).append(batch[i].first_seen)
    store.link_items(session, [(stored[i], story_of[i], placements[i]) for i in stored], now)
    store.touch_stories(session, touched)
    return story_of


def _store_extras(session: Session, batch: Sequence[Prepared], stored: dict[int, int]) -> None:
    urls = [(u, item_id) for i, item_id in stored.items()
            for u in dict.fromkeys((batch[i].canonical_url, batch[i].article.url)) if u]
    store.insert_urls(session, urls)
    store.insert_topics(session, [
        {"item_id": item_id, "topic": m.topic, "matched_on": m.matched_on,
         "keywords": list(m.keywords)}
        for i, item_id in stored.items() for m in batch[i].topics])
