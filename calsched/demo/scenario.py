"""The demo's script: which slots, what each agent does with its slot, the daemon's config.

Everything here is pure (no I/O but the random generator), so the tests pin it down:
the same seed gives the same plan, every behaviour appears, and the ``long`` slot is
paused when the daemon is killed.
"""

from __future__ import annotations

import enum
import json
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from calsched.errors import CalschedError

__all__ = [
    "DEFAULT_SEED",
    "DEMO_SLOTS",
    "IDENTIFIER",
    "AgentPlan",
    "Behaviour",
    "DemoError",
    "DemoOptions",
    "DemoSlot",
    "child_environment",
    "daemon_config",
    "plan_behaviours",
]

#: The daemon's identifier in the journal and the heartbeat.
IDENTIFIER = "demo-host"
#: The seed when none is given: the same run as the one docs/demo.md shows.
DEFAULT_SEED = 7


class DemoError(CalschedError, RuntimeError):
    """The demo could not show what it promises; the message is one line for the user."""


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """How to run the demo. Times are seconds; ``kill_after_s`` counts from the seeding."""

    seed: int = DEFAULT_SEED
    keep: bool = False
    #: ``None``: a live view when stdout is a terminal, plain lines otherwise.
    live: bool | None = None
    timeout_s: float = 55.0
    kill_after_s: float = 5.5
    heartbeat_s: float = 0.5


class Behaviour(enum.StrEnum):
    """What a simulated agent does with its slot once woken."""

    complete = "complete"
    pause_resume_complete = "pause-resume-complete"
    abort = "abort"


@dataclass(frozen=True, slots=True)
class DemoSlot:
    """A slot put in the embedded calendar to fire ``fire_after_s`` after the seeding.

    ``long`` marks the slot whose agent stays paused across the planned kill, so the
    daemon always dies with a paused slot to bring back.
    """

    slot_id: str
    agent_id: str
    title: str
    fire_after_s: float
    long: bool = False


#: Nine slots for four agents over about ten seconds; alice's three queue behind each other.
DEMO_SLOTS: tuple[DemoSlot, ...] = (
    DemoSlot("s-01", "alice", "Triage the inbox", 0.5),
    DemoSlot("s-02", "bob", "Summarise yesterday's tickets", 1.0),
    DemoSlot("s-03", "carol", "Refresh the dashboards", 1.5),
    DemoSlot("s-04", "dave", "Nightly data export", 2.5, long=True),
    DemoSlot("s-05", "alice", "Draft the status update", 3.0),
    DemoSlot("s-06", "bob", "Review open pull requests", 5.0),
    DemoSlot("s-07", "carol", "Rotate the on-call notes", 7.0),
    DemoSlot("s-08", "dave", "Check the backups", 9.0),
    DemoSlot("s-09", "alice", "Write the daily report", 10.5),
)

_ABORT_REASONS = (
    "the upstream API is down",
    "missing credentials for the data source",
    "nothing to do today",
)


@dataclass(frozen=True, slots=True)
class AgentPlan:
    """What the agent woken for ``slot_id`` does, and when (seconds after its wake).

    ``first_delay_s`` before the first call; for ``pause-resume-complete``, ``pause_s``
    paused and ``finish_delay_s`` between resuming and completing. ``text`` is the summary
    (complete) or the reason (abort).
    """

    slot_id: str
    agent_id: str
    behaviour: Behaviour
    first_delay_s: float
    pause_s: float
    finish_delay_s: float
    text: str


def plan_behaviours(
    demo_slots: Sequence[DemoSlot], seed: int, *, kill_after_s: float
) -> dict[str, AgentPlan]:
    """Each slot's agent plan, drawn from ``random.Random(seed)``: same seed, same plan.

    Every behaviour appears at least once (given one non-``long`` slot per behaviour), and
    a ``long`` slot pauses until at least two seconds past ``kill_after_s``.
    """
    rng = random.Random(seed)
    kinds = [
        Behaviour.pause_resume_complete if s.long else rng.choice(list(Behaviour))
        for s in demo_slots
    ]
    free = [i for i, s in enumerate(demo_slots) if not s.long]
    for needed in Behaviour:
        if needed not in kinds and free:
            # Take a slot whose behaviour occurs more than once, so none disappears.
            spare = [i for i in free if kinds.count(kinds[i]) > 1] or free
            kinds[rng.choice(spare)] = needed
    plans: dict[str, AgentPlan] = {}
    for s, kind in zip(demo_slots, kinds, strict=True):
        first = round(rng.uniform(0.6, 1.5), 2)
        pause = round(rng.uniform(1.0, 2.0), 2)
        finish = round(rng.uniform(0.4, 1.2), 2)
        if s.long:
            # Fire time + first call + pause ends two seconds after the planned kill.
            pause = round(max(pause, kill_after_s + 2.0 - s.fire_after_s - first), 2)
        if kind is Behaviour.abort:
            text = f"agent gave up: {rng.choice(_ABORT_REASONS)}"
        else:
            text = f"done: {s.title.lower()}"
        plans[s.slot_id] = AgentPlan(s.slot_id, s.agent_id, kind, first, pause, finish, text)
    return plans


def daemon_config(
    *,
    database_url: str,
    control_port: int,
    secret_file: Path,
    wake_url: str,
    agents_url: str,
    heartbeat_s: float,
) -> str:
    """The daemon's TOML: embedded calendar (no ``backend_url``), webhook host, fast beats."""

    def q(value: str) -> str:
        # A JSON string is a valid TOML basic string for the paths and URLs used here.
        return json.dumps(value)

    return "\n".join(
        [
            "# Written by `calsched demo`; thrown away with its directory.",
            f"database_url = {q(database_url)}",
            f"identifier = {q(IDENTIFIER)}",
            'log_level = "warning"',
            "",
            "[control]",
            'host = "127.0.0.1"',
            f"port = {control_port}",
            f"secret_file = {q(str(secret_file))}",
            "",
            "[host]",
            'adapter = "webhook"',
            f"wake_url = {q(wake_url)}",
            f"agents_url = {q(agents_url)}",
            "",
            "[scheduler]",
            f"heartbeat_interval_s = {heartbeat_s}",
            "wake_timeout_s = 5.0",
            "backend_deadline_s = 5.0",
            "outbox_poll_s = 0.2",
            "outbox_backoff_initial_s = 0.2",
            "outbox_backoff_max_s = 2.0",
            "shutdown_grace_s = 3.0",
            "",
        ]
    )


def child_environment(workdir: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The daemon's environment: no ``CALSCHED_*`` of the user's, XDG dirs in ``workdir``.

    A user's ``CALSCHED_BACKEND_URL`` (say) would otherwise outrank the demo's config file
    and point the throw-away daemon at a real backend.
    """
    env = dict(os.environ if environ is None else environ)
    for key in [k for k in env if k.upper().startswith("CALSCHED_")]:
        del env[key]
    for name in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"):
        env[name] = str(workdir / "xdg" / name.removeprefix("XDG_").removesuffix("_HOME").lower())
    env["PYTHONUNBUFFERED"] = "1"
    return env
