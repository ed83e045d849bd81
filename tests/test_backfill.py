"""`monitor backfill` end to end: the seeds, reruns, and every kind of bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

from sqlalchemy import create_engine, func, select

from monitor.models import ItemRow, StoryItemRow, StoryRow
from tests.conftest import CONFIG, SEEDS, Invoke


def _items(invoke: Invoke) -> list[dict]:
    result = invoke("items", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _by_seed(items: list[dict]) -> dict[str, dict]:
    return {i["outlet"][:3]: i for i in items}


def test_seeds_are_stored_with_language_topics_and_pending_translation(monitor: Invoke) -> None:
    """The five seeds become five items: 004 is nb (>= 0.9), the rest en, all on topic."""
    result = monitor("backfill", str(SEEDS))
    assert result.exit_code == 0, result.output
    assert "5 new items" in result.stdout
    items = _by_seed(_items(monitor))
    assert sorted(items) == ["000", "001", "002", "003", "004"]
    assert items["004"]["language"] == "nb"
    assert items["004"]["language_confidence"] >= 0.9
    assert all(items[k]["language"] == "en" for k in ("000", "001", "002", "003"))
    assert all(i["topics"] for i in items.values()), items
    assert items["004"]["translation_status"] == "pending"
    assert items["003"]["published"].startswith("2025-08-20")
    assert items["004"]["published"].startswith("2025-08-21")


def test_pending_reason_tells_the_user_what_to_run(monitor: Invoke, database_url: str) -> None:
    """A Norwegian item without a model says which command installs one."""
    monitor("backfill", str(SEEDS))
    engine = create_engine(database_url)
    with engine.connect() as conn:
        reason = conn.scalar(select(ItemRow.translation_reason).where(ItemRow.language == "nb"))
    engine.dispose()
    assert reason is not None and "monitor models install nb" in reason


def test_second_backfill_stores_nothing_and_reports_five_duplicates(monitor: Invoke) -> None:
    """Running the same backfill again is idempotent and says so."""
    monitor("backfill", str(SEEDS))
    again = monitor("backfill", "--json", str(SEEDS))
    assert again.exit_code == 0
    summary = json.loads(again.stdout)
    assert summary["totals"].get("new", 0) == 0
    assert sum(v for k, v in summary["totals"].items() if k.startswith("duplicate_")) == 5
    assert len(_items(monitor)) == 5


def _bad_sources(tmp: Path) -> dict[str, Path]:
    malformed = tmp / "malformed.xml"
    malformed.write_text("<rss><channel><item><title>unclosed", encoding="utf-8")
    binary = tmp / "binary.rss"
    binary.write_bytes(bytes(range(256)) * 64)
    loop = tmp / "unreadable.xml"
    os.symlink(loop, loop)  # a symlink to itself: every read fails (even as root)
    empty = tmp / "empty_dir"
    empty.mkdir()
    return {"malformed": malformed, "binary": binary, "unreadable": loop, "empty": empty,
            "missing": tmp / "does-not-exist.xml"}


def test_bad_sources_each_get_one_line_and_the_rest_completes(monitor: Invoke,
                                                              tmp_path: Path) -> None:
    """Each bad source is named in one error line; the seeds after them are still stored."""
    bad = _bad_sources(tmp_path)
    result = monitor("backfill", *map(str, bad.values()), str(SEEDS))
    assert result.exit_code == 1
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("monitor: ")]
    for path in bad.values():
        assert sum(str(path) in ln for ln in errors) == 1, (path, result.stderr)
    assert len(_items(monitor)) == 5


def test_bad_source_after_good_ones_loses_nothing(monitor: Invoke, tmp_path: Path) -> None:
    """Items stored before a failing source stay stored."""
    assert monitor("backfill", str(SEEDS)).exit_code == 0
    bad = _bad_sources(tmp_path)
    assert monitor("backfill", str(bad["malformed"])).exit_code == 1
    assert len(_items(monitor)) == 5


def test_invalid_config_value_is_a_usage_error_naming_the_key(monitor: Invoke,
                                                              tmp_path: Path) -> None:
    """A wrong value gives exit 2 and its key path; nothing is stored."""
    config = tmp_path / "config.toml"
    config.write_text('[fetch]\nconcurrency = "many"\n[digest]\nsmtp_tls = "ssl3"\n')
    result = monitor("backfill", str(SEEDS), config=config)
    assert result.exit_code == 2
    assert "fetch.concurrency" in result.stderr and "digest.smtp_tls" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_outlet_and_date_filters(monitor: Invoke) -> None:
    """--since keeps only dated items on or after the date; --outlet fills missing outlets."""
    result = monitor("backfill", "--since", "2025-08-21", "--outlet", "Wire", str(SEEDS))
    assert result.exit_code == 0
    items = _items(monitor)
    assert [i["language"] for i in items] == ["nb"]
    assert items[0]["outlet"] == "Wire"


def test_every_item_has_a_story_and_every_story_an_item(monitor: Invoke,
                                                        database_url: str) -> None:
    """Story assignment leaves no orphan on either side."""
    monitor("backfill", str(SEEDS))
    engine = create_engine(database_url)
    with engine.connect() as conn:
        linked = conn.scalar(select(func.count()).select_from(StoryItemRow))
        stories = conn.scalar(select(func.count()).select_from(StoryRow))
        empty = conn.scalar(select(func.count()).select_from(StoryRow).where(
            ~StoryRow.id.in_(select(StoryItemRow.story_id))))
    engine.dispose()
    assert linked == 5 and empty == 0 and 1 <= stories <= 5


def _feed(path: Path, titles: list[str]) -> Path:
    items = "".join(f"<item><title>{t}</title><link>https://example.org/{path.stem}/{n}</link>"
                    f"<description>{t}: a report of some length about {path.stem} and {n}."
                    f"</description></item>" for n, t in enumerate(titles))
    path.write_text(f'<?xml version="1.0"?><rss version="2.0"><channel><title>{path.stem}'
                    f"</title><link>https://example.org/</link>{items}</channel></rss>",
                    encoding="utf-8")
    return path


def _poison(database_url: str) -> None:
    """A trigger that refuses any item titled POISON: a real database error, mid-group."""
    engine = create_engine(database_url)
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql(
                "CREATE TRIGGER poison BEFORE INSERT ON items WHEN NEW.title GLOB 'POISON*' "
                "BEGIN SELECT RAISE(ABORT, 'poisoned item'); END")
        else:
            conn.exec_driver_sql(
                "CREATE FUNCTION poison() RETURNS trigger AS $$ BEGIN IF "
                "starts_with(NEW.title, 'POISON') THEN RAISE EXCEPTION 'poisoned item'; "
                "END IF; RETURN NEW; END $$ LANGUAGE plpgsql")
            conn.exec_driver_sql("CREATE TRIGGER poison BEFORE INSERT ON items FOR EACH ROW "
                                 "EXECUTE FUNCTION poison()")
    engine.dispose()


def test_database_error_in_a_shared_transaction_fails_only_its_source(
        monitor: Invoke, database_url: str, tmp_path: Path) -> None:
    """Sources share a transaction; when one breaks it, the others are stored anyway and
    only the broken one is reported, once, naming it."""
    assert monitor("db", "upgrade").exit_code == 0
    _poison(database_url)
    feeds = tmp_path / "feeds"
    feeds.mkdir()
    _feed(feeds / "a.xml", ["Alpha one", "Alpha two"])
    bad = _feed(feeds / "b.xml", ["POISON pill in the feed"])
    _feed(feeds / "c.xml", ["Gamma one", "Gamma two"])
    result = monitor("backfill", "--json", str(feeds))
    assert result.exit_code == 1, result.output
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("monitor: ")]
    assert len(errors) == 1 and str(bad) in errors[0] and "database error" in errors[0], errors
    summary = json.loads(result.stdout)
    assert summary["totals"]["new"] == 4
    assert sorted(i["title"] for i in _items(monitor)) == [
        "Alpha one", "Alpha two", "Gamma one", "Gamma two"]


def test_small_sources_share_commits_and_are_reported_in_order(tmp_path: Path) -> None:
    """Thirty one-item sources are not thirty commits; every source is reported, in order,
    a failing one in its place."""
    from sqlalchemy import event

    from monitor import db
    from monitor.backfill import Options, run_backfill
    from monitor.config import load

    articles = tmp_path / "articles"
    articles.mkdir()
    for n in range(30):
        (articles / f"{n:02d}.txt").write_text(
            f"Headline number {n} about drones\n\nBody {n} of the article, with some words.\n",
            encoding="utf-8")
    broken = _feed(tmp_path / "broken.xml", ["x"])
    broken.write_text("<rss><channel><item><title>unclosed", encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'group.db'}"
    engine = db.make_engine(url)
    db.ensure_schema(engine)
    commits: list[int] = []
    event.listen(engine, "commit", lambda _conn: commits.append(1))
    specs = [str(articles / f"{n:02d}.txt") for n in range(15)] + [str(broken)] + [
        str(articles / f"{n:02d}.txt") for n in range(15, 30)]
    summary = run_backfill(load(CONFIG, database_url=url), db.session_factory(engine), specs,
                           Options(), progress=False, settle=False)
    engine.dispose()
    assert [o.label for o in summary.outcomes] == specs
    assert [o.error is not None for o in summary.outcomes] == [s == str(broken) for s in specs]
    assert summary.totals()["new"] == 30
    assert 1 <= len(commits) < 10, len(commits)
