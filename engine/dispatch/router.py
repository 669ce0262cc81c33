"""Labels -> the routes an alert takes, as Alertmanager walks its tree.

Contract: ``Router(config).match(labels)`` returns the matching routes, each with the
path from the root. A route matches when all its matchers hold; its children are tried
in order and the first that matches ends the search unless it says ``continue: true``;
a route none of whose children matches is itself the match. The root takes every
alert. An alert at a level with its own receivers (``levels.blue.receivers``) takes the
level's route instead of the tree.

``labels_of(event)`` is what every matcher sees: the event's labels (kind, name, basin,
district, domain, health, group ...) plus ``rule_id``, ``station``, ``metric``,
``level`` and ``state``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from engine.contracts.alerts import AlertEvent
from engine.dispatch.config import DispatchConfig, Route
from engine.dispatch.matchers import matches_all

__all__ = ["Match", "Router", "labels_of"]


def labels_of(event: AlertEvent) -> dict[str, str]:
    """The labels of an event as matchers see them; the event's own fields win."""
    return {
        **event.labels,
        "rule_id": event.rule_id,
        "station": event.station,
        "metric": event.metric,
        "level": event.level,
        "state": event.state,
    }


@dataclass(frozen=True)
class Match:
    """A matching route and the routes from the root down to it."""

    route: Route
    path: tuple[Route, ...]


class Router:
    def __init__(self, config: DispatchConfig) -> None:
        self.config = config

    def match(self, labels: Mapping[str, str]) -> list[Match]:
        """The routes an alert with ``labels`` takes, in tree order."""
        level_route = self.config.level_routes.get(labels.get("level", ""))
        if level_route is not None:
            return [Match(level_route, (level_route,))]
        return _walk(self.config.route, labels, ())

    def receivers(self, labels: Mapping[str, str]) -> list[str]:
        """Every receiver the alert reaches, once each, in route order."""
        seen: dict[str, None] = {}
        for match in self.match(labels):
            seen.update(dict.fromkeys(match.route.receivers))
        return list(seen)


def _walk(route: Route, labels: Mapping[str, str], path: tuple[Route, ...]) -> list[Match]:
    if not matches_all(route.matchers, labels):
        return []
    path = (*path, route)
    found: list[Match] = []
    for child in route.routes:
        got = _walk(child, labels, path)
        if got:
            found += got
            if not child.continue_:
                break
    return found or [Match(route, path)]
