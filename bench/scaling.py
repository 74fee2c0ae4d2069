"""This host's own two-core ceiling: pure fp32 matmul in one pinned process, then in two at once.

    python bench/scaling.py [--seconds 4] [--rounds 2]

Each process runs 512x512 fp32 matmuls on one torch thread, pinned to its own core
with `os.sched_setaffinity` (the first two cores this process may use); one alone,
then two together, in `rounds` alternating rounds so both see the same machine
load. The ceiling is the two processes' summed rate over the one's: what two cores
of this host give to work that shares nothing (on a shared or SMT host it is below
2.0). The flow benchmark (`scaling` part of bench/bench_flow.py) reports the flow's
two-process speed-up (cluster-embedded over embedded) as a fraction of it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SIDE = 512
WORKER = """
import json, os, sys, time
import torch
core, seconds = int(sys.argv[1]), float(sys.argv[2])
os.sched_setaffinity(0, {core})
torch.set_num_threads(1)
a, b = torch.randn(%d, %d), torch.randn(%d, %d)
for _ in range(5):
    a @ b
t0, c0, k = time.perf_counter(), time.process_time(), 0
while time.perf_counter() - t0 < seconds:
    a @ b
    k += 1
wall = time.perf_counter() - t0
print(json.dumps({"core": core, "per_s": k / wall, "cpu_s": time.process_time() - c0, "wall_s": wall}))
""" % (SIDE, SIDE, SIDE, SIDE)


def _run(cores: list[int], seconds: float) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(c), str(seconds)], stdout=subprocess.PIPE,
                              text=True, env=env) for c in cores]
    out = []
    for p in procs:
        stdout, _ = p.communicate(timeout=seconds + 120)
        if p.returncode:
            raise RuntimeError(f"matmul worker exited with {p.returncode}")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def two_core_ceiling(seconds: float = 4.0, rounds: int = 2) -> dict:
    """One pinned matmul process, then two on two cores, alternating; the ratio of their rates."""
    from bench.measure import cpu_line, loadavg
    from operators.runtime.affinity import available_cores

    cores = available_cores()
    if len(cores) < 2 or not hasattr(os, "sched_setaffinity"):
        return {"error": f"needs two cores and sched_setaffinity (this process may use {cores})"}
    load0 = loadavg()
    one, two, one_cpu, two_cpu = [], [], [], []
    for _ in range(rounds):
        [alone] = _run(cores[:1], seconds)
        pair = _run(cores[:2], seconds)
        one.append(alone["per_s"])
        two.append(sum(r["per_s"] for r in pair))
        # Per CPU second: what contention between the two (shared caches, memory, an SMT sibling)
        # costs, without the time other tenants take from us (that shows in the wall rates only).
        one_cpu.append(alone["per_s"] * alone["wall_s"] / alone["cpu_s"])
        two_cpu.append(sum(r["per_s"] * r["wall_s"] / r["cpu_s"] for r in pair))
    gflops = 2 * SIDE ** 3 / 1e9
    return {"cpu": cpu_line(), "cores": cores[:2], "seconds": seconds, "rounds": rounds,
            "loadavg": [load0, loadavg()], "one_gflops": gflops * sum(one) / rounds,
            "two_gflops": gflops * sum(two) / rounds, "ceiling": sum(two) / sum(one),
            "ceiling_cpu": sum(two_cpu) / sum(one_cpu)}


def flow_scaling(modes: dict, ceiling: dict) -> dict:
    """The flow's two-process speed-up (each cluster mode over `embedded`) as a fraction of the ceiling."""
    out = {}
    alone = modes.get("embedded", {})
    one = alone.get("msgs_per_s")
    for key in ("cluster-embedded", "cluster-embedded-pinned"):
        r = modes.get(key, {})
        two = r.get("msgs_per_s")
        if one and two and ceiling.get("ceiling"):
            out[key] = {"speedup": two / one, "of_ceiling": two / one / ceiling["ceiling"]}
            # The same on CPU time: the one process's CPU for all messages over the busier cluster
            # process's (what 2 free cores would give), against the ceiling's CPU-time form.
            each = r.get("process_cpu_each_s") or []
            if alone.get("process_cpu_s") and each and ceiling.get("ceiling_cpu"):
                cpu_speedup = alone["process_cpu_s"] / max(each)
                out[key].update(cpu_speedup=cpu_speedup, cpu_of_ceiling=cpu_speedup / ceiling["ceiling_cpu"])
                norm = normalised_cpu_speedup(alone, r)
                if norm:
                    out[key].update(norm_speedup=norm, norm_of_ceiling=norm / ceiling["ceiling_cpu"])
    return out


def normalised_cpu_speedup(alone: dict, cluster: dict):
    """The CPU-time speed-up with the host's speed taken out: each mode's CPU per unit of its
    own model-stage CPU (the same arithmetic in both), times the model work's ratio. On a
    shared host one CPU second buys 20% more or less work from one run to the next (an
    SMT sibling, the clock), which moves the plain CPU ratio by as much; the model stage
    slows with the rest, so the overhead around it is what this compares. None if not measured."""
    each, models = cluster.get("process_cpu_each_s") or [], cluster.get("model_cpu_each_s") or []
    counts = cluster.get("classified_each_timed") or []
    alone_model = (alone.get("stage_cpu_seconds") or {}).get("model")
    alone_count = sum(alone.get("classified_each_timed") or alone.get("classified_each") or [])
    if not (each and len(models) == len(each) == len(counts) and alone_model and alone_count):
        return None
    k = max(range(len(each)), key=lambda i: each[i])  # the busier process
    if not (models[k] and counts[k]):
        return None
    return (alone["process_cpu_s"] / alone_model) / (each[k] / models[k]) * (alone_count / counts[k])


def print_scaling(ceiling: dict, flow: dict) -> None:
    if "error" in ceiling:
        print(f"\nTwo-core ceiling: not measured: {ceiling['error']}")
        return
    print(f"\nTwo-core ceiling (pure fp32 matmul, each process pinned, {ceiling['rounds']} alternating rounds, "
          f"load average {ceiling['loadavg'][0]:.1f} -> {ceiling['loadavg'][1]:.1f}; {ceiling['cpu']}): "
          f"one {ceiling['one_gflops']:.1f} GFLOP/s, two {ceiling['two_gflops']:.1f}, ceiling "
          f"{ceiling['ceiling']:.2f}x (per CPU second {ceiling['ceiling_cpu']:.2f}x)")
    for key, r in flow.items():
        verdict = "met" if r["of_ceiling"] >= 0.9 else "MISSED"
        print(f"  {key}: {r['speedup']:.2f}x the one-process flow = {r['of_ceiling']:.0%} of the ceiling "
              f"(target >= 90%: {verdict}; measured at other times than the ceiling, so the host's load differs)")
        if "cpu_speedup" in r:
            verdict = "met" if r["cpu_of_ceiling"] >= 0.9 else "MISSED"
            print(f"    on CPU time (one process's CPU / the busier cluster process's): {r['cpu_speedup']:.2f}x = "
                  f"{r['cpu_of_ceiling']:.0%} of the per-CPU-second ceiling ({verdict})")
        if "norm_speedup" in r:
            verdict = "met" if r["norm_of_ceiling"] >= 0.9 else "MISSED"
            print(f"    on CPU time per model CPU second (the host's speed drift between modes taken out): "
                  f"{r['norm_speedup']:.2f}x = {r['norm_of_ceiling']:.0%} of the per-CPU-second ceiling ({verdict})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    print_scaling(two_core_ceiling(args.seconds, args.rounds), {})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
