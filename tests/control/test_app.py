"""Tests for calsched.control.app: the settings create_control_app refuses, the package's names."""

from __future__ import annotations

from typing import Any

import pytest

from calsched.control import create_control_app
from calsched.errors import (
    ConfigError,
)
from tests.control.fakes import SECRET, FakeTools


@pytest.mark.parametrize(
    "kwargs",
    [
        {"secret": b"short"},
        {"secret": SECRET, "allowed_hosts": []},
        {"secret": SECRET, "allowed_hosts": "localhost"},
        {"secret": SECRET, "max_body": 0},
    ],
    ids=["short secret", "no hosts", "hosts as string", "zero body"],
)
def test_unusable_settings_are_config_errors(tools: FakeTools, kwargs: dict[str, Any]) -> None:
    """create_control_app refuses settings it cannot serve with."""
    with pytest.raises(ConfigError):
        create_control_app(tools, **kwargs)


def test_the_package_keeps_its_public_names() -> None:
    """``calsched.control`` still exports what the one module did, from their new homes."""
    import calsched.control as control
    from calsched.control import app, server

    names = "DEFAULT_ALLOWED_HOSTS MAX_BODY MAX_FIELD ControlServer create_control_app"
    assert control.__all__ == [*names.split(), "serve_control"]
    assert control.create_control_app is app.create_control_app
    assert control.ControlServer is server.ControlServer
    assert control.serve_control is server.serve_control
    assert (control.MAX_BODY, control.MAX_FIELD) == (64 * 1024, 8 * 1024)
