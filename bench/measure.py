"""Timing, CPU and memory sampling, and results reading for the flow benchmark (`bench/bench_flow.py`).

- inside a flow process: `proc_status` (RSS and its peak), `Stats`/`STATS` (what the
  instrumented source and sampler record) and `flow_metrics` (the flow's own
  `alertflow_stage_seconds`, copied at exit);
- in the driver: CPU of processes and of the machine (`CpuWindow`), rows and
  `processed_at` of a results CSV, steady rate, percentiles, the bytewax API
  `/metrics` page, and `Calibration` (how fast the shared host was when a mode ran).
"""

from __future__ import annotations

import csv
import os
import re
import resource
import sys
import threading
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import psutil

if TYPE_CHECKING:
    from bench.synthetic import Workload


# ---------------------------------------------------------------- the CPU


def cpu_line() -> str:
    """The CPU's instruction-set features, printed beside every figure of every benchmark:
    speed depends on them (bf16 without native support runs ~10x slower than fp32)."""
    from models.oracle.cpu_features import describe, read_cpu

    return describe(read_cpu())


# ---------------------------------------------------------------- process memory


def proc_status(pid: Optional[int] = None) -> dict[str, int]:
    """`VmRSS` (now) and `VmHWM` (peak) of a process in bytes; {} when it is gone.

    RSS from psutil. The peak of this process is the kernel's high-water mark of its
    address space (`VmHWM` in /proc/self/status); not `getrusage`'s `ru_maxrss`,
    which Linux carries over fork + exec, so a flow started by the benchmark's
    driver would report the driver's peak when that is larger. psutil has no peak
    for another process: there it is its RSS now, and callers keep the largest they
    sample."""
    import psutil

    try:
        rss = int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return {}
    if pid is None or pid == os.getpid():
        return {"VmRSS": rss, "VmHWM": max(_own_peak(), rss)}
    return {"VmRSS": rss, "VmHWM": rss}


def _own_peak() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # no /proc: not Linux
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


# ---------------------------------------------------------------- small helpers


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from psutil; NaN when it is gone."""
    try:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    except psutil.Error:
        return float("nan")


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot (psutil; idle and iowait are not busy)."""
    t = psutil.cpu_times()._asdict()
    total = sum(v for k, v in t.items() if not k.startswith("guest"))  # guest time is inside user already
    idle = t["idle"] + t.get("iowait", 0.0)
    return total - idle, total


def loadavg() -> float:
    return os.getloadavg()[0]


class CpuWindow:
    """CPU used by given processes and by the whole machine over a window."""

    def __init__(self, pids: dict[str, int]):
        self.pids = dict(pids)
        self.start()

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.cpu0 = {k: cpu_seconds(p) for k, p in self.pids.items()}
        self.machine0 = machine_busy()[0]

    def stop(self) -> dict:
        wall = time.monotonic() - self.t0
        used = {k: cpu_seconds(p) - self.cpu0[k] for k, p in self.pids.items()}
        machine = machine_busy()[0] - self.machine0
        ours = sum(v for v in used.values() if v == v)
        return {"wall_s": wall, "cores": {k: v / wall for k, v in used.items()} if wall > 0 else {},
                "machine_cores": machine / wall if wall > 0 else float("nan"),
                "others_cores": max(0.0, machine - ours) / wall if wall > 0 else float("nan")}

def count_rows(path: Path, state: dict) -> int:
    """Data rows in a CSV that only grows (newlines counted incrementally)."""
    if not path.exists():
        return 0
    with path.open("rb") as f:
        f.seek(state.get("offset", 0))
        chunk = f.read()
    state["offset"] = state.get("offset", 0) + len(chunk)
    state["lines"] = state.get("lines", 0) + chunk.count(b"\n")
    return max(0, state["lines"] - 1)


def read_rows(path: Path) -> dict[int, float]:
    """candid -> processed_at (epoch seconds) of a results CSV."""
    out = {}
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        ci, ti = header.index("candid"), header.index("processed_at")
        for row in reader:
            if len(row) > ti and row[ci].isdigit():
                out[int(row[ci])] = datetime.fromisoformat(row[ti]).timestamp()
    return out


def steady_rate(times: list[float], lo: float = 0.1, hi: float = 0.9) -> tuple[float, float]:
    """(rows/s, seconds) of the rows written between the 10% and the 90% row (by time):
    the steady state, without the first batches' fill nor the last ones' timeout.
    NaN when that window holds fewer than 4 distinct write times (small runs)."""
    if len(times) < 10:
        return float("nan"), 0.0
    times = sorted(times)
    t0 = times[int(lo * (len(times) - 1))]
    t1 = times[-1 - int((1 - hi) * (len(times) - 1))]
    inside = [t for t in times if t0 < t <= t1]
    if t1 <= t0 or len(set(inside)) < 4:
        return float("nan"), 0.0
    return len(inside) / (t1 - t0), t1 - t0


def percentiles(values: list[float], ps=(50, 99)) -> dict[str, float]:
    if not values:
        return {f"p{p}": float("nan") for p in ps}
    v = sorted(values)
    return {f"p{p}": v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))] for p in ps}


def scrape(port: int) -> dict[tuple[str, str], float]:
    """Sums from a bytewax API /metrics page: (metric, step_id or stage) -> value."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:]+)\{(.*)\} ([0-9.eE+-]+|NaN)$", line)
        if not m or not m.group(1).endswith(("_sum", "_total", "_count")):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        key = (m.group(1), labels.get("step_id") or labels.get("stage") or "")
        out[key] = out.get(key, 0.0) + float(m.group(3))
    return out


def stages_from_metrics(metrics: list[dict]) -> dict[str, float]:
    """Per-stage seconds (summed over processes) from scraped bytewax + alertflow metrics."""
    total: dict[tuple[str, str], float] = {}
    for m in metrics:
        for k, v in m.items():
            total[k] = total.get(k, 0.0) + v

    def get(metric: str, key: str) -> float:
        return sum(v for (name, k), v in total.items() if name == metric and k.startswith(key))

    fmb = "bytewax_flat_map_batch_duration_seconds_sum"
    return {
        "source": get("bytewax_inp_part_next_batch_duration_seconds_sum", "oracle_ztf.kafka"),
        "parse": get(fmb, "oracle_ztf.parse."),
        "enrich": get("alertflow_stage_seconds_sum", "enrich"),
        "inputs": get("alertflow_stage_seconds_sum", "inputs"),
        "model": get("alertflow_stage_seconds_sum", "model"),
        "outputs": get("bytewax_out_part_write_batch_duration_seconds_sum", "oracle_ztf.csv")
        + get("bytewax_out_part_write_batch_duration_seconds_sum", "oracle_ztf.dead_letters"),
    }

# ---------------------------------------------------------------- instrumentation (inside a flow process)


class Stats:
    """Per-stage seconds, item counts, first/last item times, RSS samples of this process."""

    def __init__(self):
        self.lock = threading.Lock()
        self.seconds: dict[str, float] = {}  # wall time per stage (bench/stages.py)
        self.flow_seconds: dict[str, float] = {}  # the flow's own alertflow_stage_seconds (wall)
        self.cpu_seconds: dict[str, float] = {}  # CPU time of the thread per stage
        self.counts: dict[str, int] = {}
        self.first_in: Optional[float] = None  # time.time() of the first message handed to the flow
        self.last_out: Optional[float] = None  # time.time() of the last CSV write
        self.rss: list[tuple[float, int, int]] = []  # (time, messages in, VmRSS)
        self.cpu_first_in: Optional[float] = None  # process CPU seconds at first_in
        self.gc: dict = {}  # the garbage collector's CPU seconds and collections (bench/embedded.py)

    @staticmethod
    def cpu() -> float:
        t = os.times()
        return t.user + t.system

    def add(self, stage: str, seconds: float, n: int = 0, cpu: float = 0.0) -> None:
        with self.lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds
            self.cpu_seconds[stage] = self.cpu_seconds.get(stage, 0.0) + cpu
            self.counts[stage] = self.counts.get(stage, 0) + n

    def as_dict(self) -> dict:
        return {"pid": os.getpid(), "seconds": self.seconds, "cpu_seconds": self.cpu_seconds, "counts": self.counts,
                "flow_seconds": self.flow_seconds, "gc": self.gc,
                "first_in": self.first_in, "last_out": self.last_out, "rss": self.rss,
                "cpu_first_in": self.cpu_first_in, "cpu_end": self.cpu(), "end": time.time(),
                **{k.lower(): v for k, v in proc_status().items()}}


STATS = Stats()


def flow_metrics(stats: Stats) -> None:
    """Copy the flow's own metrics into `stats` (called at exit): `alertflow_stage_seconds` sums per stage (enrich, inputs,
    model; into `flow_seconds`, the cross-check of bench/stages.py's timers), the
    classified and written counts, and the time of the last row (the results CSV's
    modification time)."""
    from prometheus_client import REGISTRY

    for metric in REGISTRY.collect():
        for sample in metric.samples:
            if sample.name == "alertflow_stage_seconds_sum":  # wall time only: no per-stage CPU split
                stage = sample.labels.get("stage", "?")
                stats.flow_seconds[stage] = stats.flow_seconds.get(stage, 0.0) + sample.value
            elif sample.name == "alertflow_classified_total":
                stats.counts["classified"] = stats.counts.get("classified", 0) + int(sample.value)
            elif sample.name == "alertflow_results_written_total":
                stats.counts["written"] = stats.counts.get("written", 0) + int(sample.value)
    csv_path = Path(os.environ["ALERTFLOW_RESULTS_DIR"]) / "oracle_ztf_results.csv"
    if csv_path.exists():
        stats.last_out = csv_path.stat().st_mtime


# ---------------------------------------------------------------- host speed


class Calibration:
    """A fixed piece of the flow's own work (decode 100 messages, build 100 inputs, one
    forward pass of 100), timed before each mode. The machine is shared with other
    tenants, some invisible from inside (host contention shows as our own CPU time
    running slower), so this says how fast the host was when a mode ran."""

    def __init__(self, workload: Workload):
        import numpy as np
        import torch

        from models.oracle.loading import load_oracle
        from models.oracle.networks import predict_proba
        from operators.oracle.messages import decode_avro
        from operators.oracle.steps import pad
        from operators.oracle.surveys import ZTF
        from operators.oracle.ztf_inputs import ztf_inputs
        from bench.synthetic import SynthStore

        torch.set_num_threads(1)
        self.model = load_oracle(ZTF.weights)
        self.messages = [workload.message(i) for i in range(100)]
        docs = SynthStore(workload, ZTF.collections).fetch([workload.candid(i) for i in range(100)],
                                                            list(workload.aux_docs), False)
        self.pairs = [(docs.alerts[workload.candid(i)], docs.aux[docs.alerts[workload.candid(i)]["objectId"]])
                      for i in range(100)]
        self._np, self._decode, self._inputs, self._pad, self._predict = (np, decode_avro, ztf_inputs, pad,
                                                                         predict_proba)

    def run(self) -> float:
        """Milliseconds for the fixed work (best of 3)."""
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for m in self.messages:
                self._decode(m)
            inputs = [self._inputs(a, x) for a, x in self.pairs]
            ts, lengths = self._pad(inputs)
            self._predict(self.model, ts, lengths, self._np.stack([x.static for x in inputs]))
            best = min(best, time.perf_counter() - t0)
        return 1e3 * best
