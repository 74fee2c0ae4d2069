"""Where the services are: Kafka and MongoDB settings models (see operators/runtime/settings.py).

Shared by the ORACLE flows (operators/runtime/config.py composes them) and, for
`KAFKA_UNREACHABLE_EXIT_S`, the Fink VRA flow.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Optional
from urllib.parse import quote_plus

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from operators.runtime.settings import EnvModel, plain


def comma_list(value: Any) -> Any:
    """`"a:1, b:2"` -> `("a:1", "b:2")`; anything else as given."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


# librdkafka prefetches up to 64 MB per partition and 100,000 messages by default: with
# BOOM's cutout-carrying messages that alone made a Kafka run peak near 850 MB. The flow
# consumes in batches of ~1,000, so a few MB ahead per partition keep it fed.
# KAFKA_OPT_QUEUED_MAX_MESSAGES_KBYTES etc. override these.
KAFKA_CONSUMER_DEFAULTS = {
    "queued.max.messages.kbytes": "16384",
    "queued.min.messages": "5000",
    "fetch.max.bytes": "16777216",
}


class KafkaWaitSettings(EnvModel):
    """How long a flow reading Kafka waits for a broker (every such flow)."""

    unreachable_exit_s: Optional[float] = Field(
        None, validation_alias="KAFKA_UNREACHABLE_EXIT_S",
        description="seconds without a Kafka broker before the flow exits with status 3 (for a supervisor); "
                    "unset or 0: retry for ever")

    @field_validator("unreachable_exit_s")
    @classmethod
    def _not_negative(cls, v: Optional[float]) -> Optional[float]:
        if v is not None and v < 0:
            raise ValueError(f"KAFKA_UNREACHABLE_EXIT_S={v:g} -> give a number of seconds ≥ 0 (0: never exit)")
        return v or None


class KafkaSettings(KafkaWaitSettings):
    """Where the filter-results topic lives. Extra librdkafka settings pass through
    from `KAFKA_OPT_*` variables (`KAFKA_OPT_SECURITY_PROTOCOL=SASL_SSL` becomes
    `security.protocol`); those naming a password or secret are kept as secrets."""

    brokers: Annotated[tuple[str, ...], NoDecode] = Field(
        (), validation_alias="KAFKA_BROKERS",
        description="Kafka bootstrap servers (comma-separated); unset: replay the bundled sample and exit")
    topic: str = Field("", validation_alias="KAFKA_TOPIC", description="BOOM filter-results topic")
    group_id: str = Field("", validation_alias="KAFKA_GROUP_ID", description="Kafka consumer group id")
    starting_offset: Literal["beginning", "end"] = Field("beginning", validation_alias="KAFKA_STARTING_OFFSET",
                                                       description="where a first start reads from: beginning or end")
    options: dict[str, str] = Field(
        default_factory=dict, validation_alias="KAFKA_OPT_*", repr=False,
        description="any librdkafka setting: KAFKA_OPT_SECURITY_PROTOCOL=SASL_SSL sets security.protocol")
    secret_options: dict[str, SecretStr] = Field(default_factory=dict, exclude=True, repr=False)

    _brokers = field_validator("brokers", mode="before")(comma_list)

    _offset = field_validator("starting_offset", mode="before")(lambda v: v.lower() if isinstance(v, str) else v)

    @model_validator(mode="before")
    @classmethod
    def _split_secret_options(cls, data: Any) -> Any:
        """`SASL_PASSWORD` -> `sasl.password`, and options holding a password or secret apart."""
        if not isinstance(data, dict):
            return data
        key = next((k for k in ("KAFKA_OPT_*", "options") if k in data), None)
        if key is None:
            return data
        named = {k.lower().replace("_", "."): v for k, v in dict(data[key]).items()}
        secret = {k: v for k, v in named.items() if "password" in k or "secret" in k}
        return {**data, key: {k: v for k, v in named.items() if k not in secret},
                "secret_options": {**dict(data.get("secret_options") or {}), **secret}}

    @property
    def client_config(self) -> dict[str, str]:
        """The `KAFKA_OPT_*` settings as librdkafka takes them (secrets included)."""
        return {**self.options, **{k: plain(v) for k, v in self.secret_options.items()}}

    @property
    def consumer_config(self) -> dict[str, str]:
        """The flow's consumer settings: bounded prefetch unless KAFKA_OPT_* says otherwise."""
        return {**KAFKA_CONSUMER_DEFAULTS, **self.client_config}


# The user-info part of a URI, up to the last "@" before the host (robust to unescaped "/" or "@").
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^?]*)@")


class MongoSettings(EnvModel):
    """BOOM's MongoDB. A full `MONGODB_URI` wins over host/port/credentials."""

    uri: Optional[SecretStr] = Field(None, validation_alias="MONGODB_URI",
                                     description="BOOM's MongoDB as a full URI; wins over BOOM_DATABASE__*")
    host: Optional[str] = Field(None, validation_alias="BOOM_DATABASE__HOST",
                                description="BOOM's MongoDB host; with MONGODB_URI unset and this unset: "
                                            "bundled documents")
    port: Annotated[int, Field(ge=1, lt=65536)] = Field(27017, validation_alias="BOOM_DATABASE__PORT",
                                                         description="BOOM's MongoDB port")
    database: str = Field("boom", validation_alias="BOOM_DATABASE__NAME", description="BOOM's database name")
    username: Optional[str] = Field(None, validation_alias="BOOM_DATABASE__USERNAME", repr=False,
                                    description="MongoDB user")
    password: Optional[SecretStr] = Field(None, validation_alias="BOOM_DATABASE__PASSWORD",
                                          description="MongoDB password")
    tls: bool = Field(False, validation_alias="BOOM_DATABASE__TLS", description="connect to MongoDB with TLS")
    timeout_ms: Annotated[int, Field(ge=1)] = Field(5000, validation_alias="MONGODB_TIMEOUT_MS",
                            description="MongoDB server-selection / socket timeout")
    retries: Annotated[int, Field(ge=0)] = Field(0, validation_alias="MONGODB_RETRIES",
                         description="attempts per batch before the flow stops on a store outage; "
                                     "0: wait until MongoDB is back")

    @property
    def configured(self) -> bool:
        """A MongoDB was named (else the flow reads the bundled documents)."""
        return bool(self.uri or self.host)

    def client_uri(self) -> str:
        if self.uri:
            return plain(self.uri)
        auth = ""
        if self.username:
            auth = f"{quote_plus(self.username)}:{quote_plus(plain(self.password))}@"
        return f"mongodb://{auth}{self.host or 'localhost'}:{self.port}/"

    @property
    def extra_secrets(self) -> list[str]:
        """The URI's user-info part and the password in it (also when the URI is malformed)."""
        m = _USERINFO.match(plain(self.uri))
        if not m:
            return []
        return [m.group(2)] + ([m.group(2).split(":", 1)[1]] if ":" in m.group(2) else [])

    def describe(self) -> str:
        """Where we connect, safe for logs."""
        if self.uri:
            return _USERINFO.sub(r"\1***@", plain(self.uri))
        return f"mongodb://{self.host or 'localhost'}:{self.port}/{self.database}"
