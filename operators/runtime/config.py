"""The ORACLE flows' settings: one model per concern, composed into `Settings`.

`Settings.from_env(survey)` is the only reader of the environment for the
ORACLE flows; every other module receives the pieces it needs. Each concern is
an `EnvModel` (operators/runtime/settings.py): ORACLE, outputs and logging, recovery,
metrics here; Kafka and MongoDB in operators/runtime/service_settings.py; Fritz in
operators/runtime/fritz_settings.py; Slack in operators/runtime/slack_settings.py. Survey-dependent names and defaults
(`ORACLE_ZTF_WEIGHTS`, the topic, the group id, ...) come from `for_survey`,
which derives a survey's own model from the generic one.

`python -m dataflows --help` and docs/configuration.md's table list these
models' fields (`oracle_models`).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Optional

from pydantic import Field, create_model, field_validator

from operators.runtime import affinity
from operators.runtime.fritz_settings import FritzConfig
from operators.runtime.service_settings import (  # noqa: F401 - re-exported: the flows' one place for settings
    KAFKA_CONSUMER_DEFAULTS,
    KafkaSettings,
    KafkaWaitSettings,
    MongoSettings,
)
from operators.runtime.results_settings import ResultsSettings
from operators.runtime.settings import ConfigError, EnvModel, redact, secret_values
from operators.runtime.slack_settings import SlackConfig

__all__ = ["ConfigError", "DATA_DIR", "REPO_ROOT", "KafkaSettings", "MongoSettings", "Settings", "oracle_models"]

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = REPO_ROOT / "data"

log = logging.getLogger(__name__)


class OracleSettings(EnvModel):
    """The model and its batches."""

    filter_name: str = Field("", validation_alias="ORACLE_FILTER",
                             description="BOOM filter whose passing alerts are classified")
    weights: Path = Field(DATA_DIR, validation_alias="ORACLE_{survey}_WEIGHTS", description="ORACLE checkpoint (.pth)")
    shadow_weights: Optional[Path] = Field(
        None, validation_alias="ORACLE_{survey}_SHADOW_WEIGHTS",
        description="a second checkpoint run on the same batches into oracle_<survey>_shadow_results.csv; never posts")
    model_kind: Optional[str] = Field(None, validation_alias="ORACLE_MODEL_KIND",
                                      description="btsv2, lsst_lite or omni; unset: detected from the checkpoint")
    batch_size: int = Field(256, validation_alias="ORACLE_BATCH_SIZE", description="alerts per model batch (at most)")
    batch_timeout_s: float = Field(1.0, validation_alias="ORACLE_BATCH_TIMEOUT_S",
                                   description="seconds a partial batch waits before it is classified")
    shards: Optional[int] = Field(None, validation_alias="ORACLE_SHARDS",
                                  description="batch keys, spread evenly over the workers; unset: one per worker "
                                              "(32 when not run by `python -m bytewax.run`)")
    torch_threads: int = Field(1, validation_alias="ORACLE_TORCH_THREADS",
                               description="torch threads per process (workers are threads already; use processes "
                                           "for more cores)")
    cpu_affinity: str = Field("", validation_alias="ALERTFLOW_CPU_AFFINITY",
                              description="pin each flow process to one core at start: auto (process i on core i "
                                          "mod cores) or a core list such as 0,2-3 (process i on its i-th entry); "
                                          "unset: not pinned (bench/scaling.py says when it helps)")
    precision: str = Field("fp32", validation_alias="ORACLE_PRECISION",
                           description="Omni's image network: fp32, or opt-in bf16 (autocast; fastest where the CPU "
                                       "has bf16) or int8 (dynamic int8 of the 1x1 and Linear layers, CPU only): "
                                       "2-4x the alerts/s, probabilities move slightly; `bench/bench_flow.py` "
                                       "prints by how much")
    compile: bool = Field(False, validation_alias="ORACLE_COMPILE",
                          description="torch.compile Omni's image network at start-up (fp32 on the CPU only; needs "
                                      "a C++ compiler, g++ or $CXX; ~10-45 s at start): ~1.2x the alerts/s, same "
                                      "probabilities to 1e-5")
    device: str = Field("cpu", validation_alias="ORACLE_DEVICE",
                        description="where the model runs: cpu, cuda or mps (the model and each batch move there)")
    backend: Literal["torch", "onnxruntime"] = Field(
        "torch", validation_alias="ORACLE_BACKEND",
        description="torch, or onnxruntime: the same networks exported to ONNX (cached by the weights' sha256) "
                    "on ONNX Runtime's CPU provider, fp32; needs the [onnx] extra (docs/onnx.md)")
    onnx_cache_dir: Optional[Path] = Field(
        None, validation_alias="ORACLE_ONNX_CACHE_DIR",
        description="where ORACLE_BACKEND=onnxruntime keeps its exports; unset: alertflow/onnx in the user's "
                    "cache directory ($XDG_CACHE_HOME or ~/.cache)")
    forced_photometry: bool = Field(False, validation_alias="ORACLE_{survey}_FORCED_PHOTOMETRY",
                                    description="add BOOM's forced photometry (fp_hists) as flag-0 epochs")

    @field_validator("batch_size")
    @classmethod
    def _batch(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"ORACLE_BATCH_SIZE={v} -> set ORACLE_BATCH_SIZE to at least 1")
        return v

    @field_validator("shards")
    @classmethod
    def _shards(cls, v: Optional[int]) -> Optional[int]:
        return None if v is None else max(1, v)

    @field_validator("cpu_affinity")
    @classmethod
    def _cpu_affinity(cls, v: str) -> str:
        try:
            affinity.parse(v, affinity.available_cores())
        except ValueError as exc:
            raise ValueError(f"ALERTFLOW_CPU_AFFINITY={v!r}: {exc}") from None
        return v.strip().lower()

    @field_validator("precision")
    @classmethod
    def _precision(cls, v: str) -> str:
        if v.lower() not in {"fp32", "bf16", "int8"}:
            raise ValueError(f"ORACLE_PRECISION={v.lower()!r}: use fp32 (default), bf16 or int8")
        return v.lower()

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v.lower() not in {"cpu", "cuda", "mps"}:
            raise ValueError(f"ORACLE_DEVICE={v.lower()!r}: use cpu (default), cuda or mps")
        return v.lower()


class OutputSettings(EnvModel):
    """Where results, dead letters and logs go, and the bundled sample."""

    results_dir: Path = Field(Path("results"), validation_alias="ALERTFLOW_RESULTS_DIR",
                              description="results CSV and dead-letter files")
    logs_dir: Path = Field(Path("logs"), validation_alias="ALERTFLOW_LOGS_DIR",
                           description="log files (one per flow, rotated at 50 MB, 5 kept)")
    sample_dir: Path = Field(DATA_DIR, validation_alias="ALERTFLOW_SAMPLE_DIR",
                             description="bundled sample replayed without Kafka")
    log_level: str = Field("INFO", validation_alias="ALERTFLOW_LOG_LEVEL", description="DEBUG, INFO, WARNING")

    _upper = field_validator("log_level")(lambda v: v.upper())


class RecoverySettings(EnvModel):
    """bytewax recovery: resume from the last snapshot after a restart."""

    enabled: Optional[bool] = Field(
        None, validation_alias="ALERTFLOW_RECOVERY",
        description="bytewax recovery (resume from the last snapshot after a restart); unset: on with Kafka")
    directory: Path = Field(Path("recovery"), validation_alias="ALERTFLOW_RECOVERY_DIR",
                            description="recovery partitions (created on first start; keep on a persistent disk)")
    partitions: int = Field(4, validation_alias="ALERTFLOW_RECOVERY_PARTITIONS",
                            description="recovery partitions created on first start")
    snapshot_interval_s: float = Field(5.0, validation_alias="ALERTFLOW_SNAPSHOT_INTERVAL_S",
                                       description="seconds between recovery snapshots (a restart replays at most "
                                                   "this much)")
    backup_interval_s: float = Field(0.0, validation_alias="ALERTFLOW_BACKUP_INTERVAL_S",
                                     description="seconds old snapshots are kept (for backups of the recovery "
                                                 "directory)")


class MetricsSettings(EnvModel):
    """Prometheus /metrics. A malformed port is logged and ignored: metrics must not
    stop a flow (`python -m dataflows check` reports it as a failure)."""

    port: Optional[int] = Field(None, validation_alias="ALERTFLOW_METRICS_PORT",
                                description="serve Prometheus /metrics on this port (for runs without bytewax's "
                                            "API server)")
    api_enabled: str = Field("false", validation_alias="BYTEWAX_DATAFLOW_API_ENABLED",
                             description="true: bytewax serves /metrics (ours and its own) on its API port "
                                         "(read by bytewax)")
    api_port: str = Field("3030", validation_alias="BYTEWAX_DATAFLOW_API_PORT",
                          description="bytewax API server port (one per process: give each process on a host "
                                      "its own; read by bytewax)")

    @field_validator("port", mode="before")
    @classmethod
    def _port(cls, v: Any) -> Optional[int]:
        if v is None or isinstance(v, int):
            return v
        if str(v).isdigit() and 0 <= int(v) < 65536:
            return int(v)
        log.warning("ALERTFLOW_METRICS_PORT=%r is not a port number; no metrics exporter started", v)
        return None


# ---------------------------------------------------------------- per survey


def for_survey(model: type[EnvModel], survey, defaults: Mapping[str, Any]) -> type[EnvModel]:
    """`model` for `survey`: `{survey}` in variable names becomes the survey's name
    (ORACLE_{survey}_WEIGHTS -> ORACLE_ZTF_WEIGHTS), and `defaults` replace the
    generic defaults. An input-builder option the survey's builder does not take
    (not in `survey.input_options`) keeps its template name, which no variable has:
    it is not read, and `--help` does not list it."""
    fields: dict[str, Any] = {}
    for name, f in model.model_fields.items():
        alias = f.validation_alias if isinstance(f.validation_alias, str) else None
        templated = alias is not None and "{survey}" in alias
        if templated and name in INPUT_OPTIONS and name not in survey.input_options:
            continue
        if not (templated or name in defaults):
            continue
        new = copy.copy(f)
        if templated:
            new.validation_alias = alias.format(survey=survey.name)
        if name in defaults:
            new.default = defaults[name]
        fields[name] = (f.annotation, new)
    return create_model(f"{model.__name__}{survey.name}", __base__=model, **fields)


INPUT_OPTIONS = ("forced_photometry",)  # OracleSettings fields that are input-builder options
_SURVEY_MODELS: dict[tuple, dict[str, type[EnvModel]]] = {}


def survey_models(survey) -> dict[str, type[EnvModel]]:
    """The ORACLE flow's models for `survey`, by concern (made once per survey)."""
    key = (survey.name, survey.topic, survey.filter_name, str(survey.weights), str(survey.sample_dir),
           tuple(survey.input_options))
    if key not in _SURVEY_MODELS:
        _SURVEY_MODELS[key] = _make_survey_models(survey)
    return _SURVEY_MODELS[key]


def _make_survey_models(survey) -> dict[str, type[EnvModel]]:
    name = survey.name.lower()
    oracle = for_survey(OracleSettings, survey, {"filter_name": survey.filter_name, "weights": survey.weights})
    return {
        "kafka": for_survey(KafkaSettings, survey, {"topic": survey.topic, "group_id": f"alertflow-oracle-{name}"}),
        "mongo": MongoSettings,
        "oracle": oracle,
        "outputs": for_survey(OutputSettings, survey, {"sample_dir": survey.sample_dir}),
        "recovery": for_survey(RecoverySettings, survey, {"directory": Path(f"recovery/{name}")}),
        "fritz": FritzConfig,
        "slack": SlackConfig,
        "metrics": MetricsSettings,
        "results": ResultsSettings,
    }


def oracle_models(survey, fritz: bool = True) -> list[type[EnvModel]]:
    """The models whose variables the survey's flow reads, in the order `--help` lists them."""
    return [m for concern, m in survey_models(survey).items() if fritz or concern != "fritz"]


# ---------------------------------------------------------------- the composed settings


@dataclass(frozen=True)
class Settings:
    """Everything an ORACLE flow reads, composed from the models above."""

    survey: str
    filter_name: str
    weights: Path
    model_kind: Optional[str]
    batch_size: int
    batch_timeout_s: float
    shards: Optional[int]  # None: one batch key per worker (operators/runtime/routing.py)
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
    cpu_affinity: str = ""  # ALERTFLOW_CPU_AFFINITY: "", "auto" or a core list (operators/runtime/affinity.py)
    precision: str = "fp32"  # Omni's image network: fp32, or bf16/int8 (opt-in, faster, probabilities move slightly)
    device: str = "cpu"  # where the model runs: cpu, cuda, mps
    compile: bool = False  # torch.compile Omni's image network at start-up (fp32, CPU)
    fritz: Optional[FritzConfig] = None
    slack: Optional[SlackConfig] = None
    metrics_port: Optional[int] = None
    shadow_weights: Optional[Path] = None  # a second model on the same batches; never posts
    backend: str = "torch"  # torch or onnxruntime (models/oracle/onnx_backend.py)
    onnx_cache_dir: Optional[Path] = None  # None: the user's cache directory
    results: ResultsSettings = ResultsSettings()  # results topic and collection (operators/sinks/results_outputs.py)

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
        return secret_values(self.kafka, self.mongo, self.fritz, self.slack)

    def redact(self, text: str) -> str:
        return redact(text, self.secrets)

    @classmethod
    def from_env(cls, survey, env: Optional[Mapping[str, str]] = None) -> "Settings":
        """Read every ORACLE-flow setting; `survey` is an `operators.oracle.surveys.Survey`."""
        models = survey_models(survey)
        kafka = models["kafka"].read(env)
        mongo = models["mongo"].read(env)
        oracle = models["oracle"].read(env)
        outputs = models["outputs"].read(env)
        recovery = models["recovery"].read(env)
        return cls(
            survey=survey.name,
            filter_name=oracle.filter_name,
            weights=Path(oracle.weights),
            model_kind=oracle.model_kind,
            batch_size=oracle.batch_size,
            batch_timeout_s=oracle.batch_timeout_s,
            shards=oracle.shards,
            results_dir=outputs.results_dir,
            logs_dir=outputs.logs_dir,
            sample_dir=outputs.sample_dir,
            kafka=kafka if kafka.brokers else None,
            mongo=mongo if mongo.configured else None,
            log_level=outputs.log_level,
            forced_photometry=oracle.forced_photometry,
            recovery=bool(kafka.brokers) if recovery.enabled is None else recovery.enabled,
            recovery_dir=recovery.directory,
            recovery_partitions=recovery.partitions,
            snapshot_interval_s=recovery.snapshot_interval_s,
            backup_interval_s=recovery.backup_interval_s,
            torch_threads=oracle.torch_threads,
            cpu_affinity=oracle.cpu_affinity,
            precision=oracle.precision,
            device=oracle.device,
            compile=oracle.compile,
            fritz=models["fritz"].read(env),
            slack=SlackConfig.from_env(env, channel_variables=(survey.slack_channel_env,)),
            metrics_port=models["metrics"].read(env).port,
            shadow_weights=oracle.shadow_weights,
            backend=oracle.backend,
            onnx_cache_dir=oracle.onnx_cache_dir,
            results=models["results"].read(env),
        )
