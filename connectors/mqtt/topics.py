"""MQTT topic names <-> (station, metric), through a template such as
``vigil/{station}/{metric}``."""

from __future__ import annotations

import re

from connectors.ingest import PayloadError

__all__ = ["TopicTemplate"]


class TopicTemplate:
    """``vigil/{station}/{metric}`` <-> topic names and the subscription filter."""

    def __init__(self, template: str) -> None:
        names = re.findall(r"{(\w+)}", template)
        if sorted(names) != ["metric", "station"]:
            raise ValueError(
                f"topic template {template!r} must contain {{station}} and {{metric}} once each"
            )
        pattern = re.escape(template)
        for name in names:
            pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>[^/+#]+)")
        self.template = template
        self._regex = re.compile(f"^{pattern}$")
        #: The template's levels and any below them (``vigil/+/+/#``): a topic with extra
        #: levels is received and dead-lettered (its reason: no match), where a filter of
        #: the template alone would leave it with the broker, unseen.
        self.subscription = re.sub(r"{\w+}", "+", template) + "/#"

    def parse(self, topic: str) -> tuple[str, str]:
        m = self._regex.match(topic)
        if m is None:
            raise PayloadError(f"topic {topic!r} does not match template {self.template!r}")
        return m["station"], m["metric"]

    def topic(self, station: str, metric: str) -> str:
        return self.template.format(station=station, metric=metric)
