"""All configuration, read from the environment in one place.

`Settings.from_env(survey)` is the only reader of `os.environ` for the ORACLE
flows; every other module receives the pieces it needs. Secrets (passwords,
tokens, SASL credentials) are kept out of `repr()` so that logging a settings
object never leaks them; `redact()` scrubs a string that might contain them.

The README's configuration table lists every variable read here.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Optional
from urllib.parse import quote_plus

if TYPE_CHECKING:  # the readers of these live beside their sinks
    from operators.fritz import FritzConfig
    from operators.slack import SlackConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def env_str(env: Mapping[str, str], name: str, default: Optional[str] = None) -> Optional[str]:
    value = env.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip()


def env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env_str(env, name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer -> set {name} to a whole number, or unset it") from None


def env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env_str(env, name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number -> set {name} to a number, or unset it") from None


def env_bool(env: Mapping[str, str], name: str, default: Optional[bool]) -> Optional[bool]:
    raw = env_str(env, name)
    if raw is None:
        return default
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name}={raw!r} is not true or false -> set {name} to true or false, or unset it")


def kafka_unreachable_exit_s(env: Mapping[str, str]) -> Optional[float]:
    """`KAFKA_UNREACHABLE_EXIT_S` (every flow reading Kafka): seconds without a broker
    before the flow exits non-zero; unset or 0: keep retrying."""
    seconds = env_float(env, "KAFKA_UNREACHABLE_EXIT_S", 0.0)
    if seconds < 0:
        raise ConfigError(f"KAFKA_UNREACHABLE_EXIT_S={seconds:g} -> give a number of seconds ≥ 0 (0: never exit)")
    return seconds or None


def _path_or_none(value: Optional[str]) -> Optional[Path]:
    return Path(value) if value else None


@dataclass(frozen=True)
class KafkaSettings:
    """Where the filter-results topic lives. Extra librdkafka settings pass through
    from `KAFKA_OPT_*` variables (`KAFKA_OPT_SECURITY_PROTOCOL=SASL_SSL` becomes
    `security.protocol`)."""

    brokers: tuple[str, ...]
    topic: str
    group_id: str
    starting_offset: str  # "beginning" or "end"
    client_config: Mapping[str, str] = field(default_factory=dict, repr=False)
    unreachable_exit_s: Optional[float] = None  # exit non-zero after this long without a broker; None: wait

    @property
    def consumer_config(self) -> dict[str, str]:
        """The flow's consumer settings: bounded prefetch unless KAFKA_OPT_* says otherwise."""
        return {**KAFKA_CONSUMER_DEFAULTS, **self.client_config}

    @property
    def secrets(self) -> list[str]:
        return [v for k, v in self.client_config.items() if "password" in k or "secret" in k]


# librdkafka prefetches up to 64 MB per partition and 100,000 messages by default: with
# BOOM's cutout-carrying messages that alone made a Kafka run peak near 850 MB. The flow
# consumes in batches of ~1,000, so a few MB ahead per partition keep it fed.
# KAFKA_OPT_QUEUED_MAX_MESSAGES_KBYTES etc. override these.
KAFKA_CONSUMER_DEFAULTS = {
    "queued.max.messages.kbytes": "16384",
    "queued.min.messages": "5000",
    "fetch.max.bytes": "16777216",
}


# The user-info part of a URI, up to the last "@" before the host (robust to unescaped "/" or "@").
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^?]*)@")


@dataclass(frozen=True)
class MongoSettings:
    """BOOM's MongoDB. A full `MONGODB_URI` wins over host/port/credentials."""

    database: str
    host: str = "localhost"
    port: int = 27017
    username: Optional[str] = field(default=None, repr=False)
    password: Optional[str] = field(default=None, repr=False)
    uri: Optional[str] = field(default=None, repr=False)
    tls: bool = False
    timeout_ms: int = 5000
    retries: int = 0  # attempts per batch before giving up; 0: wait for the store as long as it takes

    def client_uri(self) -> str:
        if self.uri:
            return self.uri
        auth = ""
        if self.username:
            auth = f"{quote_plus(self.username)}:{quote_plus(self.password or '')}@"
        return f"mongodb://{auth}{self.host}:{self.port}/"

    @property
    def secrets(self) -> list[str]:
        out = [s for s in (self.password, self.uri) if s]
        if self.uri and "@" in self.uri:
            out.append(self.uri.split("?", 1)[0].rsplit("@", 1)[0])
        return out

    def describe(self) -> str:
        """Where we connect, safe for logs."""
        if self.uri:
            return _USERINFO.sub(r"\1***@", self.uri)
        return f"mongodb://{self.host}:{self.port}/{self.database}"


@dataclass(frozen=True)
class Settings:
    survey: str
    filter_name: str
    weights: Path
    model_kind: Optional[str]
    batch_size: int
    batch_timeout_s: float
    shards: int
    results_dir: Path
    logs_dir: Path
    sample_dir: Path
    kafka: Optional[KafkaSettings] = None
    mongo: Optional[MongoSettings] = None
    log_level: str = "INFO"
    # Input-builder options; a survey's `input_options` names those its builder takes.
    forced_photometry: bool = False  # LSST: add DiaForcedSource epochs as flag-0 points
    recovery: bool = False  # bytewax recovery for this run (default: on with Kafka)
    recovery_dir: Path = Path("recovery")
    recovery_partitions: int = 4
    snapshot_interval_s: float = 5.0
    backup_interval_s: float = 0.0
    torch_threads: int = 1
    precision: str = "fp32"  # Omni's image network: fp32, or bf16 (opt-in, faster, probabilities move slightly)
    device: str = "cpu"  # where the model runs: cpu, cuda, mps
    fritz: Optional["FritzConfig"] = None
    slack: Optional["SlackConfig"] = None
    metrics_port: Optional[int] = None
    shadow_weights: Optional[Path] = None  # a second model on the same batches; never posts

    @property
    def results_csv(self) -> Path:
        return self.results_dir / f"oracle_{self.survey.lower()}_results.csv"

    @property
    def shadow_results_csv(self) -> Path:
        return self.results_dir / f"oracle_{self.survey.lower()}_shadow_results.csv"

    @property
    def deadletters(self) -> Path:
        return self.results_dir / f"oracle_{self.survey.lower()}_deadletters.jsonl"

    @property
    def log_file(self) -> Path:
        return self.logs_dir / f"oracle_{self.survey.lower()}.log"

    @property
    def secrets(self) -> list[str]:
        out: list[str] = []
        for part in (self.kafka, self.mongo):
            if part is not None:
                out.extend(part.secrets)
        for token in (getattr(self.fritz, "token", None), getattr(self.slack, "token", None)):
            if token:
                out.append(token)
        return out

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    @classmethod
    def from_env(cls, survey, env: Mapping[str, str] = os.environ) -> "Settings":
        """Read every ORACLE-flow setting; `survey` is an `operators.surveys.Survey`.
        The Fritz, Slack and metrics settings are read by their own modules'
        readers, called from here."""
        from operators.fritz import FritzConfig
        from operators.metrics import metrics_port
        from operators.slack import SlackConfig

        name = survey.name.lower()
        kafka = None
        brokers = env_str(env, "KAFKA_BROKERS")
        if brokers:
            offset = (env_str(env, "KAFKA_STARTING_OFFSET", "beginning") or "").lower()
            if offset not in {"beginning", "end"}:
                raise ConfigError(f"KAFKA_STARTING_OFFSET={offset!r} -> use beginning or end")
            extra = {
                key[len("KAFKA_OPT_"):].lower().replace("_", "."): value
                for key, value in env.items()
                if key.startswith("KAFKA_OPT_") and value
            }
            kafka = KafkaSettings(
                brokers=tuple(b.strip() for b in brokers.split(",") if b.strip()),
                topic=env_str(env, "KAFKA_TOPIC", survey.topic),
                group_id=env_str(env, "KAFKA_GROUP_ID", f"alertflow-oracle-{name}"),
                starting_offset=offset,
                client_config=extra,
                unreachable_exit_s=kafka_unreachable_exit_s(env),
            )
        mongo = None
        uri = env_str(env, "MONGODB_URI")
        host = env_str(env, "BOOM_DATABASE__HOST")
        if uri or host:
            mongo = MongoSettings(
                database=env_str(env, "BOOM_DATABASE__NAME", "boom"),
                host=host or "localhost",
                port=env_int(env, "BOOM_DATABASE__PORT", 27017),
                username=env_str(env, "BOOM_DATABASE__USERNAME"),
                password=env_str(env, "BOOM_DATABASE__PASSWORD"),
                uri=uri,
                tls=env_bool(env, "BOOM_DATABASE__TLS", False),
                timeout_ms=env_int(env, "MONGODB_TIMEOUT_MS", 5000),
                retries=env_int(env, "MONGODB_RETRIES", 0),
            )
        precision = (env_str(env, "ORACLE_PRECISION", "fp32") or "fp32").lower()
        if precision not in {"fp32", "bf16"}:
            raise ConfigError(f"ORACLE_PRECISION={precision!r}: use fp32 (default) or bf16")
        device = (env_str(env, "ORACLE_DEVICE", "cpu") or "cpu").lower()
        if device not in {"cpu", "cuda", "mps"}:
            raise ConfigError(f"ORACLE_DEVICE={device!r}: use cpu (default), cuda or mps")
        batch_size = env_int(env, "ORACLE_BATCH_SIZE", 256)
        if batch_size < 1:
            raise ConfigError(f"ORACLE_BATCH_SIZE={batch_size} -> set ORACLE_BATCH_SIZE to at least 1")
        return cls(
            survey=survey.name,
            filter_name=env_str(env, "ORACLE_FILTER", survey.filter_name),
            weights=Path(env_str(env, f"ORACLE_{survey.name}_WEIGHTS", str(survey.weights))),
            model_kind=env_str(env, "ORACLE_MODEL_KIND"),
            batch_size=batch_size,
            batch_timeout_s=env_float(env, "ORACLE_BATCH_TIMEOUT_S", 1.0),
            shards=max(1, env_int(env, "ORACLE_SHARDS", 32)),
            results_dir=Path(env_str(env, "ALERTFLOW_RESULTS_DIR", "results")),
            logs_dir=Path(env_str(env, "ALERTFLOW_LOGS_DIR", "logs")),
            sample_dir=Path(env_str(env, "ALERTFLOW_SAMPLE_DIR", str(survey.sample_dir))),
            kafka=kafka,
            mongo=mongo,
            log_level=(env_str(env, "ALERTFLOW_LOG_LEVEL", "INFO") or "INFO").upper(),
            # Only the LSST builder takes forced photometry: ZTF has no such variable.
            forced_photometry=(env_bool(env, "ORACLE_LSST_FORCED_PHOTOMETRY", False)
                               if "forced_photometry" in survey.input_options else False),
            recovery=env_bool(env, "ALERTFLOW_RECOVERY", kafka is not None),
            recovery_dir=Path(env_str(env, "ALERTFLOW_RECOVERY_DIR", f"recovery/{name}")),
            recovery_partitions=env_int(env, "ALERTFLOW_RECOVERY_PARTITIONS", 4),
            snapshot_interval_s=env_float(env, "ALERTFLOW_SNAPSHOT_INTERVAL_S", 5.0),
            backup_interval_s=env_float(env, "ALERTFLOW_BACKUP_INTERVAL_S", 0.0),
            torch_threads=env_int(env, "ORACLE_TORCH_THREADS", 1),
            precision=precision,
            device=device,
            fritz=FritzConfig.from_env(env),
            slack=SlackConfig.from_env(env, channel_variables=(survey.slack_channel_env,)),
            metrics_port=metrics_port(env),
            shadow_weights=_path_or_none(env_str(env, f"ORACLE_{survey.name}_SHADOW_WEIGHTS")),
        )
