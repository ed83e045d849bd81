"""`monitor stories show|split|merge` and `monitor dedup --rebuild`: see why items are one
story, undo a wrong decision, and recompute stories after a threshold change."""

from __future__ import annotations

from datetime import UTC, datetime

import click

from monitor import db, stories
from monitor.backfill import click_bars
from monitor.cli import State, When, emit_json
from monitor.embed import make_embedder
from monitor.story_sweep import rebuild

ANCHORS_SHOWN = 8


@click.command("show")
@click.argument("story_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def show(state: State, story_id: int, as_json: bool) -> None:
    """One story: each item with its link reason and score, and the anchors it shares
    with the story's other items."""
    with state.sessions()() as session:
        story = stories.detail(session, story_id)
    if as_json:
        emit_json(story)
        return
    click.echo(f"[{story['id']}] {story['headline']}")
    click.echo(f"    seen {story['first_seen'][:16]} .. {story['last_seen'][:16]}; "
               f"topics: {', '.join(story['topics']) or '-'}")
    for item in story["items"]:
        score = f"{item['link_score']:.2f}" if item["link_score"] is not None else "-"
        click.echo(f"  {item['id']:>6} {item['language']:<5} {item['outlet'][:24]:<24} "
                   f"{item['link_reason']:<12} {score:>5}  {item['title'][:70]}")
        shared = item["shared_anchors"]
        if shared:
            more = len(shared) - ANCHORS_SHOWN
            click.echo(f"{'':>16}shares: {', '.join(shared[:ANCHORS_SHOWN])}"
                       + (f" (+{more} more)" if more > 0 else ""))


@click.command("split")
@click.argument("item_id", type=int)
@click.pass_obj
def split(state: State, item_id: int) -> None:
    """Move ITEM_ID into a story of its own, and keep it apart from that story's items
    from now on (rebuilds included)."""
    with db.transaction(state.sessions()) as session:
        old, new = stories.split(session, item_id, datetime.now(UTC))
    click.echo(f"item {item_id} moved from story {old} to new story {new}; "
               f"it will not be merged with story {old}'s items again")


@click.command("merge")
@click.argument("target", type=int)
@click.argument("source", type=int)
@click.pass_obj
def merge(state: State, target: int, source: int) -> None:
    """Merge story SOURCE into story TARGET, and keep their items together from now on."""
    with db.transaction(state.sessions()) as session:
        items = stories.merge(session, target, source, datetime.now(UTC))
    click.echo(f"story {source} merged into story {target} ({len(items)} items)")


@click.command("dedup")
@click.option("--rebuild", "rebuild_", is_flag=True, required=True,
              help="Recompute the stories of stored items (e.g. after changing thresholds).")
@click.option("--since", type=When(),
              help="Only items from DATE on (published, else fetched); older stories stay.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_obj
def dedup_cmd(state: State, rebuild_: bool, since: datetime | None, as_json: bool) -> None:
    """Recompute stories (--rebuild): stored items, or those since DATE, are placed again
    in the canonical order (event time, then a digest of source and GUID), honouring
    splits and merges, so the same items always give the same stories."""
    settings = state.settings
    report = rebuild(state.sessions(), settings.dedup, make_embedder(settings.dedup.embedder),
                     since=since, bars=click_bars(not as_json))
    if as_json:
        emit_json({"items": report.items, "stories": report.stories,
                   "reasons": dict(report.reasons)})
    else:
        click.echo(report.line())
