"""``calsched outbox list|retry|discard``: the status updates the backend has not taken.

``list`` reads the journal database directly. ``retry`` and ``discard`` are writes, so
they go through the running daemon's one write gateway: its control API, with the admin
token, journaled as the operator's (``operator_actions``). With no daemon answering, they
write the journal themselves under the identifier's lease (as ``journal rebuild`` does);
if a live process holds that lease but its control API does not answer, they refuse.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from calsched.commands.common import (
    EXIT_USAGE,
    JsonOption,
    config_of,
    console,
    fail,
    holding_lease,
    new_table,
    open_journal,
    print_json,
    short_time,
)
from calsched.config import Config
from calsched.errors import LeaseHeldError
from calsched.model import Actor

__all__ = ["discard", "list_rows", "outbox_app", "retry"]

outbox_app = typer.Typer(
    help="Status updates the backend has not taken yet: list, retry or discard them."
)


@outbox_app.callback(invoke_without_command=True)
def _group(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit()


@outbox_app.command("list")
def list_rows(
    ctx: typer.Context,
    dead: Annotated[bool, typer.Option("--dead", help="Only dead-lettered rows.")] = False,
    limit: Annotated[
        int, typer.Option(min=0, help="At most this many rows, oldest first (0: all).")
    ] = 50,
    as_json: JsonOption = False,
) -> None:
    """Outbox rows not yet delivered (pending and dead-lettered), oldest first.

    Reads the journal database; no daemon needed.

    Example: calsched outbox list --dead
    """
    from calsched.journal.dead_letters import DeadLetters, row_wire

    cfg = config_of(ctx)
    with open_journal(cfg) as journal:
        letters = DeadLetters(journal.engine, cfg.identifier)
        rows, total = letters.undelivered(dead_only=dead, limit=limit or None)
    wire = [row_wire(r) for r in rows]
    if as_json:
        print_json({"rows": wire, "total": total})
        return
    table = new_table("id", "slot", "att", "status", "state", "tries", "next / dead", "error")
    for row in wire:
        when = row["dead_at"] if row["dead_at"] else row["next_try_at"]
        table.add_row(
            str(row["id"]),
            str(row["slot_id"]),
            str(row["attempt"]),
            str(row["status"]),
            str(row["state"]),
            str(row["tries"]),
            short_time(when),
            str(row["last_error"] or ""),
        )
    console().print(table)
    if not rows:
        typer.echo("no dead-lettered rows" if dead else "no undelivered rows", err=True)
    elif len(rows) < total:
        typer.echo(f"showing {len(rows)} of {total}; --limit 0 shows all", err=True)


@outbox_app.command()
def retry(
    ctx: typer.Context,
    row_id: Annotated[int | None, typer.Argument(metavar="ID", help="The row's id.")] = None,
    all_dead: Annotated[bool, typer.Option("--all-dead", help="Every dead row.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Send an outbox row again now (a dead one is revived), or every dead row.

    Through the running daemon (admin token); with none running, under its lease.

    Example: calsched outbox retry 42
    """
    if (row_id is None) == (not all_dead):
        fail("give exactly one of ID or --all-dead", EXIT_USAGE)
    cfg = config_of(ctx)
    path = "/v1/outbox/dead/retry" if row_id is None else f"/v1/outbox/{row_id}/retry"
    answer = _through_daemon(cfg, path, {})
    if answer is None:
        ids = _offline(cfg, lambda letters, conn: letters.retry_in(conn, row_id, Actor.operator))
        answer = {"retried": ids}
    if as_json:
        print_json(answer)
        return
    ids = answer.get("retried") or []
    typer.echo(f"retried {len(ids)} row(s): {', '.join(map(str, ids)) or 'none was dead'}")


@outbox_app.command()
def discard(
    ctx: typer.Context,
    row_id: Annotated[int, typer.Argument(metavar="ID", help="The row's id.")],
    reason: Annotated[str, typer.Option(help="Why the backend need not hear it (recorded).")],
    as_json: JsonOption = False,
) -> None:
    """Give up on an outbox row: settle it undelivered, recorded as the operator's action.

    Through the running daemon (admin token); with none running, under its lease.

    Example: calsched outbox discard 42 --reason "slot deleted in the calendar"
    """
    from calsched.journal.dead_letters import row_wire

    if not reason.strip():
        fail("--reason must say why the row is discarded", EXIT_USAGE)
    cfg = config_of(ctx)
    answer = _through_daemon(cfg, f"/v1/outbox/{row_id}/discard", {"reason": reason})
    if answer is None:
        row = _offline(
            cfg, lambda letters, conn: letters.discard_in(conn, row_id, reason, Actor.operator)
        )
        answer = {"discarded": row_wire(row), "reason": reason}
    if as_json:
        print_json(answer)
        return
    shown = answer.get("discarded") or {}
    typer.echo(
        f"discarded outbox row {shown.get('id')} of slot {shown.get('slot_id')} "
        f"({shown.get('status')}, attempt {shown.get('attempt')})"
    )


def _through_daemon(cfg: Config, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """POST to the daemon's control API as the operator; ``None`` if no daemon answers.

    Without the secret file no daemon of this configuration ever ran, so none is asked.
    A protocol error ends the command with its message (exit 1).
    """
    import httpx

    from calsched.tokens import admin_token, load_or_create_secret

    secret_file = cfg.control.secret_file.expanduser()
    if not secret_file.exists():
        return None
    bearer = admin_token(load_or_create_secret(secret_file))
    url = cfg.control.url
    try:
        with httpx.Client(base_url=url, timeout=30.0) as client:
            response = client.post(path, json=body, headers={"Authorization": f"Bearer {bearer}"})
    except httpx.ConnectError:
        return None
    except httpx.HTTPError as exc:
        fail(f"control API request to {url} failed: {type(exc).__name__}")
    try:
        data = response.json()
    except ValueError:
        data = None
    if response.is_success and isinstance(data, dict):
        return data
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        fail(f"{data['message']} ({data.get('error', 'error')})")
    return fail(f"the control API at {url} answered HTTP {response.status_code}")


def _offline(cfg: Config, work: Any) -> Any:
    """Run ``work(letters, conn)`` in a journal write under the identifier's lease."""
    from calsched.journal.dead_letters import DeadLetters
    from calsched.journal.engine import writing

    with open_journal(cfg) as journal:
        try:
            with holding_lease(cfg, journal):
                letters = DeadLetters(journal.engine, cfg.identifier)
                with writing(journal.engine, "journal", check=journal.check_fence) as conn:
                    return work(letters, conn)
        except LeaseHeldError as exc:
            raise exc.with_hint(
                f"its control API at {cfg.control.url} does not answer, and the journal "
                "may only be written by the lease holder; check control.port or wait"
            ) from None
