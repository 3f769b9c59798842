"""`python -m benchmarks`, run for real in a subprocess, so the harness cannot rot unseen.

Nothing here is about speed: the run uses quick sizes and one round, and the checks are
that the suites ran and wrote rows with finite figures, sizes, units and target verdicts.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench_json(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The JSON of `python -m benchmarks --only a,e --repeats 1` (SQLite only)."""
    pytest.importorskip("eventsourcing", reason="the bench extra is not installed")
    out = tmp_path_factory.mktemp("bench") / "rows.json"
    env = {k: v for k, v in os.environ.items() if k != "CALSCHED_TEST_PG_URL"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--only", "a,e", "--repeats", "1", "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "a on PostgreSQL skipped" in done.stderr
    return dict(json.loads(out.read_text()))


def test_every_row_has_a_finite_figure_with_size_and_unit(bench_json: dict[str, Any]) -> None:
    """Each row: a finite positive value, a size, a unit, one sample per round."""
    rows = bench_json["rows"]
    assert bench_json["mode"] == "quick"
    assert {r["bench"][0] for r in rows} == {"a", "e"}
    for row in rows:
        assert math.isfinite(row["value"]), row
        assert row["value"] > 0, row
        assert row["size"], row
        assert row["unit"], row
        assert len(row["samples"]) == 1, row


def test_rows_with_a_target_carry_the_comparison_and_a_verdict(bench_json: dict[str, Any]) -> None:
    """a's two targets and e's: a finite comparison, a ratio, and met true or false."""
    targeted = [r for r in bench_json["rows"] if r["target"] is not None]
    assert {r["target"] for r in targeted} == {
        ">= 0.5x raw same-SQL",
        ">= 1.0x eventsourcing",
        ">= 0.5x raw read",
    }
    for row in targeted:
        assert math.isfinite(row["compare_value"]), row
        assert row["compare_value"] > 0, row
        assert row["ratio"] == pytest.approx(row["value"] / row["compare_value"])
        assert isinstance(row["met"], bool), row
