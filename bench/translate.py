"""Benchmark monitor's translation path: batched versus one sentence per call, and RSS.

    .venv/bin/python bench/translate.py [--sentences 2000] [--output bench/results/translate.md]

No Argos model can be downloaded here, so the package is generated (tests/argos_fixture.py,
``BENCH_SHAPE``): a CTranslate2 Transformer of 3 encoder and 3 decoder layers, d_model 256,
4 heads, feed-forward 1024, with a SentencePiece vocabulary trained on the nb-en corpora.
Its weights make it copy its input, so every sentence decodes as many tokens as it has,
as a real translation roughly does; its layers cost what real layers of that size cost.
It is installed with ``monitor.packages.install_from_path`` and run by
``monitor.translate.ArgosTranslator``, exactly as the daemon runs a real package.

* batched: every sentence in one ``ArgosTranslator.translate`` call (one CTranslate2
  ``translate_batch`` call, which batches ``translation.batch_size`` sentences at a time);
* one per call: one ``translate`` call, hence one ``translate_batch`` call, per sentence:
  the shape of argostranslate's loop over a list of titles.

Both run in one process on the same loaded model and the same sentences (the first lines
of FLORES dev and then Tatoeba, Norwegian side), after a warm-up. RSS is read from
/proc/self/status in fresh processes: one that imports the daemon's modules, one that also
loads the package and translates a sentence.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monitor import packages  # noqa: E402
from monitor.config import TranslationSettings  # noqa: E402
from monitor.translate import ArgosTranslator  # noqa: E402
from tests import argos_fixture as fx  # noqa: E402

SHARED = ROOT.parent / "shared"
CORPUS = SHARED / "corpora" / "nb-en"
OUTPUT = ROOT / "bench" / "results" / "translate.md"
GOAL_SPEEDUP = 3.0
GOAL_RSS_MARGIN_MB = 100.0

RSS_WORKER = """
import sys
from pathlib import Path
import monitor.daemon, monitor.translating  # the daemon's modules
from monitor.config import TranslationSettings
from monitor.translate import ArgosTranslator

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
before = rss()
if sys.argv[2] == "load":
    t = ArgosTranslator([Path(sys.argv[1])], TranslationSettings(packages_dir=sys.argv[1]))
    t.translate(t.route("nb", "en"), ["Dette er en setning."])
print(before, rss())
"""


def sentences(count: int) -> list[str]:
    lines = (CORPUS / "flores-dev.nb").read_text("utf-8").splitlines()
    lines += (CORPUS / "tatoeba-test-v2021-08-07.nob").read_text("utf-8").splitlines()
    chosen = [ln.strip() for ln in lines if ln.strip()][:count]
    if len(chosen) < count:
        raise SystemExit(f"only {len(chosen)} sentences in {CORPUS}")
    return chosen


def build(workdir: Path) -> tuple[Path, int, int]:
    """The bench package, installed; its CTranslate2 model's size in bytes; its vocabulary
    size."""
    text = fx.fixture_text(SHARED, lines=10_000)
    sp_model = fx.train_sentencepiece(text, workdir / "spm", fx.BENCH_SHAPE.vocab_size)
    vocabulary = fx.vocabulary_of(sp_model)
    model_dir = fx.build_model(vocabulary, workdir / "model", fx.BENCH_SHAPE)
    archive = fx.zip_package(fx.Parts(model_dir, sp_model), workdir / "bench.argosmodel")
    info = packages.install_from_path(archive, workdir / "packages")
    return workdir / "packages", packages.size_of(info.path / "model"), len(vocabulary)


def timed(translator: ArgosTranslator, texts: list[str], batched: bool) -> tuple[float, list[str]]:
    route = translator.route("nb", "en")
    assert route is not None
    started = time.perf_counter()
    if batched:
        out = translator.translate(route, texts)
    else:
        out = [translator.translate(route, [t])[0] for t in texts]
    return time.perf_counter() - started, out


def rss(packages_dir: Path, mode: str) -> tuple[float, float]:
    result = subprocess.run([sys.executable, "-c", RSS_WORKER, str(packages_dir), mode],
                            capture_output=True, text=True, check=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    before, after = map(float, result.stdout.split())
    return before, after


def machine() -> str:
    info = Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")),
               platform.processor())
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in ("ctranslate2", "sentencepiece"))
    return (f"{platform.platform()}; {cpu}; {os.cpu_count()} cores; "
            f"Python {platform.python_version()}; {versions}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=2000)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    texts = sentences(args.sentences)
    with tempfile.TemporaryDirectory() as tmp:
        packages_dir, model_bytes, vocabulary = build(Path(tmp))
        settings = TranslationSettings(packages_dir=str(packages_dir))
        translator = ArgosTranslator([packages_dir], settings)
        timed(translator, texts[:50], batched=True)  # load and warm up
        calls = translator.calls
        batched_s, batched_out = timed(translator, texts, batched=True)
        batched_calls, calls = translator.calls - calls, translator.calls
        single_s, single_out = timed(translator, texts, batched=False)
        single_calls = translator.calls - calls
        idle, loaded = rss(packages_dir, "none"), rss(packages_dir, "load")
    same = sum(a == b for a, b in zip(batched_out, single_out, strict=True))
    copied = sum(" ".join(a.split()) == " ".join(b.split())
                 for a, b in zip(batched_out, texts, strict=True))
    report(args, settings, len(texts), (model_bytes, vocabulary), (batched_s, batched_calls),
           (single_s, single_calls), idle, loaded, same, copied)


def report(args: argparse.Namespace, settings: TranslationSettings, n: int,
           model: tuple[int, int],
           batched: tuple[float, int], single: tuple[float, int], idle: tuple[float, float],
           loaded: tuple[float, float], same: int, copied: int) -> None:
    speedup = single[0] / batched[0]
    model_mb = model[0] / 2**20
    added = loaded[1] - idle[1]
    shape = fx.BENCH_SHAPE
    lines = [
        "# Translation throughput and memory",
        "",
        f"Command: `.venv/bin/python bench/translate.py --sentences {n}`  ",
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  ",
        f"Machine: {machine()}",
        "",
        "Model: generated (no Argos model can be downloaded here), tiny but not trivial: "
        f"CTranslate2 Transformer, {shape.layers}+{shape.layers} layers, d_model "
        f"{shape.d_model}, {shape.heads} heads, FFN {shape.ffn}, vocabulary "
        f"{model[1]}, weights set so it copies its input (decoding lengths like a "
        f"real translation's); {model_mb:.1f} MB on disk. Settings: beam {settings.beam_size}, "
        f"compute type {settings.compute_type}, batch size {settings.batch_size}.",
        f"Sentences: the first {n} Norwegian lines of FLORES dev, then Tatoeba; the same "
        "loaded model for both paths, one process, after a warm-up.",
        "",
        "| path | CTranslate2 calls | seconds | sentences/s |",
        "| --- | --- | --- | --- |",
        f"| batched (`ArgosTranslator.translate` on all) | {batched[1]} | {batched[0]:.2f} | "
        f"{n / batched[0]:.1f} |",
        f"| one sentence per call (argostranslate's loop shape) | {single[1]} | "
        f"{single[0]:.2f} | {n / single[0]:.1f} |",
        "",
        f"Speed-up: **{speedup:.1f}x** (goal >= {GOAL_SPEEDUP:.0f}x: "
        f"{'met' if speedup >= GOAL_SPEEDUP else 'NOT met'}). The two paths agree on "
        f"{same}/{n} outputs; {copied}/{n} outputs equal their source up to whitespace.",
        "",
        "| process (fresh, daemon modules imported) | RSS MB |",
        "| --- | --- |",
        f"| no package loaded | {idle[1]:.0f} |",
        f"| one package loaded, one sentence translated | {loaded[1]:.0f} |",
        "",
        f"The loaded package adds **{added:.0f} MB**; goal: at most the model's size + "
        f"{GOAL_RSS_MARGIN_MB:.0f} MB = {model_mb + GOAL_RSS_MARGIN_MB:.0f} MB "
        f"({'met' if added <= model_mb + GOAL_RSS_MARGIN_MB else 'NOT met'}).",
        "",
    ]
    text = "\n".join(lines)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
