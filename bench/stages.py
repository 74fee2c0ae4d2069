"""Per-stage wall and CPU time of the real ORACLE flow, measured inside the flow process.

The flow's own `alertflow_stage_seconds` covers enrich, inputs and model in wall
time only: no parse, no outputs, and no CPU split, so the framework's share
(process CPU minus the stages' CPU: bytewax operators, exchange between workers,
batching, logging) cannot be told apart from waiting on a shared machine. So the
benchmark's flow process times the stage functions themselves: `instrument(stats)`
wraps them before `build_flow` binds them, recording wall time (`perf_counter`) and
the calling thread's CPU time (`thread_time`) per stage. The wrappers only time:
arguments and results pass through unchanged. The source is the benchmark's own
(`bench/synthetic.py`, stage `source`, timed there).

Every target is looked up by name and a missing one is an error (a renamed step must
break the benchmark loudly, not zero a stage), and `check_against_flow` compares the
wrapped enrich / inputs / model times with the flow's own metric.
"""

from __future__ import annotations

import functools
import time

from bench.measure import Stats

# stage -> (module, attribute) of the function timed; `count` says how many messages a call covers.
TARGETS = {
    "parse": ("dataflows.oracle", "parse_message"),  # looked up by build_flow when it builds the step
    "enrich": ("operators.oracle.steps", "enrich"),  # bound by build_flow (partial): wrap before it runs
    "inputs": ("operators.oracle.steps", "build_inputs"),
    "model": ("operators.oracle.steps", "classify"),
}
OUTPUTS = ("operators.io.files", "_AppendPartition", "write_batch")  # results CSV and dead letters
ROWS = ("dataflows.oracle", "csv_rows")  # the CSV rows, encoded where classified: part of "outputs"


def _timed(stats: Stats, stage: str, fn, count):
    perf, cpu = time.perf_counter, time.thread_time

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        w0, c0 = perf(), cpu()
        out = fn(*args, **kwargs)
        stats.add(stage, perf() - w0, count(args, out), cpu() - c0)
        return out

    wrapper.__bench_timed__ = True
    return wrapper


def instrument(stats: Stats) -> None:
    """Wrap the flow's stage functions in this process (call before `build_flow`)."""
    import importlib

    counts = {"parse": lambda args, out: 1, "model": lambda args, out: len(getattr(out, "items", ()))}
    for stage, (module, name) in TARGETS.items():
        mod = importlib.import_module(module)
        fn = getattr(mod, name, None)
        if fn is None:
            raise RuntimeError(f"bench/stages.py: {module}.{name} is gone: point TARGETS[{stage!r}] at the "
                               "function the flow now uses for this stage")
        if not getattr(fn, "__bench_timed__", False):
            setattr(mod, name, _timed(stats, stage, fn, counts.get(stage, lambda args, out: 0)))
    module, name = ROWS
    mod = importlib.import_module(module)
    fn = getattr(mod, name, None)
    if fn is None:
        raise RuntimeError(f"bench/stages.py: {module}.{name} is gone: point ROWS at the function that encodes CSV rows")
    if not getattr(fn, "__bench_timed__", False):
        setattr(mod, name, _timed(stats, "outputs", fn, lambda args, out: 0))
    module, cls_name, method = OUTPUTS
    cls = getattr(importlib.import_module(module), cls_name, None)
    write = getattr(cls, method, None)
    if write is None:
        raise RuntimeError(f"bench/stages.py: {module}.{cls_name}.{method} is gone: point OUTPUTS at the "
                           "results CSV sink's write")
    if not getattr(write, "__bench_timed__", False):
        setattr(cls, method, _timed(stats, "outputs", write, lambda args, out: len(args[1])))

def check_against_flow(seconds: dict, flow_seconds: dict, tolerance: float = 0.1) -> dict:
    """The wrapped enrich / inputs / model wall times against the flow's own
    `alertflow_stage_seconds`: relative difference per stage (they time the same calls,
    so more than `tolerance` means a wrapper no longer sits where the flow's timer is)."""
    out = {}
    for stage in ("enrich", "inputs", "model"):
        ours, theirs = seconds.get(stage, 0.0), flow_seconds.get(stage, 0.0)
        if theirs > 0:
            out[stage] = round((ours - theirs) / theirs, 3)
    out["ok"] = all(abs(v) <= tolerance for k, v in out.items() if k != "ok") and len(out) == 3
    return out
