"""A tiny but real Argos Translate package, built at test time (no model can be downloaded).

The package is what Argos ships: a zip (``.argosmodel``) holding ``metadata.json``, a
SentencePiece model trained here on fixture text, and a CTranslate2 Transformer in
``model/``. The Transformer's weights are set by hand so that it *copies* its input:

* every token embedding is a balanced +-1 code in the first ``d_model - head_dim``
  dimensions, every position a balanced +-1 code in the last ``head_dim``; their sum has
  mean 0 and variance 1, so each layer norm leaves it as it is;
* in the first decoder layer every cross-attention head matches the decoder position with
  the source position (queries and keys read the position code), and the values carry the
  source token's code, which the output projection scores against every token's code;
* every other sub-layer has random weights but a near-zero output projection, so it costs
  what a real layer costs and changes nothing.

With ``add_source_eos`` the source ends in ``</s>``, which the decoder copies last: it
stops exactly where the source does. Translating a sentence therefore gives back the
sentence, through real SentencePiece and CTranslate2 calls, which makes end-to-end tests
exact and benchmark decoding lengths realistic.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SEEDS = REPO / "seeds"
NOISE = 1e-3


@dataclass(frozen=True)
class Shape:
    layers: int = 1
    d_model: int = 128
    heads: int = 2
    ffn: int = 256
    # Learned positions, as many as the longest decoding monitor asks for (512) and its
    # start token: beam search's runner-up hypothesis of this copying model does not
    # stop with the best one, and CTranslate2 refuses a position past the table.
    positions: int = 520
    vocab_size: int = 2000


TEST_SHAPE = Shape()
# Tiny but not trivial: the size of a small real NMT model's layers, for benchmarks.
BENCH_SHAPE = Shape(layers=3, d_model=256, heads=4, ffn=1024, positions=520, vocab_size=8000)


def fixture_text(shared: Path | None, lines: int = 400) -> list[str]:
    """The seed articles and, when the shared corpus is there, FLORES and Tatoeba lines."""
    text = [ln for p in sorted(SEEDS.glob("*.txt")) for ln in p.read_text("utf-8").splitlines()]
    if shared is not None:
        for name in ("flores-dev.nb", "flores-dev.en", "tatoeba-test-v2021-08-07.nob"):
            path = shared / "corpora" / "nb-en" / name
            if path.exists():
                text += path.read_text("utf-8").splitlines()[:lines]
    return [ln for ln in text if ln.strip()]


def train_sentencepiece(lines: Iterable[str], dest: Path, vocab_size: int) -> Path:
    """A unigram SentencePiece model with byte fallback: any script survives a round trip."""
    import sentencepiece as spm

    dest.mkdir(parents=True, exist_ok=True)
    corpus = dest / "corpus.txt"
    corpus.write_text("\n".join(lines), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(dest / "sentencepiece"), vocab_size=vocab_size,
        hard_vocab_limit=False, byte_fallback=True, character_coverage=1.0,
        normalization_rule_name="identity", model_type="unigram", minloglevel=2,
        num_threads=1)
    corpus.unlink()
    return dest / "sentencepiece.model"


def _codes(rng: np.random.Generator, count: int, width: int) -> np.ndarray:
    """``count`` random codes of +-1 with exactly as many of each sign."""
    base = np.array([1.0, -1.0] * (width // 2), dtype=np.float32)
    return np.stack([rng.permutation(base) for _ in range(count)])


def _linear(spec, weight: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    spec.weight = weight.astype(np.float32)
    spec.bias = np.zeros(weight.shape[0], dtype=np.float32)


def _norm(spec, width: int) -> None:  # type: ignore[no-untyped-def]
    spec.gamma = np.ones(width, dtype=np.float32)
    spec.beta = np.zeros(width, dtype=np.float32)


def _noise(rng: np.random.Generator, rows: int, cols: int, scale: float) -> np.ndarray:
    return (rng.standard_normal((rows, cols)) * scale).astype(np.float32)


def _quiet_layer(layer, shape: Shape, rng: np.random.Generator,  # type: ignore[no-untyped-def]
                 cross: bool) -> None:
    """Random attention and feed-forward weights whose outputs are next to nothing."""
    d = shape.d_model
    scale = d ** -0.5
    attentions = [layer.self_attention] + ([layer.attention] if cross else [])
    for attention in attentions:
        _norm(attention.layer_norm, d)
        *inner, out = attention.linear
        widths = [3 * d] if len(inner) == 1 else [d, 2 * d]  # fused QKV, or Q and fused KV
        for linear, rows in zip(inner, widths, strict=True):
            _linear(linear, _noise(rng, rows, d, scale))
        _linear(out, _noise(rng, d, d, NOISE))
    _norm(layer.ffn.layer_norm, d)
    _linear(layer.ffn.linear_0, _noise(rng, shape.ffn, d, scale))
    _linear(layer.ffn.linear_1, _noise(rng, d, shape.ffn, NOISE))


def _copying_attention(attention, shape: Shape) -> None:  # type: ignore[no-untyped-def]
    """Cross-attention that reads the source token at the decoder's own position."""
    d, hd = shape.d_model, shape.d_model // shape.heads
    tok = d - hd
    query = np.zeros((d, d), dtype=np.float32)
    keys = np.zeros((d, d), dtype=np.float32)
    for head in range(shape.heads):
        rows = slice(head * hd, (head + 1) * hd)
        query[rows, tok:] = 12.0 * np.eye(hd)
        keys[rows, tok:] = np.eye(hd)
    values = np.zeros((d, d), dtype=np.float32)
    values[:tok, :tok] = np.eye(tok)
    output = np.zeros((d, d), dtype=np.float32)
    output[:tok, :tok] = 8.0 * np.eye(tok)
    _norm(attention.layer_norm, d)
    _linear(attention.linear[0], query)
    _linear(attention.linear[1], np.concatenate([keys, values]))
    _linear(attention.linear[2], output)


def build_model(vocabulary: list[str], dest: Path, shape: Shape = TEST_SHAPE,
                seed: int = 4) -> Path:
    """A CTranslate2 Transformer directory that copies its input (see the module doc)."""
    from ctranslate2.specs import transformer_spec

    rng = np.random.default_rng(seed)
    d, hd = shape.d_model, shape.d_model // shape.heads
    tokens = _codes(rng, len(vocabulary), d - hd)
    embed = np.concatenate([tokens, np.zeros((len(vocabulary), hd), np.float32)], axis=1)
    positions = np.concatenate([np.zeros((shape.positions, d - hd), np.float32),
                                _codes(rng, shape.positions, hd)], axis=1)
    spec = transformer_spec.TransformerSpec.from_config(shape.layers, shape.heads)
    for side in (spec.encoder, spec.decoder):
        side.scale_embeddings = False
        side.position_encodings.encodings = positions
        _norm(side.layer_norm, d)
    spec.encoder.embeddings[0].weight = embed
    spec.decoder.embeddings.weight = embed
    _linear(spec.decoder.projection, embed)
    for layer in spec.encoder.layer:
        _quiet_layer(layer, shape, rng, cross=False)
    for index, layer in enumerate(spec.decoder.layer):
        _quiet_layer(layer, shape, rng, cross=True)
        if index == 0:
            _copying_attention(layer.attention, shape)
    spec.config.add_source_eos = True
    spec.register_source_vocabulary(vocabulary)
    spec.register_target_vocabulary(vocabulary)
    spec.validate()
    spec.optimize(quantization=None)
    dest.mkdir(parents=True, exist_ok=True)
    spec.save(str(dest))
    return dest


def vocabulary_of(sp_model: Path) -> list[str]:
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_file=str(sp_model))
    return [processor.id_to_piece(i) for i in range(processor.get_piece_size())]


@dataclass(frozen=True)
class Parts:
    """A built model and tokenizer, to be zipped into packages with any metadata."""

    model_dir: Path
    sp_model: Path


def build_parts(dest: Path, shared: Path | None, shape: Shape = TEST_SHAPE) -> Parts:
    sp_model = train_sentencepiece(fixture_text(shared), dest / "spm", shape.vocab_size)
    model_dir = build_model(vocabulary_of(sp_model), dest / "model", shape)
    return Parts(model_dir, sp_model)


def metadata(from_code: str = "nb", to_code: str = "en", version: str = "1.0") -> dict[str, str]:
    return {"package_version": version, "argos_version": "1.0", "from_code": from_code,
            "from_name": from_code, "to_code": to_code, "to_name": to_code, "type": "translate"}


def zip_package(parts: Parts, dest: Path, meta: dict[str, str] | None = None, *,
                with_metadata: bool = True, with_model: bool = True) -> Path:
    """An ``.argosmodel`` file: one top-level directory, as Argos packages have."""
    meta = meta or metadata()
    root = f"translate-{meta['from_code']}_{meta['to_code']}-{meta['package_version']}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as archive:
        if with_metadata:
            archive.writestr(f"{root}/metadata.json", json.dumps(meta))
        archive.write(parts.sp_model, f"{root}/sentencepiece.model")
        archive.writestr(f"{root}/README.md", "A test package that copies its input.\n")
        if with_model:
            for path in sorted(parts.model_dir.iterdir()):
                archive.write(path, f"{root}/model/{path.name}")
    return dest


def corrupt_copy(package: Path, dest: Path) -> Path:
    """The package with bytes in the middle overwritten, as a broken download leaves it."""
    shutil.copy(package, dest)
    data = bytearray(dest.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = bytes(4096)
    dest.write_bytes(bytes(data))
    return dest
