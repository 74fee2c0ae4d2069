"""Fritz (SkyPortal) settings: `FritzConfig`, a settings model (see operators/runtime/settings.py).

With the other settings models, below the sinks that use them: the flow's settings
(operators/runtime/config.py) compose it without importing any sink.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Mapping, Optional
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from operators.runtime.settings import BLANK_IS_VALUE, EnvModel, plain

DEFAULT_URL = "https://fritz.science"
DEFAULT_ORIGIN = "oracle_omni"
DEFAULT_GROUP_IDS = (1959,)


def parse_group_ids(raw: str) -> tuple[int, ...]:
    """`"1959, 42"` -> `(1959, 42)`; a non-integer is a configuration error."""
    out = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(int(part))
        except ValueError:
            raise ValueError(f"FRITZ_GROUP_IDS must be a comma list of integers, got {raw!r}") from None
    return tuple(out)


def is_loopback(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class FritzConfig(EnvModel):
    """Fritz sink and client settings. Enabled when `token` is set."""

    token: SecretStr = Field(SecretStr(""), validation_alias="FRITZ_TOKEN",
                             description="Fritz API token; set: annotate objects on Fritz, unset: Fritz off")
    url: str = Field(DEFAULT_URL, validation_alias="FRITZ_URL",
                     description="Fritz (SkyPortal) base URL; https:// (http:// only to this machine or with "
                                 "FRITZ_ALLOW_INSECURE)")
    allow_insecure: bool = Field(False, validation_alias="FRITZ_ALLOW_INSECURE",
                                 description="true: allow an http:// FRITZ_URL on another host (the token travels "
                                             "unencrypted)")
    origin: str = Field(DEFAULT_ORIGIN, validation_alias="FRITZ_ORIGIN", description="annotation origin")
    group_ids: Annotated[tuple[int, ...], NoDecode] = Field(
        DEFAULT_GROUP_IDS, validation_alias="FRITZ_GROUP_IDS", json_schema_extra=BLANK_IS_VALUE,
        description="groups that see the annotations (comma-separated)")
    decimals: Annotated[int, Field(ge=0)] = Field(4, validation_alias="FRITZ_DECIMALS", description="decimals of annotated probabilities")
    rate: Annotated[float, Field(gt=0)] = Field(5.0, validation_alias="FRITZ_RATE",
                        description="requests per second for the token, whole cluster (SkyPortal allows 5)")
    burst: Annotated[int, Field(ge=1)] = Field(10, validation_alias="FRITZ_BURST", description="request burst (SkyPortal allows 10)")
    timeout: Annotated[float, Field(gt=0)] = Field(10.0, validation_alias="FRITZ_TIMEOUT", description="seconds per request")
    max_retries: Annotated[int, Field(ge=0)] = Field(4, validation_alias="FRITZ_MAX_RETRIES",
                             description="retries on 429 (1, 2, 4 ... s), 5xx and timeouts")
    workers: Annotated[int, Field(ge=1)] = Field(2, validation_alias="FRITZ_WORKERS", description="annotation requests in flight")
    max_pending: Annotated[int, Field(ge=1)] = Field(10_000, validation_alias="FRITZ_MAX_PENDING",
                             description="objects waiting to be annotated before the oldest is dropped")
    not_found_ttl: Annotated[float, Field(ge=0)] = Field(600.0, validation_alias="FRITZ_NOT_FOUND_TTL",
                                 description="seconds to skip objects Fritz does not know (404)")
    context_ttl: Annotated[float, Field(ge=0)] = Field(3600.0, validation_alias="FRITZ_CONTEXT_TTL",
                               description="seconds Fritz classifications are cached per object")
    context_timeout: Annotated[float, Field(ge=0)] = Field(1.0, validation_alias="FRITZ_CONTEXT_TIMEOUT",
                                   description="seconds to wait for Fritz classifications of an object")
    # Not read from the environment: tuned in code (tests, `check`).
    backoff_factor: float = 0.5  # seconds, 5xx and timeouts: 0, 1, 2, 4 ... x factor/0.5, plus jitter
    backoff_jitter: float = 0.5  # seconds, uniform, added to each backoff
    backoff_max: float = 30.0
    backoff_429: float = 1.0  # seconds, first wait after a 429 without Retry-After; doubles per 429
    max_retry_after: float = 60.0  # a longer Retry-After is cut to this
    context_workers: int = 2
    report_interval: float = 60.0  # seconds between backlog / summary log lines

    @field_validator("group_ids", mode="before")
    @classmethod
    def _groups(cls, v: Any) -> Any:
        return parse_group_ids(v) if isinstance(v, str) else v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return (v or DEFAULT_URL).rstrip("/")

    @model_validator(mode="after")
    def _check(self) -> "FritzConfig":
        if self.enabled:
            if not self.group_ids:
                raise ValueError(
                    "FRITZ_GROUP_IDS is empty: ORACLE annotations are never posted publicly; "
                    "give at least one Fritz group id (default 1959)"
                )
            if not self.origin or not (self.origin[0].isalnum() or self.origin[0] == "_"):
                raise ValueError(f"FRITZ_ORIGIN must start with a letter, digit or _, got {self.origin!r}")
            scheme = urlsplit(self.url).scheme
            if scheme not in ("http", "https"):
                raise ValueError(f"FRITZ_URL={self.url!r} is not an http(s) URL (e.g. https://fritz.science)")
            if scheme == "http" and not self.allow_insecure and not is_loopback(self.url):
                raise ValueError(
                    f"FRITZ_URL={self.url} would send FRITZ_TOKEN unencrypted: use https://, or set "
                    f"FRITZ_ALLOW_INSECURE=true if this network is trusted")
        return self

    @property
    def enabled(self) -> bool:
        return bool(plain(self.token))

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None) -> "FritzConfig":
        return cls.read(environ)
