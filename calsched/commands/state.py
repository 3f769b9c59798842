"""``calsched state --at TIME``: what was active at a moment of the past, from the journal.

It folds the events up to that moment (:func:`calsched.journal.history.state_at`); the
``slots`` projection (the present) is not read. No daemon needs to run.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import typer

from calsched.commands.common import (
    JsonOption,
    config_of,
    console,
    iso,
    new_table,
    open_journal,
    parse_when,
    print_json,
    short_time,
)
from calsched.model import SlotView, format_time

__all__ = ["state_command"]


def _row(view: SlotView) -> dict[str, Any]:
    return {
        "slot_id": view.slot_id,
        "agent_id": view.agent_id,
        "state": view.state.value,
        "attempt": view.attempt,
        "since": iso(view.updated_at),
        "received_at": iso(view.received_at),
        "started_at": iso(view.started_at),
        "reason": view.reason,
        "last_seq": view.last_seq,
    }


def state_command(
    ctx: typer.Context,
    at: Annotated[
        str,
        typer.Option(
            "--at",
            metavar="TIME",
            help="The moment: RFC 3339 (UTC if no offset), 'now', or -2h/-7d relative to now.",
        ),
    ],
    agent: Annotated[str | None, typer.Option("--agent", "-a", help="Only this agent.")] = None,
    as_json: JsonOption = False,
) -> None:
    """What was active at TIME: each live slot's state, attempt and since when.

    Folds the journal's events recorded up to TIME (the slots table is not read), so it
    shows what the scheduler held then. Slots completed or aborted by then are left out.

    Example: calsched state --at 2026-12-02T07:54:16Z
    """
    moment = parse_when(at, option="--at")
    cfg = config_of(ctx)
    from calsched.journal.history import state_at

    with open_journal(cfg) as journal:
        views = state_at(journal.engine, journal.identifier, moment, agent_id=agent)
    rows = [_row(v) for v in views]
    if as_json:
        print_json({"at": format_time(moment), "identifier": cfg.identifier, "slots": rows})
        return
    _print_table(moment, rows)


def _print_table(moment: datetime, rows: list[dict[str, Any]]) -> None:
    # Five short columns: fits an 80-column terminal with ids of a dozen characters.
    table = new_table(
        "slot", "agent", "state", "att", "since", title=f"active at {short_time(iso(moment))}"
    )
    for row in rows:
        table.add_row(
            row["slot_id"],
            row["agent_id"],
            row["state"],
            str(row["attempt"]),
            short_time(row["since"]),
        )
    console().print(table)
    if not rows:
        typer.echo(f"no slot was active at {format_time(moment)}", err=True)
