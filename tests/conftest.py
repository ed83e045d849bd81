"""Shared fixtures: every database test runs on a SQLite file and on the real PostgreSQL
(``MONITOR_TEST_POSTGRES_URL``, a fresh schema per test; skipped with a reason if unset)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine, create_engine, text

from monitor.cli import cli

REPO = Path(__file__).resolve().parents[1]
SEEDS = REPO / "seeds"
CONFIG = REPO / "config.toml"
SHARED = Path(os.environ.get("MONITOR_SHARED", REPO.parent / "shared"))
POSTGRES_ENV = "MONITOR_TEST_POSTGRES_URL"


def shared(*parts: str) -> Path:
    """A path in the shared corpora; the test skips with a reason when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared material not found at {path} (set MONITOR_SHARED)")
    return path


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[Engine]:
    """An autocommit engine on the real PostgreSQL that creates and drops the tests' schemas;
    one for the session, so that each test does not pay for a new engine and connection."""
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"{POSTGRES_ENV} is not set: PostgreSQL tests skipped")
    admin = create_engine(base, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    yield admin
    admin.dispose()


@pytest.fixture
def postgres_url(postgres_admin: Engine) -> Iterator[str]:
    """A URL whose search_path is a fresh, empty schema on the real PostgreSQL."""
    base = os.environ[POSTGRES_ENV]  # set: postgres_admin skips otherwise
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with postgres_admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in base else "?"
    yield f"{base}{sep}options=-csearch_path%3D{schema}"
    with postgres_admin.connect() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each database test runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'monitor.db'}"
    return str(request.getfixturevalue("postgres_url"))


Invoke = Callable[..., Result]


@pytest.fixture
def monitor(database_url: str) -> Invoke:
    """Run the CLI in-process against the test database and the shipped config.toml."""

    def invoke(*args: str, config: Path | str = CONFIG, input: str | None = None,
               env: dict[str, str] | None = None) -> Result:
        runner = CliRunner()
        argv = ["--config", str(config), "--database-url", database_url, *args]
        return runner.invoke(cli, argv, input=input, env=env, catch_exceptions=False)

    return invoke


pytest_plugins = ["tests.httpserver", "tests.smtpserver"]
