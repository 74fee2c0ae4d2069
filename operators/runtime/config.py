"""The ORACLE flows' settings: one frozen root (`Settings`) nesting one model per concern.

`Settings.from_env(survey)` is the only reader of the environment for the
ORACLE flows, read once; every other module receives the pieces it needs
(`settings.oracle.batch_size`, `settings.kafka`, ...). Each concern is an
`EnvModel` (operators/runtime/settings.py): ORACLE, outputs and logging,
recovery, metrics here; Kafka and MongoDB in operators/runtime/service_settings.py;
Fritz in operators/runtime/fritz_settings.py; Slack in operators/runtime/slack_settings.py.
A value's range is its field's type (`AtLeastOne`, `PositiveSeconds`, `Literal[...]`),
so the flow and `python -m dataflows check` refuse the same values with the same line;
only what depends on this machine (a GPU, a compiler) is left to dataflows/preflight.py.
Survey-dependent names and defaults (`ORACLE_ZTF_WEIGHTS`, the topic, the group id, ...)
come from `for_survey`, which derives a survey's own model from the generic one.

A new concern is a model, a field of `Settings` and a line in `_make_survey_models`.
`python -m dataflows --help` and docs/configuration.md's table list these
models' fields (`oracle_models`).
"""

from __future__ import annotations

import copy
import logging
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

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


# Constraints are field types: a value outside them is refused when the settings are read
# (one line naming the variable and the bound, `operators.runtime.settings.one_line`), by the
# flow and by `check` alike.
AtLeastOne = Annotated[int, Field(ge=1)]
PositiveSeconds = Annotated[float, Field(gt=0)]
Seconds = Annotated[float, Field(ge=0)]
Port = Annotated[int, Field(ge=0, lt=65536)]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


def lower(v: Any) -> Any:
    return v.lower() if isinstance(v, str) else v


def upper(v: Any) -> Any:
    return v.upper() if isinstance(v, str) else v


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
    batch_size: AtLeastOne = Field(256, validation_alias="ORACLE_BATCH_SIZE",
                                   description="alerts per model batch (at most)")
    batch_timeout_s: PositiveSeconds = Field(1.0, validation_alias="ORACLE_BATCH_TIMEOUT_S",
                                             description="seconds a partial batch waits before it is classified")
    shards: Optional[AtLeastOne] = Field(None, validation_alias="ORACLE_SHARDS",
                                         description="batch keys, spread evenly over the workers; unset: one per "
                                                     "worker (32 when not run by `python -m bytewax.run`)")
    torch_threads: AtLeastOne = Field(1, validation_alias="ORACLE_TORCH_THREADS",
                                      description="torch threads per process (workers are threads already; use "
                                                  "processes for more cores)")
    cpu_affinity: str = Field("", validation_alias="ALERTFLOW_CPU_AFFINITY",
                              description="pin each flow process to one core at start: auto (process i on core i "
                                          "mod cores) or a core list such as 0,2-3 (process i on its i-th entry); "
                                          "unset: not pinned (docs/performance.md says when it helps)")
    precision: Literal["fp32", "bf16", "int8"] = Field(
        "fp32", validation_alias="ORACLE_PRECISION",
        description="Omni's image network: fp32, or opt-in bf16 (autocast; fastest where the CPU has bf16) or int8 "
                    "(dynamic int8 of the 1x1 and Linear layers, CPU only): 2-4x the alerts/s, probabilities move "
                    "slightly; `bench/bench_flow.py` prints by how much")
    compile: bool = Field(False, validation_alias="ORACLE_COMPILE",
                          description="torch.compile Omni's image network at start-up (fp32 on the CPU only; needs "
                                      "a C++ compiler, g++ or $CXX; ~10-45 s at start): ~1.2x the alerts/s, same "
                                      "probabilities to 1e-5")
    device: Literal["cpu", "cuda", "mps"] = Field(
        "cpu", validation_alias="ORACLE_DEVICE",
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

    _lower = field_validator("precision", "device", mode="before")(lower)

    @field_validator("cpu_affinity")
    @classmethod
    def _cpu_affinity(cls, v: str) -> str:
        try:
            affinity.parse(v, affinity.available_cores())
        except ValueError as exc:
            raise ValueError(f"ALERTFLOW_CPU_AFFINITY={v!r}: {exc}") from None
        return v.strip().lower()


class OutputSettings(EnvModel):
    """Where results, dead letters and logs go, and the bundled sample."""

    results_dir: Path = Field(Path("results"), validation_alias="ALERTFLOW_RESULTS_DIR",
                              description="results CSV and dead-letter files")
    logs_dir: Path = Field(Path("logs"), validation_alias="ALERTFLOW_LOGS_DIR",
                           description="log files (one per flow, rotated at 50 MB, 5 kept)")
    sample_dir: Path = Field(DATA_DIR, validation_alias="ALERTFLOW_SAMPLE_DIR",
                             description="bundled sample replayed without Kafka")
    log_level: LogLevel = Field("INFO", validation_alias="ALERTFLOW_LOG_LEVEL",
                                description="DEBUG, INFO, WARNING")

    _upper = field_validator("log_level", mode="before")(upper)


class RecoverySettings(EnvModel):
    """bytewax recovery: resume from the last snapshot after a restart."""

    enabled: Optional[bool] = Field(
        None, validation_alias="ALERTFLOW_RECOVERY",
        description="bytewax recovery (resume from the last snapshot after a restart); unset: on with Kafka")
    directory: Path = Field(Path("recovery"), validation_alias="ALERTFLOW_RECOVERY_DIR",
                            description="recovery partitions (created on first start; keep on a persistent disk)")
    partitions: AtLeastOne = Field(4, validation_alias="ALERTFLOW_RECOVERY_PARTITIONS",
                                   description="recovery partitions created on first start")
    snapshot_interval_s: PositiveSeconds = Field(
        5.0, validation_alias="ALERTFLOW_SNAPSHOT_INTERVAL_S",
        description="seconds between recovery snapshots (a restart replays at most this much)")
    backup_interval_s: Seconds = Field(0.0, validation_alias="ALERTFLOW_BACKUP_INTERVAL_S",
                                       description="seconds old snapshots are kept (for backups of the recovery "
                                                   "directory)")


class MetricsSettings(EnvModel):
    """Prometheus /metrics."""

    port: Optional[Port] = Field(None, validation_alias="ALERTFLOW_METRICS_PORT",
                                 description="serve Prometheus /metrics on this port (for runs without bytewax's "
                                             "API server)")
    api_enabled: bool = Field(False, validation_alias="BYTEWAX_DATAFLOW_API_ENABLED",
                              description="true: bytewax serves /metrics (ours and its own) on its API port "
                                          "(read by bytewax)")
    api_port: Port = Field(3030, validation_alias="BYTEWAX_DATAFLOW_API_PORT",
                           description="bytewax API server port (one per process: give each process on a host "
                                       "its own; read by bytewax)")


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


# ---------------------------------------------------------------- the settings root


class Settings(BaseModel):
    """Everything an ORACLE flow reads: one frozen root nesting one model per concern,
    read once (`from_env`). A new concern is a field here and a line in
    `_make_survey_models`. `kafka` and `mongo` are None when not configured (bundled
    sample, bundled documents); `recovery.enabled` is resolved (on with Kafka unless set)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    survey: str
    oracle: OracleSettings
    outputs: OutputSettings
    recovery: RecoverySettings
    kafka: Optional[KafkaSettings] = None
    mongo: Optional[MongoSettings] = None
    fritz: FritzConfig = Field(default_factory=FritzConfig)
    slack: SlackConfig = Field(default_factory=SlackConfig)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    results: ResultsSettings = Field(default_factory=ResultsSettings)  # topic, collection (operators/sinks/results_outputs.py)

    # -- file names derived from the survey and the output directories

    def _named(self, suffix: str) -> Path:
        return self.outputs.results_dir / f"oracle_{self.survey.lower()}_{suffix}"

    @property
    def results_csv(self) -> Path:
        return self._named("results.csv")

    @property
    def shadow_results_csv(self) -> Path:
        return self._named("shadow_results.csv")

    @property
    def deadletters(self) -> Path:
        return self._named("deadletters.jsonl")

    @property
    def log_file(self) -> Path:
        return self.outputs.logs_dir / f"oracle_{self.survey.lower()}.log"

    @property
    def secrets(self) -> list[str]:
        return secret_values(self.kafka, self.mongo, self.fritz, self.slack)

    def redact(self, text: str) -> str:
        return redact(text, self.secrets)

    def replace(self, **concerns: Mapping[str, Any]) -> "Settings":
        """These settings with some fields of some concerns changed:
        `settings.replace(oracle={"device": "cuda"})` (tests, `check`)."""
        return self.model_copy(update={name: getattr(self, name).model_copy(update=dict(changes))
                                       for name, changes in concerns.items()})

    # -- reading

    @classmethod
    def from_env(cls, survey, env: Optional[Mapping[str, str]] = None) -> "Settings":
        """Read every ORACLE-flow setting; `survey` is an `operators.oracle.surveys.Survey`.
        The first bad variable raises `ConfigError` (one line naming it and the fix)."""
        parts, errors = read_concerns(survey, env)
        if errors:
            raise next(iter(errors.values()))
        return cls.compose(survey, parts)

    @classmethod
    def compose(cls, survey, parts: Mapping[str, EnvModel]) -> "Settings":
        """The root from models read by `read_concerns` (a missing concern: its defaults)."""
        parts = dict(parts)
        kafka, mongo = parts.get("kafka"), parts.get("mongo")
        parts["kafka"] = kafka if kafka is not None and kafka.brokers else None
        parts["mongo"] = mongo if mongo is not None and mongo.configured else None
        models = survey_models(survey)
        for concern in ("oracle", "outputs", "recovery"):
            if concern not in parts:
                parts[concern] = models[concern].read({})
        recovery = parts["recovery"]
        if recovery.enabled is None:  # default: on with Kafka
            parts["recovery"] = recovery.model_copy(update={"enabled": parts["kafka"] is not None})
        return cls(survey=survey.name, **parts)


def read_concerns(survey, env: Optional[Mapping[str, str]] = None) -> tuple[dict[str, EnvModel], dict[str, ConfigError]]:
    """Every concern's model read from `env`, and the concerns that could not be read
    (concern -> the error, in listing order): the flow stops at the first, `check`
    reports each and checks the rest."""
    parts: dict[str, EnvModel] = {}
    errors: dict[str, ConfigError] = {}
    for concern, read in concern_readers(survey).items():
        try:
            parts[concern] = read(env)
        except ConfigError as exc:
            errors[concern] = exc
    return parts, errors


def concern_readers(survey) -> dict[str, Callable[[Optional[Mapping[str, str]]], EnvModel]]:
    """concern -> how to read it: `Model.read`, except Slack's survey channel variable."""
    readers = {concern: model.read for concern, model in survey_models(survey).items()}
    readers["slack"] = partial(SlackConfig.from_env, channel_variables=(survey.slack_channel_env,))
    return readers
