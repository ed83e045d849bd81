"""Stories end to end, on SQLite and PostgreSQL: the seeds, order independence, near
duplicates, a reader's split and merge, rebuild, the sweep, and bad input."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sqlalchemy import create_engine, select, update

from monitor import config, db, store
from monitor.config import DedupSettings
from monitor.models import ItemDedupRow, ItemRow
from monitor.pipeline import Pipeline, ingest
from monitor.sources import discover, read
from monitor.story_sweep import schedule_dedup, sweep
from tests.conftest import CONFIG, SEEDS, Invoke

Partition = set[frozenset[str]]
SEED_STORIES = {frozenset({"000"}), frozenset({"001"}), frozenset({"002", "003", "004"})}
WIRE = ("Japanese Defense Minister Gen Nakatani met his Turkish counterpart Yasar Guler in "
        "Ankara on Tuesday, pledging to expand defense industry cooperation as Tokyo weighs "
        "buying drones from the NATO member. The two ministers agreed to hold consultations "
        "between senior officials on defense equipment and technology, the ministry said, "
        "after talks that lasted about 100 minutes and ran longer than scheduled.")


def _stories(invoke: Invoke) -> list[dict]:
    result = invoke("stories", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _partition(invoke: Invoke, key: str = "outlet", size: int = 3) -> Partition:
    return {frozenset(i[key][:size] for i in s["items"]) for s in _stories(invoke)}


def _story_of(invoke: Invoke, prefix: str) -> dict:
    return next(s for s in _stories(invoke) if any(i["outlet"].startswith(prefix)
                                                   for i in s["items"]))


def _item(story: dict, prefix: str) -> dict:
    return next(i for i in story["items"] if i["outlet"].startswith(prefix))


def test_seeds_make_three_stories_and_004_joins_across_languages(monitor: Invoke) -> None:
    """{000}, {001}, {002, 003, 004}: the Norwegian 004 joins by the cross-lingual stage,
    the two different OSA stories (000, 001) stay apart."""
    result = monitor("backfill", str(SEEDS))
    assert result.exit_code == 0, result.output
    assert "placed 5 items in 3 stories" in result.stdout
    assert _partition(monitor) == SEED_STORIES
    visit = _story_of(monitor, "004")
    assert _item(visit, "004")["link_reason"] == "crosslingual"
    assert _item(visit, "004")["link_score"] >= 0.25


def test_004_joins_whether_or_not_it_was_translated(monitor: Invoke,
                                                    database_url: str) -> None:
    """With an English translation stored on 004, a rebuild gives the same stories."""
    monitor("backfill", str(SEEDS))
    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(update(ItemRow).where(ItemRow.language == "nb").values(
            translated_title="Japanese Defence Minister Nakatani's visit to Turkey",
            translated_summary="Nakatani met Yasar Guler in Ankara; drones were discussed.",
            translation_status="done"))
    engine.dispose()
    assert monitor("dedup", "--rebuild").exit_code == 0
    assert _partition(monitor) == SEED_STORIES
    assert _item(_story_of(monitor, "004"), "004")["link_reason"] == "crosslingual"


def test_backfill_order_and_repetition_give_the_same_stories(monitor: Invoke,
                                                             database_url: str) -> None:
    """Backfilling the seeds twice, or one file at a time in reverse order, or a feed
    with its items reversed, gives the same stories."""
    assert monitor("backfill", str(SEEDS)).exit_code == 0
    first = _partition(monitor)
    assert monitor("backfill", str(SEEDS)).exit_code == 0
    assert _partition(monitor) == first
    _delete_all(database_url)
    files = sorted(p for p in SEEDS.glob("*.txt"))
    assert monitor("backfill", *map(str, reversed(files))).exit_code == 0
    assert _partition(monitor) == first == SEED_STORIES


def test_feed_items_in_another_order_give_the_same_stories(monitor: Invoke, database_url: str,
                                                           tmp_path: Path) -> None:
    """A real feed and the same feed with its items reversed give the same stories."""
    from tests.conftest import shared

    nrk = shared("corpora", "real-feeds",
                 "no_nrk-toppsaker_2022-10-18_drones-defense_nb-nn-mixed.xml")
    assert monitor("backfill", str(nrk)).exit_code == 0
    forward = _partition(monitor, key="title", size=60)
    _delete_all(database_url)
    reversed_feed = tmp_path / "nrk-reversed.xml"
    reversed_feed.write_bytes(_reverse_items(nrk.read_bytes()))
    assert monitor("backfill", str(reversed_feed)).exit_code == 0
    assert _partition(monitor, key="title", size=60) == forward
    assert monitor("dedup", "--rebuild").exit_code == 0
    assert _partition(monitor, key="title", size=60) == forward


def _reverse_items(feed: bytes) -> bytes:
    head, _, rest = feed.partition(b"<item>")
    items = [b"<item>" + chunk for chunk in rest.split(b"<item>")]
    last, _, tail = items[-1].rpartition(b"</item>")
    items[-1] = last + b"</item>"
    return head + b"".join(reversed(items)) + tail


def _delete_all(url: str) -> None:
    engine = db.make_engine(url)
    with db.transaction(db.session_factory(engine)) as session:
        store.delete_all(session)
    engine.dispose()


def _article(path: Path, title: str, body: str, published: str | None = None) -> Path:
    path.write_text(f"{title}\n\n{body}\n", encoding="utf-8")
    if published:
        Path(f"{path}.meta.toml").write_text(f"published = {published}\n", encoding="utf-8")
    return path


def test_lightly_edited_copy_joins_as_near_duplicate(monitor: Invoke, tmp_path: Path) -> None:
    """The same wire text from two outlets, one sentence edited: one story, reason near;
    the same text ten days later is another story (the time window)."""
    _article(tmp_path / "a.txt", "Nakatani visits Ankara", WIRE, "2025-08-20")
    edited = WIRE.replace("the ministry said", "the ministry said on Wednesday")
    _article(tmp_path / "b.txt", "Japan defence chief visits Ankara", edited, "2025-08-21")
    _article(tmp_path / "c.txt", "Nakatani visits Ankara again", WIRE + " Again.",
             "2025-09-05")
    assert monitor("backfill", str(tmp_path)).exit_code == 0
    assert _partition(monitor, size=1) == {frozenset({"a", "b"}), frozenset({"c"})}
    b = _item(_story_of(monitor, "b"), "b")
    assert b["link_reason"] == "near" and b["link_score"] >= 0.8


def test_show_gives_reasons_scores_and_shared_anchors(monitor: Invoke) -> None:
    """`stories show` lists each item's reason and score and what it shares."""
    monitor("backfill", str(SEEDS))
    story = _story_of(monitor, "004")
    text = monitor("stories", "show", str(story["id"]))
    assert text.exit_code == 0, text.output
    assert "crosslingual" in text.stdout and "shares:" in text.stdout
    assert "name:nakatani" in text.stdout
    data = json.loads(monitor("stories", "show", str(story["id"]), "--json").stdout)
    assert {i["outlet"][:3] for i in data["items"]} == {"002", "003", "004"}
    assert all("amount:2e+11" in i["shared_anchors"] for i in data["items"])
    missing = monitor("stories", "show", "999999")
    assert missing.exit_code == 1 and "not found" in missing.stderr


def test_split_and_merge_are_remembered_by_a_rebuild(monitor: Invoke) -> None:
    """Split 004 out: its own story, reason manual, and a rebuild keeps it apart; merge
    it back: one story again, and a rebuild keeps them together."""
    monitor("backfill", str(SEEDS))
    item = _item(_story_of(monitor, "004"), "004")
    result = monitor("stories", "split", str(item["id"]))
    assert result.exit_code == 0, result.output
    apart = SEED_STORIES - {frozenset({"002", "003", "004"})} | {
        frozenset({"002", "003"}), frozenset({"004"})}
    assert _partition(monitor) == apart
    assert _item(_story_of(monitor, "004"), "004")["link_reason"] == "manual"
    assert monitor("dedup", "--rebuild").exit_code == 0
    assert _partition(monitor) == apart
    alone = monitor("stories", "split", str(item["id"]))
    assert alone.exit_code == 1 and "alone" in alone.stderr
    target, source = _story_of(monitor, "003")["id"], _story_of(monitor, "004")["id"]
    assert monitor("stories", "merge", str(target), str(source)).exit_code == 0
    assert _partition(monitor) == SEED_STORIES
    assert monitor("dedup", "--rebuild").exit_code == 0
    assert _partition(monitor) == SEED_STORIES


def test_merge_of_different_stories_survives_a_rebuild(monitor: Invoke) -> None:
    """A reader's merge of 000 and 001 (different stories to the stages) is kept."""
    monitor("backfill", str(SEEDS))
    a, b = _story_of(monitor, "000")["id"], _story_of(monitor, "001")["id"]
    assert monitor("stories", "merge", str(a), str(b)).exit_code == 0
    assert monitor("dedup", "--rebuild", "--json").exit_code == 0
    assert frozenset({"000", "001"}) in _partition(monitor)
    same = monitor("stories", "merge", str(a), str(a))
    assert same.exit_code == 1 and "itself" in same.stderr


def test_bad_input_is_a_decision_not_an_exception(monitor: Invoke, tmp_path: Path) -> None:
    """No text, only a title, only numbers, 1 MB of text: stored, each in a story."""
    (tmp_path / "empty.txt").write_text("Title only\n", encoding="utf-8")
    (tmp_path / "numbers.txt").write_text("2025 100 3,5\n\n1.000.000 42 7 2024\n",
                                          encoding="utf-8")
    (tmp_path / "huge.txt").write_text("A huge article\n\n" + "Drone news word " * 70_000,
                                       encoding="utf-8")
    (tmp_path / "unicode.txt").write_text("ドローン\n\n\u200b ﬁ 𝔘𝔫𝔦 Ø 9 " * 50, encoding="utf-8")
    result = monitor("backfill", str(tmp_path))
    assert result.exit_code == 0, result.output
    stories = _stories(monitor)
    assert sum(len(s["items"]) for s in stories) == 4
    assert all(s["items"] for s in stories)


def _ingest_seeds(url: str, settings: config.Settings) -> None:
    """The seeds through the pipeline as a poll would store them: no settle, no sweep."""
    engine = db.make_engine(url)
    db.upgrade(engine)
    sessions = db.session_factory(engine)
    pipeline = Pipeline.from_settings(settings)
    for source in discover(str(SEEDS)):
        articles, ctx = read(source)
        with db.transaction(sessions) as session:
            ingest(session, articles, ctx, pipeline, datetime(2025, 8, 22, tzinfo=UTC))
    engine.dispose()


class FakeEmbedder:
    """Every text gets the same vector: the anchors alone decide (a test double)."""

    name = "fake"

    def __init__(self) -> None:
        self.calls: list[int] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(len(texts))
        return np.ones((len(texts), 8), dtype=np.float32)


def test_daemon_sweep_embeds_pending_items_and_merges_provisional_stories(
        monitor: Invoke, database_url: str) -> None:
    """Items stored by the ingest wait as pending; the sweep embeds them in batches and
    moves 003/004's provisional stories into one; a second sweep has nothing to do."""
    settings = config.load(CONFIG, environ={})
    _ingest_seeds(database_url, settings)
    assert len(_stories(monitor)) == 5
    engine = db.make_engine(database_url)
    sessions = db.session_factory(engine)
    fake = FakeEmbedder()
    report = sweep(sessions, DedupSettings(sweep_batch=2), fake)
    assert report.embedded == 5 and report.moved == 2 and report.error is None
    assert fake.calls and max(fake.calls) <= 2
    assert _partition(monitor) == SEED_STORIES
    with sessions() as session:
        states = set(session.scalars(select(ItemDedupRow.embed_state)))
    assert states == {"done"}
    assert sweep(sessions, DedupSettings(), fake).embedded == 0
    engine.dispose()


def test_the_sweep_is_scheduled_as_an_interval_job() -> None:
    """schedule_dedup adds one interval job that also runs at start-up."""
    from apscheduler.schedulers.background import BackgroundScheduler
    from sqlalchemy.orm import sessionmaker

    scheduler = BackgroundScheduler(timezone="UTC")
    schedule_dedup(scheduler, config.load(CONFIG, environ={}), sessionmaker())
    (job,) = scheduler.get_jobs()
    assert job.id == "dedup-sweep" and job.trigger.interval.total_seconds() == 60


def test_items_without_neighbours_are_settled_without_a_decision(
        monitor: Invoke, tmp_path: Path, database_url: str) -> None:
    """A settle places items that share no band key, content or "together" with any other
    item without deciding (the shortcut must not change a story): twins by content are
    not among them, nor are two unrelated items once a reader merged them, and a
    rebuild keeps that merge."""
    from monitor.stories import without_neighbours

    config = tmp_path / "config.toml"
    shipped = CONFIG.read_text(encoding="utf-8")
    config.write_text(shipped.replace('embedder = "e5"', 'embedder = "none"'), encoding="utf-8")
    docs = tmp_path / "docs"
    docs.mkdir()
    _article(docs / "twin1.txt", "Nakatani visits Ankara", WIRE, "2025-08-20")
    _article(docs / "twin2.txt", "Japan's defence minister in Ankara", WIRE, "2025-08-20")
    _article(docs / "solo1.txt", "Harbour opens a new ferry terminal",
             "The northern harbour opened its new ferry terminal after two years of work, "
             "with room for four ships.", "2025-08-20")
    _article(docs / "solo2.txt", "Library extends its opening hours",
             "The city library will open on Sundays from September, the council decided "
             "after a vote on Monday evening.", "2025-08-20")
    assert monitor("backfill", str(docs), config=config).exit_code == 0

    def alone() -> set[str]:
        engine = create_engine(database_url)
        with db.session_factory(engine)() as session:
            ids = dict(session.execute(select(ItemRow.id, ItemRow.outlet)).all())
            found = {ids[i] for i in without_neighbours(session, list(ids))}
        engine.dispose()
        return found

    assert alone() == {"solo1", "solo2"}
    assert _partition(monitor, size=5) == {frozenset({"twin1", "twin2"}),
                                           frozenset({"solo1"}), frozenset({"solo2"})}
    a, b = _story_of(monitor, "solo1")["id"], _story_of(monitor, "solo2")["id"]
    assert monitor("stories", "merge", str(a), str(b), config=config).exit_code == 0
    assert alone() == set()
    assert monitor("dedup", "--rebuild", config=config).exit_code == 0
    assert _partition(monitor, size=5) == {frozenset({"twin1", "twin2"}),
                                           frozenset({"solo1", "solo2"})}
