"""The public types stay usable: docs/embedding.md's example passes ``mypy --strict``.

mypy runs in a process of its own on the example (the ``python`` blocks of the page,
joined as tests/test_embedding_doc.py runs them) and on a probe of deliberate mistakes,
so a surface that became ``Any`` (or ``object``) to type checkers fails here too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.test_embedding_doc import example_source

REPO = Path(__file__).resolve().parent.parent.parent

#: Each line is a mistake mypy must report, if it sees calsched's real types.
PROBE = """\
import calsched

n: int = calsched.Scheduler
s: str = calsched.SlotState.completed.terminal
calsched.WakeRequest(agent_id="bob")
"""


def test_the_embedding_example_passes_mypy_strict(tmp_path: Path) -> None:
    """The example is clean under ``--strict``; each probe line is an error."""
    example = tmp_path / "embedding_example.py"
    example.write_text(example_source())
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    # MYPYPATH: this checkout's calsched, not the one installed in the environment.
    env = {**os.environ, "MYPYPATH": str(REPO)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--config-file",
            str(REPO / "pyproject.toml"),
            "--cache-dir",
            str(REPO / ".mypy_cache"),  # warm after a first run: seconds, not a minute
            "--no-error-summary",
            str(example),
            str(probe),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    # By file name: for a file whose content it has cached, mypy repeats the errors
    # under the path it first saw (an earlier test's tmp_path).
    errors = [
        (Path(path).name, int(line))
        for path, line, *_ in (e.split(":") for e in done.stdout.splitlines() if ": error:" in e)
    ]
    assert [e for e in errors if e[0] == example.name] == [], done.stdout
    assert sorted({line for name, line in errors if name == probe.name}) == [3, 4, 5], done.stdout
    assert done.returncode == 1, done.stderr
