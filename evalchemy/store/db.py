"""Opening the store: which URL, SQLite or PostgreSQL, read-only or writable, and its schema revision."""

from __future__ import annotations

import logging
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from evalchemy.errors import StoreError, setting
from evalchemy.redaction import redact_url
from evalchemy.store.url import resolve_url  # noqa: F401 - the store's module answers for it too

HEAD = "0003"  # the newest revision in evalchemy/store/migrations/versions
SCRIPT_LOCATION = "evalchemy.store:migrations"

logging.getLogger("alembic").setLevel(logging.WARNING)


display = redact_url  # the URL with its credentials hidden, for messages and logs (one redactor)


def sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers work while a run writes
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def open_engine(url: str, readonly: bool = False) -> Engine:
    """An engine on the store. Read-only opens SQLite with ``mode=ro`` (a missing file is a StoreError) and makes
    every PostgreSQL transaction read-only."""
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError as err:
        raise StoreError(f"{setting('store')} {url!r}: not a database URL ({err}); use a file path, sqlite:///FILE or "
                         "postgresql://USER@HOST:PORT/DB") from None
    path = sqlite_path(url)
    try:
        if path is not None:
            if readonly:
                if not path.is_file():
                    raise StoreError(f"no store at {path}: a run writes it at its end, or record earlier runs "
                                     "with `evalchemy store import RESULTS_DIR`")
                engine = sa.create_engine(f"sqlite:///file:{path}?mode=ro&uri=true",
                                          connect_args={"timeout": 30})
                return engine
            path.parent.mkdir(parents=True, exist_ok=True)
            engine = sa.create_engine(parsed, connect_args={"timeout": 30})
            sa.event.listen(engine, "connect", _sqlite_pragmas)
            return engine
        if parsed.get_backend_name() == "postgresql":
            options = {"connect_timeout": 10}
            engine = sa.create_engine(parsed, connect_args=options, pool_pre_ping=True)
            if readonly:
                engine = engine.execution_options(postgresql_readonly=True)
            return engine
        return sa.create_engine(parsed)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as err:
        raise StoreError(f"{setting('store')} {display(url)}: {err}") from None


def current_revision(connection: sa.Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the store's schema to ``revision`` (creating it in an empty database)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def check_readable(connection: sa.Connection, url: str) -> None:
    """Readers need the schema this code knows; they never migrate it."""
    revision = current_revision(connection)
    if revision is None:
        raise StoreError(f"{display(url)} holds no evalchemy store: record runs with `evalchemy store import DIR`")
    if revision != HEAD:
        raise StoreError(f"{display(url)} has store schema revision {revision}, this evalchemy reads {HEAD}: "
                         "`evalchemy store upgrade` (or the next run or `store import`) upgrades it")


def unreachable(url: str, err: Exception) -> StoreError:
    reason = str(getattr(err, "orig", None) or err).strip().splitlines()
    return StoreError(f"store {display(url)} cannot be reached: {reason[0] if reason else type(err).__name__}")
