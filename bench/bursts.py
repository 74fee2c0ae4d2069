"""Bursts as Rubin delivers them: `--burst-size` messages every `--burst-every` seconds, per-burst latency.

    python bench/bursts.py                                   # Rubin: 10,000 every 40 s for 5 min (8 bursts)
    python bench/bursts.py --bursts 3 --burst-size 3000 --burst-every 20    # a short run (~2 min per store)

Rubin sends ~10,000 alerts per visit, a visit every ~40 s (~333/s on average). The
messages (synthesized from the bundled real ZTF alerts, bench/synthetic.py) are
published to tansu (Kafka protocol) as fast as the producer goes at the start of
each burst; the flow (`dataflows.ztf`'s build_flow, one process, or `--processes`)
consumes them from Kafka. Per burst: p50/p99/max latency from the message's Kafka
timestamp to its row's `processed_at` in the results CSV (the measure of the
bench's paced phases) and to its record's Kafka timestamp in the results topic
(`ORACLE_RESULTS_TOPIC`, on unless `--no-results-topic`), the seconds the flow took
to write the burst's last row, and whether it did so before the next burst began
(the backlog drained). Stores:

  embedded   the alerts' documents from the synthesized store in the flow process (no database)
  servers    the documents in nx-27017 (MongoDB protocol), as in production

A warm-up of 200 messages runs first (start-up, group join and the first fetch are
not part of any burst). Also the `bursts` part of bench/bench_flow.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.children import CSV_NAME, PY, Child, base_env  # noqa: E402
from bench.measure import CpuWindow, count_rows, percentiles, read_rows  # noqa: E402

WARMUP = 200


def synth_store_flow():
    """`dataflows.ztf` reading Kafka (KAFKA_* from the environment) with the synthesized store in place of
    MongoDB: `python -m bytewax.run "bench.bursts:synth_store_flow()"`."""
    from bench.synthetic import SynthStore, Workload
    from dataflows.oracle import build_flow
    from operators.oracle.surveys import ZTF

    return build_flow(ZTF, store=SynthStore(Workload(), ZTF.collections))


def _wait_rows(csv_path: Path, state: dict, want: int, until: float, children) -> int:
    rows = count_rows(csv_path, state)
    while rows < want and time.monotonic() < until:
        for c in children:
            if not c.alive():
                raise RuntimeError(f"{c.name} exited with {c.proc.returncode}:\n{c.tail()}")
        time.sleep(0.1)
        rows = count_rows(csv_path, state)
    return rows


def topic_times(bootstrap: str, topic: str, timeout_s: float = 120.0) -> dict[int, float]:
    """candid -> Kafka timestamp (s) of its record in the results topic (the first, if repeated),
    every record there now (`bench.topics.read_to_end`: reading to the partitions' end offsets
    missed the last batch, 15-17 records of the last burst)."""
    from bench.topics import read_to_end
    from operators.oracle.result_record import decode

    out: dict[int, float] = {}
    for msg in read_to_end(bootstrap, topic, timeout_s):
        for record in decode(msg.value()):
            out.setdefault(int(record["candid"]), msg.timestamp()[1] / 1e3)
    return out


def run_bursts(store: str, servers, feed, work: Path, bursts: int, size: int, every_s: float,
               processes: int = 1, env: dict | None = None, results_topic: bool = True) -> dict:
    """The flow on `feed`'s topic; `bursts` bursts of `size` messages every `every_s` seconds;
    with `results_topic`, the flow also writes ORACLE_RESULTS_TOPIC (a new topic of this run)."""
    label = f"bursts-{store}" + (f"-{processes}p" if processes > 1 else "")
    out = work / label
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    flow = "bench.bursts:synth_store_flow()" if store == "embedded" else "dataflows.ztf"
    topic_out = f"bench_oracle_{label.replace('-', '_')}_{uuid.uuid4().hex[:6]}" if results_topic else None
    env = base_env(KAFKA_BROKERS=servers.kafka.bootstrap, KAFKA_TOPIC=feed.topic,
                   KAFKA_GROUP_ID=f"bench-{label}-{uuid.uuid4().hex[:6]}", KAFKA_STARTING_OFFSET="end",
                   ALERTFLOW_RESULTS_DIR=out / "results", ALERTFLOW_LOGS_DIR=out / "logs",
                   ALERTFLOW_RECOVERY_DIR=out / "recovery",
                   **({"ORACLE_RESULTS_TOPIC": topic_out} if topic_out else {}),
                   **({"MONGODB_URI": servers.mongo.uri, "BOOM_DATABASE__NAME": feed.database}
                      if store == "servers" else {}), **(env or {}))
    if processes == 1:
        cmds = [[PY, "-m", "bytewax.run", flow]]
    else:
        from bench.children import free_port

        addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
        cmds = [[PY, "-m", "bytewax.run", flow, "-i", str(i), "-a", addresses] for i in range(processes)]
    children = [Child(c, env, out / f"flow{k}.log", f"{label}[{k}]") for k, c in enumerate(cmds)]
    csv_path = out / "results" / CSV_NAME
    state: dict = {}
    per_burst = []
    try:
        # Warm-up: messages until the flow answers (it starts at the topic's end, so keep publishing).
        started = time.monotonic()
        deadline = started + 180
        warm = []
        while count_rows(csv_path, state) == 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{label}: no row within 180 s of start:\n" + children[0].tail())
            feed.paced_n = 20
            warm += feed.publish_paced(200.0)
            _wait_rows(csv_path, state, 1, time.monotonic() + 5, children)
        # Messages published before the consumer joined are not read (it starts at the end): wait for
        # the rows to stop coming, then count from there.
        rows, settled = count_rows(csv_path, state), time.monotonic()
        while time.monotonic() - settled < 3:
            time.sleep(0.5)
            if count_rows(csv_path, state) != rows:
                rows, settled = count_rows(csv_path, state), time.monotonic()
        want = rows
        res_warm = {"warmup_messages": len(warm), "warmup_rows": rows, "ready_after_s": time.monotonic() - started}
        feed.paced_n = size
        window = CpuWindow({c.name: c.pid for c in children} | servers.pids())
        for k in range(bursts):
            t0 = time.monotonic()
            indices = feed.publish_paced(1e9)  # as fast as the producer goes
            published_s = time.monotonic() - t0
            want += feed.expected_rows(indices)
            rows = _wait_rows(csv_path, state, want, t0 + every_s, children)
            drained = rows >= want
            per_burst.append({"burst": k + 1, "indices": indices, "publish_s": published_s, "drained": drained,
                              "rows_missing_at_next": max(0, want - rows)})
            if k == bursts - 1 and not drained:  # the last burst's latency, however long it takes
                _wait_rows(csv_path, state, want, time.monotonic() + 4 * every_s, children)
            left = t0 + every_s - time.monotonic()
            if left > 0 and k < bursts - 1:
                time.sleep(left)
        if topic_out:  # the topic's records of the last batches may trail the CSV's rows: wait before Ctrl-C
            until = time.monotonic() + 60
            while len(topic_times(servers.kafka.bootstrap, topic_out)) < count_rows(csv_path, state) and \
                    time.monotonic() < until:
                time.sleep(1.0)
        cpu = window.stop()
    finally:
        codes = [c.stop() for c in children]
    rows_all = read_rows(csv_path)
    in_topic = topic_times(servers.kafka.bootstrap, topic_out) if topic_out else {}
    out_bursts = []
    for b in per_burst:
        candids = [feed.w.candid(i) for i in b.pop("indices") if feed.w.passes(i)]
        lat = [rows_all[c] - feed.timestamps[c] for c in candids if c in rows_all and c in feed.timestamps]
        done = max((rows_all[c] for c in candids if c in rows_all), default=float("nan"))
        first = min((feed.timestamps[c] for c in candids if c in feed.timestamps), default=float("nan"))
        out_bursts.append({**b, "rows": len(lat), "expected": len(candids), **percentiles(lat),
                           "max": max(lat) if lat else None, "last_row_after_s": done - first})
        if topic_out:
            lat_t = [in_topic[c] - feed.timestamps[c] for c in candids if c in in_topic and c in feed.timestamps]
            out_bursts[-1]["topic"] = {"records": len(lat_t), **percentiles(lat_t), "max": max(lat_t) if lat_t else None}
    return {"label": label, "store": store, "processes": processes, "bursts": out_bursts, "burst_size": size,
            "every_s": every_s, "cpu": cpu, "exit_codes": codes, "results_topic": topic_out, **res_warm}


def bursts(bursts_n: int, size: int, every_s: float, stores=("embedded", "servers"), processes: int = 1,
           work: Path | None = None, results_topic: bool = True) -> dict:
    """Servers up, documents loaded (for the servers' store), then each store's flow in turn."""
    import tempfile

    from bench.measure import cpu_line, loadavg
    from bench.servers import Feed, Servers
    from bench.synthetic import Workload

    own = work is None
    work = Path(work or tempfile.mkdtemp(prefix="bench_bursts_"))
    workload = Workload()
    servers = Servers(work / "servers")
    res = {"cpu": cpu_line(), "loadavg": [loadavg()], "cores": os.cpu_count(), "runs": {}}
    try:
        servers.start()
        per_store = bursts_n * size + 10 * WARMUP  # the warm-up publishes 20 at a time until the flow answers
        feed = Feed(servers, workload, 0, per_store, len(stores))
        if "servers" in stores:
            res["load"] = feed.load_documents()
        for store in stores:
            try:
                res["runs"][store] = run_bursts(store, servers, feed, work, bursts_n, size, every_s, processes,
                                                results_topic=results_topic)
            except Exception as exc:  # one failed store must not lose the other's figures
                res["runs"][store] = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        servers.stop()
        if own:
            shutil.rmtree(work, ignore_errors=True)
    res["loadavg"].append(loadavg())
    return res


def cores_needed(per_s: float, us_per_alert: float) -> float:
    """Cores one model needs to keep up with `per_s` alerts/s at `us_per_alert` CPU µs each."""
    return per_s * us_per_alert / 1e6


def print_bursts(res: dict) -> None:
    print(f"\nBursts (load average {res['loadavg'][0]:.1f} -> {res['loadavg'][-1]:.1f}, {res['cores']} cores "
          f"shared; {res['cpu']})")
    for store, r in res["runs"].items():
        if "error" in r:
            print(f"  {store}: FAILED: {r['error'][:300]}")
            continue
        print(f"  {r['label']}: {r['burst_size']:,} messages every {r['every_s']:.0f} s, {r['processes']} process(es); "
              f"flow CPU {sum(v for k, v in r['cpu']['cores'].items() if k.startswith(r['label'])):.2f} cores, "
              f"machine {r['cpu']['machine_cores']:.2f}")
        topic = bool(r.get("results_topic"))
        print(f"    {'burst':>5} {'publish s':>9} {'rows':>6} {'p50 s':>7} {'p99 s':>7} {'max s':>7} {'last row s':>10} "
              f"{'drained':>8}" + (f"  {'topic recs':>10} {'p50 s':>7} {'p99 s':>7}" if topic else ""))
        for b in r["bursts"]:
            t = b.get("topic") or {}
            print(f"    {b['burst']:>5} {b['publish_s']:>9.1f} {b['rows']:>6} {b['p50']:>7.2f} {b['p99']:>7.2f} "
                  f"{(b['max'] or float('nan')):>7.2f} {b['last_row_after_s']:>10.1f} "
                  f"{'yes' if b['drained'] else 'NO (' + str(b['rows_missing_at_next']) + ' left)':>8}"
                  + (f"  {t.get('records', 0):>10} {t.get('p50', float('nan')):>7.2f} {t.get('p99', float('nan')):>7.2f}"
                     if topic else ""))
        if topic:
            print("    (topic: latency from the input message's Kafka timestamp to its record's in the results topic)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bursts", type=int, default=8, help="bursts (default 8: 5 min at 40 s)")
    ap.add_argument("--burst-size", type=int, default=10_000, help="messages per burst (Rubin: ~10,000 per visit)")
    ap.add_argument("--burst-every", type=float, default=40.0, help="seconds between bursts (Rubin: ~40)")
    ap.add_argument("--stores", default="embedded,servers", help="embedded, servers or both")
    ap.add_argument("--processes", type=int, default=1, help="flow processes (a bytewax cluster)")
    ap.add_argument("--no-results-topic", action="store_true",
                    help="leave ORACLE_RESULTS_TOPIC unset (default: the flow also writes a results topic)")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    stores = tuple(s.strip() for s in args.stores.split(","))
    res = bursts(args.bursts, args.burst_size, args.burst_every, stores, args.processes,
                 results_topic=not args.no_results_topic)
    print_bursts(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
