"""The ``calsched`` command: the daemon, the journal's reports, and the agents' tools.

Every command reads the configuration once (:func:`calsched.config.load_config`: defaults
< TOML file < ``CALSCHED_*`` < flags) and passes it down. Every
:class:`~calsched.errors.CalschedError` ends the command with ``error: <message>`` on
stderr and exit status 1; a usage mistake (a missing option, a bad choice) with one
``error:`` line and status 2. Neither shows a traceback.

This module is the root: the app, its error handling and global options, and ``run``.
The other commands live in :mod:`calsched.commands` by concept and are registered at the
bottom; another module adds a command with :func:`register` (``calsched demo``). Heavy
imports (uvicorn, starlette, the adapters) happen inside the commands that use them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from calsched._version import __version__
from calsched.commands import calendar, control, doctor, journal, mcp, outbox, prune
from calsched.commands.common import EXIT_ERROR, EXIT_USAGE, CliState, config_of, fail
from calsched.daemon import EXIT_RESTART, run_daemon
from calsched.errors import CalschedError

__all__ = ["EXIT_ERROR", "EXIT_RESTART", "EXIT_USAGE", "app", "main", "register"]


# -- errors: one line, no traceback ------------------------------------------------------


def _metavar(param: Any) -> str:
    """What help shows after an option: nothing for a flag, the choices, or a word."""
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return ""
    described = param.type_descriptor
    if described.is_choice:
        return "|".join(str(getattr(c, "value", c)) for c in described.choices or ())
    if described.is_path:
        return "PATH"
    annotation = described.annotation
    if annotation is int:
        return "N"
    if annotation is float:
        return "NUMBER"
    return "TEXT"


def _no_type(ctx: Any) -> None:
    """No type column for an argument in help (see :func:`_plain_metavars`)."""


def _plain_metavars(command: Any, ctx: Any) -> None:
    """Give every option of ``command`` and its subcommands a metavar, once per app.

    typer 0.29 shows an option without a metavar by its Python type in angle brackets
    (``<str>``, ``<int range>``, and ``<bool>`` even on a flag, which takes no value).
    Done here, over the whole tree, so a command another module registers gets it too.
    """
    for param in command.get_params(ctx):
        if param.param_type_name == "option" and param.metavar is None:
            param.metavar = _metavar(param)
        elif param.param_type_name == "argument":
            # An argument's name (its metavar, ``ID``) already says what it takes; typer
            # would add its Python type beside it (``<int>``).
            param.display_type_rich = _no_type
    for sub in getattr(command, "commands", {}).values():
        _plain_metavars(sub, ctx)


class _Group(typer.core.TyperGroup):
    """The root group: maps errors to one ``error:`` line and an exit status."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        """Parse as typer does, after giving every option a plain metavar for help."""
        _plain_metavars(self, ctx)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: Any) -> Any:
        """Run the command; a :class:`CalschedError` becomes ``error: ...`` and status 1."""
        try:
            return super().invoke(ctx)
        except CalschedError as exc:
            fail(str(exc))

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        """Like typer's ``main``, but a usage error is one ``error:`` line (status 2)."""
        if not standalone_mode:
            return super().main(
                args, prog_name, complete_var, standalone_mode, windows_expand_args, **extra
            )
        try:
            result = super().main(
                args, prog_name, complete_var, False, windows_expand_args, **extra
            )
        except typer.TyperException as exc:  # click's ClickException, as typer vendors it
            hint = ""
            usage_ctx = getattr(exc, "ctx", None)
            if usage_ctx is not None:
                hint = f" (see `{usage_ctx.command_path} --help`)"
            typer.echo(f"error: {exc.format_message()}{hint}", err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("error: aborted", err=True)
            sys.exit(EXIT_ERROR)
        # Without standalone mode, typer returns the status of a typer.Exit.
        sys.exit(result if isinstance(result, int) else 0)


def _help_if_bare(ctx: typer.Context) -> None:
    """A group called without a command prints its help (status 0)."""
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit()


app = typer.Typer(
    name="calsched",
    cls=_Group,
    help="Crash-tolerant calendar-slot scheduler for AI-agent hosts.",
    invoke_without_command=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
slots_app = typer.Typer(help="The embedded local calendar (used when no backend_url is set).")
journal_app = typer.Typer(help="Check the journal (projection, hash chain), rebuild, prune.")
db_app = typer.Typer(help="The database schema (Alembic migrations).")
backend_app = typer.Typer(help="The reference calendar backend.")
for _sub, _name in (
    (slots_app, "slots"),
    (journal_app, "journal"),
    (db_app, "db"),
    (backend_app, "backend"),
):
    _sub.callback(invoke_without_command=True)(_help_if_bare)
    app.add_typer(_sub, name=_name)


def register(name: str, command: Callable[..., Any]) -> None:
    """Add a top-level command from another module (``calsched demo``)."""
    app.command(name)(command)


# -- the root command and global options --------------------------------------------------


def _version(value: bool) -> None:
    if value:
        typer.echo(f"calsched {__version__}")
        raise typer.Exit()


ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        metavar="PATH",
        help="TOML configuration file (default: $CALSCHED_CONFIG, else the user config file).",
        dir_okay=False,
    ),
]


@app.callback()
def _root(
    ctx: typer.Context,
    config: ConfigOption = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            metavar="URL", help="Journal database URL (SQLAlchemy); overrides the config."
        ),
    ] = None,
    identifier: Annotated[
        str | None,
        typer.Option(metavar="ID", help="This plugin instance's name in the journal."),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            callback=_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """calsched: heartbeat a calendar backend, wake agents for their slots, journal it all."""
    ctx.obj = CliState(
        config_path=config, flags={"database_url": database_url, "identifier": identifier}
    )
    _help_if_bare(ctx)


# -- run ---------------------------------------------------------------------------------


@app.command()
def run(
    ctx: typer.Context,
    backend_url: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            help="Calendar backend base URL (default: the embedded local calendar).",
        ),
    ] = None,
    control_host: Annotated[
        str | None,
        typer.Option(metavar="HOST", help="Address the control API binds (default 127.0.0.1)."),
    ] = None,
    control_port: Annotated[
        int | None, typer.Option(metavar="PORT", help="Port of the control API (default 8765).")
    ] = None,
    heartbeat_interval: Annotated[
        float | None,
        typer.Option(metavar="SECONDS", help="Seconds between heartbeats (default 30)."),
    ] = None,
    log_json: Annotated[
        bool | None, typer.Option("--log-json/--log-text", help="Log lines as JSON.")
    ] = None,
    log_level: Annotated[
        str | None,
        typer.Option(metavar="LEVEL", help="debug, info, warning or error (default info)."),
    ] = None,
    exit_on_restart: Annotated[
        bool,
        typer.Option(help=f"Exit with status {EXIT_RESTART} when the backend asks for a restart."),
    ] = False,
    standby: Annotated[
        bool,
        typer.Option(
            help="If another process holds the identifier, wait and take over when it dies "
            "or its lease expires (instead of exiting 1)."
        ),
    ] = False,
) -> None:
    """Run the daemon: heartbeat, wake agents, serve the control API, until SIGTERM/SIGINT.

    One process holds an identifier at a time (a lease in the journal database): a
    second ``run`` exits 1 naming the holder, ``run --standby`` waits to take over.

    Example: calsched run --log-json
    """
    from calsched.logs import configure_logging

    cfg = config_of(
        ctx,
        backend_url=backend_url,
        control={"host": control_host, "port": control_port},
        scheduler={"heartbeat_interval_s": heartbeat_interval},
        log_json=log_json,
        log_level=log_level,
    )
    configure_logging(json_format=cfg.log_json, level=cfg.log_level)
    code = run_daemon(cfg, exit_on_restart=exit_on_restart, standby=standby, cli=_cli_prefix(ctx))
    if code:
        raise typer.Exit(code)


def _cli_prefix(ctx: typer.Context) -> list[str]:
    """How a command reaches this daemon: ``calsched`` with the same ``--config``."""
    state = ctx.find_root().obj
    path = state.config_path if isinstance(state, CliState) else None
    return ["calsched", "--config", str(path)] if path is not None else ["calsched"]


# -- the other commands ------------------------------------------------------------------

app.command()(journal.history)
app.command()(journal.events)
journal_app.command("verify")(journal.journal_verify)
journal_app.command("rebuild")(journal.journal_rebuild)
journal_app.command("prune")(prune.journal_prune)
db_app.command("upgrade")(journal.db_upgrade)
db_app.command("current")(journal.db_current)
app.command()(control.token)
app.command()(control.slot)
app.command()(control.complete)
app.command()(control.abort)
app.command()(control.pause)
app.command()(control.resume)
app.command()(control.status)
app.command()(mcp.mcp)
slots_app.command("add")(calendar.slots_add)
slots_app.command("list")(calendar.slots_list)
backend_app.command("serve")(calendar.backend_serve)
app.add_typer(outbox.outbox_app, name="outbox")
app.command()(doctor.doctor)


def main() -> None:
    """Console-script entry point (``calsched``)."""
    app()


# -- commands defined elsewhere: one line each -------------------------------------------
# Imported last: calsched.demo sits above this module and imports nothing heavy at the top.
from calsched.demo import demo_command  # noqa: E402

register("demo", demo_command)
from calsched.commands.state import state_command  # noqa: E402

register("state", state_command)
