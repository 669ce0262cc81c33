"""The sections of the gateway's settings (``vigil.yaml``), each a frozen model:
``mqtt``, ``web``, the field servers (``sl651``, ``hj212``), ``batch``, ``dispatch``,
``nbiot``, ``ingest`` and ``storage``. ``engine.runtime.config`` assembles them into
``Settings`` and reads the file.

Secrets never live in the file: a section names the environment variable that holds
one (``mqtt.password_env``, ``web.token_env``, ...) and reads it when asked, raising
``ConfigError`` when it is unset.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from connectors.ingest import Admission
from connectors.mqtt.options import MqttOptions
from connectors.mqtt.topics import TopicTemplate

__all__ = [
    "BatchSettings",
    "ConfigError",
    "DispatchSettings",
    "FieldServerSettings",
    "Frozen",
    "IngestSettings",
    "MqttSettings",
    "NbiotSettings",
    "StorageSettings",
    "TlsSettings",
    "WebSettings",
    "WebTlsSettings",
    "is_loopback",
]


class ConfigError(ValueError):
    """Settings that cannot run; the message lists every problem, one per line."""


class Frozen(BaseModel):
    """Frozen, no unknown keys (``engine.runtime.config`` reports one with the nearest
    known field)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class TlsSettings(Frozen):
    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None


class MqttSettings(Frozen):
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
    #: Ingest processes sharing the subscription (``connectors.mqtt.pool``; README
    #: "Several ingest processes"); 1: the gateway's own process subscribes.
    processes: int = Field(1, ge=1, le=64)
    #: Ingest speaks MQTT 5 (default 3.1.1, cheaper per message; both take ``$share``
    #: subscriptions on mosquitto 2, EMQX, HiveMQ, VerneMQ).
    mqtt5: bool = False

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

    def options(
        self, max_readings: int, linger_ms: int, max_payload_bytes: int | None = None
    ) -> MqttOptions:
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
            processes=self.processes,
            mqtt5=self.mqtt5,
            max_readings=max_readings,
            linger_ms=linger_ms,
            max_payload_bytes=max_payload_bytes,
        )


class WebTlsSettings(Frozen):
    """The web server's certificate chain and key (PEM files); ``client_ca_file``, when
    set, makes it ask every client for a certificate signed by that CA.

    Kafka workers pass the dispatcher's requests to the worker that owns it over HTTPS
    too: they check its certificate against ``peer_ca_file`` (the system's trust store
    when unset), at the address the broker sees it from (an IP address in its
    certificate's names), and present their own certificate when ``client_ca_file`` asks
    for one.
    """

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    peer_ca_file: Path | None = None


class WebSettings(Frozen):
    """The web server (``web_port``): ``/metrics``, ``/healthz``, ``/readyz``, the API of
    ``vigil status`` and ``vigil dead-letters``.

    It binds to loopback unless ``bind`` says otherwise; off loopback it needs
    ``token_env`` (the environment variable holding a bearer token every request must
    carry) or ``tls``, or the gateway does not start. A token, once set, is required on
    loopback too.
    """

    bind: str = "127.0.0.1"
    token_env: str | None = None
    tls: WebTlsSettings | None = None
    #: ``/readyz`` answers 503 while the telemetry partitions are further behind than
    #: this, in batches (records of the telemetry topic) summed over partitions.
    ready_max_lag_batches: int = Field(1000, ge=0)

    @model_validator(mode="after")
    def _protected_off_loopback(self) -> WebSettings:
        if not is_loopback(self.bind) and self.token_env is None and self.tls is None:
            raise ValueError(
                f"bind {self.bind!r} is not loopback: set web.token_env (a bearer token "
                "from the environment) or web.tls, or bind 127.0.0.1"
            )
        return self

    def token(self) -> str | None:
        """The bearer token from the environment; raises ConfigError if it is unset."""
        if self.token_env is None:
            return None
        value = os.environ.get(self.token_env)
        if not value:
            raise ConfigError(
                f"web.token_env: environment variable {self.token_env} is not set or empty"
            )
        return value


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


class FieldServerSettings(Frozen):
    """A field-protocol TCP server (SL 651, HJ 212) of ``vigil run``: present in the
    file, it runs. Loopback by default; ``0.0.0.0`` takes stations from the network."""

    host: str = "127.0.0.1"
    port: int = Field(ge=0, le=65535)  # 0: any free port (printed at start)
    #: Seconds without a byte before a connection is closed.
    idle_timeout_s: float = Field(300.0, gt=0, le=86_400)
    #: Seconds a started frame may take to arrive whole (a slow sender is closed).
    frame_timeout_s: float = Field(60.0, gt=0, le=3600)
    max_frame_bytes: int = Field(16_384, ge=64, le=1 << 20)
    max_connections: int = Field(10_000, ge=1, le=1_000_000)
    max_per_address: int = Field(64, ge=1, le=1_000_000)
    #: Bytes that are no frame before a connection is closed.
    max_garbage_bytes: int = Field(65_536, ge=1)


class BatchSettings(Frozen):
    max_readings: int = Field(5000, ge=1, le=1_000_000)
    linger_ms: int = Field(50, ge=0, le=10_000)


class DispatchSettings(Frozen):
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


class NbiotSettings(Frozen):
    """``nbiot:``: NB-IoT devices over CoAP/UDP and the carriers' HTTP push
    (``connectors/nbiot``). Each port None turns its path off; all listen on ``host``
    (loopback by default: expose them deliberately). Tokens live in environment
    variables, never in the file."""

    host: str = "127.0.0.1"
    coap_port: int | None = Field(5683, ge=1, le=65535)
    udp_port: int | None = Field(None, ge=1, le=65535)
    push_port: int | None = Field(None, ge=1, le=65535)
    #: Where devices are looked up: a YAML device file (``connectors/nbiot/devices.py``,
    #: small deployments, read at start), or a registry store folder (``rules.store``);
    #: None: the store in ``data_dir/registry``, where ``vigil registry import --config``
    #: writes (created empty at start when missing). A store is followed while the
    #: gateway runs: devices imported or removed by another process are seen within
    #: ``registry_refresh_s``, or at once on SIGHUP.
    devices: Path | None = None
    #: Devices (and unknown identities) the store's lookup cache holds: the gateway's
    #: memory for devices is bounded by this (about 0.5 KiB each), whatever the fleet.
    registry_cache: int = Field(100_000, ge=1, le=10_000_000)
    #: How often the gateway catches up with the store's writers (seconds).
    registry_refresh_s: float = Field(1.0, gt=0, le=3600)
    #: Product profiles added to the built-in ones (``connectors/nbiot/products.yaml``).
    products: tuple[Path, ...] = ()
    #: Environment variable holding the secret in CTWing's push URL (``/ctwing/<token>``);
    #: unset: CTWing pushes are taken without a token.
    ctwing_token_env: str | None = None
    #: Environment variable holding the OneNET push token; unset: OneNET is refused.
    onenet_token_env: str | None = None
    #: Unregistered identities counted one by one before the rest are counted together.
    unknown_capacity: int = Field(10_000, ge=1, le=10_000_000)

    def store(self, data_dir: Path) -> Path | None:
        """The registry store devices are looked up in; None: the YAML device file."""
        if self.devices is None:
            return data_dir / "registry"
        return self.devices if self.devices.is_dir() else None

    def token(self, env: str | None) -> str | None:
        if env is None:
            return None
        value = os.environ.get(env)
        if value is None:
            raise ConfigError(f"nbiot: environment variable {env} is not set")
        return value


class IngestSettings(Frozen):
    """What every connector takes (``connectors.ingest.Admission``)."""

    #: A reading stamped further ahead of the gateway's clock than this (seconds) is
    #: dead-lettered. Readings a few minutes ahead pass here and fail the engine's QC
    #: clock check instead (a sensor health alert), so keep this well above that.
    max_clock_skew_s: float = Field(86_400.0, ge=60)

    #: Devices' sequence numbers (``seq``; SL 651's serial, README "Sequence numbers"):
    #: the gateway health alert ``gateway#sequence-gaps`` is raised when at least
    #: ``seq_alert_lost`` messages were lost within ``seq_alert_window_s`` seconds; it
    #: resolves after as long without a loss.
    seq_alert_lost: int = Field(1, ge=1)
    seq_alert_window_s: float = Field(600.0, ge=10)
    #: A missing number is a loss once this many higher numbers of its device arrived,
    #: or ``seq_reorder_wait_s`` after it went missing (else it was only reordered).
    seq_reorder_window: int = Field(16, ge=1, le=10_000)
    seq_reorder_wait_s: float = Field(60.0, ge=1)

    def admission(self) -> Admission:
        return Admission(max_ahead_ms=int(self.max_clock_skew_s * 1000))


class StorageSettings(Frozen):
    """Bounds on what the gateway keeps on disk (``engine.runtime.storage``; README:
    Storage). Sizes in MB (10^6 bytes) except the payload, in bytes."""

    #: A message longer than this is dead-lettered undecoded, its first 1024 bytes kept.
    max_payload_bytes: int = Field(65_536, ge=1024, le=256 * 1024 * 1024)
    #: The dead-letter topic keeps its newest records up to this size.
    dead_letter_max_mb: float = Field(64.0, gt=0)
    #: The data directory's size at which ingest pauses (the broker keeps the messages).
    data_dir_max_mb: float = Field(8192.0, gt=0)
    #: The free space on the data directory's filesystem at which ingest pauses.
    min_free_mb: float = Field(256.0, ge=0)
    #: A gateway health alert (``gateway#storage``) is raised at this fraction of
    #: ``data_dir_max_mb``, or when free space falls under twice ``min_free_mb``.
    warn_fraction: float = Field(0.8, gt=0, lt=1)
    #: How often the data directory and free space are measured (seconds).
    check_interval_s: float = Field(10.0, ge=0.1, le=600)
    #: The alerts JSONL file rotates at this size; ``alerts_jsonl_backups`` rotated
    #: files are kept (``<name>.1`` the newest).
    alerts_jsonl_max_mb: float = Field(64.0, gt=0)
    alerts_jsonl_backups: int = Field(5, ge=1, le=1000)
