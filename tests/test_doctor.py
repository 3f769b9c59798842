"""calsched.commands.doctor: ``calsched doctor`` in-process with CliRunner: one line per
check within 80 columns, every setting with its source, exit 1 when a check fails."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from calsched.cli import app
from calsched.journal import Journal, migrate
from calsched.tokens import load_or_create_secret
from tests.conftest import isolate_cli_env

runner = CliRunner()


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Nothing made yet: a SQLite path, a secret path, a free port, a command host."""
    isolate_cli_env(monkeypatch, tmp_path, "doc.db")
    monkeypatch.setenv("CALSCHED_HOST__ADAPTER", "command")
    monkeypatch.setenv("CALSCHED_HOST__COMMAND", json.dumps([sys.executable, "-c", "pass"]))
    return tmp_path


@pytest.fixture
def ready(env: Path) -> Path:
    """The database migrated and the secret made, as after a first `calsched run`."""
    Journal.open(f"sqlite:///{env / 'doc.db'}", "host-a", upgrade=True).close()
    load_or_create_secret(env / "control.secret")
    return env


def doctor(*args: str, code: int) -> Result:
    result = runner.invoke(app, [*args, "doctor"])
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.output
    for line in result.stdout.splitlines():
        assert len(line) <= 80, line
    return result


def checks(result: Result) -> dict[str, str]:
    """The check lines by name: ``{"database": "ok   database    sqlite..."}``."""
    found: dict[str, str] = {}
    for line in result.stdout.splitlines():
        if line.startswith(("ok ", "FAIL ")):
            found[line.split()[1]] = line
    return found


def test_a_ready_configuration_passes(ready: Path) -> None:
    """Every check ok (exit 0); the schema revision and each setting's source shown."""
    seen = checks(doctor(code=0))
    assert set(seen) == {
        "config",
        "identifier",
        "secret",
        "database",
        "control",
        "backend",
        "host",
    }
    assert all(line.startswith("ok ") for line in seen.values())
    assert f"schema {migrate.HEAD} (head)" in seen["database"]
    assert "host-a (env CALSCHED_IDENTIFIER)" in seen["identifier"]
    assert "free (no daemon running)" in seen["control"]


def test_json_lists_every_setting_with_its_source(ready: Path) -> None:
    """--json: the checks and every setting; secrets only as set/unset."""
    result = runner.invoke(app, ["doctor", "--json"], env={"CALSCHED_BACKEND_API_KEY": "k-9"})
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["ok"] is True
    settings = {s["name"]: s for s in data["settings"]}
    assert settings["identifier"]["source"] == "env CALSCHED_IDENTIFIER"
    assert settings["control.host"] == {
        "name": "control.host",
        "value": "127.0.0.1",
        "source": "default",
    }
    assert settings["backend_api_key"]["value"] == "set"
    assert "k-9" not in result.stdout


def test_failing_checks_exit_1(ready: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No host, an old schema, a port taken by something else, a backend without a key."""
    from calsched.commands import doctor as module

    monkeypatch.setattr(module, "TIMEOUT_S", 0.3)  # the squatter below never answers
    monkeypatch.setenv("CALSCHED_HOST__ADAPTER", "none")
    monkeypatch.delenv("CALSCHED_HOST__COMMAND")
    monkeypatch.setenv("CALSCHED_BACKEND_URL", "http://127.0.0.1:9/")
    journal = Journal.open(f"sqlite:///{ready / 'doc.db'}", "host-a")
    try:
        migrate.downgrade(journal.engine, "0001")
    finally:
        journal.close()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        monkeypatch.setenv("CALSCHED_CONTROL__PORT", str(squatter.getsockname()[1]))
        seen = checks(doctor(code=1))
    assert seen["host"].startswith("FAIL host        no host adapter")
    assert seen["database"].startswith("FAIL")
    assert "schema 0001" in seen["database"]
    assert "is taken by something that is not calsched" in seen["control"]
    assert "no API key" in seen["backend"]
    assert seen["config"].startswith("ok ")


def test_an_open_secret_file_and_a_bad_config_fail(env: Path) -> None:
    """A secret readable by others fails its line; a config that cannot load is one line."""
    secret = env / "control.secret"
    load_or_create_secret(secret)
    secret.chmod(0o644)
    assert "open to group or others" in checks(doctor(code=1))["secret"]
    bad = runner.invoke(app, ["doctor"], env={"CALSCHED_CONTROL__PORT": "eighty"})
    assert bad.exit_code == 1
    (line,) = bad.stdout.splitlines()
    assert line.startswith("FAIL config      invalid setting control.port")


def test_nothing_made_yet_is_not_a_failure(env: Path) -> None:
    """Before the first run: no database, no secret file; both said, neither fails."""
    seen = checks(doctor(code=0))
    assert "none yet: run makes it" in seen["database"]
    assert "none yet: run makes it" in seen["secret"]
