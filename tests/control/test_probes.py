"""Tests for calsched.control.probes: /healthz and /readyz, served without a token."""

from __future__ import annotations

import httpx

from calsched.control import create_control_app
from tests.control.fakes import SECRET, FakeTools


async def test_healthz_needs_no_token(client: httpx.AsyncClient) -> None:
    """/healthz answers {"ok": true} without a token."""
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"ok": True}


def _ready_app(tools: FakeTools, *checks: tuple[str, bool, str]) -> httpx.AsyncClient:
    from calsched.status import Readiness, ReadinessCheck

    async def readiness() -> Readiness:
        return Readiness.of({n: ReadinessCheck(ok=ok, detail=d) for n, ok, d in checks})

    app = create_control_app(tools, secret=SECRET, readiness=readiness)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1")


async def test_readyz_ready_is_200_naming_each_check(tools: FakeTools) -> None:
    """/readyz needs no token; ready, it is 200 with every check by name."""
    async with _ready_app(tools, ("journal", True, "ok"), ("backend", True, "beat 1.0s ago")) as h:
        response = await h.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "ready": True,
        "checks": {
            "journal": {"ok": True, "detail": "ok"},
            "backend": {"ok": True, "detail": "beat 1.0s ago"},
        },
        "failing": [],
    }
    assert tools.calls == []


async def test_readyz_not_ready_is_503_naming_the_failing_check(tools: FakeTools) -> None:
    checks = [("journal", True, "ok"), ("lease", False, "lost: x"), ("backend", False, "none")]
    async with _ready_app(tools, *checks) as http:
        response = await http.get("/readyz")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    body = response.json()
    assert body["error"] == "not_ready"
    assert body["message"] == "lease: lost: x; backend: none"
    assert body["ready"] is False
    assert body["failing"] == ["lease", "backend"]
    assert body["checks"]["journal"] == {"ok": True, "detail": "ok"}


async def test_readyz_without_a_probe_is_not_found(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


async def test_readyz_keeps_the_host_check(tools: FakeTools) -> None:
    async with _ready_app(tools, ("journal", True, "ok")) as http:
        response = await http.get("/readyz", headers={"Host": "evil.example"})
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden_host"


async def test_readyz_over_a_real_scheduler(db_url: str) -> None:
    """Both databases: not ready before the first heartbeat, ready after it."""
    from calsched.journal import Journal
    from calsched.scheduler import Scheduler
    from calsched.settings import SchedulerSettings
    from calsched.testing import InMemoryBackend, InMemoryHost

    journal = Journal.open(db_url, "host-a", upgrade=True)
    settings = SchedulerSettings(identifier="host-a")
    sched = Scheduler(settings, journal, InMemoryBackend(), InMemoryHost())
    try:
        await sched.recover()
        app = create_control_app(sched, secret=SECRET, readiness=sched.readiness)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            before = await http.get("/readyz")
            await sched.heartbeat_once()
            after = await http.get("/readyz")
        assert before.status_code == 503
        assert before.json()["failing"] == ["backend"]
        assert after.status_code == 200, after.text
        assert set(after.json()["checks"]) == {"journal", "backend"}
    finally:
        await sched.stop()
        journal.close()
