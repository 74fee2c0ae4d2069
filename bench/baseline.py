"""The upstream per-message design, for the flow benchmark's ratios.

`baseline_main(...)` runs in its own process (`python -m bench.baseline baseline ...`):
poll one, two `find_one`, one single-alert forward pass, one CSV append, one
commit. `run_baseline(...)` starts it from the driver on the servers' feed.
`loop_main(...)` (`python -m bench.baseline loop ...`, started by `run_loop`) is the
same per-message code on the embedded store: dictionary lookups in place of
`find_one`, no Kafka, so its ratio to the flow is measured where the store is not
the bottleneck.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
import time
from pathlib import Path

from bench.children import PY, Child, base_env
from bench.measure import CpuWindow, Stats, count_rows, proc_status, read_rows, steady_rate
from bench.servers import Feed, Servers
from operators.runtime.progress import Progress


# ---------------------------------------------------------------- one message, the upstream way


def _load_model():
    import torch

    from models.oracle.loading import load_oracle
    from operators.oracle.surveys import ZTF

    torch.set_num_threads(1)
    return load_oracle(ZTF.weights)


class PerMessage:
    """The upstream per-message work on one payload, shared by both per-message loops (on
    the servers: `find_one`; embedded: dictionary lookups): decode → filter → look up the
    alert → look up its aux → ztf_inputs → single-alert forward pass → one CSV row,
    flushed. Returns 1 when a row was written. Time per stage goes into `seconds`
    (parse, find_alert, find_aux, inputs, model, csv)."""

    def __init__(self, model, f, seconds: dict, find_alert, find_aux):
        import numpy as np

        from models.oracle.networks import predict_proba
        from operators.oracle.messages import decode_avro
        from operators.oracle.surveys import ZTF
        from operators.oracle.ztf_inputs import ztf_inputs

        self.model, self.f, self.seconds = model, f, seconds
        self.find_alert, self.find_aux = find_alert, find_aux
        self.np, self.predict, self.decode, self.inputs = np, predict_proba, decode_avro, ztf_inputs
        self.filter_name = ZTF.filter_name
        self.writer = csv.writer(f, lineterminator="\n")
        f.write(",".join(["candid", "objectId", *model.taxonomy.nodes, "processed_at"]) + "\n")
        f.flush()

    def __call__(self, payload: bytes) -> int:
        perf, seconds = time.perf_counter, self.seconds
        t1 = perf()
        rec = self.decode(payload)
        passed = any((x.get("filter_name") or x.get("filter_id")) == self.filter_name for x in rec["filters"])
        t2 = perf()
        seconds["parse"] += t2 - t1
        if not passed:
            return 0
        alert = self.find_alert(rec["candid"])
        t3 = perf()
        aux_doc = self.find_aux(rec["objectId"])
        t4 = perf()
        x = self.inputs(alert, aux_doc)
        t5 = perf()
        p = self.predict(self.model, x.ts[None], self.np.array([x.length]), x.static[None])[0]
        t6 = perf()
        now = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1e3) % 1000:03d}+00:00"
        self.writer.writerow([rec["candid"], rec["objectId"], *(f"{v:.6g}" for v in p), now])
        self.f.flush()
        seconds["find_alert"] += t3 - t2
        seconds["find_aux"] += t4 - t3
        seconds["inputs"] += t5 - t4
        seconds["model"] += t6 - t5
        seconds["csv"] += perf() - t6
        return 1


# ---------------------------------------------------------------- the per-message baseline


def baseline_main(argv: list[str]) -> int:
    """The upstream design, one message at a time, against Kafka + MongoDB:
    poll one → decode → filter → find_one(alerts, _id) → find_one(aux, _id) →
    ztf_inputs → single-alert forward → CSV append → commit. Stops after
    `--max` messages or `--seconds`, whichever first; writes a JSON summary."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--mongodb-uri", required=True)
    ap.add_argument("--database", required=True)
    ap.add_argument("--max", type=int, required=True)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--commit", choices=("sync", "async"), default="sync")
    args = ap.parse_args(argv)

    from confluent_kafka import Consumer
    from pymongo import MongoClient

    from operators.oracle.surveys import ZTF

    model = _load_model()
    db = MongoClient(args.mongodb_uri)[args.database]
    alerts, aux = db[ZTF.collections.alerts], db[ZTF.collections.aux]
    consumer = Consumer({"bootstrap.servers": args.brokers, "group.id": f"baseline-{os.getpid()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([args.topic])
    out = Path(args.out)
    seconds = dict.fromkeys(("poll", "parse", "find_alert", "find_aux", "inputs", "model", "csv", "commit"), 0.0)
    perf = time.perf_counter
    n_msgs = n_rows = 0
    started = None
    with (out / "baseline_results.csv").open("w", newline="") as f:
        one = PerMessage(model, f, seconds, lambda c: alerts.find_one({"_id": c}), lambda o: aux.find_one({"_id": o}))
        while n_msgs < args.max and (started is None or perf() - started < args.seconds):
            t0 = perf()
            msg = consumer.poll(1.0)
            t1 = perf()
            if msg is None or msg.error() is not None:
                if started is not None:
                    seconds["poll"] += t1 - t0
                continue
            if started is None:
                started = t0  # the clock starts with the first message (after the group join)
                cpu_started = Stats.cpu()
            seconds["poll"] += t1 - t0
            n_msgs += 1
            n_rows += one(msg.value())
            t8 = perf()
            consumer.commit(message=msg, asynchronous=args.commit == "async")
            seconds["commit"] += perf() - t8
    elapsed = perf() - started if started is not None else 0.0
    cpu_used = Stats.cpu() - cpu_started if started is not None else 0.0
    consumer.close()
    (out / "baseline.json").write_text(json.dumps({
        "messages": n_msgs, "rows": n_rows, "elapsed_s": elapsed, "seconds": seconds, "cpu_s": cpu_used,
        "commit": args.commit, **{k.lower(): v for k, v in proc_status().items()}}))
    return 0


def run_baseline(feed: Feed, servers: Servers, work: Path, max_messages: int, seconds: float, commit: str) -> dict:
    out = work / "baseline"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    child = Child([PY, "-m", "bench.baseline", "baseline", "--brokers", servers.kafka.bootstrap,
                   "--topic", feed.topic, "--mongodb-uri", servers.mongo.uri, "--database", feed.database,
                   "--max", str(max_messages), "--seconds", str(seconds), "--out", str(out), "--commit", commit],
                  base_env(), out / "baseline.log", "baseline")
    return _collect(child, out, "baseline", servers.pids(), "baseline (per message)")


def _collect(child: Child, out: Path, label: str, server_pids: dict, title: str) -> dict:
    """Wait for a per-message loop's process, then read its summary and CSV."""
    window = CpuWindow({label: child.pid, **server_pids})
    with Progress(None, title) as bar:
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
        raise RuntimeError(f"{label} exited with {child.proc.returncode}:\n{child.tail()}")
    summary = json.loads((out / "baseline.json").read_text())
    rows = read_rows(out / "baseline_results.csv")
    steady, steady_span = steady_rate(list(rows.values()))
    elapsed = summary["elapsed_s"] or float("nan")
    return {"label": label, "processes": 1, "workers": 1, "messages": summary["messages"],
            "rows": summary["rows"], "window_s": elapsed, "msgs_per_s": summary["messages"] / elapsed,
            "rows_per_s": summary["rows"] / elapsed, "steady_rows_per_s": steady, "steady_window_s": steady_span,
            "stage_seconds": summary["seconds"], "commit": summary["commit"],
            "cpu_us_per_msg": 1e6 * summary.get("cpu_s", float("nan")) / max(1, summary["messages"]),
            "store_cpu_us_per_msg": (1e6 * cpu["cores"].get("nx-27017", 0.0) * cpu["wall_s"] / max(1, summary["messages"])
                                     if "nx-27017" in server_pids else None),
            "peak_rss_mb": [round(summary.get("vmhwm", child.peak_rss) / 2**20, 1)], "cpu": cpu}



# ---------------------------------------------------------------- the per-message loop, embedded store


def loop_main(argv: list[str]) -> int:
    """The same per-message code (`PerMessage`) on the embedded store: message `i` of the
    synthetic workload → decode → filter → alert and aux by dictionary lookup (whole
    documents, as `find_one` returns them) → ztf_inputs → single-alert forward → one CSV
    row. No servers, so the ratio to the flow is the design's, not the store's."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    from bench.synthetic import Workload

    workload = Workload()
    alerts = {workload.candid(i): workload.alert_doc(i) for i in range(args.n) if workload.passes(i)}
    aux = dict(workload.aux_docs)
    model = _load_model()
    out = Path(args.out)
    seconds = dict.fromkeys(("poll", "parse", "find_alert", "find_aux", "inputs", "model", "csv", "commit"), 0.0)
    perf = time.perf_counter
    n_msgs = n_rows = 0
    with (out / "baseline_results.csv").open("w", newline="") as f:
        one = PerMessage(model, f, seconds, alerts.get, aux.get)
        started, cpu_started = perf(), Stats.cpu()
        while n_msgs < args.n and perf() - started < args.seconds:
            t0 = perf()
            payload = workload.message(n_msgs)
            seconds["poll"] += perf() - t0
            n_msgs += 1
            n_rows += one(payload)
        elapsed, cpu_used = perf() - started, Stats.cpu() - cpu_started
    (out / "baseline.json").write_text(json.dumps({
        "messages": n_msgs, "rows": n_rows, "elapsed_s": elapsed, "seconds": seconds, "cpu_s": cpu_used,
        "commit": "none", **{k.lower(): v for k, v in proc_status().items()}}))
    return 0


def run_loop(work: Path, max_messages: int, seconds: float) -> dict:
    """The per-message loop on the embedded store (`loop_main`) in its own process."""
    out = work / "embedded-loop"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    child = Child([PY, "-m", "bench.baseline", "loop", "--n", str(max_messages), "--seconds", str(seconds),
                   "--out", str(out)], base_env(), out / "loop.log", "embedded-loop")
    return _collect(child, out, "embedded-loop", {}, "embedded loop (per message)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "baseline":
        sys.exit(baseline_main(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "loop":
        sys.exit(loop_main(sys.argv[2:]))
    sys.exit("usage: python -m bench.baseline baseline|loop ... (the driver is bench/bench_flow.py)")
