"""Tests for calsched.tokens: derivation, verification and the secret file."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from calsched.errors import ConfigError, InvalidInputError
from calsched.tokens import (
    SECRET_BYTES,
    admin_token,
    agent_of_token,
    agent_token,
    load_or_create_secret,
    verify_admin_token,
    verify_agent_token,
)

SECRET = b"s" * 32
OTHER = b"o" * 32


def test_agent_token_is_stable_and_verifies() -> None:
    """The same secret and id give the same token, and it verifies for that id only."""
    token = agent_token(SECRET, "alice")
    assert token == agent_token(SECRET, "alice")
    assert token.startswith("agent.")
    assert verify_agent_token(SECRET, "alice", token)
    assert not verify_agent_token(SECRET, "bob", token)
    assert not verify_agent_token(OTHER, "alice", token)


def test_agent_token_names_its_agent() -> None:
    """agent_of_token recovers the agent id of a valid token."""
    assert agent_of_token(SECRET, agent_token(SECRET, "alice")) == "alice"
    assert agent_of_token(OTHER, agent_token(SECRET, "alice")) is None


def test_admin_token_differs_from_every_agent_token() -> None:
    """The admin token is derived under another label: no agent id yields it."""
    admin = admin_token(SECRET)
    assert admin.startswith("admin.")
    assert verify_admin_token(SECRET, admin)
    assert not verify_admin_token(OTHER, admin)
    for agent_id in ("admin", ":", "agent:admin"):
        token = agent_token(SECRET, agent_id)
        assert token != admin
        assert not verify_admin_token(SECRET, token)
    assert agent_of_token(SECRET, admin) is None


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "agent.",
        "agent..",
        "agent.YWxpY2U",
        "agent.!!!.xyz",
        "agent.YWxpY2U=.abc",
        "admin.",
        "agent.//8.abc",
        "agent.YWxpY2U.\ud800",
        "agent.YWxpY2U.é",
    ],
)
def test_malformed_tokens_are_refused(token: str) -> None:
    """Tokens that are not well-formed never verify and never raise."""
    assert agent_of_token(SECRET, token) is None
    assert not verify_admin_token(SECRET, token)
    assert not verify_agent_token(SECRET, "alice", token)


def test_tampered_agent_id_is_refused() -> None:
    """Swapping the id part of a token for another agent's invalidates it."""
    alice = agent_token(SECRET, "alice")
    bob = agent_token(SECRET, "bob")
    forged = "agent." + bob.split(".")[1] + "." + alice.split(".")[2]
    assert agent_of_token(SECRET, forged) is None


def test_non_canonical_base64_is_refused() -> None:
    """An id part with stray low bits (another spelling of the same bytes) is refused."""
    token = agent_token(SECRET, "a")  # b"a" encodes as "YQ"; "YR" decodes to b"a" too
    _, encoded, mac = token.split(".")
    assert encoded == "YQ"
    assert agent_of_token(SECRET, f"agent.YR.{mac}") is None


def test_short_secret_is_a_config_error() -> None:
    """A secret under 16 bytes is refused with a message that does not show it."""
    with pytest.raises(ConfigError, match="at least 16 bytes") as info:
        agent_token(b"short", "alice")
    assert "short" not in str(info.value)
    with pytest.raises(ConfigError):
        admin_token(b"")


@pytest.mark.parametrize("agent_id", ["", "a" * 257, "a\ud800"])
def test_impossible_agent_ids_have_no_token(agent_id: str) -> None:
    """Empty, over-long and unencodable ids have no token and verify nothing."""
    with pytest.raises(InvalidInputError):
        agent_token(SECRET, agent_id)
    assert not verify_agent_token(SECRET, agent_id, agent_token(SECRET, "a"))


@given(st.text(min_size=1, max_size=256))
def test_any_agent_id_round_trips(agent_id: str) -> None:
    """Every encodable agent id (any Unicode, dots, slashes) round-trips through its token."""
    try:
        token = agent_token(SECRET, agent_id)
    except InvalidInputError:
        return  # lone surrogates: covered by test_impossible_agent_ids_have_no_token
    assert agent_of_token(SECRET, token) == agent_id
    assert token.isascii()


def test_secret_is_created_0600_and_reused(tmp_path: Path) -> None:
    """A missing secret is made with mode 0600 in a new private directory, then reused."""
    path = tmp_path / "conf" / "secret"
    secret = load_or_create_secret(path)
    assert len(secret) == SECRET_BYTES
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_or_create_secret(path) == secret
    assert [p.name for p in path.parent.iterdir()] == ["secret"]  # no temporary left behind


def test_secret_ignores_a_permissive_umask(tmp_path: Path) -> None:
    """Even with umask 000 the new secret file is 0600."""
    old = os.umask(0)
    try:
        path = tmp_path / "secret"
        load_or_create_secret(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_secret_readable_by_others_is_refused(tmp_path: Path) -> None:
    """A secret file open to group or others is not used."""
    path = tmp_path / "secret"
    path.write_bytes(os.urandom(32))
    path.chmod(0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_or_create_secret(path)


def test_short_secret_file_is_refused(tmp_path: Path) -> None:
    """An empty or truncated secret file is an error, not a weak key."""
    path = tmp_path / "secret"
    path.write_bytes(b"tiny")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="fewer than 16"):
        load_or_create_secret(path)


def test_an_existing_secret_file_is_kept(tmp_path: Path) -> None:
    """A secret the operator put there is used as is."""
    path = tmp_path / "secret"
    path.write_bytes(b"k" * 40)
    path.chmod(0o600)
    assert load_or_create_secret(path) == b"k" * 40


def test_concurrent_creation_agrees(tmp_path: Path) -> None:
    """Threads racing to create the secret all end up with the same one."""
    path = tmp_path / "secret"
    results: list[bytes] = []
    barrier = threading.Barrier(8)

    def create() -> None:
        barrier.wait()
        results.append(load_or_create_secret(path))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8
    assert len(set(results)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]
