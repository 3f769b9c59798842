"""Logging set-up: structlog, one line per event, human key=value or JSON.

Both structlog loggers and the standard library's (uvicorn, alembic, the scheduler and
the adapters, which use ``logging`` with ``extra`` fields) go through one handler with the
same processors, so every line has the same shape; uvicorn's loggers are shown as
``calsched.http``. Values under secret-looking keys are redacted before rendering, as a second
line of defence: calsched never logs a secret on purpose.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = ["REDACTED", "configure_logging", "get_logger", "hidden_modules", "redact_secrets"]


@contextmanager
def hidden_modules(*names: str) -> Iterator[None]:
    """While inside, ``import <name>`` fails for each of ``names`` not yet imported.

    For libraries that load an optional extra at import time when it happens to be
    installed (structlog: rich and pygments for tracebacks; httpx: its command-line client),
    which calsched never uses but would pay for on every start. A ``None`` entry in
    ``sys.modules`` is the import system's documented way to say "not importable"; the
    entries are removed on exit, so later imports (the CLI's tables) work as usual.
    """
    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in hidden:
            if sys.modules.get(name, ...) is None:
                del sys.modules[name]


# Exceptions are rendered here (_exception_on_one_line; format_exc_info in JSON), never by
# structlog's rich tracebacks: loading rich and pygments for them cost every start ~50 ms.
with hidden_modules("rich", "pygments"):
    import structlog

REDACTED = "[redacted]"

# Keys whose value is a secret wherever it appears in an event.
_SECRET_KEYS = frozenset(
    {"api_key", "authorization", "password", "secret", "token", "backend_api_key"}
)

# Chatty libraries: one line per HTTP request (httpx), per state callback (transitions),
# per migration context (alembic), per statement (sqlalchemy, which sets its own logger to
# WARNING on import, so the root level alone never reaches it). Their warnings still show;
# at debug level, everything.
_QUIET = ("httpx", "httpcore", "transitions", "alembic", "sqlalchemy", "uvicorn.access")

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def get_logger(name: str) -> Any:
    """A structlog logger (key=value events) named ``name``, rendered as configured."""
    return structlog.get_logger(name)


def redact_secrets(_logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
    """structlog processor: replace the value of every secret-looking key."""
    for key in list(event):
        if key.lower() in _SECRET_KEYS or key.lower().endswith(("_token", "_secret")):
            event[key] = REDACTED
    return event


#: Standard-library loggers shown under another name: uvicorn logs its ordinary info lines
#: ("Started server process") as ``uvicorn.error``, which reads like a failure.
_RENAMED = {
    "uvicorn": "calsched.http",
    "uvicorn.error": "calsched.http",
    "uvicorn.access": "calsched.http.access",
}

#: Record attributes ExtraAdder would take for fields but are not: uvicorn's coloured copy
#: of its message, and what ``logging.Formatter`` itself adds to a record it formatted.
_DROPPED_EXTRA = frozenset({"color_message", "message", "asctime"})


def _rename_loggers(_logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
    # After add_logger_name: the name shown, not the logger's own (its level still counts).
    name = event.get("logger")
    if isinstance(name, str) and name in _RENAMED:
        event["logger"] = _RENAMED[name]
    return event


def _drop_extra(_logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
    for key in _DROPPED_EXTRA & event.keys():
        del event[key]
    return event


def _exception_on_one_line(_logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
    # The key=value format keeps one line per event: an exception is summarised as
    # "Type: message"; the JSON format keeps the whole traceback (escaped, still one line).
    exc_info = event.pop("exc_info", None)
    if exc_info:
        if exc_info is True:
            exc_info = sys.exc_info()
        if isinstance(exc_info, BaseException):
            exc: BaseException | None = exc_info
        elif isinstance(exc_info, tuple):
            exc = exc_info[1]
        else:
            exc = None
        if exc is not None:
            event["exc"] = f"{type(exc).__name__}: {exc}"
    return event


def _escape_newlines(_logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
    # The console renderer quotes (repr) other values that hold a newline; the event
    # message itself is printed as is, so it is escaped here.
    message = event.get("event")
    if isinstance(message, str) and ("\n" in message or "\r" in message):
        event["event"] = message.replace("\r", "\\r").replace("\n", "\\n")
    return event


def configure_logging(
    *, json_format: bool = False, level: str = "info", stream: TextIO | None = None
) -> None:
    """Route structlog and stdlib logging to ``stream`` (stderr), one line per event.

    Idempotent: calling it again replaces the handler it installed before.
    """
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    renderer: list[Processor]
    if json_format:
        renderer = [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        renderer = [
            _exception_on_one_line,
            _escape_newlines,
            structlog.dev.ConsoleRenderer(colors=False, pad_event_to=0),
        ]
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    # Standard-library records (the scheduler's, the adapters', uvicorn's): their ``extra``
    # fields become key=value fields like a structlog event's, before redaction.
    foreign: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        _rename_loggers,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),
        _drop_extra,
        redact_secrets,
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=foreign,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
    )
    handler = _CalschedHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _CalschedHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root_level = _LEVELS.get(level.lower(), logging.INFO)
    root.setLevel(root_level)
    # At debug level the chatty libraries log everything too (docs/configuration.md);
    # otherwise only their warnings.
    quiet_level = root_level if root_level <= logging.DEBUG else max(root_level, logging.WARNING)
    for name in _QUIET:
        logging.getLogger(name).setLevel(quiet_level)
    # uvicorn configures its own handlers unless told not to; ours are enough.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True


class _CalschedHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`configure_logging` installs (so a second call can find it)."""

    def emit(self, record: logging.LogRecord) -> None:
        """Write the record; a closed stream (tests, shutdown) is not an error."""
        if getattr(self.stream, "closed", False):
            return
        super().emit(record)
