"""Server modes of the flow benchmark: the unmodified `dataflows.ztf` on tansu (Kafka protocol) and
nx-27017 (MongoDB protocol), the documents and messages they are fed, throughput then paced latency."""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path
from typing import Optional

from bench.children import CSV_NAME, PY, Child, base_env, free_port
from bench.measure import CpuWindow, count_rows, percentiles, read_rows, scrape, stages_from_metrics, steady_rate
from bench.synthetic import Workload
from operators.runtime.progress import Progress

PARSED = ("bytewax_item_inp_count_total", "oracle_ztf.parse.flat_map_batch")


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
