"""Which store a command uses (``--store``, else ``$EVALCHEMY_STORE``, else ``OUTPUT/evalchemy.db``), checked
before anything runs, without opening it.

A run checks its store URL before it starts and opens the store only at its end, to record the run. The two kinds
this evalchemy is built for, SQLite files and PostgreSQL through psycopg, are checked here with the standard library,
so the process that supervises a run for hours does not hold SQLAlchemy (22 MB of it, measured here) meanwhile; any
other URL is checked by SQLAlchemy, whose answer names what is wrong.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from evalchemy.errors import StoreError, setting
from evalchemy.redaction import redact_url

STORE_ENV = "EVALCHEMY_STORE"
DEFAULT_FILE = "evalchemy.db"
PLAIN_SCHEMES = ("sqlite", "postgresql+psycopg")  # read here; every other scheme is SQLAlchemy's to judge


def resolve_url(value: str | None, output_dir: Path) -> str:
    """``--store`` (a URL, or a file path meaning SQLite), else ``$EVALCHEMY_STORE``, else ``OUTPUT/evalchemy.db``."""
    chosen = value or os.environ.get(STORE_ENV)
    if not chosen:
        return f"sqlite:///{(Path(output_dir) / DEFAULT_FILE).resolve()}"
    if "://" not in chosen:
        return f"sqlite:///{Path(chosen).expanduser().resolve()}"
    for prefix in ("postgresql://", "postgres://"):
        if chosen.startswith(prefix):
            chosen = "postgresql+psycopg://" + chosen[len(prefix):]
    if not _plain(chosen):
        _check_with_sqlalchemy(chosen)
    return chosen


def _plain(url: str) -> bool:
    """A SQLite or psycopg URL whose parts (a numeric port, if any) SQLAlchemy reads without complaint."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        return False
    return parts.scheme in PLAIN_SCHEMES and url.startswith(f"{parts.scheme}://")


def _check_with_sqlalchemy(url: str) -> None:
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    try:
        make_url(url).get_dialect()
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ValueError) as err:
        raise StoreError(f"{setting('store')} {redact_url(url)}: not a store URL this evalchemy can open ({err}); "
                         "use a file path, sqlite:///FILE or postgresql://USER@HOST:PORT/DB") from None
