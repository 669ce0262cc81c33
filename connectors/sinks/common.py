"""What every receiver shares: its config base, secrets from the environment, the retry
loop with exponential backoff, and the time zone it shows times in.

The retry loop sleeps through an injected ``Sleep`` (``asyncio.sleep`` in production), so
a test hands in one that records the delays and returns at once: no test waits for a
backoff.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from connectors.sinks.render import Lang
from engine.contracts.notification import DeliveryError

__all__ = [
    "Backoff",
    "ReceiverConfig",
    "ReceiverConfigError",
    "Sleep",
    "secret_from_env",
    "url_of",
    "with_retries",
]

log = logging.getLogger(__name__)

#: ``await sleep(seconds)``; ``asyncio.sleep`` outside tests.
Sleep = Callable[[float], Awaitable[None]]


class ReceiverConfigError(ValueError):
    """A receiver's config cannot work. The message has one problem a line,
    ``receiver 'NAME': FIELD: message`` (no FIELD for a problem of the whole config);
    ``problems`` holds (field path, message) pairs
    for a caller that maps them back to ``file:line:col``."""

    def __init__(self, name: str, problems: list[tuple[str, str]]) -> None:
        super().__init__(
            "\n".join(
                f"receiver {name!r}: {loc + ': ' if loc else ''}{msg}" for loc, msg in problems
            )
        )
        self.name = name
        self.problems = problems


class Backoff(BaseModel):
    """Attempts inside one ``send`` and the waits between them: ``initial_s``, then
    times ``factor`` each time, at most ``max_s``. No jitter: one dispatcher talks to a
    receiver, there is no herd to spread."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    attempts: int = Field(4, ge=1, le=20)
    initial_s: float = Field(0.5, gt=0, le=60)
    factor: float = Field(2.0, ge=1, le=10)
    max_s: float = Field(30.0, gt=0, le=600)

    def delays(self) -> list[float]:
        """The waits between attempts, in seconds (``attempts - 1`` of them)."""
        return [min(self.initial_s * self.factor**i, self.max_s) for i in range(self.attempts - 1)]


class ReceiverConfig(BaseModel):
    """Fields every receiver has. Secrets are never here: ``*_env`` fields name the
    environment variable that holds one."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    lang: Lang = "zh"
    timezone: str = "Asia/Shanghai"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r} (e.g. 'Asia/Shanghai', 'UTC')") from exc
        return value

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def secret_from_env(receiver: str, field: str, variable: str) -> SecretStr:
    """The value of environment variable ``variable``; a ReceiverConfigError naming the
    field if it is unset or empty (read when the receiver is built: a gateway with a
    missing secret fails at start, not at the first flood)."""
    value = os.environ.get(variable)
    if not value:
        raise ReceiverConfigError(
            receiver, [(field, f"environment variable {variable} is not set or empty")]
        )
    return SecretStr(value)


def url_of(receiver: str, url: object | None, url_env: str | None) -> str:
    """A receiver's endpoint: ``url`` as written, else the environment variable
    ``url_env`` names (a URL that carries a key stays out of the settings file)."""
    if url is not None:
        return str(url)
    return secret_from_env(receiver, "url_env", url_env or "").get_secret_value()


async def with_retries(
    receiver: str, attempt: Callable[[], Awaitable[None]], backoff: Backoff, sleep: Sleep
) -> None:
    """Run ``attempt`` until it returns; after a retryable DeliveryError wait the next
    backoff delay and try again. A permanent error, or the last attempt's error, is
    raised as it is."""
    delays = backoff.delays()
    for i in range(backoff.attempts):
        try:
            await attempt()
            return
        except DeliveryError as exc:
            if not exc.retryable or i == len(delays):
                raise
            log.warning(
                "%s; attempt %d of %d, next in %.1fs", exc, i + 1, backoff.attempts, delays[i]
            )
            await sleep(delays[i])
