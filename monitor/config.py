"""Read config.toml and the MONITOR_* environment into one frozen Settings.

The whole file is validated at once: every problem is reported with its key path,
unknown keys are errors (a typo must not pass silently). Precedence, lowest first:
the file, then ``MONITOR_DATABASE_URL``, then command-line options.
Secrets (the SMTP password, a password inside the database URL) come only from the
environment and never appear in ``describe()``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from monitor.errors import ConfigError

DEFAULT_DATABASE_URL = "sqlite:///data/monitor.db"
TLS_MODES = ("starttls", "implicit", "none")
FULL_TEXT_MODES = ("matched", "all", "never")


@dataclass(frozen=True)
class Topic:
    name: str
    keywords: tuple[str, ...]
    description: str = ""


@dataclass(frozen=True)
class Feed:
    url: str
    outlet: str | None = None
    language: str | None = None
    topics: tuple[str, ...] = ()
    interval_minutes: int | None = None
    user_agent: str | None = None
    max_items_per_poll: int | None = None  # None: fetch.max_items_per_poll


@dataclass(frozen=True)
class FetchSettings:
    user_agent: str = "monitor/0.1"
    contact_url: str = "https://github.com/monitor-news/monitor"
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    total_deadline: float = 60.0
    max_body_mib: float = 15.0
    max_redirects: int = 5
    per_host_delay: float = 1.0
    concurrency: int = 16
    min_interval_minutes: int = 5
    max_interval_minutes: int = 1440
    default_interval_minutes: int = 60
    max_items_per_poll: int = 1000


@dataclass(frozen=True)
class LimitSettings:
    """Caps on the fields of one item, polled or backfilled (SECURITY.md, "Limits"). They
    can only tighten the parse stage's built-in limits (CEILINGS), which were measured."""

    max_title_chars: int = 500
    max_summary_chars: int = 20_000
    max_text_chars: int = 200_000
    max_author_chars: int = 300


# The built-in limits of the parse stage (monitor/parse.py) and the database columns
# (items.author is 300 characters): configured values may lower them, never raise them.
MAX_ITEMS_PER_POLL = 1000
CEILINGS = {f.name: f.default for f in fields(LimitSettings)}


@dataclass(frozen=True)
class LanguageSettings:
    detector: str = "default"
    languages: tuple[str, ...] = ()


@dataclass(frozen=True)
class TranslationSettings:
    enabled: bool = True
    target: str = "en"
    packages_dir: str = ""
    full_text: str = "matched"
    beam_size: int = 2
    compute_type: str = "int8"
    batch_size: int = 32
    sweep_batch: int = 50


@dataclass(frozen=True)
class DigestSettings:
    time: str = "07:00"
    timezone: str = "UTC"
    recipients: tuple[str, ...] = ()
    sender: str = "monitor@localhost"
    smtp_host: str = "localhost"
    smtp_port: int = 25
    smtp_tls: str = "starttls"
    smtp_user: str = ""
    send_empty: bool = False
    smtp_password: str = field(default="", repr=False)


@dataclass(frozen=True)
class DedupSettings:
    """Thresholds of the near-duplicate (stage 2) and cross-lingual (stage 3) stages."""

    near_threshold: float = 0.80
    crosslingual_threshold: float = 0.25
    min_evidence: float = 1.0
    min_cosine: float = 0.80
    min_cosine_same_language: float = 0.88
    window_days: float = 3.0
    embedder: str = "e5"
    sweep_batch: int = 32
    sweep_interval_seconds: int = 60
    memory_index: bool = True


@dataclass(frozen=True)
class WorkerSettings:
    """How a worker shares the database with others (README.md, "Several workers")."""

    claim_seconds: float = 120.0
    tick_seconds: float = 30.0


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    log_format: str = "console"
    fetch: FetchSettings = FetchSettings()
    limits: LimitSettings = LimitSettings()
    language: LanguageSettings = LanguageSettings()
    translation: TranslationSettings = TranslationSettings()
    digest: DigestSettings = DigestSettings()
    dedup: DedupSettings = DedupSettings()
    workers: WorkerSettings = WorkerSettings()
    topics: tuple[Topic, ...] = ()
    feeds: tuple[Feed, ...] = ()
    source: str = "defaults"

    def describe(self) -> dict[str, Any]:
        """The settings as a dict fit to print: secrets masked."""
        return {
            "source": self.source,
            "database_url": redact_url(self.database_url),
            "log_format": self.log_format,
            "fetch": _plain(self.fetch),
            "limits": _plain(self.limits),
            "language": _plain(self.language),
            "translation": _plain(self.translation),
            "digest": {k: v for k, v in _plain(self.digest).items() if k != "smtp_password"}
            | {"smtp_password": "***" if self.digest.smtp_password else "(not set)"},
            "dedup": _plain(self.dedup),
            "workers": _plain(self.workers),
            "topics": [_plain(t) for t in self.topics],
            "feeds": [_plain(f) for f in self.feeds],
        }


def _plain(obj: Any) -> dict[str, Any]:
    return {f.name: list(v) if isinstance(v := getattr(obj, f.name), tuple) else v
            for f in fields(obj)}


def redact_url(url: str) -> str:
    """Hide the secrets of a URL: the password of postgresql://user:secret@host/db, and
    query parameters such as ``?password=secret`` or ``?sslpassword=`` (libpq reads both)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return "<unparseable url>"
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:***@{hostport}"
    query = "&".join(_redact_param(pair) for pair in parts.query.split("&")) if parts.query \
        else ""
    if (netloc, query) == (parts.netloc, parts.query):
        return url  # unchanged (urlunsplit would turn sqlite:///x into sqlite:/x)
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _redact_param(pair: str) -> str:
    name, sep, _value = pair.partition("=")
    secret = any(word in unquote(name).lower() for word in ("password", "secret", "token"))
    return f"{name}{sep}***" if secret and sep else pair


# --- validation --------------------------------------------------------------------

Check = Callable[[Any], str | None]


def _is(kind: type | tuple[type, ...], what: str) -> Check:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) and kind in (int, float, (int, float)):
            return f"must be {what}, not a boolean"
        return None if isinstance(value, kind) else f"must be {what}, got {type(value).__name__}"
    return check


def _positive(value: Any) -> str | None:
    return _is((int, float), "a number")(value) or (None if value > 0 else "must be > 0")


def _choice(*allowed: str) -> Check:
    def check(value: Any) -> str | None:
        return None if value in allowed else f"must be one of {', '.join(allowed)}; got {value!r}"
    return check


def _str_list(value: Any) -> str | None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return "must be a list of strings"
    return None


def _http_url(value: Any) -> str | None:
    if not isinstance(value, str) or urlsplit(value).scheme not in ("http", "https"):
        return f"must be an http(s) URL; got {value!r}"
    return None if urlsplit(value).netloc else f"has no host: {value!r}"


def _hhmm(value: Any) -> str | None:
    parts = value.split(":") if isinstance(value, str) else []
    ok = len(parts) == 2 and all(p.isdigit() for p in parts)
    return None if ok and int(parts[0]) < 24 and int(parts[1]) < 60 else "must be HH:MM"


def _timezone(value: Any) -> str | None:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        return f"unknown timezone {value!r}"
    return None


def _fraction(value: Any) -> str | None:
    why = _is((int, float), "a number")(value)
    return why or (None if 0 < value <= 1 else f"must be in (0, 1]; got {value!r}")


def _count(value: Any) -> str | None:
    return _is(int, "an integer")(value) or (None if value > 0 else "must be > 0")


def _at_most(ceiling: int, why: str) -> Check:
    def check(value: Any) -> str | None:
        problem = _count(value)
        if problem is None and value > ceiling:
            problem = f"must be at most {ceiling:,} ({why}); got {value:,}"
        return problem
    return check


def _db_url(value: Any) -> str | None:
    """Never quotes the URL: it may hold a password."""
    if not isinstance(value, str) or "://" not in value:
        return "must be a database URL such as sqlite:///data/monitor.db"
    scheme = value.split("://", 1)[0].split("+", 1)[0]
    if scheme not in ("sqlite", "postgresql", "postgres"):
        return f"unsupported database {scheme!r} (use sqlite or postgresql)"
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(value)
    except (ArgumentError, ValueError):
        return ("is not a valid database URL (check its host and port, and %-escape "
                "any @ : / in the password)")
    return None


_NUM, _INT = _positive, _is(int, "an integer")
_ITEMS = _at_most(MAX_ITEMS_PER_POLL, "the parse stage reads at most that many entries")
_STR, _BOOL = _is(str, "a string"), _is(bool, "true or false")

SCHEMA: dict[str, dict[str, Check]] = {
    "monitor": {"database_url": _db_url, "log_format": _choice("console", "json")},
    "fetch": {
        "user_agent": _STR, "contact_url": _STR, "connect_timeout": _NUM,
        "read_timeout": _NUM, "total_deadline": _NUM, "max_body_mib": _NUM,
        "max_redirects": _INT, "per_host_delay": _is((int, float), "a number"),
        "concurrency": _INT, "min_interval_minutes": _INT, "max_interval_minutes": _INT,
        "default_interval_minutes": _INT, "max_items_per_poll": _ITEMS,
    },
    "limits": {key: _at_most(ceiling, "the built-in limit")
               for key, ceiling in CEILINGS.items()},
    "language": {"detector": _choice("default", "py3langid", "langdetect", "lingua"),
                 "languages": _str_list},
    "translation": {
        "enabled": _BOOL, "target": _STR, "packages_dir": _STR,
        "full_text": _choice(*FULL_TEXT_MODES), "beam_size": _INT,
        "compute_type": _choice("int8", "int8_float32", "float32", "int16", "auto"),
        "batch_size": _INT, "sweep_batch": _INT,
    },
    "digest": {
        "time": _hhmm, "timezone": _timezone, "recipients": _str_list, "sender": _STR,
        "smtp_host": _STR, "smtp_port": _INT, "smtp_tls": _choice(*TLS_MODES),
        "smtp_user": _STR, "send_empty": _BOOL,
    },
    "dedup": {
        "near_threshold": _fraction, "crosslingual_threshold": _fraction,
        "min_evidence": _is((int, float), "a number"), "min_cosine": _fraction,
        "min_cosine_same_language": _fraction, "window_days": _NUM,
        "embedder": _choice("e5", "none"),
        "sweep_batch": _count, "sweep_interval_seconds": _count, "memory_index": _BOOL,
    },
    "workers": {"claim_seconds": _NUM, "tick_seconds": _NUM},
}
TOPIC_KEYS: dict[str, Check] = {"name": _STR, "keywords": _str_list, "description": _STR}
FEED_KEYS: dict[str, Check] = {
    "url": _http_url, "outlet": _STR, "language": _STR, "topics": _str_list,
    "interval_minutes": _INT, "user_agent": _STR, "max_items_per_poll": _ITEMS,
}
REQUIRED = {"topics": ("name", "keywords"), "feeds": ("url",)}


def _check_table(table: Any, checks: Mapping[str, Check], path: str, problems: list[str]) -> None:
    if not isinstance(table, dict):
        problems.append(f"{path}: must be a table")
        return
    for key, value in table.items():
        check = checks.get(key)
        if check is None:
            problems.append(f"{path}.{key}: unknown key")
        elif (why := check(value)) is not None:
            problems.append(f"{path}.{key}: {why}")


def _check_array(raw: Any, name: str, checks: Mapping[str, Check], problems: list[str]) -> None:
    if not isinstance(raw, list):
        problems.append(f"{name}: must be an array of tables ([[{name}]])")
        return
    for index, entry in enumerate(raw):
        path = f"{name}[{index}]"
        _check_table(entry, checks, path, problems)
        for key in REQUIRED[name]:
            if isinstance(entry, dict) and key not in entry:
                problems.append(f"{path}.{key}: missing")


def validate(raw: Mapping[str, Any]) -> list[str]:
    """Every problem in a parsed config file, each with its key path."""
    problems: list[str] = []
    for key, value in raw.items():
        if key in SCHEMA:
            _check_table(value, SCHEMA[key], key, problems)
        elif key == "topics":
            _check_array(value, "topics", TOPIC_KEYS, problems)
        elif key == "feeds":
            _check_array(value, "feeds", FEED_KEYS, problems)
        else:
            problems.append(f"{key}: unknown section")
    if not problems:
        problems.extend(_cross_checks(raw))
    return problems


def _cross_checks(raw: Mapping[str, Any]) -> list[str]:
    problems = []
    names = [t["name"] for t in raw.get("topics", [])]
    problems += [f"topics: duplicate topic name {n!r}" for n in set(names) if names.count(n) > 1]
    urls = [f["url"] for f in raw.get("feeds", [])]
    problems += [f"feeds: duplicate feed url {u!r}" for u in set(urls) if urls.count(u) > 1]
    for index, feed in enumerate(raw.get("feeds", [])):
        for topic in feed.get("topics", []):
            if topic not in names:
                problems.append(f"feeds[{index}].topics: unknown topic {topic!r}")
    fetch = raw.get("fetch", {})
    low = fetch.get("min_interval_minutes", FetchSettings.min_interval_minutes)
    high = fetch.get("max_interval_minutes", FetchSettings.max_interval_minutes)
    if low > high:
        problems.append("fetch.min_interval_minutes: must not exceed fetch.max_interval_minutes")
    return problems


# --- building ----------------------------------------------------------------------


def _section(cls: type, raw: Mapping[str, Any]) -> Any:
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


def build(raw: Mapping[str, Any], *, source: str, environ: Mapping[str, str]) -> Settings:
    """Settings from a validated config dict and the environment."""
    monitor = raw.get("monitor", {})
    digest = dict(raw.get("digest", {}), smtp_password=environ.get("MONITOR_SMTP_PASSWORD", ""))
    return Settings(
        database_url=monitor.get("database_url", DEFAULT_DATABASE_URL),
        log_format=monitor.get("log_format", "console"),
        fetch=_section(FetchSettings, raw.get("fetch", {})),
        limits=_section(LimitSettings, raw.get("limits", {})),
        language=_section(LanguageSettings, raw.get("language", {})),
        translation=_section(TranslationSettings, raw.get("translation", {})),
        digest=_section(DigestSettings, digest),
        dedup=_section(DedupSettings, raw.get("dedup", {})),
        workers=_section(WorkerSettings, raw.get("workers", {})),
        topics=tuple(_section(Topic, t) for t in raw.get("topics", [])),
        feeds=tuple(_section(Feed, f) for f in raw.get("feeds", [])),
        source=source,
    )


def load(path: str | Path | None = None, *, database_url: str | None = None,
         environ: Mapping[str, str] | None = None) -> Settings:
    """Load settings: ``path`` (or MONITOR_CONFIG, or ./config.toml if present), then the
    environment, then ``database_url`` from the command line."""
    env = os.environ if environ is None else environ
    chosen = path or env.get("MONITOR_CONFIG")
    if chosen is None and Path("config.toml").is_file():
        chosen = "config.toml"
    raw = _read(Path(chosen)) if chosen else {}
    source = str(chosen) if chosen else "defaults"
    problems = validate(raw)
    if problems:
        raise ConfigError(problems, source=source)
    url = database_url or env.get("MONITOR_DATABASE_URL")
    if url and (why := _db_url(url)):
        raise ConfigError([f"database_url: {why}"], source="--database-url/MONITOR_DATABASE_URL")
    settings = build(raw, source=source, environ=env)
    return settings if not url else _replace_db(settings, url)


def _replace_db(settings: Settings, url: str) -> Settings:
    from dataclasses import replace
    return replace(settings, database_url=url)


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(["file not found"], source=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"cannot read: {exc}"], source=str(path)) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"not valid TOML: {exc}"], source=str(path)) from exc
