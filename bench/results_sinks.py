"""The results outputs' cost (issue 25): CPU per message of each sink, and where the time goes.

    python bench/results_sinks.py --n 5000        # ~1 min on tansu + nx-27017

One run, one process, the same N results (the bundled ZTF sample's classifications,
copied with new candids and objectIds) written in model batches of 256 through each
sink's real partition (`write_batch`, what bytewax calls):

  csv          the results CSV (operators/oracle/results.py, the single writer)
  topic        the results topic: Avro container per result (encode) + idempotent lz4 producer (deliver)
  collection   the results collection: document per result (encode) + one bulk_write of upserts (deliver)

For each: this process's CPU per message (`time.process_time`: every thread, librdkafka's
included), the wall time per message, and the servers' CPU per message (tansu,
nx-27017, from psutil) — "where the time goes". `topic`/`collection` are split into
encode (ours, Python) and deliver (client + wire + server). The flow's throughput ratio
with the outputs on vs CSV only is `bench/bench_flow.py --only embedded,embedded-results`
(the same flow, the same run); this script prints the per-sink side of it.
Figures are printed beside the CPU's flags and written as JSON under results/bench/.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BATCH = 256


def sample_results(n: int) -> list:
    """`n` Results: the bundled sample's own classifications, repeated with new ids."""
    from bytewax.testing import run_main

    from dataflows.oracle import build_flow
    from operators.oracle.surveys import ZTF
    from operators.runtime.config import Settings
    from operators.sinks import results_outputs

    seen: list = []
    work = Path(tempfile.mkdtemp(prefix="bench_results_"))
    settings = Settings.from_env(ZTF, {"ALERTFLOW_RESULTS_DIR": str(work / "r"), "ALERTFLOW_LOGS_DIR": str(work / "l")})
    original = results_outputs.results_outputs

    def grab(result_lists, survey, settings, deadletters):  # keep the flow's own Result objects
        import bytewax.operators as op

        op.inspect("grab", result_lists, lambda _s, lst: seen.extend(lst))

    results_outputs.results_outputs = grab
    try:
        run_main(build_flow(ZTF, settings))
    finally:
        results_outputs.results_outputs = original
    out = []
    for i in range(n):
        r = seen[i % len(seen)]
        out.append(replace(r, candid=9_100_000_000_000_000_000 + i, objectId=f"{r.objectId}{i // len(seen)}"))
    return out


def cpu_flags() -> str:
    """The CPU's instruction-set features: the one reader, models/oracle/cpu_features.py."""
    from bench.measure import cpu_line

    return cpu_line()


def cpu_of(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def measure(name: str, batches: list, write, encode=None, servers=None) -> dict:
    """Run `write(batch)` over `batches`; CPU and wall per message; with `encode`, its share."""
    n = sum(len(b) for b in batches)
    s0 = {k: cpu_of(p) for k, p in (servers or {}).items()}
    enc_cpu = 0.0
    if encode is not None:  # what the write spends on our own encoding, timed apart on the same data
        c0 = time.process_time()
        for b in batches:
            encode(b)
        enc_cpu = time.process_time() - c0
    c0, w0 = time.process_time(), time.perf_counter()
    for b in batches:
        write(b)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    row = {"sink": name, "messages": n, "cpu_us_per_msg": 1e6 * cpu / n, "wall_us_per_msg": 1e6 * wall / n,
           "msgs_per_s": n / wall}
    if encode is not None:
        row["encode_cpu_us_per_msg"] = 1e6 * enc_cpu / n
        row["deliver_cpu_us_per_msg"] = 1e6 * max(0.0, cpu - enc_cpu) / n
    for k, p in (servers or {}).items():
        row[f"{k}_cpu_us_per_msg"] = 1e6 * (cpu_of(p) - s0[k]) / n
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="CPU per message of the results CSV, topic and collection sinks.")
    ap.add_argument("--n", type=int, default=5000, help="results per sink (default 5,000)")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench"))
    args = ap.parse_args(argv)

    from bench.servers import Servers
    from models.oracle.taxonomy import ZTF_TAXONOMY
    from operators.oracle.result_record import encode, to_record
    from operators.oracle.results import results_csv_sink
    from operators.runtime.service_settings import MongoSettings
    from operators.sinks.results_collection import ResultsCollectionSink, document
    from operators.sinks.results_topic import ResultsTopicSink, result_message

    results = sample_results(args.n)
    batches = [results[i:i + BATCH] for i in range(0, len(results), BATCH)]
    work = Path(tempfile.mkdtemp(prefix="bench_results_"))
    servers = Servers(work / "servers")
    servers.start()
    rows = []
    try:
        pids = servers.pids()
        csv = results_csv_sink(work / "r.csv", ZTF_TAXONOMY).build_part("csv", "r.csv", None)
        rows.append(measure("csv", batches, lambda b: csv.write_batch([b])))
        csv.close()

        topic = servers.kafka.create_topic("bench_oracle", partitions=4)
        letters: list = []
        part = ResultsTopicSink(servers.kafka.bootstrap, topic, {}, survey="ZTF", refuse=letters.extend).build(
            "t", 0, 1)
        rows.append(measure("topic", batches, lambda b: part.write_batch([result_message("BTS", r) for r in b]),
                            encode=lambda b: [result_message("BTS", r) for r in b], servers=pids))
        part.close()

        mongo = MongoSettings(uri=servers.mongo.uri, database="bench")
        coll = ResultsCollectionSink(mongo, "bench", "ZTF_alerts_oracle", survey="ZTF", taxonomy="BTS",
                                     refuse=letters.extend).build("c", 0, 1)
        rows.append(measure("collection", batches, lambda b: coll.write_batch([b]),
                            encode=lambda b: [document(to_record(r, "BTS")) for r in b], servers=pids))
        assert not letters, letters[:1]
        size = len(encode(to_record(results[0], "BTS")))
    finally:
        servers.stop()
    csv_cpu = rows[0]["cpu_us_per_msg"]
    print(f"\nResults sinks, {args.n:,} results in batches of {BATCH}; CPU flags: {cpu_flags()}")
    print(f"{'sink':<11} {'CPU µs/msg':>10} {'wall µs/msg':>11} {'msgs/s':>9} {'encode':>7} {'deliver':>8} "
          f"{'tansu':>7} {'nx-27017':>9}")
    for r in rows:
        print(f"{r['sink']:<11} {r['cpu_us_per_msg']:>10.1f} {r['wall_us_per_msg']:>11.1f} {r['msgs_per_s']:>9,.0f} "
              f"{r.get('encode_cpu_us_per_msg', float('nan')):>7.1f} {r.get('deliver_cpu_us_per_msg', float('nan')):>8.1f} "
              f"{r.get('tansu_cpu_us_per_msg', float('nan')):>7.1f} {r.get('nx-27017_cpu_us_per_msg', float('nan')):>9.1f}")
    print(f"record: {size} bytes as an Avro container (schema included); CPU per message relative to the CSV: "
          + ", ".join(f"{r['sink']} {r['cpu_us_per_msg'] / csv_cpu:.1f}x" for r in rows[1:]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench_results_{datetime.now().strftime('%Y%m%d_%H%M%S')}.json"
    path.write_text(json.dumps({"n": args.n, "batch": BATCH, "cpu_flags": cpu_flags(), "record_bytes": size,
                                "sinks": rows}, indent=2))
    print(f"Figures: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
