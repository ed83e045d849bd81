"""Poll cycles against real loopback servers: every HTTP case a feed can throw at the daemon,
its stored row and items, and that the other feeds of the same cycle are unaffected."""

from __future__ import annotations

import contextlib
import gzip
import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest

from monitor.fetch import CONTACT_URL
from monitor.models import FeedRow
from monitor.poll import PollOutcome
from monitor.schedule import (
    Bounds,
    adapt_interval,
    after_failure,
    backoff_minutes,
    floor_minutes,
    next_interval,
)
from tests.httpserver import Handler, LoopbackServer, Reply, Request
from tests.pollkit import (
    consistency,
    feed_id,
    item_counts,
    item_titles,
    make_all_due,
    poller_for,
    rows,
    rss,
    write_config,
)

MIB = 1024 * 1024
BACKOFF_1, BACKOFF_2 = 300.0, 600.0  # seconds after the first and second failure
FAILS = ("error", "error")  # the outcome of both cycles for a feed that keeps failing


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as running:
        yield running


@pytest.fixture
def servers() -> Iterator[list[LoopbackServer]]:
    """Three hosts, so that the table's slow cases overlap the rest (one host where only
    127.0.0.1 can be bound: slower, still correct)."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(_host(n)) for n in (1, 2, 3)]


def _host(n: int) -> LoopbackServer:
    try:
        return LoopbackServer(f"127.0.0.{n}")
    except OSError:
        return LoopbackServer()


def sequence(*replies: Reply) -> Handler:
    """Answer the n-th request with the n-th reply; the last one repeats."""
    served = itertools.count()

    def handler(_request: Request) -> Reply:
        return replies[min(next(served), len(replies) - 1)]

    return handler


def conditional(name: str, header: str) -> Handler:
    """A feed that answers 304 when the client sends back its ETag or Last-Modified."""
    validators = {"if-none-match": ("ETag", '"v1"'),
                  "if-modified-since": ("Last-Modified", "Wed, 01 Jan 2025 00:00:00 GMT")}
    name_header, value = validators[header]

    def handler(request: Request) -> Reply:
        if request.headers.get(header) == value:
            return Reply(status=304)
        return Reply(body=rss(name, 2), headers={name_header: value})

    return handler


def http_date(seconds: int) -> str:
    return format_datetime(datetime.now(UTC) + timedelta(seconds=seconds), usegmt=True)


@dataclass(frozen=True)
class Case:
    """One feed of the table: what its server does and what the daemon must store.

    ``first``/``second`` are the outcome statuses of the two cycles (``None``: not polled);
    ``wait`` is the seconds from the first check to the next one; ``items`` the items stored
    after both cycles; ``error`` a part of ``last_error`` after the first cycle."""

    name: str
    routes: Mapping[str, Reply | Handler]
    first: str
    second: str | None
    items: int = 0
    error: str | None = None
    wait: float | None = None
    moved_to: str | None = None
    feed: Mapping[str, Any] = field(default_factory=dict)
    host: int = 0  # which of the three servers answers


def cases(server: LoopbackServer) -> list[Case]:
    bomb = gzip.compress(bytes(10 * MIB))
    feed = {"ok": rss("ok", 3)}
    return [
        Case("ok", {"/ok": Reply(body=feed["ok"])}, "ok", "not_modified", items=3,
             wait=30 * 60),  # three of three new: the 60 min interval halves
        Case("etag-304", {"/etag-304": conditional("etag304", "if-none-match")},
             "ok", "not_modified", items=2),
        Case("lastmod-304", {"/lastmod-304": conditional("lastmod304", "if-modified-since")},
             "ok", "not_modified", items=2),
        Case("new-etag", {"/new-etag": sequence(
            Reply(body=rss("newetag", 2), headers={"ETag": '"a"'}),
            Reply(body=rss("newetag", 2), headers={"ETag": '"b"'}))},
             "ok", "not_modified", items=2),
        Case("moved-301", {"/moved-301": Reply.redirect(server.url("/moved-301/new"), 301),
                           "/moved-301/new": Reply(body=rss("moved301", 2))},
             "ok", "not_modified", items=2, moved_to="/moved-301/new"),
        Case("moved-308", {"/moved-308": Reply.redirect(server.url("/moved-308/new"), 308),
                           "/moved-308/new": Reply(body=rss("moved308", 2))},
             "ok", "not_modified", items=2, moved_to="/moved-308/new"),
        Case("found-302", {"/found-302": Reply.redirect(server.url("/found-302/new"), 302),
                           "/found-302/new": Reply(body=rss("found302", 2))},
             "ok", "not_modified", items=2),
        Case("redirect-loop", {"/redirect-loop": Reply.redirect(server.url("/loop-b"), 301),
                               "/loop-b": Reply.redirect(server.url("/redirect-loop"), 302)},
             *FAILS, error="redirect loop", wait=BACKOFF_1),
        Case("redirect-ftp", {"/redirect-ftp": Reply.redirect("ftp://example.com/feed.xml")},
             *FAILS, error="unsupported scheme 'ftp'", wait=BACKOFF_1),
        Case("not-found", {"/not-found": Reply(status=404)}, *FAILS,
             error="404 Not Found", wait=BACKOFF_1),
        Case("gone", {"/gone": Reply(status=410)}, "muted", None, error="410 Gone",
             wait=BACKOFF_1),
        Case("throttled-seconds", {"/throttled-seconds": Reply(
            status=429, headers={"Retry-After": "3600"})}, *FAILS,
             error="429 Too Many Requests (Retry-After: 3600 s)", wait=3600),
        Case("throttled-date", {"/throttled-date": Reply(
            status=429, headers={"Retry-After": http_date(7200)})}, *FAILS,
             error="429 Too Many Requests", wait=7200),
        Case("unavailable-seconds", {"/unavailable-seconds": Reply(
            status=503, headers={"Retry-After": "5400"})}, *FAILS,
             error="503 Service Unavailable", wait=5400),
        Case("unavailable-date", {"/unavailable-date": Reply(
            status=503, headers={"Retry-After": http_date(10800)})}, *FAILS,
             error="503 Service Unavailable", wait=10800),
        Case("server-error", {"/server-error": Reply(status=500)}, *FAILS,
             error="500 Internal Server Error", wait=BACKOFF_1),
        Case("reset", {"/reset": Reply(action="reset")}, *FAILS,
             error="connection reset", wait=BACKOFF_1),
        Case("hang", {"/hang": Reply(action="hang")}, *FAILS, error="timed out",
             wait=BACKOFF_1, host=1),
        Case("drip", {"/drip": Reply(body=rss("drip", 2), drip=0.01)}, *FAILS,
             error="deadline exceeded after 1.5 s", wait=BACKOFF_1, host=2),
        Case("oversized", {"/oversized": Reply(stream_size=3 * MIB)}, *FAILS,
             error="body larger than 1 MiB", wait=BACKOFF_1),
        Case("gzip-bomb", {"/gzip-bomb": Reply(body=bomb, headers={"Content-Encoding": "gzip"})},
             *FAILS, error="body larger than 1 MiB", wait=BACKOFF_1),
        Case("malformed", {"/malformed": Reply(body=rss("malformed", 3)[:-40])}, *FAILS,
             error="truncated XML", wait=BACKOFF_1),
        Case("wrong-charset", {"/wrong-charset": Reply(
            body=rss("charset", 2, words="Café in 東京 opens a drone plant"),
            headers={"Content-Type": "application/rss+xml; charset=iso-8859-1"})},
             "ok", "not_modified", items=2),
        Case("empty", {"/empty": Reply(body=rss("empty", 0))}, "ok", "not_modified",
             wait=90 * 60),  # nothing new: the interval grows by half
        Case("no-guids", {"/no-guids": sequence(
            Reply(body=rss("noguid", 2, guids=False, dates=False)),
            Reply(body=rss("noguid", 3, guids=False, dates=False)))},
             "ok", "ok", items=3),
        Case("ttl", {"/ttl": Reply(body=rss("ttl", 2, ttl=600))}, "ok", "not_modified",
             items=2, wait=600 * 60),
        Case("max-age", {"/max-age": Reply(body=rss("maxage", 2),
                                           headers={"Cache-Control": "public, max-age=10800"})},
             "ok", "not_modified", items=2, wait=180 * 60),
        Case("ttl-above-cap", {"/ttl-above-cap": Reply(body=rss("bigttl", 2, ttl=100_000))},
             "ok", "not_modified", items=2, wait=1440 * 60),
        Case("fixed", {"/fixed": Reply(body=rss("fixed", 2))}, "ok", "not_modified", items=2,
             wait=45 * 60, feed={"interval_minutes": 45}),  # configured: does not adapt
        Case("agent", {"/agent": Reply(body=rss("agent", 1))}, "ok", "not_modified", items=1,
             feed={"user_agent": "CustomBot/2.0"}),
    ]


Check = Callable[[str], None]


def check_first(case: Case, row: FeedRow, outcome: PollOutcome | None, fail: Check) -> None:
    if outcome is None or outcome.status != case.first:
        fail(f"first cycle: {outcome}")
    if case.error is None and (row.error_count, row.status) != (0, "active"):
        fail(f"should be healthy: {row.error_count} errors, {row.status}, {row.last_error}")
    if case.error is not None and (row.error_count != 1 or case.error not in (
            row.last_error or "")):
        fail(f"error: {row.error_count} {row.last_error!r}")
    if case.wait is not None:
        assert row.next_check_at and row.last_checked_at
        waited = (row.next_check_at - row.last_checked_at).total_seconds()
        if abs(waited - case.wait) > 5:
            fail(f"next check after {waited} s, not {case.wait}")


def check_second(case: Case, row: FeedRow, outcome: PollOutcome | None, items: int,
                 server: LoopbackServer, fail: Check) -> None:
    if (outcome.status if outcome else None) != case.second:
        fail(f"second cycle: {outcome}")
    if items != case.items:
        fail(f"{items} items, not {case.items}")
    if case.second == "error" and row.error_count != 2:
        fail(f"{row.error_count} errors after two failures")
    assert row.next_check_at and row.last_checked_at
    waited = (row.next_check_at - row.last_checked_at).total_seconds()
    if case.name == "server-error" and abs(waited - BACKOFF_2) > 5:
        fail("the second failure should back off to 10 minutes")
    expected_url = server.url(case.moved_to or f"/{case.name}")
    if row.url != expected_url:
        fail(f"url {row.url}, not {expected_url}")
    if case.moved_to and len(server.requests(f"/{case.name}")) != 1:
        fail("the old URL should not be requested after a permanent redirect")
    if case.name == "gone" and (row.status != "muted" or "muted" not in (row.last_error or "")):
        fail(f"not muted: {row.status} {row.last_error!r}")


def test_every_case_in_one_cycle(tmp_path: Path, database_url: str,
                                 servers: list[LoopbackServer]) -> None:
    """Each feed of a 30-feed cycle ends in its own state after two cycles, whatever the
    other feeds do."""
    server = servers[0]
    table = cases(server)
    for case in table:
        for path, reply in case.routes.items():
            servers[case.host].route(path, reply)
    urls = {c.name: servers[c.host].url(f"/{c.name}") for c in table}
    feeds = [{"url": urls[c.name], **c.feed} for c in table]
    with poller_for(write_config(tmp_path / "c.toml", feeds), database_url) as poller:
        # Again, now that the poller is ready (loading the detector can take seconds on a
        # loaded machine): Retry-After dates count from the moment the cycle starts.
        table = cases(server)
        for case in table:
            for path, reply in case.routes.items():
                servers[case.host].route(path, reply)
        ids = {c.name: feed_id(poller.sessions, urls[c.name]) for c in table}
        first = {o.feed_id: o for o in poller.cycle()}
        after_first = rows(poller.sessions)
        make_all_due(poller.sessions)
        second = {o.feed_id: o for o in poller.cycle()}
        after_second, counts = rows(poller.sessions), item_counts(poller.sessions)
        problems: list[str] = []
        for case in table:
            def fail(message: str, name: str = case.name) -> None:
                problems.append(f"{name}: {message}")

            i = ids[case.name]
            check_first(case, after_first[i], first.get(i), fail)
            check_second(case, after_second[i], second.get(i), counts.get(i, 0),
                         servers[case.host], fail)
        assert not problems, "\n".join(problems)
        assert "Café in 東京" in item_titles(poller.sessions, ids["wrong-charset"])[0]
        assert set(consistency(poller.sessions).values()) == {0}
    agents = {r.path: r.headers["user-agent"] for r in server.requests()}
    assert agents["/agent"] == "CustomBot/2.0"
    assert CONTACT_URL in agents["/ok"] and agents["/ok"].startswith("monitor/")


# --- schedule (pure) -------------------------------------------------------------------

BOUNDS = Bounds(min_minutes=5, max_minutes=1440, default_minutes=60)


@pytest.mark.parametrize(("current", "new", "total", "expected"), [
    (60, 10, 10, 30),   # mostly new: twice as often
    (60, 3, 10, 60),    # some new: unchanged
    (60, 0, 10, 90),    # all known: half as often again
    (60, 0, 0, 90),     # empty feed
    (6, 5, 5, 5),       # never below the lower bound
    (1200, 0, 5, 1440),  # never above the upper bound
])
def test_adapt_interval_within_bounds(current: int, new: int, total: int, expected: int) -> None:
    """More new items poll more often, fewer less often, always within the bounds."""
    assert adapt_interval(current, new, total, BOUNDS) == expected


def test_feed_floor_and_fixed_interval() -> None:
    """<ttl> and max-age are lower bounds (capped at the upper bound); a fixed interval stays."""
    assert floor_minutes(None, 61) == 2 and floor_minutes(30, 600) == 30
    assert next_interval(30, 5, 5, 120, BOUNDS) == 120
    assert next_interval(60, 5, 5, 0, BOUNDS, fixed=True) == 60
    assert next_interval(60, 0, 5, 10_000, BOUNDS) == 1440


def test_backoff_is_capped_and_honours_retry_after() -> None:
    """Backoff doubles from 5 min to the 24 h cap; a longer Retry-After wins, up to the cap."""
    assert [backoff_minutes(n, BOUNDS) for n in range(1, 11)] == [
        5, 10, 20, 40, 80, 160, 320, 640, 1280, 1440]
    assert backoff_minutes(10_000, BOUNDS) == 1440
    now = datetime.now(UTC)
    assert after_failure(now, 1, 3600, BOUNDS) == now + timedelta(hours=1)
    assert after_failure(now, 1, 10, BOUNDS) == now + timedelta(minutes=5)
    assert after_failure(now, 1, 10**9, BOUNDS) == now + timedelta(hours=24)


# --- scheduling state -----------------------------------------------------------------


def test_muted_feed_is_polled_only_with_force(tmp_path: Path, database_url: str,
                                             server: LoopbackServer) -> None:
    """410 mutes; normal cycles skip the feed, --force polls it and a 200 unmutes it."""
    url = server.route("/feed", sequence(Reply(status=410), Reply(body=rss("back", 1))))
    with poller_for(write_config(tmp_path / "c.toml", [{"url": url}]), database_url) as poller:
        assert [o.status for o in poller.cycle()] == ["muted"]
        make_all_due(poller.sessions)
        assert poller.cycle() == []
        assert [o.status for o in poller.cycle(force=True)] == ["ok"]
        (row,) = rows(poller.sessions).values()
    assert (row.status, row.error_count) == ("active", 0)
    assert len(server.requests("/feed")) == 2


def test_force_polls_what_is_not_due_still_conditionally(
        tmp_path: Path, database_url: str, server: LoopbackServer) -> None:
    """A feed checked a moment ago is not due; --force polls it anyway, with its ETag."""
    url = server.route("/feed", conditional("forced", "if-none-match"))
    with poller_for(write_config(tmp_path / "c.toml", [{"url": url}]), database_url) as poller:
        assert [o.status for o in poller.cycle()] == ["ok"]
        assert poller.cycle() == []
        assert [o.status for o in poller.cycle(force=True)] == ["not_modified"]
    assert server.requests("/feed")[-1].headers.get("if-none-match") == '"v1"'


def test_restart_loses_and_repeats_nothing(tmp_path: Path, database_url: str,
                                           server: LoopbackServer) -> None:
    """Due times, validators and moved URLs live in the database: a restarted poller finds
    nothing due, makes no request, and does not re-add a feed that moved."""
    server.route("/a", Reply(body=rss("a", 2), headers={"ETag": '"x"'}))
    server.route("/old", Reply.redirect(server.url("/new"), 301))
    server.route("/new", Reply(body=rss("new", 2)))
    path = write_config(tmp_path / "c.toml", [{"url": server.url("/a")},
                                               {"url": server.url("/old")}])
    with poller_for(path, database_url) as poller:
        assert {o.status for o in poller.cycle()} == {"ok"}
        before = {i: (r.url, r.next_check_at, r.etag) for i, r in rows(poller.sessions).items()}
    requests = len(server.requests())
    with poller_for(path, database_url) as restarted:
        assert restarted.cycle() == []
        after = {i: (r.url, r.next_check_at, r.etag) for i, r in rows(restarted.sessions).items()}
        assert sum(item_counts(restarted.sessions).values()) == 4
    assert after == before
    assert len(server.requests()) == requests


def test_failures_back_off_to_the_cap_and_never_give_up(
        tmp_path: Path, database_url: str, server: LoopbackServer) -> None:
    """After many failures the next check is 24 h away, the feed stays active, and it recovers."""
    url = server.route("/feed", Reply(status=500))
    with poller_for(write_config(tmp_path / "c.toml", [{"url": url}]), database_url) as poller:
        for _ in range(10):
            make_all_due(poller.sessions)
            poller.cycle()
        (row,) = rows(poller.sessions).values()
        assert (row.status, row.error_count) == ("active", 10)
        assert row.next_check_at and row.last_checked_at
        assert row.next_check_at - row.last_checked_at == timedelta(hours=24)
        server.route("/feed", Reply(body=rss("recovered", 1)))
        make_all_due(poller.sessions)
        assert [o.status for o in poller.cycle()] == ["ok"]
        (row,) = rows(poller.sessions).values()
    assert row.error_count == 0 and "500" in (row.last_error or "")


def test_redirect_onto_another_feeds_url_keeps_both(
        tmp_path: Path, database_url: str, server: LoopbackServer) -> None:
    """A 301 to a URL another feed already has stores the items but keeps the old URL."""
    server.route("/old", Reply.redirect(server.url("/taken"), 301))
    taken = server.route("/taken", Reply(body=rss("taken", 2)))
    old = server.url("/old")
    path = write_config(tmp_path / "c.toml", [{"url": old}, {"url": taken}])
    with poller_for(path, database_url) as poller:
        assert [o.status for o in poller.cycle()] == ["ok", "ok"]
        assert sorted(r.url for r in rows(poller.sessions).values()) == sorted([old, taken])


def test_a_second_poller_claims_nothing_already_claimed(
        tmp_path: Path, database_url: str, server: LoopbackServer) -> None:
    """Two pollers on one database never claim the same feed; a finished cycle releases
    its claims, and the claims of a poller that died lapse."""
    from monitor import db, store

    url = server.route("/feed", Reply(body=rss("claimed", 1)))
    with poller_for(write_config(tmp_path / "c.toml", [{"url": url}]), database_url) as poller:
        now = datetime.now(UTC)
        with db.transaction(poller.sessions) as session:
            held = store.claim_feeds(session, "other", now, now + timedelta(minutes=15))
        assert [f.url for f in held] == [url]
        assert poller.cycle() == [] and poller.cycle(force=True) == []
        with db.transaction(poller.sessions) as session:
            store.release_feeds(session, "other")
        assert [o.status for o in poller.cycle()] == ["ok"]
        assert consistency(poller.sessions)["claimed feeds"] == 0
        with db.transaction(poller.sessions) as session:  # a poller that died mid-cycle
            store.claim_feeds(session, "dead", now, now - timedelta(seconds=1), force=True)
        assert [o.status for o in poller.cycle(force=True)] == ["not_modified"]


def test_a_crash_in_one_feed_costs_only_that_feed(
        tmp_path: Path, database_url: str, server: LoopbackServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected exception while storing one feed is an error on its row, nothing more."""
    from monitor import poll

    def parse(content: bytes, *args: Any, **kwargs: Any) -> Any:
        if b"boom" in content:
            raise RuntimeError("boom")
        return real(content, *args, **kwargs)

    real = poll.parse_feed
    monkeypatch.setattr(poll, "parse_feed", parse)
    feeds = [{"url": server.route("/boom", Reply(body=rss("boom", 1)))},
             {"url": server.route("/fine", Reply(body=rss("fine", 1)))}]
    with poller_for(write_config(tmp_path / "c.toml", feeds), database_url) as poller:
        assert [o.status for o in poller.cycle()] == ["error", "ok"]
        stored = {r.url: r for r in rows(poller.sessions).values()}
        assert stored[feeds[0]["url"]].last_error == "internal error: RuntimeError('boom')"
        assert item_counts(poller.sessions) == {stored[feeds[1]["url"]].id: 1}


# --- politeness -----------------------------------------------------------------------


@pytest.fixture
def hosts() -> Any:
    """Eleven loopback hosts, 127.0.0.1 to 127.0.0.11."""
    with contextlib.ExitStack() as stack:
        try:
            yield [stack.enter_context(LoopbackServer(f"127.0.0.{n}")) for n in range(1, 12)]
        except OSError:
            pytest.skip("this system cannot bind 127.0.0.2 and up")


def overlap(requests: list[Request]) -> int:
    """The most requests the servers had in flight at once."""
    edges = sorted([(r.start, 1) for r in requests] + [(r.end or r.start, -1) for r in requests])
    return max(itertools.accumulate(step for _, step in edges))


def test_politeness(tmp_path: Path, hosts: list[LoopbackServer]) -> None:
    """Ten feeds on one host go one at a time, >= 1 s apart (end of one answer to the start
    of the next request), while ten feeds on ten other hosts, each slow, run in parallel."""
    busy, others = hosts[0], hosts[1:]
    feeds = [{"url": busy.route(f"/f{i}", Reply(body=rss(f"busy{i}", 1)))} for i in range(10)]
    feeds += [{"url": h.route("/f", Reply(body=rss(f"other{n}", 1), delay=1.0))}
              for n, h in enumerate(others)]
    path = write_config(tmp_path / "c.toml", feeds, per_host_delay=1.0, read_timeout=5,
                        total_deadline=5)
    with poller_for(path, f"sqlite:///{tmp_path / 'm.db'}") as poller:
        started = datetime.now(UTC)
        outcomes = poller.cycle()
        wall = (datetime.now(UTC) - started).total_seconds()
    assert [o.status for o in outcomes] == ["ok"] * 20
    seen = busy.requests()
    assert len(seen) == 10 and busy.max_in_flight == 1
    gaps = [b.start - (a.end or a.start) for a, b in itertools.pairwise(seen)]
    assert min(gaps) >= 1.0, gaps
    assert all(h.max_in_flight == 1 for h in others)
    assert overlap([r for h in others for r in h.requests()]) >= 5
    # Serial would take > 9 s for the busy host plus 10 s for the slow ones.
    assert 9.0 <= wall < 13.0, wall
