"""A generator of realistic RSS 2.0 and Atom files for benchmarks; deterministic per seed.

    .venv/bin/python bench/corpus.py OUT_DIR [--files 200] [--items-per-file 100] [--seed 1]

Text comes from real sentences: lingua's test set in corpora/langid-lingua/ of the shared
folder (../shared, or $MONITOR_SHARED). Titles are windows of a language's running text
(40-120 characters, 20-60 for Chinese and Japanese), descriptions 200-800 characters of
whole sentences, often as HTML. Each feed is one outlet, mostly in one language (some
aggregators mix them); items carry GUIDs, links with tracking parameters, dates, authors and
categories, and a few mention the configured topics (drones, OSA). Every title is unique
within its outlet and every description within the corpus, so a backfill stores exactly
:attr:`Corpus.items` items.
"""

from __future__ import annotations

import argparse
import csv
import html
import os
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime
from functools import lru_cache
from pathlib import Path

SHARED = Path(os.environ.get("MONITOR_SHARED", Path(__file__).resolve().parents[2] / "shared"))
SENTENCES = SHARED / "corpora" / "langid-lingua" / "sentences_first100.tsv"
# Language, share of feeds, the codes a feed may declare (None: no <language> element).
LANGUAGES: tuple[tuple[str, int, tuple[str | None, ...]], ...] = (
    ("en", 22, ("en-us", "en", "en-GB", None)), ("nb", 6, ("nb-NO", "no", "nb", None)),
    ("ja", 8, ("ja", "ja-JP", None)), ("tr", 6, ("tr-TR", "tr", None)),
    ("de", 7, ("de-DE", "de", None)), ("fr", 6, ("fr-FR", "fr", None)),
    ("es", 6, ("es-ES", "es", None)), ("ru", 6, ("ru-RU", "ru", None)),
    ("zh", 6, ("zh-CN", "zh", None)), ("uk", 4, ("uk", "uk-UA", None)),
    ("pl", 3, ("pl", None)), ("it", 3, ("it-IT", None)), ("pt", 3, ("pt-BR", None)),
    ("ko", 3, ("ko-KR", None)), ("ar", 3, ("ar", None)), ("vi", 3, ("vi", None)),
)
CJK = frozenset({"ja", "zh"})
# Phrases that the shipped config.toml's topics match, per language.
TOPIC_PHRASES = {
    "en": ("drone exports", "military drones", "Official Security Assistance", "OSA"),
    "nb": ("droner", "dronekrig", "sikkerhetsbistand"),
    "ja": ("ドローン", "無人機", "政府安全保障能力強化支援"),
    "tr": ("İHA", "insansız hava aracı", "Bayraktar TB2"),
    "de": ("Drohnen", "Drohnenabwehr"), "fr": ("drones", "Drónes militaires"),
    "es": ("drones", "un dron"), "ru": ("беспилотники", "дроны"), "zh": ("无人机",),
    "uk": ("безпілотники", "дрони"),
}
SECTIONS = ("world", "politics", "business", "tech", "defence", "asia", "europe", "economy")
TRACKING = ("utm_source=rss&utm_medium=feed&utm_campaign={c}", "utm_source=feed&ref=rss",
            "xtor=RSS-{n}", "at_medium=rss&at_campaign={c}", "cmpid=rss_{c}", "")
AGGREGATOR_SHARE = 0.1
ATOM_SHARE = 0.25
TOPIC_SHARE = 0.08
TIMEZONES = (UTC, timezone(timedelta(hours=9)), timezone(timedelta(hours=1)),
             timezone(timedelta(hours=-5)), timezone(timedelta(hours=3)))
EPOCH = datetime(2025, 6, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Corpus:
    """What :func:`generate` wrote."""

    root: Path
    files: tuple[Path, ...]
    items: int
    size: int
    languages: Counter[str] = field(default_factory=Counter)
    on_topic: int = 0


@dataclass(frozen=True)
class Item:
    language: str
    title: str
    paragraphs: tuple[str, ...]
    guid: str | None
    link: str
    published: datetime | None
    author: str | None
    categories: tuple[str, ...]


@lru_cache(maxsize=1)
def sentences(path: Path = SENTENCES) -> dict[str, tuple[str, ...]]:
    """The real sentences of every language we generate, keyed by language."""
    wanted = {code for code, _, _ in LANGUAGES}
    found: dict[str, list[str]] = {code: [] for code in wanted}
    with path.open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
            if row["lang"] in wanted:
                found[row["lang"]].append(row["text"].strip())
    return {code: tuple(lines) for code, lines in found.items()}


def _fold(text: str) -> str:
    """A rough identity key, so that no two generated texts could fold to one."""
    return " ".join(re.sub(r"[\W_]+", " ", text.casefold()).split())


class _Writer:
    """Draws items for one corpus, keeping titles unique per outlet, bodies per corpus."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.text = sentences()
        self.words = {code: " ".join(lines).split() for code, lines in self.text.items()}
        self.bodies: set[str] = set()
        self.serial = 0
        self.on_topic = 0

    def title(self, lang: str, taken: set[str]) -> str:
        for _ in range(100):
            title = self._window(lang)
            if _fold(title) not in taken:
                taken.add(_fold(title))
                return title
        raise RuntimeError(f"cannot draw a fresh {lang} title")

    def _window(self, lang: str) -> str:
        rng = self.rng
        if lang in CJK:
            stream = "".join(self.text[lang])
            size = rng.randint(20, 60)
            start = rng.randrange(len(stream) - size)
            return stream[start:start + size].strip()
        words, target = self.words[lang], rng.randint(40, 120)
        start, picked = rng.randrange(len(words) - 40), list[str]()
        while len(" ".join(picked)) < target - 10:
            picked.append(words[start + len(picked)])
        title = " ".join(picked).strip(" ,;:-")[:120]
        return title[:1].upper() + title[1:]

    def paragraphs(self, lang: str) -> tuple[str, ...]:
        for _ in range(100):
            chosen = self._sentences(lang, self.rng.randint(200, 800))
            if _fold(" ".join(chosen)) not in self.bodies:
                self.bodies.add(_fold(" ".join(chosen)))
                per = max(1, len(chosen) // self.rng.randint(1, 3))
                glue = "" if lang in CJK else " "
                return tuple(glue.join(chosen[i:i + per]) for i in range(0, len(chosen), per))
        raise RuntimeError(f"cannot draw a fresh {lang} description")

    def _sentences(self, lang: str, target: int) -> list[str]:
        chosen: list[str] = []
        while sum(len(s) + 1 for s in chosen) < target:
            chosen.append(self.rng.choice(self.text[lang]))
        while len(chosen) > 1 and sum(len(s) + 1 for s in chosen) > 800:
            chosen.pop()
        return chosen

    def item(self, lang: str, site: str, taken: set[str]) -> Item:
        rng = self.rng
        self.serial += 1
        title, paragraphs = self.title(lang, taken), self.paragraphs(lang)
        if lang in TOPIC_PHRASES and rng.random() < TOPIC_SHARE:
            self.on_topic += 1
            title, paragraphs = self._on_topic(lang, title, paragraphs)
            taken.add(_fold(title))
        when = EPOCH - timedelta(seconds=rng.randrange(30 * 86400))
        link = self._link(site, when, title)
        return Item(
            language=lang, title=title, paragraphs=paragraphs,
            guid=rng.choice((f"{site}-{self.serial}", f"{site}-{self.serial}", link, None)),
            link=link, published=None if rng.random() < 0.04 else when,
            author=rng.choice((None, None, "Staff", "Reuters", f"Reporter {rng.randint(1, 40)}")),
            categories=tuple(rng.sample(SECTIONS, rng.randint(0, 3))))

    def _on_topic(self, lang: str, title: str,
                  paragraphs: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
        phrase = self.rng.choice(TOPIC_PHRASES[lang])
        if self.rng.random() < 0.5:
            return f"{title[:100]}: {phrase}", paragraphs
        return title, (f"{phrase}. {paragraphs[0]}", *paragraphs[1:])

    def _link(self, site: str, when: datetime, title: str) -> str:
        slug = "-".join(re.findall(r"[a-z0-9]+", title.lower())[:6]) or "article"
        query = self.rng.choice(TRACKING).format(c=self.rng.choice(SECTIONS), n=self.serial)
        path = f"/{self.rng.choice(SECTIONS)}/{when:%Y/%m/%d}/{slug}-{self.serial}.html"
        return f"https://www.{site}{path}" + (f"?{query}" if query else "")


def _description(item: Item, rng: random.Random) -> str:
    if rng.random() < 0.35:
        return "\n".join(item.paragraphs)
    parts = [f"<p>{html.escape(p, quote=False)}</p>" for p in item.paragraphs]
    if rng.random() < 0.4:
        parts.insert(0, f'<img src="{item.link.split("?")[0]}.jpg" alt="" width="640"/>')
    if rng.random() < 0.5:
        parts.append(f'<p><a href="{html.escape(item.link)}">Read more &raquo;</a></p>')
    return "".join(parts)


def _rss_item(item: Item, rng: random.Random) -> str:
    body = _description(item, rng)
    description = (f"<![CDATA[{body}]]>" if "<" in body and rng.random() < 0.5
                   else html.escape(body, quote=False))
    lines = [f"<title>{html.escape(item.title, quote=False)}</title>",
             f"<link>{html.escape(item.link)}</link>", f"<description>{description}</description>"]
    if item.guid is not None:
        permalink = "true" if item.guid == item.link else "false"
        lines.append(f'<guid isPermaLink="{permalink}">{html.escape(item.guid)}</guid>')
    if item.published is not None:
        lines.append(f"<pubDate>{format_datetime(item.published.astimezone(rng.choice(TIMEZONES)))}"
                     "</pubDate>")
    if item.author:
        lines.append(f"<dc:creator>{html.escape(item.author)}</dc:creator>")
    lines += [f"<category>{c}</category>" for c in item.categories]
    return "<item>" + "\n".join(lines) + "</item>"


def _atom_entry(item: Item, rng: random.Random) -> str:
    when = (item.published or EPOCH).astimezone(rng.choice(TIMEZONES)).isoformat()
    lines = [f'<title type="text">{html.escape(item.title, quote=False)}</title>',
             f'<link rel="alternate" type="text/html" href="{html.escape(item.link)}"/>',
             f"<id>{html.escape(item.guid or item.link)}</id>", f"<updated>{when}</updated>",
             f'<summary type="html">{html.escape(_description(item, rng))}</summary>']
    if item.published is not None:
        lines.append(f"<published>{when}</published>")
    if item.author:
        lines.append(f"<author><name>{html.escape(item.author)}</name></author>")
    lines += [f'<category term="{c}"/>' for c in item.categories]
    return "<entry>" + "\n".join(lines) + "</entry>"


def _rss(title: str, site: str, declared: str | None, entries: list[str]) -> str:
    language = f"<language>{declared}</language>" if declared else ""
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<rss version="2.0" xmlns:dc="http://purl.org/dc/elements/1.1/">\n<channel>\n'
            f"<title>{html.escape(title)}</title>\n<link>https://www.{site}/</link>\n"
            f"<description>Latest news from {html.escape(title)}</description>\n{language}\n"
            "<ttl>30</ttl>\n" + "\n".join(entries) + "\n</channel>\n</rss>\n")


def _atom(title: str, site: str, declared: str | None, entries: list[str]) -> str:
    language = f' xml:lang="{declared}"' if declared else ""
    return ('<?xml version="1.0" encoding="utf-8"?>\n'
            f'<feed xmlns="http://www.w3.org/2005/Atom"{language}>\n'
            f"<title>{html.escape(title)}</title>\n"
            f'<link rel="alternate" href="https://www.{site}/"/>\n'
            f"<id>https://www.{site}/</id>\n<updated>{EPOCH.isoformat()}</updated>\n"
            + "\n".join(entries) + "\n</feed>\n")


def _feed_languages(rng: random.Random) -> tuple[str | None, str | None]:
    """(language of every item or None for a mixed aggregator, declared code)."""
    if rng.random() < AGGREGATOR_SHARE:
        return None, None
    codes = [code for code, _, _ in LANGUAGES]
    lang = rng.choices(codes, weights=[w for _, w, _ in LANGUAGES])[0]
    declared = rng.choice(next(d for code, _, d in LANGUAGES if code == lang))
    return lang, declared


def generate(root: Path, files: int = 200, items_per_file: int = 100, seed: int = 1) -> Corpus:
    """Write ``files`` feed files of ``items_per_file`` items each under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    writer, codes = _Writer(seed), [code for code, _, _ in LANGUAGES]
    paths, languages, size = [], Counter[str](), 0
    for number in range(files):
        rng = writer.rng
        lang, declared = _feed_languages(rng)
        site, title = f"outlet{number:04d}.example", f"Outlet {number:04d} News"
        taken = set[str]()
        items = [writer.item(lang or rng.choice(codes), site, taken) for _ in range(items_per_file)]
        languages.update(i.language for i in items)
        atom = rng.random() < ATOM_SHARE
        entries = [(_atom_entry if atom else _rss_item)(i, rng) for i in items]
        document = (_atom if atom else _rss)(title, site, declared, entries).encode("utf-8")
        path = root / f"feed{number:04d}.{'atom' if atom else 'xml'}"
        path.write_bytes(document)
        paths.append(path)
        size += len(document)
    return Corpus(root, tuple(paths), files * items_per_file, size, languages, writer.on_topic)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--items-per-file", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    corpus = generate(args.out, args.files, args.items_per_file, args.seed)
    print(f"{len(corpus.files)} files, {corpus.items} items ({corpus.on_topic} on topic), "
          f"{corpus.size / 2**20:.1f} MiB, languages: {dict(corpus.languages.most_common())}")


if __name__ == "__main__":
    main()
