"""Omni alone, for the flow benchmark: alerts/s on one thread per precision, on the bundled alerts' real stamps."""

from __future__ import annotations

import time

PRECISIONS = ("fp32", "bf16", "int8")  # fp32 first: the others' probability change is measured against it
WEIGHTS = ("random (seed 0), layer scale 0.5, image head N(0, 1/fan_in): no Omni checkpoint is shipped, "
           "so the changes are those of an untrained network")


def bundled_omni_inputs():
    """`(ts, lengths, static, stamps)` of the bundled ZTF alerts that have their aux document,
    with their real reference stamps (ORACLE's ZTF inputs, as the flow builds them)."""
    import numpy as np

    from operators.oracle.steps import pad
    from operators.oracle.store import EmbeddedStore
    from operators.oracle.surveys import ZTF
    from operators.oracle.ztf_inputs import ztf_inputs

    store = EmbeddedStore(ZTF.sample_dir, ZTF.collections)
    candids = list(store._alerts)
    docs = store.fetch(candids, sorted({d["objectId"] for d in store._alerts.values()}), True)
    inputs = []
    for c, alert in docs.alerts.items():
        aux = docs.aux.get(alert["objectId"])
        if aux is None:
            continue
        try:
            inputs.append(ztf_inputs(alert, aux, docs.cutouts.get(c), with_stamp=True))
        except Exception:
            continue
    ts, lengths = pad(inputs)
    return ts, lengths, np.stack([x.static for x in inputs]), np.stack([x.stamp for x in inputs])


def random_omni():
    """Omni with random weights that let the stamp matter: a trained-looking layer scale
    (0.5, not timm's 1e-6 init) and image-head Linear weights of std 1/sqrt(fan_in)
    (timm's std 0.02 shrinks the 16-d image latent to ~1e-3 over four layers, and
    with it any change a precision causes)."""
    import torch

    from models.oracle.networks import build_oracle

    torch.manual_seed(0)
    model = build_oracle("omni")
    state = model.state_dict()
    for key in state:
        if key.endswith(".gamma"):
            state[key] = torch.full_like(state[key], 0.5)
        elif key.startswith("image_spine.convnext.head.") and state[key].ndim == 2:
            state[key] = torch.randn_like(state[key]) * state[key].shape[1] ** -0.5
    model.load_state_dict(state)
    return model.eval()


def omni_rates(seconds: float = 8.0, batch: int = 32, precisions=PRECISIONS, compile: bool = True) -> dict:
    """Omni on the bundled ZTF alerts with their real reference stamps: alerts/s on one
    thread at batches of `batch` in each precision, and the largest probability change
    (any node, any alert) the precision causes against fp32 on those alerts. For scale,
    `image_dp`: the largest change of replacing every stamp by zeros (in fp32).
    `compile`: also "fp32+compile" (ORACLE_COMPILE=true), with `compile_s`, the seconds
    configure_inference took to compile and warm it up (inductor's on-disk cache makes a
    second start faster); without a working C++ compiler, its `error`."""
    import copy

    import numpy as np
    import torch

    from models.oracle.loading import configure_inference
    from models.oracle.networks import predict_proba

    torch.set_num_threads(1)
    model = random_omni()
    ts, lengths, static, stamps = bundled_omni_inputs()
    zero = int((~stamps.reshape(len(stamps), -1).any(axis=1)).sum())
    idx = np.arange(batch) % len(stamps)
    out = {"alerts": len(stamps), "zero_stamps": zero, "batch": batch, "weights": WEIGHTS}
    fp32 = predict_proba(model, ts, lengths, static, stamps)
    out["image_dp"] = float(np.abs(predict_proba(model, ts, lengths, static, 0 * stamps) - fp32).max())
    variants = [(p, False) for p in precisions] + ([("fp32", True)] if compile else [])
    for precision, compiled in variants:
        name = f"{precision}+compile" if compiled else precision
        m = copy.deepcopy(model)
        t0 = time.perf_counter()
        try:
            configure_inference(m, precision, "cpu", compile=compiled)
        except ValueError as exc:  # no C++ compiler for inductor: say so, measure the rest
            out[name] = {"error": str(exc)}
            continue
        compile_s = time.perf_counter() - t0
        probs = predict_proba(m, ts, lengths, static, stamps)
        predict_proba(m, ts[idx], lengths[idx], static[idx], stamps[idx])  # warm-up
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            predict_proba(m, ts[idx], lengths[idx], static[idx], stamps[idx])
            n += batch
        out[name] = {"alerts_per_s": n / (time.perf_counter() - t0), "max_abs_dp": float(np.abs(probs - fp32).max())}
        if compiled:
            out[name]["compile_s"] = compile_s
    return out


if __name__ == "__main__":
    import json
    import sys

    from bench.measure import cpu_line

    print(json.dumps({"cpu": cpu_line(), **omni_rates(float(sys.argv[1]) if len(sys.argv) > 1 else 8.0)}, indent=1))
