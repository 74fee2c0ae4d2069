"""The flow benchmark's report: the printed tables, the PNG chart and the targets' verdicts."""

from __future__ import annotations

import os
from pathlib import Path


# ---------------------------------------------------------------- report

MODE_ORDER = ("embedded", "embedded-onnx", "embedded-results", "cluster-embedded", "embedded-shards", "cluster-embedded-shards", "embedded-loop",
              "kafka", "kafka-shards", "baseline", "workers2", "cluster2", "cluster2-shards", "memory")
STAGES = ("input", "parse", "enrich", "features", "model", "outputs", "commit")


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
    if "find_alert" in st:  # a per-message loop (baseline on the servers, embedded-loop)
        return {"input": st["poll"], "parse": st["parse"], "enrich": st["find_alert"] + st["find_aux"],
                "features": st["inputs"], "model": st["model"], "outputs": st["csv"], "commit": st["commit"]}
    return {"input": st.get("source", 0.0), "parse": st.get("parse", 0.0), "enrich": st.get("enrich", 0.0),
            "features": st.get("inputs", 0.0), "model": st.get("model", 0.0), "outputs": st.get("outputs", 0.0)}


def cpu_split(r: dict) -> dict | None:
    """µs of CPU per message by stage, with 'framework' = the process's CPU minus its stages'
    (embedded flow modes: thread CPU per stage from bench/stages.py). A per-message loop is
    one thread that never waits on a server, so its wall split is its CPU split. None for
    the server modes (bytewax's step metrics are wall time)."""
    cs = r.get("stage_cpu_seconds")
    label = r.get("label", "")
    if not cs and label == "embedded-loop":
        cs = r.get("stage_seconds")
    if not cs or not r.get("cpu_us_per_msg"):
        return None
    n = r.get("stage_messages") or r["messages"]
    split = unified_stages({"label": label, "stage_seconds": cs})
    out = {c: round(per_msg_us(split.get(c, 0.0), n), 1) for c in STAGES if c in split}
    out["framework"] = round(max(0.0, r["cpu_us_per_msg"] - sum(out.values())), 1)
    return out


def print_report(res: dict) -> None:
    pf = res["workload"]["pass_fraction"]
    modes = res["modes"]
    shards = res["settings"].get("alt_shards")
    names = {"embedded": "1 embedded store, 1 worker",
             "embedded-onnx": "  embedded, 1 worker, onnxruntime",
             "embedded-results": "  embedded + results topic+coll.",
             "cluster-embedded": "  embedded store, 2 processes",
             "embedded-shards": "  embedded, 1 worker, shards=S", "cluster-embedded-shards": "  embedded, 2 processes, shards=S",
             "embedded-loop": "  per-message loop, embedded",
             "kafka": "2 Kafka+Mongo, 1 worker", "baseline": "3 per-message baseline",
             "workers2": "4 Kafka+Mongo, -w 2", "cluster2": "4 Kafka+Mongo, 2 processes",
             "cluster2-shards": "  Kafka+Mongo, 2 procs, shards=S", "kafka-shards": "  Kafka+Mongo, 1 worker, shards=S"}
    names = {k: v.replace("shards=S", f"shards={shards}") for k, v in names.items()}
    print()
    print(f"Workload: {res['workload']['n']} messages from {res['workload']['templates']} real ZTF alerts, "
          f"{100 * pf:.1f}% pass the filter; ORACLE BTSv2 weights; batch {res['settings']['batch_size']}, "
          f"timeout {res['settings']['batch_timeout_s']} s, {(str(res['settings']['shards']) + ' shards') if res['settings']['shards'] else 'one batch key per worker'}, torch threads 1")
    print(f"Machine: {os.cpu_count()} cores shared; load average {res['machine']['loadavg_start']:.2f} at start, "
          f"{res['machine']['loadavg_end']:.2f} at end; calibration (fixed work: decode + inputs + forward pass "
          f"of 100 alerts) {res['machine']['calibration_ms_start']:.1f} ms at start, "
          f"{res['machine']['calibration_ms_end']:.1f} ms at end (higher = slower host; 'calib ms' per mode)")
    print(f"CPU: {res['machine'].get('cpu', 'not recorded')} (every figure below was measured on it)")
    print()
    head = (f"{'mode':32} {'msgs/s':>8} {'classified/s':>12} {'steady cl/s':>11} {'rows':>7} {'window s':>8} {'p50 lat s':>9} "
            f"{'p99 lat s':>9} {'peak RSS MB':>14} {'flow cores':>10} {'store cores':>11} {'others':>6} {'calib ms':>8}")
    print(head)
    print("-" * len(head))
    for key in MODE_ORDER[:-1]:
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
    for key in MODE_ORDER:
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
    for key, how in (("baseline", "find_one"), ("embedded-loop", "dict lookup")):
        b = modes.get(key)
        if b and "error" not in b:
            st, n = b["stage_seconds"], b["messages"]
            print(f"  {key} enrich = {how} alerts {per_msg_us(st['find_alert'], n):.1f} µs + {how} aux "
                  f"{per_msg_us(st['find_aux'], n):.1f} µs (whole documents, as upstream; per message, "
                  f"{100 * b['rows'] / max(1, n):.0f}% of messages pass); commit {b['commit']}")
    print()
    print("CPU per message, µs (CPU time, unaffected by waiting; embedded modes split by stage, 'framework' = the")
    print("process's CPU minus its stages: bytewax operators, exchange between workers, batching, logging):")
    cols = ("input", "parse", "enrich", "features", "model", "outputs", "framework")
    head = f"{'mode':32} " + " ".join(f"{c:>9}" for c in cols) + f" {'flow CPU':>9} {'store CPU':>9}"
    print(head)
    print("-" * len(head))
    for key in MODE_ORDER:
        r = modes.get(key)
        if not r or "error" in r:
            continue
        split = cpu_split(r) or {}
        vals = [split.get(c) for c in cols]
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
    o = modes.get("omni")
    if o and "error" not in o:
        print()
        print(f"Omni alone (random weights, {o.get('alerts', '?')} bundled alerts with their real stamps, "
              f"{o.get('zero_stamps', '?')} all-zero; batch {o.get('batch', '?')}, 1 thread; "
              f"CPU {res['machine'].get('cpu', 'not recorded')}): "
              + "; ".join(f"{k} {v['alerts_per_s']:.1f} alerts/s" + (f" (max |Δp| {v['max_abs_dp']:.1e})"
                                                                     if k != "fp32" and "max_abs_dp" in v else "")
                          for k, v in omni_rows(o).items()))
        if "image_dp" in o:
            print(f"  for scale: all stamps replaced by zeros moves a probability by up to {o['image_dp']:.1e} "
                  f"(weights: {o.get('weights', 'random')})")
    elif o:
        print(f"\nOmni: FAILED: {o['error'][:200]}")
    if modes.get("backends") and "error" not in modes["backends"]:
        from bench.backends import print_backends

        print_backends(modes["backends"])
    elif modes.get("backends"):
        print(f"\nBackends: FAILED: {modes['backends']['error'][:200]}")
    issue29(res)
    print()
    print("Targets (issue 19):")
    for t in res["targets"]:
        print(f"  [{t['verdict']:^7}] {t['what']}: {t['value']}")
    print()


def omni_rows(o: dict) -> dict[str, dict]:
    """The measured variants of the Omni part (fp32, bf16, int8, a GPU, ...): name -> figures."""
    return {k: v for k, v in o.items() if isinstance(v, dict) and "alerts_per_s" in v}


GPU_PREFIXES = ("cuda", "mps", "gpu")


def chart(res: dict, path: Path) -> None:
    """Throughput per mode (left, log scale) and µs per message by stage as stacked bars:
    CPU per stage with the framework's share where the stages' CPU is measured (embedded
    flow modes, the embedded per-message loop; middle), wall time per stage for the
    server modes (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = {k: res["modes"][k] for k in [*MODE_ORDER, "omni"] if k in res["modes"] and "error" not in res["modes"][k]}
    rates = {}
    for k, r in m.items():
        if k == "omni":
            rates.update({f"omni {name}": v["alerts_per_s"] for name, v in omni_rows(r).items()})
        elif k != "memory" and r.get("msgs_per_s"):
            rates[k] = r["msgs_per_s"]
    cpu_rows, wall_rows = {}, {}
    for k, r in m.items():
        split = cpu_split(r)
        if split:
            cpu_rows[k] = split
        elif r.get("stage_us_per_message"):
            wall_rows[k] = r["stage_us_per_message"]
    panels = [(rows, title) for rows, title in (
        (cpu_rows, "CPU µs per message by stage\n(framework = process CPU − stages)"),
        (wall_rows, "wall µs per message by stage, summed over workers\n(server modes: bytewax + alertflow metrics)"))
        if rows]
    fig, axes = plt.subplots(1, 1 + len(panels), figsize=(6 + 5.5 * len(panels), 5), squeeze=False)
    axes = axes[0]
    a = axes[0]
    a.barh(list(rates), list(rates.values()), color="tab:blue")
    for y, v in enumerate(rates.values()):
        a.text(v, y, f" {v:,.0f}", va="center", fontsize=8)
    a.set_xscale("log")
    a.set_xlabel("messages (alerts for Omni) per second, log scale")
    a.invert_yaxis()
    colors = dict(zip((*STAGES, "framework"), plt.get_cmap("tab10").colors))
    for b, (rows, title) in zip(axes[1:], panels):
        left = [0.0] * len(rows)
        for stage in (*STAGES, "framework"):
            vals = [rows[k].get(stage, 0.0) for k in rows]
            if any(vals):
                b.barh(list(rows), vals, left=left, label=stage, color=colors[stage])
                left = [x + y for x, y in zip(left, vals)]
        b.set_xlabel(title)
        b.invert_yaxis()
        b.legend(fontsize=8)
    fig.suptitle(f"bench_flow {res['started']}: N={res['workload']['n']:,}, "
                 f"{res['machine']['cores']} shared cores (ratios from one run)\n{res['machine'].get('cpu', '')}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def targets(res: dict) -> list[dict]:
    """Every target of issue 19, met / MISSED with its figures ('n/a' when its part did not
    run; 'info' for figures reported beside a target)."""
    m = {k: v for k, v in res["modes"].items() if "error" not in v}
    ratios = res["ratios"]
    out = []

    def add(what, value, ok):
        verdict = ok if isinstance(ok, str) else ("n/a" if ok is None else ("met" if ok else "MISSED"))
        out.append({"what": what, "value": value, "verdict": verdict})

    def rate(key):
        return m[key].get("msgs_per_s") or float("nan")

    # Item 2: the flow on one core, and two processes.
    if "embedded" in m:
        add("flow ≥ 3,000 messages/s on one core (embedded store, BTSv2)",
            f"{rate('embedded'):,.0f} messages/s ({m['embedded'].get('rows_per_s', 0):,.0f} classified/s)",
            rate("embedded") >= 3000)
    else:
        add("flow ≥ 3,000 messages/s on one core (embedded store, BTSv2)", "part 'embedded' not run", None)
    if "embedded-results" in m and "embedded" in m:  # issue 25: the results topic + collection beside the CSV
        ratio = ratios["results_outputs_over_csv_only"] = rate("embedded-results") / rate("embedded")
        cpu = (m["embedded-results"].get("cpu_us_per_msg") or 0) - (m["embedded"].get("cpu_us_per_msg") or 0)
        add("  results topic + collection on ÷ CSV only (embedded flow, tansu + nx-27017)",
            f"{ratio:.2f}× ({rate('embedded-results'):,.0f} vs {rate('embedded'):,.0f} messages/s; "
            f"+{cpu:.0f} µs CPU per message in the flow process; per sink: bench/results_sinks.py)", "info")
    if "cluster-embedded" in m and "embedded" in m:
        ratio = ratios["cluster_embedded_over_embedded"] = rate("cluster-embedded") / rate("embedded")
        cores = sum((m["cluster-embedded"].get("cpu") or {}).get("cores", {}).values())
        add("two processes ≥ 1.8× one (embedded store)", f"{ratio:.2f}× (the 2 processes got {cores:.2f} cores; "
            f"{rate('cluster-embedded'):,.0f} vs {rate('embedded'):,.0f} messages/s)", ratio >= 1.8)
        each = m["cluster-embedded"].get("process_cpu_each_s") or []
        if m["embedded"].get("process_cpu_s") and len(each) == 2 and max(each) > 0:
            # Each process on a core of its own: the busier one sets the pace.
            proj = ratios["cluster_embedded_projected_2_free_cores"] = m["embedded"]["process_cpu_s"] / max(each)
            split = m["cluster-embedded"].get("classified_each") or []
            add("  … projected on 2 free cores (CPU of 1 process ÷ CPU of the busier of 2)",
                f"{proj:.2f}× (CPU s {' + '.join(f'{c:.1f}' for c in each)} vs {m['embedded']['process_cpu_s']:.1f}; "
                f"model work split {'/'.join(str(c) for c in split)})", "info")
    else:
        add("two processes ≥ 1.8× one (embedded store)", "parts 'embedded', 'cluster-embedded' not both run", None)
    alt = res["settings"].get("alt_shards")
    for two, one, key in (("cluster-embedded-shards", "embedded-shards", "cluster_embedded_over_embedded_alt_shards"),
                          ("cluster2-shards", "kafka-shards", "cluster2_alt_shards_over_kafka")):
        if two in m and one in m:
            ratios[key] = rate(two) / rate(one)
            add(f"  2 processes ÷ 1 with ORACLE_SHARDS={alt} ({two})", f"{ratios[key]:.2f}× (model work split "
                f"{'/'.join(map(str, m[two].get('classified_each') or []))})", "info")
    if "embedded-onnx" in m and "embedded" in m:
        ratios["embedded_onnx_over_embedded"] = rate("embedded-onnx") / rate("embedded")
        add("  ORACLE_BACKEND=onnxruntime ÷ torch (embedded store, 1 worker)",
            f"{ratios['embedded_onnx_over_embedded']:.2f}× ({rate('embedded-onnx'):,.0f} vs "
            f"{rate('embedded'):,.0f} messages/s)", "info")
    # Item 4: the per-message design.
    if "embedded-loop" in m and "embedded" in m:
        ratio = ratios["embedded_over_loop"] = rate("embedded") / rate("embedded-loop")
        add("flow ≥ 10× the per-message loop (embedded store: dict lookups, no servers)",
            f"{ratio:.1f}× ({rate('embedded'):,.0f} vs {rate('embedded-loop'):,.0f} messages/s)", ratio >= 10)
    else:
        add("flow ≥ 10× the per-message loop (embedded store)", "parts 'embedded', 'embedded-loop' not both run", None)
    if "kafka" in m and "baseline" in m:
        ratio = ratios["kafka_over_baseline"] = rate("kafka") / rate("baseline")
        store = m["kafka"].get("store_cpu_us_per_msg")
        add("  flow ÷ per-message design on the servers (find_one per message; the store bounds both)",
            f"{ratio:.1f}× ({rate('kafka'):,.0f} vs {rate('baseline'):,.0f} messages/s"
            + (f"; nx-27017 CPU {store:,.0f} µs per flow message)" if store else ")"), "info")
    if "workers2" in m and "kafka" in m:
        ratios["workers2_over_kafka"] = rate("workers2") / rate("kafka")
        add("  -w 2 ÷ 1 worker (servers)", f"{ratios['workers2_over_kafka']:.2f}×", "info")
    if "cluster2" in m and "kafka" in m:
        ratios["cluster2_over_kafka"] = rate("cluster2") / rate("kafka")
        add("  2 processes ÷ 1 (servers)", f"{ratios['cluster2_over_kafka']:.2f}×", "info")
    # Item 1: Omni.
    o = m.get("omni")
    variants = omni_rows(o) if o else {}
    if "fp32" in variants:
        add("Omni fp32 ≥ 25 alerts/s per core", f"{variants['fp32']['alerts_per_s']:.1f} alerts/s "
            f"(1 thread, batch {o.get('batch', '?')})", variants["fp32"]["alerts_per_s"] >= 25)
    else:
        add("Omni fp32 ≥ 25 alerts/s per core", "part 'omni' not run" if not o else "no fp32 figure", None)
    # fp32+compile (ORACLE_COMPILE): same probabilities as fp32, so not a precision; the
    # fp32 target above stays on eager, the default, and this says what compiling adds.
    compiled = o.get("fp32+compile") if o else None
    if compiled and "alerts_per_s" in compiled:
        vs = (f", {compiled['alerts_per_s'] / variants['fp32']['alerts_per_s']:.2f}× eager fp32"
              if "fp32" in variants else "")
        add("  Omni fp32+compile (opt-in ORACLE_COMPILE; same probabilities)",
            f"{compiled['alerts_per_s']:.1f} alerts/s{vs}, max |Δp| {fmt(compiled.get('max_abs_dp'), '.1e')}, "
            f"compiled at start-up in {fmt(compiled.get('compile_s'), '.0f')} s", "info")
    elif compiled:
        add("  Omni fp32+compile (opt-in ORACLE_COMPILE)", f"not measured: {compiled.get('error', '?')[:160]}", "info")
    opt_in = {k: v for k, v in variants.items() if k not in ("fp32", "fp32+compile") and not k.startswith(GPU_PREFIXES)}
    for name, v in opt_in.items():
        dp = v.get("max_abs_dp")
        add(f"Omni {name} (opt-in) ≥ 50 alerts/s per core, with its max probability change",
            f"{v['alerts_per_s']:.1f} alerts/s, max |Δp| {fmt(dp, '.1e')} on {o.get('alerts', '?')} bundled alerts",
            v["alerts_per_s"] >= 50)
    if o and not opt_in:
        add("Omni opt-in precision ≥ 50 alerts/s per core", "no opt-in precision measured", None)
    gpus = {k: v for k, v in variants.items() if k.startswith(GPU_PREFIXES)}
    gpu_here = res["machine"].get("gpu")
    for name, v in gpus.items():
        add(f"Omni on {name}", f"{v['alerts_per_s']:.1f} alerts/s", "info")
    if not gpus:
        add("Omni on a GPU", f"{gpu_here} present, not measured by bench/omni.py" if gpu_here else "no GPU here",
            "n/a")
    # Item 3: memory.
    kafka_peaks = {k: max(m[k].get("peak_rss_mb") or [0]) for k in ("kafka", "workers2", "cluster2") if k in m}
    emb_peaks = {k: max(m[k].get("peak_rss_mb") or [0]) for k in ("embedded", "memory") if k in m}
    if kafka_peaks:
        add("Kafka-mode peak RSS reported beside the embedded one (librdkafka prefetch bounded by default)",
            "peak RSS per process, MB: " + ", ".join(f"{k} {v:.0f}" for k, v in {**kafka_peaks, **emb_peaks}.items())
            + f" (N={res['workload']['n']:,})", True)
    else:
        add("Kafka-mode peak RSS reported beside the embedded one", "part 'kafka' not run", None)
    mem = m.get("memory")
    if mem:
        flat = abs(mem["growth_after_warmup_mb"]) <= max(20.0, 0.05 * mem["rss_end_mb"])
        add(f"memory flat over {mem['messages']:,} messages (embedded replay)",
            f"{mem['rss_start_mb']:.0f} → {mem['rss_end_mb']:.0f} MB; last quarter vs second quarter "
            f"{mem['growth_after_warmup_mb']:+.1f} MB", flat)
    return out


def issue29(res: dict) -> None:
    """Efficiency, two-core scaling against the host's ceiling, bursts (issue 29), when their parts ran."""
    modes = res["modes"]
    for key, printer in (("efficiency", "print_efficiency"), ("bursts", "print_bursts")):
        r = modes.get(key)
        if r and "error" not in r:
            module = __import__(f"bench.{key}", fromlist=[printer])
            getattr(module, printer)(r)
        elif r:
            print(f"\n{key}: FAILED: {r['error'][:200]}")
    r = modes.get("scaling")
    if r and "error" not in r:
        from bench.scaling import flow_scaling, print_scaling

        res["ratios"]["of_two_core_ceiling"] = flow_scaling(modes, r)
        print_scaling(r, res["ratios"]["of_two_core_ceiling"])
