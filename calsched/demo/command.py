"""The ``calsched demo`` command, registered by :mod:`calsched.cli`.

Light on purpose: the run (uvicorn, starlette, httpx, the journal) is imported only when
the command runs, so ``calsched --help`` stays fast.
"""

from __future__ import annotations

from typing import Annotated

import typer

from calsched.demo.scenario import DEFAULT_SEED, DemoOptions

__all__ = ["demo_command"]


def demo_command(
    seed: Annotated[
        int, typer.Option(help="Seed of the simulated agents' choices and delays.")
    ] = DEFAULT_SEED,
    keep: Annotated[
        bool,
        typer.Option("--keep", help="Keep the temporary directory (database, config, daemon log)."),
    ] = False,
    live: Annotated[
        bool | None,
        typer.Option(
            "--live/--no-live",
            help="Live view, or plain lines (default: live when stdout is a terminal).",
        ),
    ] = None,
) -> None:
    """Watch the real daemon survive a SIGKILL (about 20 s, loopback only).

    Runs `calsched run` on a throw-away database with the embedded calendar
    and a simulated webhook host whose agents complete, pause and resume,
    or abort their slots through the control API. Part-way it kills the
    daemon with SIGKILL, restarts it and shows the active slots came back;
    it ends with the slot history read from SQL.

    Example: calsched demo --no-live --seed 3
    """
    from calsched.demo.run import run_demo

    run_demo(DemoOptions(seed=seed, keep=keep, live=live))
