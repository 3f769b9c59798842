"""Hosts calsched can wake agents through: over HTTP (:class:`WebhookHost`) or by running
a program (:class:`CommandHost`). Both implement :class:`calsched.ports.Host`.
"""

from __future__ import annotations

from calsched.host.command import CommandHost
from calsched.host.webhook import WebhookHost, parse_agent_list

__all__ = ["CommandHost", "WebhookHost", "parse_agent_list"]
