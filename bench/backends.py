"""torch vs ONNX Runtime (ORACLE_BACKEND) on the same inputs, measured in one run.

    python bench/backends.py [--seconds 3] [--batch 256] [--omni-stamps 8]

For BTSv2 and LSST-lite (the shipped weights, the bundled real alerts repeated to
`--batch`, and one alert at a time) and Omni (random weights, `--omni-stamps` of the
bundled real stamps): model time per alert of each backend's `predict` as `classify`
calls it, on one thread (ORACLE_TORCH_THREADS=1; ONNX Runtime one intra-op thread,
sequential), the torch/ONNX Runtime time ratio (>1: ONNX Runtime faster) and the
largest probability difference between them. The two backends take turns in short
rounds so that both see the same machine load; CPU time (process) is the figure,
wall time is given beside it. The CPU's features (models/oracle/cpu_features.py) are printed with the figures.
Also the `backends` part of bench/bench_flow.py.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

def bundled_inputs(survey, with_stamp: bool = False):
    """`[ts, lengths, static, stamps]` of the bundled sample's alerts that make inputs (static and
    stamps None where the survey's model has none), as the flow builds them."""
    import numpy as np

    from operators.oracle.steps import pad
    from operators.oracle.store import EmbeddedStore

    store = EmbeddedStore(survey.sample_dir, survey.collections)
    candids = sorted(store._alerts)
    docs = store.fetch(candids, sorted({d["objectId"] for d in store._alerts.values()}), with_stamp)
    inputs = []
    for c in candids:
        alert = docs.alerts[c]
        try:
            inputs.append(survey.build_inputs(alert, docs.aux.get(alert["objectId"]), docs.cutouts.get(c), with_stamp))
        except ValueError:  # InputError: no aux document, no usable point
            continue
    ts, lengths = pad(inputs)
    static = np.stack([x.static for x in inputs]) if inputs[0].static is not None else None
    return [ts, lengths, static, np.stack([x.stamp for x in inputs]) if with_stamp else None]


def _take(inputs, idx):
    ts, lengths = inputs[0][idx], inputs[1][idx]
    return [ts[:, :int(lengths.max())], lengths] + [None if a is None else a[idx] for a in inputs[2:]]


def compare(model, weights: Path, survey_name: str, inputs, batch: int, seconds: float, cache: Path,
            rounds: int = 6) -> dict:
    """Both backends on batches of `batch` alerts drawn in turn from `inputs`."""
    import numpy as np

    from models.oracle.networks import predict_proba
    from models.oracle.onnx_backend import onnxruntime_predict

    ort_predict = onnxruntime_predict([(model, weights)], survey_name, threads=1, cache_dir=cache)
    n = len(inputs[1])
    batches = [_take(inputs, np.arange(i, i + batch) % n) for i in range(0, max(n, batch), batch)]
    dp = max(float(np.abs(ort_predict(model, *b) - predict_proba(model, *b)).max()) for b in batches)
    spent = {"torch": [0.0, 0.0, 0], "onnxruntime": [0.0, 0.0, 0]}  # cpu s, wall s, alerts
    for _ in range(rounds):
        for name, predict in (("torch", predict_proba), ("onnxruntime", ort_predict)):
            predict(model, *batches[0])  # warm-up of this round
            c0, w0, k = time.process_time(), time.perf_counter(), 0
            while time.perf_counter() - w0 < seconds / rounds or k == 0:
                predict(model, *batches[k % len(batches)])
                k += 1
            spent[name][0] += time.process_time() - c0
            spent[name][1] += time.perf_counter() - w0
            spent[name][2] += k * batch
    out = {"batch": batch, "max_abs_dp": dp}
    for name, (cpu, wall, alerts) in spent.items():
        out[name] = {"cpu_us_per_alert": 1e6 * cpu / alerts, "wall_us_per_alert": 1e6 * wall / alerts}
    out["torch_over_onnxruntime"] = out["torch"]["cpu_us_per_alert"] / out["onnxruntime"]["cpu_us_per_alert"]
    return out


def backend_rates(seconds: float = 3.0, batch: int = 256, omni_stamps: int = 8) -> dict:
    """The figures of every network (see the module doc), with the CPU's flags."""
    import onnxruntime
    import torch

    from bench.omni import random_omni
    from models.oracle.loading import load_oracle
    from operators.oracle.surveys import LSST, ZTF

    torch.set_num_threads(1)
    from bench.measure import cpu_line

    res = {"cpu": cpu_line(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "threads": 1,
           "seconds": seconds, "networks": {}}
    with tempfile.TemporaryDirectory(prefix="bench_backends_") as tmp:
        cache = Path(tmp)
        for survey, label in ((ZTF, "BTSv2"), (LSST, "LSST-lite")):
            model = load_oracle(survey.weights, taxonomy=survey.taxonomy)
            inputs = bundled_inputs(survey)
            for b in (batch, 1):
                res["networks"][f"{label} batch {b}"] = compare(model, survey.weights, survey.name, inputs, b,
                                                               seconds, cache)
        omni = random_omni()
        weights = cache / "omni_random.pth"
        torch.save(omni.state_dict(), weights)
        inputs = bundled_inputs(ZTF, with_stamp=True)
        res["networks"][f"Omni fp32 batch {omni_stamps}"] = compare(omni, weights, "ZTF", inputs, omni_stamps,
                                                                    seconds, cache)
    return res


def print_backends(res: dict) -> None:
    print(f"\nBackends, torch {res['torch']} vs ONNX Runtime {res['onnxruntime']}, {res['threads']} thread, "
          f"CPU time per alert (wall in brackets); CPU {res['cpu']}")
    print(f"  {'network':24} {'torch µs':>16} {'onnxruntime µs':>18} {'torch/ort':>9} {'max |Δp|':>9}")
    for name, r in res["networks"].items():
        t, o = r["torch"], r["onnxruntime"]
        print(f"  {name:24} {t['cpu_us_per_alert']:>7.0f} ({t['wall_us_per_alert']:>6.0f}) "
              f"{o['cpu_us_per_alert']:>9.0f} ({o['wall_us_per_alert']:>6.0f}) {r['torch_over_onnxruntime']:>9.2f} "
              f"{r['max_abs_dp']:>9.1e}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="time per network and batch size, both backends")
    ap.add_argument("--batch", type=int, default=256, help="alerts per batch (ORACLE_BATCH_SIZE's default)")
    ap.add_argument("--omni-stamps", type=int, default=8, help="alerts (stamps) per Omni batch")
    args = ap.parse_args(argv)
    print_backends(backend_rates(args.seconds, args.batch, args.omni_stamps))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
