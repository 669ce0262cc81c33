"""What a running gateway knows about itself, for ``/readyz``, ``vigil status`` and logs.

One ``GatewayState`` per process, owned by the gateway and updated in place by the
parts that know (the rule loader, the MQTT ingest's connection callbacks). Readers
(the web views, a status command) only read it; every field is a plain value that is
safe to read from the event loop at any time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["GatewayState", "RulesState"]


@dataclass
class RulesState:
    """The rule set running now, and why it is the one running.

    ``source`` is ``"files"`` when the configured rule and station files are running,
    ``"last-good"`` when they were rejected at start and the copy kept in the data
    directory runs instead. ``errors`` holds the ``file:line:col`` lines of the latest
    rejected load (at start or on reload); empty when the files on disk are the ones
    running. ``warnings``: rules that match no station, and the like.
    """

    version: str = ""
    count: int = 0
    stations: int = 0
    source: str = "files"
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    loaded_at_ms: int = 0

    @property
    def healthy(self) -> bool:
        """The configured files are the rules running: nothing rejected."""
        return self.source == "files" and not self.errors


@dataclass
class GatewayState:
    """The gateway's state: its rules; the MQTT connection is ``MqttIngest.connection``."""

    rules: RulesState = field(default_factory=RulesState)
