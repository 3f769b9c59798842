"""A fork server for the crash driver: ``python -m tests.reliability.zygote``.

A ``calsched run`` start spends most of its time (about 0.7 s of CPU here) importing
SQLAlchemy, Alembic, pydantic, Starlette, uvicorn and httpx. Hundreds of kill points
would spend minutes on imports alone, so this process imports the daemon's modules once
and forks a child per start. The child is the real command line (:func:`calsched.cli.main`
with the argv and environment it is given), with its own pid, event loop, database
connections and sockets; nothing is shared with the server but pages copied on write.
The driver SIGKILLs the child by pid; the server reaps it and reports how it ended.

The protocol, one JSON object a line: on stdin ``{"argv": [...], "env": {...},
"log": path}``; on stdout ``{"pid": n}`` for each start (in order) and ``{"exited": n,
"status": s}`` when a child ends (``s`` negative: killed by signal ``-s``). End of stdin
ends the server (it SIGKILLs its children first).

Single-threaded on purpose: a fork copies only the forking thread, so a thread holding a
lock at fork time could deadlock the child.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import sys
from collections import deque
from pathlib import Path
from typing import Any, NoReturn


def _preload() -> None:
    """Import what ``calsched run`` imports, lazily or not, without opening anything."""
    import alembic.command
    import alembic.config  # noqa: F401
    import httpx  # noqa: F401
    import sqlalchemy.dialects.sqlite  # noqa: F401
    import uvicorn
    import uvicorn.protocols.http.h11_impl  # noqa: F401

    import calsched.backend.http
    import calsched.cli
    import calsched.control
    import calsched.daemon
    import calsched.failpoints
    import calsched.host
    import calsched.journal
    import calsched.journal.migrate
    import calsched.scheduler
    import calsched.tokens  # noqa: F401


def _child(request: dict[str, Any], close: list[int]) -> NoReturn:
    """In the forked child: become ``calsched ARGV`` with the given environment."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for fd in close:
        os.close(fd)
    null = os.open(os.devnull, os.O_RDONLY)
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = ["calsched", *request["argv"]]
    code = 1
    try:
        from calsched.cli import main

        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # report like the interpreter would, then exit 1
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def serve() -> None:
    """Read start requests until end of input; report pids and exits."""
    _preload()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    stdin = sys.stdin.fileno()
    children: set[int] = set()
    pending = b""
    try:
        while True:
            ready, _, _ = select.select([stdin, wake_r], [], [])
            if wake_r in ready:
                os.read(wake_r, 4096)
                _reap(children)
            if stdin not in ready:
                continue
            chunk = os.read(stdin, 65536)
            if not chunk:
                return
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                pid = os.fork()
                if pid == 0:
                    _child(json.loads(line), [wake_r, wake_w])
                children.add(pid)
                _say({"pid": pid})
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _reap(children: set[int]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        children.discard(pid)
        _say({"exited": pid, "status": os.waitstatus_to_exitcode(status)})


class Forked:
    """The driver's handle on one forked ``calsched`` (a small :class:`subprocess.Popen`)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """The exit status once the server reported it (negative: killed by a signal)."""
        return self.returncode

    def send_signal(self, sig: int) -> None:
        """Signal the child unless it has already been reaped (its pid may be reused)."""
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)


class ForkServer:
    """The driver's end: starts the server, asks for children, learns how they end."""

    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiting: deque[asyncio.Future[int]] = deque()
        self._children: dict[int, Forked] = {}
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        """Start ``python -m tests.reliability.zygote`` and wait for nothing: it preloads
        while the first request waits in its stdin."""
        root = Path(__file__).resolve().parents[2]
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.reliability.zygote",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=root,
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._proc is not None
        assert self._proc.stdout is not None
        async for line in self._proc.stdout:
            message = json.loads(line)
            if "pid" in message:
                self._children[message["pid"]] = Forked(message["pid"])
                self._waiting.popleft().set_result(message["pid"])
            else:
                child = self._children.pop(message["exited"], None)
                if child is not None:
                    child.returncode = message["status"]
        for waiter in self._waiting:  # the server died: nobody will answer
            waiter.set_exception(RuntimeError("the fork server exited"))

    async def spawn(self, argv: list[str], env: dict[str, str], log: Path) -> Forked:
        """Fork ``calsched ARGV`` with exactly ``env``, output appended to ``log``."""
        assert self._proc is not None
        assert self._proc.stdin is not None
        async with self._lock:  # requests and their pid answers pair up in order
            waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            line = json.dumps({"argv": argv, "env": env, "log": str(log)}) + "\n"
            self._proc.stdin.write(line.encode())
            await self._proc.stdin.drain()
            pid = await waiter
        return self._children[pid]

    async def aclose(self) -> None:
        """End the server (it SIGKILLs whatever still runs) and wait for it."""
        if self._proc is None:
            return
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        await self._proc.wait()
        if self._reader is not None:
            await self._reader


if __name__ == "__main__":
    serve()
