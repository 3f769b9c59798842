"""``calsched demo``: the real daemon, simulated agents, and a crash, in about 20 seconds.

What happens, in order (``docs/demo.md`` walks through it with real output):

1. A throw-away directory gets a SQLite database (migrated), a control secret and a TOML
   config: embedded calendar (no ``backend_url``), webhook host on loopback, heartbeat
   every half second (:mod:`calsched.demo.scenario`).
2. The demo process serves the webhook host: each wake starts a simulated agent that,
   after seeded random delays, calls the daemon's control API with its own agent token to
   complete, pause-resume-complete, or abort its slot (:mod:`calsched.demo.agents`).
3. ``python -m calsched --config … run`` starts as a subprocess, and the embedded calendar
   is seeded with nine slots for four agents at staggered fire times.
4. Part-way, while a slot is in progress or paused, the daemon is killed with SIGKILL and
   started again; the active slots of ``/v1/status`` before and after are printed and
   compared (:func:`calsched.demo.run.run_demo`).
5. Once every slot has ended and the backend acknowledged every change, the daemon is
   stopped with SIGTERM and the history is printed from the ``slot_timeline`` SQL view
   (:mod:`calsched.demo.report`).

Everything stays on 127.0.0.1. :class:`DemoError` (status 1 from the CLI) says why the
demo could not show what it promises. This package's top level stays light (the CLI
imports it for ``--help``); the run itself is :func:`calsched.demo.run.run_demo`.
"""

from __future__ import annotations

from calsched.demo.command import demo_command
from calsched.demo.scenario import DemoError, DemoOptions

__all__ = ["DemoError", "DemoOptions", "demo_command"]
