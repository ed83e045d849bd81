"""The benchmarks, run tiny, so that they cannot rot."""

from __future__ import annotations

from pathlib import Path

from bench import corpus, ingest
from tests.conftest import shared


def test_corpus_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    """The same seed writes the same bytes; another seed writes others."""
    shared("corpora", "langid-lingua", "sentences_first100.tsv")
    first = corpus.generate(tmp_path / "a", files=2, items_per_file=5, seed=7)
    again = corpus.generate(tmp_path / "b", files=2, items_per_file=5, seed=7)
    other = corpus.generate(tmp_path / "c", files=2, items_per_file=5, seed=8)
    read = [[p.read_bytes() for p in c.files] for c in (first, again, other)]
    assert read[0] == read[1] != read[2]


def test_tiny_ingest_run_stores_every_item_and_reports_every_number(tmp_path: Path) -> None:
    """3 files x 20 items: all 60 are stored, every timing is a positive number."""
    shared("corpora", "langid-lingua", "sentences_first100.tsv")
    results = ingest.run(files=3, items_per_file=20, seed=1, workdir=tmp_path, store_rounds=1)
    assert results.corpus.items == results.stored == 60
    assert results.errors == 0
    assert results.store.rows == 60 and results.store.same_rows
    timings = [results.feedparser, results.feedparser_as_monitor, results.pipeline,
               results.store.store, results.store.raw, results.store.raw_building_rows]
    assert all(t.wall > 0 and t.cpu >= 0 for t in timings)
    stages = [label for label, _, _ in ingest.STAGES]
    assert all(results.stages[label].wall > 0 for label in stages), results.stages
    text = "\n".join(ingest.report(results, "bench/ingest.py --files 3"))
    assert "whole pipeline / feedparser.parse (defaults)" in text
    assert "store.insert_items / raw executemany, rows prebuilt" in text


def test_tiny_poll_bench_runs_every_section(tmp_path: Path) -> None:
    """bench/poll.py runs end to end on a few feeds and writes its table."""
    from bench import poll

    out = tmp_path / "poll.md"
    poll.main(["--feeds", "6", "--items", "5", "--cycles", "3", "--repeat", "1",
               "--churn", "0.5", "--output", str(out)])
    text = out.read_text(encoding="utf-8")
    assert "x ideal" in text and "RSS" in text
