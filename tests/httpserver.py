"""A real HTTP server on a loopback address, run in a background thread, for tests.

Each :class:`LoopbackServer` stands for one host: it binds one address (``127.0.0.1`` by
default; any ``127.x.y.z`` works on Linux, which lets a test simulate distinct hosts) and
answers from routes that map a path to a :class:`Reply` or to a function returning one.
Replies can misbehave on purpose: gzip bodies, slow drips, huge bodies generated on the
fly, a reset or closed connection, or no answer at all.

Register it in ``conftest.py`` with::

    from tests.httpserver import loopback_server  # noqa: F401  (a pytest fixture)
"""

from __future__ import annotations

import gzip
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

import pytest

Action = Literal["reply", "reset", "close", "hang"]
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Reply:
    """What the server answers: a status, headers and a body, delivered in a chosen way.

    ``action`` other than ``"reply"`` misbehaves: ``reset`` sends a TCP RST, ``close``
    closes the connection cleanly, ``hang`` never answers. ``stream_size`` replaces
    ``body`` with that many zero bytes, generated chunk by chunk and sent chunked.
    """

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    gzip: bool = False
    chunked: bool = False
    delay: float = 0.0
    drip: float = 0.0
    stream_size: int = 0
    action: Action = "reply"

    @classmethod
    def redirect(cls, location: str, status: int = 301) -> Reply:
        """A redirect to ``location``."""
        return cls(status=status, headers={"Location": location})


@dataclass(frozen=True)
class Request:
    """One request as the server saw it (header names lower-cased).

    ``end`` is when the answer was decided, just before its body is written, so intervals
    never overstate how many requests were in flight at once.
    """

    method: str
    path: str
    headers: Mapping[str, str]
    start: float
    end: float | None = None


Handler = Callable[[Request], Reply]


class LoopbackServer:
    """One loopback host with routes, a request log and in-flight tracking."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.routes: dict[str, Reply | Handler] = {}
        self.log: list[Request] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._httpd = _Server((host, 0), _RequestHandler)
        self._httpd.loopback = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,),
                                        daemon=True)

    @property
    def host(self) -> str:
        """The ``host:port`` this server answers on."""
        address, port = self._httpd.socket.getsockname()[:2]
        return f"{address}:{port}"

    def url(self, path: str = "/") -> str:
        """The absolute URL of ``path`` on this server."""
        return f"http://{self.host}{path}"

    def route(self, path: str, reply: Reply | Handler) -> str:
        """Answer ``path`` with ``reply``; returns the path's URL."""
        self.routes[path] = reply
        return self.url(path)

    def start(self) -> LoopbackServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def requests(self, path: str | None = None) -> list[Request]:
        """The logged requests, optionally only those for ``path``."""
        with self._lock:
            return [r for r in self.log if path is None or r.path == path]

    def _enter(self, request: Request) -> int:
        with self._lock:
            self.log.append(request)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return len(self.log) - 1

    def _leave(self, index: int) -> None:
        with self._lock:
            self.in_flight -= 1
            request = self.log[index]
            self.log[index] = Request(request.method, request.path, request.headers,
                                      request.start, time.monotonic())

    def _reply_for(self, request: Request) -> Reply:
        reply = self.routes.get(request.path, Reply(status=404, body=b"no route"))
        return reply if isinstance(reply, Reply) else reply(request)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    loopback: LoopbackServer


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002  (stdlib name)
        """Keep test output quiet."""

    def do_GET(self) -> None:  # noqa: N802  (stdlib name)
        loopback = self.server.loopback
        headers = {name.lower(): value for name, value in self.headers.items()}
        request = Request(self.command, self.path, headers, time.monotonic())
        index = loopback._enter(request)
        try:
            self._answer(loopback._reply_for(request), lambda: loopback._leave(index))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up; that is its right

    def _answer(self, reply: Reply, done: Callable[[], None]) -> None:
        if reply.delay:
            self.server.loopback.stopping.wait(reply.delay)
        if reply.action != "reply":
            done()
            self._misbehave(reply.action)
            return
        body = gzip.compress(reply.body) if reply.gzip else reply.body
        self._send_head(reply, body)
        done()
        if reply.stream_size:
            self._send_chunked(_zeros(reply.stream_size))
        elif reply.chunked:
            self._send_chunked(iter([body]))
        else:
            self._send_body(body, reply.drip)

    def _send_head(self, reply: Reply, body: bytes) -> None:
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.gzip:
            self.send_header("Content-Encoding", "gzip")
        if reply.stream_size or reply.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        elif "Content-Length" not in reply.headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()

    def _send_body(self, body: bytes, drip: float) -> None:
        if not drip:
            self.wfile.write(body)
            return
        for i in range(len(body)):
            self.wfile.write(body[i:i + 1])
            self.wfile.flush()
            if self.server.loopback.stopping.wait(drip):
                return

    def _send_chunked(self, chunks: Iterator[bytes]) -> None:
        for chunk in chunks:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        self.wfile.write(b"0\r\n\r\n")

    def _misbehave(self, action: Action) -> None:
        self.close_connection = True
        if action == "hang":
            self.server.loopback.stopping.wait()
        elif action == "reset":
            # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self.connection.close()


def _zeros(size: int) -> Iterator[bytes]:
    block = bytes(_CHUNK)
    for offset in range(0, size, _CHUNK):
        yield block[: min(_CHUNK, size - offset)]


@pytest.fixture
def loopback_server() -> Iterator[LoopbackServer]:
    """A running :class:`LoopbackServer` on 127.0.0.1, stopped after the test."""
    with LoopbackServer() as server:
        yield server
