"""Engines, sessions and migrations. SQLite gets WAL, foreign keys and a busy timeout."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlsplit

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from monitor.config import redact_url
from monitor.coordination import session_lock
from monitor.errors import StoreError


def _migrations_dir() -> Path:
    """The Alembic scripts: installed as the top-level ``migrations`` package."""
    spec = importlib.util.find_spec("migrations")
    if spec is None or not spec.submodule_search_locations:
        return Path(__file__).resolve().parent.parent / "migrations"
    return Path(next(iter(spec.submodule_search_locations)))


MIGRATIONS = _migrations_dir()
BUSY_TIMEOUT_MS = 30_000


def normalize_url(url: str) -> str:
    """Use the psycopg 3 driver for plain postgresql:// URLs."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def sqlite_path(url: str | URL) -> Path | None:
    """The file of a SQLite URL, URI filenames included (``sqlite:///file:PATH?mode=ro&uri=true``);
    None for PostgreSQL or an in-memory database."""
    parsed = url if isinstance(url, URL) else make_url(normalize_url(url))
    name = parsed.database
    if parsed.get_backend_name() != "sqlite" or name in (None, "", ":memory:"):
        return None
    if parsed.query.get("uri") == "true" and name.startswith("file:"):
        if parsed.query.get("mode") == "memory" or name.startswith("file::memory:"):
            return None
        name = unquote(urlsplit(name).path)
    return Path(name)


def display(url: str | URL) -> str:
    """A database's name in messages: a SQLite file's path, else the URL with any
    password hidden (in the user part, or as ``?password=``)."""
    try:
        parsed = make_url(normalize_url(url)) if isinstance(url, str) else url
    except (ArgumentError, ValueError):
        return redact_url(str(url))
    path = sqlite_path(parsed)
    return str(path) if path is not None else redact_url(
        parsed.render_as_string(hide_password=True))


def failure(exc: BaseException, url: str | URL) -> dict[str, str]:
    """The fields of the one log line about a database that refused an operation: which
    database, and what it said (``disk I/O error (SQLITE_IOERR_WRITE)``, ``database or
    disk is full``, ``attempt to write a readonly database``), on one line."""
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    reason = lines[0] if lines else type(orig).__name__
    code = getattr(orig, "sqlite_errorname", None) or getattr(orig, "sqlstate", None)
    return {"database": display(url), "error": f"{reason} ({code})" if code else reason}


def read_only(exc: BaseException) -> bool:
    """Whether the database refused a write because it cannot be written at all: a SQLite
    file or connection that is read-only, a PostgreSQL read-only transaction."""
    orig = getattr(exc, "orig", None)
    return (str(getattr(orig, "sqlite_errorname", "")).startswith("SQLITE_READONLY")
            or getattr(orig, "sqlstate", None) == "25006")


def url_of(sessions: sessionmaker[Session]) -> str | URL:
    """The database a session factory is bound to."""
    bind = sessions.kw.get("bind")
    return bind.url if bind is not None else "unknown database"


def make_engine(url: str) -> Engine:
    """An engine for ``url``; a SQLite file's directory is created if missing."""
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if (path := sqlite_path(url)) is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (a fresh database gets every migration). Workers
    starting together take turns: the first migrates, the others then find nothing to do."""
    try:
        with engine.connect() as connection, session_lock(connection, "migrate"):
            command.upgrade(alembic_config(engine), revision)
    except SQLAlchemyError as exc:
        problem = failure(exc, engine.url)
        raise StoreError(f"cannot migrate {problem['database']}: {problem['error']}") from exc


def downgrade(engine: Engine, revision: str = "base") -> None:
    command.downgrade(alembic_config(engine), revision)


def is_current(engine: Engine) -> bool:
    """Whether the database is at the newest migration."""
    head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision() == head


def ensure_schema(engine: Engine) -> None:
    """Upgrade the database if it is behind; commands that need the schema call this."""
    try:
        current = is_current(engine)
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot open database {display(engine.url)}: {exc.__class__.__name__}: "
                         f"{str(exc).splitlines()[0]}") from exc
    if not current:
        upgrade(engine)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    with factory() as session, session.begin():
        yield session
