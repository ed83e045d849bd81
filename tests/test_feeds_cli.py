"""`monitor feeds`: list, add, remove, import and check, against a real loopback server
and both databases."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, create_engine, event, inspect, text

from monitor.cli import cli
from monitor.errors import ParseError
from monitor.feeds import OpmlFeed, parse_opml, plan_import
from tests.conftest import CONFIG, Invoke
from tests.httpserver import LoopbackServer, Reply

LIST_KEYS = {"id", "url", "outlet", "status", "last_success_at", "last_error", "error_count",
             "next_check_at", "items_7d"}
RSS = {"Content-Type": "application/rss+xml; charset=utf-8"}
NOW = datetime.now(UTC)


def _rss(*items: tuple[str, str, datetime | None]) -> bytes:
    """An RSS 2.0 document with (guid, title, published) items and no declared language."""
    entries = "".join(
        f"<item><guid>{guid}</guid><title>{title}</title><link>http://example.org/{guid}</link>"
        + (f"<pubDate>{format_datetime(when)}</pubDate>" if when else "") + "</item>"
        for guid, title, when in items)
    return (f'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>'
            f"<title>Loopback Wire</title>{entries}</channel></rss>").encode()


GOOD = _rss(
    ("a", "Japan orders more drones for its coastal surveillance fleet", NOW - timedelta(days=1)),
    ("b", "Parliament debates the defence budget for next year", NOW - timedelta(days=2)),
    ("c", "An old report on shipbuilding in the northern ports", NOW - timedelta(days=30)),
    ("d", "An undated bulletin about regional weather and ferries", None),
)
MIXED = _rss(
    ("j1", "防衛省は小型無人機ドローンの調達を加速する方針を固めた", NOW),
    ("e1", "Japan orders more drones for its coastal surveillance fleet", NOW),
    ("e1", "Japan orders more drones for its coastal surveillance fleet", NOW),
)


@pytest.fixture
def bare_config(tmp_path: Path) -> Path:
    """The shipped config without its [[feeds]] and with no per-host pause (fast polls)."""
    shipped = CONFIG.read_text(encoding="utf-8")
    head = shipped.split("[[feeds]]", 1)[0].replace("per_host_delay = 1.0",
                                                    "per_host_delay = 0.0")
    path = tmp_path / "config.toml"
    path.write_text(head, encoding="utf-8")
    return path


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """A plain engine on the test database, to inspect what the commands stored."""
    made = create_engine(database_url)
    yield made
    made.dispose()


def _listed(monitor: Invoke, config: Path) -> list[dict[str, Any]]:
    result = monitor("feeds", "list", "--json", config=config)
    assert result.exit_code == 0, result.output
    return list(json.loads(result.stdout))


def _snapshot(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    with engine.connect() as conn:
        return {name: sorted(map(tuple, conn.execute(text(f'SELECT * FROM "{name}"'))), key=repr)
                for name in inspect(conn).get_table_names()}


# --- add and list --------------------------------------------------------------------


def test_add_then_list(monitor: Invoke, bare_config: Path, engine: Engine) -> None:
    """`feeds add` stores a due feed with its options; `feeds list --json` shows it."""
    url = "http://127.0.0.1:9/wire.xml"
    result = monitor("feeds", "add", url, "--outlet", "Wire", "--topic", "japan-osa",
                     "--language", "JA", "--interval", "30", config=bare_config)
    assert result.exit_code == 0, result.output
    [feed] = _listed(monitor, bare_config)
    assert set(feed) == LIST_KEYS
    assert (feed["url"], feed["outlet"], feed["status"], feed["items_7d"]) == (
        url, "Wire", "active", 0)
    assert datetime.fromisoformat(feed["next_check_at"]) <= datetime.now(UTC)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT language, topics, interval_minutes, fixed_interval "
                                "FROM feeds")).one()
    assert (row[0], json.loads(row[1]) if isinstance(row[1], str) else row[1], row[2],
            bool(row[3])) == ("ja", ["japan-osa"], 30, True)


def test_add_refuses_a_duplicate_url(monitor: Invoke, bare_config: Path) -> None:
    """Adding a URL twice exits 1 with one line naming the feed, and stores one row."""
    url = "http://127.0.0.1:9/wire.xml"
    assert monitor("feeds", "add", url, config=bare_config).exit_code == 0
    again = monitor("feeds", "add", url, config=bare_config)
    assert again.exit_code == 1
    assert again.stderr.strip().splitlines() == [
        f"monitor: feed 1 already has this URL: {url}"]
    assert len(_listed(monitor, bare_config)) == 1


@pytest.mark.parametrize(("args", "message"), [
    (["ftp://example.org/feed"], "not an http(s) URL"),
    (["http:///feed.xml"], "no host"),
    (["http://example.org/f", "--topic", "no-such-topic"], "unknown topic 'no-such-topic'"),
    (["http://example.org/f", "--language", "english!"], "not a language code"),
    (["http://example.org/f", "--interval", "0"], "--interval"),
])
def test_add_validates_its_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    """A bad URL, topic, language or interval is a usage error (exit 2) that says why."""
    result = CliRunner().invoke(cli, ["--config", str(CONFIG), "--database-url",
                                      f"sqlite:///{tmp_path / 'm.db'}", "feeds", "add", *args])
    assert result.exit_code == 2
    assert message in result.stderr


def test_list_reports_health_and_recent_items(monitor: Invoke, bare_config: Path,
                                              loopback_server: LoopbackServer) -> None:
    """After a real poll, list shows active/muted/unhealthy, the last error and the items
    of the last 7 days (undated items count from when they were fetched)."""
    good = loopback_server.route("/good.xml", Reply(body=GOOD, headers=RSS))
    gone = loopback_server.route("/gone.xml", Reply(status=410))
    broken = loopback_server.route("/broken.xml", Reply(status=500))
    for url in (good, gone, broken):
        assert monitor("feeds", "add", url, config=bare_config).exit_code == 0
    assert monitor("run", "--once", config=bare_config).exit_code == 1
    by_url = {f["url"]: f for f in _listed(monitor, bare_config)}
    assert by_url[good]["status"] == "active" and by_url[good]["items_7d"] == 3
    assert by_url[good]["last_success_at"] and by_url[good]["error_count"] == 0
    assert by_url[gone]["status"] == "muted"
    assert by_url[broken]["status"] == "unhealthy" and by_url[broken]["error_count"] == 1
    assert "500" in by_url[broken]["last_error"] and by_url[broken]["last_success_at"] is None
    assert datetime.fromisoformat(by_url[broken]["next_check_at"]) > datetime.now(UTC)
    table = monitor("feeds", "list", config=bare_config).stdout
    assert "unhealthy" in table and "last error:" in table and "muted" in table


def test_list_counts_items_in_one_query(monitor: Invoke, bare_config: Path,
                                        loopback_server: LoopbackServer) -> None:
    """`feeds list` reads the items table once, however many feeds there are."""
    for n in range(4):
        url = loopback_server.route(f"/f{n}.xml", Reply(body=_rss(
            (f"g{n}", f"Story number {n} about the harbour and its new cranes", NOW)),
            headers=RSS))
        monitor("feeds", "add", url, config=bare_config)
    monitor("run", "--once", config=bare_config)
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        feeds = _listed(monitor, bare_config)
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    assert [f["items_7d"] for f in feeds] == [1, 1, 1, 1]
    assert len([s for s in statements if "FROM items" in s]) == 1


def test_list_notes_config_feeds_not_yet_stored(monitor: Invoke) -> None:
    """Before the first `run`, list says the config file's feeds are not stored yet."""
    result = monitor("feeds", "list")
    assert result.exit_code == 0
    assert "no feeds yet" in result.stdout
    assert "10 feed(s) in" in result.stderr and "`monitor run` adds them" in result.stderr


# --- remove --------------------------------------------------------------------------


@pytest.mark.parametrize("by", ["url", "id"])
def test_remove_keeps_the_items(monitor: Invoke, bare_config: Path, engine: Engine,
                                loopback_server: LoopbackServer, by: str) -> None:
    """Removing a feed (by URL or id) deletes its row; its items stay, unlinked."""
    url = loopback_server.route("/good.xml", Reply(body=GOOD, headers=RSS))
    monitor("feeds", "add", url, config=bare_config)
    monitor("run", "--once", config=bare_config)
    result = monitor("feeds", "remove", url if by == "url" else "1", config=bare_config)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"removed feed 1: {url} (4 items kept)"
    assert _listed(monitor, bare_config) == []
    with engine.connect() as conn:
        feed_ids = list(conn.execute(text("SELECT feed_id FROM items")).scalars())
    assert feed_ids == [None] * 4
    again = monitor("feeds", "remove", url, config=bare_config)
    assert again.exit_code == 1 and "no feed with URL" in again.stderr


def test_remove_warns_when_the_config_still_lists_it(monitor: Invoke, bare_config: Path,
                                                     loopback_server: LoopbackServer) -> None:
    """A feed removed but still in config.toml draws a warning, and `run` brings it back."""
    url = loopback_server.route("/good.xml", Reply(body=GOOD, headers=RSS))
    with bare_config.open("a", encoding="utf-8") as f:
        f.write(f'\n[[feeds]]\nurl = "{url}"\noutlet = "Configured"\n')
    assert monitor("run", "--once", config=bare_config).exit_code == 0
    result = monitor("feeds", "remove", url, config=bare_config)
    assert result.exit_code == 0
    assert f"is still listed in {bare_config}" in result.stderr
    assert _listed(monitor, bare_config) == []
    monitor("run", "--once", config=bare_config)
    assert [f["outlet"] for f in _listed(monitor, bare_config)] == ["Configured"]


# --- import --------------------------------------------------------------------------

OPML = b"""<?xml version="1.0" encoding="UTF-8"?>
<opml version="2.0"><head><title>subscriptions</title></head><body>
  <outline text="News">
    <outline text="Asia">
      <outline type="rss" text="Kyodo" title="Kyodo News" xmlUrl="https://kyodo.example/rss"/>
      <outline type="rss" text="NHK" xmlUrl="https://nhk.example/cat0.xml"/>
    </outline>
    <outline type="rss" text="Kyodo again" xmlUrl="https://kyodo.example/rss"/>
  </outline>
  <outline type="rss" text="Wire" xmlURL="https://wire.example/feed" category="/defence,/x"/>
  <outline type="rss" text="Present" xmlUrl="http://127.0.0.1:9/present.xml"/>
  <outline type="rss" text="Podcast" xmlUrl="feed://podcast.example/rss"/>
  <outline type="rss" text="Script" xmlUrl="javascript:alert(1)"/>
  <outline type="link" text="A web page" url="https://page.example/"/>
</body></opml>"""


def test_import_opml(monitor: Invoke, bare_config: Path, tmp_path: Path) -> None:
    """Import adds new feeds, skips present and repeated ones, and reports invalid URLs."""
    monitor("feeds", "add", "http://127.0.0.1:9/present.xml", config=bare_config)
    path = tmp_path / "subs.opml"
    path.write_bytes(OPML)
    result = monitor("feeds", "import", str(path), config=bare_config)
    assert result.exit_code == 0, result.output
    assert f"{path}: 3 added, 2 skipped (already present), 2 invalid" in result.stdout
    assert "invalid: Podcast: not an http(s) URL" in result.stdout
    assert "note: OPML categories are not stored" in result.stdout
    outlets = {f["url"]: f["outlet"] for f in _listed(monitor, bare_config)}
    assert outlets == {"http://127.0.0.1:9/present.xml": None,
                       "https://kyodo.example/rss": "Kyodo News",
                       "https://nhk.example/cat0.xml": "NHK",
                       "https://wire.example/feed": "Wire"}


BOMB = (b'<?xml version="1.0"?><!DOCTYPE opml [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
        b'<opml><body><outline text="&b;" xmlUrl="https://x.example/"/></body></opml>')


@pytest.mark.parametrize(("content", "reason"), [
    (b"<opml><body><outline text='x' xmlUrl='https://x.example/'></body></opml>",
     "not valid OPML: mismatched tag"),
    (b"", "not valid OPML: no element found"),
    (b"<rss version='2.0'><channel/></rss>", "not an OPML file"),
    (BOMB, "DOCTYPE"),
])
def test_import_malformed_opml(monitor: Invoke, bare_config: Path, tmp_path: Path,
                               content: bytes, reason: str) -> None:
    """A broken, empty, non-OPML or entity-laden file is one line naming it; nothing is added."""
    path = tmp_path / "bad.opml"
    path.write_bytes(content)
    result = monitor("feeds", "import", str(path), config=bare_config)
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"monitor: {path}: ") and reason in line
    assert _listed(monitor, bare_config) == []


def test_import_reports_progress_on_big_files(monitor: Invoke, bare_config: Path,
                                              tmp_path: Path) -> None:
    """A 1,200-feed file prints periodic counts and adds every feed."""
    outlines = "".join(f'<outline text="F{n}" xmlUrl="https://f{n}.example/rss"/>'
                       for n in range(1200))
    path = tmp_path / "big.opml"
    path.write_text(f"<opml><body>{outlines}</body></opml>", encoding="utf-8")
    result = monitor("feeds", "import", str(path), config=bare_config)
    assert result.exit_code == 0, result.output
    assert [ln.strip() for ln in result.stderr.splitlines()] == [
        "500/1200 feeds added", "1000/1200 feeds added", "1200/1200 feeds added"]
    assert len(_listed(monitor, bare_config)) == 1200


# --- check ---------------------------------------------------------------------------


def test_check_shows_items_and_stores_nothing(monitor: Invoke, bare_config: Path,
                                              engine: Engine,
                                              loopback_server: LoopbackServer) -> None:
    """`feeds check` prints language, topics and translation per item; no table changes."""
    good = loopback_server.route("/good.xml", Reply(body=GOOD, headers=RSS))
    mixed = loopback_server.route("/mixed.xml", Reply(body=MIXED, headers=RSS))
    monitor("feeds", "add", good, config=bare_config)
    monitor("run", "--once", config=bare_config)
    before = _snapshot(engine)
    result = monitor("feeds", "check", mixed, config=bare_config)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("ja:") and "pending" in lines[0] and "japan-drones" in lines[0]
    assert lines[1].startswith("en:") and "not_needed" in lines[1]
    assert "dup:guid" in lines[2]
    assert f"{mixed}: HTTP 200" in result.stdout
    assert "3 items; 2 would be stored" in result.stdout
    assert _snapshot(engine) == before


def test_check_json_and_no_database(tmp_path: Path, loopback_server: LoopbackServer) -> None:
    """`feeds check --json` lists the items and never even creates the database file."""
    url = loopback_server.route("/mixed.xml", Reply(body=MIXED, headers=RSS))
    db_file = tmp_path / "never.db"
    result = CliRunner().invoke(cli, ["--config", str(CONFIG), "--database-url",
                                      f"sqlite:///{db_file}", "feeds", "check", url,
                                      "--topic", "japan-osa", "--json"])
    assert result.exit_code == 0, result.output
    items = json.loads(result.stdout)
    assert [i["language"] for i in items] == ["ja", "en", "en"]
    assert [i["duplicate_of"] for i in items] == [None, None, "guid"]
    assert all(i["topics"] == [] for i in items)  # --topic japan-osa: drones do not match
    assert items[0]["translation_status"] == "pending" and items[0]["outlet"] == "Loopback Wire"
    assert not db_file.exists()


@pytest.mark.parametrize(("reply", "reason"), [
    (Reply(status=404), "404"),
    (Reply(body=b"<!doctype html><html><body>hi</body></html>",
           headers={"Content-Type": "text/html"}), "HTML"),
    (Reply(action="reset"), "reset"),
])
def test_check_errors_are_one_line(tmp_path: Path, loopback_server: LoopbackServer,
                                   reply: Reply, reason: str) -> None:
    """A 404, an HTML page or a reset connection is one line naming the URL, exit 1."""
    url = loopback_server.route("/feed.xml", reply)
    result = CliRunner().invoke(cli, ["--config", str(CONFIG), "--database-url",
                                      f"sqlite:///{tmp_path / 'm.db'}", "feeds", "check", url])
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"monitor: {url}: ") and reason in line


# --- the pure OPML helpers -----------------------------------------------------------


def test_parse_opml_walks_nested_folders() -> None:
    """Folders become a category path; a feed outside folders keeps its category attribute."""
    feeds = parse_opml(OPML, "subs.opml")
    assert feeds[0] == OpmlFeed("https://kyodo.example/rss", "Kyodo News", "Kyodo News",
                                "News/Asia")
    assert feeds[2].category == "News"
    assert feeds[3] == OpmlFeed("https://wire.example/feed", "Wire", "Wire", "defence")
    assert len(feeds) == 7


def test_parse_opml_refuses_entities() -> None:
    """A DOCTYPE (and so any entity) is refused before anything is expanded."""
    with pytest.raises(ParseError, match="DOCTYPE"):
        parse_opml(BOMB, "bomb.opml")


def test_plan_import_sorts_entries() -> None:
    """Known and repeated URLs are present; non-http(s) ones are invalid; order is kept."""
    entries = [OpmlFeed("https://a.example/"), OpmlFeed("https://b.example/"),
               OpmlFeed("https://a.example/"), OpmlFeed("mailto:x@example.org")]
    plan = plan_import(entries, {"https://b.example/"})
    assert [e.url for e in plan.new] == ["https://a.example/"]
    assert [e.url for e in plan.present] == ["https://b.example/", "https://a.example/"]
    assert [why for _, why in plan.invalid] == ["not an http(s) URL: 'mailto:x@example.org'"]


def test_feeds_group_is_registered() -> None:
    """Every `feeds` subcommand is reachable from the main CLI."""
    group = cli.commands["feeds"]
    assert isinstance(group, click.Group)
    assert set(group.commands) == {"list", "add", "remove", "import", "check"}


def test_check_applies_the_configured_caps(tmp_path: Path,
                                           loopback_server: LoopbackServer) -> None:
    """`feeds check` shows what a poll would store: the feed's own item cap and the
    [limits] field caps apply."""
    url = loopback_server.route("/good.xml", Reply(body=GOOD, headers=RSS))
    shipped = CONFIG.read_text(encoding="utf-8").split("[[feeds]]", 1)[0]
    assert "max_title_chars = 500" in shipped
    config = tmp_path / "config.toml"
    config.write_text(shipped.replace("max_title_chars = 500", "max_title_chars = 20")
                      + f'[[feeds]]\nurl = "{url}"\nmax_items_per_poll = 2\n', encoding="utf-8")
    result = CliRunner().invoke(cli, ["--config", str(config), "--database-url",
                                      f"sqlite:///{tmp_path / 'x.db'}", "feeds", "check", url,
                                      "--json"])
    assert result.exit_code == 0, result.output
    items = json.loads(result.stdout)
    assert len(items) == 2
    assert all(len(i["title"]) <= 20 and i["title"].endswith("…") for i in items)
