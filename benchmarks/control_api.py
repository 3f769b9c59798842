"""g. The control API under 32 concurrent loopback clients: tool calls/s and reads/s.

The daemon is the real thing: ``calsched run`` as its own process, with a SQLite FULL
journal, a stub backend and a stub webhook host (:mod:`benchmarks.loopback`, in a third
process so that it competes with neither side). Its first heartbeat hands out one slot
per client's agent; the wakes go to the stub host, so every agent holds an
``in_progress`` slot before the clock starts.

Then, in turns (rotated each round, as :func:`~benchmarks.common.interleaved` does):

- tool calls: each client alternates ``pause`` and ``resume`` on its own agent's slot
  (every call is a journaled transition and an outbox row the stub backend hears);
- reads: each client GETs its agent's current slot.

Each client is an :class:`httpx.AsyncClient` with its own keep-alive connection and its
agent's token. A phase is bounded both in calls per client and in seconds. The client
side's CPU use is reported in the note: near one full core would mean the figure is the
client's limit, not the daemon's.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from dataclasses import dataclass, field

import httpx

from benchmarks.common import BenchConfig, Row, median, percentile, progress
from benchmarks.loopback import Daemon, spawn_stubs
from calsched.tokens import agent_token, load_or_create_secret

__all__ = ["Phase", "run"]

BENCH = "g. control API"
IDENTIFIER = "bench-control"
CLIENTS = 32


@dataclass
class Phase:
    """One timed phase: how many calls, how long, their latencies, the client's CPU."""

    calls: int = 0
    errors: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    codes: dict[int, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Successful calls per second."""
        return (self.calls - self.errors) / self.seconds if self.seconds else 0.0


async def _client(
    client: httpx.AsyncClient,
    agent_id: str,
    *,
    tools: bool,
    max_calls: int,
    deadline: float,
    phase: Phase,
    paused: set[str],
) -> None:
    base = f"/v1/agents/{agent_id}/slot"
    for _ in range(max_calls):
        if time.perf_counter() >= deadline:
            return
        start = time.perf_counter()
        if tools:
            # Where the last phase left the slot decides the next verb, so none is refused.
            verb = "resume" if agent_id in paused else "pause"
            response = await client.post(f"{base}/{verb}", json={})
            if response.status_code == 200:
                paused.symmetric_difference_update({agent_id})
        else:
            response = await client.get(base)
        phase.latencies_ms.append((time.perf_counter() - start) * 1000)
        phase.calls += 1
        if response.status_code != 200:
            phase.errors += 1
            phase.codes[response.status_code] = phase.codes.get(response.status_code, 0) + 1


async def _phase(
    clients: dict[str, httpx.AsyncClient],
    *,
    tools: bool,
    max_calls: int,
    max_s: float,
    paused: set[str],
) -> Phase:
    phase = Phase()
    cpu = time.process_time()
    start = time.perf_counter()
    await asyncio.gather(
        *(
            _client(
                c,
                agent,
                tools=tools,
                max_calls=max_calls,
                deadline=start + max_s,
                phase=phase,
                paused=paused,
            )
            for agent, c in clients.items()
        )
    )
    phase.seconds = time.perf_counter() - start
    phase.cpu_seconds = time.process_time() - cpu
    return phase


async def _ready(clients: dict[str, httpx.AsyncClient], daemon: Daemon, timeout_s: float) -> None:
    """Wait until every agent holds an in_progress slot (the first beat and its wakes)."""
    deadline = time.perf_counter() + timeout_s
    waiting = set(clients)
    while waiting:
        if not daemon.running():
            raise RuntimeError(f"calsched run exited early:\n{daemon.tail()}")
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{len(waiting)} agents got no slot in {timeout_s:g} s")
        for agent in sorted(waiting):
            try:
                response = await clients[agent].get(f"/v1/agents/{agent}/slot")
            except httpx.TransportError:
                break  # not listening yet
            if response.status_code == 200 and response.json().get("state") == "in_progress":
                waiting.discard(agent)
        await asyncio.sleep(0.05)


async def _settled(stub_url: str, statuses: int, timeout_s: float) -> None:
    """Wait until the stub backend heard ``statuses`` updates: the outbox is drained.

    So a reads phase does not share the daemon with the previous phase's deliveries.
    """
    deadline = time.perf_counter() + timeout_s
    async with httpx.AsyncClient(base_url=stub_url) as client:
        while time.perf_counter() < deadline:
            seen = (await client.get("/stats")).json()["statuses"]
            if seen >= statuses:
                return
            await asyncio.sleep(0.05)
    progress(f"the outbox did not drain in {timeout_s:g} s; going on")


async def _bench(
    daemon: Daemon,
    secret: bytes,
    stub_url: str,
    cfg: BenchConfig,
    max_calls: int,
    max_s: float,
) -> dict[str, list[Phase]]:
    agents = [f"agent-{i}" for i in range(CLIENTS)]
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    clients = {
        agent: httpx.AsyncClient(
            base_url=daemon.control_url,
            headers={"Authorization": f"Bearer {agent_token(secret, agent)}"},
            limits=limits,
            timeout=30.0,
        )
        for agent in agents
    }
    try:
        await _ready(clients, daemon, timeout_s=60.0)
        await _settled(stub_url, len(clients), timeout_s=60.0)
        phases: dict[str, list[Phase]] = {"tools": [], "reads": []}
        paused: set[str] = set()
        ok_calls = 0
        # Rounds rotate who goes first, as interleaved() does; that helper is synchronous
        # and these phases must share one loop (and its open connections).
        for round_ in range(cfg.repeats):
            for kind in ("tools", "reads") if round_ % 2 == 0 else ("reads", "tools"):
                phase = await _phase(
                    clients, tools=kind == "tools", max_calls=max_calls, max_s=max_s, paused=paused
                )
                phases[kind].append(phase)
                progress(f"control API {kind}: {phase.rate:,.0f}/s, {phase.errors} errors")
                if kind == "tools":
                    ok_calls += phase.calls - phase.errors
                    await _settled(stub_url, len(clients) + ok_calls, timeout_s=60.0)
        return phases
    finally:
        await asyncio.gather(*(c.aclose() for c in clients.values()))


def run(cfg: BenchConfig) -> list[Row]:
    """32 clients against ``calsched run``: tool calls/s and reads/s with p50/p99."""
    max_calls = cfg.size(100, 2_000)
    max_s = 1.5 if cfg.quick else 15.0
    workdir = cfg.workdir / "control"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    stub, stub_url = spawn_stubs(CLIENTS, workdir / "stubs.log")
    daemon = Daemon(
        workdir,
        database_url=f"sqlite:///{workdir / 'journal.db'}",
        identifier=IDENTIFIER,
        backend_url=stub_url,
        wake_url=f"{stub_url}/wake",
    )
    # Made here first (the daemon reads the same file), so the tokens are known up front.
    secret = load_or_create_secret(daemon.secret_file)
    try:
        daemon.spawn()
        phases = asyncio.run(_bench(daemon, secret, stub_url, cfg, max_calls, max_s))
    finally:
        daemon.stop()
        stub.terminate()
        stub.wait(timeout=10)
    shutil.rmtree(workdir, ignore_errors=True)
    return [_row(kind, phases[kind], max_calls, max_s) for kind in ("tools", "reads")]


def _row(kind: str, phases: list[Phase], max_calls: int, max_s: float) -> Row:
    latencies = [ms for p in phases for ms in p.latencies_ms]
    errors = sum(p.errors for p in phases)
    codes: dict[int, int] = {}
    for p in phases:
        for code, count in p.codes.items():
            codes[code] = codes.get(code, 0) + count
    cpu = median([p.cpu_seconds / p.seconds for p in phases])
    note = (
        f"{CLIENTS} clients, up to {max_calls:,} calls each or {max_s:g} s per phase; "
        f"client process CPU {cpu:.0%} of one core; {errors} non-200 answers"
        + (f" {dict(sorted(codes.items()))}" if codes else "")
    )
    tools = kind == "tools"
    value = median([p.rate for p in phases])
    return Row(
        bench=BENCH,
        case="tool calls (pause/resume)" if tools else "reads (GET slot)",
        size=f"{CLIENTS} clients",
        unit="calls/s" if tools else "reads/s",
        value=value,
        p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99),
        target=">= 1,500 tool calls/s" if tools else None,
        met=value >= 1500 if tools else None,
        samples=[p.rate for p in phases],
        note=note,
    )
