"""The dedup benchmark, run tiny, so that it cannot rot."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

from bench import dedup as bench

HAS_DATASKETCH = find_spec("datasketch") is not None


def test_tiny_dedup_bench_finds_the_planted_rewrites(tmp_path: Path) -> None:
    """2,000 items: every number is reported, the rewrites are found, nothing else."""
    results = bench.run([1000, 2000], planted=20, fresh=20, path=tmp_path / "b.db",
                        embed_items=0, log=lambda _line: None)
    assert [r.size for r in results.rows] == [1000, 2000]
    for row in results.rows:
        assert row.recall_85 >= 0.9 and row.false_matches == 0
        assert row.decision[0] > 0 and row.brute[0] > 0 and row.index_query[0] > 0
        assert 0 < row.bytes_per_item < 6144
        # the copy holds every item's 16 keys and ids, and a directory of at most 16 B an item
        assert 16 * 16 * row.size < row.copy_bytes <= (16 * 16 + 16) * row.size
        assert row.table_query[0] > 0 and row.index_fresh > 0 and row.index_rewrites > 0
        assert 0 < row.candidate_query[0] <= row.candidate_query[1]
        # datasketch comes with the bench extra ('.[bench]'), not with the tests'
        assert (row.datasketch_query is not None and row.datasketch_query[0] > 0) == HAS_DATASKETCH
        assert row.speedup == row.brute[0] / row.candidate_query[0]
        assert row.check_speedup == row.brute[0] / row.index_query[0]
    text = "\n".join(bench.report(results, "bench/dedup.py --sizes 1000,2000"))
    assert "| 2,000 |" in text and "shared permutations" in text
    assert "candidate query" in text and "complete check" in text
