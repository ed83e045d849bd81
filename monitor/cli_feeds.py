"""`monitor feeds`: list, add, remove, import and check the polled feeds.

The list of polled feeds lives in the database. Feeds in config.toml join it on every
`monitor run` (their settings follow the file); feeds added here exist only in the
database. `feeds check` never opens the database at all.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from sqlalchemy.exc import IntegrityError

from monitor import cli as cli_module
from monitor import db, store
from monitor.config import Feed, Settings
from monitor.daemon import limits_of
from monitor.errors import MonitorError, ParseError
from monitor.feeds import parse_opml, plan_import, status_word, url_problem
from monitor.fetch import fetch_once
from monitor.parse import limits_for, parse_feed
from monitor.pipeline import Pipeline, SourceContext, place, prepare
from monitor.types import FetchResult, ParsedFeed, Placement, Prepared

if TYPE_CHECKING:
    from monitor.cli import State

RECENT = timedelta(days=7)
PROGRESS_EVERY = 500
_LANGUAGE = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*")


@click.group("feeds")
def feeds() -> None:
    """Manage the polled feeds (config.toml feeds join them on `monitor run`)."""


# --- list ----------------------------------------------------------------------------


@feeds.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def list_cmd(state: State, as_json: bool) -> None:
    """Every feed: status, last success, last error, error count, next check, items in
    the last 7 days."""
    with state.sessions()() as session:
        rows = store.feed_overview(session, _now() - RECENT)
    data = [_overview(row) for row in rows]
    if as_json:
        cli_module.emit_json(data)
    else:
        _print_table(data)
    pending = {f.url for f in state.settings.feeds} - {row.key for row in rows}
    if pending:
        click.echo(f"note: {len(pending)} feed(s) in {state.settings.source} are not in the "
                   "database yet; `monitor run` adds them", err=True)


def _overview(row: store.FeedOverview) -> dict[str, Any]:
    return {"id": row.id, "url": row.url, "outlet": row.outlet,
            "status": status_word(row.status, row.error_count),
            "last_success_at": _iso(row.last_success_at), "last_error": row.last_error,
            "error_count": row.error_count, "next_check_at": _iso(row.next_check_at),
            "items_7d": row.recent_items}


def _print_table(data: Sequence[dict[str, Any]]) -> None:
    if not data:
        click.echo("no feeds yet: `monitor feeds add URL`, `monitor feeds import FILE.opml`, "
                   "or list them in config.toml and start `monitor run`")
        return
    click.echo(f"{'ID':>5} {'STATUS':<9} {'ERR':>3} {'7D':>5} {'LAST SUCCESS':<16} "
               f"{'NEXT CHECK':<16} OUTLET / URL")
    for feed in data:
        click.echo(f"{feed['id']:>5} {feed['status']:<9} {feed['error_count']:>3} "
                   f"{feed['items_7d']:>5} {_short(feed['last_success_at']):<16} "
                   f"{_short(feed['next_check_at']):<16} {feed['outlet'] or '-'}  {feed['url']}")
        if feed["last_error"] and feed["error_count"]:
            click.echo(f"{'':>5} last error: {feed['last_error']}")


# --- add and remove ------------------------------------------------------------------


def _feed_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--outlet, --language and --topic, shared by `add` and `check`."""
    options = [
        click.option("--outlet", help="Outlet name (default: the feed's own title)."),
        click.option("--language", callback=_language,
                     help="The feed's language (ISO 639-1), ahead of what it declares."),
        click.option("--topic", "topics", multiple=True, callback=_topics,
                     help="Match only this configured topic (repeatable; default: all)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _language(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not _LANGUAGE.fullmatch(value):
        raise click.BadParameter(f"{value!r} is not a language code such as en, ja or nb")
    return value.lower() if value else None


def _topics(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
            ) -> tuple[str, ...]:
    if not value:
        return ()
    state = ctx.find_object(cli_module.State)
    known = [t.name for t in state.settings.topics] if state else []
    unknown = [name for name in value if name not in known]
    if unknown:
        raise click.BadParameter(f"unknown topic {', '.join(map(repr, unknown))}; "
                                 f"configured: {', '.join(known) or '(none)'}")
    return tuple(dict.fromkeys(value))


def _url(value: str) -> str:
    url = value.strip()
    if (why := url_problem(url)) is not None:
        raise click.BadParameter(why, param_hint="'URL'")
    return url


@feeds.command("add")
@click.argument("url")
@_feed_options
@click.option("--interval", type=click.IntRange(min=1), metavar="MINUTES",
              help="A fixed polling interval (default: adaptive).")
@click.pass_obj
def add_cmd(state: State, url: str, outlet: str | None, language: str | None,
            topics: tuple[str, ...], interval: int | None) -> None:
    """Add a feed (database only); it is due at once."""
    url = _url(url)
    settings = state.settings
    spec = Feed(url=url, outlet=outlet, language=language, topics=topics,
                interval_minutes=interval)
    try:
        with db.transaction(state.sessions()) as session:
            if (existing := store.lookup_feed(session, url)) is not None:
                raise MonitorError(f"feed {existing.id} already has this URL: {url}")
            store.add_feeds(session, [spec], _now(), settings.fetch.default_interval_minutes)
            added = store.lookup_feed(session, url)
    except IntegrityError as exc:  # another writer added it in between
        raise MonitorError(f"a feed already has this URL: {url}") from exc
    assert added is not None  # noqa: S101 - inserted in the same transaction
    click.echo(f"added feed {added.id}: {url} (due now; `monitor run` polls it)")
    if url in {f.url for f in settings.feeds}:
        click.echo(f"note: {url} is also in {settings.source}; its settings there win on "
                   "the next `monitor run`", err=True)


@feeds.command("remove")
@click.argument("feed", metavar="URL_OR_ID")
@click.pass_obj
def remove_cmd(state: State, feed: str) -> None:
    """Delete a feed by URL or id; its items stay, no longer linked to it."""
    key: int | str = int(feed) if feed.strip().isdigit() else feed.strip()
    with db.transaction(state.sessions()) as session:
        found = store.lookup_feed(session, key)
        if found is None:
            what = "id" if isinstance(key, int) else "URL"
            raise MonitorError(f"no feed with {what} {feed}; see `monitor feeds list`")
        kept = store.count_feed_items(session, found.id)
        store.delete_feed(session, found.id)
    click.echo(f"removed feed {found.id}: {found.url} ({kept} items kept)")
    if found.key in {f.url for f in state.settings.feeds}:
        click.echo(f"warning: {found.url} is still listed in {state.settings.source}: the "
                   "next `monitor run` adds it back unless you remove it there", err=True)


# --- import --------------------------------------------------------------------------


@feeds.command("import")
@click.argument("path", metavar="FILE.opml",
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_obj
def import_cmd(state: State, path: Path) -> None:
    """Add every feed of an OPML file, skipping those already present."""
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise MonitorError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    entries = parse_opml(content, str(path))
    with db.transaction(state.sessions()) as session:
        plan = plan_import(entries, store.feed_urls(session))
        _insert_with_progress(session, plan.new, state.settings)
    for entry, why in plan.invalid:
        click.echo(f"invalid: {entry.title or '(untitled)'}: {why}")
    click.echo(f"{path}: {len(plan.new)} added, {len(plan.present)} skipped (already "
               f"present), {len(plan.invalid)} invalid")
    categories = Counter(e.category for e in plan.new if e.category)
    if categories:
        shown = ", ".join(name for name, _ in categories.most_common(5))
        click.echo(f"note: OPML categories are not stored ({sum(categories.values())} feeds "
                   f"had one: {shown}); use `--topic` with `feeds add` to narrow topics")


def _insert_with_progress(session: Any, new: Sequence[Any], settings: Settings) -> None:
    now, interval = _now(), settings.fetch.default_interval_minutes
    specs = [Feed(url=e.url, outlet=e.outlet) for e in new]
    for start in range(0, len(specs), PROGRESS_EVERY):
        store.add_feeds(session, specs[start:start + PROGRESS_EVERY], now, interval)
        if len(specs) > PROGRESS_EVERY:
            done = min(len(specs), start + PROGRESS_EVERY)
            click.echo(f"  {done}/{len(specs)} feeds added", err=True)


# --- check ---------------------------------------------------------------------------


@feeds.command("check")
@click.argument("url")
@_feed_options
@click.option("--json", "as_json", is_flag=True, help="Print the items as JSON.")
@click.pass_obj
def check_cmd(state: State, url: str, outlet: str | None, language: str | None,
              topics: tuple[str, ...], as_json: bool) -> None:
    """Fetch and parse URL once and show what would be stored; store nothing."""
    url = _url(url)
    settings = state.settings
    configured = next((f for f in settings.feeds if f.url == url), Feed(url=url))
    result = fetch_once(url, limits=limits_of(settings), user_agent=configured.user_agent)
    cap = configured.max_items_per_poll or settings.fetch.max_items_per_poll
    try:
        parsed = parse_feed(result.content or b"", result.headers, result.final_url or url,
                            limits=limits_for(settings.limits, cap))
    except ParseError as exc:
        raise ParseError(f"{url}: {exc}") from exc
    ctx = SourceContext(source_key=url, outlet=outlet or configured.outlet or parsed.title,
                        language=language or configured.language or parsed.language,
                        topics=topics or configured.topics)
    now = _now()
    pipeline = Pipeline.from_settings(settings)
    batch = [prepare(a, ctx, pipeline, now) for a in parsed.articles[:cap]]
    placements = place(batch, {})
    if as_json:
        cli_module.emit_json([_item(p, pl) for p, pl in zip(batch, placements, strict=True)])
        return
    for p, pl in zip(batch, placements, strict=True):
        click.echo(_item_line(p, pl))
    for line in _check_summary(url, result, parsed, batch, placements):
        click.echo(line)


def _item(p: Prepared, placement: Placement) -> dict[str, Any]:
    return {"title": p.article.title, "url": p.canonical_url, "guid": p.guid,
            "published": _iso(p.article.published), "outlet": p.outlet,
            "language": p.detection.language,
            "language_confidence": round(p.detection.confidence, 4),
            "language_method": p.detection.method, "topics": [m.topic for m in p.topics],
            "translation_status": p.translation_status,
            "translation_reason": p.translation_reason,
            "duplicate_of": placement.duplicate_of}


def _item_line(p: Prepared, placement: Placement) -> str:
    lang = f"{p.detection.language}:{p.detection.confidence:.2f}"
    status = f"dup:{placement.duplicate_of}" if placement.duplicate_of else p.translation_status
    topics = ",".join(m.topic for m in p.topics) or "-"
    return f"{lang:<9} {status:<11} {topics:<26} {p.article.title[:90]}"


def _check_summary(url: str, result: FetchResult, parsed: ParsedFeed,
                   batch: Sequence[Prepared], placements: Sequence[Placement]) -> list[str]:
    size = len(result.content or b"")
    lines = [f"{url}: HTTP {result.status}, {size / 1024:.1f} KiB in {result.elapsed:.2f} s; "
             f"feed {parsed.title or '(untitled)'!r}, language {parsed.language or '-'}"]
    if result.final_url and result.final_url != url:
        kind = "permanently" if result.permanent_redirect else "temporarily"
        lines.append(f"redirected {kind} to {result.final_url}")
    if parsed.warning:
        lines.append(f"parser warning: {parsed.warning}")
    fresh = [p for p, pl in zip(batch, placements, strict=True) if not pl.duplicate_of]
    lines.append(f"{len(parsed.articles)} items; {len(fresh)} would be stored unless already "
                 "in the database (nothing was stored)")
    for label, counts in (
            ("languages", Counter(p.detection.language for p in fresh)),
            ("topics", Counter(m.topic for p in fresh for m in p.topics)),
            ("translation", Counter(p.translation_status for p in fresh))):
        shown = ", ".join(f"{key} {n}" for key, n in counts.most_common()) or "-"
        lines.append(f"  {label}: {shown}")
    return lines


# --- helpers -------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(when: datetime | None) -> str | None:
    return when.isoformat() if when else None


def _short(iso: str | None) -> str:
    return iso[:16].replace("T", " ") if iso else "-"
