"""deploy/calsched.service: it parses, and says what docs/operations.md says it says.

``systemd-analyze verify`` (systemd's own parser) runs where it is installed; the key
checks below run everywhere.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from calsched.daemon import EXIT_RESTART

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "calsched.service"
INSTALLED_AT = "/opt/calsched/.venv/bin/calsched"


def _parse(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value, in order (systemd keys may repeat, so no
    configparser, which keeps only the last of a repeated key)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        header = re.fullmatch(r"\[([A-Za-z]+)\]", line)
        if header:
            current = sections.setdefault(header.group(1), {})
            continue
        key, sep, value = line.partition("=")
        assert sep, (number, raw)
        assert current is not None, (number, raw)
        assert re.fullmatch(r"[A-Za-z]+", key), (number, raw)
        current.setdefault(key, []).append(value)
    return sections


UNIT_KEYS = _parse(UNIT.read_text())


def one(section: str, key: str) -> str:
    values = UNIT_KEYS[section][key]
    assert len(values) == 1, (key, values)
    return values[0]


def test_readiness_and_restarts() -> None:
    assert one("Service", "Type") == "notify"
    assert one("Service", "NotifyAccess") == "main"
    assert one("Service", "Restart") == "on-failure"
    assert one("Service", "RestartForceExitStatus") == str(EXIT_RESTART)
    argv = one("Service", "ExecStart").split()
    assert argv[0] == INSTALLED_AT
    # RestartForceExitStatus only matters when the daemon exits on a restart request.
    assert argv[1:3] == ["run", "--log-json"]
    assert "--exit-on-restart" in argv


def test_state_and_secrets() -> None:
    assert one("Service", "StateDirectory") == "calsched"
    assert one("Service", "StateDirectoryMode") == "0700"
    assert one("Service", "UMask") == "0077"
    assert one("Service", "DynamicUser") == "yes"
    env = dict(v.split("=", 1) for v in UNIT_KEYS["Service"]["Environment"])
    assert env["XDG_DATA_HOME"] == "/var/lib"  # default journal: /var/lib/calsched
    assert env["CALSCHED_BACKEND_API_KEY_FILE"] == "%d/backend.key"
    assert one("Service", "LoadCredential").startswith("backend.key:")
    assert not any("API_KEY=" in v for v in UNIT_KEYS["Service"]["Environment"])


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("CapabilityBoundingSet", ""),
    ],
)
def test_hardening(key: str, value: str) -> None:
    assert one("Service", key) == value


def test_system_call_filter() -> None:
    assert UNIT_KEYS["Service"]["SystemCallFilter"][0] == "@system-service"


def test_docs_show_this_unit() -> None:
    """docs/operations.md shows the file itself, not an older copy of it."""
    doc = (ROOT / "docs" / "operations.md").read_text()
    blocks = re.findall(r"```ini\n(.*?)```", doc, flags=re.S)
    assert UNIT.read_text() in blocks


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd's own parser has nothing to say (it exits 0 even on unknown keys, so its
    output is what counts). ExecStart must exist for it: the test's calsched is used."""
    calsched = Path(sys.executable).with_name("calsched")
    assert calsched.exists()
    copy = tmp_path / "calsched.service"
    copy.write_text(UNIT.read_text().replace(INSTALLED_AT, str(calsched)))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout + done.stderr == ""
