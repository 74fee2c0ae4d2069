"""Throughput of the ORACLE ZTF models on one thread: batched vs one alert at a time.

Usage: python bench/bench_model.py [--min-len 5] [--max-len 30] [--batch 256] [--seconds 3] [--omni [WEIGHTS]]

With `--omni` it also times the Omni model (light curve + reference stamp;
randomly initialised unless a checkpoint is given: the time does not depend on
the weights) and splits its time between the light-curve and image branches.

Light-curve lengths are drawn uniformly from [min-len, max-len] (the recurrent
network's cost grows linearly with length, so quote the range with the figure).
Prints alerts/s for predict_proba on batches of `--batch` and on single alerts.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.oracle.loading import load_oracle  # noqa: E402
from models.oracle.networks import build_oracle, predict_proba  # noqa: E402
from bench.measure import cpu_line  # noqa: E402


def make_alerts(n: int, min_len: int, max_len: int, seed: int = 0):
    """n synthetic ZTF-like alerts: ts [n, max_len, 5] zero-padded, lengths [n], static [n, 30]."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, max_len + 1, n)
    ts = np.zeros((n, max_len, 5), np.float32)
    for i, k in enumerate(lengths):
        t = np.sort(rng.uniform(0, 60, k))
        ts[i, :k] = np.column_stack([t - t[0], rng.normal(19, 1, k), rng.uniform(0.02, 0.3, k),
                                     rng.choice([0.476, 0.6215], k), np.ones(k)])
    static = rng.normal(size=(n, 30)).astype(np.float32)
    return ts, lengths, static


def rate(fn, n_items: int, seconds: float) -> float:
    fn()  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        done += n_items
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-len", type=int, default=5)
    parser.add_argument("--max-len", type=int, default=30)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--omni", nargs="?", const="random", default=None,
                        help="also time Omni (a checkpoint path, or nothing for random weights)")
    args = parser.parse_args()

    torch.set_num_threads(1)
    model = load_oracle(ROOT / "data" / "best_model_f1_ztf.pth")
    ts, lengths, static = make_alerts(args.batch, args.min_len, args.max_len)
    batch_ts = ts[:, : lengths.max()]

    batched = rate(lambda: predict_proba(model, batch_ts, lengths, static), args.batch, args.seconds)
    it = iter(range(10**12))

    def one():
        i = next(it) % args.batch
        predict_proba(model, ts[i : i + 1, : lengths[i]], lengths[i : i + 1], static[i : i + 1])

    single = rate(one, 1, args.seconds)
    print(f"CPU: {cpu_line()}")
    print(f"ORACLE BTSv2, 1 thread, lengths U[{args.min_len},{args.max_len}] (mean {lengths.mean():.1f})")
    print(f"  batched ({args.batch}): {batched:8.0f} alerts/s")
    print(f"  one at a time:  {single:8.0f} alerts/s")
    if args.omni:
        bench_omni(args, batch_ts, ts, lengths, static)


def bench_omni(args, batch_ts, ts, lengths, static) -> None:
    omni = build_oracle("omni") if args.omni == "random" else load_oracle(args.omni, "omni")
    stamps = np.random.default_rng(1).normal(size=(args.batch, 3, 63, 63)).astype(np.float32)
    small = 32  # the image branch upsamples to 224x224: time it on a smaller batch
    batched = rate(lambda: predict_proba(omni, batch_ts[:small], lengths[:small], static[:small], stamps[:small]),
                   small, args.seconds)
    one = rate(lambda: predict_proba(omni, ts[:1, : lengths[0]], lengths[:1], static[:1], stamps[:1]), 1, args.seconds)
    with torch.inference_mode():
        st = torch.from_numpy(stamps[:small])
        image = rate(lambda: omni.image_spine.latent(st), small, args.seconds)
        lc = rate(lambda: omni.lc_md_spine.latent(torch.from_numpy(batch_ts[:small]),
                                                  torch.from_numpy(lengths[:small]), torch.from_numpy(static[:small])),
                  small, args.seconds)
    print("ORACLE Omni (BTSv2 + ConvNeXt-pico on the 63x63 stamp upsampled to 224x224), 1 thread")
    print(f"  batched ({small}):  {batched:8.0f} alerts/s")
    print(f"  one at a time:  {one:8.0f} alerts/s")
    print(f"  time split: image branch {1e3 / image:.2f} ms/alert, light-curve branch {1e3 / lc:.3f} ms/alert")


if __name__ == "__main__":
    main()
