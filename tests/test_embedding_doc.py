"""docs/embedding.md runs: its ``python`` blocks, joined, are the host it describes.

The joined module is run as a script (its ``__main__`` block, on the embedded calendar),
its ``main`` is run against a remote reference backend over HTTP, and the tests it shows
for the host are run here, on SQLite and PostgreSQL (``db_url``).
"""

from __future__ import annotations

import ast
import asyncio
import re
import runpy
import secrets
from pathlib import Path
from typing import Any

import pytest

from calsched.backend.calendar import LocalCalendar
from calsched.backend.server import create_backend_app
from calsched.journal import Journal
from calsched.model import SlotState, SlotView
from calsched.testing import serve_backend

DOC = Path(__file__).resolve().parent.parent / "docs" / "embedding.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
SOURCE = "\n\n".join(BLOCKS)
#: The tests the page shows for the host (``async def test_...``).
DOC_TESTS = [
    node.name
    for node in ast.parse(SOURCE).body
    if isinstance(node, ast.AsyncFunctionDef) and node.name.startswith("test_")
]


def example_source() -> str:
    """The page's example as one module (also type-checked by the integration tests)."""
    return SOURCE


@pytest.fixture
def example_path(tmp_path: Path) -> Path:
    path = tmp_path / "embedding_example.py"
    path.write_text(SOURCE)
    return path


def test_the_page_shows_a_host_and_its_tests() -> None:
    """The regex found the host's block and the testing block."""
    assert len(BLOCKS) >= 2
    assert "class QueueHost" in SOURCE
    assert len(DOC_TESTS) >= 2


def test_the_example_runs_as_a_script_on_the_embedded_calendar(
    example_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python example.py``: bob is woken through the queue and completes his slot."""
    monkeypatch.delenv("CALENDAR_URL", raising=False)
    runpy.run_path(str(example_path), run_name="__main__")
    assert capsys.readouterr().out.strip() == "s-1 completed report sent"


def test_the_example_runs_against_a_remote_backend(
    example_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``CALENDAR_URL`` set, the same host uses an HttpBackend: here the reference
    backend over loopback HTTP, serving a calendar in the same database file."""
    url = f"sqlite:///{tmp_path / 'remote.db'}"
    key = secrets.token_urlsafe(16)
    example: dict[str, Any] = runpy.run_path(str(example_path))
    served = Journal.open(url, "my-host", upgrade=True)

    async def run() -> SlotView:
        app = create_backend_app(LocalCalendar(served.engine), key)
        async with serve_backend(app) as base:
            monkeypatch.setenv("CALENDAR_URL", base)
            monkeypatch.setenv("CALENDAR_API_KEY", key)
            view: SlotView = await example["main"](url)
            return view

    try:
        done = asyncio.run(run())
        receipts = LocalCalendar(served.engine).receipts("s-1")
    finally:
        served.close()
    assert done.state is SlotState.completed
    assert receipts[-1].status == "completed"


@pytest.mark.parametrize("name", DOC_TESTS)
def test_the_tests_the_page_shows_pass(example_path: Path, db_url: str, name: str) -> None:
    """Each test the page shows for the host passes, on SQLite and PostgreSQL."""
    example = runpy.run_path(str(example_path))
    asyncio.run(example[name](db_url))
