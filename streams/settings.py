"""Every setting of a worker, read from the environment in one place.

Names are the environment variables (case-insensitive). ``docs/operations.md``
carries the reference generated from this class (``profilestream config``).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

KafkaProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class ClockMode(StrEnum):
    SYSTEM = "system"
    MANUAL = "manual"


class Settings(BaseSettings):
    """Worker configuration. Every field maps to an environment variable."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", frozen=True)

    kafka_bootstrap: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers, comma-separated."
    )
    redis_url: SecretStr = Field(
        SecretStr("redis://127.0.0.1:6379/0"),
        description=(
            "Redis URL, never logged: `redis://user:password@host:6379/0` for an "
            "ACL user, `rediss://...?ssl_ca_certs=/path/ca.pem` for TLS."
        ),
    )
    kafka_security_protocol: KafkaProtocol = Field(
        "PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."
    )
    kafka_sasl_mechanism: SaslMechanism = Field(
        "PLAIN", description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (SASL only)."
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(
        None, description="SASL password; never logged."
    )
    kafka_ssl_cafile: str | None = Field(
        None, description="CA bundle to verify the brokers (SSL, SASL_SSL)."
    )
    kafka_ssl_certfile: str | None = Field(
        None, description="Client certificate for mutual TLS."
    )
    kafka_ssl_keyfile: str | None = Field(
        None, description="Private key of the client certificate."
    )
    kafka_session_timeout_seconds: float = Field(
        10,
        ge=1,
        le=300,
        description=(
            "Consumer-group session timeout: how soon the partitions of a dead "
            "worker move to the others (and how long a paused one keeps them)."
        ),
    )
    topic_prefix: str = Field(
        "", description="Put in front of every topic name, input and output."
    )
    consumer_group: str = Field(
        "profilestream", description="Kafka consumer group of the workers."
    )
    redis_prefix: str = Field(
        "ps", pattern=r"^[A-Za-z0-9_.-]{1,32}$", description="Redis key namespace."
    )
    http_host: str = Field("0.0.0.0", description="Address the HTTP API binds.")
    http_port: int = Field(6066, ge=0, le=65535, description="HTTP API port.")
    api_tokens: Annotated[dict[str, list[str]], NoDecode] = Field(
        default_factory=dict,
        description=('Tenant tokens as JSON: {"<token>": ["tenant-a", "tenant-b"]}.'),
    )
    admin_token: SecretStr | None = Field(
        None, description="Token that acts on every tenant and on /v1/admin."
    )
    clock: ClockMode = Field(
        ClockMode.SYSTEM,
        description="`manual` enables POST /v1/admin/clock (tests and demos).",
    )
    max_clock_skew_seconds: float = Field(
        300, ge=0, description="Events further in the future are dead letters."
    )
    dedup_horizon_hours: float = Field(
        24, gt=0, description="How long an event_id is remembered per contact."
    )
    default_segment_limit: int = Field(
        10, ge=0, description="Segments a tenant may hold unless set per tenant."
    )
    batch_max_records: int = Field(
        2000, ge=1, description="Most records the ingest loop takes per batch."
    )
    commit_interval_seconds: float = Field(
        0.5,
        ge=0,
        description="Least time between two offset commits; what is applied "
        "meanwhile goes in the next one (a rebalance or a stop commits at once; "
        "0 commits after every batch).",
    )
    profile_cache_contacts: int = Field(
        50_000,
        ge=0,
        description="Decoded profiles a worker keeps to skip reading them again "
        "(about 6 KB each with 90 days of history; 0 turns the cache off).",
    )
    clock_tick_seconds: float = Field(
        0.5, gt=0, description="How often due time-driven changes are looked for."
    )
    log_level: str = Field("INFO", description="Python logging level.")
    log_json: bool = Field(False, description="One JSON object per log line.")

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _parse_tokens(cls, value: object) -> object:
        if isinstance(value, str):
            import orjson

            return orjson.loads(value) if value.strip() else {}
        return value

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    def kafka_client_options(self) -> dict[str, Any]:
        """Connection and security options for every aiokafka client."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.kafka_bootstrap,
            "security_protocol": self.kafka_security_protocol,
        }
        if "SSL" in self.kafka_security_protocol:
            from aiokafka.helpers import create_ssl_context

            options["ssl_context"] = create_ssl_context(
                cafile=self.kafka_ssl_cafile,
                certfile=self.kafka_ssl_certfile,
                keyfile=self.kafka_ssl_keyfile,
            )
        if self.kafka_security_protocol.startswith("SASL"):
            password = self.kafka_sasl_password
            options.update(
                sasl_mechanism=self.kafka_sasl_mechanism,
                sasl_plain_username=self.kafka_sasl_username,
                sasl_plain_password=password.get_secret_value() if password else None,
            )
        return options


def settings_reference() -> str:
    """The configuration reference as a Markdown table (for the docs)."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, info in Settings.model_fields.items():
        default = info.get_default(call_default_factory=True)
        if isinstance(default, SecretStr):
            shown = "(secret)"
        elif default is None or default == {}:
            shown = "unset"
        elif default == "":
            shown = "empty"
        else:
            shown = f"`{getattr(default, 'value', default)}`"
        rows.append(f"| `{name.upper()}` | {shown} | {info.description or ''} |")
    return "\n".join(rows) + "\n"
