"""calsched.logs: one line per event, JSON or key=value, secrets redacted."""

from __future__ import annotations

import importlib
import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest
import structlog

from calsched.logs import REDACTED, configure_logging, hidden_modules


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """A stream to log into; logging and structlog are restored afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    out = io.StringIO()
    yield out
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    structlog.reset_defaults()


def lines(out: io.StringIO) -> list[str]:
    """The non-empty lines written so far."""
    return [line for line in out.getvalue().splitlines() if line]


def test_json_lines(stream: io.StringIO) -> None:
    """--log-json: every event is one JSON object on one line, with level and timestamp."""
    configure_logging(json_format=True, stream=stream)
    structlog.get_logger("calsched.test").info("slot woken", slot_id="s1", attempt=2)
    logging.getLogger("uvicorn.error").warning("from %s", "stdlib")
    first, second = (json.loads(line) for line in lines(stream))
    assert first["event"] == "slot woken"
    assert (first["slot_id"], first["attempt"], first["level"]) == ("s1", 2, "info")
    assert first["timestamp"].endswith("Z")
    assert (second["event"], second["logger"]) == ("from stdlib", "calsched.http")


def test_uvicorn_lines_are_not_named_as_errors(stream: io.StringIO) -> None:
    """uvicorn's info lines (logged as ``uvicorn.error``) show as calsched.http, without
    its coloured copy of the message."""
    configure_logging(json_format=True, stream=stream)
    logging.getLogger("uvicorn.error").info(
        "Started server process [%d]", 7, extra={"color_message": "\x1b[36m7\x1b[0m"}
    )
    logging.getLogger("uvicorn.access").warning("GET /healthz")
    first, second = (json.loads(line) for line in lines(stream))
    assert first == {
        "event": "Started server process [7]",
        "level": "info",
        "logger": "calsched.http",
        "timestamp": first["timestamp"],
    }
    assert second["logger"] == "calsched.http.access"


def test_stdlib_extra_fields_are_rendered_and_redacted(stream: io.StringIO) -> None:
    """A standard-library record's ``extra`` becomes fields, secrets redacted."""
    configure_logging(stream=stream)
    logging.getLogger("calsched.scheduler").info(
        "slot received", extra={"slot_id": "s1", "agent_id": "bob", "api_token": "t0p"}
    )
    (line,) = lines(stream)
    assert "slot received [calsched.scheduler]" in line
    assert "agent_id=bob" in line
    assert "slot_id=s1" in line
    assert f"api_token={REDACTED}" in line
    assert "t0p" not in line


def test_text_lines_are_single_lines(stream: io.StringIO) -> None:
    """Key=value mode escapes newlines and summarises exceptions on the same line."""
    configure_logging(stream=stream)
    log = structlog.get_logger("calsched.test")
    log.info("two\nlines", note="a\nb")
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        log.exception("failed")
    out = lines(stream)
    assert len(out) == 2
    assert out[0].startswith(tuple("0123456789"))  # a timestamp: nothing split off
    assert "two\\nlines" in out[0]
    assert "note='a\\nb'" in out[0]
    assert "failed" in out[1]
    assert "exc='ValueError: boom\\nsecond line'" in out[1]


def test_json_exception_keeps_traceback_on_one_line(stream: io.StringIO) -> None:
    """JSON mode keeps the traceback, escaped inside one line."""
    configure_logging(json_format=True, stream=stream)
    try:
        raise RuntimeError("kaput")
    except RuntimeError:
        structlog.get_logger("t").exception("failed")
    (line,) = lines(stream)
    assert "RuntimeError: kaput" in json.loads(line)["exception"]


def test_secret_keys_are_redacted(stream: io.StringIO) -> None:
    """Values under secret-looking keys never reach the output."""
    configure_logging(json_format=True, stream=stream)
    structlog.get_logger("t").info(
        "sending", token="t0k", api_key="k3y", authorization="Bearer x", host_token="h", ok=1
    )
    (line,) = lines(stream)
    event = json.loads(line)
    for key in ("token", "api_key", "authorization", "host_token"):
        assert event[key] == REDACTED
    assert event["ok"] == 1
    assert "t0k" not in line


def test_level_and_quiet_libraries(stream: io.StringIO) -> None:
    """The level filters events; chatty libraries log only warnings at info level."""
    configure_logging(level="warning", stream=stream)
    structlog.get_logger("t").info("hidden")
    configure_logging(level="info", stream=stream)
    logging.getLogger("httpx").info("HTTP Request: POST ...")
    structlog.get_logger("t").info("shown")
    out = lines(stream)
    assert len(out) == 1
    assert "shown" in out[0]


def test_debug_level_lets_the_quiet_libraries_speak(stream: io.StringIO) -> None:
    """At debug level httpx, httpcore and SQLAlchemy lines are shown, as documented."""
    configure_logging(level="debug", stream=stream)
    logging.getLogger("httpx").debug("HTTP Request: POST ...")
    logging.getLogger("httpcore.connection").debug("connect_tcp.started")
    logging.getLogger("sqlalchemy.engine.Engine").info("SELECT 1")
    out = lines(stream)
    assert len(out) == 3
    assert "connect_tcp.started" in out[1]
    assert "SELECT 1" in out[2]
    configure_logging(level="info", stream=stream)
    assert logging.getLogger("httpx").level == logging.WARNING
    assert logging.getLogger("sqlalchemy").level == logging.WARNING


def test_reconfiguring_replaces_the_handler(stream: io.StringIO) -> None:
    """Calling configure_logging twice leaves one handler: no line is written twice."""
    configure_logging(stream=stream)
    configure_logging(stream=stream)
    structlog.get_logger("t").info("once")
    assert len(lines(stream)) == 1


def test_hidden_modules_hides_only_what_is_not_imported_yet() -> None:
    """Inside, a not-yet-imported module cannot be imported; outside it can; loaded ones
    stay available throughout."""
    name = "tabnanny"  # stdlib, imported by nothing here
    sys.modules.pop(name, None)
    with hidden_modules(name, "json"):
        with pytest.raises(ImportError):
            importlib.import_module(name)
        assert importlib.import_module("json") is sys.modules["json"]
    assert name not in sys.modules
    assert importlib.import_module(name).__name__ == name
