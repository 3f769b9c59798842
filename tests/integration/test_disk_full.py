"""A real full disk: ``calsched run`` in a child whose file-size limit is cut under it.

The daemon runs with SIGXFSZ ignored (so a write past the limit fails with EFBIG instead
of killing it) and an embedded calendar; a slot is woken through a command host. Then
the test lowers the child's RLIMIT_FSIZE soft limit to 4 KiB with ``prlimit`` (allowed
for a process of the same user, no privilege needed), so every journal write fails as on
a full disk, and later raises it again, as when space returns. It checks:

- each tool call meanwhile answers 503 ``journal_unavailable`` naming "disk full", not
  500, and changes nothing;
- the daemon's log says "journal unavailable: disk full" once for the whole episode;
- once the limit is lifted, the next call succeeds with no restart, and the log says
  "journal available again";
- afterwards ``journal verify`` finds the journal and its projection in agreement.

The daemon's stderr is a pipe: a log file would hit the same limit.
"""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from calsched.tokens import agent_token
from tests.integration.conftest import free_port

TIMEOUT_S = 20.0
AGENT = "bob"


def ignore_sigxfsz() -> None:
    """In the child before exec: a write past the limit fails (EFBIG), it does not kill."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


class Daemon:
    """``calsched run`` in a child, its stderr collected line by line."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "calsched", "--config", str(config), "run"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            # Not an inherited SIG_IGN: subprocess resets SIGXFSZ before exec unless told.
            preexec_fn=ignore_sigxfsz,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def log(self) -> str:
        """Everything the daemon said so far."""
        return "\n".join(self.lines)

    def stop(self) -> int:
        """SIGTERM, and the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            status = self.proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            status = self.proc.wait()
        self._reader.join(timeout=TIMEOUT_S)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        return status

    def limit_file_size(self, soft: int) -> None:
        """Set the child's RLIMIT_FSIZE soft limit (the hard one stays)."""
        _old_soft, hard = resource.prlimit(self.proc.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(self.proc.pid, resource.RLIMIT_FSIZE, (soft, hard))


def until(what: str, check: object, daemon: Daemon) -> object:
    """Poll ``check()`` until it returns something truthy."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        found = check()  # type: ignore[operator]
        if found:
            return found
        if daemon.proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"{what} never happened; daemon log:\n{daemon.log()}")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A daemon on an embedded calendar, waking through a command that reads the wake."""
    wake = [sys.executable, "-c", "import sys; sys.stdin.read()"]
    path = tmp_path / "calsched.toml"
    path.write_text(
        f'database_url = "sqlite:///{tmp_path / "journal.db"}"\n'
        'identifier = "host-df"\n'
        "[control]\n"
        'host = "127.0.0.1"\n'
        f"port = {free_port()}\n"
        f'secret_file = "{tmp_path / "control.secret"}"\n'
        "[host]\n"
        'adapter = "command"\n'
        f"command = {wake!r}\n".replace("'", '"')
        + "[scheduler]\n"
        "heartbeat_interval_s = 0.3\n"
        "outbox_poll_s = 0.2\n"
        "outbox_backoff_initial_s = 0.1\n"
        "outbox_backoff_max_s = 1.0\n"
        "shutdown_grace_s = 2.0\n",
        encoding="utf-8",
    )
    return path


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Another calsched command on the same configuration (not under the limit)."""
    return subprocess.run(
        [sys.executable, "-m", "calsched", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_disk_full_is_503_said_once_and_recovers_by_itself(config: Path, tmp_path: Path) -> None:
    """The whole episode, against the real daemon and a real EFBIG."""
    port = int(config.read_text().split("port = ")[1].split("\n")[0])
    base = f"http://127.0.0.1:{port}"
    daemon = Daemon(config)
    try:
        until("the control API", lambda: _answers(f"{base}/healthz"), daemon)
        secret = (tmp_path / "control.secret").read_bytes()
        headers = {"authorization": f"Bearer {agent_token(secret, AGENT)}"}
        added = cli(config, "slots", "add", "--agent", AGENT, "--id", "df-1", "--prompt", "go")
        assert added.returncode == 0, added.stderr

        def state() -> str | None:
            got = httpx.get(f"{base}/v1/agents/{AGENT}/slot", headers=headers, timeout=5)
            return str(got.json()["state"]) if got.status_code == 200 else None

        until("the slot in progress", lambda: state() == "in_progress", daemon)

        mark = len(daemon.lines)
        daemon.limit_file_size(4096)  # the disk is full
        answers = []
        for _ in range(5):
            got = httpx.post(
                f"{base}/v1/agents/{AGENT}/slot/pause", headers=headers, json={}, timeout=10
            )
            answers.append((got.status_code, got.json()))
        assert state() == "in_progress"  # nothing changed
        said = [line for line in daemon.lines if "journal unavailable: disk full" in line]
        episode = daemon.lines[mark:]

        daemon.limit_file_size(resource.RLIM_INFINITY)  # space returns
        got = httpx.post(
            f"{base}/v1/agents/{AGENT}/slot/pause", headers=headers, json={}, timeout=10
        )
        assert got.status_code == 200, (got.status_code, got.text, daemon.log())
        assert got.json()["state"] == "paused"
        recovered = "journal available again"
        until("the all-clear", lambda: any(recovered in x for x in daemon.lines), daemon)
    finally:
        status = daemon.stop()
    expected = {
        "error": "journal_unavailable",
        "message": "journal unavailable: disk full; try again later",
    }
    assert answers == [(503, expected)] * 5, daemon.log()
    writer_lines = [x for x in said if "tool calls answer 503" in x]
    assert len(writer_lines) == 1, daemon.log()
    assert "Traceback" not in daemon.log()
    assert status == 0, daemon.log()
    verified = cli(config, "journal", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    print(
        f"disk full: 5 calls answered 503 journal_unavailable; {len(said)} line(s) name it "
        f"({len(writer_lines)} from the journal writer); recovered without a restart"
    )
    print("\n".join(["the daemon's log during the episode:", *episode]))


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
