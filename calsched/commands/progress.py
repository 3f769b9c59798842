"""Progress bars for long work (``journal verify``, ``journal rebuild``) on stderr.

Shown only when stderr is a terminal, so pipes, logs and ``--json`` output stay clean;
the bar is transient: once the work is done, only its result remains on the screen.
The journal reports rows read through a plain callback (it knows no terminal).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["progress_bar"]


@contextmanager
def progress_bar(
    description: str, total: Callable[[], int], *, quiet: bool = False
) -> Iterator[Callable[[int], None] | None]:
    """A bar of ``total()`` steps on stderr; yields the callback that advances it by
    ``n``, or ``None`` (nothing to show) when stderr is not a terminal or ``quiet``.

    ``total`` is called only when the bar is shown: counting may itself cost a query.
    """
    from rich.console import Console

    err = Console(stderr=True)
    if quiet or not err.is_terminal:
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(description, total=total())

        def advance(steps: int) -> None:
            bar.advance(task, steps)

        yield advance
