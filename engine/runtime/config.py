"""Gateway settings (``vigil.yaml``), validated once at start into frozen models: the
whole (``Settings``) and its reading (``load_settings``); the sections it is made of are
in ``engine.runtime.config_sections``.

Secrets never live in the file: ``mqtt.password_env`` names the environment variable
that holds the password. Relative paths are resolved against the settings file's folder.

Every setting can be overridden from the environment (``engine.runtime.config_env``):
``VIGIL_MQTT__HOST=broker.lan`` sets ``mqtt.host``. Each problem is one line,
``file:line:col: field: message`` (or ``$VIGIL_X__Y: field: message`` for a value that
came from the environment), an unknown field with the nearest known one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, Field, ValidationError, model_validator

from engine.runtime.config_env import apply_environment
from engine.runtime.config_sections import (
    BatchSettings,
    ConfigError,
    DispatchSettings,
    FieldServerSettings,
    Frozen,
    IngestSettings,
    MqttSettings,
    NbiotSettings,
    StorageSettings,
    WebSettings,
)
from rules.errors import did_you_mean, format_path, problems_from_validation
from rules.source import Source, SourceError, load_yaml

__all__ = ["ConfigError", "Settings", "load_settings"]


class Settings(Frozen):
    """Everything ``vigil run`` needs."""

    app_id: str = Field("vigil", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    data_dir: Path = Path("var/vigil")
    partitions: int = Field(4, ge=1, le=1024)
    stations: Path
    rules: tuple[Path, ...] = Field(min_length=1)
    alerts_jsonl: Path | None = None
    console: bool = True
    mqtt: MqttSettings = MqttSettings()
    #: SL 651 (conventionally port 5001 ... per centre) and HJ 212 servers; None: off.
    sl651: FieldServerSettings | None = None
    hj212: FieldServerSettings | None = None
    batch: BatchSettings = BatchSettings()
    storage: StorageSettings = StorageSettings()
    ingest: IngestSettings = IngestSettings()
    lateness_ms: int = Field(60_000, ge=0)
    #: Wall seconds after which a partition whose event time stands still no longer
    #: holds the basin (corroboration) rules back (engine/evaluation/corroboration_buffer.py).
    corroboration_idle_s: float = Field(30.0, gt=0, le=3600)
    #: Event-time seconds of history each basin group keeps, so that a gauge's
    #: store-and-forward backlog up to that old raises the basin alerts a replay
    #: raises (engine/evaluation/corroboration.py); older ones are taken on arrival.
    corroboration_history_s: float = Field(86_400.0, ge=0, le=30 * 86_400)
    web_port: int | None = Field(None, ge=1, le=65535)
    web: WebSettings = WebSettings()
    reload_interval_s: float = Field(2.0, gt=0, le=3600)
    #: How long the embedded log keeps records that every reader is done with.
    retention_hours: float = Field(168.0, gt=0)
    #: How often the wall clock is written into each telemetry partition (seconds), so
    #: that silent gauges are found when no reading comes: a gauge's silence alert is
    #: raised within its rule's ``stale`` + 2 x this of its last reading's evaluation.
    silence_tick_s: float = Field(5.0, ge=0.1, le=60)
    dispatch: DispatchSettings | None = None
    nbiot: NbiotSettings | None = None

    @model_validator(mode="after")
    def _files_exist(self) -> Settings:
        paths = (
            self.stations,
            *self.rules,
            *([self.dispatch.routes] if self.dispatch else []),
            *(self.nbiot.products if self.nbiot else ()),
            *([self.nbiot.devices] if self.nbiot and self.nbiot.devices else []),
        )
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise ValueError(f"file not found: {', '.join(missing)}")
        if self.dispatch is not None and self.web_port is None:
            raise ValueError("dispatch needs web_port: acknowledgements come through it")
        return self

    @property
    def alerts_path(self) -> Path:
        return self.alerts_jsonl or self.data_dir / "alerts.jsonl"

    def alerts_sink_bounds(self) -> dict[str, int]:
        """``JsonlSink``'s size bounds, from ``storage``."""
        return {
            "max_bytes": int(self.storage.alerts_jsonl_max_mb * 1_000_000),
            "backups": self.storage.alerts_jsonl_backups,
        }


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
    nbiot = out.get("nbiot")
    if isinstance(nbiot, dict):
        nbiot = dict(nbiot)
        if isinstance(nbiot.get("devices"), str):
            nbiot["devices"] = str(base / nbiot["devices"])
        if isinstance(nbiot.get("products"), list):
            nbiot["products"] = [
                str(base / p) if isinstance(p, str) else p for p in nbiot["products"]
            ]
        out["nbiot"] = nbiot
    return out


def load_settings(path: str | Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Read ``path``, apply the ``VIGIL_*`` overrides of ``environ`` (default
    ``os.environ``) and validate; raises ConfigError naming each bad field."""
    path = Path(path)
    try:
        source = load_yaml(path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except SourceError as exc:
        raise ConfigError(str(exc)) from exc
    data = {} if source.data is None else source.data
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1:1: expected a mapping of settings")
    data, from_env = apply_environment(data, Settings, os.environ if environ is None else environ)
    try:
        return Settings.model_validate(_resolve(data, path.parent.resolve()))
    except ValidationError as exc:
        raise ConfigError("\n".join(_lines(exc, source, from_env))) from exc


def _lines(
    exc: ValidationError, source: Source, from_env: Mapping[tuple[str, ...], str]
) -> list[str]:
    """One line per problem, where the value came from: the file or the environment."""
    lines = []
    for problem, err in zip(
        problems_from_validation(exc, source, (), 0), exc.errors(), strict=True
    ):
        loc = tuple(k for k in err["loc"] if not (isinstance(k, str) and "[" in k))
        message = problem.message
        if err["type"] == "extra_forbidden":
            known = _model_at(loc[:-1]).model_fields
            message = f"unknown field{did_you_mean(str(loc[-1]), known)}"
        variable = next((v for p, v in from_env.items() if loc[: len(p)] == p), None)
        if variable is not None:
            where = f"${variable}"
        else:
            where = f"{problem.file}:{problem.line}:{problem.col}"
        lines.append(f"{where}: {format_path(loc)}: {message}" if loc else f"{where}: {message}")
    return lines


def _model_at(path: tuple[str | int, ...]) -> type[BaseModel]:
    """The settings model found at ``path`` (``("mqtt", "tls")`` -> TlsSettings)."""
    model: type[BaseModel] = Settings
    for key in path:
        field = model.model_fields.get(str(key))
        if field is None:
            break
        inner = next(
            (a for a in get_args(field.annotation) or (field.annotation,) if isinstance(a, type)
             and issubclass(a, BaseModel)), None,
        )  # fmt: skip
        if inner is None:
            break
        model = inner
    return model
