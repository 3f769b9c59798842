"""The scheduler-side benchmarks run end to end in quick mode and give finite figures.

Nothing here is about time: each module runs once (one repeat) in a subprocess, as
``make bench`` would run it, and its rows must be well formed, positive and finite.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

_RUN = """
import json, sys
from dataclasses import asdict
from pathlib import Path
from importlib import import_module
from benchmarks.common import BenchConfig
rows = import_module(sys.argv[1]).run(BenchConfig(quick=True, repeats=1, workdir=Path(sys.argv[2])))
print(json.dumps([asdict(r) for r in rows]))
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALSCHED_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


@pytest.mark.parametrize(
    ("module", "units"),
    [
        ("benchmarks.burst", {"ms", "wakes/s"}),
        ("benchmarks.restart", {"ms"}),
        ("benchmarks.memory", {"B/slot"}),
        ("benchmarks.control_api", {"calls/s", "reads/s"}),
    ],
)
def test_quick_module_gives_finite_rows(module: str, units: set[str], tmp_path: Path) -> None:
    """Each module's quick run exits 0 with rows whose figures are positive and finite."""
    done = subprocess.run(
        [sys.executable, "-c", _RUN, module, str(tmp_path)],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(done.stdout.splitlines()[-1])
    assert rows
    assert {r["unit"] for r in rows} == units
    for r in rows:
        for key in ("value", "compare_value"):
            if r[key] is not None:
                assert math.isfinite(r[key]), r
                assert r[key] > 0, r


def test_growth_quick_writes_table_and_plot(tmp_path: Path) -> None:
    """``python -m benchmarks.growth --quick`` writes a markdown table and a PNG."""
    done = subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks.growth"),
            *("--quick", "--repeats", "1", "--out", str(tmp_path)),
        ],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    page = (tmp_path / "growth.md").read_text()
    assert "| 300 |" in page  # the largest quick burst has its line
    assert "| 300 | " in page.split("## Restart")[1]  # and so has the largest live set
    assert (tmp_path / "growth.png").read_bytes().startswith(b"\x89PNG")
