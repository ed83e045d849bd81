"""Language detection: code normalisation, metadata versus detector, the default detector."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from monitor import language
from monitor.errors import ConfigError
from monitor.language import (
    DEFAULT_LANGUAGES,
    HybridDetector,
    detect_language,
    make_detector,
    normalize_code,
    normalize_languages,
)
from monitor.parse import parse_feed
from monitor.types import Detection

SEEDS = Path(__file__).resolve().parents[1] / "seeds"
SHARED = Path(__file__).resolve().parents[2] / "shared"
CORPUS = SHARED / "corpora" / "langid-lingua"
REAL_FEEDS = SHARED / "corpora" / "real-feeds"
REQUIRED = ("en", "nb", "da", "sv", "de", "fr", "es", "it", "pt", "nl", "pl",
            "ru", "uk", "tr", "ar", "fa", "ja", "zh", "ko", "id", "vi")
GERMAN = ("Die Bundesregierung hat am Mittwoch beschlossen, die Hilfen für die Ukraine "
          "deutlich aufzustocken. Der Bundestag muss dem Vorhaben noch zustimmen.")
JAPANESE = "政府は水曜日、ウクライナへの支援を大幅に増やすことを決定した。"
NORWEGIAN_HEADLINES = (
    "Regjeringen legger fram statsbudsjettet i dag",
    "Strømprisen stiger kraftig i Sør-Norge",
    "Politiet etterlyser vitner etter ulykken på E6",
    "Nye droneobservasjoner ved norske flyplasser",
    "Statsministeren møter NATO-sjefen i Oslo",
    "Kraftig uvær stenger flere fjelloverganger",
    "Forsvaret kjøper nye ubåter fra Tyskland",
    "Norges Bank holder renten uendret",
    "Flere tusen uten strøm etter stormen",
    "Sykehuset får kritikk for lange ventetider",
)


@pytest.fixture(scope="module")
def detector() -> language.Detector:
    return make_detector()


@pytest.mark.parametrize(("code", "expected"), [
    ("en", "en"), ("EN", "en"), ("en-US", "en"), ("en_GB", "en"), ("pt-PT", "pt"),
    ("pt-BR", "pt"), ("es-419", "es"), ("no", "nb"), ("nob", "nb"), ("nb-NO", "nb"),
    ("nor", "nb"), ("nn", "nn"), ("nno", "nn"), ("nn-NO", "nn"), ("zh", "zh"),
    ("zh-cn", "zh"), ("zh-Hans", "zh"), ("zh-Hans-CN", "zh"), ("zh-TW", "zh-tw"),
    ("zh-Hant", "zh-tw"), ("zh-HK", "zh-tw"), ("eng", "en"), ("jpn", "ja"), ("tur", "tr"),
    ("deu", "de"), ("ger", "de"), ("fra", "fr"), ("fre", "fr"), ("rus", "ru"),
    ("ukr", "uk"), ("iw", "he"), (" de-AT ", "de"), (None, None), ("", None),
    ("x", None), ("english", None), ("12", None), ("und", None), ("zxx", None),
    ("en US", None), ("x-default", None),
])
def test_normalize_code(code: str | None, expected: str | None) -> None:
    """Metadata and detector codes map to our codes, and junk maps to None."""
    assert normalize_code(code) == expected


@pytest.mark.parametrize("path", sorted(SEEDS.glob("*.txt")), ids=lambda p: p.name[:3])
def test_seed_languages(path: Path, detector: language.Detector) -> None:
    """The Norwegian seed is confidently nb and the others are en, whole and as a lead."""
    text = path.read_text(encoding="utf-8")
    expected = "nb" if path.name.startswith("004_") else "en"
    for sample in (text, text[:600]):
        found = detect_language(sample, (), detector)
        assert (found.language, found.method) == (expected, "py3langid+lingua")
        assert found.confidence >= 0.9


def test_metadata_agreeing_with_the_detector(detector: language.Detector) -> None:
    """A declared language the detector confirms is kept, and both are credited."""
    found = detect_language(GERMAN, ("de-DE",), detector)
    assert (found.language, found.method) == ("de", "metadata+py3langid+lingua")
    assert found.confidence >= language.METADATA_CONFIDENCE


@pytest.mark.parametrize(("text", "hint"), [
    (NORWEGIAN_HEADLINES[0], "nn"),  # a relative: the feed may know Nynorsk better
    (NORWEGIAN_HEADLINES[1], "da"),
    ("Live-Ticker: Bayern gegen Dortmund", "en"),  # too short to overrule
])
def test_plausible_metadata_wins(text: str, hint: str, detector: language.Detector) -> None:
    """A declared language survives a detector that picks a relative or lacks evidence."""
    assert detect_language(text, (None, "junk!", hint), detector).language == hint
    assert detect_language(text, (hint,), detector).method == "metadata"


@pytest.mark.parametrize(("text", "hint", "expected"), [
    (JAPANESE, "en", "ja"), (GERMAN, "en", "de"), (GERMAN, "fr", "de"),
    (JAPANESE[:12], "en", "ja"),  # short, but another script altogether
])
def test_implausible_metadata_is_overruled(text: str, hint: str, expected: str,
                                           detector: language.Detector) -> None:
    """A declared language contradicted by clear text in another language is overruled."""
    found = detect_language(text, (hint,), detector)
    assert (found.language, found.method) == (expected, "py3langid+lingua")


@pytest.mark.parametrize("text", ["", "   ", "12:45 — 3-1!", "Ja?", "https://nrk.no/a/very/long/path"])
def test_too_short_is_undetermined(text: str, detector: language.Detector) -> None:
    """Too few letters give und with no confidence, unless metadata declares a language."""
    assert detect_language(text, (), detector) == Detection("und", 0.0, "too-short")
    assert detect_language(text, ("nb-NO",), detector).language == "nb"


def test_letter_weight_stops_at_enough() -> None:
    """Letters weigh 1, CJK characters 3; counting may stop once the weight is enough."""
    text = "Regjeringen https://nrk.no/abcdef 政府 12:45"
    assert language.letter_weight(text) == 17
    # Past ``enough`` the count may stop anywhere: callers only compare it with thresholds
    # up to ``enough``.
    assert 12 <= language.letter_weight(text, enough=12) <= 17
    assert language.letter_weight(text, enough=40) == 17
    assert 40 <= language.letter_weight("政府" * 20, enough=40) <= 120
    assert 40 <= language.letter_weight("政府 " * 200, enough=40) <= 1200


def test_norwegian_headlines_are_bokmal(detector: language.Detector) -> None:
    """Short Norwegian headlines come out nb, not Danish or Swedish."""
    found = [detect_language(text, (), detector).language for text in NORWEGIAN_HEADLINES]
    assert found.count("nb") >= 9, found


@pytest.mark.parametrize("name", ["default", "py3langid", "lingua", "langdetect"])
def test_deterministic(name: str) -> None:
    """Repeated calls and a freshly built detector give the same answers."""
    texts = [*NORWEGIAN_HEADLINES, "ikke nå", "god morgen", "hola amigo", "ok boomer"]
    first = [make_detector(name).detect(text) for text in texts]
    for cache in (language._langid, language._lingua_model,
                  language._langdetect_factory, language._make_detector):
        cache.cache_clear()
    again = [make_detector(name).detect(text) for text in texts]
    assert again == first
    assert [make_detector(name).detect(text) for text in texts] == first


def test_restricted_to_configured_languages() -> None:
    """Detectors answer only with configured languages."""
    for name in ("default", "py3langid", "lingua", "langdetect"):
        found = make_detector(name, ["en", "de", "nb-NO"]).detect(GERMAN.replace("Die", "La"))
        assert found.language in {"en", "de", "nb"}
    assert make_detector("langdetect", ["en", "no"]).detect(NORWEGIAN_HEADLINES[3]).language == "nb"


def test_bad_configuration_is_a_config_error() -> None:
    """An unknown detector or a junk language code is a ConfigError."""
    with pytest.raises(ConfigError, match="detector"):
        make_detector("fasttext")
    with pytest.raises(ConfigError, match="english"):
        make_detector("default", ["en", "english"])


def test_default_languages_cover_the_required_set() -> None:
    """The default configuration includes every language the detector is judged on."""
    assert set(REQUIRED) <= set(DEFAULT_LANGUAGES) and {"nn", "ca", "fi"} <= set(DEFAULT_LANGUAGES)


def _sample(name: str, every: int, languages: tuple[str, ...] | None = REQUIRED
            ) -> list[tuple[str, str]]:
    if not CORPUS.is_dir():
        pytest.skip(f"shared corpus not found at {CORPUS}")
    with (CORPUS / name).open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    return [(lang, text) for lang, line, text in rows
            if (languages is None or lang in languages) and int(line) % every == 0]


def _feed_texts(every: int) -> list[str]:
    """Titles and leads (title, then body, 600 characters) of every ``every``-th feed item."""
    if not REAL_FEEDS.is_dir():
        pytest.skip(f"shared feeds not found at {REAL_FEEDS}")
    articles = [article for path in sorted(REAL_FEEDS.glob("*.xml"))
                for article in parse_feed(path.read_bytes()).articles[::every]]
    return [text for a in articles
            for text in (a.title, f"{a.title}\n{a.text or a.summary}"[:600])]


def test_accuracy_on_shared_sentences() -> None:
    """The default detector gets at least 98% of a sample of lingua's test sentences."""
    sample = _sample("sentences_first100.tsv", every=4)
    detector = HybridDetector(REQUIRED)
    wrong = [(lang, got) for lang, text in sample
             if (got := detector.detect(text).language) != lang]
    assert len(wrong) <= 0.02 * len(sample), wrong


def test_accuracy_on_shared_word_pairs() -> None:
    """The default detector beats plain py3langid on two-word pairs and keeps confidence in 0..1."""
    sample = _sample("word_pairs_first50.tsv", every=2)
    hybrid, plain = HybridDetector(REQUIRED), make_detector("py3langid", REQUIRED)
    found = [hybrid.detect(text) for _lang, text in sample]
    hits = sum(f.language == lang for f, (lang, _) in zip(found, sample, strict=True))
    baseline = sum(plain.detect(text).language == lang for lang, text in sample)
    assert hits > baseline and hits >= 0.94 * len(sample)
    assert all(0.0 <= f.confidence <= 1.0 for f in found)


@pytest.mark.parametrize(("text", "script"), [
    ("Regjeringen legger fram statsbudsjettet", "Latn"), ("Ціни на газ знову ростуть", "Cyrl"),
    ("قیمت گاز دوباره بالا رفت", "Arab"), ("政府决定增加援助", "Hani"), (JAPANESE, "Kana"),
    ("정부, 우크라이나 지원 확대", "Hang"),
    ("르노삼성 부산공장은 사원대표위원회(Employee Representative Organization)", "Hang"),  # 3 each
    ("Apple представила новый iPhone в Москве", "Cyrl"), ("12:45 — 3-1!", None),
])
def test_script_of(text: str, script: str | None) -> None:
    """A text's script is that of most of its letters; Han with kana is Japanese."""
    assert language.script_of(text) == script


def test_written_in() -> None:
    """Routing keeps the configured languages written in a script, Han for zh and ja."""
    assert language.written_in("Cyrl", DEFAULT_LANGUAGES) == ("ru", "uk")
    assert language.written_in("Hani", DEFAULT_LANGUAGES) == ("ja", "zh")
    assert language.written_in("Kana", DEFAULT_LANGUAGES) == ("ja",)
    assert language.written_in("Hang", DEFAULT_LANGUAGES) == ("ko",)
    assert "en" in language.written_in("Latn", DEFAULT_LANGUAGES)
    assert language.written_in("Latn", ("sr", "ru")) == language.written_in("Cyrl", ("sr",))
    assert language.written_in(None, DEFAULT_LANGUAGES) == ()


@pytest.mark.parametrize(("text", "expected"), [
    ("정부, 우크라이나 지원 확대", "ko"), (JAPANESE[:12], "ja"),
    ("Ціни на газ знову ростуть", "uk"), ("Цены на газ снова растут", "ru"),
    ("Rząd ogłosił nowe przepisy", "pl"), ("Hükümet yeni kararlar aldı", "tr"),
])
def test_short_texts_are_routed_by_script(text: str, expected: str,
                                          detector: language.Detector) -> None:
    """A short text is decided among the languages of its script; alone in it, for certain."""
    found = detector.detect(text)
    assert found.language == expected
    if len(language.written_in(language.script_of(text), DEFAULT_LANGUAGES)) == 1:
        assert found.confidence == 1.0


def test_lingua_vote() -> None:
    """lingua redeals three quarters of its languages' share; the others keep theirs."""
    shares = {"da": 0.5, "nb": 0.3, "pl": 0.2}
    voted = {**shares, **language.lingua_vote(shares, {"da": 0.1, "nb": 0.9})}
    assert voted == pytest.approx({"da": 0.185, "nb": 0.615, "pl": 0.2})
    assert language.lingua_vote(shares, {"da": 0.0, "nb": 0.0}) == {}


def test_py3langid_keeps_only_the_configured_columns() -> None:
    """The restricted py3langid model drops the rest of its 142-language table."""
    model = language._langid_model(tuple(sorted(REQUIRED)))
    assert model.nb_ptc.shape[1] == len(model.nb_classes) == len(REQUIRED)
    assert model._full_model[0] is model.nb_ptc
    assert language._FastLangid.of(model).ptc.shape[1] == len(REQUIRED)


@pytest.mark.parametrize("languages", [DEFAULT_LANGUAGES, ("bs", "en", "hr", "ru", "sr", "uz")],
                         ids=["default", "aliased"])  # sr and uz have two columns each
def test_vectorized_py3langid_is_py3langid(languages: tuple[str, ...]) -> None:
    """The vectorized py3langid gives py3langid's own rankings and probabilities, to the bit."""
    model = language._langid_model(normalize_languages(languages))
    fast = language._FastLangid.of(model)
    texts = [text for name in ("sentences_first100.tsv", "word_pairs_first50.tsv")
             for _lang, text in _sample(name, every=8, languages=None)]
    texts += [*_feed_texts(every=4), "", " ", "12:45", "ÉTÉ À PARIS", "e\u0301te\u0301"]
    assert [fast.rank(text) for text in texts] == [model.rank(text) for text in texts]
    assert [fast.classify(text) for text in texts] == [model.classify(text) for text in texts]


def test_py3langid_is_vectorized() -> None:
    """The configured py3langid runs vectorized: its automaton passed the checks at load."""
    fast = language._langid(DEFAULT_LANGUAGES)
    assert isinstance(fast, language._FastLangid) and fast.depth == 6


def test_py3langid_falls_back_to_its_own_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    """When the automaton cannot be vectorized, py3langid's own walk answers."""
    def fail(model: object) -> None:
        raise ValueError("unexpected automaton")

    monkeypatch.setattr(language._FastLangid, "of", fail)
    language._langid.cache_clear()
    try:
        assert not isinstance(language._langid(DEFAULT_LANGUAGES), language._FastLangid)
        found = language.Py3langidDetector().detect(GERMAN)
        assert (found.language, found.method) == ("de", "py3langid")
    finally:
        language._langid.cache_clear()


def _sentences(per_language: int = 6) -> list[str]:
    with (CORPUS / "sentences_first100.tsv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    taken: dict[str, list[str]] = {}
    for row in rows:
        if len(taken.setdefault(row["lang"], [])) < per_language:
            taken[row["lang"]].append(row["text"])
    return [text for texts in taken.values() for text in texts]


def test_a_batch_gets_the_answers_one_at_a_time_gets() -> None:
    """The pipeline asks about a whole feed at once: every detection (language,
    confidence, method) is the one asked alone gives, for short and long texts, with and
    without metadata, in 75 languages; an empty batch is an empty answer."""
    detector = make_detector()
    sentences = _sentences()
    texts = sentences + [" ".join(sentences[i:i + 4]) for i in range(0, len(sentences), 4)]
    texts += ["", "   ", "12:45", GERMAN, JAPANESE, *NORWEGIAN_HEADLINES]
    hints = [("nb-NO",) if i % 7 == 0 else ("junk!", None) if i % 5 == 0 else ()
             for i in range(len(texts))]
    together = language.detect_languages(texts, hints, detector)
    alone = [detect_language(text, hint, detector) for text, hint in zip(texts, hints,
                                                                          strict=True)]
    assert together == alone and len(together) > 500
    assert language.detect_languages([], [], detector) == []


def test_the_batched_scorer_matches_py3langid() -> None:
    """One pass of the automaton over joined texts names what py3langid names, with the
    same probability to 1e-4 (what is stored: 4 decimals), text by text (the sums run in
    another order, so not to the bit: 1.3e-5 at most over the 7,500 sentences)."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    fast = language._langid(DEFAULT_LANGUAGES)
    assert isinstance(fast, language._FastLangid)
    reference = language._langid_model(DEFAULT_LANGUAGES)
    assert isinstance(reference, LanguageIdentifier) and MODEL_FILE
    texts = _sentences(10) + ["", "ÇA COÛTE 3 €", "a"]
    for text, (label, probability) in zip(texts, fast.classify_many(texts), strict=True):
        want = reference.classify(text)
        assert label == want[0] and abs(probability - want[1]) < 1e-4, text


def test_letter_weight_stops_early_without_changing_the_verdict() -> None:
    """Counting up to ``enough`` reads an opening first: the verdict (enough or not, and
    the count when not) is the full count's, URLs anywhere included."""
    url = "https://example.com/a-very-long-path/with-letters-inside?utm_source=rss "
    texts = _sentences(2) + [url * 5 + "Hei og hå", "ab " * 30 + url + "cd " * 40,
                             "x " * 100, url, "政府は" * 30, ""]
    for text in texts:
        full = language.letter_weight(text)
        for enough in (12, 40):
            bounded = language.letter_weight(text, enough)
            assert (bounded >= enough) == (full >= enough), text
            assert full >= enough or bounded == full, text
