"""``calsched doctor``: is this configuration ready to run, and what is it made of?

One line per check, each fitting 80 columns: the configuration file, the identifier, the
secret file, the database and its schema revision, the control port, the backend and the
host; then every setting with its value and the source that set it. Exit status 1 if any
check fails. Reachability is checked without side effects: a TCP connect or a ``GET``,
never a heartbeat or a wake. Secrets are shown as ``set``/``unset``, never their values.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

import typer
from pydantic import SecretStr

from calsched.commands.common import (
    CliState,
    JsonOption,
    print_json,
    schema_revision,
    sqlite_path,
)
from calsched.config import Config, HostAdapter, setting_names
from calsched.errors import CalschedError

__all__ = ["Check", "doctor"]

#: Seconds each network check may take.
TIMEOUT_S = 3.0
WIDTH = 80


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the report: what was checked, whether it passed, and what was seen."""

    name: str
    ok: bool
    detail: str
    #: The path or URL inside ``detail``: shortened from its start first when the line
    #: is too long, so the verdict after it stays readable.
    subject: str = ""

    def line(self) -> str:
        """``ok   database    ...``, fitted to 80 columns."""
        return _fit(f"{'ok' if self.ok else 'FAIL':<4} {self.name:<11} {self.detail}", self.subject)


def _fit(text: str, subject: str = "") -> str:
    """``text`` within :data:`WIDTH` columns: ``subject`` (each time it occurs) keeps its
    end (``…/calsched/calsched.db``), then the line is cut if it is still too long."""
    times = text.count(subject) if subject else 0
    if len(text) > WIDTH and times:
        cut = -(-(len(text) - WIDTH) // times) + 1  # per occurrence, and one for the "…"
        keep = max(12, len(subject) - cut)
        if keep < len(subject):
            text = text.replace(subject, "…" + subject[len(subject) - keep + 1 :])
    return text if len(text) <= WIDTH else text[: WIDTH - 1] + "…"


def doctor(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Check the configuration, secret file, database, control port, backend and host;
    list every setting with its source. Exit 1 if a check fails.

    Example: calsched doctor --json
    """
    state = ctx.find_root().obj
    try:
        cfg = state.config() if isinstance(state, CliState) else Config()
    except CalschedError as exc:
        checks = [Check("config", False, str(exc))]
        _report(checks, [], as_json)
        raise typer.Exit(1) from None
    checks = [_config_file(state), _identifier(cfg)]
    for probe in (_secret_file, _database, _control, _backend, _host):
        try:
            checks.append(probe(cfg))
        except CalschedError as exc:  # a check that cannot even run has failed
            checks.append(Check(probe.__name__.strip("_").split("_")[0], False, str(exc)))
    _report(checks, _settings(cfg), as_json)
    if not all(c.ok for c in checks):
        raise typer.Exit(1)


def _report(checks: list[Check], settings: list[dict[str, str]], as_json: bool) -> None:
    if as_json:
        print_json(
            {
                "ok": all(c.ok for c in checks),
                "checks": [asdict(c) for c in checks],
                "settings": settings,
            }
        )
        return
    for check in checks:
        typer.echo(check.line())
    if settings:
        typer.echo("settings (value, source):")
        for item in settings:
            text = f"  {item['name']} = {item['value']}  ({item['source']})"
            typer.echo(_fit(text, item["value"]))


# -- the checks --------------------------------------------------------------------------


def _config_file(state: Any) -> Check:
    from calsched.config import CONFIG_ENV, default_config_path

    if isinstance(state, CliState) and state.config_path is not None:
        return Check("config", True, f"{state.config_path} (--config)", str(state.config_path))
    named = os.environ.get(CONFIG_ENV)
    if named:
        return Check("config", True, f"{named} ({CONFIG_ENV})", named)
    default = default_config_path()
    if default.is_file():
        return Check("config", True, f"{default} (the user config file)", str(default))
    return Check("config", True, "no file: defaults, CALSCHED_* and flags")


def _identifier(cfg: Config) -> Check:
    source = cfg.source_of("identifier")
    why = "the host name" if source == "default" else source
    return Check("identifier", True, f"{cfg.identifier} ({why})")


def _secret_file(cfg: Config) -> Check:
    path = cfg.control.secret_file.expanduser()
    if not path.exists():
        return Check("secret", True, f"{path} (none yet: run makes it)", str(path))
    from calsched.tokens import load_or_create_secret

    try:
        load_or_create_secret(path)  # an open mode or a short file is refused
    except CalschedError as exc:
        return Check("secret", False, str(exc), str(path))
    mode = stat.S_IMODE(path.stat().st_mode)
    return Check("secret", True, f"{path} (mode {mode:04o})", str(path))


def _database(cfg: Config) -> Check:
    from calsched.journal import migrate

    shown = cfg.database_display()
    path = sqlite_path(cfg.database_url)
    if path is not None and not path.exists():
        return Check("database", True, f"{shown} (none yet: run makes it)", shown)
    current = schema_revision(cfg)
    head = migrate.head_revision()
    if current == head:
        return Check("database", True, f"{shown}, schema {current} (head)", shown)
    hint = "`calsched db upgrade` migrates it"
    detail = f"{shown}, schema {current or 'none'}, head {head}; {hint}"
    return Check("database", False, detail, shown)


def _control(cfg: Config) -> Check:
    import httpx

    where = f"{cfg.control.host}:{cfg.control.port}"
    if not _listening(cfg.control.host, cfg.control.port):
        return Check("control", True, f"{where} free (no daemon running)")
    try:
        response = httpx.get(f"{cfg.control.url}/healthz", timeout=TIMEOUT_S)
        healthy = response.status_code == 200 and response.json() == {"ok": True}
    except (httpx.HTTPError, ValueError):
        healthy = False
    if healthy:
        return Check("control", True, f"{where}: a calsched daemon answers /healthz")
    return Check("control", False, f"{where} is taken by something that is not calsched")


def _backend(cfg: Config) -> Check:
    import httpx

    if cfg.backend_url is None:
        return Check("backend", True, "the embedded calendar (in the journal database)")
    url = str(cfg.backend_url)
    if cfg.backend_key() is None:
        return Check(
            "backend", False, f"{url}: no API key (CALSCHED_BACKEND_API_KEY or _file)", url
        )
    try:
        response = httpx.get(url, timeout=TIMEOUT_S)
    except httpx.HTTPError as exc:
        return Check("backend", False, f"{url} unreachable: {type(exc).__name__}", url)
    return Check("backend", True, f"{url} answers (HTTP {response.status_code})", url)


def _host(cfg: Config) -> Check:
    host = cfg.host
    if host.adapter is HostAdapter.none:
        return Check("host", False, "no host adapter: every wake fails (set host.adapter)")
    if host.adapter is HostAdapter.webhook:
        url = str(host.wake_url)
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if _listening(parts.hostname or "", port):
            return Check("host", True, f"webhook {url} reachable", url)
        return Check("host", False, f"webhook {url}: nothing listens there", url)
    if host.adapter is HostAdapter.command:
        program = (host.command or [""])[0]
        found = shutil.which(program)
        if found:
            return Check("host", True, f"command {found}", found)
        return Check("host", False, f"command {program!r} not found or not executable")
    if host.adapter is HostAdapter.console:
        return Check("host", True, "console: each wake is printed to the daemon's terminal")
    return Check("host", True, f"{host.adapter.value}")


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host.strip("[]"), port), timeout=TIMEOUT_S):
            return True
    except OSError:
        return False


# -- the settings ------------------------------------------------------------------------


def _settings(cfg: Config) -> list[dict[str, str]]:
    shown: list[dict[str, str]] = []
    for name in setting_names():
        value = _value(cfg, name)
        shown.append({"name": name, "value": value, "source": cfg.source_of(name)})
    return shown


def _value(cfg: Config, dotted: str) -> str:
    if dotted == "database_url":
        return cfg.database_display()  # never a password
    found: Any = cfg
    for part in dotted.split("."):
        found = getattr(found, part)
    if isinstance(found, SecretStr):
        return "set"
    if found is None:
        return "unset"
    if isinstance(found, float):
        return f"{found:g}"
    value = getattr(found, "value", found)  # enums by their value
    return str(value)
