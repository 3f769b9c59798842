"""calsched.failpoints: the CALSCHED_FAILPOINT test seam (parsing, counting, the kill)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from calsched.errors import ConfigError
from calsched.failpoints import (
    FAILPOINT_ENV,
    Failpoint,
    failpoint_from_env,
    parse_failpoints,
    unarmed,
)


def test_parse_reads_every_armed_seam() -> None:
    assert parse_failpoints("after_commit:17, after_wake:2") == {
        "after_commit": 17,
        "after_wake": 2,
    }


@pytest.mark.parametrize("spec", ["after_comit:1", "after_commit", "after_commit:0", "x:y"])
def test_parse_refuses_a_typo_rather_than_arming_nothing(spec: str) -> None:
    with pytest.raises(ConfigError, match=FAILPOINT_ENV):
        parse_failpoints(spec)


def test_unset_or_empty_is_the_no_op() -> None:
    assert failpoint_from_env({}) is unarmed
    assert failpoint_from_env({FAILPOINT_ENV: " "}) is unarmed
    assert unarmed("after_commit") is None


def test_kills_on_the_armed_hit_only() -> None:
    kills: list[int] = []
    hook = failpoint_from_env({FAILPOINT_ENV: "after_wake:3"})
    assert isinstance(hook, Failpoint)
    hook._kill = lambda: kills.append(hook.hits["after_wake"])
    for _ in range(5):
        hook("after_commit")
        hook("after_wake")
    assert kills == [3]
    assert hook.hits["after_commit"] == 5


def test_the_real_kill_is_sigkill() -> None:
    code = (
        "from calsched.failpoints import Failpoint; Failpoint({'after_commit': 1})('after_commit')"
    )
    done = subprocess.run([sys.executable, "-c", code], env=os.environ, timeout=60)
    assert done.returncode == -signal.SIGKILL
