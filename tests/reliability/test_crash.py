"""Issue 10 points 1 and 2, in CI: real ``calsched run`` daemons SIGKILLed at random
moments and at every named seam, and killed during replay; nothing acknowledged is lost.

The run is the same as ``make crash-test`` (tests/reliability/driver.py), at the CI size
below; it prints its summary line (``pytest -s`` shows it) and puts it in any failure.
Processes and servers are all on 127.0.0.1.
"""

from __future__ import annotations

from pathlib import Path

from tests.reliability.driver import MODES, Summary, _split, run

#: Kill points and kills during replay in CI (docs/reliability.md quotes a run of these).
CI_COUNT = 200
CI_REPLAYS = 100
CI_RIGS = 4
CI_SEED = 1


async def test_kill_9_loses_nothing_and_a_killed_replay_changes_nothing(tmp_path: Path) -> None:
    summary: Summary = await run(CI_SEED, CI_COUNT, rigs=CI_RIGS, replays=CI_REPLAYS, root=tmp_path)
    print(summary.line())
    found = summary.findings
    assert summary.ok, f"{summary.line()}\n{found.problems()}\n{summary.replay_changed[:5]}"
    assert summary.kill_points == CI_COUNT
    assert summary.replay_kills >= CI_REPLAYS
    # Every seam was really reached, or the harness proves less than it says.
    assert all(summary.kills[mode] > 0 for mode in MODES), summary.line()
    # There was a load to lose: tool calls, slots, and redeliveries the dedupe absorbed.
    assert found.acknowledged - found.listed > CI_COUNT
    assert found.redelivered_posts > 0


def test_split_spreads_a_count_without_losing_any() -> None:
    assert _split(200, 3) == [67, 67, 66]
    assert _split(2, 4) == [1, 1]
    assert sum(_split(101, 7)) == 101
