"""One crash rig: a real ``calsched run`` subprocess and everything around it, in the driver.

Around the daemon, inside the driver process (so it survives every kill):

- the reference backend (:func:`calsched.backend.server.create_backend_app` over a
  :class:`~calsched.backend.calendar.LocalCalendar` in its own SQLite file) under uvicorn
  on loopback, wrapped to count every raw status post by Idempotency-Key;
- a webhook host recording every wake as ``(slot_id, attempt)``;
- the agents, who act on their wakes through the control API with agent tokens and
  record every call answered 200 (an *acknowledged* transition).

The daemon is the real command line, ``calsched --config … run``, forked by the
:class:`~tests.reliability.zygote.ForkServer` (which has its imports done already, so a
restart costs a fork, not an interpreter). It is started with ``CALSCHED_FAILPOINT``
when a kill is planned at a seam (:mod:`calsched.failpoints`), and SIGKILLed from here
for a kill at a random moment.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from calsched.backend.calendar import LocalCalendar
from calsched.backend.server import create_backend_app
from calsched.journal import Journal
from calsched.tokens import agent_token
from tests.reliability.zygote import Forked, ForkServer

#: How long one step (a start, a drain) may take before the rig gives up with its logs.
STEP_TIMEOUT_S = 30.0
AGENTS_PER_RIG = 4


@dataclass(frozen=True)
class Ack:
    """A tool call the control API answered 200: the daemon promised it is journaled."""

    slot_id: str
    attempt: int
    kind: str  # the trigger: complete, abort, pause, resume


class PostCounter:
    """ASGI wrapper: counts every status post by Idempotency-Key, before any dedupe."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.posts: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            headers = dict(scope["headers"])
            key = headers.get(b"idempotency-key")
            if key is not None:
                self.posts[key.decode()] += 1
        await self.app(scope, receive, send)


@dataclass
class Rig:
    """One daemon with its backend, host and agents; ``index`` keeps rigs apart."""

    root: Path
    index: int
    rng: random.Random
    plan: random.Random
    identifier: str = ""
    agents: list[str] = field(default_factory=list)
    api_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    acks: list[Ack] = field(default_factory=list)
    wakes: Counter[tuple[str, int]] = field(default_factory=Counter)
    added: list[str] = field(default_factory=list)
    forks: ForkServer | None = None
    proc: Forked | None = None
    control_port: int = 0
    calendar: LocalCalendar | None = None
    counter: PostCounter | None = None
    _backend_journal: Journal | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _plans: dict[str, str] = field(default_factory=dict)
    _http: httpx.AsyncClient | None = None

    def __post_init__(self) -> None:
        self.identifier = f"crash-{self.index}"
        self.agents = [f"agent-{self.index}-{k}" for k in range(AGENTS_PER_RIG)]
        self.root.mkdir(parents=True, exist_ok=True)

    # -- paths and processes ---------------------------------------------------------

    @property
    def db_path(self) -> Path:
        """The daemon's journal."""
        return self.root / "daemon.db"

    @property
    def config_path(self) -> Path:
        """The daemon's config file."""
        return self.root / "daemon.toml"

    @property
    def control_url(self) -> str:
        """The daemon's control API."""
        return f"http://127.0.0.1:{self.control_port}"

    def env(self, failpoint: str | None) -> dict[str, str]:
        """The daemon's environment: none of the runner's CALSCHED_*, the backend key."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CALSCHED_")}
        env.update(CALSCHED_BACKEND_API_KEY=self.api_key, PYTHONUNBUFFERED="1")
        if failpoint:
            env["CALSCHED_FAILPOINT"] = failpoint
        return env

    def write_config(self, backend_url: str, wake_url: str) -> None:
        """The daemon's TOML: its journal, the backend, the webhook, short timers."""
        self.control_port = _free_port()
        self.config_path.write_text(
            f'database_url = "sqlite:///{self.db_path}"\n'
            f'identifier = "{self.identifier}"\n'
            f'backend_url = "{backend_url}"\n'
            'log_level = "warning"\n'
            "[control]\n"
            'host = "127.0.0.1"\n'
            f"port = {self.control_port}\n"
            f'secret_file = "{self.root / "control.secret"}"\n'
            "[host]\n"
            'adapter = "webhook"\n'
            f'wake_url = "{wake_url}"\n'
            "[scheduler]\n"
            "heartbeat_interval_s = 0.2\n"
            "outbox_poll_s = 0.1\n"
            "outbox_backoff_initial_s = 0.05\n"
            "shutdown_grace_s = 1.0\n"
        )

    async def start(self, failpoint: str | None = None) -> Forked:
        """``calsched --config … run`` forked by the fork server, armed with ``failpoint``."""
        assert self.forks is not None
        argv = ["--config", str(self.config_path), "run"]
        self.proc = await self.forks.spawn(argv, self.env(failpoint), self.root / "daemon.log")
        return self.proc

    async def kill(self) -> None:
        """SIGKILL the daemon (if it still runs) and wait until it is reaped."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            if await self.wait_exit(10.0) is None:
                raise AssertionError(f"rig {self.index}: the daemon outlived SIGKILL")

    async def wait_exit(self, timeout_s: float) -> int | None:
        """The daemon's exit status, or ``None`` if it still runs after ``timeout_s``."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                return code
            await asyncio.sleep(0.02)
        return None

    async def wait_ready(self) -> bool:
        """Whether the control API answers before the daemon exits or the step times out."""
        assert self._http is not None
        assert self.proc is not None
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if (await self._http.get(f"{self.control_url}/healthz")).status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
        return False

    def logs(self) -> str:
        """The end of the daemon's log, for failure messages."""
        path = self.root / "daemon.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    # -- the backend and the host, in this process -------------------------------------

    def backend_app(self) -> ASGIApp:
        """The reference backend on its own SQLite file, counted."""
        self._backend_journal = Journal.open(
            f"sqlite:///{self.root / 'backend.db'}", "reference-backend", upgrade=True
        )
        self.calendar = LocalCalendar(self._backend_journal.engine)
        self.counter = PostCounter(create_backend_app(self.calendar, self.api_key))
        return self.counter

    def host_app(self) -> Starlette:
        """The webhook host: records the wake, then lets the agent act on it."""

        async def wake(request: Request) -> Response:
            try:
                body = await request.json()
            except ClientDisconnect:  # the daemon was killed mid-wake: it never sent one
                return Response(status_code=400)
            key = (str(body["slot_id"]), int(body["attempt"]))
            self.wakes[key] += 1
            self._spawn(self._act(str(body["agent_id"]), *key))
            return JSONResponse({"accepted": True}, status_code=202)

        return Starlette(routes=[Route("/wake", wake, methods=["POST"])])

    def open_client(self) -> None:
        """The agents' HTTP client."""
        self._http = httpx.AsyncClient(timeout=5.0)

    async def aclose(self) -> None:
        """Stop the agents, kill the daemon, close the backend's journal."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.kill()
        if self._http is not None:
            await self._http.aclose()
        if self._backend_journal is not None:
            self._backend_journal.close()

    def add_slot(self) -> None:
        """One more slot for a random agent, due now."""
        assert self.calendar is not None
        slot_id = f"{self.identifier}-s{len(self.added)}"
        agent = self.rng.choice(self.agents)
        self.calendar.add(slot_id, agent, title="crash", prompt_text=f"do {slot_id}")
        self.added.append(slot_id)
        # What the agent will do with it: mostly complete; some abort; some pause first.
        self._plans[slot_id] = self.rng.choices(["complete", "abort", "pause"], [6, 2, 2])[0]

    @property
    def idle(self) -> bool:
        """No agent is acting."""
        return not self._tasks

    # -- the agents -------------------------------------------------------------------

    def _spawn(self, work: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _act(self, agent: str, slot_id: str, attempt: int) -> None:
        """Drive one woken slot to its end, retrying through kills; record each 200."""
        lock = self._locks.setdefault(agent, asyncio.Lock())
        async with lock:
            while True:
                current = await self._call(agent, "GET", "")
                if current is None:
                    return  # no active slot for this agent: ours is over
                slot = current["slot"]
                if slot["id"] != slot_id or current["attempt"] != attempt:
                    return  # ours is over or queued; a later wake will bring it back
                state = current["state"]
                if state == "dispatching":
                    await asyncio.sleep(0.05)
                    continue
                kind = self._next_step(slot_id, state)
                body: dict[str, Any] = {"slot_id": slot_id}
                if kind == "complete":
                    body["summary"] = f"done {slot_id}"
                elif kind in ("abort", "pause"):
                    body["reason"] = f"{kind} {slot_id}"
                answer = await self._call(agent, "POST", f"/{kind}", body)
                if answer is not None:
                    self.acks.append(Ack(slot_id, attempt, kind))
                    if kind == "pause":
                        self._plans[slot_id] = "resumed"

    def _next_step(self, slot_id: str, state: str) -> str:
        plan = self._plans.get(slot_id, "complete")
        if state == "paused":
            return "resume"
        if plan == "pause":
            return "pause"
        if plan == "resumed":
            return "complete"
        return plan

    async def _call(
        self, agent: str, method: str, path: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """A tool call until it has an answer: the JSON on 200, ``None`` on a 4xx.

        A refused connection or a 5xx (the daemon is down or starting) is retried; a 4xx
        (no active slot, a stale slot id, a wrong state) means the call will never apply.
        """
        assert self._http is not None
        secret = await _read_secret(self.root / "control.secret")
        headers = {"authorization": f"Bearer {agent_token(secret, agent)}"}
        url = f"{self.control_url}/v1/agents/{agent}/slot{path}"
        while True:
            try:
                answer = await self._http.request(method, url, json=body, headers=headers)
            except httpx.TransportError:
                await asyncio.sleep(0.05)
                continue
            if answer.status_code == 200:
                found: dict[str, Any] = answer.json()
                return found
            if answer.status_code < 500:
                return None
            await asyncio.sleep(0.05)


async def _read_secret(path: Path) -> bytes:
    """The control secret, once the daemon has created it."""
    while not path.exists() or path.stat().st_size == 0:
        await asyncio.sleep(0.05)
    return path.read_bytes()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def until(what: str, check: Callable[[], Awaitable[bool]], rig: Rig) -> None:
    """Poll ``check`` until true; raise with the daemon's log after :data:`STEP_TIMEOUT_S`."""
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"rig {rig.index}: timed out waiting for {what}\n{rig.logs()}")
