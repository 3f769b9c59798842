"""The daemon's configuration, built once by the CLI and passed down.

Sources, lowest to highest precedence: the defaults below, a TOML file, ``CALSCHED_*``
environment variables (nested tables with ``__``: ``CALSCHED_CONTROL__PORT``) and CLI flags.
:func:`load_config` is the one entry point; every problem with any source becomes a
:class:`~calsched.errors.ConfigError` whose single line names the setting.

Secrets (the backend API key, the webhook host's token) come only from the environment or
from a file named in the configuration: never from a flag (shell history, ``ps``) nor from
the TOML file itself (config files get shared and committed). They are held as
:class:`~pydantic.SecretStr`, so no ``repr``, ``str`` or JSON dump shows them.
"""

from __future__ import annotations

import enum
import os
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from platformdirs import user_config_dir, user_data_dir
from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from calsched.errors import ConfigError
from calsched.model import Id, first_error
from calsched.settings import SchedulerSettings

__all__ = [
    "APP_NAME",
    "CONFIG_ENV",
    "ENV_PREFIX",
    "Config",
    "ControlConfig",
    "HostAdapter",
    "HostConfig",
    "default_config_path",
    "default_data_dir",
    "load_config",
    "read_secret_file",
    "setting_names",
]

APP_NAME = "calsched"
ENV_PREFIX = "CALSCHED_"
#: The environment variable naming the TOML file when ``--config`` is not given.
CONFIG_ENV = "CALSCHED_CONFIG"

# Settings that hold a secret: accepted from the environment only, never from the file.
_FILE_FORBIDDEN = {
    ("backend_api_key",): "backend_api_key_file (or CALSCHED_BACKEND_API_KEY)",
    ("host", "token"): "host.token_file (or CALSCHED_HOST__TOKEN)",
}


def default_data_dir() -> Path:
    """Where calsched keeps its database and control secret by default (created on use)."""
    return Path(user_data_dir(APP_NAME, appauthor=False))


def default_config_path() -> Path:
    """The TOML file read when neither ``--config`` nor ``CALSCHED_CONFIG`` names one."""
    return Path(user_config_dir(APP_NAME, appauthor=False)) / "config.toml"


def _default_database_url() -> str:
    data = default_data_dir()
    # 0700: the journal holds prompts, summaries and reasons (its file is made 0600).
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    return f"sqlite:///{data / 'calsched.db'}"


def _default_secret_file() -> Path:
    return default_data_dir() / "control.secret"


def read_secret_file(path: Path, setting: str) -> SecretStr:
    """The stripped contents of a secret file; :class:`ConfigError` naming ``setting``.

    The error says why the file cannot be used, never what it holds.
    """
    try:
        value = path.expanduser().read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror or exc}") from None
    if not value:
        raise ConfigError(f"{setting}: {path} is empty")
    return SecretStr(value)


class ControlConfig(BaseModel):
    """The local control API that agents' tools call (protocol section 2)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Loopback by default: the API acts on slots and must not face a network by accident.
    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=8765, ge=1, le=65535)
    #: The HMAC secret behind every token; created (mode 0600) on first use.
    secret_file: Path = Field(default_factory=_default_secret_file)

    @property
    def url(self) -> str:
        """The API's base URL, as clients reach it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


class HostAdapter(enum.StrEnum):
    """How the daemon wakes agents."""

    #: The default: print each wake and the command that completes it (a person acts).
    console = "console"
    #: No host: every wake fails with a cause saying so (the slot is aborted, not lost).
    none = "none"
    #: ``POST wake_url`` (protocol section 3).
    webhook = "webhook"
    #: Run ``command`` with the wake as JSON on stdin.
    command = "command"


class HostConfig(BaseModel):
    """The agent host the daemon wakes agents through."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    adapter: HostAdapter = HostAdapter.console
    wake_url: AnyHttpUrl | None = None
    agents_url: AnyHttpUrl | None = None
    #: Bearer token for the webhook host; from ``CALSCHED_HOST__TOKEN`` only.
    token: SecretStr | None = None
    #: A file holding the webhook host's token (used when ``token`` is not set).
    token_file: Path | None = None
    #: argv of the command host's wake program (no shell).
    command: list[str] | None = None
    #: argv of a program printing ``{"agents": [...]}`` for the heartbeat (optional).
    agents_command: list[str] | None = None

    @model_validator(mode="after")
    def _complete(self) -> HostConfig:
        if self.adapter is HostAdapter.webhook and self.wake_url is None:
            raise ValueError("host.adapter 'webhook' needs host.wake_url")
        if self.adapter is HostAdapter.command and not self.command:
            raise ValueError("host.adapter 'command' needs host.command (an argv list)")
        return self

    def token_value(self) -> SecretStr | None:
        """The webhook token: ``CALSCHED_HOST__TOKEN``, else the contents of ``token_file``."""
        if self.token is not None:
            return self.token
        if self.token_file is not None:
            return read_secret_file(self.token_file, "host.token_file")
        return None


class Config(BaseSettings):
    """Everything ``calsched`` needs to run, validated once.

    Build it with :func:`load_config`; constructing it directly reads only defaults, the
    keyword arguments and the environment.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        # An empty CALSCHED_FOO= means "unset", not "the empty string".
        env_ignore_empty=True,
    )

    #: Any SQLAlchemy URL; by default a SQLite file in the user data directory.
    database_url: str = Field(default_factory=_default_database_url, min_length=1)
    #: This plugin instance's name in the journal and the heartbeat.
    identifier: Id = Field(default_factory=socket.gethostname)
    #: SQLite's ``PRAGMA synchronous``: FULL survives power loss, NORMAL only a crash.
    sqlite_synchronous: Literal["OFF", "NORMAL", "FULL", "EXTRA"] = "FULL"
    #: The calendar backend; ``None`` runs the embedded reference backend in-process.
    backend_url: AnyHttpUrl | None = None
    #: From ``CALSCHED_BACKEND_API_KEY`` only.
    backend_api_key: SecretStr | None = None
    #: A file holding the API key (used when the variable is not set).
    backend_api_key_file: Path | None = None
    #: Heartbeat responses larger than this fail the beat (protocol section 1).
    backend_max_response_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    control: ControlConfig = Field(default_factory=ControlConfig)
    host: HostConfig = Field(default_factory=HostConfig)
    #: Scheduler tunables (``identifier`` is the top-level one, not set here).
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    log_json: bool = False
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: OpenTelemetry spans (the ``otel`` extra); ``OTEL_SDK_DISABLED=true`` turns them off.
    tracing: bool = False
    #: Where spans go; unset: ``OTEL_TRACES_EXPORTER``, else nowhere (``none``).
    tracing_exporter: Literal["none", "console", "otlp"] | None = None
    #: How long the identifier's lease lasts without a renewal: a holder that is alive
    #: but silent (stopped, cut off) is taken over after this long. A dead holder is
    #: taken over at once whatever it is (docs/operations.md, "Several hosts").
    lease_ttl_s: float = Field(default=20.0, ge=0.5, le=3600)
    #: The lease is renewed every ``lease_ttl_s * lease_renew_fraction`` seconds; at most
    #: half, so one failed renewal still leaves time for another before it expires.
    lease_renew_fraction: float = Field(default=1 / 3, gt=0, le=0.5)
    #: Where each setting came from, by dotted name (:meth:`source_of`).
    _sources: dict[str, str] = PrivateAttr(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments, then the environment; no dotenv or secrets directory."""
        return (init_settings, env_settings)

    @field_validator("database_url")
    @classmethod
    def _parsable_url(cls, value: str) -> str:
        from sqlalchemy.engine import make_url  # here: `calsched token` need not load SQLAlchemy
        from sqlalchemy.exc import ArgumentError

        try:
            make_url(value)
        except ArgumentError:
            # Never echo the URL: it may carry a password.
            raise ValueError("not a database URL SQLAlchemy can parse") from None
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("sqlite_synchronous", mode="before")
    @classmethod
    def _upper_sync(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_identifier(self) -> Config:
        if "identifier" in self.scheduler.model_fields_set:
            raise ValueError("scheduler.identifier is not a setting; set the top-level identifier")
        return self

    @property
    def lease_renew_every_s(self) -> float:
        """Seconds between renewals of the lease."""
        return self.lease_ttl_s * self.lease_renew_fraction

    def scheduler_settings(self) -> SchedulerSettings:
        """The scheduler's settings, carrying this configuration's identifier."""
        return self.scheduler.model_copy(update={"identifier": self.identifier})

    def backend_key(self) -> SecretStr | None:
        """The backend API key: ``CALSCHED_BACKEND_API_KEY``, else ``backend_api_key_file``."""
        if self.backend_api_key is not None:
            return self.backend_api_key
        if self.backend_api_key_file is not None:
            return read_secret_file(self.backend_api_key_file, "backend_api_key_file")
        return None

    def source_of(self, dotted: str) -> str:
        """Where the setting ``dotted`` (``control.port``) came from: ``flag``,
        ``env CALSCHED_...``, ``file PATH`` or ``default``.

        A configuration built by :func:`load_config` knows each source; one built
        directly knows only which top-level settings were given (``given``).
        """
        known = self._sources.get(dotted)
        if known is not None:
            return known
        top = dotted.split(".")[0]
        return "given" if top in self.model_fields_set else "default"

    def defaulted(self, dotted: str) -> bool:
        """Whether no source set ``dotted``: it holds its default value."""
        return self.source_of(dotted) == "default"

    def database_display(self) -> str:
        """The database URL with any password masked, for logs and messages."""
        from sqlalchemy.engine import make_url

        return make_url(self.database_url).render_as_string(hide_password=True)


def _env_name(loc: tuple[Any, ...]) -> str:
    return ENV_PREFIX + "__".join(str(part).upper() for part in loc)


def _origin(
    loc: tuple[Any, ...],
    flags: Mapping[str, Any],
    file_data: Mapping[str, Any],
    file: Path | None,
) -> str:
    """The highest source that sets ``loc`` or a parent: ``flag``, ``env NAME``,
    ``file PATH`` or ``default``."""
    prefixes = [tuple(str(p) for p in loc[:n]) for n in range(len(loc), 0, -1)]
    for keys in prefixes:
        if _lookup(flags, keys) is not None:
            return "flag"
    for keys in prefixes:
        if os.environ.get(_env_name(keys)):
            return f"env {_env_name(keys)}"
    for keys in prefixes:
        if _lookup(file_data, keys) is not None:
            return f"file {file}"
    return "default"


def _source(
    loc: tuple[Any, ...],
    flags: Mapping[str, Any],
    file_data: Mapping[str, Any],
    file: Path | None,
) -> str:
    """Which source gave the bad value, as a phrase for an error line."""
    origin = _origin(loc, flags, file_data, file)
    if origin == "flag":
        return "from the command line"
    if origin.startswith("env "):
        return f"from {origin[4:]}"
    if origin.startswith("file "):
        return f"in {file}"
    return "(default)"


#: Fields of the models that are not settings of their own.
_NOT_SETTINGS = {"scheduler.identifier"}


def setting_names(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """Every leaf setting of ``model`` by dotted name (``control.port``), in field order."""
    names: list[str] = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names.extend(setting_names(annotation, f"{prefix}{name}."))
        elif prefix + name not in _NOT_SETTINGS:
            names.append(prefix + name)
    return names


def _one_line(
    exc: ValidationError,
    flags: Mapping[str, Any],
    file_data: Mapping[str, Any],
    file: Path | None,
) -> str:
    """The first error as one sentence naming the setting and the source that set it."""
    error = first_error(exc)
    loc, dotted, msg = error.loc, error.field, error.message
    if error.kind == "extra_forbidden":
        where = f" in {file}" if file is not None else ""
        return f"unknown setting {dotted!r}{where}"
    if not loc or msg.startswith(dotted):
        # A rule across fields: its message already names the settings involved.
        return f"invalid configuration: {msg}"
    return f"invalid setting {dotted} {_source(loc, flags, file_data, file)}: {msg}"


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    for keys, instead in _FILE_FORBIDDEN.items():
        if _lookup(data, keys) is not None:
            dotted = ".".join(keys)
            raise ConfigError(f"{dotted} may not be set in config file {path}; use {instead}")
    return data


def _lookup(data: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    found: Any = data
    for key in keys:
        found = found.get(key) if isinstance(found, Mapping) else None
    return found


def _choose_file(path: Path | str | None, environ: Mapping[str, str]) -> Path | None:
    if path is not None:
        return Path(path).expanduser()
    named = environ.get(CONFIG_ENV)
    if named:
        return Path(named).expanduser()
    default = default_config_path()
    return default if default.is_file() else None


def load_config(
    path: Path | str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the configuration: defaults < TOML file < ``CALSCHED_*`` < ``overrides``.

    ``path`` is the TOML file (``--config``); without it ``CALSCHED_CONFIG``, else the
    user config file if it exists. ``overrides`` are CLI flags as a nested mapping;
    ``None`` values mean "flag not given" and are dropped. Raises :class:`ConfigError`.
    """
    file = _choose_file(path, os.environ)
    file_data = _read_toml(file) if file is not None else {}
    flags = _drop_none(overrides or {})
    for keys, instead in _FILE_FORBIDDEN.items():
        if _lookup(flags, keys) is not None:
            raise ConfigError(f"{'.'.join(keys)} may not be given as a flag; use {instead}")
    sources = (
        InitSettingsSource(Config, init_kwargs=flags),
        EnvSettingsSource(Config),
        InitSettingsSource(Config, init_kwargs=file_data),
    )
    try:
        # pydantic-settings' documented hook for pre-built sources: it lets the file's path
        # be chosen per call instead of being fixed in the class's model_config.
        cfg = Config(_build_sources=(sources, {}))
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, flags, file_data, file)) from None
    for dotted in setting_names():
        cfg._sources[dotted] = _origin(tuple(dotted.split(".")), flags, file_data, file)
    return cfg


def _drop_none(values: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            nested = _drop_none(value)
            if nested:
                out[key] = nested
        elif value is not None:
            out[key] = value
    return out
