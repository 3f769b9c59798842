"""Schema migrations, run by calsched itself (no alembic.ini needed once installed).

The Alembic scripts are the top-level ``migrations/`` folder of the repository. A wheel
carries them as ``calsched/_migrations``; a source checkout (or editable install) uses the
folder beside the package.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from calsched.errors import JournalError, SchemaVersionError
from calsched.journal.engine import describe_error

__all__ = [
    "alembic_config",
    "check_known",
    "check_schema",
    "current_revision",
    "downgrade",
    "head_revision",
    "migrations_path",
    "upgrade",
]


def migrations_path() -> Path:
    """Where the Alembic scripts are: inside the package, else beside it in a checkout."""
    here = Path(__file__).resolve().parent.parent
    packaged = here / "_migrations"
    if (packaged / "env.py").is_file():
        return packaged
    checkout = here.parent / "migrations"
    if (checkout / "env.py").is_file():
        return checkout
    raise JournalError("calsched's migration scripts are missing from this installation")


def alembic_config(engine: Engine | None = None) -> Config:
    """An Alembic config pointing at the scripts; with ``engine``, bound to it."""
    config = Config()
    config.set_main_option("script_location", str(migrations_path()))
    if engine is not None:
        url = engine.url.render_as_string(hide_password=False)
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str:
    """The newest revision this code ships."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (``None`` for an empty database)."""
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except SQLAlchemyError as exc:
        raise JournalError(f"cannot read the database: {describe_error(exc)}") from None


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Upgrade the database to ``revision`` (default: the newest)."""
    _run(engine, lambda cfg: command.upgrade(cfg, revision))


def downgrade(engine: Engine, revision: str) -> None:
    """Downgrade the database to ``revision`` (``base`` drops everything)."""
    _run(engine, lambda cfg: command.downgrade(cfg, revision))


def _run(engine: Engine, action: Callable[[Config], None]) -> None:
    config = alembic_config()
    try:
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            action(config)
    except SQLAlchemyError as exc:
        raise JournalError(f"migration failed: {describe_error(exc)}") from None


def check_known(revision: str) -> None:
    """Raise :class:`SchemaVersionError` if ``revision`` is not one this code ships.

    A database migrated by a newer calsched must not be touched by an older one.
    """
    script = ScriptDirectory.from_config(alembic_config())
    known = {rev.revision for rev in script.walk_revisions()}
    if revision not in known:
        raise SchemaVersionError(revision, head_revision())


def check_schema(engine: Engine) -> None:
    """Raise :class:`SchemaVersionError` unless the database is at this code's head."""
    found = current_revision(engine)
    expected = head_revision()
    if found != expected:
        raise SchemaVersionError(found, expected)
