"""Gateway settings (``vigil.yaml``), validated once at start into frozen models.

Secrets never live in the file: ``mqtt.password_env`` names the environment variable
that holds the password. Relative paths are resolved against the settings file's folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from connectors.mqtt.options import MqttOptions
from connectors.mqtt.topics import TopicTemplate

__all__ = [
    "ConfigError",
    "DispatchSettings",
    "MqttSettings",
    "Settings",
    "WebSettings",
    "load_settings",
]


class ConfigError(ValueError):
    """Settings that cannot run; the message lists every problem, one per line."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TlsSettings(_Frozen):
    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None


class MqttSettings(_Frozen):
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    client_id: str = Field("vigil-gateway", min_length=1, max_length=64)
    username: str | None = None
    password_env: str | None = None
    tls: TlsSettings | None = None
    topic_template: str = "vigil/{station}/{metric}"
    keepalive: int = Field(30, ge=5, le=3600)
    #: The broker's dropped-message count (mosquitto; needs ``sys_interval`` > 0), or
    #: None for a broker that publishes none.
    broker_drops_topic: str | None = "$SYS/broker/publish/messages/dropped"

    @model_validator(mode="after")
    def _template_ok(self) -> MqttSettings:
        TopicTemplate(self.topic_template)  # raises ValueError with the reason
        return self

    def password(self) -> SecretStr | None:
        if self.password_env is None:
            return None
        value = os.environ.get(self.password_env)
        if value is None:
            raise ConfigError(
                f"mqtt.password_env: environment variable {self.password_env} is not set"
            )
        return SecretStr(value)

    def options(self, max_readings: int, linger_ms: int) -> MqttOptions:
        password = self.password()
        return MqttOptions(
            host=self.host,
            port=self.port,
            client_id=self.client_id,
            topic_template=self.topic_template,
            username=self.username,
            password=password.get_secret_value() if password else None,
            ca_file=str(self.tls.ca_file) if self.tls else None,
            cert_file=str(self.tls.cert_file) if self.tls and self.tls.cert_file else None,
            key_file=str(self.tls.key_file) if self.tls and self.tls.key_file else None,
            keepalive=self.keepalive,
            broker_drops_topic=self.broker_drops_topic,
            max_readings=max_readings,
            linger_ms=linger_ms,
        )


class BatchSettings(_Frozen):
    max_readings: int = Field(5000, ge=1, le=1_000_000)
    linger_ms: int = Field(50, ge=0, le=10_000)


class DispatchSettings(_Frozen):
    """``dispatch:``: route alerts to people (``engine/dispatch/README.md``). Absent, the
    gateway only writes alerts to ``alerts_jsonl`` and the console, as before."""

    #: The routing file (receivers, routes, levels, inhibitions).
    routes: Path
    #: Environment variable holding the secret that signs acknowledge links; unset:
    #: notifications carry no links.
    link_secret_env: str | None = None
    #: How people reach the web port, for the links (default ``http://127.0.0.1:<web_port>``).
    public_url: str | None = None
    link_ttl_s: float = Field(86_400.0, gt=0)
    #: How often the dispatcher's clock is looked at (group, repeat, escalation timers).
    tick_s: float = Field(1.0, gt=0, le=60)
    #: A receiver that fails is tried again after this, doubling up to ``retry_max_s``.
    retry_initial_s: float = Field(1.0, gt=0, le=600)
    retry_max_s: float = Field(60.0, gt=0, le=3600)
    #: An alert that is over (resolved or closed, every receiver told) and unchanged this
    #: long leaves the dispatcher's state for its history (``GET /api/history``).
    forget_after_s: float = Field(86_400.0, gt=0)


class WebSettings(_Frozen):
    """The web port's API (``/api/...``): loopback callers need no token; others send
    ``Authorization: Bearer <token>``, the token read from ``token_env``. Unset: the API
    answers loopback only."""

    token_env: str | None = None


class Settings(_Frozen):
    """Everything ``vigil run`` needs."""

    app_id: str = Field("vigil", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    data_dir: Path = Path("var/vigil")
    partitions: int = Field(4, ge=1, le=1024)
    stations: Path
    rules: tuple[Path, ...] = Field(min_length=1)
    alerts_jsonl: Path | None = None
    console: bool = True
    mqtt: MqttSettings = MqttSettings()
    batch: BatchSettings = BatchSettings()
    lateness_ms: int = Field(60_000, ge=0)
    #: Wall seconds after which a partition whose event time stands still no longer
    #: holds the basin (corroboration) rules back (engine/evaluation/corroboration_buffer.py).
    corroboration_idle_s: float = Field(30.0, gt=0, le=3600)
    web_port: int | None = Field(None, ge=1, le=65535)
    reload_interval_s: float = Field(2.0, gt=0, le=3600)
    #: How long the embedded log keeps records that every reader is done with.
    retention_hours: float = Field(168.0, gt=0)
    #: How often the wall clock is written into each telemetry partition (seconds), so
    #: that silent gauges are found when no reading comes: a gauge's silence alert is
    #: raised within its rule's ``stale`` + 2 x this of its last reading's evaluation.
    silence_tick_s: float = Field(5.0, ge=0.1, le=60)
    dispatch: DispatchSettings | None = None
    web: WebSettings = WebSettings()

    @model_validator(mode="after")
    def _files_exist(self) -> Settings:
        paths = (self.stations, *self.rules, *([self.dispatch.routes] if self.dispatch else []))
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise ValueError(f"file not found: {', '.join(missing)}")
        if self.dispatch is not None and self.web_port is None:
            raise ValueError("dispatch needs web_port: acknowledgements come through it")
        return self

    @property
    def alerts_path(self) -> Path:
        return self.alerts_jsonl or self.data_dir / "alerts.jsonl"


def _resolve(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    out = dict(raw)
    for key in ("data_dir", "stations", "alerts_jsonl"):
        if isinstance(out.get(key), str):
            out[key] = str(base / out[key])
    if isinstance(out.get("rules"), list):
        out["rules"] = [str(base / r) if isinstance(r, str) else r for r in out["rules"]]
    elif isinstance(out.get("rules"), str):
        out["rules"] = [str(base / out["rules"])]
    dispatch = out.get("dispatch")
    if isinstance(dispatch, dict) and isinstance(dispatch.get("routes"), str):
        out["dispatch"] = {**dispatch, "routes": str(base / dispatch["routes"])}
    return out


def load_settings(path: str | Path) -> Settings:
    """Read and validate ``path``; raises ConfigError naming each bad field."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings")
    try:
        return Settings.model_validate(_resolve(raw, path.parent.resolve()))
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            lines.append(f"{path}: {loc}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from exc
