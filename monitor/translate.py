"""Offline translation: the :class:`Translator` protocol and its Argos implementation.

:class:`ArgosTranslator` runs Argos Translate packages (found by :mod:`monitor.packages`)
on CTranslate2 and SentencePiece directly. ``argostranslate.translate`` is never imported:
it imports stanza and with it torch, hundreds of megabytes the daemon does not need.
Texts are split into sentences offline (Punkt models where one exists for the language, a
punctuation rule otherwise), and every sentence of every text given goes to CTranslate2 in
one ``translate_batch`` call, which batches and sorts them itself: argostranslate's own
loop makes one call per paragraph, and per sentence for a list of titles. A model loads
once, on first need, and stays loaded for the life of the process.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from monitor.config import Settings, TranslationSettings
from monitor.errors import TranslateError
from monitor.languages import PIVOT, to_argos
from monitor.packages import PackageInfo, Route, find_route, installed, package_dirs

ENGINE = "argos-ctranslate2"
MAX_TOKENS = 200  # longer sentences go to the model in pieces: nothing is truncated
NO_SPACE = frozenset({"ja", "zh", "zt", "th"})
PUNKT = {
    "cs": "czech", "da": "danish", "nl": "dutch", "en": "english", "et": "estonian",
    "fi": "finnish", "fr": "french", "de": "german", "el": "greek", "it": "italian",
    "ml": "malayalam", "nb": "norwegian", "pl": "polish", "pt": "portuguese",
    "ru": "russian", "sl": "slovene", "es": "spanish", "sv": "swedish", "tr": "turkish",
}
_FULL_STOP = re.compile(r"(?<=[.!?…])\s+|(?<=[。！？])\s*")
ROUTE_CHECK_SECONDS = 30.0


class Translator(Protocol):
    """Translates texts along a route of installed packages."""

    engine: str

    def route(self, source: str, target: str) -> Route | None:
        """How to get from ``source`` to ``target`` (monitor's codes), or None."""
        ...

    def translate(self, route: Route, texts: Sequence[str]) -> list[str]:
        """One translation per text, in order; raises TranslateError."""
        ...


# --- sentences -------------------------------------------------------------------------


@lru_cache(maxsize=32)
def _punkt(language: str) -> Any:
    import punkt

    return punkt.PunktSentenceTokenizer(punkt.load_model(language))


def split_sentences(paragraph: str, language: str) -> list[str]:
    """The sentences of one paragraph (Argos code), stripped; none for blank text."""
    if not paragraph.strip():
        return []
    model = PUNKT.get(language)
    pieces = _punkt(model).tokenize(paragraph) if model else _FULL_STOP.split(paragraph)
    return [p.strip() for p in pieces if p.strip()]


def _segment(text: str, language: str) -> list[list[str]]:
    return [split_sentences(line, language) for line in text.split("\n")]


# --- the Argos implementation ----------------------------------------------------------


class _Tokenizer(Protocol):
    def encode(self, sentences: list[str]) -> list[list[str]]: ...

    def decode(self, tokens: list[str]) -> str: ...

    def starts_word(self, previous: str, token: str) -> bool: ...


def _pieces(tokens: list[str], tokenizer: _Tokenizer) -> list[list[str]]:
    """A sentence's tokens in pieces of at most MAX_TOKENS, cut where a word starts when
    one does in the piece's second half (texts without spaces are cut anywhere)."""
    pieces, start = [], 0
    while len(tokens) - start > MAX_TOKENS:
        end = start + MAX_TOKENS
        cut = next((i for i in range(end, start + MAX_TOKENS // 2, -1)
                    if tokenizer.starts_word(tokens[i - 1], tokens[i])), end)
        pieces.append(tokens[start:cut])
        start = cut
    return [*pieces, tokens[start:]]


class _SentencePiece:
    def __init__(self, path: Path) -> None:
        import sentencepiece

        self.processor = sentencepiece.SentencePieceProcessor(model_file=str(path))

    def encode(self, sentences: list[str]) -> list[list[str]]:
        return self.processor.encode(sentences, out_type=str)  # type: ignore[no-any-return]

    def decode(self, tokens: list[str]) -> str:
        return self.processor.decode_pieces(tokens).strip()  # type: ignore[no-any-return]

    def starts_word(self, previous: str, token: str) -> bool:
        return token.startswith("\u2581")


class _Bpe:
    """Argos' BPE tokenizer (Moses tokenization plus subword-nmt codes), for old packages."""

    def __init__(self, package: PackageInfo) -> None:
        from argostranslate.tokenizer import BPETokenizer

        self.tokenizer = BPETokenizer(package.path / "bpe.model", package.from_code,
                                      package.to_code)

    def encode(self, sentences: list[str]) -> list[list[str]]:
        return [self.tokenizer.encode(s) for s in sentences]

    def decode(self, tokens: list[str]) -> str:
        return str(self.tokenizer.decode(tokens)).strip()

    def starts_word(self, previous: str, token: str) -> bool:
        return not previous.endswith("@@")


class _Loaded:
    """One package in memory: its CTranslate2 translator and its tokenizer."""

    def __init__(self, package: PackageInfo, settings: TranslationSettings) -> None:
        import ctranslate2

        sp = package.path / "sentencepiece.model"
        try:
            self.tokenizer: _Tokenizer = _SentencePiece(sp) if sp.is_file() else _Bpe(package)
            self.model = ctranslate2.Translator(
                str(package.path / "model"), device="cpu", compute_type=settings.compute_type)
        except (RuntimeError, OSError, ValueError) as exc:
            raise TranslateError(f"package {package.name} {package.version} does not load: "
                                 f"{exc}; reinstall it with `monitor models install`") from exc
        self.package = package


class ArgosTranslator:
    """Argos packages on CTranslate2; thread-safe; ``calls`` counts ``translate_batch``
    calls and ``sentences`` the sentences they carried."""

    engine = ENGINE

    def __init__(self, dirs: Sequence[Path], settings: TranslationSettings) -> None:
        self.dirs = tuple(dirs)
        self.settings = settings
        self.calls = 0
        self.sentences = 0
        self._loaded: dict[Path, _Loaded] = {}
        self._lock = threading.Lock()

    def route(self, source: str, target: str) -> Route | None:
        return find_route(installed(self.dirs), to_argos(source), to_argos(target))

    def translate(self, route: Route, texts: Sequence[str]) -> list[str]:
        out = list(texts)
        for package in route.packages:
            out = self._through(self._load(package), out)
        return out

    def loaded(self) -> list[PackageInfo]:
        return [m.package for m in self._loaded.values()]

    def _load(self, package: PackageInfo) -> _Loaded:
        with self._lock:
            current = self._loaded.get(package.path)
            if current is None or current.package != package:
                self._loaded[package.path] = current = _Loaded(package, self.settings)
            return current

    def _through(self, loaded: _Loaded, texts: list[str]) -> list[str]:
        language = loaded.package.from_code
        segmented = [_segment(text, language) for text in texts]
        unique = list(dict.fromkeys(s for text in segmented for line in text for s in line))
        done = dict(zip(unique, self._sentences(loaded, unique), strict=True))
        joiner = "" if loaded.package.to_code in NO_SPACE else " "
        return ["\n".join(joiner.join(done[s] for s in line) for line in text)
                for text in segmented]

    def _sentences(self, loaded: _Loaded, sentences: list[str]) -> list[str]:
        if not sentences:
            return []
        pieces: list[list[str]] = []
        owner: list[int] = []
        for index, tokens in enumerate(loaded.tokenizer.encode(sentences)):
            for piece in _pieces(tokens, loaded.tokenizer):
                pieces.append(piece)
                owner.append(index)
        outputs = self._generate(loaded, pieces)
        joined: list[list[str]] = [[] for _ in sentences]
        for index, text in zip(owner, outputs, strict=True):
            joined[index].append(text)
        joiner = "" if loaded.package.to_code in NO_SPACE else " "
        return [joiner.join(t for t in parts if t) for parts in joined]

    def _generate(self, loaded: _Loaded, pieces: list[list[str]]) -> list[str]:
        """The one CTranslate2 call for a batch of token lists."""
        prefix = loaded.package.target_prefix
        longest = max(len(p) for p in pieces)
        try:
            results = loaded.model.translate_batch(
                pieces, beam_size=self.settings.beam_size,
                max_batch_size=self.settings.batch_size, replace_unknowns=True,
                max_decoding_length=min(512, 2 * longest + 16),
                target_prefix=[[prefix]] * len(pieces) if prefix else None)
        except (RuntimeError, ValueError) as exc:
            raise TranslateError(f"{loaded.package.name}: translation failed: {exc}") from exc
        with self._lock:
            self.calls += 1
            self.sentences += len(pieces)
        texts = []
        for result in results:
            tokens = result.hypotheses[0]
            if prefix and tokens[:1] == [prefix]:
                tokens = tokens[1:]
            texts.append(loaded.tokenizer.decode(tokens))
        return texts


@lru_cache(maxsize=4)
def shared_translator(settings: TranslationSettings) -> ArgosTranslator:
    """One translator per translation settings for the life of the process, so models
    load once and stay loaded across sweeps."""
    return ArgosTranslator(package_dirs(settings), settings)


# --- the pipeline's cheap check --------------------------------------------------------


class _RouteCheck:
    """Whether a route exists, from metadata alone; re-reads the directories every 30 s."""

    def __init__(self, settings: TranslationSettings) -> None:
        self.settings = settings
        self._pairs: frozenset[tuple[str, str]] = frozenset()
        self._read_at = float("-inf")

    def __call__(self, language: str) -> bool:
        if time.monotonic() - self._read_at > ROUTE_CHECK_SECONDS:
            try:
                found = installed(package_dirs(self.settings))
            except TranslateError:
                found = []
            self._pairs = frozenset((p.from_code, p.to_code) for p in found)
            self._read_at = time.monotonic()
        source, target = to_argos(language), to_argos(self.settings.target)
        return (source, target) in self._pairs or {(source, PIVOT), (PIVOT, target)} <= self._pairs


def can_translate(settings: Settings) -> Callable[[str], bool]:
    """For ``Pipeline.can_translate``: is a package installed for this language?"""
    return _RouteCheck(settings.translation)
