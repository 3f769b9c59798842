"""``calsched journal prune``: export the events of slots that ended long ago, then
delete them (:mod:`calsched.journal.retention`), under the identifier's lease."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from calsched.commands.common import (
    JsonOption,
    config_of,
    fail,
    holding_lease,
    open_journal,
    parse_when,
    print_json,
    sqlite_path,
)
from calsched.commands.progress import progress_bar
from calsched.model import format_time

__all__ = ["journal_prune"]


def journal_prune(
    ctx: typer.Context,
    before: Annotated[
        str,
        typer.Option(
            metavar="TIME", help="Prune slots that ended before: RFC 3339, or -90d relative."
        ),
    ],
    export: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE", help="Write the removed events here first (JSON Lines, gzip)."
        ),
    ] = None,
    no_export: Annotated[
        bool, typer.Option("--no-export", help="Delete without keeping a copy (warns).")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would go; change nothing.")
    ] = False,
    vacuum: Annotated[
        bool, typer.Option("--vacuum", help="SQLite: VACUUM afterwards, to return the space.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Export the events of slots that ended before TIME, then delete them, keeping the
    hash chain verifiable (refused while a daemon runs).

    Never touches a slot that has not ended, nor one with outbox rows still waiting.

    Example: calsched journal prune --before -90d --export 2026-q3.jsonl.gz
    """
    when = parse_when(before, option="--before")
    if export is not None and no_export:
        fail("--export and --no-export: choose one")
    if not dry_run and export is None and not no_export:
        fail("--export FILE is required (or --no-export to delete without a copy)")
    if export is not None and not dry_run and (export.exists() or not export.parent.is_dir()):
        fail(f"--export: {export} already exists or its directory does not")
    cfg = config_of(ctx)
    from calsched.journal.retention import Retention

    path = sqlite_path(cfg.database_url)
    size_before = _size(path)
    with open_journal(cfg) as journal:
        retention = Retention(journal.engine, cfg.identifier, check=journal.check_fence)
        if dry_run:
            plan = retention.plan(when)
            summary = _summary(plan, dry_run=True)
            if as_json:
                print_json(summary)
            else:
                typer.echo(
                    f"would prune {len(plan.slots)} slot(s) ended before {format_time(when)}: "
                    f"{plan.events} event(s); {_kept(plan)} (dry run: nothing changed)"
                )
            return
        with holding_lease(cfg, journal):
            plan = retention.plan(when)
            if no_export and plan.slots:
                typer.echo(
                    f"WARNING: --no-export: the {plan.events} event(s) of {len(plan.slots)} "
                    "slot(s) are deleted with no copy kept",
                    err=True,
                )
            with progress_bar(
                "exporting, then deleting", lambda: plan.events + len(plan.slots), quiet=as_json
            ) as advance:
                report = retention.prune(plan, export=export, progress=advance)
        journal.chain_head.forget()
        vacuumed = False
        if vacuum and path is not None and report.events_removed:
            _vacuum(journal)
            vacuumed = True
    summary = _summary(plan, dry_run=False)
    summary.update(
        events_removed=report.events_removed,
        export=None
        if report.export is None
        else {
            "path": str(report.export),
            "bytes": report.export_bytes,
            "sha256": report.export_sha256,
        },
        checkpoints=report.checkpoints,
        vacuumed=vacuumed,
        database_bytes_before=size_before,
        database_bytes_after=_size(path),
    )
    if path is not None and report.events_removed and not vacuumed:
        typer.echo(
            "the file keeps its size until VACUUM: run with --vacuum (or `sqlite3 <db> VACUUM`)"
            " to return the space",
            err=True,
        )
    if as_json:
        print_json(summary)
        return
    copy = (
        f"exported to {report.export} ({report.export_bytes:,} bytes, sha256 "
        f"{report.export_sha256})"
        if report.export is not None
        else "not exported"
    )
    typer.echo(
        f"pruned {len(plan.slots)} slot(s) ended before {format_time(when)}: "
        f"{report.events_removed} event(s) removed, {copy}; {report.checkpoints} chain "
        f"checkpoint(s); {_kept(plan)}"
    )


def _kept(plan: Any) -> str:
    return (
        f"kept {plan.kept_not_ended} slot(s) not ended, {plan.kept_pending_outbox} with "
        f"outbox rows still waiting, {plan.kept_recent} ended since"
    )


def _summary(plan: Any, *, dry_run: bool) -> dict[str, Any]:
    return {
        "before": format_time(plan.before),
        "dry_run": dry_run,
        "slots_pruned": len(plan.slots),
        "events": plan.events,
        "kept_not_ended": plan.kept_not_ended,
        "kept_pending_outbox": plan.kept_pending_outbox,
        "kept_ended_since": plan.kept_recent,
    }


def _size(path: Path | None) -> int | None:
    if path is None or not path.exists():
        return None
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def _vacuum(journal: Any) -> None:
    # VACUUM runs outside any transaction: on the driver's own connection (calsched
    # turns pysqlite's implicit transactions off), then a checkpoint empties the WAL.
    raw = journal.engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("VACUUM")
        cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        cursor.close()
    finally:
        raw.close()
