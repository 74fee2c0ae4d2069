"""Embedded modes of the flow benchmark: the real ORACLE flow over the synthetic workload, no servers.

- `embedded_flow(...)` runs inside the flow process: the real ORACLE flow
  (`dataflows.oracle.build_flow`) over `SynthSource` + `SynthStore`, instrumented:
  first/last item times, RSS samples and peak RSS are written to `stats-PID.json`
  when the process exits, with the wall and CPU time per stage (bench/stages.py
  times the stage functions) and the flow's own `alertflow_stage_seconds` as their
  cross-check. Run with
  `python -m bytewax.run "bench.embedded:embedded_flow(...)"`.
- `run_embedded(...)` (1 process or a cluster) and `run_memory(...)` (a long replay,
  RSS sampled) start it from the driver and read its figures.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Optional

from bench.children import CSV_NAME, PY, Child, base_env, free_port
from bench.measure import STATS, Stats, count_rows, flow_metrics, machine_busy, proc_status, read_rows, steady_rate
from bench.stages import check_against_flow, instrument
from bench.synthetic import SynthStore, Workload, _source_classes
from operators.runtime.progress import Progress


def _sampler(stats: Stats, out_dir: Path, every_s: float) -> None:
    """Every `every_s`: one RSS sample, and a status file the driver reads for its progress bar."""
    status = out_dir / f"status-{os.getpid()}.json"
    while True:
        with stats.lock:
            n_in = stats.counts.get("source", 0)
            rows = stats.counts.get("outputs", 0)
        rss = proc_status().get("VmRSS", 0)
        stats.rss.append((time.time(), n_in, rss))
        tmp = status.with_suffix(".tmp")
        tmp.write_text(json.dumps({"in": n_in, "rows": rows, "rss": rss}))
        tmp.replace(status)
        time.sleep(every_s)


def _time_gc(stats: Stats) -> None:
    """The garbage collector's CPU time and collections per generation from the first message on, into `stats.gc`
    (it runs inside whichever step allocates, so it is part of that stage's time or the framework's)."""
    import gc

    started: dict = {}

    def callback(phase, info):
        if phase == "start":
            started[threading.get_ident()] = time.thread_time()
        else:
            c0 = started.pop(threading.get_ident(), None)
            if c0 is not None and stats.first_in is not None:  # from the first message on, as the CPU split
                gen = str(info.get("generation"))
                with stats.lock:
                    stats.gc["cpu_s"] = stats.gc.get("cpu_s", 0.0) + time.thread_time() - c0
                    stats.gc[f"gen{gen}"] = stats.gc.get(f"gen{gen}", 0) + 1

    gc.callbacks.append(callback)


def embedded_flow(n: int, out_dir: str, parts: int = 1, sample_every_s: float = 1.0, results: bool = False):
    """The ORACLE ZTF flow over `n` synthesized messages in `parts` partitions, instrumented.
    Writes `out_dir/stats-PID.json` at exit; results under `out_dir/results`. With `results`,
    KAFKA_BROKERS and MONGODB_URI stay: the results topic and collection are written there
    (the input and the store are still the synthesized ones)."""
    out = Path(out_dir)
    os.environ.setdefault("ALERTFLOW_RESULTS_DIR", str(out / "results"))
    os.environ.setdefault("ALERTFLOW_LOGS_DIR", str(out / "logs"))
    for var in () if results else ("KAFKA_BROKERS", "MONGODB_URI", "BOOM_DATABASE__HOST"):
        os.environ.pop(var, None)
    from dataflows.oracle import build_flow
    from operators.oracle.surveys import ZTF

    instrument(STATS)  # before build_flow: it binds the stage functions
    _time_gc(STATS)
    workload = Workload()
    STATS.rss.append((time.time(), 0, proc_status().get("VmRSS", 0)))

    def write_stats():
        flow_metrics(STATS)
        (out / f"stats-{os.getpid()}.json").write_text(json.dumps(STATS.as_dict()))

    atexit.register(write_stats)
    threading.Thread(target=_sampler, args=(STATS, out, sample_every_s), daemon=True).start()
    source = _source_classes()(workload, n, parts)
    return build_flow(ZTF, source=source, store=SynthStore(workload, ZTF.collections))


# ---------------------------------------------------------------- embedded runs


def run_embedded(label: str, n: int, work: Path, processes: int = 1, sample_every_s: float = 1.0,
                 timeout_s: float = 3600.0, shards: Optional[int] = None, env: Optional[dict] = None,
                 results: bool = False) -> dict:
    """The real flow over `n` synthesized messages (bench.embedded.embedded_flow), in 1 or more processes;
    `results`: KAFKA_BROKERS and MONGODB_URI in `env` receive the results topic and collection (issue 25)."""
    out = work / label
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    parts = max(1, processes)
    flow = f"bench.embedded:embedded_flow({n}, {str(out)!r}, {parts}, {sample_every_s}, {results})"
    env = base_env(ALERTFLOW_RESULTS_DIR=out / "results", ALERTFLOW_LOGS_DIR=out / "logs",
                   **({"ORACLE_SHARDS": shards} if shards else {}), **(env or {}))
    if processes == 1:
        children = [Child([PY, "-m", "bytewax.run", flow], env, out / "flow.log", label)]
    else:
        addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
        children = [Child([PY, "-m", "bytewax.run", flow, "-i", str(i), "-a", addresses], env,
                          out / f"flow{i}.log", f"{label}[{i}]") for i in range(processes)]
    t_start = time.monotonic()
    machine0 = None
    with Progress(n, label) as bar:
        done = 0
        while any(c.alive() for c in children):
            if time.monotonic() - t_start > timeout_s:
                for c in children:
                    c.stop()
                raise RuntimeError(f"{label}: timed out after {timeout_s:.0f} s")
            n_in = 0
            for c in children:
                c.sample_peak()
                try:
                    n_in += json.loads((out / f"status-{c.pid}.json").read_text())["in"]
                except (OSError, ValueError, KeyError):
                    pass
            if n_in > done:
                if machine0 is None:
                    machine0 = (time.time(), machine_busy()[0])
                bar.advance(n_in - done)
                done = n_in
            time.sleep(0.5)
    machine1 = (time.time(), machine_busy()[0])
    codes = [c.proc.returncode for c in children]
    if any(codes):
        raise RuntimeError(f"{label}: flow exited with {codes}:\n" + "\n".join(c.tail() for c in children))
    stats = [json.loads(p.read_text()) for p in sorted(out.glob("stats-*.json"))]
    if len(stats) != processes:
        raise RuntimeError(f"{label}: {len(stats)} stats files for {processes} processes")
    seconds: dict[str, float] = {}
    cpu_stage: dict[str, float] = {}
    flow_seconds: dict[str, float] = {}
    for s in stats:
        for total, part in ((seconds, s["seconds"]), (cpu_stage, s.get("cpu_seconds", {})),
                            (flow_seconds, s.get("flow_seconds", {}))):
            for k, v in part.items():
                total[k] = total.get(k, 0.0) + v
    process_cpu = sum(s["cpu_end"] - s["cpu_first_in"] for s in stats if s.get("cpu_first_in") is not None)
    csv_path = out / "results" / CSV_NAME
    result = {"label": label, "processes": processes, "workers": processes, "messages": n,
              "shards": shards,
              "stage_seconds": seconds, "stage_cpu_seconds": cpu_stage, "process_cpu_s": process_cpu,
              "flow_stage_seconds": flow_seconds, "stage_check": check_against_flow(seconds, flow_seconds),
              "cpu_us_per_msg": 1e6 * process_cpu / n,
              "process_cpu_each_s": [s["cpu_end"] - s["cpu_first_in"] for s in stats if s.get("cpu_first_in") is not None],
              "classified_each": [s["counts"].get("classified", 0) for s in stats],
              "stage_cpu_each_s": [s.get("cpu_seconds", {}) for s in stats],  # where a busier process spends it
              "gc_each": [s.get("gc", {}) for s in stats],
              "model_cpu_each_s": [s.get("cpu_seconds", {}).get("model", 0.0) for s in stats
                                   if s.get("cpu_first_in") is not None],
              "classified_each_timed": [s["counts"].get("classified", 0) for s in stats
                                        if s.get("cpu_first_in") is not None],
              "peak_rss_mb": [round(s.get("vmhwm", 0) / 2**20, 1) for s in stats],
              "process_wall_s": [s["last_out"] - s["first_in"] if s.get("last_out") and s.get("first_in") else None
                                 for s in stats],
              "rss_samples": [s["rss"] for s in stats]}
    # CPU from the first message on: each process's own (os.times at its first message and at exit),
    # and the machine's over the same time (the others = machine − ours).
    cores = {f"{label}[{k}]": (s["cpu_end"] - s["cpu_first_in"]) / (s["end"] - s["first_in"])
             for k, s in enumerate(stats) if s.get("cpu_first_in") is not None and s["end"] > s["first_in"]}
    result["cpu"] = {"cores": cores}
    if machine0 and machine1[0] - machine0[0] > 1.0:
        ours = sum(s["cpu_end"] - s["cpu_first_in"] for s in stats if s.get("cpu_first_in") is not None)
        wall = machine1[0] - machine0[0]
        result["cpu"].update(machine_cores=(machine1[1] - machine0[1]) / wall,
                             others_cores=max(0.0, machine1[1] - machine0[1] - ours) / wall)
    if n <= 200_000:
        rows = read_rows(csv_path)
        rate, window = steady_rate(list(rows.values()))
        first_in = min(s["first_in"] for s in stats if s.get("first_in"))
        last_out = max(s["last_out"] for s in stats if s.get("last_out"))
        result.update(rows=len(rows), window_s=last_out - first_in, msgs_per_s=n / (last_out - first_in),
                      rows_per_s=len(rows) / (last_out - first_in), steady_rows_per_s=rate, steady_window_s=window)
    else:
        first_in, last_out = stats[0].get("first_in"), stats[0].get("last_out")
        result["rows"] = count_rows(csv_path, {})
        if first_in and last_out:
            result.update(window_s=last_out - first_in, msgs_per_s=n / (last_out - first_in),
                          rows_per_s=result["rows"] / (last_out - first_in))
    return result


# ---------------------------------------------------------------- memory


def memory_points(samples: list, n: int) -> list[dict]:
    """RSS at the start, at a few fractions of the run and at the end."""
    samples = sorted(samples, key=lambda s: s[0])
    if not samples:
        return []
    points = [samples[0]]
    for frac in (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9):
        target = frac * n
        after = [s for s in samples if s[1] >= target]
        if after:
            points.append(after[0])
    points.append(samples[-1])
    seen, out = set(), []
    for t, n_in, rss in points:
        if (t, n_in) in seen:
            continue
        seen.add((t, n_in))
        out.append({"messages_in": n_in, "rss_mb": round(rss / 2**20, 1)})
    return out


def run_memory(n: int, work: Path, timeout_s: float) -> dict:
    every = max(1.0, min(5.0, n / 2000 / 100))
    r = run_embedded("memory", n, work, 1, sample_every_s=every, timeout_s=timeout_s)
    samples = sorted(r.pop("rss_samples")[0], key=lambda s: s[0])
    points = memory_points(samples, n)
    mb = 2**20

    def median_rss(lo: float, hi: float) -> float:
        v = sorted(s[2] for s in samples if lo * n <= s[1] <= hi * n)
        return v[len(v) // 2] / mb if v else float("nan")

    # Flat = the median RSS of the last quarter of the run vs that of the second quarter
    # (after the warm-up: for the default 1M, past the CSV sink's 200,000-candid dedup
    # window), and the least-squares slope over the last 75%.
    q2, q4 = median_rss(0.25, 0.5), median_rss(0.75, 1.0)
    late = [(s[1], s[2] / mb) for s in samples if s[1] >= 0.25 * n]
    slope = None
    if len(late) >= 3:
        mx = sum(x for x, _ in late) / len(late)
        my = sum(y for _, y in late) / len(late)
        var = sum((x - mx) ** 2 for x, _ in late)
        slope = 1e5 * sum((x - mx) * (y - my) for x, y in late) / var if var else None
    step = max(1, len(samples) // 120)
    r.update(points=points, rss_q2_mb=round(q2, 1), rss_q4_mb=round(q4, 1), growth_after_warmup_mb=round(q4 - q2, 1),
             growth_per_100k_mb=round(slope, 2) if slope is not None else None,
             rss_start_mb=points[0]["rss_mb"] if points else None, rss_end_mb=points[-1]["rss_mb"] if points else None,
             rss_trace=[(s[1], round(s[2] / mb, 1)) for s in samples[::step]])
    return r
