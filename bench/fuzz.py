"""A longer fuzzing campaign over the pure stages, for a given number of minutes.

    .venv/bin/python bench/fuzz.py [--minutes 12] [--engines hypothesis,atheris]
                                   [--only parse_feed,normalize,...]
                                   [--output bench/results/fuzz.md]

Half the time runs the properties of ``tests/test_properties.py`` with the ``fuzz`` profile
(2,000 examples a round, a fresh seed each round, round after round); the other half runs
atheris (libFuzzer, coverage-guided over monitor and feedparser) on raw bytes into
``parse_feed`` and ``parse_article`` and on text into the same normalize and topic
properties. Seeds for the byte targets are the repository's seeds and the shared corpora.
Every target reports the inputs it tried and each distinct finding (an exception other
than MonitorError, a broken property, an input over 10 s or 2 GB); atheris keeps the
offending inputs in ``$TMPDIR/monitor-fuzz/artifacts/``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import string
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: `tests` must import from the repository
    sys.path.insert(0, str(ROOT))

OUTPUT = ROOT / "bench" / "results" / "fuzz.md"
WORK = Path(tempfile.gettempdir()) / "monitor-fuzz"  # corpora and crashing inputs
ARTIFACTS = WORK / "artifacts"
SHARED = Path(os.environ.get("MONITOR_SHARED", ROOT.parent / "shared"))
SEED_LIMIT = 64 * 1024  # larger seed files only slow libFuzzer down
# Byte targets get this share of the atheris half; text targets share the rest.
BYTE_SHARE = {"parse_feed": 0.5, "parse_article": 0.2}
TEXT_TARGETS = ("normalize", "topics")
ATHERIS_TIMEOUT = 10  # seconds for one input
ATHERIS_RSS_MB = 2048


@dataclass
class Outcome:
    target: str
    engine: str
    seconds: float = 0.0
    inputs: int = 0
    findings: list[str] = field(default_factory=list)

    def found(self, finding: str) -> None:
        if finding not in self.findings:
            self.findings.append(finding)


# --- hypothesis ----------------------------------------------------------------------------

def run_hypothesis(seconds: float, only: set[str]) -> list[Outcome]:
    """Every property (or those in ``only``), round after round, sharing ``seconds``."""
    os.environ["MONITOR_HYPOTHESIS_PROFILE"] = "fuzz"
    from tests import test_properties as props

    chosen = {n: t for n, t in props.TARGETS.items() if not only or n in only}
    return [_rounds(name, test, seconds / max(len(chosen), 1), props.TRIED)
            for name, test in chosen.items()]


def _rounds(name: str, test: Callable[[], None], seconds: float,
            tried: dict[str, int]) -> Outcome:
    outcome = Outcome(name, "hypothesis")
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        try:
            test()
        except Exception as exc:  # a finding: keep its falsifying example, go on fuzzing
            outcome.found(_first_lines(traceback.format_exception_only(exc)))
    outcome.seconds = time.monotonic() - start
    outcome.inputs = tried[f"test_{name}"]
    print(f"hypothesis {name}: {outcome.inputs:,} inputs in {outcome.seconds:.0f} s, "
          f"{len(outcome.findings)} findings", flush=True)
    return outcome


def _first_lines(lines: list[str], keep: int = 6) -> str:
    text = "".join(lines).strip().splitlines()
    return " | ".join(line.strip() for line in text[:keep])[:600]


# --- atheris -------------------------------------------------------------------------------

def run_atheris(seconds: float, only: set[str]) -> list[Outcome]:
    text_share = (1 - sum(BYTE_SHARE.values())) / len(TEXT_TARGETS)
    shares = {t: s for t, s in {**BYTE_SHARE, **dict.fromkeys(TEXT_TARGETS, text_share)}.items()
              if not only or t in only}
    total = sum(shares.values()) or 1
    return [_libfuzzer(target, seconds * share / total) for target, share in shares.items()]


def _libfuzzer(target: str, seconds: float) -> Outcome:
    """Run ``target`` under libFuzzer until ``seconds`` are spent, restarting after findings."""
    outcome = Outcome(target, "atheris")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    corpus = WORK / "corpus" / target
    _seed(corpus, target)
    start = time.monotonic()
    while (left := seconds - (time.monotonic() - start)) > 5:
        command = [sys.executable, __file__, "--atheris-target", target, "--",
                   str(corpus), f"-max_total_time={int(left)}", f"-timeout={ATHERIS_TIMEOUT}",
                   f"-rss_limit_mb={ATHERIS_RSS_MB}", "-max_len=65536", "-print_final_stats=1",
                   f"-artifact_prefix={ARTIFACTS}/{target}-"]
        run = subprocess.run(command, capture_output=True, text=True, errors="replace",
                             timeout=left + 120, check=False)
        log = run.stdout + run.stderr
        outcome.inputs += sum(map(int, re.findall(r"stat::number_of_executed_units:\s*(\d+)",
                                                  log)))
        if run.returncode != 0:
            outcome.found(_libfuzzer_finding(log))
    outcome.seconds = time.monotonic() - start
    print(f"atheris {target}: {outcome.inputs:,} inputs in {outcome.seconds:.0f} s, "
          f"{len(outcome.findings)} findings", flush=True)
    return outcome


def _libfuzzer_finding(log: str) -> str:
    for marker in ("Uncaught Python exception", "ALARM: working on the last Unit",
                   "out-of-memory", "==ERROR"):
        at = log.find(marker)
        if at >= 0:
            lines = [ln for ln in log[at:].splitlines() if ln.strip()][:14]
            artifact = re.search(r"Test unit written to (\S+)", log)
            where = f" (input: {Path(artifact.group(1)).name})" if artifact else ""
            return " | ".join(ln.strip() for ln in lines)[:900] + where
    return "exited abnormally: " + " | ".join(log.strip().splitlines()[-5:])[:400]


def _seed(corpus: Path, target: str) -> None:
    """Give a byte target small real documents to start from (once; libFuzzer adds more)."""
    corpus.mkdir(parents=True, exist_ok=True)
    if any(corpus.iterdir()) or target not in BYTE_SHARE:
        return
    patterns = ("*.xml", "*.rss", "*.atom", "*.rdf") if target == "parse_feed" else ("*.txt",
                                                                                    "*.md")
    roots = [ROOT / "seeds", SHARED / "corpora" / "real-feeds",
             SHARED / "corpora" / "feedparser-tests" / "tests" / "wellformed"]
    found = [p for root in roots if root.is_dir() for pattern in patterns
             for p in root.rglob(pattern) if p.stat().st_size <= SEED_LIMIT]
    for index, path in enumerate(sorted(found)[:400]):
        shutil.copyfile(path, corpus / f"seed-{index:04d}{path.suffix}")


def atheris_target(name: str, argv: list[str]) -> None:
    """Runs in the child process: one libFuzzer target over monitor, instrumented."""
    import atheris

    os.environ["MONITOR_HYPOTHESIS_PROFILE"] = "fuzz"
    with atheris.instrument_imports(include=["monitor", "feedparser"]):
        from monitor.errors import MonitorError
        from monitor.parse import parse_article, parse_feed
        from tests import test_properties as props

    def one_input(data: bytes) -> None:
        if name not in BYTE_SHARE:
            _text_target(name, atheris.FuzzedDataProvider(data), props)
            return
        with contextlib.suppress(MonitorError):
            if name == "parse_feed":
                props._check_feed(parse_feed(data, {}, "http://example.com/feed"))
            else:
                parse_article(data, name="fuzz.txt")

    atheris.Setup([sys.argv[0], *argv], one_input)
    atheris.Fuzz()


def _text_target(name: str, fdp: object, props: object) -> None:
    """The same assertions as the hypothesis properties, on libFuzzer's strings."""
    take = fdp.ConsumeUnicode  # type: ignore[attr-defined]
    inner = {key: getattr(props, f"test_{key}").hypothesis.inner_test  # type: ignore[attr-defined]
             for key in ("clean_text_and_title_are_clean_and_idempotent",
                         "canonical_url_is_http_bounded_and_idempotent",
                         "identity_keys_ignore_case_space_and_punctuation", "html_to_text_is_total",
                         "topic_matching_is_total_and_finds_each_keyword_in_its_own_text")}
    if name == "normalize":
        text = take(4096)
        inner["html_to_text_is_total"](text)
        inner["clean_text_and_title_are_clean_and_idempotent"](text)
        inner["identity_keys_ignore_case_space_and_punctuation"](
            text, "".join(c for c in take(80) if c in string.printable))
        inner["canonical_url_is_http_bounded_and_idempotent"](take(512), take(128) or None)
    else:
        keys = tuple(take(40) for _ in range(1 + fdp.ConsumeIntInRange(0, 3)))  # type: ignore[attr-defined]
        inner["topic_matching_is_total_and_finds_each_keyword_in_its_own_text"](
            keys, [take(2048)], [take(256)])


# --- report --------------------------------------------------------------------------------

def report(outcomes: list[Outcome], minutes: float) -> str:
    total = sum(o.inputs for o in outcomes)
    lines = [f"# Fuzzing campaign ({minutes:g} minutes requested)", "",
             f"{total:,} inputs over {sum(o.seconds for o in outcomes) / 60:.1f} minutes; "
             f"{sum(len(o.findings) for o in outcomes)} distinct findings.", "",
             "| engine | target | minutes | inputs | inputs/s | findings |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {o.engine} | {o.target} | {o.seconds / 60:.1f} | {o.inputs:,} | "
              f"{o.inputs / max(o.seconds, 1e-9):,.0f} | {len(o.findings)} |" for o in outcomes]
    findings = [(o, f) for o in outcomes for f in o.findings]
    lines += ["", "## Findings", ""] + ([f"- **{o.engine} {o.target}**: `{f}`"
                                         for o, f in findings] or ["None."])
    return "\n".join(lines) + "\n"


def main() -> None:
    if "--atheris-target" in sys.argv:
        at = sys.argv.index("--atheris-target")
        atheris_target(sys.argv[at + 1], sys.argv[sys.argv.index("--") + 1:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=12.0)
    parser.add_argument("--engines", default="hypothesis,atheris")
    parser.add_argument("--only", default="", help="comma-separated target names")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    only = {t.strip() for t in args.only.split(",") if t.strip()}
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    seconds = args.minutes * 60 / len(engines)
    outcomes: list[Outcome] = []
    if "hypothesis" in engines:
        outcomes += run_hypothesis(seconds, only)
    if "atheris" in engines:
        outcomes += run_atheris(seconds, only)
    text = report(outcomes, args.minutes)
    print(text)
    if args.output:
        args.output.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
