"""Hosts calsched can wake agents through: over HTTP (:class:`WebhookHost`), by running
a program (:class:`CommandHost`), or by printing to the terminal (:class:`ConsoleHost`, the
default when no host is configured). Each implements :class:`calsched.ports.Host`.
"""

from __future__ import annotations

from calsched.host.command import CommandHost
from calsched.host.console import ConsoleHost
from calsched.host.webhook import WebhookHost, parse_agent_list

__all__ = ["CommandHost", "ConsoleHost", "WebhookHost", "parse_agent_list"]
