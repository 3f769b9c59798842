"""Schema migrations, run by calsched itself (no alembic.ini needed once installed).

The Alembic scripts are the top-level ``migrations/`` folder of the repository. A wheel
carries them as ``calsched/_migrations``; a source checkout (or editable install) uses the
folder beside the package.

Alembic is imported only when a migration or a script-directory question needs it: a
start against a database already at :data:`HEAD` (every start but the first after an
upgrade) reads one row of ``alembic_version`` and loads none of Alembic or the scripts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from calsched.errors import JournalError, SchemaVersionError
from calsched.journal.engine import describe_error

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = [
    "HEAD",
    "alembic_config",
    "check_known",
    "check_schema",
    "current_revision",
    "downgrade",
    "ensure_schema",
    "head_revision",
    "is_at_head",
    "migrations_path",
    "upgrade",
]

#: The newest revision in ``migrations/versions``, known without loading the scripts.
#: ``tests/test_migrations.py`` proves it equals Alembic's head: a new migration must
#: change it in the same commit.
HEAD = "0008"


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
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_path()))
    if engine is not None:
        url = engine.url.render_as_string(hide_password=False)
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str:
    """The newest revision this code ships, as Alembic's script directory says."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (``None`` for an empty database)."""
    from alembic.runtime.migration import MigrationContext

    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except SQLAlchemyError as exc:
        raise JournalError(f"cannot read the database: {describe_error(exc)}") from None


def is_at_head(engine: Engine) -> bool:
    """Whether the database is at :data:`HEAD`, by one read of ``alembic_version``.

    ``False`` whenever that read cannot say yes (no such table, several rows, another
    revision, an error): the caller then asks Alembic itself, which gives the real answer
    or the real error.
    """
    try:
        with engine.connect() as conn:
            found = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    except SQLAlchemyError:
        return False
    return found == [HEAD]


def ensure_schema(engine: Engine, *, upgrade: bool = False) -> None:
    """Check (or with ``upgrade``, migrate) the schema to this code's head.

    Raises :class:`SchemaVersionError` when it is not at head afterwards, and when the
    database is at a revision this code does not know (a newer calsched migrated it: an
    older one must not touch it).
    """
    if is_at_head(engine):
        return
    if upgrade:
        found = current_revision(engine)
        if found is not None and found != head_revision():
            check_known(found)
        _upgrade_to(engine, "head")
    check_schema(engine)


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Upgrade the database to ``revision`` (default: the newest)."""
    _upgrade_to(engine, revision)


def _upgrade_to(engine: Engine, revision: str) -> None:
    # Separate from upgrade(): ensure_schema's ``upgrade`` flag shadows that name there.
    from alembic import command

    _run(engine, lambda cfg: command.upgrade(cfg, revision))


def downgrade(engine: Engine, revision: str) -> None:
    """Downgrade the database to ``revision`` (``base`` drops everything)."""
    from alembic import command

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
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    known = {rev.revision for rev in script.walk_revisions()}
    if revision not in known:
        raise SchemaVersionError(revision, head_revision())


def check_schema(engine: Engine) -> None:
    """Raise :class:`SchemaVersionError` unless the database is at this code's head."""
    if is_at_head(engine):
        return
    found = current_revision(engine)
    expected = head_revision()
    if found != expected:
        raise SchemaVersionError(found, expected)
