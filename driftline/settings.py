"""Settings for every command, from flags over DRIFTLINE_* environment variables over defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from actions.schedule import Schedule
from schemas import DEFAULT_IDENTITY_ATTRIBUTES


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DRIFTLINE_", extra="ignore")

    data: Path = Path(".driftline")
    bus: Literal["memory", "kafka"] = "memory"
    bootstrap: str = "127.0.0.1:9092"
    # a ClickHouse server (http(s)://…): the sink writes it, query commands read it
    clickhouse: str | None = None

    # receiver
    host: str = "127.0.0.1"
    grpc_port: int = 4317
    http_port: int = 4318
    admin_port: int = 8888
    workers: int = Field(1, ge=0, description="receiver processes; 0 means one per core")
    max_grpc_bytes: int = 4 * 1024 * 1024
    max_http_bytes: int = 20 * 1024 * 1024
    max_attributes: int = 128
    max_attribute_key_length: int = 256
    max_attribute_value_length: int = 4096
    identity_attributes: tuple[str, ...] = DEFAULT_IDENTITY_ATTRIBUTES
    max_inflight: int = 4096
    publish_timeout: float = 5.0
    # `driftline run`: seconds a stored row may wait for its batch. Each ClickHouse insert
    # costs ~15 ms of CPU whatever its size, so longer batches buy throughput with latency.
    store_batch_delay: float = Field(0.05, gt=0)
    # a repeated, unchanged snapshot is stored at most once per this many seconds per endpoint
    last_seen_resolution: float = Field(60.0, ge=0)
    # at most one AuthEvent per endpoint, reason and token per this many seconds; the
    # rejections in between are counted into the next one (0: one event per rejection)
    auth_event_interval: float = Field(1.0, ge=0)
    # request bodies held at once across all connections of a receiver process; past it, new
    # requests get 503 / UNAVAILABLE before their body is read
    max_body_bytes_in_flight: int = Field(256 * 1024 * 1024, gt=0)
    # event-loop lag (seconds) past which the receiver sheds new requests (503 / UNAVAILABLE);
    # 0 turns shedding off
    shed_lag: float = Field(0.05, ge=0)
    # least time (seconds) admitted requests took to be answered, over 100 ms, past which the
    # receiver sheds: the queue is behind the loop (the store's group commit, Kafka)
    shed_queue: float = Field(0.25, gt=0)
    # TLS on both receivers: PEM certificate chain and key; with a client CA, clients must
    # present a certificate it signed
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None

    # processors worker: seconds a table recovery may read nothing before the worker exits
    # (code 75) for its supervisor to restart it; 0 waits forever, as Faust does
    recovery_stall: float = Field(120.0, ge=0)

    # tokens
    tokens: Path | None = None  # default: <data>/tokens.db
    token_memory: str = "30d"  # how long retired/revoked tokens are still recognised

    # actions (remediation)
    integrations: Path | None = None  # default: <data>/mdm/integrations.json (0600, secrets)
    actions_live: bool = (
        False  # `driftline run` acts only when this is set (and integrations allow)
    )
    actions_interval: float = 60.0  # seconds between remediation passes (sooner on new drift)
    compliance_interval: float = 900.0  # seconds between compliance pulls through MDM APIs

    def schedule(self, settle: float = 0.2) -> Schedule:
        return Schedule(
            live=self.actions_live,
            interval=self.actions_interval,
            compliance_interval=self.compliance_interval,
            settle=settle,
        )

    @property
    def integrations_file(self) -> Path:
        return self.integrations or self.data / "mdm" / "integrations.json"

    @property
    def token_registry(self) -> Path:
        return self.tokens or self.data / "tokens.db"
