"""The routing file: YAML -> a validated, immutable ``DispatchConfig``.

Contract:

- ``read_dispatch_config(path)`` never raises for a bad file: the config (or None) and
  every problem found, each ``file:line:col: path: message`` (``rules.errors.Problem``),
  the same lines as ``vigil rules check``.
- ``load_dispatch_config(path)`` is the strict form: the config or ``RulesInvalid``.
- Every setting a route leaves out is inherited from its parent; the root's defaults are
  the ones below. What each level means by default (documented in engine/dispatch/README.md):

  ======  ===============  =====  =====================================================
  level   repeat_interval  latch  why
  ======  ===============  =====  =====================================================
  red     15m              yes    a red must be taken by a person: it repeats until
                                  acknowledged and stays until acknowledged
  orange  1h               no
  yellow  4h               no
  blue    never            no     informative: told once, then only on a change
  ======  ===============  =====  =====================================================

  Repeats stop once every alert of a group is acknowledged. ``send_resolved`` is true.
- ``inhibit`` left out means ``DEFAULT_INHIBIT``: a basin (corroboration) alert covers
  the per-station alerts of its basin and domain at or below its level, and a
  gateway-silent alert covers the silence alerts of that gateway's stations.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from pydantic import ValidationError

from engine.dispatch.matchers import Matcher, parse_matcher
from engine.dispatch.schema import DispatchSpec, InhibitSpec, ReceiverSpec, RouteSpec
from rules.errors import Problem, RulesInvalid, did_you_mean, format_path, problems_from_validation
from rules.source import Key, Source, SourceError, load_yaml, parse_yaml

__all__ = [
    "DEFAULT_GROUP_BY",
    "DEFAULT_GROUP_INTERVAL_MS",
    "DEFAULT_GROUP_WAIT_MS",
    "DEFAULT_INHIBIT",
    "DEFAULT_LEVELS",
    "DispatchConfig",
    "EscalationStep",
    "InhibitRule",
    "LevelPolicy",
    "Route",
    "load_dispatch_config",
    "parse_dispatch_config",
    "read_dispatch_config",
]

MINUTE = 60_000
DEFAULT_GROUP_BY = ("basin",)
DEFAULT_GROUP_WAIT_MS = 30_000
DEFAULT_GROUP_INTERVAL_MS = 5 * MINUTE


@dataclass(frozen=True)
class LevelPolicy:
    """``repeat_ms`` 0 = never; ``receivers`` None = the route tree decides."""

    repeat_ms: int
    latch: bool = False
    receivers: tuple[str, ...] | None = None


DEFAULT_LEVELS: Mapping[str, LevelPolicy] = {
    "red": LevelPolicy(repeat_ms=15 * MINUTE, latch=True),
    "orange": LevelPolicy(repeat_ms=60 * MINUTE),
    "yellow": LevelPolicy(repeat_ms=4 * 60 * MINUTE),
    "blue": LevelPolicy(repeat_ms=0),
}


@dataclass(frozen=True)
class EscalationStep:
    after_ms: int
    receivers: tuple[str, ...]
    name: str = ""


@dataclass(frozen=True)
class Route:
    """A route with every inherited setting filled in. ``id`` is its place in the file
    (``route.routes[1]``), stable while the file's tree is; ``repeat_ms`` None means
    "the level's"."""

    id: str
    name: str
    matchers: tuple[Matcher, ...]
    receivers: tuple[str, ...]
    continue_: bool
    group_by: tuple[str, ...]
    group_wait_ms: int
    group_interval_ms: int
    repeat_ms: int | None
    send_resolved: bool
    escalation: tuple[EscalationStep, ...]
    routes: tuple[Route, ...]

    def describe(self) -> str:
        """``route.routes[0] "flood" {domain=flood, level>=orange}`` for people."""
        name = f' "{self.name}"' if self.name else ""
        where = ", ".join(str(m) for m in self.matchers)
        return f"{self.id}{name}" + (f" {{{where}}}" if where else "")


@dataclass(frozen=True)
class InhibitRule:
    name: str
    source: tuple[Matcher, ...]
    target: tuple[Matcher, ...]
    equal: tuple[str, ...]
    level: str  # any | at_or_below | below


def _matchers(*texts: str) -> tuple[Matcher, ...]:
    return tuple(parse_matcher(t) for t in texts)


DEFAULT_INHIBIT: tuple[InhibitRule, ...] = (
    # Only corroboration alerts carry ``group`` (engine/evaluation/corroboration.py). Health alerts
    # stay: a gauge that falls silent in a flood may have been washed away. ``domain``:
    # a river basin alert says nothing about the rain warnings of the same basin.
    InhibitRule(
        name="basin alert covers its gauges",
        source=_matchers('group=~".+"'),
        target=_matchers('group=""', 'health=""'),
        equal=("basin", "domain"),
        level="at_or_below",
    ),
    # A silent gateway silences its stations: one alert, not one per gauge behind it.
    InhibitRule(
        name="silent gateway covers its stations' silence",
        source=_matchers("health=gateway-silent"),
        target=_matchers("health=silent"),
        equal=("gateway",),
        level="any",
    ),
)


@dataclass(frozen=True)
class DispatchConfig:
    """A validated routing file. ``level_routes`` are the routes that ``levels.<x>.
    receivers`` make: an alert at that level goes there instead of the tree."""

    file: str
    receivers: Mapping[str, ReceiverSpec]
    levels: Mapping[str, LevelPolicy]
    route: Route
    level_routes: Mapping[str, Route]
    inhibit: tuple[InhibitRule, ...]

    def routes(self) -> dict[str, Route]:
        """Every route by id, the level routes too."""
        out: dict[str, Route] = {}
        stack = [self.route]
        while stack:
            route = stack.pop()
            out[route.id] = route
            stack.extend(route.routes)
        out.update({r.id: r for r in self.level_routes.values()})
        return out


def read_dispatch_config(path: str | Path) -> tuple[DispatchConfig | None, list[Problem]]:
    """The config of one file, or None, and every problem found."""
    file = str(path)
    try:
        source = load_yaml(path)
    except SourceError as exc:
        return None, [Problem(file, exc.line, exc.col, "", exc.message)]
    except OSError as exc:
        return None, [Problem(file, 1, 1, "", f"cannot read: {exc.strerror}")]
    return _read(source)


def parse_dispatch_config(text: str, file: str = "<routing>") -> DispatchConfig:
    """A config from YAML text; raises RulesInvalid (or SourceError on bad YAML)."""
    config, problems = _read(parse_yaml(text, file))
    if problems or config is None:
        raise RulesInvalid(problems)
    return config


def load_dispatch_config(path: str | Path) -> DispatchConfig:
    """The config, or RulesInvalid listing every problem."""
    config, problems = read_dispatch_config(path)
    if problems or config is None:
        raise RulesInvalid(problems)
    return config


def _read(source: Source) -> tuple[DispatchConfig | None, list[Problem]]:
    if not isinstance(source.data, dict):
        return None, [_at(source, (), "expected a mapping with 'receivers' and 'route'")]
    try:
        spec = DispatchSpec.model_validate(source.data)
    except ValidationError as exc:
        problems = problems_from_validation(exc, source, (), 0)
        return None, sorted(problems, key=lambda p: (p.line, p.col))
    problems = _check(spec, source)
    if problems:
        return None, problems
    return _compile(spec, source.file), []


def _check(spec: DispatchSpec, source: Source) -> list[Problem]:
    """Cross-references and tree rules, at the place each was written."""
    problems: list[Problem] = []
    known: dict[str, int] = {}
    for i, receiver in enumerate(spec.receivers):
        if receiver.name in known:
            first = known[receiver.name]
            message = f"duplicate receiver {receiver.name!r} (first at receivers[{first}])"
            problems.append(_at(source, ("receivers", i, "name"), message))
        known.setdefault(receiver.name, i)

    def refer(path: tuple[Key, ...], names: list[str]) -> None:
        for j, name in enumerate(names):
            if name not in known:
                message = f"unknown receiver {name!r}{did_you_mean(name, known)}"
                problems.append(_at(source, (*path, j), message))

    for level, policy in spec.levels.items():
        refer(("levels", level, "receivers"), policy.receivers or [])
    root = spec.route
    if root.matchers:
        message = "the root route takes every alert; put matchers on its routes"
        problems.append(_at(source, ("route", "matchers"), message))
    if root.continue_:
        problems.append(_at(source, ("route", "continue"), "the root route cannot continue"))
    if not root.receivers:
        problems.append(_at(source, ("route",), "the root route needs receivers"))
    stack: list[tuple[tuple[Key, ...], RouteSpec]] = [(("route",), root)]
    while stack:
        path, route = stack.pop()
        refer((*path, "receivers"), route.receivers or [])
        steps = route.escalation or []
        for k, step in enumerate(steps):
            refer((*path, "escalation", k, "receivers"), step.receivers)
            if k and step.after <= steps[k - 1].after:
                message = "escalation steps must come in order of 'after', each later"
                problems.append(_at(source, (*path, "escalation", k, "after"), message))
        stack.extend(((*path, "routes", i), child) for i, child in enumerate(route.routes))
    return sorted(problems, key=lambda p: (p.line, p.col))


def _compile(spec: DispatchSpec, file: str) -> DispatchConfig:
    levels = {}
    for name, default in DEFAULT_LEVELS.items():
        given = spec.levels.get(name)  # type: ignore[call-overload]
        if given is None:
            levels[name] = default
            continue
        levels[name] = LevelPolicy(
            repeat_ms=default.repeat_ms if given.repeat_interval is None else given.repeat_interval,
            latch=default.latch if given.latch is None else given.latch,
            receivers=tuple(given.receivers) if given.receivers else default.receivers,
        )
    root = _route(spec.route, None, "route")
    # A level's own receivers take the root's grouping and timing, nothing else.
    level_routes = {
        name: replace(
            root,
            id=f"levels.{name}",
            name=f"{name} alerts",
            receivers=policy.receivers,
            repeat_ms=None,
            escalation=(),
            routes=(),
        )
        for name, policy in levels.items()
        if policy.receivers
    }
    inhibit = DEFAULT_INHIBIT if spec.inhibit is None else tuple(map(_inhibit, spec.inhibit))
    receivers = {r.name: r for r in spec.receivers}
    return DispatchConfig(file, receivers, levels, root, level_routes, inhibit)


def _route(spec: RouteSpec, parent: Route | None, route_id: str) -> Route:
    base = parent or _ROOT_DEFAULTS
    escalation = base.escalation
    if spec.escalation is not None:
        escalation = tuple(
            EscalationStep(s.after, tuple(s.receivers), s.name) for s in spec.escalation
        )
    route = Route(
        id=route_id,
        name=spec.name,
        matchers=tuple(spec.matchers),
        receivers=tuple(spec.receivers) if spec.receivers else base.receivers,
        continue_=spec.continue_,
        group_by=base.group_by if spec.group_by is None else tuple(spec.group_by),
        group_wait_ms=_given(spec.group_wait, base.group_wait_ms),
        group_interval_ms=_given(spec.group_interval, base.group_interval_ms),
        repeat_ms=base.repeat_ms if spec.repeat_interval is None else spec.repeat_interval,
        send_resolved=base.send_resolved if spec.send_resolved is None else spec.send_resolved,
        escalation=escalation,
        routes=(),
    )
    children = tuple(
        _route(child, route, f"{route_id}.routes[{i}]") for i, child in enumerate(spec.routes)
    )
    return replace(route, routes=children)


def _given(own: int | None, inherited: int) -> int:
    return inherited if own is None else own


#: What the root route inherits: the defaults of the module docstring.
_ROOT_DEFAULTS = Route(
    id="", name="", matchers=(), receivers=(), continue_=False, group_by=DEFAULT_GROUP_BY,
    group_wait_ms=DEFAULT_GROUP_WAIT_MS, group_interval_ms=DEFAULT_GROUP_INTERVAL_MS,
    repeat_ms=None, send_resolved=True, escalation=(), routes=(),
)  # fmt: skip


def _inhibit(spec: InhibitSpec) -> InhibitRule:
    return InhibitRule(
        spec.name, tuple(spec.source), tuple(spec.target), tuple(spec.equal), spec.level
    )


def _at(source: Source, path: tuple[Key, ...], message: str) -> Problem:
    line, col = source.position(path)
    return Problem(source.file, line, col, format_path(path), message)
