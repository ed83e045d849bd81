"""A real SMTP server (aiosmtpd) on 127.0.0.1 and a free port, run in a thread, that
records the messages it accepts. Variants: require AUTH (one user and password), refuse
some recipients, speak STARTTLS or implicit TLS with a throwaway certificate. "Server
down" is a port nothing listens on.

Register it in ``conftest.py`` (``pytest_plugins``); tests use the ``smtp_server`` factory.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Received:
    """One accepted message: the envelope and the parsed message."""

    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage


@dataclass
class Recorder:
    """The handler: refuses ``reject`` recipients, records what it accepts."""

    reject: set[str] = field(default_factory=set)
    received: list[Received] = field(default_factory=list)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        if address in self.reject:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = message_from_bytes(envelope.original_content or envelope.content,
                                    policy=policy.default)
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos),
                                      parsed))  # type: ignore[arg-type]
        return "250 Message accepted"


@dataclass
class SmtpServer:
    """A running server: where it listens and what it received."""

    port: int
    recorder: Recorder
    tls: str

    @property
    def messages(self) -> list[Received]:
        return self.recorder.received

    def url(self, user: str | None = None) -> str:
        who = f"{user}@" if user else ""
        return f"smtp://{who}127.0.0.1:{self.port}?tls={self.tls}"


def _authenticator(users: dict[str, str]) -> Callable[..., AuthResult]:
    def check(server: Any, session: Any, envelope: Any, mechanism: str,
              auth_data: Any) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user, password = auth_data.login.decode(), auth_data.password.decode()
        # handled=False: the server itself answers (235, or 535 on a wrong password).
        return AuthResult(success=users.get(user) == password, handled=False)
    return check


def certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl CLI), or skip the test."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not installed: cannot make a test certificate for TLS")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


SmtpFactory = Callable[..., SmtpServer]


@pytest.fixture
def smtp_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SmtpFactory]:
    """Start SMTP servers on 127.0.0.1: ``smtp_server(users=..., reject=..., tls=...)``."""
    controllers: list[Controller] = []

    def start(*, users: dict[str, str] | None = None, reject: set[str] | None = None,
              tls: str = "none") -> SmtpServer:
        recorder = Recorder(reject=set(reject or ()))
        kwargs: dict[str, Any] = {}
        if users is not None:
            kwargs.update(authenticator=_authenticator(users), auth_required=True,
                          auth_require_tls=False)
        if tls != "none":
            cert, key = certificate(tmp_path)
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(cert, key)
            kwargs["ssl_context" if tls == "implicit" else "tls_context"] = context
            monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the client trusts it
        port = free_port()
        controller = Controller(recorder, hostname="127.0.0.1", port=port, **kwargs)
        controller.start()
        controllers.append(controller)
        return SmtpServer(port, recorder, tls)

    yield start
    for controller in controllers:
        controller.stop()
