"""Secrets stay secret: the SMTP password and a database password never appear in what
monitor prints (logs at -vv in both formats, errors, `config show`) or in the mail it sends.

Each command runs as a real subprocess, as an operator would run it, and every byte of its
stdout and stderr is searched for the secrets, raw, %-encoded and base64-encoded (SMTP AUTH
sends the password in base64)."""

from __future__ import annotations

import base64
import itertools
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, quote_plus, urlsplit, urlunsplit

import pytest
import structlog

from monitor import config, logs
from tests.conftest import SEEDS
from tests.httpserver import LoopbackServer, Reply
from tests.pollkit import FEW_ITEMS_DETECTOR, rss, write_config
from tests.smtpserver import free_port

if TYPE_CHECKING:
    from tests.smtpserver import SmtpFactory

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
FORMATS = ("console", "json")
USER = "digest"


@dataclass(frozen=True)
class Secret:
    """A password unique to this test run, with characters that URLs must escape; its
    ``core`` (random hex) survives any escaping, so finding it finds every spelling."""

    core: str
    value: str

    @classmethod
    def make(cls, kind: str) -> Secret:
        core = secrets.token_hex(10)
        return cls(core, f"{kind}-{core}-P@ss:w/rd%+")

    def spellings(self) -> tuple[str, ...]:
        plain = (self.value, self.core, quote(self.value, safe=""), quote_plus(self.value))
        encoded = (base64.b64encode(self.value.encode()).decode(),
                   base64.b64encode(f"\0{USER}\0{self.value}".encode()).decode())
        return plain + encoded

    def url_part(self) -> str:
        return quote(self.value, safe="")


SMTP = Secret.make("smtp")
DB = Secret.make("db")


def leaks(text: str) -> list[str]:
    """Every spelling of a secret found in ``text``."""
    return [s for secret in (SMTP, DB) for s in secret.spellings() if s and s in text]


@dataclass(frozen=True)
class Run:
    args: tuple[str, ...]
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def monitor(args: Sequence[str], env: dict[str, str], cwd: Path) -> Run:
    """``monitor ARGS`` as a subprocess (the installed entry point, run by this Python)."""
    command = [sys.executable, "-m", "monitor", *args]
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=180, check=False)
    return Run(tuple(args), done.returncode, done.stdout, done.stderr)


def environment(database_url: str) -> dict[str, str]:
    """The parent's environment without MONITOR_* settings, plus the two secrets."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
    return env | {"MONITOR_SMTP_PASSWORD": SMTP.value, "MONITOR_DATABASE_URL": database_url,
                  "PYTHONWARNINGS": "default"}


def with_password(url: str, secret: Secret, *, in_query: bool = False) -> str:
    """``url`` with ``secret`` as its password, in the user part or as ``?password=``."""
    parts = urlsplit(url)
    if in_query:
        sep = "&" if parts.query else ""
        return urlunsplit(parts._replace(query=f"{parts.query}{sep}password={secret.url_part()}"))
    user, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{user or 'postgres'}:{secret.url_part()}@{host}"))


def feeds(server: LoopbackServer) -> list[dict[str, str]]:
    """A good feed, a missing one and one that redirects to a file: errors get logged."""
    return [{"url": server.route("/ok", Reply(body=rss("secretsok", 2)))},
            {"url": server.url("/missing")},
            {"url": server.route("/to-file", Reply.redirect("file:///etc/passwd"))}]


def write(tmp_path: Path, server: LoopbackServer, smtp_port: int) -> Path:
    path = write_config(tmp_path / "config.toml", feeds(server), detector=FEW_ITEMS_DETECTOR)
    with path.open("a", encoding="utf-8") as extra:
        extra.write(f'\n[translation]\nenabled = false\n[dedup]\nembedder = "none"\n'
                    f'[digest]\nrecipients = ["reader@example.org"]\nsmtp_host = "127.0.0.1"\n'
                    f'smtp_port = {smtp_port}\nsmtp_tls = "none"\nsmtp_user = "{USER}"\n'
                    "send_empty = true\n")
    return path


def assert_no_leak(runs: Sequence[Run]) -> None:
    found = [(run.args, leak) for run in runs for leak in leaks(run.output)]
    assert not found, found


# --- the whole path --------------------------------------------------------------------------


def many(jobs: Sequence[Sequence[str]], env: dict[str, str], cwd: Path) -> list[Run]:
    """Commands that do not depend on each other, two at a time (this machine has 2 cores)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda args: monitor(args, env, cwd), jobs))


READS = (["config", "show"], ["config", "show", "--json"], ["db", "status"], ["status"],
         ["feeds", "list"], ["items", "--limit", "3"])


def full_path(config_path: Path, env: dict[str, str], cwd: Path, formats: Sequence[str],
              day: str, smtp_server: SmtpFactory,
              reads: Sequence[list[str]] = READS) -> list[Run]:
    """Every command an operator runs, at -vv, the log formats in turn: backfill, a poll
    with failing feeds, a digest refused at AUTH then sent with it, config show (text and
    JSON), the status reads."""
    good = smtp_server(users={USER: SMTP.value})
    wrong = smtp_server(users={USER: "not-" + SMTP.value[::-1]})
    steps = itertools.count()

    def base() -> list[str]:
        return ["--config", str(config_path), "-vv", "--log-format",
                formats[next(steps) % len(formats)]]

    send = ["digest", "--send", "--date", day, "--to", "reader@example.org", "--smtp-url"]
    runs = [monitor([*base(), *args], env, cwd) for args in (
        ["backfill", str(SEEDS)], ["run", "--once", "--force"],
        [*send, wrong.url(user=USER)], [*send, good.url(user=USER)])]
    runs += many([[*base(), *args] for args in reads], env, cwd)
    # run --once: two feeds fail; the first digest: AUTH refused.
    assert [run.code for run in runs] == [0, 1, 1, 0] + [0] * len(reads), [
        (run.args[5:], run.code, run.stderr[-300:]) for run in runs]
    assert "authentication rejected (535" in runs[2].stderr, runs[2].stderr
    assert "sent the" in runs[3].stdout, runs[3].output
    assert "***" in runs[4].stdout and "***" in runs[5].stdout  # the SMTP password, masked
    assert "feed.polled" in runs[1].stderr  # -vv really logged
    (mail,) = good.messages
    assert not leaks(mail.message.as_string())
    assert wrong.messages == []
    return runs


def test_sqlite_path_never_shows_the_smtp_password(
        tmp_path: Path, smtp_server: SmtpFactory) -> None:
    """On SQLite, every command of the path at -vv keeps MONITOR_SMTP_PASSWORD to itself,
    including the digest refused at AUTH."""
    env = environment(f"sqlite:///{tmp_path / 'monitor.db'}")
    with LoopbackServer() as server:
        path = write(tmp_path, server, free_port())
        runs = full_path(path, env, tmp_path, FORMATS, "2025-08-21", smtp_server)
    assert_no_leak(runs)


@pytest.mark.postgres
def test_postgresql_path_never_shows_either_password(
        tmp_path: Path, smtp_server: SmtpFactory, postgres_url: str) -> None:
    """On PostgreSQL (trust authentication: the password is sent for nothing), a database
    password in the user part of the URL (console logs) or as ?password= (JSON logs) shows
    nowhere, nor does the SMTP password."""
    runs: list[Run] = []
    with LoopbackServer() as server:
        path = write(tmp_path, server, free_port())
        env = environment(with_password(postgres_url, DB))
        runs += full_path(path, env, tmp_path, ["console"], "2025-08-21", smtp_server)
        env = environment(with_password(postgres_url, DB, in_query=True))
        runs += full_path(path, env, tmp_path, ["json"], "2025-08-22", smtp_server, READS[:3])
    assert_no_leak(runs)


# --- a database that cannot be reached -----------------------------------------------------------


ALL = (["db", "status"], ["db", "upgrade"], ["items"], ["run", "--once"], ["config", "show"],
       ["config", "show", "--json"])


def unreachable_urls() -> Iterator[tuple[str, str, str, Sequence[list[str]]]]:
    """A password-bearing URL to a port nothing listens on, in every spelling, and one
    whose port is not a number (it must be refused without being quoted): each with a log
    format and the commands to run."""
    closed = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test"
    yield "user part", with_password(closed, DB), "console", ALL
    yield "query", with_password(closed, DB, in_query=True), "json", ALL
    yield "plain postgresql://", with_password(closed.replace("+psycopg", ""), DB), "console", (
        ["items"],)
    yield "malformed port", with_password("postgresql://postgres@127.0.0.1:port/test", DB), \
        "json", (["items"], ["config", "show"])


def test_unreachable_database_errors_never_show_the_password(tmp_path: Path) -> None:
    """Every command that needs the database fails with one line naming it, password hidden,
    whether the URL comes from MONITOR_DATABASE_URL or --database-url."""
    with LoopbackServer() as server:
        path = write(tmp_path, server, free_port())
        jobs = []
        for name, url, fmt, commands in unreachable_urls():
            base = ["--config", str(path), "-vv", "--log-format", fmt]
            jobs += [(name, [*base, *args], environment(url)) for args in commands]
            jobs.append((name, [*base, "--database-url", url, "items"], environment("")))
        with ThreadPoolExecutor(max_workers=2) as pool:
            runs = list(pool.map(lambda job: (job[0], monitor(job[1], job[2], tmp_path)), jobs))
    for name, run in runs:
        if name == "malformed port":  # refused as a configuration error, URL not quoted
            assert run.code == 2 and "is not a valid database URL" in run.stderr, run.output
        elif "show" not in run.args:
            assert run.code == 1, (name, run.args, run.output)
            assert "Traceback" not in run.stderr, (name, run.args, run.stderr)
    assert_no_leak([run for _, run in runs])


# --- units: what the leaks above would go through ----------------------------------------------


def test_redact_url_hides_every_spelling_of_a_password() -> None:
    """The user part and password-like query parameters are masked; the rest stays."""
    assert config.redact_url("postgresql://me:pw@h:5432/db") == "postgresql://me:***@h:5432/db"
    assert config.redact_url("sqlite:///data/monitor.db") == "sqlite:///data/monitor.db"
    assert config.redact_url("postgresql://me@h/db?sslmode=require&password=pw&sslpassword=x") \
        == "postgresql://me@h/db?sslmode=require&password=***&sslpassword=***"
    assert config.redact_url("postgresql://me:p@ss:w@h/db") == "postgresql://me:***@h/db"
    assert config.redact_url("postgresql://me:pw@h:port/db") == "<unparseable url>"


def test_settings_show_no_secret_in_describe_or_repr(tmp_path: Path) -> None:
    """describe() masks both passwords; the SMTP password is also out of repr()."""
    env = {"MONITOR_SMTP_PASSWORD": SMTP.value,
           "MONITOR_DATABASE_URL": with_password("postgresql://u@h/db", DB, in_query=True)}
    settings = config.load(write_config(tmp_path / "c.toml", []), environ=env)
    assert not leaks(str(settings.describe()))
    assert not leaks(repr(settings.digest))


@pytest.fixture
def restore_logs() -> Iterator[None]:
    """structlog configured as before the test: ``logs.configure`` binds the test's captured
    stderr, which is closed once the test ends (a later test's log line would raise)."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.mark.parametrize("fmt", FORMATS)
def test_logged_exceptions_carry_no_local_variables(
        fmt: str, capsys: pytest.CaptureFixture[str], restore_logs: None) -> None:
    """A logged traceback names files and lines, never the values in its frames (with rich
    installed, structlog's console renderer would print them: smtplib's login(password))."""
    logs.configure(fmt, 2)

    def login(user: str, password: str) -> None:
        raise RuntimeError(f"refused for {user}")

    try:
        login(USER, SMTP.value)
    except RuntimeError:
        logs.get("test").exception("digest.crashed")
    err = capsys.readouterr().err
    assert "RuntimeError: refused for digest" in err.replace("\\n", "\n")
    assert not leaks(err)
