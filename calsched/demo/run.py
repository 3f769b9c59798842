"""The demo run: prepare the directory, start the daemon, crash it, and report.

:func:`run_demo` is what ``calsched demo`` calls. The daemon is a real subprocess,
``python -m calsched --config <tmp>/calsched.toml run``, started with the interpreter that
runs the demo; it is killed with SIGKILL once and stopped with SIGTERM at the end, and is
always gone when :func:`run_demo` returns, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import httpx
from rich.console import Console

from calsched.backend.calendar import LocalCalendar
from calsched.demo.agents import SimulatedAgents, ToolGate, create_host_app, serving
from calsched.demo.report import (
    DemoResult,
    DemoView,
    Mark,
    compare_active,
    describe_active,
    history_table,
    outbox_tally,
    read_history,
    slots_ended,
    summary_line,
)
from calsched.demo.scenario import (
    DEMO_SLOTS,
    DemoError,
    DemoOptions,
    child_environment,
    daemon_config,
    plan_behaviours,
)
from calsched.journal import migrate
from calsched.journal.engine import make_engine
from calsched.tokens import admin_token, agent_token, load_or_create_secret

__all__ = ["DaemonProcess", "run_demo"]

_STARTUP_TIMEOUT_S = 20.0
_STOP_TIMEOUT_S = 10.0
_TICK_S = 0.2


def _free_port() -> int:
    # The daemon binds the port itself; another process taking it in between is a clear
    # start-up error ("already in use"), not a hang.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class DaemonProcess:
    """``python -m calsched --config CONFIG run`` as a subprocess, output to ``log_path``."""

    def __init__(self, config: Path, env: dict[str, str], log_path: Path) -> None:
        self.argv = [sys.executable, "-m", "calsched", "--config", str(config), "run"]
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: TextIO | None = None

    @property
    def pid(self) -> int:
        """The running process's id."""
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        """Start it (again): a new process appending to the same log."""
        self._log = self.log_path.open("a", encoding="utf-8")
        self.proc = subprocess.Popen(  # noqa: S603 - our interpreter, our module, our config
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            # Its own session: a Ctrl-C at the terminal reaches the demo alone, which then
            # kills the daemon itself on the way out.
            start_new_session=True,
        )

    def check_alive(self) -> None:
        """Raise :class:`DemoError` if the process exited without being told to."""
        if self.proc is not None and self.proc.poll() is not None:
            raise DemoError(
                f"the daemon exited by itself with status {self.proc.returncode}: "
                f"{self.last_log_line()}"
            )

    def last_log_line(self) -> str:
        """The last line the daemon wrote (its error, when it failed)."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return lines[-1] if lines else "(no output)"

    async def wait_healthy(self, client: httpx.AsyncClient) -> float:
        """Poll ``GET /healthz`` until it answers 200; the seconds it took."""
        started = time.monotonic()
        while time.monotonic() - started < _STARTUP_TIMEOUT_S:
            self.check_alive()
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get("/healthz")).status_code == 200:
                    return time.monotonic() - started
            await asyncio.sleep(0.05)
        raise DemoError(f"the daemon did not answer within {_STARTUP_TIMEOUT_S:g}s")

    async def kill(self) -> None:
        """SIGKILL: no signal handler runs, nothing is flushed or closed."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(self.proc.wait)
        self._close_log()

    async def stop(self) -> int:
        """SIGTERM, then wait for the graceful exit; its status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(self.proc.wait, _STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            await self.kill()
            raise DemoError(f"the daemon did not stop within {_STOP_TIMEOUT_S:g}s") from None
        self._close_log()
        return code

    def ensure_dead(self) -> None:
        """Kill the process if it still runs (the demo's last word on the way out)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class _Demo:
    """One run, in ``workdir``; :meth:`run` returns the result or raises DemoError."""

    def __init__(self, options: DemoOptions, workdir: Path, view: DemoView) -> None:
        self.options = options
        self.workdir = workdir
        self.view = view
        self.db_url = f"sqlite:///{workdir / 'calsched.db'}"
        self.engine = make_engine(self.db_url)
        self.plans = plan_behaviours(DEMO_SLOTS, options.seed, kill_after_s=options.kill_after_s)
        self.result = DemoResult(workdir=workdir)
        self.seeded_at = view.t0
        self._last_seq = 0

    def _say(self, text: str) -> None:
        """The demo's own narration: printed at once (after the lines already held)."""
        self.view.say(text)
        self.view.refresh()

    async def run(self) -> DemoResult:
        started = time.monotonic()
        say = self._say
        say(f"seed {self.options.seed}; working in {self.workdir}")
        migrate.upgrade(self.engine)
        secret_file = self.workdir / "control.secret"
        # Made here, before the daemon starts: the daemon finds it and uses the same one,
        # so the demo can compute every agent's token and the admin token.
        secret = load_or_create_secret(secret_file)
        tokens = {s.agent_id: agent_token(secret, s.agent_id) for s in DEMO_SLOTS}
        port = _free_port()
        base_url = f"http://127.0.0.1:{port}"
        admin = {"Authorization": f"Bearer {admin_token(secret)}"}
        gate = ToolGate()
        async with (
            httpx.AsyncClient(base_url=base_url, timeout=5.0) as client,
            httpx.AsyncClient(base_url=base_url, timeout=5.0, headers=admin) as admin_client,
        ):
            agents = SimulatedAgents(self.plans, client, tokens, gate, self.view.say)
            async with serving(create_host_app(agents)) as host_url:
                config = self.workdir / "calsched.toml"
                config.write_text(
                    daemon_config(
                        database_url=self.db_url,
                        control_port=port,
                        secret_file=secret_file,
                        wake_url=f"{host_url}/wake",
                        agents_url=f"{host_url}/agents",
                        heartbeat_s=self.options.heartbeat_s,
                    ),
                    encoding="utf-8",
                )
                say(f"webhook host (the simulated agents) listening at {host_url}")
                env = child_environment(self.workdir)
                daemon = DaemonProcess(config, env, self.workdir / "daemon.log")
                try:
                    await self._drive(daemon, admin_client, agents, gate)
                finally:
                    daemon.ensure_dead()
                    await agents.aclose()
        self.result.elapsed_s = time.monotonic() - started
        return self.result

    async def _drive(
        self,
        daemon: DaemonProcess,
        admin: httpx.AsyncClient,
        agents: SimulatedAgents,
        gate: ToolGate,
    ) -> None:
        say = self._say
        say(f"starting the daemon: python {' '.join(daemon.argv[1:])}")
        daemon.start()
        took = await daemon.wait_healthy(admin)
        self.view.daemon = f"running (pid {daemon.pid})"
        say(f"daemon up (pid {daemon.pid}) after {took:.2f}s; control API at {admin.base_url}")
        self._seed_calendar()
        deadline = time.monotonic() + self.options.timeout_s
        kill_at = self.seeded_at + timedelta(seconds=self.options.kill_after_s)
        give_up_at = kill_at + timedelta(seconds=5)
        while True:
            if time.monotonic() > deadline:
                raise DemoError(
                    f"the demo did not finish within {self.options.timeout_s:g}s "
                    f"({len(DEMO_SLOTS) - slots_ended(self.engine)} slots not ended)"
                )
            await self._tick(daemon, admin, agents)
            if self.result.restarts == 0:
                holding = [e for e in self.view.active if e["state"] in ("in_progress", "paused")]
                now = datetime.now(UTC)
                if now >= kill_at and holding:
                    await self._crash(daemon, admin, gate)
                elif now >= give_up_at:
                    raise DemoError("no slot was in progress or paused to kill the daemon under")
            elif (
                slots_ended(self.engine) >= len(DEMO_SLOTS)
                and outbox_tally(self.engine).waiting == 0
            ):
                break
            await asyncio.sleep(_TICK_S)
        say("every slot ended and the backend acknowledged every change; stopping the daemon")
        code = await daemon.stop()
        self.view.daemon = f"stopped (status {code})"
        say(f"daemon stopped by SIGTERM (exit status {code})")
        self._poll_journal()
        self._finish(agents)

    def _seed_calendar(self) -> None:
        calendar = LocalCalendar(self.engine)
        self.seeded_at = datetime.now(UTC)
        for s in DEMO_SLOTS:
            calendar.add(
                s.slot_id,
                s.agent_id,
                fire_at=self.seeded_at + timedelta(seconds=s.fire_after_s),
                title=s.title,
            )
        offset = (self.seeded_at - self.view.t0).total_seconds()
        first = offset + min(s.fire_after_s for s in DEMO_SLOTS)
        last = offset + max(s.fire_after_s for s in DEMO_SLOTS)
        agents = len({s.agent_id for s in DEMO_SLOTS})
        self._say(
            f"calendar seeded: {len(DEMO_SLOTS)} slots for {agents} agents, "
            f"due from {first:+.1f}s to {last:+.1f}s"
        )

    async def _tick(
        self, daemon: DaemonProcess, admin: httpx.AsyncClient, agents: SimulatedAgents
    ) -> None:
        daemon.check_alive()
        if agents.failures:
            raise DemoError(str(agents.failures[0]))
        with contextlib.suppress(httpx.HTTPError):
            response = await admin.get("/v1/status")
            if response.status_code == 200:
                self.view.active = list(response.json().get("active", []))
        self._poll_journal()
        self.view.refresh()

    def _poll_journal(self) -> None:
        rows = read_history(self.engine, self._last_seq)
        if rows:
            self._last_seq = rows[-1].seq
            self.view.journal(rows)

    async def _active(self, admin: httpx.AsyncClient) -> list[dict[str, Any]]:
        response = await admin.get("/v1/status")
        if response.status_code != 200:
            raise DemoError(f"GET /v1/status answered HTTP {response.status_code}")
        return list(response.json().get("active", []))

    async def _crash(self, daemon: DaemonProcess, admin: httpx.AsyncClient, gate: ToolGate) -> None:
        say = self._say
        say("holding the agents' tool calls until the daemon is back")
        await gate.close()
        before = await self._active(admin)
        say(f"active before the kill:   {describe_active(before)}")
        pid = daemon.pid
        await daemon.kill()
        self.result.marks.append(Mark(datetime.now(UTC), "SIGKILL", f"daemon pid {pid} killed"))
        self.view.daemon = "KILLED (SIGKILL)"
        self.view.active = []
        self.view.refresh()
        say(f"killed the daemon (pid {pid}) with SIGKILL: no shutdown, no flush")
        daemon.start()
        took = await daemon.wait_healthy(admin)
        self.result.restarts += 1
        after = await self._active(admin)
        restoration = compare_active(_states(before), _states(after))
        self.result.restoration = restoration
        back = len(before) - len(restoration.missing)
        self.result.marks.append(
            Mark(
                datetime.now(UTC),
                "restart",
                f"new pid {daemon.pid}; {back}/{len(before)} active slots back",
            )
        )
        self.view.daemon = f"running (pid {daemon.pid}, restarted)"
        say(f"daemon restarted (pid {daemon.pid}), answering after {took:.2f}s")
        say(f"active after the restart: {describe_active(after)}")
        if not restoration.ok:
            lost = ", ".join(restoration.missing) or "nothing was active"
            raise DemoError(f"the active slots did not come back after the restart: {lost}")
        say(f"all {len(before)} active slots came back from the journal, in the same state")
        gate.open()

    def _finish(self, agents: SimulatedAgents) -> None:
        rows = read_history(self.engine)
        final = {row.slot_id: row.state_to for row in rows}
        self.result.history = rows
        self.result.slots = len(final)
        self.result.completed = sum(1 for s in final.values() if s == "completed")
        self.result.aborted = sum(1 for s in final.values() if s == "aborted")
        receipts = LocalCalendar(self.engine).receipts()
        self.result.receipts = len(receipts)
        tally = outbox_tally(self.engine)
        if tally.dead or tally.delivered != len(receipts):
            raise DemoError(
                f"the backend holds {len(receipts)} receipts for {tally.delivered} delivered "
                f"changes ({tally.dead} dead-lettered)"
            )
        if agents.duplicates:
            self._say(
                f"the simulated host ignored {agents.duplicates} repeated wake(s) "
                "(wakes are at-least-once after a crash; hosts dedupe on source + attempt)"
            )


def _states(active: list[dict[str, Any]]) -> dict[str, str]:
    return {str(e["slot"]["id"]): str(e["state"]) for e in active}


@contextlib.contextmanager
def _workdir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="calsched-demo-"))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


def _console() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # Into a pipe or a file: room for the history table instead of 80 columns.
        console = Console(highlight=False, width=140)
    return console


def run_demo(options: DemoOptions, console: Console | None = None) -> DemoResult:
    """Run the whole demo and print it; raise :class:`DemoError` when it fails.

    The temporary directory is removed at the end unless ``options.keep``. The daemon
    subprocess is gone when this returns or raises (a Ctrl-C included).
    """
    console = console or _console()
    try:
        return _run(options, console)
    except KeyboardInterrupt:
        # The CLI exits 130 on Ctrl-C without a word; say what was cleaned up.
        done = "kept" if options.keep else "removed"
        Console(stderr=True).print(
            f"interrupted: killed the demo's daemon and {done} its directory", markup=False
        )
        raise


def _run(options: DemoOptions, console: Console) -> DemoResult:
    live = console.is_terminal if options.live is None else options.live
    with _workdir(options.keep) as workdir:
        view = DemoView(console, live=live, t0=datetime.now(UTC))
        demo = _Demo(options, workdir, view)
        kept = f"kept the demo directory: {workdir}"
        try:
            with view:
                result = asyncio.run(demo.run())
        except BaseException:
            if options.keep:
                console.print(kept, markup=False, highlight=False)
            raise
        finally:
            demo.engine.dispose()
        console.print()
        console.print(history_table(result.history, view.t0, result.marks))
        console.print(summary_line(result), markup=False, highlight=False)
        if options.keep:
            console.print(kept, markup=False, highlight=False)
    return result
