"""calsched.config: precedence, defaults, secrets, and one-line errors."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from pydantic import ValidationError

from calsched.config import (
    Config,
    ControlConfig,
    HostAdapter,
    default_config_path,
    load_config,
    setting_names,
)
from calsched.errors import ConfigError
from calsched.model import MAX_ID_CHARS
from calsched.settings import QueuePolicy, SchedulerSettings

SECRET = "sk-very-secret-value-123"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No CALSCHED_* variable leaks in; user dirs point into the test's tmp_path."""
    for name in list(os.environ):
        if name.startswith("CALSCHED_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return tmp_path


def write(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` (parents created) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def one_line_error(excinfo: pytest.ExceptionInfo[ConfigError]) -> str:
    """The error's message, asserted to be a single line."""
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# -- defaults ----------------------------------------------------------------------------


def test_default_data_dir_is_private_under_umask_022(tmp_path: Path) -> None:
    """The data directory is created 0700 whatever the umask."""
    old = os.umask(0o022)
    try:
        load_config()
    finally:
        os.umask(old)
    assert (tmp_path / "data" / "calsched").stat().st_mode & 0o777 == 0o700


def test_defaults(tmp_path: Path) -> None:
    """Without file, env or flags every setting has its documented default."""
    cfg = load_config()
    data_dir = tmp_path / "data" / "calsched"
    assert cfg.database_url == f"sqlite:///{data_dir / 'calsched.db'}"
    assert data_dir.is_dir()  # created so that SQLite can make its file there
    assert data_dir.stat().st_mode & 0o777 == 0o700  # the journal holds prompts
    assert cfg.identifier == socket.gethostname()
    assert cfg.sqlite_synchronous == "FULL"
    assert cfg.backend_url is None
    assert cfg.backend_key() is None
    assert cfg.backend_max_response_bytes == 8 * 1024 * 1024
    assert cfg.control == ControlConfig(secret_file=data_dir / "control.secret")
    assert (cfg.control.host, cfg.control.port) == ("127.0.0.1", 8765)
    assert cfg.host.adapter is HostAdapter.console
    assert cfg.scheduler == SchedulerSettings()
    assert (cfg.log_json, cfg.log_level) == (False, "info")
    assert (cfg.tracing, cfg.tracing_exporter) == (False, None)


def test_scheduler_settings_carry_the_top_level_identifier() -> None:
    """scheduler_settings() is the [scheduler] table with the configured identifier."""
    cfg = load_config(overrides={"identifier": "host-a", "scheduler": {"history_cap": 3}})
    settings = cfg.scheduler_settings()
    assert settings.identifier == "host-a"
    assert settings.history_cap == 3


# -- sources and precedence --------------------------------------------------------------


def test_precedence_file_then_env_then_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each setting comes from the highest source that sets it: flags > env > file."""
    path = write(
        tmp_path / "c.toml",
        """
identifier = "from-file"
backend_url = "http://file.example"
[control]
host = "localhost"
port = 1111
[scheduler]
history_cap = 5
heartbeat_interval_s = 9
""",
    )
    monkeypatch.setenv("CALSCHED_IDENTIFIER", "from-env")
    monkeypatch.setenv("CALSCHED_CONTROL__PORT", "2222")
    monkeypatch.setenv("CALSCHED_SCHEDULER__HEARTBEAT_INTERVAL_S", "4")
    cfg = load_config(path, {"identifier": "from-flag", "control": {"port": None}})
    assert cfg.identifier == "from-flag"  # flag > env > file
    assert cfg.control.port == 2222  # env > file; a flag of None is "not given"
    assert cfg.control.host == "localhost"  # nested tables merge key by key
    assert cfg.scheduler.heartbeat_interval_s == 4  # env > file
    assert cfg.scheduler.history_cap == 5  # file > default
    assert str(cfg.backend_url) == "http://file.example/"


def test_each_value_knows_its_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """source_of names the source that set each setting (doctor prints it; run refuses a
    defaulted identifier new to a database beside live slots of others)."""
    path = write(tmp_path / "c.toml", "[control]\nhost = 'localhost'\n")
    monkeypatch.setenv("CALSCHED_CONTROL__PORT", "2222")
    cfg = load_config(path, {"log_level": "debug"})
    assert cfg.source_of("log_level") == "flag"
    assert cfg.source_of("control.port") == "env CALSCHED_CONTROL__PORT"
    assert cfg.source_of("control.host") == f"file {path}"
    assert cfg.source_of("identifier") == "default"
    assert cfg.defaulted("identifier")
    assert not load_config(overrides={"identifier": "x"}).defaulted("identifier")
    assert "scheduler.identifier" not in setting_names()
    assert "control.port" in setting_names()
    # Built directly: only "given or not" is known.
    assert Config(identifier="x").source_of("identifier") == "given"


def test_config_file_from_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CALSCHED_CONFIG names the file when no path is passed; a passed path wins."""
    by_env = write(tmp_path / "env.toml", 'identifier = "by-env"\n')
    by_arg = write(tmp_path / "arg.toml", 'identifier = "by-arg"\n')
    monkeypatch.setenv("CALSCHED_CONFIG", str(by_env))
    assert load_config().identifier == "by-env"
    assert load_config(by_arg).identifier == "by-arg"


def test_user_config_file_is_read_when_present() -> None:
    """Without --config or CALSCHED_CONFIG the user config file is used if it exists."""
    assert load_config().identifier == socket.gethostname()
    write(default_config_path(), 'identifier = "from-user-file"\n')
    assert load_config().identifier == "from-user-file"


def test_environment_parses_nested_and_typed_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nested env names use "__"; enums, lists and case-insensitive levels are parsed."""
    monkeypatch.setenv("CALSCHED_SCHEDULER__POLICY", "replace")
    monkeypatch.setenv("CALSCHED_HOST__ADAPTER", "command")
    monkeypatch.setenv("CALSCHED_HOST__COMMAND", '["my-host", "wake", "{agent_id}"]')
    monkeypatch.setenv("CALSCHED_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("CALSCHED_SQLITE_SYNCHRONOUS", "normal")
    monkeypatch.setenv("CALSCHED_BACKEND_URL", "")  # empty means unset
    cfg = load_config()
    assert cfg.scheduler.policy is QueuePolicy.replace
    assert cfg.host.adapter is HostAdapter.command
    assert cfg.host.command == ["my-host", "wake", "{agent_id}"]
    assert cfg.log_level == "debug"
    assert cfg.sqlite_synchronous == "NORMAL"
    assert cfg.backend_url is None


def test_tracing_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tracing is switched on by file or env; an exporter it does not know is refused."""
    path = write(tmp_path / "c.toml", 'tracing = true\ntracing_exporter = "console"\n')
    cfg = load_config(path)
    assert (cfg.tracing, cfg.tracing_exporter) == (True, "console")
    monkeypatch.setenv("CALSCHED_TRACING_EXPORTER", "jaeger")
    with pytest.raises(ConfigError, match="invalid setting tracing_exporter from CALSCHED_"):
        load_config(path)


def test_other_calsched_variables_are_not_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Variables such as CALSCHED_TOKEN share the prefix but are not rejected."""
    monkeypatch.setenv("CALSCHED_TOKEN", "agent.x.y")
    monkeypatch.setenv("CALSCHED_TEST_PG_URL", "postgresql://x")
    assert load_config().identifier == socket.gethostname()


def test_webhook_host_from_file(tmp_path: Path) -> None:
    """A webhook host takes its URLs from the file and its token from a token file."""
    token_file = write(tmp_path / "host.token", "host-token-1\n")
    path = write(
        tmp_path / "c.toml",
        f"""
[host]
adapter = "webhook"
wake_url = "http://127.0.0.1:9000/wake"
agents_url = "http://127.0.0.1:9000/agents"
token_file = "{token_file}"
""",
    )
    host = load_config(path).host
    assert str(host.wake_url) == "http://127.0.0.1:9000/wake"
    token = host.token_value()
    assert token is not None
    assert token.get_secret_value() == "host-token-1"


def test_control_url_brackets_ipv6() -> None:
    """The control URL puts an IPv6 host in brackets."""
    assert ControlConfig(host="::1", port=9).url == "http://[::1]:9"
    assert ControlConfig(port=9).url == "http://127.0.0.1:9"


def test_database_display_masks_password() -> None:
    """database_display() never shows the database password."""
    cfg = load_config(overrides={"database_url": "postgresql://u:hunter2@db/x"})
    assert "hunter2" not in cfg.database_display()
    assert "db/x" in cfg.database_display()


# -- secrets -----------------------------------------------------------------------------


def test_api_key_from_environment_is_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    """CALSCHED_BACKEND_API_KEY is used, and absent from repr, str and JSON dumps."""
    monkeypatch.setenv("CALSCHED_BACKEND_API_KEY", SECRET)
    cfg = load_config()
    key = cfg.backend_key()
    assert key is not None
    assert key.get_secret_value() == SECRET
    for shown in (repr(cfg), str(cfg), cfg.model_dump_json(), str(cfg.model_dump())):
        assert SECRET not in shown


def test_api_key_from_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """backend_api_key_file is read (stripped); the environment variable wins over it."""
    key_file = write(tmp_path / "key", f"{SECRET}\n")
    cfg = load_config(overrides={"backend_api_key_file": key_file})
    key = cfg.backend_key()
    assert key is not None
    assert key.get_secret_value() == SECRET
    assert SECRET not in repr(cfg)
    monkeypatch.setenv("CALSCHED_BACKEND_API_KEY", "from-env-key")
    key = load_config(overrides={"backend_api_key_file": key_file}).backend_key()
    assert key is not None
    assert key.get_secret_value() == "from-env-key"


@pytest.mark.parametrize(
    ("content", "problem"), [(None, "cannot read"), ("  \n", "is empty")], ids=["missing", "empty"]
)
def test_unusable_api_key_file(tmp_path: Path, content: str | None, problem: str) -> None:
    """A missing or empty key file is a ConfigError naming the setting, not the content."""
    key_file = tmp_path / "key"
    if content is not None:
        write(key_file, content)
    cfg = load_config(overrides={"backend_api_key_file": key_file})
    with pytest.raises(ConfigError) as excinfo:
        cfg.backend_key()
    message = one_line_error(excinfo)
    assert message.startswith("backend_api_key_file:")
    assert problem in message


@pytest.mark.parametrize(
    "overrides",
    [{"backend_api_key": SECRET}, {"host": {"token": SECRET}}],
    ids=["api-key", "host-token"],
)
def test_secrets_are_refused_as_flags(overrides: dict[str, object]) -> None:
    """A secret passed as a flag is refused (shell history, ps), without echoing it."""
    with pytest.raises(ConfigError) as excinfo:
        load_config(overrides=overrides)
    message = one_line_error(excinfo)
    assert "may not be given as a flag" in message
    assert SECRET not in message


@pytest.mark.parametrize(
    ("toml", "name"),
    [
        (f'backend_api_key = "{SECRET}"\n', "backend_api_key"),
        (f'[host]\ntoken = "{SECRET}"\n', "host.token"),
    ],
    ids=["api-key", "host-token"],
)
def test_secrets_are_refused_in_the_file(tmp_path: Path, toml: str, name: str) -> None:
    """A secret written into the TOML file is refused, naming the key and the way instead."""
    path = write(tmp_path / "c.toml", toml)
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    message = one_line_error(excinfo)
    assert message.startswith(f"{name} may not be set in config file")
    assert SECRET not in message


def test_host_token_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """CALSCHED_HOST__TOKEN is the webhook host's token and is never shown."""
    monkeypatch.setenv("CALSCHED_HOST__TOKEN", SECRET)
    cfg = load_config()
    token = cfg.host.token_value()
    assert token is not None
    assert token.get_secret_value() == SECRET
    assert SECRET not in repr(cfg)
    assert SECRET not in cfg.model_dump_json()


# -- one-line errors ---------------------------------------------------------------------


def test_missing_config_file(tmp_path: Path) -> None:
    """A named config file that does not exist is an error naming the path."""
    with pytest.raises(ConfigError) as excinfo:
        load_config(tmp_path / "nope.toml")
    assert one_line_error(excinfo) == f"config file {tmp_path / 'nope.toml'} does not exist"


def test_bad_toml(tmp_path: Path) -> None:
    """Invalid TOML is one line with the file and the parser's position."""
    path = write(tmp_path / "c.toml", "identifier = \n")
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    message = one_line_error(excinfo)
    assert message.startswith(f"config file {path} is not valid TOML:")
    assert "line 1" in message


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("bogus = 1\n", "unknown setting 'bogus' in {path}"),
        ("[scheduler]\nbogus = 1\n", "unknown setting 'scheduler.bogus' in {path}"),
        ("[control]\nprot = 1\n", "unknown setting 'control.prot' in {path}"),
    ],
    ids=["top-level", "scheduler-table", "control-table"],
)
def test_unknown_keys(tmp_path: Path, toml: str, expected: str) -> None:
    """An unknown key anywhere in the file is an error naming the key and the file."""
    path = write(tmp_path / "c.toml", toml)
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    assert one_line_error(excinfo) == expected.format(path=path)


@pytest.mark.parametrize(
    ("toml", "start"),
    [
        ("[control]\nport = 0\n", "invalid setting control.port in {path}: "),
        ('[control]\nport = "x"\n', "invalid setting control.port in {path}: "),
        (
            "[scheduler]\nheartbeat_interval_s = -1\n",
            "invalid setting scheduler.heartbeat_interval_s in {path}: ",
        ),
        ('[scheduler]\npolicy = "lifo"\n', "invalid setting scheduler.policy in {path}: "),
        ('sqlite_synchronous = "SOMETIMES"\n', "invalid setting sqlite_synchronous in {path}: "),
        ('backend_url = "not a url"\n', "invalid setting backend_url in {path}: "),
        (
            '[host]\nadapter = "webhook"\n',
            "invalid configuration: host.adapter 'webhook' needs host.wake_url",
        ),
        (
            '[host]\nadapter = "command"\n',
            "invalid configuration: host.adapter 'command' needs host.command",
        ),
        (
            '[scheduler]\nidentifier = "x"\n',
            "invalid configuration: scheduler.identifier is not a setting",
        ),
    ],
    ids=[
        "port-range",
        "port-type",
        "interval",
        "policy",
        "synchronous",
        "backend-url",
        "webhook-needs-url",
        "command-needs-argv",
        "scheduler-identifier",
    ],
)
def test_bad_values_in_file(tmp_path: Path, toml: str, start: str) -> None:
    """A bad value is one line naming the setting and the file it came from."""
    path = write(tmp_path / "c.toml", toml)
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    assert one_line_error(excinfo).startswith(start.format(path=path))


def test_bad_value_names_the_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad value from the environment names the variable that holds it."""
    monkeypatch.setenv("CALSCHED_CONTROL__PORT", "eighty")
    with pytest.raises(ConfigError) as excinfo:
        load_config()
    assert one_line_error(excinfo).startswith(
        "invalid setting control.port from CALSCHED_CONTROL__PORT: "
    )


def test_identifier_follows_the_protocols_id_limit() -> None:
    """The identifier is an Id: MAX_ID_CHARS characters at most, in both settings types."""
    longest = "h" * MAX_ID_CHARS
    assert load_config(overrides={"identifier": longest}).identifier == longest
    with pytest.raises(ConfigError, match="invalid setting identifier from the command line"):
        load_config(overrides={"identifier": longest + "h"})
    assert SchedulerSettings(identifier=longest).identifier == longest
    with pytest.raises(ValidationError):
        SchedulerSettings(identifier=longest + "h")


def test_bad_value_names_the_command_line() -> None:
    """A bad value from a flag says it came from the command line."""
    with pytest.raises(ConfigError) as excinfo:
        load_config(overrides={"control": {"port": 70000}})
    assert one_line_error(excinfo).startswith("invalid setting control.port from the command line")


def test_unparsable_database_url_is_not_echoed() -> None:
    """A database URL SQLAlchemy cannot parse is refused without repeating it."""
    with pytest.raises(ConfigError) as excinfo:
        load_config(overrides={"database_url": "hunter2-is-not-a-url"})
    message = one_line_error(excinfo)
    assert message.startswith("invalid setting database_url")
    assert "hunter2" not in message


def test_direct_construction_reads_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Config() without load_config still applies CALSCHED_* variables (no file)."""
    monkeypatch.setenv("CALSCHED_IDENTIFIER", "direct")
    assert Config().identifier == "direct"
