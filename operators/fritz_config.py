"""Fritz (SkyPortal) settings and the pure parts: annotation data, classification text, links.

No I/O here: `operators/fritz_client.py` talks to Fritz, `operators/fritz.py`
is the flow's side (annotation sender and sink). Imports point that way:
fritz -> fritz_client -> fritz_config, ratelimit.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence
from urllib.parse import urlsplit

from models.taxonomy import Taxonomy
from operators.config import env_bool, env_float, env_int

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


@dataclass(frozen=True)
class FritzConfig:
    """Fritz sink and client settings. Enabled when `token` is set."""

    token: str = field(default="", repr=False)
    url: str = DEFAULT_URL
    origin: str = DEFAULT_ORIGIN
    group_ids: tuple[int, ...] = DEFAULT_GROUP_IDS
    decimals: int = 4
    rate: float = 5.0  # requests per second, every request of this token
    burst: int = 10
    timeout: float = 10.0  # seconds, connect and read
    max_retries: int = 4  # per request, for 429 / 5xx / connection errors / timeouts
    backoff_factor: float = 0.5  # seconds, 5xx and timeouts: 0, 1, 2, 4 ... x factor/0.5, plus jitter
    backoff_jitter: float = 0.5  # seconds, uniform, added to each backoff
    backoff_max: float = 30.0
    backoff_429: float = 1.0  # seconds, first wait after a 429 without Retry-After; doubles per 429
    max_retry_after: float = 60.0  # a longer Retry-After is cut to this
    allow_insecure: bool = False  # http:// to a host that is not this machine
    workers: int = 2  # annotation requests in flight
    max_pending: int = 10_000  # objects waiting to be annotated; the oldest is dropped beyond
    not_found_ttl: float = 600.0  # skip objects Fritz does not know, for this long (0: never)
    context_ttl: float = 3600.0  # cache of classifications and links per object
    context_timeout: float = 1.0  # how long `context()` waits for a read by default
    context_workers: int = 2
    report_interval: float = 60.0  # seconds between backlog / summary log lines

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", (self.url or DEFAULT_URL).rstrip("/"))
        object.__setattr__(self, "group_ids", tuple(int(g) for g in self.group_ids))
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
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("FRITZ_RATE must be > 0 and FRITZ_BURST >= 1")

    @property
    def enabled(self) -> bool:
        return bool(self.token)

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None) -> "FritzConfig":
        env = os.environ if environ is None else environ
        groups_raw = env.get("FRITZ_GROUP_IDS")
        return cls(
            token=env.get("FRITZ_TOKEN", "").strip(),
            url=env.get("FRITZ_URL", "").strip() or DEFAULT_URL,
            allow_insecure=bool(env_bool(env, "FRITZ_ALLOW_INSECURE", False)),
            origin=env.get("FRITZ_ORIGIN", "").strip() or DEFAULT_ORIGIN,
            group_ids=DEFAULT_GROUP_IDS if groups_raw is None else parse_group_ids(groups_raw),
            decimals=env_int(env, "FRITZ_DECIMALS", 4),
            rate=env_float(env, "FRITZ_RATE", 5.0),
            burst=env_int(env, "FRITZ_BURST", 10),
            timeout=env_float(env, "FRITZ_TIMEOUT", 10.0),
            max_retries=env_int(env, "FRITZ_MAX_RETRIES", 4),
            workers=env_int(env, "FRITZ_WORKERS", 2),
            max_pending=env_int(env, "FRITZ_MAX_PENDING", 10_000),
            not_found_ttl=env_float(env, "FRITZ_NOT_FOUND_TTL", 600.0),
            context_ttl=env_float(env, "FRITZ_CONTEXT_TTL", 3600.0),
            context_timeout=env_float(env, "FRITZ_CONTEXT_TIMEOUT", 1.0),
        )


# ---------------------------------------------------------------------------
# Pure helpers


def annotation_data(probabilities: Mapping[str, Any], taxonomy: Taxonomy, decimals: int = 4) -> dict:
    """Class probabilities in pre-order without the root, rounded; a class missing -> None.

    For ZTF: Persistent, AGN, CV, Varstar, Transient, SN-Ia, SN-II, SN-Ib/c, SLSN.
    """
    out: dict[str, Optional[float]] = {}
    for i in taxonomy.preorder:
        name = taxonomy.nodes[i]
        p = probabilities.get(name)  # finite: `classify` dead-letters a non-finite output
        out[name] = None if p is None else round(float(p), decimals)
    return out


def format_classifications(items: Sequence[Mapping[str, Any]]) -> str:
    """Fritz classifications as `SN Ia(0.9); AGN(None)` (in Fritz's order)."""
    parts = []
    for c in items or ():
        name = c.get("classification")
        if not name:
            continue
        parts.append(f"{name}({c.get('probability')})")
    return "; ".join(parts)


def split_classifications(items: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    """(what people said, what machine classifiers said): SkyPortal flags a
    classification posted by a classifier with `ml: true`."""
    items = [c for c in items or () if isinstance(c, Mapping)]
    human = [c for c in items if not c.get("ml")]
    machine = [c for c in items if c.get("ml")]
    return format_classifications(human), format_classifications(machine)


def source_link(url: str, object_id: str) -> str:
    return f"{url.rstrip('/')}/source/{object_id}"


def alert_link(url: str, object_id: str) -> str:
    return f"{url.rstrip('/')}/alerts/ztf/{object_id}"


@dataclass(frozen=True)
class FritzContext:
    """What Fritz knows of an object, for people: classifications and a link."""

    classifications: str = ""  # by people
    link: str = ""
    exists: Optional[bool] = None  # saved as a source in a group of ours; None: unknown
    ml_classifications: str = ""  # by machine classifiers


__all__ = [
    "DEFAULT_GROUP_IDS",
    "DEFAULT_ORIGIN",
    "DEFAULT_URL",
    "FritzConfig",
    "FritzContext",
    "alert_link",
    "annotation_data",
    "format_classifications",
    "is_loopback",
    "parse_group_ids",
    "source_link",
    "split_classifications",
]
