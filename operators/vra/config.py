"""The Fink VRA flow's settings (`FinkVraConfig`, a settings model; see operators/runtime/settings.py).

Relative paths are taken from the repository root, as the flow's defaults are.
The flow also reads `KAFKA_UNREACHABLE_EXIT_S` (`KafkaWaitSettings`, shared with
the ORACLE flows); `FINK_VRA_MODELS` lists what `--help` shows for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Mapping, Optional

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from operators.runtime.config import REPO_ROOT, MetricsSettings
from operators.runtime.service_settings import KafkaWaitSettings, comma_list
from operators.vra.sherlock import LASAIR_ZTF_API
from operators.runtime.settings import EnvModel, plain


def _in_repo(path: Optional[Path]) -> Optional[Path]:
    if path is None:
        return None
    p = Path(path)
    return p if p.is_absolute() else REPO_ROOT / p


class FinkVraConfig(EnvModel):
    """Everything the Fink VRA flow reads from the environment (docs/fink-vra.md).

    The stream filter defaults to on for Kafka (Fink's topic definition) and off
    for the embedded sample, so that a first run shows rows."""

    kafka_brokers: Annotated[tuple[str, ...], NoDecode] = Field(
        (), validation_alias="FINK_VRA_KAFKA_BROKERS", description="Fink's Kafka servers; unset: the bundled Fink alerts")
    input_path: Optional[str] = Field(
        None, validation_alias="FINK_VRA_INPUT",
        description="Fink Avro/Parquet files to read instead (a file, a directory or a glob; format from content)")
    kafka_username: Optional[str] = Field(None, validation_alias="FINK_VRA_KAFKA_USERNAME",
                                          description="Fink Kafka user (SASL SCRAM-SHA-512)")
    kafka_password: Optional[SecretStr] = Field(None, validation_alias="FINK_VRA_KAFKA_PASSWORD",
                                                description="Fink Kafka password")
    kafka_group_id: Optional[str] = Field(None, validation_alias="FINK_VRA_KAFKA_GROUP_ID",
                                          description="Kafka consumer group id")
    kafka_starting_offset: str = Field("beginning", validation_alias="FINK_VRA_KAFKA_STARTING_OFFSET",
                                       description="beginning or end")
    kafka_tail: bool = Field(True, validation_alias="FINK_VRA_KAFKA_TAIL",
                             description="keep waiting for new alerts (true) or stop at the end (false)")
    topic: str = Field("fink_vra_ztf", validation_alias="FINK_VRA_TOPIC", description="Fink topic")
    stream_filter: Optional[bool] = Field(
        None, validation_alias="FINK_VRA_STREAM_FILTER",
        description="apply Fink's VRA cut; unset: on with Kafka, off for the bundled alerts")
    schema_path: Optional[Path] = Field(None, validation_alias="FINK_VRA_SCHEMA_PATH",
                                        description="Avro schema for schemaless messages")
    embedded_dir: Path = Field(REPO_ROOT / "data" / "fink", validation_alias="FINK_VRA_EMBEDDED_DIR",
                               description="bundled Fink alerts")
    embedded_glob: str = Field("fink_ztf*.avro", validation_alias="FINK_VRA_EMBEDDED_GLOB",
                               description="bundled files to read")
    lasair_token: Optional[SecretStr] = Field(
        None, validation_alias="LASAIR_TOKEN", description="Lasair token; unset: no Sherlock lookups, sep_arcsec NaN")
    lasair_endpoint: str = Field(LASAIR_ZTF_API, validation_alias="LASAIR_API_URL", description="Lasair API base URL")
    sherlock_timeout: float = Field(10.0, validation_alias="FINK_VRA_SHERLOCK_TIMEOUT",
                                    description="seconds per Lasair Sherlock request")
    sherlock_retries: int = Field(3, validation_alias="FINK_VRA_SHERLOCK_RETRIES",
                                  description="retries per Sherlock request")
    sfd_dir: Optional[Path] = Field(None, validation_alias="FINK_VRA_SFD_DIR", description="SFD dust maps directory")
    out_dir: Path = Field(REPO_ROOT / "results" / "fink_vra", validation_alias="FINK_VRA_OUT_DIR",
                          description="Parquet feature dataset")
    deadletter_path: Path = Field(REPO_ROOT / "results" / "fink_vra_deadletters.jsonl",
                                  validation_alias="FINK_VRA_DEADLETTERS", description="dead-letter file")
    out_partitions: int = Field(4, validation_alias="FINK_VRA_OUT_PARTITIONS", description="Parquet output partitions")

    _brokers = field_validator("kafka_brokers", mode="before")(comma_list)
    _paths = field_validator("schema_path", "embedded_dir", "sfd_dir", "out_dir", "deadletter_path")(_in_repo)

    @field_validator("kafka_starting_offset")
    @classmethod
    def _offset(cls, v: str) -> str:
        if v.lower() not in {"beginning", "end"}:
            raise ValueError(f"FINK_VRA_KAFKA_STARTING_OFFSET={v.lower()!r}: use beginning or end")
        return v.lower()

    @field_validator("out_partitions")
    @classmethod
    def _partitions(cls, v: int) -> int:
        if v < 1:
            raise ValueError("FINK_VRA_OUT_PARTITIONS must be >= 1")
        return v

    @model_validator(mode="after")
    def _check(self) -> "FinkVraConfig":
        if self.input_path and self.kafka_brokers:
            raise ValueError("FINK_VRA_INPUT and FINK_VRA_KAFKA_BROKERS are both set: unset one "
                             "(files or Kafka, not both)")
        if self.stream_filter is None:
            object.__setattr__(self, "stream_filter", bool(self.kafka_brokers))
        return self

    @property
    def kafka_config(self) -> dict[str, str]:
        """librdkafka settings: what fink-client sets for Fink's brokers when a user and password are given."""
        out: dict[str, str] = {}
        if self.kafka_username and plain(self.kafka_password):
            out.update({"security.protocol": "sasl_plaintext", "sasl.mechanism": "SCRAM-SHA-512",
                        "sasl.username": self.kafka_username, "sasl.password": plain(self.kafka_password)})
        if self.kafka_group_id:
            out["group.id"] = self.kafka_group_id
        return out

    @property
    def uses_kafka(self) -> bool:
        return bool(self.kafka_brokers)

    @property
    def uses_files(self) -> bool:
        return bool(self.input_path) and not self.uses_kafka

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> "FinkVraConfig":
        return cls.read(env)


FINK_VRA_MODELS = [FinkVraConfig, KafkaWaitSettings, MetricsSettings]

__all__ = ["FINK_VRA_MODELS", "FinkVraConfig"]
