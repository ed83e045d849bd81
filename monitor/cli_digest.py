"""`monitor digest`: preview, save or send the digest of one day."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from monitor import cli as cli_module
from monitor import mailer
from monitor.config import redact_url
from monitor.digest import latest_due_day
from monitor.digest_job import build, deliver
from monitor.errors import ConfigError, MonitorError

if TYPE_CHECKING:
    from monitor.cli import State


class SmtpUrl(click.ParamType):
    """``smtp://[user@]host:port?tls=starttls|implicit|none`` (the password stays in
    MONITOR_SMTP_PASSWORD)."""

    name = "URL"

    def convert(self, value: Any, param: Any, ctx: Any) -> mailer.SmtpTarget:
        if isinstance(value, mailer.SmtpTarget):
            return value
        try:
            return mailer.parse_smtp_url(str(value))
        except ValueError as exc:  # the URL as given, less any password it wrongly carries
            self.fail(f"{redact_url(str(value))!r} {exc}", param, ctx)


class Address(click.ParamType):
    name = "ADDRESS"

    def convert(self, value: Any, param: Any, ctx: Any) -> str:
        try:
            return mailer.check_address(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@click.command("digest")
@click.option("--date", "day", type=click.DateTime(["%Y-%m-%d"]),
              help="The digest of day D (its window ends at D's send time). "
                   "Default: the newest day whose send time has passed.")
@click.option("--since", type=cli_module.When(), help="Start the window here instead.")
@click.option("--until", type=cli_module.When(end=True), help="End the window here instead.")
@click.option("--dry-run", is_flag=True, help="Print the text version; write nothing.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the HTML version to FILE.html.")
@click.option("--send", is_flag=True, help="Send it to every recipient not yet served.")
@click.option("--smtp-url", type=SmtpUrl(),
              help="smtp://[user@]host:port?tls=starttls|implicit|none (overrides config).")
@click.option("--to", "recipients", type=Address(), multiple=True,
              help="Recipient (repeatable; overrides digest.recipients).")
@click.pass_obj
def digest(state: State, day: datetime | None, since: datetime | None, until: datetime | None,
           dry_run: bool, out: Path | None, send: bool, smtp_url: mailer.SmtpTarget | None,
           recipients: tuple[str, ...]) -> None:
    """Build the digest of one day: print it, save its HTML, or send it (once per
    day and recipient)."""
    if dry_run and send:
        raise click.UsageError("--dry-run and --send exclude each other")
    settings = state.settings
    d = settings.digest
    when = _day(day, until, d.time, d.timezone)
    built = build(settings, state.sessions(), when, since=since, until=until)
    if out is not None:
        _write(out, built)
    if not send:
        from monitor.digest import render_text

        click.echo(render_text(built), nl=False)
        return
    to = recipients or d.recipients
    if not to:
        raise ConfigError(["digest.recipients: empty; set it or pass --to ADDRESS"],
                          source=settings.source)
    for address in to:
        _check(address)
    target = replace(smtp_url, password=d.smtp_password) if smtp_url else mailer.target_of(d)
    report = deliver(settings, state.sessions(), built, to, target)
    for line in report.lines():
        click.echo(line)
    if (error := report.error()) is not None:
        raise error


def _day(day: datetime | None, until: datetime | None, hhmm: str, timezone: str) -> date:
    """--date, else the local date of --until, else the newest day whose time has come."""
    if day is not None:
        return day.date()
    if until is not None:
        from zoneinfo import ZoneInfo
        return until.astimezone(ZoneInfo(timezone)).date()
    return latest_due_day(datetime.now(UTC), hhmm, timezone)


def _check(address: str) -> None:
    try:
        mailer.check_address(address)
    except ValueError as exc:
        raise ConfigError([f"digest.recipients: {exc}"]) from None


def _write(path: Path, built: Any) -> None:
    from monitor.digest import render_html

    try:
        path.write_text(render_html(built), encoding="utf-8")
    except OSError as exc:
        raise MonitorError(f"{path}: cannot write ({exc.strerror or exc})") from None
    click.echo(f"wrote {path}", err=True)
