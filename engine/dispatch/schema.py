"""The routing file's schema: what a duty office writes, as frozen pydantic models.

The file (``engine/dispatch/README.md`` has a worked example) is::

    version: 1
    receivers: [{name, type, rate_limit?, ...type-specific settings}]
    levels: {red: {repeat_interval, latch, receivers}, ...}     # optional overrides
    route: {receivers, group_by, group_wait, ..., routes: [...]}
    inhibit: [{source, target, equal, level}]                     # optional

Durations are strings (``30s``, ``15m``) held as integer milliseconds; ``group_wait``
may be ``0s`` (send at once) and ``repeat_interval`` may be ``never``. Receivers are
checked for their name and type only: the other keys of a receiver belong to the
receiver's own factory (``connectors/sinks/``), which gets them as
``ReceiverSpec.settings``. Cross-references (a route naming a receiver that does not
exist) are checked by ``engine.dispatch.config``, which knows where each name was written.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator

from engine.dispatch.matchers import Matcher, parse_matcher
from rules.durations import parse_duration_ms
from rules.errors import did_you_mean
from rules.model import StrictModel

__all__ = [
    "LEVELS",
    "RECEIVER_TYPES",
    "DispatchSpec",
    "EscalationStepSpec",
    "InhibitSpec",
    "LevelPolicySpec",
    "RateLimitSpec",
    "ReceiverSpec",
    "RouteSpec",
]

LevelName = Literal["blue", "yellow", "orange", "red"]
LEVELS: tuple[LevelName, ...] = ("blue", "yellow", "orange", "red")
ReceiverType = Literal["webhook", "email", "sms", "mqtt", "jsonl", "console"]
RECEIVER_TYPES: tuple[ReceiverType, ...] = ("webhook", "email", "sms", "mqtt", "jsonl", "console")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ZERO = re.compile(r"^\s*0+(?:\.0*)?\s*(?:ms|s|m|h|d)?\s*$")


def _wait_ms(value: Any) -> int:
    """A duration that may also be zero (``0s``: no wait)."""
    if isinstance(value, str) and _ZERO.match(value):
        return 0
    return parse_duration_ms(value)


def _repeat_ms(value: Any) -> int:
    """A repeat interval; ``never`` is 0 (sent once, then only on a change)."""
    if value == "never":
        return 0
    try:
        return parse_duration_ms(value)
    except ValueError:
        raise ValueError(
            f"expected a duration like '15m', '1h' or 'never', got {value!r}"
        ) from None


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _check_name(value: Any) -> Any:
    if isinstance(value, str) and not _NAME.match(value):
        raise ValueError(f"a receiver name is letters, digits, '_', '.' and '-', got {value!r}")
    return value


def _check_type(value: Any) -> Any:
    if isinstance(value, str) and value not in RECEIVER_TYPES:
        choices = ", ".join(RECEIVER_TYPES)
        raise ValueError(
            f"unknown receiver type {value!r}{did_you_mean(value, RECEIVER_TYPES)}; "
            f"expected one of {choices}"
        )
    return value


def _check_level(value: Any) -> Any:
    if isinstance(value, str) and value not in LEVELS:
        raise ValueError(
            f"expected one of blue, yellow, orange, red, got {value!r}{did_you_mean(value, LEVELS)}"
        )
    return value


WaitMs = Annotated[int, BeforeValidator(_wait_ms)]
DurationMs = Annotated[int, BeforeValidator(parse_duration_ms)]
RepeatMs = Annotated[int, BeforeValidator(_repeat_ms)]
Names = Annotated[list[str], BeforeValidator(_one_or_many), Field(min_length=1)]
Matchers = Annotated[
    list[Annotated[Matcher, PlainValidator(parse_matcher)]], BeforeValidator(_one_or_many)
]
Level = Annotated[LevelName, BeforeValidator(_check_level)]


class RateLimitSpec(StrictModel):
    """At most ``messages`` notifications to a receiver in any ``per`` (default 1m)."""

    messages: int = Field(ge=1)
    per: DurationMs = 60_000


class ReceiverSpec(BaseModel):
    """A receiver: ``name``, ``type`` and ``rate_limit`` are the dispatcher's; every
    other key is the receiver's own (``settings``), checked by its factory."""

    model_config = ConfigDict(frozen=True, extra="allow")

    name: Annotated[str, BeforeValidator(_check_name)]
    type: Annotated[ReceiverType, BeforeValidator(_check_type)]
    rate_limit: RateLimitSpec | None = None

    @property
    def settings(self) -> dict[str, Any]:
        """The type-specific keys, as written (``url``, ``to``, ``template`` ...)."""
        return dict(self.__pydantic_extra__ or {})


class EscalationStepSpec(StrictModel):
    """``after`` unacknowledged (since the alert reached the route), tell ``receivers``."""

    after: DurationMs
    receivers: Names
    name: str = ""


class LevelPolicySpec(StrictModel):
    """What a level means to the people on call (defaults in ``engine.dispatch.config``).

    ``receivers``, when given, replaces the route tree for alerts at that level (blue to
    a log channel only); ``latch`` keeps an alert firing until a person acknowledges it,
    even once the data clears.
    """

    repeat_interval: RepeatMs | None = None
    latch: bool | None = None
    receivers: Names | None = None


class RouteSpec(StrictModel):
    """A node of the route tree. Every setting left out is inherited from the parent."""

    name: str = ""
    matchers: Matchers = Field(default_factory=list)
    receivers: Names | None = None
    continue_: bool = Field(default=False, alias="continue")
    group_by: Annotated[list[str], BeforeValidator(_one_or_many)] | None = None
    group_wait: WaitMs | None = None
    group_interval: DurationMs | None = None
    repeat_interval: RepeatMs | None = None
    send_resolved: bool | None = None
    escalation: list[EscalationStepSpec] | None = None
    routes: list[RouteSpec] = Field(default_factory=list)


class InhibitSpec(StrictModel):
    """While an alert matching ``source`` is active, alerts matching ``target`` with the
    same values of the ``equal`` labels are not notified; ``level: at_or_below`` (or
    ``below``) limits it to targets at or below the source's level."""

    name: str = ""
    source: Matchers = Field(min_length=1)
    target: Matchers = Field(min_length=1)
    equal: Annotated[list[str], BeforeValidator(_one_or_many)] = Field(default_factory=list)
    level: Literal["any", "at_or_below", "below"] = "any"


class DispatchSpec(StrictModel):
    """The whole routing file. ``inhibit`` left out means the shipped defaults;
    ``inhibit: []`` means none."""

    version: Literal[1] = 1
    receivers: list[ReceiverSpec] = Field(min_length=1)
    levels: dict[Level, LevelPolicySpec] = Field(default_factory=dict)
    route: RouteSpec
    inhibit: list[InhibitSpec] | None = None
