"""SMTP delivery: compose a multipart/alternative message and hand it to a server over
STARTTLS, implicit TLS or plain SMTP (a local relay), with optional AUTH.

The password comes only from the settings (``MONITOR_SMTP_PASSWORD``); it is never part
of a URL, a message, a log event or an error. Every failure is a :class:`DeliveryError`
whose text is one line naming the server and what went wrong.
"""

from __future__ import annotations

import hashlib
import smtplib
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from urllib.parse import parse_qs, urlsplit

from monitor.config import TLS_MODES, DigestSettings
from monitor.errors import DeliveryError

TIMEOUT_SECONDS = 30.0
REPLY_CHARS = 200


@dataclass(frozen=True)
class SmtpTarget:
    """Where and how to deliver; the password is kept out of ``repr``."""

    host: str
    port: int
    tls: str = "starttls"
    user: str = ""
    password: str = field(default="", repr=False)

    @property
    def where(self) -> str:
        return f"SMTP {self.host}:{self.port}"


def target_of(settings: DigestSettings) -> SmtpTarget:
    return SmtpTarget(settings.smtp_host, settings.smtp_port, settings.smtp_tls,
                      settings.smtp_user, settings.smtp_password)


def parse_smtp_url(url: str, password: str = "") -> SmtpTarget:
    """``smtp://[user@]host[:port][?tls=starttls|implicit|none]``; the port defaults to
    465 for implicit TLS, else 25. Raises ValueError with the reason."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a valid URL ({exc})") from None
    if parts.scheme != "smtp":
        raise ValueError("must start with smtp://")
    if parts.password is not None:
        raise ValueError("must not contain a password: set MONITOR_SMTP_PASSWORD")
    if not parts.hostname:
        raise ValueError("has no host")
    query = parse_qs(parts.query, keep_blank_values=True)
    if unknown := sorted(set(query) - {"tls"}):
        raise ValueError(f"unknown parameter {unknown[0]!r} (only tls=)")
    tls = query.get("tls", ["starttls"])[-1]
    if tls not in TLS_MODES:
        raise ValueError(f"tls must be one of {', '.join(TLS_MODES)}; got {tls!r}")
    default_port = 465 if tls == "implicit" else 25
    return SmtpTarget(parts.hostname, port or default_port, tls, parts.username or "", password)


def check_address(address: str) -> str:
    """``address`` if it is one plain mailbox (no display name, no second address, nothing
    that could break a header); raises ValueError otherwise."""
    name, parsed = parseaddr(address)
    plain = parsed == address and not name and address.count("@") == 1
    if not plain or any(c.isspace() or ord(c) < 32 for c in address) or "," in address:
        raise ValueError(f"not a single e-mail address: {address!r}")
    local, domain = address.split("@")
    if not local or not domain:
        raise ValueError(f"not a single e-mail address: {address!r}")
    return address


def message_id(day: date, recipient: str, sender: str) -> str:
    """The same Message-ID for the same (day, recipient): should a digest ever go out
    twice (the server accepted it but the database write failed), mail clients can
    recognise the copy."""
    token = hashlib.blake2b(recipient.lower().encode(), digest_size=8).hexdigest()
    domain = sender.rpartition("@")[2] or "monitor.invalid"
    return f"<digest.{day.isoformat()}.{token}@{domain}>"


def compose(*, subject: str, text: str, html: str, sender: str, recipient: str,
            day: date, now: datetime) -> EmailMessage:
    """A multipart/alternative message: plain text first, then HTML."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Date"] = format_datetime(now)
    message["Message-ID"] = message_id(day, recipient, sender)
    message["Subject"] = subject
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return message


class Connection:
    """An open SMTP session; ``send`` delivers one message to one recipient."""

    def __init__(self, smtp: smtplib.SMTP, target: SmtpTarget) -> None:
        self.smtp = smtp
        self.target = target

    def send(self, message: EmailMessage, sender: str, recipient: str) -> None:
        try:
            refused = self.smtp.send_message(message, from_addr=sender, to_addrs=[recipient])
        except smtplib.SMTPRecipientsRefused as exc:
            code, reply = exc.recipients.get(recipient, (0, b""))
            raise DeliveryError(f"{self.target.where} refused recipient {recipient}: "
                                f"{_reply(code, reply)}") from None
        except smtplib.SMTPSenderRefused as exc:
            raise DeliveryError(f"{self.target.where} refused sender {sender}: "
                                f"{_reply(exc.smtp_code, exc.smtp_error)}") from None
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"{self.target.where}: {_describe(exc)}") from None
        if refused:
            raise DeliveryError(f"{self.target.where} refused recipient {recipient}")


@contextmanager
def connect(target: SmtpTarget, timeout: float = TIMEOUT_SECONDS) -> Iterator[Connection]:
    """An SMTP session with TLS and AUTH as configured, closed on exit."""
    if target.user and not target.password:
        raise DeliveryError(f"{target.where}: smtp user {target.user!r} is set but "
                            f"MONITOR_SMTP_PASSWORD is empty")
    smtp = _open(target, timeout)
    try:
        yield Connection(smtp, target)
    finally:
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            smtp.close()


def _open(target: SmtpTarget, timeout: float) -> smtplib.SMTP:
    smtp: smtplib.SMTP | None = None
    try:
        if target.tls == "implicit":
            smtp = smtplib.SMTP_SSL(target.host, target.port, timeout=timeout,
                                    context=ssl.create_default_context())
        else:
            smtp = smtplib.SMTP(target.host, target.port, timeout=timeout)
        if target.tls == "starttls":
            smtp.ehlo()
            smtp.starttls(context=ssl.create_default_context())
            smtp.ehlo()
        if target.user:
            smtp.login(target.user, target.password)
        return smtp
    except (smtplib.SMTPException, OSError, UnicodeEncodeError) as exc:
        if smtp is not None:
            smtp.close()
        raise DeliveryError(f"{target.where}: {_describe(exc)}") from None


def _describe(exc: BaseException) -> str:
    """One line for a connection, TLS or protocol failure (never the password)."""
    if isinstance(exc, UnicodeEncodeError):  # smtplib sends AUTH in ASCII only
        return "the smtp user or MONITOR_SMTP_PASSWORD is not ASCII, which smtplib cannot send"
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return f"authentication rejected ({_reply(exc.smtp_code, exc.smtp_error)})"
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return f"{_first_line(str(exc))} (use tls=none only for a local relay)"
    if isinstance(exc, smtplib.SMTPResponseException):
        return _reply(exc.smtp_code, exc.smtp_error)
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the server running?)"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed ({_first_line(exc.reason or str(exc))})"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host ({exc.strerror})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return _first_line(f"{type(exc).__name__}: {exc}")


def _reply(code: int, reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return _first_line(f"{code} {text}")[:REPLY_CHARS]


def _first_line(text: str) -> str:
    return " ".join(text.split()) if text else ""
