"""Soak: the ZTF flow following a Kafka topic for N messages with recovery on; does anything grow?

    python bench/soak.py --n 100000              # a short run (~10 min here); the default N is 2,000,000
    python bench/soak.py --n 2000000 --every 50000
    python bench/soak.py --n 300000 --every 25000 --downstreams slow   # Fritz at 2 s/request, Slack down

The topic (tansu, Kafka protocol, memory storage, `--partitions` partitions) is fed by a
publisher thread with messages synthesized from the bundled real alerts (bench/synthetic.py,
unique candids, ~90% passing the filter; every `--full-every`-th whole, ~41 kB, the others
slim, ~1.8 kB: no photometry, empty cutouts — the flow reads the light curve from the store
either way), kept at most `--lag-max` messages ahead of the flow. The flow is the real `dataflows.ztf` (`python -m bytewax.run`, Kafka
input, recovery on by default, its snapshot interval), enriched from the embedded-style
`SynthStore` so that MongoDB is not the bound. Every `--every` messages read it samples:
the flow's RSS; the recovery directory's bytes; the results CSV's, dead letters' and log
files' bytes; the size of every bounded structure (operators/runtime/bounds.py: the dedup
windows of the CSV and the dead-letter file, the open batches, and whatever sinks
register); the consumer lag (published − read). Targets (issue 28): RSS flat after warm-up
(median of the last quarter ≤ median of the second quarter + 10 MB); the recovery
directory bounded (its largest size ≤ 3 × the open batches' bound × a message's bytes + 4 MB
of WAL per partition, whatever N: bytewax deletes every snapshot older than the last
committed epoch, src/recovery.rs `commit`, and SQLite reuses the freed pages); every
structure at or under its bound at every sample. The report states each bound and where it
is set (`bounds.track(..., where=)`).

`--downstreams slow` (issue 28 item 3) adds the test fakes of tests/fakes.py: SkyPortal
answering every request in 2 s (`FakeSkyPortal.delay`; its rules otherwise: 404 on POST for
the objects it does not know, one annotation per origin) and Slack down (503 to everything,
the whole run), and points the flow at them (FRITZ_*, POST_TO_SLACK, SLACK_*). The alerts then
belong to `--objects` synthetic objects (200,000 by default; Fritz knows 9 in 10 of them), so
the Fritz queue and caches see many objects, not the sample's 36: the Slack queue, the Fritz
queue and the Fritz context reads fill to their bounds and must stay there while RSS stays flat.
JSON and PNG go to `--out` (results/bench/ by default).

The broker keeps every message in memory (tansu's memory storage has no retention, and
answers no DeleteRecords): N × the mean message must fit in RAM beside the flow, so the run
refuses an N over `--broker-gb` (default 8 GB: ~3 M messages at the default `--full-every 50`,
~200,000 whole ones with `--full-every 1`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.children import CSV_NAME, PY, Child, base_env  # noqa: E402
from bench.downstreams import FRITZ_DELAY_S, Downstreams, said  # noqa: E402
from bench.measure import count_rows, proc_status  # noqa: E402
from bench.soak_chart import chart  # noqa: E402

STATUS = "soak-status.json"
MESSAGE_BYTES = 42_500  # a whole synthesized message (bench/synthetic.py): the most an open-batch alert carries


# ---------------------------------------------------------------- inside the flow process


def _sample_forever(out: Path, every_s: float) -> None:
    from prometheus_client import REGISTRY

    from operators.runtime import bounds

    status = out / STATUS
    while True:
        n_in = REGISTRY.get_sample_value("alertflow_messages_total", {"survey": "ZTF", "flow": "oracle_ztf"}) or 0
        data = {"in": int(n_in), "rss": proc_status().get("VmRSS", 0), "bounds": bounds.snapshot(), "t": time.time()}
        tmp = status.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(status)
        time.sleep(every_s)


def soak_flow(out_dir: str, every_s: float = 0.5, objects: Optional[int] = None):
    """`dataflows.ztf` as configured by the environment (Kafka), enriched from `SynthStore`."""
    from bench.synthetic import SynthStore, Workload
    from dataflows.oracle import build_flow
    from operators.oracle.surveys import ZTF

    threading.Thread(target=_sample_forever, args=(Path(out_dir), every_s), daemon=True).start()
    return build_flow(ZTF, store=SynthStore(Workload(objects=objects), ZTF.collections))


# ---------------------------------------------------------------- the driver


def dir_bytes(path: Path) -> int:
    total = 0
    for p in path.rglob("*") if path.exists() else ():
        try:
            total += p.stat().st_size if p.is_file() else 0
        except OSError:
            pass
    return total


def recovery_split(path: Path) -> tuple[int, int, int]:
    """(database bytes, WAL bytes, largest WAL file) of the recovery directory. bytewax's SQLite
    files run in WAL mode: the database holds the live snapshots (older epochs deleted at each
    commit), while each `-wal` file grows to SQLite's auto-checkpoint (1,000 pages, ~4 MB) plus
    the largest transaction and is then rewritten from its start, never truncated."""
    db = wal = wal_max = 0
    for p in path.glob("*") if path.exists() else ():
        try:
            size = p.stat().st_size
        except OSError:
            continue
        if p.name.endswith("-wal"):
            wal += size
            wal_max = max(wal_max, size)
        elif not p.name.endswith("-shm"):
            db += size
    return db, wal, wal_max


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    keep = [f for f in flags if f.startswith(("avx", "amx", "sse4", "fma", "f16c"))]
    return " ".join(sorted(keep)) or "none of avx/amx/sse4/fma"


class Publisher(threading.Thread):
    """Publishes message i of the workload to partition i % P, at most `lag_max` ahead of the flow."""

    def __init__(self, bootstrap: str, topic: str, workload, n: int, partitions: int, lag_max: int):
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.w, self.n, self.p, self.lag_max = bootstrap, topic, workload, n, partitions, lag_max
        self.published = 0
        self.bytes = 0
        self.read = 0  # set by the driver from the flow's status
        self.error: Optional[str] = None

    def run(self) -> None:
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 20, "message.max.bytes": 2_000_000,
                             "queue.buffering.max.kbytes": 256_000})
        try:
            for i in range(self.n):
                while self.published - self.read >= self.lag_max:
                    producer.poll(0.05)
                while True:
                    try:
                        value = self.w.message(i)
                        producer.produce(self.topic, value=value, partition=i % self.p)
                        self.bytes += len(value)
                        break
                    except BufferError:
                        producer.poll(0.1)
                self.published += 1
                producer.poll(0)
            producer.flush(60)
        except Exception as exc:  # noqa: BLE001 - reported by the driver
            self.error = repr(exc)


def run_soak(n: int, work: Path, partitions: int, every: int, lag_max: int, timeout_s: float,
             full_every: int = 50, snapshot_interval_s: Optional[float] = None, downstreams: str = "none",
             objects: Optional[int] = None) -> dict:
    from contextlib import ExitStack

    from bench.synthetic import Workload
    from tests.conftest import KafkaService

    work.mkdir(parents=True, exist_ok=True)
    workload = Workload(full_every=full_every, objects=objects)
    kafka = KafkaService(work)
    kafka.start()
    samples: list[dict] = []
    stack = ExitStack()
    fakes = stack.enter_context(Downstreams(workload)) if downstreams == "slow" else None
    try:
        topic = kafka.create_topic("soak", partitions)
        out = work / "flow"
        out.mkdir(exist_ok=True)
        recovery, results, logs = out / "recovery", out / "results", out / "logs"
        env = base_env(KAFKA_BROKERS=kafka.bootstrap, KAFKA_TOPIC=topic, KAFKA_GROUP_ID="soak",
                       KAFKA_STARTING_OFFSET="beginning", ALERTFLOW_RESULTS_DIR=results, ALERTFLOW_LOGS_DIR=logs,
                       ALERTFLOW_RECOVERY_DIR=recovery,
                       **({"ALERTFLOW_SNAPSHOT_INTERVAL_S": snapshot_interval_s} if snapshot_interval_s else {}),
                       **(fakes.env() if fakes else {"FRITZ_TOKEN": "", "POST_TO_SLACK": "false"}))
        publisher = Publisher(kafka.bootstrap, topic, workload, n, partitions, lag_max)
        publisher.start()
        flow = Child([PY, "-m", "bytewax.run", f"bench.soak:soak_flow({str(out)!r}, objects={objects!r})"], env,
                     out / "flow.log", "soak")
        expected_rows = workload.passing(n)
        rows_state: dict = {}
        next_at, t0, last_change, last = every, time.monotonic(), time.monotonic(), -1
        while True:
            if not flow.alive():
                raise RuntimeError(f"the flow exited with {flow.proc.returncode}:\n{flow.tail()}")
            if time.monotonic() - t0 > timeout_s:
                raise RuntimeError(f"timed out after {timeout_s:.0f} s at {last} messages")
            if publisher.error:
                raise RuntimeError(f"publisher: {publisher.error}")
            try:
                status = json.loads((out / STATUS).read_text())
            except (OSError, ValueError):
                time.sleep(0.5)
                continue
            publisher.read = status["in"]
            rows = count_rows(results / CSV_NAME, rows_state)
            if status["in"] != last:
                last, last_change = status["in"], time.monotonic()
            done = status["in"] >= n and rows >= expected_rows
            if status["in"] >= next_at or done:
                db_bytes, wal_bytes, wal_max = recovery_split(recovery)
                samples.append({
                    "messages": status["in"], "seconds": round(time.monotonic() - t0, 1),
                    "rss_mb": round(status["rss"] / 2**20, 1),
                    "recovery_bytes": dir_bytes(recovery), "recovery_db_bytes": db_bytes,
                    "recovery_wal_bytes": wal_bytes, "recovery_wal_max_file_bytes": wal_max,
                    "results_bytes": (results / CSV_NAME).stat().st_size if (results / CSV_NAME).exists() else 0,
                    "dead_letter_bytes": sum(p.stat().st_size for p in results.glob("*deadletters*")),
                    "log_bytes": dir_bytes(logs), "rows": rows,
                    "lag": publisher.published - status["in"], "bounds": status["bounds"]})
                s = samples[-1]
                print(f"{s['messages']:>9} msgs  RSS {s['rss_mb']:7.1f} MB  recovery {s['recovery_bytes'] / 1e6:6.2f} MB "
                      f"(db {s['recovery_db_bytes'] / 1e6:.2f}, WAL {s['recovery_wal_bytes'] / 1e6:.2f})  "
                      f"CSV {s['results_bytes'] / 1e6:7.1f} MB  lag {s['lag']:>6}  "
                      + "  ".join(f"{k} {v['items']}/{v['limit']}" for k, v in sorted(s["bounds"].items())),
                      flush=True)
                while next_at <= status["in"]:
                    next_at += every
            if done:
                break
            time.sleep(0.5)
        flow.proc.send_signal(signal.SIGINT)
        code = flow.stop()
        try:
            log_text = (out / "flow.log").read_text(errors="replace")
        except OSError:
            log_text = ""
        return {"n": n, "partitions": partitions, "every": every, "lag_max": lag_max, "expected_rows": expected_rows,
                "full_every": full_every, "published_bytes": publisher.bytes, "downstreams": downstreams,
                "objects": objects, "downstream_counts": fakes.counts() if fakes else {}, "said": said(log_text),
                "snapshot_interval_s": snapshot_interval_s or "default",
                "exit_status": code, "samples": samples, "wall_s": round(time.monotonic() - t0, 1)}
    finally:
        stack.close()
        kafka.stop()


def _median(values: list[float]) -> float:
    v = sorted(values)
    return v[len(v) // 2] if v else float("nan")


def verdict(r: dict) -> dict:
    s, n = r["samples"], r["n"]

    def quarter(key: str, lo: float, hi: float) -> float:
        return _median([x[key] for x in s if lo * n <= x["messages"] <= hi * n])

    q2, q4 = quarter("rss_mb", 0.25, 0.5), quarter("rss_mb", 0.75, 1.0)
    r2, r4 = quarter("recovery_bytes", 0.25, 0.5), quarter("recovery_bytes", 0.75, 1.0)
    # What the recovery store can hold at most, whatever the messages read: bytewax keeps one
    # snapshot per state key (older epochs deleted at each commit, src/recovery.rs), so the live
    # data is the open batches (each alert carries its ~41 kB message) plus offsets; SQLite keeps
    # freed pages for reuse, so a file holds ≤ 2 epochs (the old one is deleted after the new one
    # is written), and its WAL ≤ the largest transaction + the 4 MB auto-checkpoint.
    open_limit = max((x["bounds"].get("open_batches", {}).get("limit", 0) for x in s), default=0)
    recovery_bound = 3 * open_limit * MESSAGE_BYTES + 4 * 2**20 * r.get("partitions", 1)
    recovery_max = max((x["recovery_bytes"] for x in s), default=0)
    # One WAL file: SQLite's auto-checkpoint at 1,000 pages (4,096 bytes + a 24-byte frame
    # header each, after the 32-byte file header), overshot by at most one transaction (one
    # epoch's snapshots of the partition: ≤ the open batches' messages).
    wal_file_bound = 32 + 1000 * (4096 + 24) + open_limit * MESSAGE_BYTES
    wal_max = max((x.get("recovery_wal_max_file_bytes", 0) for x in s), default=0)
    db_max = max((x.get("recovery_db_bytes", 0) for x in s), default=0)
    from operators.runtime.logs import LOG_BACKUPS, LOG_FILE_BYTES

    log_bound = (1 + LOG_BACKUPS) * LOG_FILE_BYTES  # RotatingFileHandler, operators/runtime/logs.py
    log_max = max((x["log_bytes"] for x in s), default=0)
    over = sorted({f"{k} {v['items']}>{v['limit']} at {x['messages']}" for x in s for k, v in x["bounds"].items()
                   if v["items"] > v["limit"]})
    bounds: dict[str, dict] = {}
    for x in s:  # every structure seen, its bound (the largest: 0 while none is alive), where set, most held
        for k, v in x["bounds"].items():
            b = bounds.setdefault(k, {"limit": v["limit"], "where": v.get("where", ""), "max_items": 0})
            b.update(limit=max(b["limit"], v["limit"]), max_items=max(b["max_items"], v["items"]),
                     where=b["where"] or v.get("where", ""))
    steady = [x for x in s if x["messages"] >= 0.25 * n]
    rate = ((steady[-1]["messages"] - steady[0]["messages"]) / max(1e-3, steady[-1]["seconds"] - steady[0]["seconds"])
            if len(steady) > 1 else float("nan"))
    return {
        "rss_q2_mb": q2, "rss_q4_mb": q4, "rss_flat": q4 <= q2 + 10,
        "recovery_q2_bytes": r2, "recovery_q4_bytes": r4, "recovery_max_bytes": recovery_max,
        "recovery_bound_bytes": recovery_bound, "recovery_bounded": recovery_max <= recovery_bound,
        "recovery_db_max_bytes": db_max, "recovery_wal_max_file_bytes": wal_max,
        "recovery_wal_file_bound_bytes": wal_file_bound,
        "log_max_bytes": log_max, "log_bound_bytes": log_bound, "logs_bounded": log_max <= log_bound, "recovery_wal_within_bound": wal_max <= wal_file_bound,
        "structures_within_bounds": not over, "over_bounds": over[:20],
        "bounds": dict(sorted(bounds.items())), "read_per_s_after_first_quarter": round(rate, 1),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2_000_000)
    ap.add_argument("--every", type=int, default=50_000, help="sample every this many messages read")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--lag-max", type=int, default=20_000, help="publish at most this far ahead of the flow")
    ap.add_argument("--full-every", type=int, default=50,
                    help="every K-th message whole (~41 kB), the others slim (~1.8 kB); 1 = all whole")
    ap.add_argument("--broker-gb", type=float, default=8.0, help="memory the broker may use (N x the mean message)")
    ap.add_argument("--downstreams", choices=("none", "slow"), default="none",
                    help="slow: Fritz (fake SkyPortal) answering every request in 2 s and Slack (fake) down")
    ap.add_argument("--objects", type=int, default=None,
                    help="alerts of ~this many synthetic objects (default: the sample's 36; 200,000 with "
                         "--downstreams slow)")
    ap.add_argument("--timeout-s", type=float, default=6 * 3600)
    ap.add_argument("--snapshot-interval-s", type=float, default=None,
                    help="ALERTFLOW_SNAPSHOT_INTERVAL_S for the flow (default: the flow's); shorter = more epochs, "
                         "so the recovery WAL files reach their ceiling within a shorter run")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench")
    args = ap.parse_args(argv)
    if args.full_every < 1:
        ap.error("--full-every must be >= 1")
    if args.objects is None and args.downstreams == "slow":
        args.objects = 200_000
    from bench.synthetic import Workload

    sample = Workload(full_every=args.full_every)
    mean_bytes = sum(len(sample.message(i)) for i in range(5000)) / 5000
    need_gb = args.n * mean_bytes / 1e9
    if need_gb > args.broker_gb:
        print(f"--n {args.n:,} needs ~{need_gb:.1f} GB in the broker ({mean_bytes / 1e3:.1f} kB per message; tansu's "
              f"memory storage keeps every message): raise --broker-gb if the machine has it, or lower --n or "
              f"raise --full-every", file=sys.stderr)
        return 2
    import tempfile

    work = args.work or Path(tempfile.mkdtemp(prefix="alertflow-soak-"))
    flags = cpu_flags()
    away = (f"; Fritz at {FRITZ_DELAY_S:.0f} s/request and Slack down, {args.objects:,} objects"
            if args.downstreams == "slow" else "")
    print(f"soak: {args.n:,} messages ({mean_bytes / 1e3:.1f} kB mean, every {args.full_every}th whole), sample every "
          f"{args.every:,}{away}; CPU flags: {flags}; work dir {work}", flush=True)
    r = run_soak(args.n, work, args.partitions, args.every, args.lag_max, args.timeout_s, args.full_every,
                 args.snapshot_interval_s, args.downstreams, args.objects)
    r.update(verdict=verdict(r), cpu_flags=flags, command=" ".join(["python", "bench/soak.py", *(argv or sys.argv[1:])]),
             when=datetime.now().isoformat(timespec="seconds"))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"soak-{datetime.now():%Y%m%dT%H%M%S}"
    stem.with_suffix(".json").write_text(json.dumps(r, indent=1))
    chart(r, stem.with_suffix(".png"))
    v = r["verdict"]
    print(f"RSS median 2nd quarter {v['rss_q2_mb']:.1f} MB, last quarter {v['rss_q4_mb']:.1f} MB: "
          f"{'met' if v['rss_flat'] else 'MISSED'} (≤ +10 MB)  [CPU flags: {flags}]")
    print(f"recovery dir median 2nd quarter {v['recovery_q2_bytes'] / 1e6:.2f} MB, last quarter "
          f"{v['recovery_q4_bytes'] / 1e6:.2f} MB, largest {v['recovery_max_bytes'] / 1e6:.2f} MB ≤ bound "
          f"{v['recovery_bound_bytes'] / 1e6:.2f} MB (3 × open-batch bound × message + 4 MB WAL per partition): "
          f"{'met' if v['recovery_bounded'] else 'MISSED'}")
    print(f"bounded structures within their bounds at every sample: "
          f"{'met' if v['structures_within_bounds'] else 'MISSED'} {v['over_bounds'] or ''}")
    for name, b in v["bounds"].items():
        print(f"  {name:<40} most held {b['max_items']:>8,} of {b['limit']:>8,}  (set by {b['where'] or '?'})")
    print(f"read {v['read_per_s_after_first_quarter']:.0f} messages/s after the first quarter")
    for key, said_ in r["said"].items():
        if said_["times"]:
            print(f"  log {key}: said {said_['times']}x; last: {said_['last'][:200]}")
    if r["downstream_counts"]:
        print(f"  downstreams: {r['downstream_counts']}")
    print(f"flow exit status {r['exit_status']}; report {stem}.json / .png")
    print(f"recovery databases at most {v['recovery_db_max_bytes'] / 1e6:.2f} MB (live snapshots only); largest WAL "
          f"file {v['recovery_wal_max_file_bytes'] / 1e6:.2f} MB ≤ {v['recovery_wal_file_bound_bytes'] / 1e6:.2f} MB "
          f"(SQLite's 1,000-page auto-checkpoint + one epoch's transaction): "
          f"{'met' if v['recovery_wal_within_bound'] else 'MISSED'}")
    print(f"logs at most {v['log_max_bytes'] / 1e6:.2f} MB ≤ {v['log_bound_bytes'] / 1e6:.0f} MB (a file rotates at "
          f"50 MB, 5 kept: operators/runtime/logs.py): {'met' if v['logs_bounded'] else 'MISSED'}")
    return 0 if (v["rss_flat"] and v["recovery_bounded"] and v["recovery_wal_within_bound"] and v["logs_bounded"]
                 and v["structures_within_bounds"]) else 1


if __name__ == "__main__":
    sys.exit(main())
