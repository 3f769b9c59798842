"""The wheel carries the migrations (an installed calsched upgrades its own database)
and ``py.typed`` (type checkers read its inline types)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from calsched.journal import migrate

REPO = Path(__file__).resolve().parent.parent.parent


def test_migrations_run_from_an_installed_wheel(tmp_path: Path) -> None:
    """The wheel ships calsched/_migrations, and an install of it migrates a database."""
    wheel_dir, target = tmp_path / "wheel", tmp_path / "site"
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheel_dir)]
    if importlib.util.find_spec("hatchling") is not None:
        command.append("--no-build-isolation")  # offline and fast when hatchling is here
    subprocess.run([*command, str(REPO)], check=True, timeout=300)
    (wheel,) = wheel_dir.glob("calsched-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    versions = sorted(p.name for p in (REPO / "migrations" / "versions").glob("*.py"))
    assert versions
    assert "calsched/_migrations/env.py" in names
    assert "calsched/py.typed" in names  # PEP 561: type checkers use the inline types
    for version in versions:
        assert f"calsched/_migrations/versions/{version}" in names

    install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index"]
    subprocess.run([*install, "--target", str(target), str(wheel)], check=True, timeout=300)
    probe = (
        "import sys\n"
        "from calsched.journal import Journal, migrate\n"
        "print(migrate.migrations_path())\n"
        "journal = Journal.open(sys.argv[1], 'host-a', upgrade=True)\n"
        "print(migrate.current_revision(journal.engine))\n"
        "journal.close()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    done = subprocess.run(
        [sys.executable, "-c", probe, f"sqlite:///{tmp_path / 'installed.db'}"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,  # not the checkout: the installed copy must be the one imported
        env=env,
        timeout=120,
    )
    path, revision = done.stdout.split()
    assert Path(path) == target / "calsched" / "_migrations"
    assert revision == migrate.head_revision()
