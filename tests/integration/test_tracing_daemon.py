"""``calsched run`` with ``tracing = true``: the wake webhook carries the wake span's
``traceparent`` to the host, and the console exporter prints the spans it names.

The daemon is a real child process (embedded calendar, SQLite) waking a webhook host in
the test, on loopback.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from calsched.backend.calendar import LocalCalendar
from calsched.errors import SlotNotFoundError
from calsched.journal import Journal
from calsched.testing import serve_backend
from tests.integration.conftest import child_env, free_port


def _spans(stdout: str) -> list[dict[str, Any]]:
    """The JSON objects the console exporter printed, one after another."""
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    at = stdout.find("{")
    while at != -1:
        span, end = decoder.raw_decode(stdout, at)
        found.append(span)
        at = stdout.find("{", end)
    return found


def _status(calendar: LocalCalendar) -> str | None:
    try:
        return calendar.get("s1").status.value
    except SlotNotFoundError:
        return None


async def test_the_host_gets_the_wake_spans_traceparent(tmp_path: Path) -> None:
    """The wake's traceparent reaches the host; the exported wake span has its ids and
    the slot's attributes, and the beat and the delivery were traced too."""
    url = f"sqlite:///{tmp_path / 'run.db'}"
    journal = Journal.open(url, "host-a", upgrade=True)
    calendar = LocalCalendar(journal.engine)
    calendar.add("s1", "bob")  # due now: the first heartbeat fires it
    wakes: list[tuple[dict[str, str], dict[str, Any]]] = []

    async def wake(request: Request) -> Response:
        wakes.append((dict(request.headers), await request.json()))
        return Response(status_code=202)

    app = Starlette(routes=[Route("/wake", wake, methods=["POST"])])
    try:
        async with serve_backend(app) as host_url:
            env = child_env(
                tmp_path,
                CALSCHED_DATABASE_URL=url,
                CALSCHED_IDENTIFIER="host-a",
                CALSCHED_CONTROL__SECRET_FILE=str(tmp_path / "control.secret"),
                CALSCHED_CONTROL__PORT=str(free_port()),
                CALSCHED_HOST__ADAPTER="webhook",
                CALSCHED_HOST__WAKE_URL=f"{host_url}/wake",
                CALSCHED_TRACING="true",
                OTEL_TRACES_EXPORTER="console",
            )
            env.pop("OTEL_SDK_DISABLED", None)
            proc = subprocess.Popen(
                [sys.executable, "-m", "calsched", "run"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            try:
                async with asyncio.timeout(30):
                    # Woken, and the backend told it is in progress (a delivery).
                    while not wakes or _status(calendar) != "in_progress":
                        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                        await asyncio.sleep(0.05)
                proc.send_signal(signal.SIGTERM)
                out, err = await asyncio.to_thread(proc.communicate, timeout=30)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    finally:
        journal.close()
    assert proc.returncode == 0, err.decode()
    (headers, body), *_ = wakes
    assert "traceparent" not in body
    _version, trace_id, span_id, _flags = headers["traceparent"].split("-")
    spans = _spans(out.decode())
    by_name = {s["name"]: s for s in spans}
    assert {"calsched.heartbeat", "calsched.wake", "calsched.outbox.deliver"} <= set(by_name)
    woke = by_name["calsched.wake"]
    assert woke["context"]["trace_id"] == f"0x{trace_id}"
    assert woke["context"]["span_id"] == f"0x{span_id}"
    assert woke["parent_id"] == by_name["calsched.heartbeat"]["context"]["span_id"]
    assert woke["attributes"] == {
        "calsched.slot_id": "s1",
        "calsched.attempt": 1,
        "calsched.agent_id": "bob",
        "calsched.actor": "scheduler",
    }
    assert woke["resource"]["attributes"]["service.instance.id"] == "host-a"
