"""Ctrl-C during a backfill leaves a consistent database, and a rerun completes it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import create_engine, func, select
from sqlalchemy.exc import DBAPIError

from monitor.models import ItemRow, StoryItemRow, StoryRow
from tests.conftest import CONFIG

FILES, ITEMS = 120, 10


def _corpus(root: Path) -> None:
    for f in range(FILES):
        items = "".join(
            f"<item><title>Report {f} number {i} on regional drone procurement</title>"
            f"<link>https://news{f}.example/a/{i}?utm_source=x</link><guid>g{f}-{i}</guid>"
            f"<description>Body text of report {i} from outlet {f}, long enough to be a real "
            f"summary of what happened in the region today.</description></item>"
            for i in range(ITEMS))
        (root / f"feed{f:03}.xml").write_text(
            f'<?xml version="1.0"?><rss version="2.0"><channel><title>Outlet {f}</title>'
            f"<link>https://news{f}.example/</link>{items}</channel></rss>", encoding="utf-8")


def _counts(url: str) -> tuple[int, int, int]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            items = conn.scalar(select(func.count()).select_from(ItemRow)) or 0
            unlinked = conn.scalar(select(func.count()).select_from(ItemRow).where(
                ~ItemRow.id.in_(select(StoryItemRow.item_id)))) or 0
            empty = conn.scalar(select(func.count()).select_from(StoryRow).where(
                ~StoryRow.id.in_(select(StoryItemRow.story_id)))) or 0
    except DBAPIError:  # the schema is not there yet
        return 0, 0, 0
    finally:
        engine.dispose()
    return items, unlinked, empty


def _config(root: Path) -> Path:
    """The shipped config without the embedding model: embedding 3,000 items at the end
    of the rerun would take minutes and has nothing to do with interrupting."""
    shipped = CONFIG.read_text(encoding="utf-8")
    assert 'embedder = "e5"' in shipped
    path = root / "config.toml"
    path.write_text(shipped.replace('embedder = "e5"', 'embedder = "none"'), encoding="utf-8")
    return path


def _backfill(url: str, corpus: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "monitor", "--config", str(_config(corpus.parent)),
         "--database-url", url, "backfill", str(corpus)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigint_mid_backfill_then_rerun(tmp_path: Path, database_url: str) -> None:
    """SIGINT stops the backfill with 130 and no partial source; the rerun stores the rest."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    _corpus(corpus)
    process = _backfill(database_url, corpus)
    deadline = time.monotonic() + 60
    while _counts(database_url)[0] < ITEMS * 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _out, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    stored, unlinked, empty = _counts(database_url)
    assert 0 < stored < FILES * ITEMS, "the interrupt should land mid-run"
    assert stored % ITEMS == 0, "a source is stored whole or not at all"
    assert unlinked == 0 and empty == 0
    rerun = _backfill(database_url, corpus)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert _counts(database_url) == (FILES * ITEMS, 0, 0)
    assert f"{FILES * ITEMS - stored} new items" in out
