"""`monitor status`: the workers seen recently, the work waiting, the last digest."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import click

from monitor import cli as cli_module
from monitor import store
from monitor.models import WorkerRow
from monitor.workers import LOST_AFTER_LEASES

if TYPE_CHECKING:
    from monitor.cli import State

RECENT = timedelta(minutes=10)


@dataclass(frozen=True)
class Status:
    """What `monitor status` shows, as plain values."""

    workers: list[dict[str, Any]]
    backlog: store.Backlog

    def as_dict(self) -> dict[str, Any]:
        b = self.backlog
        digest = None if b.last_digest_date is None else {
            "date": b.last_digest_date.isoformat(),
            "sent_at": b.last_digest_sent_at.isoformat() if b.last_digest_sent_at else None,
            "recipients": b.last_digest_recipients}
        return {"workers": self.workers,
                "backlog": {"due_feeds": b.due_feeds, "claimed_feeds": b.claimed_feeds,
                            "pending_translations": b.pending_translations,
                            "pending_embeddings": b.pending_embeddings},
                "last_digest": digest}


def _state(row: WorkerRow, now: datetime, lease: timedelta) -> str:
    if row.stopped_at is not None:
        return "stopped"
    return "running" if now - row.last_seen <= lease * LOST_AFTER_LEASES else "lost"


def _worker(row: WorkerRow, now: datetime, lease: timedelta) -> dict[str, Any]:
    return {"id": row.id, "role": row.role, "host": row.host, "pid": row.pid,
            "state": _state(row, now, lease), "started_at": row.started_at.isoformat(),
            "last_seen": row.last_seen.isoformat(),
            "stopped_at": row.stopped_at.isoformat() if row.stopped_at else None,
            "claims": row.claims, "stats": row.stats}


def read_status(state: State, now: datetime) -> Status:
    lease = timedelta(seconds=state.settings.workers.claim_seconds)
    with state.sessions()() as session:
        rows = store.workers_seen(session, now - max(RECENT, lease * LOST_AFTER_LEASES))
        return Status([_worker(r, now, lease) for r in rows], store.backlog(session, now))


def _ago(value: str, now: datetime) -> str:
    seconds = max(0, round((now - datetime.fromisoformat(value)).total_seconds()))
    return f"{seconds} s ago" if seconds < 120 else f"{seconds // 60} min ago"


def lines(status: Status, now: datetime) -> list[str]:
    """The human-readable status."""
    out = [f"workers seen in the last {int(RECENT.total_seconds() // 60)} min: "
           f"{len(status.workers)}"]
    out += [f"  {w['id']:<40} {w['role']:<10} {w['state']:<8} "
            f"started {w['started_at'][:19]}Z, seen {_ago(w['last_seen'], now)}, "
            f"{w['claims']} claims" for w in status.workers]
    b = status.backlog
    out.append(f"backlog: {b.due_feeds} feeds due ({b.claimed_feeds} being polled), "
               f"{b.pending_translations} translations pending, "
               f"{b.pending_embeddings} embeddings pending")
    if b.last_digest_date is None:
        out.append("last digest: none sent")
    else:
        when = b.last_digest_sent_at.strftime("%Y-%m-%d %H:%M UTC") if (
            b.last_digest_sent_at) else "?"
        out.append(f"last digest: {b.last_digest_date.isoformat()}, sent {when} to "
                   f"{b.last_digest_recipients} recipient"
                   f"{'' if b.last_digest_recipients == 1 else 's'}")
    return out


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def status(state: State, as_json: bool) -> None:
    """Workers seen recently (role, state, claims), the backlog, and the last digest."""
    now = datetime.now(UTC)
    found = read_status(state, now)
    if as_json:
        cli_module.emit_json(found.as_dict())
        return
    for line in lines(found, now):
        click.echo(line)
