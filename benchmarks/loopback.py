"""Loopback stand-ins for a real deployment, and a ``calsched run`` process to aim at them.

- :class:`Stubs`: one small HTTP server on 127.0.0.1 (a free port) playing both the
  calendar backend (protocol section 1: ``POST /v1/heartbeat``, ``POST
  /v1/slots/{id}/status``) and a webhook host (section 3: ``POST /wake``). It records
  when the first heartbeat arrived (``time.perf_counter()``, which on Linux is the
  system-wide monotonic clock, so another process's readings compare) and counts
  requests. It runs on a thread of the benchmark (:meth:`Stubs.start`) or, so that it
  competes with nothing in the benchmark process, as its own process
  (``python -m benchmarks.loopback --slots N``, see :func:`spawn_stubs`).
- :class:`Daemon`: writes a config file, spawns ``sys.executable -m calsched run`` and
  stops it with SIGTERM.

The stub accepts any bearer key: it measures calsched, it does not test it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

__all__ = ["Daemon", "Stubs", "free_port", "spawn_stubs", "stub_slots"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stub_slots(n: int, *, prefix: str = "g") -> list[dict[str, Any]]:
    """``n`` slots in wire form, one per agent ``agent-<i>``."""
    return [
        {"id": f"{prefix}-{i}", "agent_id": f"agent-{i}", "title": "Bench", "prompt_text": "Go"}
        for i in range(n)
    ]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: calsched's httpx clients pool connections
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: one line per request would cost more than the request."""

    def _answer(self, status: int, body: Mapping[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        """Heartbeat, status update or wake; anything else is a 404."""
        now = time.perf_counter()
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        stats = self.server.stats
        if self.path == "/v1/heartbeat":
            with self.server.lock:
                if stats["first_heartbeat_at"] is None:
                    stats["first_heartbeat_at"] = now
                stats["heartbeats"] += 1
            self._answer(200, {"slots_to_fire": self.server.slots, "restart_pending": False})
        elif self.path.startswith("/v1/slots/") and self.path.endswith("/status"):
            with self.server.lock:
                stats["statuses"] += 1
            self._answer(200, {})
        elif self.path == "/wake":
            with self.server.lock:
                stats["wakes"] += 1
            self._answer(200, {})
        else:
            self._answer(404, {"error": "not_found"})

    def do_GET(self) -> None:
        """``/stats``: what the stub has seen."""
        if self.path == "/stats":
            with self.server.lock:
                self._answer(200, dict(self.server.stats))
        else:
            self._answer(404, {"error": "not_found"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, slots: list[dict[str, Any]]) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.slots = slots
        self.lock = threading.Lock()
        self.stats: dict[str, Any] = {
            "first_heartbeat_at": None,
            "heartbeats": 0,
            "statuses": 0,
            "wakes": 0,
        }


class Stubs:
    """The backend and webhook-host stub, served from a thread of this process."""

    def __init__(self, slots: Sequence[Mapping[str, Any]] = (), port: int = 0) -> None:
        self._server = _Server(port, [dict(s) for s in slots])
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="bench-stubs", daemon=True
        )

    @property
    def url(self) -> str:
        """The base URL (backend and host share it)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def first_heartbeat_at(self) -> float | None:
        """``perf_counter()`` at the first heartbeat's arrival, if one came."""
        with self._server.lock:
            value: float | None = self._server.stats["first_heartbeat_at"]
            return value

    def stats(self) -> dict[str, Any]:
        """A copy of the counters."""
        with self._server.lock:
            return dict(self._server.stats)

    def start(self) -> Stubs:
        """Serve on a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def spawn_stubs(slots: int, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The stub as its own process serving ``slots`` slots; returns it and its base URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.loopback", "--slots", str(slots), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=log.open("ab"),
        env=_clean_env(),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "ready" once the socket listens
    if not line:
        proc.kill()
        raise RuntimeError(f"the stub process did not start; see {log}")
    return proc, f"http://127.0.0.1:{port}"


def _clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    # No CALSCHED_* from the caller's shell: the config file alone must decide.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALSCHED_")}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(Path(__file__).resolve().parent.parent), env.get("PYTHONPATH")) if p
    )
    env.update(extra or {})
    return env


class Daemon:
    """``calsched run`` as a child process, configured by a TOML file it is given."""

    def __init__(
        self,
        workdir: Path,
        *,
        database_url: str,
        identifier: str,
        backend_url: str,
        wake_url: str | None = None,
        control_port: int | None = None,
        heartbeat_interval_s: float = 3600.0,
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.control_port = control_port or free_port()
        self.secret_file = workdir / "control.secret"
        key_file = workdir / "backend.key"
        key_file.write_text("bench-key\n")
        key_file.chmod(0o600)
        host = (
            f'[host]\nadapter = "webhook"\nwake_url = "{wake_url}"\n'
            if wake_url
            else '[host]\nadapter = "none"\n'
        )
        self.config = workdir / "config.toml"
        self.config.write_text(
            f'database_url = "{database_url}"\n'
            f'identifier = "{identifier}"\n'
            f'backend_url = "{backend_url}"\n'
            f'backend_api_key_file = "{key_file}"\n'
            'log_level = "warning"\n'
            f'[control]\nhost = "127.0.0.1"\nport = {self.control_port}\n'
            f'secret_file = "{self.secret_file}"\n'
            f"{host}"
            f"[scheduler]\nheartbeat_interval_s = {heartbeat_interval_s}\n"
        )
        self.log = workdir / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.spawned_at = 0.0

    @property
    def control_url(self) -> str:
        """The control API's base URL."""
        return f"http://127.0.0.1:{self.control_port}"

    def spawn(self) -> Daemon:
        """Start the process; :attr:`spawned_at` is ``perf_counter()`` just before."""
        with self.log.open("ab") as log:
            self.spawned_at = time.perf_counter()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "calsched", "--config", str(self.config), "run"],
                stdout=log,
                stderr=log,
                env=_clean_env({"HOME": str(self.workdir)}),
            )
        return self

    def running(self) -> bool:
        """Whether the process is still alive."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        return self.proc.returncode

    def tail(self, lines: int = 20) -> str:
        """The end of the daemon's log, for an error message."""
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the stub until SIGTERM; print one line once it listens."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loopback")
    parser.add_argument("--slots", type=int, default=0)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    stubs = Stubs(stub_slots(args.slots), port=args.port).start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    print(json.dumps({"port": stubs.port}), flush=True)
    done.wait()
    stubs.stop()


if __name__ == "__main__":
    main()
