"""A host that takes wakes by running a program.

The program is started directly (``asyncio.create_subprocess_exec``, never a shell), with
placeholders in its arguments filled per wake and the wake message on its standard input.
Standard input and the captured error output are temporary files rather than pipes: a
program that never reads its input cannot block us, and one that leaves a background
child holding stderr open (``agent &``) cannot make a finished wake look hung.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import string
import tempfile
from collections.abc import Mapping, Sequence
from typing import IO, Any

from calsched.errors import ConfigError, WakeFailedError
from calsched.host.webhook import MAX_AGENT_LIST_BYTES, parse_agent_list
from calsched.model import AgentReport
from calsched.ports import WakeRequest

__all__ = ["PLACEHOLDERS", "CommandHost"]

log = logging.getLogger("calsched.host")

#: The names an argument template may use, e.g. ``["notify", "--agent={agent_id}"]``.
PLACEHOLDERS = frozenset({"agent_id", "slot_id", "source", "attempt"})
#: Variables with this prefix are not passed on by default: they may hold the API key.
_PRIVATE_ENV_PREFIX = "CALSCHED_"
#: The wake's trace-context headers a program gets, as TRACEPARENT and TRACESTATE.
_TRACE_KEYS = ("traceparent", "tracestate")
_STDERR_KEEP = 4096
_CAUSE_CHARS = 200


def _check_template(argv: Sequence[str], what: str) -> tuple[str, ...]:
    if isinstance(argv, str):
        # A bare string would be split into characters: one of the commonest config slips.
        raise ConfigError(f"{what} must be a list of arguments, not a string")
    argv = tuple(argv)
    if not argv or not argv[0]:
        raise ConfigError(f"{what} must name a program")
    sample = {"agent_id": "a", "slot_id": "s", "source": "calendar:slot-s", "attempt": 1}
    for arg in argv:
        try:
            fields = [name for _, name, _, _ in string.Formatter().parse(arg) if name is not None]
        except ValueError as exc:
            raise ConfigError(f"{what}: bad placeholder in {arg!r}: {exc}") from None
        unknown = sorted(set(fields) - PLACEHOLDERS)
        if unknown:
            raise ConfigError(
                f"{what}: unknown placeholder {{{unknown[0]}}} in {arg!r}; "
                f"use {', '.join('{' + p + '}' for p in sorted(PLACEHOLDERS))}"
            )
        try:  # catches bad format specs such as {attempt:q} now, not at the first wake
            arg.format_map(sample)
        except (ValueError, KeyError, IndexError, AttributeError) as exc:
            raise ConfigError(f"{what}: bad placeholder in {arg!r}: {exc}") from None
    return argv


def _first_line(data: bytes) -> str:
    text = data.decode("utf-8", errors="replace")
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line if len(line) <= _CAUSE_CHARS else line[: _CAUSE_CHARS - 1] + "…"


def _exit_cause(code: int, stderr: bytes) -> str:
    what = f"killed by signal {-code}" if code < 0 else f"exit {code}"
    line = _first_line(stderr)
    return f"{what}: {line}" if line else what


class CommandHost:
    """Wakes an agent by running ``argv_template`` with the wake message on stdin.

    Each argument may hold the placeholders ``{agent_id}``, ``{slot_id}``, ``{source}`` and
    ``{attempt}``, filled one argument at a time (values never split into more arguments
    and never reach a shell); any other placeholder is a
    :class:`~calsched.errors.ConfigError` here, not at the first wake.

    Exit status 0 means the wake was accepted. A non-zero exit raises
    :class:`~calsched.errors.WakeFailedError` with ``exit N: <first line of stderr>``.
    There is no deadline here: the scheduler bounds every call
    (``settings.wake_timeout_s``) by cancelling it, and a cancelled wake or list kills the
    program's process group and reaps it, so nothing lingers as an orphan or a zombie.

    ``list_argv``, if given, is run as is for :meth:`list_agents` and prints
    ``{"agents": [...]}`` on stdout. ``env`` replaces the environment of both programs;
    by default they get the daemon's environment without ``CALSCHED_*`` variables, which
    may hold the backend's API key. With tracing on, a wake program also gets the wake's
    trace context as ``TRACEPARENT`` (and ``TRACESTATE``).
    """

    def __init__(
        self,
        argv_template: Sequence[str],
        *,
        list_argv: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._argv = _check_template(argv_template, "wake command")
        self._list_argv: tuple[str, ...] | None = None
        if list_argv is not None:
            if isinstance(list_argv, str) or not list_argv or not list_argv[0]:
                raise ConfigError("list command must be a non-empty list of arguments")
            self._list_argv = tuple(list_argv)
        self._env = dict(env) if env is not None else None

    @property
    def target(self) -> str:
        """Where wakes go, for log lines: the program run (its arguments may be private)."""
        return f"command {self._argv[0]}"

    def __repr__(self) -> str:
        return (
            f"CommandHost({list(self._argv)!r}, "
            f"list_argv={list(self._list_argv) if self._list_argv else None!r})"
        )

    def argv_for(self, request: WakeRequest) -> list[str]:
        """The arguments a wake runs with: the template with the placeholders filled."""
        values = {
            "agent_id": request.agent_id,
            "slot_id": request.slot_id,
            "source": request.source,
            "attempt": request.attempt,
        }
        return [arg.format_map(values) for arg in self._argv]

    async def wake_agent(self, request: WakeRequest) -> None:
        """Run the wake program; return on exit 0, else raise :class:`WakeFailedError`."""
        argv = self.argv_for(request)
        with tempfile.TemporaryFile() as stdin, tempfile.TemporaryFile() as stderr:
            stdin.write(request.message.encode("utf-8", errors="replace"))
            stdin.seek(0)
            code = await self._run(
                argv, request.agent_id, stdin=stdin, stdout=None, stderr=stderr, trace=request.trace
            )
            if code != 0:
                stderr.seek(0)
                raise WakeFailedError(
                    request.agent_id, _exit_cause(code, stderr.read(_STDERR_KEEP))
                )

    async def list_agents(self) -> list[AgentReport]:
        """The agents the list program prints; ``[]`` without one or on any failure."""
        if self._list_argv is None:
            return []
        with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
            try:
                code = await self._run(
                    list(self._list_argv), "(list)", stdin=None, stdout=stdout, stderr=stderr
                )
            except WakeFailedError as exc:
                log.warning("listing agents failed: %s", exc.cause)
                return []
            if code != 0:
                stderr.seek(0)
                log.warning(
                    "listing agents failed: %s", _exit_cause(code, stderr.read(_STDERR_KEEP))
                )
                return []
            stdout.seek(0)
            body = stdout.read(MAX_AGENT_LIST_BYTES + 1)
        if len(body) > MAX_AGENT_LIST_BYTES:
            log.warning("listing agents failed: output over %d bytes", MAX_AGENT_LIST_BYTES)
            return []
        try:
            data: Any = json.loads(body)
        except (ValueError, RecursionError):
            log.warning("listing agents failed: the output is not JSON")
            return []
        return parse_agent_list(data, origin="list command")

    async def _run(
        self,
        argv: list[str],
        agent_id: str,
        *,
        stdin: IO[bytes] | None,
        stdout: IO[bytes] | None,
        stderr: IO[bytes],
        trace: Mapping[str, str] | None = None,
    ) -> int:
        """Run ``argv`` to its end; the exit code (negative: a signal).

        ``trace`` (a wake's W3C trace context) goes in the program's environment as
        ``TRACEPARENT`` and ``TRACESTATE``, the OpenTelemetry names for a process.

        Unbounded on purpose: the caller's deadline cancels it, and cancelling kills the
        process group.
        """
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=stdin if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=stdout if stdout is not None else asyncio.subprocess.DEVNULL,
                stderr=stderr,
                env=self._environment(trace),
                # Its own process group, so a cancelled wake kills what it started too.
                start_new_session=True,
            )
        except OSError as exc:
            raise WakeFailedError(agent_id, f"cannot run {argv[0]}: {exc.strerror}") from exc
        except ValueError as exc:  # e.g. a NUL byte in an argument filled from the slot
            raise WakeFailedError(agent_id, f"cannot run {argv[0]}: {exc}") from exc
        try:
            return await proc.wait()
        finally:
            # Cancelled from outside (the scheduler's wake_timeout_s, shutdown): no orphan.
            if proc.returncode is None:
                await _kill(proc)

    def _environment(self, trace: Mapping[str, str] | None = None) -> dict[str, str]:
        if self._env is not None:
            env = self._env
        else:
            env = {k: v for k, v in os.environ.items() if not k.startswith(_PRIVATE_ENV_PREFIX)}
        if trace:
            env = {**env, **{k.upper(): v for k, v in trace.items() if k in _TRACE_KEYS}}
        return env


async def _kill(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the program's process group and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # already gone
        pass
    except PermissionError:  # the group is not ours any more (pid reused): the child only
        proc.kill()
    # Shielded: a second cancellation must not leave the child unreaped.
    await asyncio.shield(proc.wait())
