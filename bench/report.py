"""The flow benchmark's report: the printed tables, the PNG chart and the targets' verdicts."""

from __future__ import annotations

import os
from pathlib import Path


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
            for precision in ("fp32", "bf16", "int8"):
                if precision in r:
                    rates[f"omni {precision}"] = r[precision]["alerts_per_s"]
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
        for precision in ("bf16", "int8"):
            if precision in o:
                r = o[precision]
                add(f"Omni {precision} (opt-in) ≥ 50 alerts/s per core", f"{r['alerts_per_s']:.1f} alerts/s, max |Δp| "
                    f"{r['max_abs_dp']:.1e} on {o['alerts']} bundled alerts (zero stamps instead: "
                    f"{o.get('image_dp', float('nan')):.1e}; weights {o.get('weights', 'random')})",
                    r["alerts_per_s"] >= 50)
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
