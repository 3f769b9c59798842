"""The kill -9 driver (issue 10, points 1 and 2): ``python -m tests.reliability.driver``.

It runs ``rigs`` independent :class:`~tests.reliability.rig.Rig` s side by side (each a
real ``calsched run`` subprocess with its own journal, backend, host and agents) under a
steady load of new slots and agent tool calls, and ends each daemon lifetime with a
SIGKILL, ``count`` times in all, chosen by a seeded RNG among:

- ``random``: SIGKILL from the driver at a random moment after the daemon is up;
- ``after_commit``, ``after_wake``, ``after_outbox_send``: the daemon kills itself on
  the n-th hit of that seam (``CALSCHED_FAILPOINT``, :mod:`calsched.failpoints`);
- ``during_recovery``: killed in the middle of its replay at start.

Before some starts it also kills the daemon during replay several times in a row
(``replays`` in all, point 2): each killed replay must leave the journal exactly as it
was (the state after two replays equals the state after one) and ``verify`` clean.

After the last kill the daemon is started clean, the load stops, the rig drains (every
slot terminal at the backend, the outbox empty), the daemon is stopped, and
:func:`~tests.reliability.audit.audit` checks the promises. One summary line prints the
figures (docs/reliability.md quotes it).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

from starlette.requests import ClientDisconnect

from calsched.journal import Journal
from calsched.testing import serve_backend
from tests.reliability.audit import Findings, audit, rows, snapshot
from tests.reliability.rig import STEP_TIMEOUT_S, Rig, until
from tests.reliability.zygote import ForkServer

__all__ = ["MODES", "Summary", "main", "run"]

#: How a daemon lifetime ends; the weights favour the seams over the random moment.
MODES = ("random", "after_commit", "after_wake", "after_outbox_send", "during_recovery")
_WEIGHTS = (3, 3, 2, 2, 1)
#: How long an armed seam may take to be reached before the driver kills at random.
_SEAM_WAIT_S = 4.0
#: Open slots per rig the load keeps at most (three per agent).
_BACKLOG = 12


@dataclass
class Summary:
    """What a run did and found; :meth:`line` is the one line the lead quotes."""

    seed: int
    kills: Counter[str] = field(default_factory=Counter)
    unreached: int = 0
    replay_kills: int = 0
    replay_changed: list[str] = field(default_factory=list)
    findings: Findings = field(default_factory=Findings)
    elapsed_s: float = 0.0

    @property
    def kill_points(self) -> int:
        """Daemon lifetimes ended by SIGKILL (not counting the replay bursts)."""
        return sum(self.kills.values())

    @property
    def ok(self) -> bool:
        """Whether every promise held."""
        return self.findings.ok and not self.replay_changed

    def line(self) -> str:
        """The figures, on one line."""
        f = self.findings
        modes = " ".join(f"{m}={self.kills[m]}" for m in MODES)
        return (
            f"crash-test seed={self.seed} kill_points={self.kill_points} ({modes}; "
            f"armed-but-unreached->random={self.unreached}) "
            f"replay_kills={self.replay_kills} replay_changed={len(self.replay_changed)} "
            f"acknowledged={f.acknowledged} (tool_calls={f.acknowledged - f.listed} "
            f"slots_listed={f.listed}) events={f.events} lost={len(f.lost)} "
            f"torn={len(f.torn)} corrupt={len(f.corrupt)} undelivered={len(f.undelivered)} "
            f"duplicates_after_dedupe={len(f.duplicates)} "
            f"double_terminal={len(f.double_terminal)} "
            f"redelivered_posts_deduped={f.redelivered_posts} extra_wakes={f.extra_wakes} "
            f"unexplained_wakes={len(f.unexplained_wakes)} elapsed_s={self.elapsed_s:.0f}"
        )


async def _load(rig: Rig, stop: asyncio.Event) -> None:
    """New slots, due now, for as long as the kills go on, at most :data:`_BACKLOG` open.

    The cap keeps every state in play (pending behind a busy agent, dispatching, in
    progress, paused) without a backlog that would make the final drain long.
    """
    assert rig.calendar is not None
    calendar = rig.calendar
    while not stop.is_set():
        slots = await asyncio.to_thread(calendar.list)
        if sum(not s.status.terminal for s in slots) < _BACKLOG:
            rig.add_slot()
        await asyncio.sleep(rig.rng.uniform(0.02, 0.2))


async def _replay_burst(rig: Rig, times: int, summary: Summary) -> None:
    """Kill the daemon during its replay ``times`` in a row; nothing may change."""
    before = snapshot(rig.db_path)
    for _ in range(times):
        await rig.start("during_recovery:1")
        code = await rig.wait_exit(STEP_TIMEOUT_S)
        if code != -signal.SIGKILL:
            await rig.kill()
            raise AssertionError(f"rig {rig.index}: replay kill exited {code}\n{rig.logs()}")
        summary.replay_kills += 1
        if snapshot(rig.db_path) != before:
            summary.replay_changed.append(f"rig {rig.index} replay kill {summary.replay_kills}")
    journal = Journal.open(f"sqlite:///{rig.db_path}", rig.identifier)
    try:
        mismatches = journal.verify()
    finally:
        journal.close()
    summary.replay_changed.extend(f"rig {rig.index}: {m}" for m in mismatches)


async def _lifetime(rig: Rig, mode: str, summary: Summary) -> None:
    """One daemon lifetime, ended by a SIGKILL the way ``mode`` says."""
    if mode == "random":
        await rig.start()
        if not await rig.wait_ready():
            raise AssertionError(f"rig {rig.index}: the daemon did not start\n{rig.logs()}")
        await asyncio.sleep(rig.plan.uniform(0.0, 0.6))
        await rig.kill()
        summary.kills[mode] += 1
        return
    hit = 1 if mode == "during_recovery" else rig.plan.randint(1, 3)
    if mode == "during_recovery":
        before = snapshot(rig.db_path) if rig.db_path.exists() else None
    await rig.start(f"{mode}:{hit}")
    code = await rig.wait_exit(_SEAM_WAIT_S)
    if code is None:  # the load did not reach the seam in time: a random kill after all
        await rig.kill()
        summary.unreached += 1
        summary.kills["random"] += 1
        return
    if code != -signal.SIGKILL:
        raise AssertionError(f"rig {rig.index}: {mode}:{hit} exited {code}\n{rig.logs()}")
    summary.kills[mode] += 1
    if mode == "during_recovery" and before is not None:
        summary.replay_kills += 1
        if snapshot(rig.db_path) != before:
            summary.replay_changed.append(f"rig {rig.index} during_recovery kill")


async def _drain(rig: Rig) -> None:
    """Start clean and wait until every slot is over at the backend and delivered."""
    await rig.start()
    if not await rig.wait_ready():
        raise AssertionError(f"rig {rig.index}: the daemon did not start\n{rig.logs()}")
    assert rig.calendar is not None
    calendar = rig.calendar

    async def drained() -> bool:
        slots = await asyncio.to_thread(calendar.list)
        if not all(s.status.terminal for s in slots) or not rig.idle:
            return False
        return not rows(rig.db_path, "SELECT id FROM outbox WHERE delivered_at IS NULL")

    await until("the drain", drained, rig)
    assert rig.proc is not None
    rig.proc.send_signal(signal.SIGTERM)
    if await rig.wait_exit(STEP_TIMEOUT_S) != 0:
        raise AssertionError(f"rig {rig.index}: no clean stop after the drain\n{rig.logs()}")


async def _one_rig(rig: Rig, kills: int, replays: int, summary: Summary) -> Findings:
    stop = asyncio.Event()
    load = asyncio.create_task(_load(rig, stop))
    try:
        bursts = _split(replays, max(1, kills // 4)) if replays else []
        for i in range(kills):
            if i % 4 == 3 and bursts:
                await _replay_burst(rig, bursts.pop(), summary)
            await _lifetime(rig, rig.plan.choices(MODES, _WEIGHTS)[0], summary)
        for left in bursts:
            await _replay_burst(rig, left, summary)
    finally:
        stop.set()
        await load
    await _drain(rig)
    assert rig.calendar is not None
    assert rig.counter is not None
    listed = [s.id for s in rig.calendar.list() if s.holder == rig.identifier]
    return await asyncio.to_thread(
        audit,
        rig.db_path,
        rig.config_path,
        acks=[(a.slot_id, a.attempt, a.kind) for a in rig.acks],
        listed=listed,
        receipts=rig.calendar.receipts(),
        posts=rig.counter.posts,
        wakes=rig.wakes,
    )


def _split(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` near-equal positive counts (fewer parts if total is small)."""
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


async def run(seed: int, count: int, *, rigs: int = 3, replays: int = 0, root: Path) -> Summary:
    """``count`` kill points and ``replays`` replay kills over ``rigs`` rigs under ``root``."""
    summary = Summary(seed)
    started = time.monotonic()
    master = random.Random(seed)
    # Two RNGs per rig: the kill plan draws only from ``plan`` (the same for a seed
    # whatever the timing); the load and the agents' choices from ``rng``.
    made = [
        Rig(
            root / f"rig{i}",
            i,
            random.Random(master.getrandbits(64)),
            random.Random(master.getrandbits(64)),
        )
        for i in range(min(rigs, count) or 1)
    ]
    forks = ForkServer()
    async with AsyncExitStack() as stack:
        await forks.open()
        stack.push_async_callback(forks.aclose)  # last out: after every rig killed its daemon
        for rig in made:
            rig.forks = forks
            stack.push_async_callback(rig.aclose)
            backend_url = await stack.enter_async_context(serve_backend(rig.backend_app()))
            host_url = await stack.enter_async_context(serve_backend(rig.host_app()))
            rig.write_config(backend_url, f"{host_url}/wake")
            rig.open_client()
        shares = _split(count, len(made)) + [0] * len(made)
        replay_shares = _split(replays, len(made)) + [0] * len(made) if replays else []
        results = await asyncio.gather(
            *(
                _one_rig(rig, shares[i], replay_shares[i] if replays else 0, summary)
                for i, rig in enumerate(made)
            )
        )
    for found in results:
        summary.findings.add(found)
    summary.elapsed_s = time.monotonic() - started
    return summary


class _NoDisconnects(logging.Filter):
    """Drop uvicorn's traceback for a client gone mid-request: every kill makes one."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, ClientDisconnect)


def main(seed: int, count: int, *, rigs: int = 3, replays: int = 0) -> Summary:
    """Run in a fresh temporary directory; print the summary line and return it."""
    logging.getLogger("uvicorn.error").addFilter(_NoDisconnects())
    with tempfile.TemporaryDirectory(prefix="calsched-crash-") as tmp:
        summary = asyncio.run(run(seed, count, rigs=rigs, replays=replays, root=Path(tmp)))
    print(summary.line(), flush=True)
    if not summary.ok:
        print(summary.findings.problems(), *summary.replay_changed[:5], sep="\n", flush=True)
    return summary


def _cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.reliability.driver")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--count", type=int, default=200, help="kill points")
    parser.add_argument("--replays", type=int, default=100, help="kills during replay")
    parser.add_argument("--rigs", type=int, default=3, help="daemons side by side")
    args = parser.parse_args(argv)
    summary = main(args.seed, args.count, rigs=args.rigs, replays=args.replays)
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(_cli())
