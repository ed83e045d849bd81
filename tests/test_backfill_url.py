"""`monitor backfill URL` fetches a real feed over HTTP (loopback) and stores its items."""

from __future__ import annotations

import json

from tests.conftest import Invoke, shared
from tests.httpserver import LoopbackServer, Reply


def test_backfill_from_an_http_feed(monitor: Invoke, loopback_server: LoopbackServer) -> None:
    """Items of a served feed are stored once; the outlet comes from the feed's title."""
    body = shared("corpora", "real-feeds", "sv_fz-se_2022.xml").read_bytes()
    url = loopback_server.route("/fz.xml", Reply(body=body, headers={
        "Content-Type": "application/rss+xml; charset=utf-8"}))
    result = monitor("backfill", url)
    assert result.exit_code == 0, result.output
    items = json.loads(monitor("items", "--json").stdout)
    assert len(items) == 50
    assert {i["language"] for i in items} >= {"sv"}
    assert "0 new items, 50 duplicates" in monitor("backfill", url).stdout


def test_backfill_url_errors_name_the_url(monitor: Invoke,
                                          loopback_server: LoopbackServer) -> None:
    """A 404 and an HTML page each give one line naming the URL and exit 1."""
    missing = loopback_server.route("/missing.xml", Reply(status=404))
    page = loopback_server.route("/page.html", Reply(
        body=b"<!doctype html><html><body>hello</body></html>",
        headers={"Content-Type": "text/html"}))
    result = monitor("backfill", missing, page)
    assert result.exit_code == 1
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("monitor: ")]
    assert len(errors) == 2
    assert missing in errors[0] and "404" in errors[0]
    assert page in errors[1] and "HTML" in errors[1]
