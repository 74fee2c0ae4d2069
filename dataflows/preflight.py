"""Configuration problems found before a flow starts, by one function shared with `check`.

    validate(settings, survey) -> (checks, model)

checks the local configuration of an ORACLE flow: the weights (present,
readable, an ORACLE checkpoint of this survey's classes), the input (a sample
to replay when Kafka is off), the output and recovery directories (writable,
tried for real: permission bits say nothing to root or on a read-only mount).
`python -m dataflows check` prints every result; a flow prints only the
failures, one line each naming the variable and the fix, and exits with status
2 before its dataflow exists (`exit_on_failures`). A setting that cannot even
be parsed is reported the same way (`read_or_exit`). Tracebacks are shown only
at `ALERTFLOW_LOG_LEVEL=DEBUG`.

Network services (Kafka, MongoDB, Fritz, Slack) are not configuration: `check`
asks them, a flow waits for them (operators/io/kafka.py for Kafka).
"""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, TypeVar

T = TypeVar("T")

EXIT_CONFIG = 2  # the conventional status of a usage error


@dataclass
class CheckResult:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    error: Optional[BaseException] = None  # the exception behind a failure (traceback at DEBUG)

    def line(self) -> str:
        text = f"{'OK  ' if self.ok else 'FAIL'}  {self.name:<9} {self.detail}"
        return text + (f" -> {self.fix}" if (self.fix and not self.ok) else "")

    def error_line(self) -> str:
        """The one line a flow prints for a failure."""
        return f"configuration error: {self.detail}" + (f" -> {self.fix}" if self.fix else "")


# ---------------------------------------------------------------- single checks


def unwritable_reason(path: Path) -> Optional[str]:
    """Why files cannot be created in directory `path` (None when they can).

    Tried for real, without leaving anything behind: a temporary file in an
    existing directory, a temporary directory in the nearest existing parent
    of a missing one."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        return f"{path} is not a directory"
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        return f"{path} cannot be created: {probe} is not a directory"
    try:
        if probe == path:
            with tempfile.TemporaryFile(dir=path):
                pass
        else:
            os.rmdir(tempfile.mkdtemp(dir=probe))
    except OSError as exc:
        return f"{path} is not writable ({exc.strerror or exc})"
    return None


def check_directories(name: str, dirs: Iterable[tuple[str, Path]]) -> CheckResult:
    """`dirs`: (variable, directory) pairs; fails on the first one that cannot be written."""
    dirs = list(dirs)
    for variable, d in dirs:
        why = unwritable_reason(d)
        if why:
            return CheckResult(name, False, f"{variable}={d}: {why}", f"set {variable} to a writable directory")
    return CheckResult(name, True, ", ".join(str(Path(d).resolve()) for _, d in dirs))


def check_weights(settings, survey, shadow: bool = False):
    """(result, model): the checkpoint (the shadow one with `shadow`) loads and its
    classes are the survey's."""
    from models.oracle.checkpoint_format import NotACheckpoint
    from models.oracle.loading import load_oracle
    from models.oracle.networks import TaxonomyMismatch

    name = "shadow" if shadow else "weights"
    var = f"ORACLE_{survey.name}_SHADOW_WEIGHTS" if shadow else f"ORACLE_{survey.name}_WEIGHTS"
    o = settings.oracle
    path = Path(o.shadow_weights if shadow else o.weights)
    if not path.is_file():
        return CheckResult(name, False, f"{var}={path}: no such file",
                           f"set {var} to an ORACLE checkpoint (.pth)"), None
    try:
        model = load_oracle(path, None if shadow else o.model_kind, taxonomy=survey.taxonomy)
    except TaxonomyMismatch as exc:
        return CheckResult(name, False, f"{var}={path} is not a model of the {survey.name} classes "
                                        f"({str(exc).split(': ', 1)[-1]})",
                           f"point {var} at a {survey.name} checkpoint", exc), None
    except NotACheckpoint as exc:
        return CheckResult(name, False, f"{var}={path} is not a PyTorch checkpoint ({exc.what})",
                           f"point {var} at an ORACLE {survey.name} checkpoint (.pth)", exc), None
    except ValueError as exc:  # ORACLE_MODEL_KIND is not a kind
        return CheckResult(name, False, f"ORACLE_MODEL_KIND={o.model_kind}: {exc}",
                           "unset ORACLE_MODEL_KIND (detected from the checkpoint) or give one of the kinds",
                           exc), None
    except Exception as exc:  # noqa: BLE001 - ModelLoadError, a corrupt or foreign file
        text = str(exc).replace("\n", " ")
        text = text if len(text) <= 240 else text[:237] + "..."
        return CheckResult(name, False, f"{var}={path}: not a usable ORACLE checkpoint ({text})",
                           f"point {var} at an ORACLE {survey.name} checkpoint, or set ORACLE_MODEL_KIND", exc), None
    also = f"; rows to oracle_{survey.name.lower()}_shadow_results.csv, never posted" if shadow else ""
    return CheckResult(name, True, f"{path}: ORACLE {model.kind}, {len(model.taxonomy.nodes)} taxonomy nodes "
                                   f"({survey.taxonomy.name}){also}"), model


def check_compile(settings, model) -> Optional[CheckResult]:
    """ORACLE_COMPILE=true: a C++ compiler that inductor can build with (a tiny compile,
    a few seconds; the image network itself is compiled when the flow starts). None
    when compile is off."""
    from models.oracle.loading import compile_problem

    o = settings.oracle
    if not o.compile:
        return None
    if model is not None and not model.needs_stamp:
        return CheckResult("compile", True, f"ORACLE_COMPILE=true: nothing to compile, ORACLE {model.kind} has "
                                            "no image network")
    if o.precision != "fp32" or o.device != "cpu":
        return None  # reported by check_numbers
    problem = compile_problem(o.precision, o.device)
    if problem:
        return CheckResult("compile", False, f"ORACLE_COMPILE=true: {problem}",
                           "install gcc and g++ (or set CXX to a C++ compiler), or unset ORACLE_COMPILE")
    return CheckResult("compile", True, "ORACLE_COMPILE=true: C++ compiler found; the image network is "
                                        "compiled when the flow starts")


def check_backend(settings) -> list[CheckResult]:
    """ORACLE_BACKEND=onnxruntime: its packages, fp32 on the CPU without torch.compile, a
    writable export cache (models/oracle/onnx_backend.py). Nothing for torch."""
    from models.oracle.onnx_backend import backend_problems, default_cache_dir

    o = settings.oracle
    backend = o.backend
    if backend == "torch":
        return []
    problems = backend_problems(backend, o.precision, o.compile, o.device)
    if problems:
        return [CheckResult("backend", False, detail, fix) for _, detail, fix in problems]
    cache = o.onnx_cache_dir or default_cache_dir()
    why = unwritable_reason(cache)
    if why:
        return [CheckResult("backend", False, f"ORACLE_ONNX_CACHE_DIR={cache}: {why}",
                            "set ORACLE_ONNX_CACHE_DIR to a writable directory")]
    return [CheckResult("backend", True, f"ONNX Runtime (CPU, fp32), exports cached in {cache}")]


class BackendFailure(ValueError):
    """The configured backend could not be made ready; `check` is its one line."""

    def __init__(self, check: CheckResult):
        super().__init__(f"{check.detail} -> {check.fix}")
        self.check = check


def backend_predict(settings, survey, models) -> Callable:
    """The configured backend's `predict` for `models` ((model, weights) pairs): torch's, or
    ONNX Runtime's, which exports (or finds in its cache) and checks each model here. Shared
    by the flow (`predict_or_exit`) and backfills; a failure is a `BackendFailure`."""
    from models.oracle.onnx_backend import make_predict

    failed = [c for c in check_backend(settings) if not c.ok]
    if failed:
        raise BackendFailure(failed[0])
    try:
        o = settings.oracle
        return make_predict(o.backend, models, survey.name, o.torch_threads, o.onnx_cache_dir)
    except Exception as exc:  # noqa: BLE001 - the exporter's and ONNX Runtime's errors are many
        text = str(exc).strip().splitlines()[0][:240] if str(exc).strip() else type(exc).__name__
        raise BackendFailure(CheckResult("backend", False, f"ORACLE_BACKEND={settings.oracle.backend}: {text}",
                                         "unset ORACLE_BACKEND (torch, the default, gives the same probabilities)",
                                         exc)) from exc


def predict_or_exit(settings, survey, models) -> Callable:
    """`backend_predict`; a failure is one line naming ORACLE_BACKEND, and exit status 2."""
    try:
        return backend_predict(settings, survey, models)
    except BackendFailure as exc:
        exit_on_failures([exc.check])


def check_input(settings) -> CheckResult:
    if settings.kafka is not None:
        k = settings.kafka
        return CheckResult("input", True, f"Kafka {','.join(k.brokers)} topic {k.topic}")
    sample_dir = settings.outputs.sample_dir
    sample = Path(sample_dir) / "messages.jsonl"
    if not sample.is_file():
        return CheckResult("input", False, f"ALERTFLOW_SAMPLE_DIR={sample_dir}: no messages.jsonl there "
                                           f"(and KAFKA_BROKERS is unset)",
                           "set KAFKA_BROKERS, or ALERTFLOW_SAMPLE_DIR to a sample directory")
    with sample.open() as f:
        n = sum(1 for line in f if line.strip())
    return CheckResult("input", True, f"bundled sample {sample_dir} ({n} messages; "
                                      f"set KAFKA_BROKERS to follow the live topic)")


def check_recovery(settings) -> CheckResult:
    """What a restart will do, and whether the recovery directory can be written."""
    if not settings.recovery.enabled:
        if settings.kafka is None:
            return CheckResult("recovery", True, "off (bundled replay)")
        return CheckResult("recovery", True, f"off: a restart replays the topic from its "
                                             f"{settings.kafka.starting_offset} (set ALERTFLOW_RECOVERY=true)")
    d = Path(settings.recovery.directory)
    why = unwritable_reason(d)
    if why:
        return CheckResult("recovery", False, f"ALERTFLOW_RECOVERY_DIR={d}: {why}",
                           "set ALERTFLOW_RECOVERY_DIR to a writable directory on a persistent disk")
    parts = len(list(d.glob("part-*.sqlite3"))) if d.is_dir() else 0
    if parts:
        return CheckResult("recovery", True, f"{d}: {parts} partition(s); a restart resumes from the last snapshot")
    return CheckResult("recovery", True, f"{d}: first start, {settings.recovery.partitions} partition(s) "
                                         f"will be created")


def check_numbers(settings) -> list[CheckResult]:
    """What this machine can do with settings that are each valid: a device it does not
    have, a precision or compilation the device or the other settings rule out. (Each
    value's own range is its field's type: operators/runtime/config.py refuses it when read.)"""
    from models.oracle.loading import device_problem, precision_problem

    o = settings.oracle
    out = []
    problem = device_problem(o.device)
    if problem:
        out.append(CheckResult("config", False, f"ORACLE_DEVICE={o.device}: {problem}",
                               "set ORACLE_DEVICE=cpu, or run where that device is"))
    problem = None if problem else precision_problem(o.precision, o.device)
    if problem:
        out.append(CheckResult("config", False, f"ORACLE_PRECISION={o.precision}: {problem}",
                               "set ORACLE_PRECISION=fp32 or bf16, or ORACLE_DEVICE=cpu"))
    if o.compile and not problem and o.precision != "fp32":
        out.append(CheckResult("config", False, f"ORACLE_COMPILE=true works with ORACLE_PRECISION=fp32 only, "
                                                f"not {o.precision}",
                               "unset ORACLE_COMPILE, or set ORACLE_PRECISION=fp32"))
    elif o.compile and not problem and o.device != "cpu":
        out.append(CheckResult("config", False, f"ORACLE_COMPILE=true works with ORACLE_DEVICE=cpu only, "
                                                f"not {o.device}",
                               "unset ORACLE_COMPILE, or set ORACLE_DEVICE=cpu"))
    return out


def check_cpu_precision(settings, model) -> Optional[CheckResult]:
    """bf16/int8 refused on a CPU where they run slower than fp32 (models/oracle/cpu_features.py);
    None when not asked for, not on the CPU, or the model has no image network to run in them."""
    from models.oracle.cpu_features import FIX, refusal_here

    o = settings.oracle
    if o.precision == "fp32" or o.device != "cpu" or (model is not None and not model.needs_stamp):
        return None
    if o.backend != "torch":
        return None  # ONNX Runtime runs fp32 only: check_backend says so
    why = refusal_here(o.precision)
    if why is None:
        return None
    return CheckResult("config", False, f"ORACLE_PRECISION={o.precision} would be slower than fp32 here: {why}",
                       f"{FIX}, or run on a CPU with AVX512-BF16/AMX for bf16, AVX2 for int8")


# ---------------------------------------------------------------- the one validation


def validate(settings, survey) -> tuple[list[CheckResult], Optional[object]]:
    """Every local check of an ORACLE flow's configuration, and the loaded model
    (None when the weights failed). Used by `check`."""
    checks, model, _ = checked_models(settings, survey)
    return checks, model


def checked_models(settings, survey) -> tuple[list[CheckResult], Optional[object], Optional[object]]:
    """`validate`, and the shadow model too (None when unset or failed): the flow keeps
    the models these checks loaded (dataflows/oracle_runtime.py) instead of loading them again."""
    checks = check_numbers(settings) + check_backend(settings)
    weights, model = check_weights(settings, survey)
    checks.append(weights)
    if not any(c.name in ("config", "backend") and c.detail.startswith("ORACLE_COMPILE") for c in checks):
        compiled = check_compile(settings, model)
        if compiled is not None:
            checks.append(compiled)
    shadow = None
    if settings.oracle.shadow_weights is not None:
        shadow_check, shadow = check_weights(settings, survey, shadow=True)
        checks.append(shadow_check)
    speed = check_cpu_precision(settings, model)
    if speed is not None:
        checks.append(speed)
    checks.append(check_input(settings))
    checks.append(check_directories("outputs", [("ALERTFLOW_RESULTS_DIR", settings.outputs.results_dir),
                                                ("ALERTFLOW_LOGS_DIR", settings.outputs.logs_dir)]))
    checks.append(check_recovery(settings))
    return checks, model, shadow


def validate_fink_vra(cfg) -> list[CheckResult]:
    """The Fink VRA flow's local checks (input files, schema, dust maps, outputs), for the flow and `check`."""
    out = []
    if cfg.uses_kafka:
        out.append(CheckResult("input", True, f"Kafka {','.join(cfg.kafka_brokers)} topic {cfg.topic}"))
    elif cfg.uses_files:
        from operators.vra.alert_files import expand_input

        try:
            out.append(CheckResult("input", True, f"FINK_VRA_INPUT={cfg.input_path}: "
                                                  f"{len(expand_input(cfg.input_path))} file(s)"))
        except ValueError as exc:
            out.append(CheckResult("input", False, str(exc), "set FINK_VRA_INPUT to Fink Avro or Parquet files"))
    else:
        files = sorted(Path(cfg.embedded_dir).glob(cfg.embedded_glob))
        out.append(CheckResult("input", bool(files), f"FINK_VRA_EMBEDDED_DIR={cfg.embedded_dir}: {len(files)} file(s) "
                                                     f"matching {cfg.embedded_glob}",
                               "set FINK_VRA_EMBEDDED_DIR / FINK_VRA_EMBEDDED_GLOB to Fink Avro alerts, "
                               "or FINK_VRA_KAFKA_BROKERS"))
    if cfg.schema_path is not None and not Path(cfg.schema_path).is_file():
        out.append(CheckResult("schema", False, f"FINK_VRA_SCHEMA_PATH={cfg.schema_path}: no such file",
                               "set FINK_VRA_SCHEMA_PATH to an Avro schema (.avsc), or unset it"))
    if cfg.sfd_dir is not None:
        out.append(CheckResult("sfd", Path(cfg.sfd_dir).is_dir(), f"FINK_VRA_SFD_DIR={cfg.sfd_dir}",
                               "set FINK_VRA_SFD_DIR to the directory of the SFD maps, or unset it"))
    out.append(check_directories("outputs", [("FINK_VRA_OUT_DIR", Path(cfg.out_dir)),
                                             ("FINK_VRA_DEADLETTERS", Path(cfg.deadletter_path).parent)]))
    return out


# ---------------------------------------------------------------- how a flow reports them


def _debug(env=os.environ) -> bool:
    return (env.get("ALERTFLOW_LOG_LEVEL") or "").strip().upper() == "DEBUG"


def exit_on_failures(checks: Iterable[CheckResult], stream=None) -> None:
    """Print one line per failed check and exit with status 2; nothing when all passed."""
    failed = [c for c in checks if not c.ok]
    if not failed:
        return
    stream = stream or sys.stderr
    for c in failed:
        if c.error is not None and _debug():
            traceback.print_exception(c.error, file=stream)
        print(c.error_line(), file=stream, flush=True)
    raise SystemExit(EXIT_CONFIG)


def read_or_exit(read: Callable[[], T], stream=None) -> T:
    """`read()` (a settings reader); a ValueError from it — every reader's way of saying
    a variable is wrong, naming it — becomes one line on stderr and exit status 2."""
    try:
        return read()
    except ValueError as exc:
        stream = stream or sys.stderr
        if _debug():
            traceback.print_exc(file=stream)
        text = str(exc).replace("\n", " ")
        fix = "" if " -> " in text or "python -m dataflows --help" in text else \
            " -> fix or unset that variable (python -m dataflows --help lists them all)"
        print(f"configuration error: {text}{fix}", file=stream, flush=True)
        raise SystemExit(EXIT_CONFIG) from None
