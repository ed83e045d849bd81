"""The fetch stage against a real loopback server, once per transport."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from monitor.errors import FetchError
from monitor.fetch import (
    DEFAULT_USER_AGENT,
    FetchLimits,
    HostGate,
    TransportName,
    Validators,
    default_transport,
    fetch,
    fetch_once,
    make_client,
    parse_max_age,
    parse_retry_after,
)
from monitor.types import FetchResult
from tests.httpserver import LoopbackServer, Reply, Request

MIB = 1024 * 1024
SMALL = FetchLimits(connect_timeout=1, read_timeout=0.5, total_deadline=2, max_body=MIB)
NONE = Validators()
FEED = b"<rss><channel><title>t</title></channel></rss>"

Get = Callable[..., FetchResult]


@pytest.fixture(params=["httpx", "aiohttp"])
def transport(request: pytest.FixtureRequest) -> TransportName:
    return request.param


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as running:
        yield running


@pytest.fixture
def get(transport: TransportName) -> Get:
    def get(url: str, validators: Validators = NONE, limits: FetchLimits = SMALL,
            user_agent: str | None = None) -> FetchResult:
        return fetch_once(url, validators, limits, user_agent, transport=transport)

    return get


def fails(get: Get, url: str, **kwargs: object) -> FetchError:
    with pytest.raises(FetchError) as caught:
        get(url, **kwargs)
    return caught.value


def conditional(request: Request) -> Reply:
    """Answer 304 when the client's validators match, else the feed."""
    headers = {"ETag": '"v1"', "Last-Modified": "Wed, 01 Jan 2025 00:00:00 GMT"}
    if request.headers.get("if-none-match") == '"v1"':
        return Reply(status=304, headers={"ETag": '"v1"'})
    if request.headers.get("if-modified-since") == headers["Last-Modified"]:
        return Reply(status=304)
    return Reply(body=FEED, headers=headers)


# --- success and conditional GET -----------------------------------------------------------

def test_200_returns_body_and_validators(server: LoopbackServer, get: Get) -> None:
    """A 200 brings the body, its ETag, Last-Modified, checksum and max-age."""
    url = server.route("/feed", Reply(body=FEED, headers={
        "ETag": '"v1"', "Last-Modified": "Wed, 01 Jan 2025 00:00:00 GMT",
        "Cache-Control": "public, max-age=600"}))
    result = get(url)
    assert (result.status, result.content, result.not_modified) == (200, FEED, False)
    assert (result.etag, result.last_modified) == ('"v1"', "Wed, 01 Jan 2025 00:00:00 GMT")
    assert result.checksum == hashlib.sha256(FEED).hexdigest()
    assert (result.max_age, result.final_url, result.permanent_redirect) == (600, None, False)
    assert result.elapsed > 0


def test_304_on_etag(server: LoopbackServer, get: Get) -> None:
    """A stored ETag is sent as If-None-Match and a 304 means nothing changed."""
    url = server.route("/feed", conditional)
    result = get(url, Validators(etag='"v1"', checksum="abc"))
    assert (result.status, result.content, result.not_modified) == (304, None, True)
    assert (result.etag, result.checksum) == ('"v1"', "abc")
    assert server.requests()[0].headers["if-none-match"] == '"v1"'


def test_304_on_last_modified(server: LoopbackServer, get: Get) -> None:
    """A stored Last-Modified is sent as If-Modified-Since and kept when the 304 omits it."""
    url = server.route("/feed", conditional)
    stamp = "Wed, 01 Jan 2025 00:00:00 GMT"
    result = get(url, Validators(last_modified=stamp))
    assert (result.status, result.not_modified, result.last_modified) == (304, True, stamp)
    assert "if-none-match" not in server.requests()[0].headers


def test_unchanged_body_with_new_etag_is_not_modified(server: LoopbackServer, get: Get) -> None:
    """A 200 whose body hashes to the stored checksum is not modified but brings the new ETag."""
    url = server.route("/feed", Reply(body=FEED, headers={"ETag": '"v2"'}))
    checksum = hashlib.sha256(FEED).hexdigest()
    result = get(url, Validators(etag='"v1"', checksum=checksum))
    assert (result.status, result.content, result.not_modified) == (200, None, True)
    assert (result.etag, result.checksum) == ('"v2"', checksum)


def test_gzip_body_is_decompressed(server: LoopbackServer, get: Get) -> None:
    """A gzip-encoded body arrives decompressed and is hashed decompressed."""
    url = server.route("/feed", Reply(body=FEED, gzip=True))
    result = get(url)
    assert result.content == FEED
    assert result.checksum == hashlib.sha256(FEED).hexdigest()


def test_chunked_body_is_read(server: LoopbackServer, get: Get) -> None:
    """A chunked body without Content-Length is read whole."""
    url = server.route("/feed", Reply(body=FEED, chunked=True))
    assert get(url).content == FEED


def test_body_of_exactly_the_cap_is_accepted(server: LoopbackServer, get: Get) -> None:
    """The cap is inclusive: a body of exactly max_body bytes is fine."""
    url = server.route("/feed", Reply(stream_size=MIB))
    assert len(get(url).content or b"") == MIB


# --- redirects -----------------------------------------------------------------------------

@pytest.mark.parametrize("status", [301, 308])
def test_permanent_redirect(server: LoopbackServer, get: Get, status: int) -> None:
    """A 301 or 308 gives the new URL as final_url and marks it permanent."""
    target = server.route("/new", Reply(body=FEED))
    url = server.route("/old", Reply.redirect(target, status))
    result = get(url)
    assert (result.content, result.final_url, result.permanent_redirect) == (FEED, target, True)
    assert result.url == url


@pytest.mark.parametrize("status", [302, 303, 307])
def test_temporary_redirect(server: LoopbackServer, get: Get, status: int) -> None:
    """A 302, 303 or 307 gives final_url but is not permanent."""
    target = server.route("/new", Reply(body=FEED))
    result = get(server.route("/old", Reply.redirect(target, status)))
    assert (result.content, result.final_url, result.permanent_redirect) == (FEED, target, False)


def test_mixed_chain_is_not_permanent(server: LoopbackServer, get: Get) -> None:
    """A 301 followed by a 302 is not a permanent move of the feed."""
    server.route("/c", Reply(body=FEED))
    server.route("/b", Reply.redirect("/c", 302))
    result = get(server.route("/a", Reply.redirect("/b", 301)))
    assert (result.final_url, result.permanent_redirect) == (server.url("/c"), False)


def test_relative_redirect_and_validators_on_every_hop(server: LoopbackServer, get: Get) -> None:
    """A relative Location resolves against the hop, and validators go to every hop."""
    server.route("/new", conditional)
    result = get(server.route("/old", Reply.redirect("new", 308)), Validators(etag='"v1"'))
    assert (result.status, result.final_url, result.permanent_redirect) == (
        304, server.url("/new"), True)
    assert [r.headers.get("if-none-match") for r in server.requests()] == ['"v1"', '"v1"']


def test_redirect_loop(server: LoopbackServer, get: Get) -> None:
    """A redirect back to a URL already visited is a loop."""
    server.route("/b", Reply.redirect("/a", 302))
    error = fails(get, server.route("/a", Reply.redirect("/b", 302)))
    assert error.reason.startswith("redirect loop")
    assert len(server.requests()) == 2


def chain(server: LoopbackServer, hops: int) -> str:
    server.route(f"/{hops}", Reply(body=FEED))
    for hop in range(hops):
        server.route(f"/{hop}", Reply.redirect(f"/{hop + 1}", 301))
    return server.url("/0")


def test_five_redirects_are_followed(server: LoopbackServer, get: Get) -> None:
    """A chain of max_redirects hops is still followed."""
    result = get(chain(server, 5))
    assert (result.content, result.final_url) == (FEED, server.url("/5"))


def test_too_many_redirects(server: LoopbackServer, get: Get) -> None:
    """A chain of six redirects fails after five hops."""
    error = fails(get, chain(server, 6))
    assert error.reason.startswith("too many redirects")
    assert len(server.requests()) == 6


@pytest.mark.parametrize("location", [
    "file:///etc/passwd", "ftp://example.org/feed.xml", "data:text/xml,<rss/>",
    "javascript:alert(1)"])
def test_redirect_to_other_scheme_is_refused(server: LoopbackServer, get: Get,
                                             location: str) -> None:
    """A redirect to anything but http or https fails and names the scheme."""
    error = fails(get, server.route("/feed", Reply.redirect(location, 302)))
    assert f"unsupported scheme {location.split(':')[0]!r}" in error.reason


def test_initial_url_with_other_scheme_is_refused(get: Get) -> None:
    """A feed URL that is not http or https is refused before any I/O."""
    assert "unsupported scheme 'file'" in fails(get, "file:///etc/passwd").reason


def test_redirect_without_location(server: LoopbackServer, get: Get) -> None:
    """A redirect status without Location is an error, not a success."""
    assert fails(get, server.route("/feed", Reply(status=302))).status == 302


# --- statuses ------------------------------------------------------------------------------

@pytest.mark.parametrize("status", [404, 500])
def test_error_status(server: LoopbackServer, get: Get, status: int) -> None:
    """Other 4xx and 5xx statuses fail with the status and no retry_after."""
    error = fails(get, server.route("/feed", Reply(status=status)))
    assert (error.status, error.retry_after) == (status, None)
    assert error.reason.startswith(str(status))


def test_410_gone(server: LoopbackServer, get: Get) -> None:
    """A 410 says the feed was removed."""
    error = fails(get, server.route("/feed", Reply(status=410)))
    assert (error.status, error.reason) == (410, "410 Gone: the feed was removed")


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize("form", ["seconds", "date"])
def test_retry_after(server: LoopbackServer, get: Get, status: int, form: str) -> None:
    """A 429 or 503 carries the Retry-After pause, in seconds or as an HTTP-date."""
    later = datetime.now(UTC) + timedelta(seconds=120)
    value = "120" if form == "seconds" else format_datetime(later, usegmt=True)
    error = fails(get, server.route("/feed", Reply(status=status, headers={"Retry-After": value})))
    assert error.status == status
    assert error.retry_after == pytest.approx(120, abs=3)


def test_parse_retry_after() -> None:
    """Retry-After parses both forms, clamps past dates to zero and ignores garbage."""
    now = datetime(2025, 1, 1, tzinfo=UTC)
    assert parse_retry_after("30", now) == 30.0
    assert parse_retry_after("Wed, 01 Jan 2025 00:01:00 GMT", now) == 60.0
    assert parse_retry_after("Tue, 31 Dec 2024 00:00:00 GMT", now) == 0.0
    assert [parse_retry_after(v, now) for v in (None, "", "soon", "-5")] == [None] * 4


def test_parse_max_age() -> None:
    """max-age is found among other directives but s-maxage is not taken for it."""
    assert parse_max_age("public, max-age=300") == 300
    assert parse_max_age('max-age="60", must-revalidate') == 60
    assert parse_max_age("s-maxage=10") is None
    assert parse_max_age(None) is None


# --- transport failures --------------------------------------------------------------------

def test_connection_reset(server: LoopbackServer, get: Get) -> None:
    """A server that resets the connection gives 'connection reset'."""
    assert fails(get, server.route("/feed", Reply(action="reset"))).reason == "connection reset"


def test_connection_closed(server: LoopbackServer, get: Get) -> None:
    """A server that closes without answering is reported as such."""
    error = fails(get, server.route("/feed", Reply(action="close")))
    assert error.reason == "connection closed without a complete response"


def test_connection_refused(get: Get) -> None:
    """A port nobody listens on gives 'connection refused'."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert fails(get, f"http://127.0.0.1:{port}/feed").reason == "connection refused"


def test_tls_error(server: LoopbackServer, get: Get) -> None:
    """Speaking TLS to a plain HTTP server is a TLS error."""
    error = fails(get, server.route("/feed", Reply(body=FEED)).replace("http:", "https:"))
    assert error.reason.startswith("TLS error: ")


def test_never_answers(server: LoopbackServer, get: Get) -> None:
    """A server that accepts and never answers times out on read, within the limits."""
    started = time.monotonic()
    error = fails(get, server.route("/feed", Reply(action="hang")))
    assert error.reason == "timed out reading"
    assert time.monotonic() - started < SMALL.total_deadline


def test_slow_drip_hits_the_deadline(server: LoopbackServer, get: Get) -> None:
    """A body dripping a byte every 0.1 s never trips the read timeout but hits the deadline."""
    limits = FetchLimits(read_timeout=0.5, total_deadline=1)
    started = time.monotonic()
    error = fails(get, server.route("/feed", Reply(body=b"x" * 100, drip=0.1)), limits=limits)
    assert error.reason == "deadline exceeded after 1 s"
    assert time.monotonic() - started < 1.5


# --- body cap ------------------------------------------------------------------------------

def test_declared_oversized_body_is_refused(server: LoopbackServer, get: Get) -> None:
    """A Content-Length over the cap is refused before reading."""
    url = server.route("/feed", Reply(headers={"Content-Length": str(MIB + 1)}, body=b"x"))
    assert fails(get, url).reason == "body larger than 1 MiB"


def test_chunked_oversized_body_is_cut(server: LoopbackServer, get: Get) -> None:
    """A 200 MiB chunked body is abandoned soon after passing the cap."""
    started = time.monotonic()
    error = fails(get, server.route("/feed", Reply(stream_size=200 * MIB)))
    assert error.reason == "body larger than 1 MiB"
    assert time.monotonic() - started < 1


def gzip_bomb(size: int) -> bytes:
    """``size`` zero bytes gzip-compressed, built without holding them in memory."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(MIB)
    return b"".join([*(packer.compress(block) for _ in range(size // MIB)), packer.flush()])


def test_gzip_bomb_is_cut_without_inflating_it(server: LoopbackServer, get: Get) -> None:
    """50 MB of gzip'd zeros fails at a 1 MiB cap while memory stays far below 50 MB."""
    bomb = gzip_bomb(50 * MIB)
    assert len(bomb) < 100_000
    url = server.route("/feed", Reply(body=bomb, headers={"Content-Encoding": "gzip"}))
    tracemalloc.start()
    try:
        error = fails(get, url)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert error.reason == "body larger than 1 MiB"
    assert peak < 16 * MIB


# --- identity ------------------------------------------------------------------------------

def test_user_agent_default_and_override(server: LoopbackServer, get: Get) -> None:
    """The default User-Agent names monitor and its contact; a per-feed one replaces it."""
    url = server.route("/feed", Reply(body=FEED))
    get(url)
    get(url, user_agent="special/1.0")
    sent = [r.headers["user-agent"] for r in server.requests()]
    assert sent == [DEFAULT_USER_AGENT, "special/1.0"]
    assert DEFAULT_USER_AGENT.startswith("monitor/") and "(+https://" in DEFAULT_USER_AGENT


def test_default_transport_is_aiohttp() -> None:
    """With httpx-aiohttp installed the client uses the aiohttp transport."""
    assert default_transport() == "aiohttp"


# --- politeness ----------------------------------------------------------------------------

def overlap(requests: list[Request]) -> int:
    """The most requests the server had in flight at once."""
    events = sorted([(r.start, 1) for r in requests] + [(r.end or r.start, -1) for r in requests],
                    key=lambda event: (event[0], event[1]))
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


async def through_gate(gate: HostGate, urls: list[str], transport: TransportName) -> None:
    async with make_client(SMALL, transport) as client:
        async def one(url: str) -> None:
            async with gate.slot(httpx.URL(url).netloc.decode()):
                await fetch(client, url, Validators(), SMALL)

        await asyncio.gather(*(one(url) for url in urls))


@pytest.fixture
def hosts() -> Iterator[list[LoopbackServer]]:
    """Eleven loopback hosts, 127.0.0.1 to 127.0.0.11, each answering /feed after 50 ms."""
    with contextlib.ExitStack() as stack:
        try:
            servers = [stack.enter_context(LoopbackServer(f"127.0.0.{n}")) for n in range(1, 12)]
        except OSError:
            pytest.skip("this system cannot bind 127.0.0.2 and up")
        for host in servers:
            host.route("/feed", Reply(body=FEED, delay=0.05))
        yield servers


def test_host_gate_spaces_one_host_and_parallels_others(hosts: list[LoopbackServer],
                                                       transport: TransportName) -> None:
    """Ten requests to one host go one at a time, spaced; ten to other hosts overlap."""
    busy, others = hosts[0], hosts[1:]
    urls = [busy.url("/feed")] * 10 + [host.url("/feed") for host in others]
    asyncio.run(through_gate(HostGate(spacing=0.1, concurrency=16), urls, transport))
    starts = [r.start for r in busy.requests()]
    assert len(starts) == 10 and busy.max_in_flight == 1
    assert min(b - a for a, b in zip(starts, starts[1:], strict=False)) >= 0.1
    assert overlap([r for host in others for r in host.requests()]) >= 3


def test_host_gate_global_limit(hosts: list[LoopbackServer], transport: TransportName) -> None:
    """The global cap holds across distinct hosts."""
    asyncio.run(through_gate(HostGate(spacing=0, concurrency=2),
                             [host.url("/feed") for host in hosts], transport))
    assert overlap([r for host in hosts for r in host.requests()]) <= 2
