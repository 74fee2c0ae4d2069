"""ORACLE through ONNX Runtime (`ORACLE_BACKEND=onnxruntime`): the same networks, exported once.

A backend is the `predict(model, ts, lengths, static, stamps) -> probabilities`
callable that `operators/oracle/steps.py` `classify` is given: torch's is
`models.oracle.networks.predict_proba`; this module's (`OnnxRuntimePredict`) runs
each loaded model's ONNX export (models/oracle/export.py) on ONNX Runtime's CPU
provider and returns the probabilities the graph computes. The torch model stays
the source of the taxonomy and of which inputs are needed.

Exports are cached by the weights' sha256 (`cached_export`): a file named after
the network, the survey, the hash, the export version and the opset, in
`ORACLE_ONNX_CACHE_DIR` (default: alertflow/onnx in the user's cache directory).
New weights give a new name, so a file is never stale; it is written beside its
final name and renamed, so processes starting together may both export, never
read half a file. Every file is checked against torch on a small batch of mixed
lengths when it is loaded (`check_parity`): a wrong graph stops the flow before
its first batch instead of classifying with it.

Sessions: `ORACLE_TORCH_THREADS` intra-op threads, one inter-op thread, sequential
execution (bytewax workers are threads already; processes give more cores), as
the torch backend. fp32 on the CPU only: preflight refuses other precisions,
torch.compile and other devices with this backend (`backend_problems`).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

from models.oracle.loading import model_label, weights_sha256
from models.oracle.networks import LENGTH_BUCKETS, OracleModel, predict_proba

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime")
# Largest |probability difference| from torch that a loaded export may show: a guard against a
# wrong graph (those differ by 1e-2 and more), with room for another CPU's rounding; the
# tests hold the exports to 1e-5 (seen here: below 1e-6).
PARITY = 1e-4


def default_cache_dir(env=os.environ) -> Path:
    """`$XDG_CACHE_HOME/alertflow/onnx`, else `~/.cache/alertflow/onnx`."""
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "alertflow" / "onnx"


def cache_path(cache_dir: Path, model: OracleModel, survey: str, sha256: str) -> Path:
    from models.oracle.export import EXPORT_VERSION, OPSET

    return Path(cache_dir) / f"oracle-{model.kind}-{survey.lower()}-{sha256[:16]}-e{EXPORT_VERSION}-opset{OPSET}.onnx"


def cached_export(model: OracleModel, weights: Path, survey: str, cache_dir: Optional[Path] = None) -> Path:
    """The ONNX file of `model` (loaded from `weights`), exported now unless the cache has it."""
    from models.oracle.export import export_onnx

    sha256 = weights_sha256(weights)
    path = cache_path(cache_dir or default_cache_dir(), model, survey, sha256)
    if path.is_file():
        return path
    t0 = time.perf_counter()
    export_onnx(model, path, survey=survey.lower(), label=model_label(model, weights), sha256=sha256)
    log.info("exported ORACLE %s to ONNX in %.1f s: %s", model.kind, time.perf_counter() - t0, path)
    return path


def session(path: Path, threads: int = 1):
    """An ONNX Runtime session on the CPU provider: `threads` intra-op threads, sequential."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: its optimiser's notes are not the operator's business
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def feeds(model: OracleModel, ts, lengths, static=None, stamps=None) -> dict[str, np.ndarray]:
    """The graph's inputs (models/oracle/export.py `input_names`) from predict_proba's arguments."""
    out = {"ts": np.ascontiguousarray(ts, dtype=np.float32),
           "lengths": np.asarray(lengths).astype(np.int64, copy=False).reshape(-1)}
    if model.needs_static:
        out["static"] = np.ascontiguousarray(static, dtype=np.float32)
    if model.needs_stamp:
        out["stamps"] = np.ascontiguousarray(stamps, dtype=np.float32)
    return out


class OnnxRuntimePredict:
    """`predict` for `classify`: each model given at construction runs on its own session.

    ONNX Runtime's `run` may be called from several threads at once (bytewax workers)."""

    def __init__(self, sessions: dict[int, object], models: Iterable[OracleModel]):
        self._sessions = sessions
        self._models = list(models)  # kept alive: sessions are found by the model's id()

    def __call__(self, model: OracleModel, ts, lengths, static=None, stamps=None) -> np.ndarray:
        """Probabilities `[B, n_nodes]` (float64), one run per length group (`LENGTH_BUCKETS`, as
        torch): ONNX's GRU steps every row up to the run's longest series, so one long light
        curve in a batch of short ones would multiply their cost (5x on the bundled ZTF alerts)."""
        lengths = np.asarray(lengths).astype(np.int64, copy=False).reshape(-1)
        out = np.zeros((len(lengths), model.n_nodes))
        if len(lengths) == 0:
            return out
        session = self._sessions[id(model)]
        bucket = np.searchsorted(LENGTH_BUCKETS, lengths)  # torch.bucketize's groups
        for b in np.unique(bucket):
            rows = np.flatnonzero(bucket == b)
            part = [None if a is None else np.asarray(a)[rows] for a in (ts, lengths, static, stamps)]
            part[0] = part[0][:, :int(part[1].max())]
            out[rows] = session.run(["probabilities"], feeds(model, *part))[0]
        return out


def check_parity(model: OracleModel, run, tolerance: float = PARITY) -> float:
    """Largest |probability difference| between `run` (an ONNX session) and torch on a small
    batch of mixed lengths (and stamps, one all zero); ValueError above `tolerance`."""
    from models.oracle.export import example_inputs

    inputs = example_inputs(model, lengths=(5, 1, 3, 2), seed=7)
    if model.needs_stamp:
        inputs[-1][1] = 0.0  # the all-zero stamp torch computes once and reuses
    args = (inputs + [None, None])[:4]  # ts, lengths, static, stamps: static and stamps only where needed
    expected = predict_proba(model, *args)
    got = run.run(["probabilities"], feeds(model, *args))[0]
    worst = float(np.abs(got - expected).max())
    if not worst <= tolerance:
        raise ValueError(f"the ONNX export of ORACLE {model.kind} differs from torch by {worst:.2e} "
                         f"(more than {tolerance:g})")
    return worst


def onnxruntime_predict(models: Iterable[tuple[OracleModel, Path]], survey: str, threads: int = 1,
                        cache_dir: Optional[Path] = None) -> OnnxRuntimePredict:
    """The ONNX Runtime backend for `models` ((model, weights path) pairs, loaded fp32 on the
    CPU): export or find each in the cache, open a session, check it against torch."""
    models = list(models)
    sessions = {}
    for model, weights in models:
        path = cached_export(model, Path(weights), survey, cache_dir)
        sessions[id(model)] = session(path, threads)
        worst = check_parity(model, sessions[id(model)])
        log.info("ORACLE %s on ONNX Runtime %s (CPU, %d thread(s)): %s, max |dp| vs torch %.1e", model.kind,
                 _ort_version(), threads, path.name, worst)
    return OnnxRuntimePredict(sessions, [m for m, _ in models])


def make_predict(backend: str, models: Iterable[tuple[OracleModel, Path]], survey: str, threads: int = 1,
                 cache_dir: Optional[Path] = None) -> Callable:
    """The `predict` of `backend` ("torch" or "onnxruntime") for `models`."""
    if backend == "torch":
        return predict_proba
    if backend == "onnxruntime":
        return onnxruntime_predict(models, survey, threads, cache_dir)
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def _ort_version() -> str:
    import onnxruntime as ort

    return ort.__version__


def missing_packages() -> list[str]:
    """The packages the ONNX Runtime backend needs that do not import here."""
    missing = []
    for name in ("onnxruntime", "onnx"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    return missing


def backend_problems(backend: str, precision: str = "fp32", compile: bool = False,
                     device: str = "cpu") -> list[tuple[str, str, str]]:
    """(variable, what is wrong, the fix) for each setting the ONNX Runtime backend cannot honour."""
    if backend != "onnxruntime":
        return []
    out = []
    missing = missing_packages()
    if missing:
        out.append(("ORACLE_BACKEND", f"ORACLE_BACKEND=onnxruntime needs {' and '.join(missing)}, not installed",
                    "pip install 'alertflow[onnx]', or unset ORACLE_BACKEND (torch)"))
    if precision != "fp32":
        out.append(("ORACLE_PRECISION", f"ORACLE_PRECISION={precision}: ORACLE_BACKEND=onnxruntime runs fp32 only",
                    "unset ORACLE_PRECISION, or unset ORACLE_BACKEND (torch runs bf16 and int8)"))
    if compile:
        out.append(("ORACLE_COMPILE", "ORACLE_COMPILE=true is torch.compile, which ORACLE_BACKEND=onnxruntime "
                                      "does not use", "unset ORACLE_COMPILE, or unset ORACLE_BACKEND"))
    if device != "cpu":
        out.append(("ORACLE_DEVICE", f"ORACLE_DEVICE={device}: ORACLE_BACKEND=onnxruntime runs on the CPU "
                                     "provider only", "set ORACLE_DEVICE=cpu, or unset ORACLE_BACKEND"))
    return out
