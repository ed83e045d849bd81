"""The command line: the only place that loads settings, sets up logging and turns a
MonitorError into one line and an exit code (0 ok, 1 something failed, 2 usage)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, time
from typing import Any

import click

from monitor import config as config_mod
from monitor import db, logs, store, views
from monitor.errors import ConfigError, MonitorError


@dataclass
class State:
    config_path: str | None
    database_url: str | None
    verbose: int
    log_format: str | None
    _settings: config_mod.Settings | None = None

    @property
    def settings(self) -> config_mod.Settings:
        if self._settings is None:
            self._settings = config_mod.load(self.config_path, database_url=self.database_url)
            logs.configure(self.log_format or self._settings.log_format, self.verbose)
        return self._settings

    def engine(self):  # type: ignore[no-untyped-def]
        engine = db.make_engine(self.settings.database_url)
        db.ensure_schema(engine)
        return engine

    def sessions(self):  # type: ignore[no-untyped-def]
        return db.session_factory(self.engine())


class When(click.ParamType):
    """A date (YYYY-MM-DD) or ISO datetime, as aware UTC; an end bound takes the day's end."""

    name = "DATE"

    def __init__(self, end: bool = False) -> None:
        self.end = end

    def convert(self, value: Any, param: Any, ctx: Any) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            parsed = datetime.fromisoformat(str(value).strip())
        except ValueError:
            self.fail(f"{value!r} is not a date (YYYY-MM-DD) or ISO datetime", param, ctx)
        if len(str(value).strip()) == 10 and self.end:
            parsed = datetime.combine(parsed.date(), time.max)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, ensure_ascii=False, indent=2))


class MonitorGroup(click.Group):
    """Turns a MonitorError into one line on stderr and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            click.echo(f"monitor: config error: {exc}", err=True)
            ctx.exit(2)
        except MonitorError as exc:
            click.echo(f"monitor: {exc}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("monitor: interrupted", err=True)
            ctx.exit(130)


@click.group(cls=MonitorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Config file (default: $MONITOR_CONFIG, else ./config.toml).")
@click.option("--database-url", help="Database URL (overrides config and $MONITOR_DATABASE_URL).")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("--log-format", type=click.Choice(["console", "json"]),
              help="Log format (default from config: console).")
@click.version_option(package_name="monitor")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, database_url: str | None,
        verbose: int, log_format: str | None) -> None:
    """monitor: a multilingual news-monitoring daemon."""
    ctx.obj = State(config_path, database_url, verbose, log_format)


# --- backfill ------------------------------------------------------------------------


@cli.command()
@click.argument("sources", nargs=-1, required=True)
@click.option("--outlet", help="Outlet name for articles that do not give one.")
@click.option("--published", type=When(), help="Published date for articles without one.")
@click.option("--since", type=When(), help="Only articles published on or after DATE.")
@click.option("--until", type=When(end=True), help="Only articles published on or before DATE.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_obj
def backfill(state: State, sources: tuple[str, ...], outlet: str | None,
             published: datetime | None, since: datetime | None, until: datetime | None,
             as_json: bool) -> None:
    """Ingest feed files, article files, directories or feed URLs (SOURCE...)."""
    from monitor.backfill import Options, run_backfill

    options = Options(outlet=outlet, published=published, since=since, until=until)
    summary = run_backfill(state.settings, state.sessions(), sources, options,
                           progress=not as_json)
    if as_json:
        emit_json(summary.as_dict())
    else:
        for line in summary.lines():
            click.echo(line)
    sys.exit(130 if summary.interrupted else 1 if summary.errors else 0)


# --- reading -------------------------------------------------------------------------


@cli.group("stories", invoke_without_command=True)
@click.option("--since", type=When(), help="Stories seen on or after DATE.")
@click.option("--topic", help="Only stories with an item matching this topic.")
@click.option("--limit", type=int, default=None, help="At most N stories.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def stories_cmd(ctx: click.Context, since: datetime | None, topic: str | None,
                limit: int | None, as_json: bool) -> None:
    """Stories, newest first, with their items; or one of the commands below."""
    if ctx.invoked_subcommand is not None:
        return
    state: State = ctx.obj
    with state.sessions()() as session:
        rows = store.story_rows(session, since=since, topic=topic)[:limit]
        data = views.stories(session, rows)
    if as_json:
        emit_json(data)
        return
    for story in data:
        click.echo(f"[{story['id']}] {story['headline']}  ({story['first_seen'][:10]}; "
                   f"topics: {', '.join(story['topics']) or '-'})")
        for item in story["items"]:
            click.echo(f"    {item['id']:>6} {item['language']:<5} {item['outlet'][:24]:<24} "
                       f"{item['link_reason']:<12} {item['title'][:80]}")


@cli.command("items")
@click.option("--since", type=When(), help="Items published on or after DATE.")
@click.option("--limit", type=int, default=None, help="At most N items.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def items_cmd(state: State, since: datetime | None, limit: int | None, as_json: bool) -> None:
    """Stored items, newest first."""
    with state.sessions()() as session:
        data = views.items(session, store.item_rows(session, since=since, limit=limit))
    if as_json:
        emit_json(data)
        return
    for item in data:
        conf = f"{item['language']}:{item['language_confidence']:.2f}"
        click.echo(f"{item['id']:>6} {conf:<9} {item['translation_status']:<10} "
                   f"{item['outlet'][:24]:<24} {item['title'][:90]}")


@cli.command("lang")
@click.argument("text", required=False)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_obj
def lang_cmd(state: State, text: str | None, as_json: bool) -> None:
    """The language of TEXT, or of each line of standard input, with its confidence."""
    from monitor.language import detect_language, make_detector

    settings = state.settings
    detector = make_detector(settings.language.detector, settings.language.languages or None)
    lines: Iterable[str] = [text] if text is not None else (ln.rstrip("\n") for ln in sys.stdin)
    for line in lines:
        found = detect_language(line, (), detector)
        if as_json:
            click.echo(json.dumps({"text": line, "language": found.language,
                                   "confidence": round(found.confidence, 4)},
                                  ensure_ascii=False))
        else:
            click.echo(f"{found.language}\t{found.confidence:.3f}")


# --- config and database -------------------------------------------------------------


@cli.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("show")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def config_show(state: State, as_json: bool) -> None:
    """The effective settings (secrets masked)."""
    described = state.settings.describe()
    if as_json:
        emit_json(described)
        return
    for key, value in described.items():
        click.echo(f"{key} = {json.dumps(value, ensure_ascii=False)}")


@cli.group("db")
def db_group() -> None:
    """Database maintenance."""


@db_group.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@click.pass_obj
def db_upgrade(state: State, revision: str) -> None:
    """Apply the migrations up to REVISION."""
    engine = db.make_engine(state.settings.database_url)
    db.upgrade(engine, revision)
    click.echo(f"database at {revision}: {config_mod.redact_url(state.settings.database_url)}")


@db_group.command("status")
@click.pass_obj
def db_status(state: State) -> None:
    """Exit 0 when the database is reachable and at the newest migration (health check)."""
    engine = db.make_engine(state.settings.database_url)
    try:
        current = db.is_current(engine)
    except Exception as exc:  # noqa: BLE001 - any failure to reach the database is unhealthy
        raise MonitorError(f"database unreachable: {exc.__class__.__name__}") from exc
    url = config_mod.redact_url(state.settings.database_url)
    if not current:
        raise MonitorError(f"database {url} is not at the newest migration: run monitor db upgrade")
    click.echo(f"ok: {url}")


# --- the daemon ----------------------------------------------------------------------


@cli.command("run")
@click.option("--once", is_flag=True, help="Poll every due feed once, then exit.")
@click.option("--force", is_flag=True,
              help="Poll every feed now, due or not, muted ones too (still conditional).")
@click.option("--role", type=click.Choice(["poller", "translator", "all"]), default="all",
              show_default=True,
              help="poller: poll feeds and send the digest; translator: translation and "
                   "embedding sweeps; all: everything.")
@click.pass_obj
def run_cmd(state: State, once: bool, force: bool, role: str) -> None:
    """Poll the configured feeds for ever (the main job)."""
    from monitor.daemon import run_daemon

    if once and role == "translator":
        raise click.UsageError("--once polls feeds: use it with --role poller or all")
    sys.exit(run_daemon(state.settings, state.sessions(), once=once, force=force, role=role))


def main() -> None:
    """Console entry point."""
    cli(prog_name="monitor")


from monitor.cli_feeds import feeds  # noqa: E402

cli.add_command(feeds)

from monitor.cli_models import models, translate  # noqa: E402

cli.add_command(models)
cli.add_command(translate)

from monitor.cli_digest import digest  # noqa: E402

cli.add_command(digest)

from monitor.cli_stories import dedup_cmd, merge, show, split  # noqa: E402

stories_cmd.add_command(show)
stories_cmd.add_command(split)
stories_cmd.add_command(merge)
cli.add_command(dedup_cmd)

from monitor.cli_status import status  # noqa: E402

cli.add_command(status)
