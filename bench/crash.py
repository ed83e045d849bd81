"""The crash campaign, long: `monitor run` killed with SIGKILL at random moments of its poll
cycles, restarted, hundreds of times, then checked (tests/crashkit.py has the harness;
tests/test_crash.py runs 20 kills of it in CI).

    .venv/bin/python bench/crash.py [--kills 200] [--seed N] [--feeds 8]
                                    [--database-url URL] [--output bench/results/crash.md]
                                    [--keep DIR]

Each round the loopback feeds offer two new items each, every feed is made due, a daemon
starts and is killed at a drawn moment (a delay after its start, the n-th request of the
round, or the k-th feed written, plus up to 0.2 s). After every kill: SQLite's
integrity_check and foreign_key_check, no item without its story link, no story without
items, no item stored twice (per feed and GUID, per URL, per feed and title). At the end,
after one clean `monitor run --once`: the same, no lease left, and the items stored are
exactly the items the server offered. The database is a fresh SQLite file unless
``--database-url`` names another (PostgreSQL: give it an empty schema).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sqlite3
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: `tests` and `monitor` import from here
    sys.path.insert(0, str(ROOT))

from tests.crashkit import KINDS, LEASE, PHASES, TICK, Campaign, Result  # noqa: E402

OUTPUT = ROOT / "bench" / "results" / "crash.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=200, help="daemons to kill (default 200)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the kill plan")
    parser.add_argument("--feeds", type=int, default=8, help="loopback feeds (default 8)")
    parser.add_argument("--window", type=int, default=40,
                        help="items a feed lists at once (default 40: 20 rounds of slack)")
    parser.add_argument("--database-url", help="default: a fresh SQLite file")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--keep", type=Path, help="keep the logs and database in this folder")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    print(f"crash campaign: {args.kills} kills, {args.feeds} feeds, seed {seed}", flush=True)
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="monitor-crash-") as temporary:
        workdir = args.keep or Path(temporary)
        workdir.mkdir(parents=True, exist_ok=True)
        url = args.database_url or f"sqlite:///{workdir / 'monitor.db'}"
        campaign = Campaign(workdir, url, kills=args.kills, feeds=args.feeds, seed=seed,
                            window=args.window, every=10,
                            progress=lambda line: print(line, flush=True))
        result = campaign.run()
    print(result.summary(), flush=True)
    for problem in result.problems:
        print(f"PROBLEM {problem}", flush=True)
    command = " ".join(["bench/crash.py", *(argv if argv is not None else sys.argv[1:])])
    report = markdown(result, args, command, url if args.database_url else "SQLite", load)
    args.output.write_text(report, encoding="utf-8")
    print(f"wrote {args.output}", flush=True)
    return 0 if not result.problems else 1


def markdown(result: Result, args: argparse.Namespace, command: str, database: str,
             load: tuple[float, ...]) -> str:
    final = result.final
    counts = final.counts if final else {}
    kinds = ", ".join(f"{kind} (weight {weight})" for kind, weight in KINDS)
    lines = [
        "# Crash campaign",
        "",
        f"Command: `.venv/bin/python {command}`  ",
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  ",
        f"Machine: {machine()}  ",
        "Load average (1, 5, 15 min) when the run started: "
        f"{', '.join(f'{x:.1f}' for x in load)}, when it ended: "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} (other jobs share this machine).",
        "",
        f"Database: {database}. Seed {result.seed} (`--seed {result.seed}` replays the kill "
        "plan; thread timing still varies). "
        f"{args.feeds} loopback feeds; each round they offer 2 new items each (a feed lists "
        f"its newest {args.window}), after a random delay of up to 0.1 s, and every feed "
        "is made due (one already due keeps its place: the most overdue are polled first). "
        f"`workers.tick_seconds` {TICK}, `workers.claim_seconds` {LEASE}, "
        "langdetect, no translation, no embedding model. Kill moments drawn among "
        f"{kinds}: a delay of up to 3 s after the start, or the n-th request of the round "
        "reaching the server + up to 0.1 s, or the k-th feed written (its `feed.polled` "
        "line, logged after the commit) + up to 0.2 s.",
        "",
        "| | |",
        "| --- | --- |",
        f"| kills (SIGKILL) | {result.kills} |",
        f"| daemon starts (the final clean run included) | {result.starts} |",
        *(f"| killed while {phase} | {result.phases[phase]} |" for phase in PHASES),
        f"| items offered by the server | {len(result.offered)} |",
        f"| items stored at the end | {len(result.stored)} |",
        f"| offered but not stored / stored but not offered | {len(result.missing)} / "
        f"{len(result.extra)} |",
        *(f"| {name} at the end | {n} |" for name, n in counts.items()),
        f"| `PRAGMA integrity_check` at the end | {final.integrity if final else '-'} |",
        f"| wall time | {result.seconds:.0f} s ({result.seconds / max(1, result.starts):.1f} "
        "s per start, kill and check) |",
        f"| result | {'**OK**' if not result.problems else '**FAILED**'} |",
        "",
        "Phases: *starting* = no request of the round had reached the server (imports, "
        "migrations, sync, model loading, the first claim); *fetching* = requests made, no "
        "feed written yet (the first feed's transaction may be under way); *mid-cycle* = "
        "some feeds written, not all; *between cycles* = every due feed written (heartbeats, "
        "idle ticks). The same checks ran after every kill; the first failure stops the "
        "campaign.",
        "",
    ]
    if result.problems:
        lines += ["Problems:", "", *(f"- {p}" for p in result.problems), ""]
    return "\n".join(lines)


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo
                if line.startswith("model name")), platform.processor())
    return (f"{platform.platform()}; {cpu}; {os.cpu_count()} cores; "
            f"Python {platform.python_version()}; SQLite {sqlite3.sqlite_version}")


if __name__ == "__main__":
    sys.exit(main())
