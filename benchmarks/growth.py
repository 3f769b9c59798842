"""Cost growth: heartbeat handling and restart time as the live set and the history grow.

``python -m benchmarks.growth [--quick]``

- Heartbeat handling: one heartbeat delivering N new slots (one per agent), until every
  wake is done (:func:`benchmarks.burst.burst_calsched`: SQLite FULL, in-memory backend
  and host), N = 1k, 10k, 100k, each run once under a time cap; the seed-shaped
  in-memory scheduler beside it. A run cut off by its cap is shown as such, with how
  many of the N it had woken.
- Restart: start to the first heartbeat in-process
  (:func:`benchmarks.restart.restart_in_process`) over fabricated journals with 1k, 10k
  and 100k active slots and 10k, 100k and 1M events of history: the 3 x 3 grid, each
  point the median of the interleaved repeats.

Full mode writes ``docs/performance-growth.md`` and ``docs/performance-growth.png``;
quick mode writes the same to ``benchmarks/results/`` (sizes divided, seconds long).
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.burst import BurstResult, burst_calsched, burst_seed, make_slots
from benchmarks.common import interleaved, median, progress
from benchmarks.restart import fabricated, restart_in_process

__all__ = ["Growth", "main", "measure", "render_markdown", "render_plot"]

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Growth:
    """Every point measured, in a shape the renderers read."""

    quick: bool
    cap_s: float
    burst: dict[int, BurstResult]
    burst_seed: dict[int, BurstResult]
    #: (active, history) -> median ms
    restart: dict[tuple[int, int], float]
    repeats: int


def measure(*, quick: bool, repeats: int, workdir: Path) -> Growth:
    """Run every point; bounded by the cap per burst and the restart module's own cap."""
    sizes = [50, 150, 300] if quick else [1_000, 10_000, 100_000]
    actives = [50, 150, 300] if quick else [1_000, 10_000, 100_000]
    histories = [1_000, 4_000, 20_000] if quick else [10_000, 100_000, 1_000_000]
    cap_s = 30.0 if quick else 300.0
    burst: dict[int, BurstResult] = {}
    seed: dict[int, BurstResult] = {}
    for n in sizes:
        slots = make_slots(n)
        seed[n] = burst_seed(slots)
        burst[n] = burst_calsched(slots, workdir / "burst", cap_s)
        progress(f"growth: burst {n:,}: {burst[n].seconds:.1f} s, {burst[n].woken:,} woken")
    restart: dict[tuple[int, int], float] = {}
    for active in actives:
        urls = {h: fabricated(workdir / "restart", active, h) for h in histories}
        restart_in_process(urls[histories[0]])  # one-time costs, as in benchmarks.restart
        samples = interleaved(
            repeats,
            {str(h): (lambda url=url: restart_in_process(url) * 1000) for h, url in urls.items()},
        )
        for h in histories:
            restart[(active, h)] = median(samples[str(h)])
        progress(f"growth: restart with {active:,} active done")
        for url in urls.values():  # the 1M-event files are large: one active size at a time
            Path(url.removeprefix("sqlite:///")).unlink(missing_ok=True)
    return Growth(quick, cap_s, burst, seed, restart, repeats)


def _burst_cell(result: BurstResult, cap_s: float) -> str:
    if result.finished:
        return f"{result.seconds * 1000:,.0f} ms"
    return f"did not finish in {cap_s:g} s ({result.woken:,} of {result.total:,} woken)"


def render_markdown(g: Growth, png_name: str, command: str) -> str:
    """The page: how it was measured, both tables, the plot."""
    histories = sorted({h for _, h in g.restart})
    actives = sorted({a for a, _ in g.restart})
    lines = [
        "# Cost growth" + (" (quick mode: small sizes, not the real figures)" if g.quick else ""),
        "",
        f"Measured by `{command}` on {time.strftime('%Y-%m-%d')}, on a 2-core machine shared",
        "with other work: absolute times are noisy, the shape of the growth is the point.",
        "",
        "## Heartbeat handling",
        "",
        "One heartbeat delivering N new slots, one per agent, until every wake is done",
        "(`heartbeat_once()` then `idle()`, which includes telling the backend each slot is",
        "`in_progress`), on a SQLite journal with `synchronous=FULL`, an in-memory backend",
        f"and host. One run per size, cut off after {g.cap_s:g} s. The seed-shaped",
        "scheduler (`benchmarks/seed_shaped.py`, memory only, no journal) is beside it.",
        "A run that did not finish may have woken every agent and still been telling the",
        "backend (the outbox) when the cap came.",
        "",
        "| N slots | calsched | per slot | seed-shaped |",
        "| ---: | --- | ---: | ---: |",
    ]
    for n, result in sorted(g.burst.items()):
        per = f"{result.seconds * 1000 / result.total:,.2f} ms" if result.finished else "-"
        seed = g.burst_seed[n]
        lines.append(
            f"| {n:,} | {_burst_cell(result, g.cap_s)} | {per} | {seed.seconds * 1000:,.1f} ms |"
        )
    lines += [
        "",
        "## Restart",
        "",
        "Start to the first heartbeat sent, in-process (`Journal.open` with the upgrade",
        "check, `Scheduler.start()`, until the backend receives the beat), over journals",
        "fabricated with `benchmarks/fabricate.py`: the active slots are `in_progress` (3",
        "events each), the history is finished slots (4 events each) before them. Median",
        f"of {g.repeats} interleaved starts per point, in ms.",
        "",
        "| active slots | " + " | ".join(f"history {h:,} events" for h in histories) + " |",
        "| ---: | " + " | ".join("---:" for _ in histories) + " |",
    ]
    for a in actives:
        cells = " | ".join(f"{g.restart[(a, h)]:,.0f}" for h in histories)
        lines.append(f"| {a:,} | {cells} |")
    ratios = ", ".join(
        f"{a:,} active: {g.restart[(a, histories[-1])] / g.restart[(a, histories[0])]:.2f}x"
        for a in actives
    )
    lines += [
        "",
        f"Largest history against smallest, per live set: {ratios}.",
        "",
        f"![cost growth]({png_name})",
        "",
    ]
    return "\n".join(lines)


def render_plot(g: Growth, path: Path) -> None:
    """Two panels, log-log: heartbeat handling vs N; restart vs history per live set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    ns = sorted(g.burst)
    done = [n for n in ns if g.burst[n].finished]
    cut = [n for n in ns if not g.burst[n].finished]
    left.plot(done, [g.burst[n].seconds for n in done], "o-", label="calsched (SQLite FULL)")
    if cut:
        left.plot(
            cut,
            [g.burst[n].seconds for n in cut],
            "x",
            color="red",
            markersize=10,
            label=f"calsched: did not finish in {g.cap_s:g} s",
        )
        for n in cut:
            r = g.burst[n]
            left.annotate(f"{r.woken:,}/{r.total:,} woken", (n, r.seconds), fontsize=8)
    left.plot(ns, [g.burst_seed[n].seconds for n in ns], "s--", label="seed-shaped (memory)")
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("new slots in one heartbeat")
    left.set_ylabel("seconds until every wake is done")
    left.set_title("Heartbeat handling")
    left.legend(fontsize=8)
    histories = sorted({h for _, h in g.restart})
    for a in sorted({a for a, _ in g.restart}):
        right.plot(histories, [g.restart[(a, h)] for h in histories], "o-", label=f"{a:,} active")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("history (events of finished slots)")
    right.set_ylabel("ms to the first heartbeat")
    right.set_title("Restart (in-process)")
    right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, then write the table and the plot."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.growth")
    parser.add_argument("--quick", action="store_true", help="small sizes, seconds long")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="directory for the .md and .png")
    args = parser.parse_args(argv)
    out = args.out or (ROOT / "benchmarks" / "results" if args.quick else ROOT / "docs")
    name = "growth" if args.quick else "performance-growth"
    workdir = Path(tempfile.mkdtemp(prefix="calsched-growth-"))
    try:
        g = measure(quick=args.quick, repeats=max(1, args.repeats), workdir=workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    command = "python -m benchmarks.growth" + (" --quick" if args.quick else "")
    render_plot(g, out / f"{name}.png")
    (out / f"{name}.md").write_text(render_markdown(g, f"{name}.png", command))
    print(f"wrote {out / name}.md and .png")
    bad = [v for v in g.restart.values() if not math.isfinite(v)]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
