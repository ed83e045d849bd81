"""Offline translation on a tiny but real Argos package (tests/argos_fixture.py): install,
translate through real SentencePiece and CTranslate2 calls, provenance, the sweep, the
cache, removal, bad packages and bad texts; a fake translator checks the triage."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from sqlalchemy import select

from monitor import config, db, packages
from monitor.backfill import Options, run_backfill
from monitor.config import Settings, Topic, TranslationSettings
from monitor.errors import TranslateError
from monitor.languages import from_argos, to_argos
from monitor.models import ItemRow, ItemTopicRow
from monitor.packages import PackageInfo, Route, find_route
from monitor.pipeline import Pipeline
from monitor.translate import ArgosTranslator, shared_translator, split_sentences
from monitor.translating import SweepReport, sweep
from tests import argos_fixture as fx
from tests.conftest import CONFIG, REPO, SEEDS, SHARED, Invoke

SEED_004 = SEEDS / "004_70b1c450042b8635.txt"


def squash(text: str) -> str:
    return " ".join(text.split())


@dataclass(frozen=True)
class Kit:
    parts: fx.Parts
    nb_en: Path
    en_de: Path
    root: Path


@pytest.fixture(scope="session")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    """The tiny model and tokenizer, built once per session, and packages made of them."""
    root = tmp_path_factory.mktemp("argos")
    parts = fx.build_parts(root / "parts", SHARED if SHARED.exists() else None)
    return Kit(parts, fx.zip_package(parts, root / "nb_en.argosmodel"),
               fx.zip_package(parts, root / "en_de.argosmodel", fx.metadata("en", "de")), root)


@pytest.fixture
def packages_dir(tmp_path: Path) -> Path:
    return tmp_path / "packages"


@pytest.fixture
def config_file(tmp_path: Path, packages_dir: Path) -> Path:
    """The shipped config.toml with a temporary packages directory."""
    text = CONFIG.read_text(encoding="utf-8").replace(
        'packages_dir = ""', f'packages_dir = "{packages_dir}"', 1)
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _item(database_url: str, title_prefix: str = "Den japanske") -> ItemRow:
    engine = db.make_engine(database_url)
    with db.session_factory(engine)() as session:
        rows = list(session.scalars(select(ItemRow).where(ItemRow.title.startswith(title_prefix))
                                    .order_by(ItemRow.id)))
    engine.dispose()
    return rows[-1]


# --- the real path, end to end ---------------------------------------------------------


def test_backfill_install_translate_end_to_end(monitor: Invoke, kit: Kit, config_file: Path,
                                               database_url: str, tmp_path: Path) -> None:
    """Seed 004 waits with the install hint; after installing, the sweep translates it with
    provenance, stories show the translation, and a repeated text comes from the cache."""
    assert monitor("backfill", str(SEEDS), config=config_file).exit_code == 0
    waiting = _item(database_url)
    assert waiting.translation_status == "pending"
    assert "`monitor models install nb`" in (waiting.translation_reason or "")
    assert "`monitor translate --pending`" in (waiting.translation_reason or "")

    installed = monitor("models", "install", str(kit.nb_en), config=config_file)
    assert installed.exit_code == 0, installed.output
    result = monitor("translate", "--pending", config=config_file)
    assert result.exit_code == 0, result.output
    assert "translated 1 items" in result.output

    done = _item(database_url)
    assert done.translation_status == "done"
    assert (done.translation_engine, done.translation_package,
            done.translation_package_version) == ("argos-ctranslate2", "translate-nb_en", "1.0")
    assert done.translated_at is not None and done.language == "nb"
    assert squash(done.translated_title or "") == squash(done.title)  # the model copies
    assert squash(done.translated_text or "") == squash(done.text)  # 004 matches a topic
    stories = json.loads(monitor("stories", "--json", config=config_file).output)
    titles = [i["translated_title"] for s in stories for i in s["items"] if i["language"] == "nb"]
    assert titles and all(titles)

    translator = shared_translator(config.load(config_file).translation)
    calls = translator.calls
    copy = tmp_path / "again" / "copy_of_004.txt"
    copy.parent.mkdir()
    copy.write_text(SEED_004.read_text(encoding="utf-8"), encoding="utf-8")
    copy.with_name(copy.name + ".meta.toml").write_text(  # the same text from another outlet
        'outlet = "Copy"\nurl = "https://example.org/copy-of-004"\n', encoding="utf-8")
    assert monitor("backfill", str(copy), config=config_file).exit_code == 0
    again = monitor("translate", "--pending", config=config_file)
    assert again.exit_code == 0
    assert "translated 1 items (0 texts by the model, 2 from the cache" in again.output
    assert translator.calls == calls  # no CTranslate2 call: every text came from the cache
    assert _item(database_url).translated_title == done.translated_title


def test_pipeline_decision_follows_installed_packages(kit: Kit, packages_dir: Path) -> None:
    """Pipeline.from_settings sees an installed package: the reason changes from the
    install hint to queued."""
    settings = replace(Settings(), translation=TranslationSettings(packages_dir=str(packages_dir)))
    assert not Pipeline.from_settings(settings).can_translate("nb")
    packages.install_from_path(kit.nb_en, packages_dir)
    pipeline = Pipeline.from_settings(settings)
    assert pipeline.can_translate("nb") and pipeline.can_translate("no")
    assert not pipeline.can_translate("ja")


def test_list_and_remove(monitor: Invoke, kit: Kit, config_file: Path,
                         packages_dir: Path) -> None:
    """`models list` shows the pair, version, size and path; `models remove` deletes it."""
    assert monitor("models", "install", str(kit.nb_en), config=config_file).exit_code == 0
    listed = json.loads(monitor("models", "list", "--json", config=config_file).output)
    assert [(r["from"], r["to"], r["version"]) for r in listed] == [("nb", "en", "1.0")]
    assert listed[0]["size_bytes"] > 100_000 and Path(listed[0]["path"]).is_dir()
    removed = monitor("models", "remove", "no", config=config_file)
    assert removed.exit_code == 0 and "removed translate-nb_en" in removed.output
    assert not list(packages_dir.iterdir())
    again = monitor("models", "remove", "nb", config=config_file)
    assert again.exit_code == 1 and "no installed package translates from 'nb'" in again.output


def test_reinstall_replaces_the_pair(kit: Kit, packages_dir: Path) -> None:
    """Installing a newer package for a pair replaces the old one."""
    packages.install_from_path(kit.nb_en, packages_dir)
    newer = fx.zip_package(kit.parts, kit.root / "nb_en_2.argosmodel", fx.metadata(version="2.0"))
    packages.install_from_path(newer, packages_dir)
    assert [p.version for p in packages.installed([packages_dir])] == ["2.0"]


# --- bad packages ----------------------------------------------------------------------


def _bad_packages(kit: Kit) -> dict[str, tuple[Path, str]]:
    not_zip = kit.root / "notes.argosmodel"
    not_zip.write_text("not a model", encoding="utf-8")
    foreign = kit.root / "foreign.argosmodel"
    with zipfile.ZipFile(foreign, "w") as archive:
        archive.writestr("photos/cat.jpg", b"\xff\xd8")
    return {
        "corrupt": (fx.corrupt_copy(kit.nb_en, kit.root / "corrupt.argosmodel"), "corrupt"),
        "no metadata": (fx.zip_package(kit.parts, kit.root / "nometa.argosmodel",
                                       with_metadata=False), "no metadata.json"),
        "no model": (fx.zip_package(kit.parts, kit.root / "nomodel.argosmodel",
                                    with_model=False), "no CTranslate2 model"),
        "unknown language": (fx.zip_package(kit.parts, kit.root / "xx.argosmodel",
                                            fx.metadata("xx", "en")), "'xx' is not a language"),
        "not a zip": (not_zip, "not a zip archive"),
        "foreign zip": (foreign, "no metadata.json"),
    }


@pytest.mark.parametrize("case", ["corrupt", "no metadata", "no model", "unknown language",
                                  "not a zip", "foreign zip"])
def test_bad_package_installs_nothing(kit: Kit, packages_dir: Path, case: str) -> None:
    """A corrupt, incomplete, foreign or unknown-language package is refused with a clear
    error, and the packages directory is left as it was."""
    packages.install_from_path(kit.nb_en, packages_dir)
    before = sorted(p.name for p in packages_dir.iterdir())
    path, message = _bad_packages(kit)[case]
    with pytest.raises(TranslateError, match=message):
        packages.install_from_path(path, packages_dir)
    assert sorted(p.name for p in packages_dir.iterdir()) == before
    assert [p.version for p in packages.installed([packages_dir])] == ["1.0"]


def test_bad_package_on_the_command_line(monitor: Invoke, kit: Kit, config_file: Path) -> None:
    """The CLI prints one line and exits 1 for a corrupt package."""
    path = fx.corrupt_copy(kit.nb_en, kit.root / "corrupt_cli.argosmodel")
    result = monitor("models", "install", str(path), config=config_file)
    assert result.exit_code == 1
    assert result.output.startswith("monitor: ") and "corrupt package" in result.output


def test_available_offline_says_so(monitor: Invoke, config_file: Path) -> None:
    """Without a network `models available` explains that the index needs one."""
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {"ARGOS_PACKAGE_INDEX": f"http://127.0.0.1:{port}/"}
    result = monitor("models", "available", config=config_file, env=env)
    assert result.exit_code == 1
    assert "needs a network" in result.output and "PATH.argosmodel" in result.output


# --- texts -----------------------------------------------------------------------------


@pytest.fixture
def translator(kit: Kit, packages_dir: Path) -> ArgosTranslator:
    packages.install_from_path(kit.nb_en, packages_dir)
    return ArgosTranslator([packages_dir], TranslationSettings(packages_dir=str(packages_dir)))


def test_one_call_for_many_texts(translator: ArgosTranslator) -> None:
    """Every sentence of every text goes to CTranslate2 in one call, and comes back in
    its place, paragraphs kept."""
    route = translator.route("nb", "en")
    assert route is not None
    texts = ["Hei. Dette er dr. Olsen.\n\nHan kom i går!", "Tittel", "", "Hei."]
    out = translator.translate(route, texts)
    assert out == texts[:2] + ["", "Hei."]
    assert (translator.calls, translator.sentences) == (1, 4)  # "Hei." is translated once


def test_a_megabyte_of_text_loses_nothing(translator: ArgosTranslator) -> None:
    """1 MB of text (and a long run without punctuation) comes back whole."""
    route = translator.route("nb", "en")
    assert route is not None
    lines = (fx.fixture_text(SHARED if SHARED.exists() else None) * 400)
    big = "\n".join(lines)[:1_000_000]
    unpunctuated = " ".join(["forsvarsdepartementet"] * 600)
    out_big, out_run = translator.translate(route, [big, unpunctuated])
    assert len(big) >= 1_000_000 - 1 and out_big.count("\n") == big.count("\n")
    pairs = list(zip(big.split("\n"), out_big.split("\n"), strict=True))
    assert sum(squash(a) == squash(b) for a, b in pairs) >= 0.99 * len(pairs)
    assert out_run == unpunctuated


@pytest.mark.parametrize("text", [
    "防衛大臣がトルコを訪問した。ドローンが話題になった。",
    "Президент посетил завод. Дроны обсуждались.",
    "مرحبا بالعالم. هذا اختبار.",
    "🙂 ✓ ∑ \u200b",
])
def test_text_in_an_unexpected_script(translator: ArgosTranslator, text: str) -> None:
    """Text in a script the package was not made for goes through without error or loss."""
    route = translator.route("nb", "en")
    assert route is not None
    assert squash(translator.translate(route, [text])[0]) == squash(text)


def test_pivot_through_english(kit: Kit, packages_dir: Path) -> None:
    """With nb->en and en->de installed, nb goes to de through English."""
    packages.install_from_path(kit.nb_en, packages_dir)
    packages.install_from_path(kit.en_de, packages_dir)
    settings = TranslationSettings(packages_dir=str(packages_dir), target="de")
    translator = ArgosTranslator([packages_dir], settings)
    route = translator.route("nb", "de")
    assert route is not None and route.name == "translate-nb_en+translate-en_de"
    assert translator.translate(route, ["Hei på deg."]) == ["Hei på deg."]
    assert translator.calls == 2


def test_find_route_prefers_direct() -> None:
    """A direct package wins over a pivot; no package, no route."""
    def pkg(a: str, b: str) -> PackageInfo:
        return PackageInfo(f"translate-{a}_{b}", a, b, "1", Path(a + b))

    both = [pkg("ja", "en"), pkg("en", "de"), pkg("ja", "de")]
    assert find_route(both, "ja", "de") == Route((both[2],))
    assert find_route(both[:2], "ja", "de") == Route((both[0], both[1]))
    assert find_route(both[:1], "ja", "de") is None


def test_evaluate_reports_bleu_and_chrf(monitor: Invoke, kit: Kit, config_file: Path,
                                        tmp_path: Path) -> None:
    """`models evaluate` scores the model with sacrebleu (a copying model scores 100
    against its own source) and refuses files that do not pair up."""
    assert monitor("models", "install", str(kit.nb_en), config=config_file).exit_code == 0
    source = tmp_path / "src.nb"
    source.write_text("Hei på deg.\nDet regner i dag.\nDroner over Oslo.\n", encoding="utf-8")
    result = monitor("models", "evaluate", "--from", "nb", "--source", str(source),
                     "--reference", str(source), "--json", config=config_file)
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output)
    assert scores["bleu"] == pytest.approx(100.0) and scores["chrf"] == pytest.approx(100.0)
    short = tmp_path / "ref.en"
    short.write_text("Hello.\n", encoding="utf-8")
    bad = monitor("models", "evaluate", "--from", "nb", "--source", str(source),
                  "--reference", str(short), config=config_file)
    assert bad.exit_code == 1 and "must pair up" in bad.output


def test_translate_one_text(monitor: Invoke, kit: Kit, config_file: Path) -> None:
    """`monitor translate TEXT --from LANG` prints the translation, or the install hint."""
    missing = monitor("translate", "Hei.", "--from", "nb", config=config_file)
    assert missing.exit_code == 1 and "monitor models install nb" in missing.output
    assert monitor("models", "install", str(kit.nb_en), config=config_file).exit_code == 0
    assert monitor("translate", "Hei.", "--from", "nb", config=config_file).output == "Hei.\n"


# --- sentences and codes -----------------------------------------------------------------


@pytest.mark.parametrize(("language", "text", "sentences"), [
    ("nb", "Kl. 12.30 kom dr. Olsen, dvs. legen. Så gikk han.",
     ["Kl. 12.30 kom dr. Olsen, dvs. legen.", "Så gikk han."]),
    ("ja", "会議が開かれた。ドローンが話題になった。",
     ["会議が開かれた。", "ドローンが話題になった。"]),
    ("ko", "회의가 열렸다. 드론이 화제였다!", ["회의가 열렸다.", "드론이 화제였다!"]),
    ("nb", "   ", []),
])
def test_split_sentences(language: str, text: str, sentences: list[str]) -> None:
    """Punkt splits where it has a model (keeping abbreviations), punctuation elsewhere."""
    assert split_sentences(text, language) == sentences


@pytest.mark.parametrize(("detected", "argos"), [
    ("nb", "nb"), ("no", "nb"), ("nn", "nb"), ("nb-NO", "nb"), ("zh", "zh"), ("zh-cn", "zh"),
    ("zh-CN", "zh"), ("zh-hans", "zh"), ("zh-tw", "zt"), ("zh-TW", "zt"), ("zh-hant", "zt"),
    ("zh-hant-tw", "zt"), ("zh-hk", "zt"), ("pt-br", "pt"), ("pt_PT", "pt"), ("iw", "he"),
    ("in", "id"), ("fil", "tl"), ("ja", "ja"), ("tr", "tr"), ("en-US", "en"),
])
def test_language_code_mapping(detected: str, argos: str) -> None:
    """Detector and metadata codes map to the Argos codes packages are named with."""
    assert to_argos(detected) == argos


@pytest.mark.parametrize(("argos", "ours"), [("zt", "zh-tw"), ("pb", "pt"), ("nb", "nb"),
                                             ("zh", "zh"), ("ja", "ja")])
def test_language_code_mapping_back(argos: str, ours: str) -> None:
    """Argos codes map back to monitor's, and round-trip through to_argos."""
    assert from_argos(argos) == ours
    assert to_argos(from_argos(argos)) == (argos if argos != "pb" else "pt")


# --- no torch in the daemon ----------------------------------------------------------------

DAEMON_PATH = """
import sys
from monitor import config, db
import monitor.daemon  # the daemon's own imports
from monitor.backfill import Options, run_backfill
from monitor.translating import sweep

settings = config.load(sys.argv[1], database_url=sys.argv[2])
engine = db.make_engine(sys.argv[2])
db.upgrade(engine)
sessions = db.session_factory(engine)
run_backfill(settings, sessions, [sys.argv[3]], Options(), progress=False)
report = sweep(settings, sessions, settings.translation.sweep_batch)
assert report.done == 1 and report.translated >= 1, report
print(sorted(m for m in ("torch", "stanza", "argostranslate.translate") if m in sys.modules))
"""


def test_daemon_path_never_imports_torch(kit: Kit, config_file: Path, packages_dir: Path,
                                         tmp_path: Path) -> None:
    """A fresh process that ingests seed 004 and sweeps it, as the daemon does, has
    imported neither torch nor stanza."""
    packages.install_from_path(kit.nb_en, packages_dir)
    url = f"sqlite:///{tmp_path / 'daemon.db'}"
    result = subprocess.run(
        [sys.executable, "-c", DAEMON_PATH, str(config_file), url, str(SEED_004)],
        capture_output=True, text=True, cwd=REPO, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


# --- the sweep's decisions, with a fake translator -----------------------------------------


class FakeTranslator:
    """Uppercases, and turns the Norwegian 'flyvemaskin' into 'drone'."""

    engine = "fake"

    def __init__(self, fail: Sequence[str] = ()) -> None:
        self.fail = set(fail)
        self.texts: list[str] = []

    def route(self, source: str, target: str) -> Route | None:
        if source == "ja":
            return None
        return Route((PackageInfo(f"fake-{source}", source, target, "9", Path(".")),))

    def translate(self, route: Route, texts: Sequence[str]) -> list[str]:
        if route.packages[0].from_code in self.fail:
            raise TranslateError("the fake model broke")
        self.texts += texts
        return [t.replace("flyvemaskin", "drone").upper() for t in texts]


ARTICLES = {
    "topic": ("Droner over Oslo i natt", "Politiet så droner over byen. " * 8, "nb"),
    "plain": ("Været blir fint i helgen", "Sol og varme over hele landet. " * 8, "nb"),
    "via_translation": ("Ubemannet flyvemaskin sett", "En flyvemaskin fløy lavt. " * 8, "nb"),
    "swedish": ("Vädret blir fint i helgen", "Sol och värme i hela landet. " * 8, "sv"),
    "japanese": ("晴れの週末", "全国的に晴れて暖かい。" * 8, "ja"),
}


def _articles(tmp_path: Path) -> Path:
    folder = tmp_path / "articles"
    folder.mkdir()
    for name, (title, body, language) in ARTICLES.items():
        (folder / f"{name}.txt").write_text(f"{title}\n{body}\n", encoding="utf-8")
        (folder / f"{name}.txt.meta.toml").write_text(
            f'outlet = "{name}"\nlanguage = "{language}"\n', encoding="utf-8")
    return folder


def _setup(database_url: str, tmp_path: Path, full_text: str):  # type: ignore[no-untyped-def]
    topic = Topic("drones", ("drone*", "DRONE*"))
    settings = replace(Settings(database_url=database_url), topics=(topic,),
                       translation=TranslationSettings(full_text=full_text, sweep_batch=2))
    engine = db.make_engine(database_url)
    db.upgrade(engine)
    sessions = db.session_factory(engine)
    run_backfill(settings, sessions, [str(_articles(tmp_path))], Options(), progress=False)
    return settings, sessions


def _rows(sessions) -> dict[str, tuple[ItemRow, list[str]]]:  # type: ignore[no-untyped-def]
    with sessions() as session:
        items = {i.outlet: i for i in session.scalars(select(ItemRow))}
        topics = session.execute(select(ItemTopicRow.item_id, ItemTopicRow.matched_on)).all()
    return {name: (item, [m for i, m in topics if i == item.id]) for name, item in items.items()}


def test_triage_translates_full_text_only_for_topic_matches(database_url: str,
                                                            tmp_path: Path) -> None:
    """Title and summary always; the body only for items matching a topic on the original
    or on the translation, which adds an item_topics row matched on the translation;
    a language without a model waits with its hint."""
    settings, sessions = _setup(database_url, tmp_path, "matched")
    fake = FakeTranslator()
    report = sweep(settings, sessions, translator=fake)
    assert (report.done, report.failed, report.waiting, report.new_topics) == (4, 0, ("ja",), 1)
    rows = _rows(sessions)
    topic, plain, via = rows["topic"][0], rows["plain"][0], rows["via_translation"][0]
    assert topic.translated_text and topic.translated_text.startswith("POLITIET")
    assert plain.translation_status == "done" and plain.translated_text is None
    assert "full text not" in (plain.translation_reason or "")
    assert plain.translated_title == "VÆRET BLIR FINT I HELGEN"
    assert via.translated_text is not None and rows["via_translation"][1] == ["translation"]
    assert rows["topic"][1] == ["original"]
    assert rows["japanese"][0].translation_status == "pending"
    assert plain.text not in fake.texts  # plain's body never went to the model
    assert (plain.translation_engine, plain.translation_package,
            plain.translation_package_version) == ("fake", "fake-nb", "9")


@pytest.mark.parametrize(("mode", "bodies"), [("all", 4), ("never", 0)])
def test_full_text_modes(database_url: str, tmp_path: Path, mode: str, bodies: int) -> None:
    """translation.full_text = all translates every body, never none."""
    settings, sessions = _setup(database_url, tmp_path, mode)
    sweep(settings, sessions, translator=FakeTranslator())
    translated = [i for i, _ in _rows(sessions).values() if i.translated_text is not None]
    assert len(translated) == bodies


def test_a_failing_model_fails_its_items_only(database_url: str, tmp_path: Path) -> None:
    """A model that raises marks its language's items failed with the reason; the other
    languages are translated and the sweep does not raise; --retry-failed requeues them."""
    settings, sessions = _setup(database_url, tmp_path, "matched")
    report = sweep(settings, sessions, translator=FakeTranslator(fail=["nb"]))
    assert (report.done, report.failed) == (1, 3)
    rows = _rows(sessions)
    assert rows["swedish"][0].translation_status == "done"
    failed = rows["plain"][0]
    assert failed.translation_status == "failed"
    assert "the fake model broke" in (failed.translation_reason or "")
    from monitor.translating import requeue_failed

    assert requeue_failed(sessions) == 3
    assert sweep(settings, sessions, translator=FakeTranslator()).done == 3


def test_sweep_limit_and_disabled(database_url: str, tmp_path: Path) -> None:
    """The sweep takes at most ``limit`` items, oldest first; disabled, it does nothing."""
    settings, sessions = _setup(database_url, tmp_path, "matched")
    off = replace(settings, translation=replace(settings.translation, enabled=False))
    assert sweep(off, sessions, translator=FakeTranslator()) == SweepReport()
    assert sweep(settings, sessions, 3, translator=FakeTranslator()).done == 3
    assert sweep(settings, sessions, 3, translator=FakeTranslator()).done == 1
