"""Omni alone, for the flow benchmark: alerts/s on one thread per precision, on the bundled alerts' real stamps."""

from __future__ import annotations

import time


def omni_rates(seconds: float = 8.0, batch: int = 32) -> dict:
    """Omni (random weights with a trained-looking layer scale: no Omni checkpoint is
    shipped) on the bundled ZTF alerts with their real reference stamps: alerts/s on
    one thread in fp32 and in each opt-in precision, and the largest probability
    change the precision causes on those alerts."""
    import copy

    import numpy as np
    import torch

    from models.oracle.loading import configure_inference
    from models.oracle.networks import build_oracle, predict_proba
    from operators.oracle.steps import pad
    from operators.oracle.store import EmbeddedStore
    from operators.oracle.surveys import ZTF
    from operators.oracle.ztf_inputs import ztf_inputs

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_oracle("omni")
    state = model.state_dict()
    for key in state:
        if key.endswith(".gamma"):
            state[key] = torch.full_like(state[key], 0.5)
    model.load_state_dict(state)
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
    static = np.stack([x.static for x in inputs])
    stamps = np.stack([x.stamp for x in inputs])
    zero = int((~stamps.reshape(len(stamps), -1).any(axis=1)).sum())
    idx = np.arange(batch) % len(inputs)
    out = {"alerts": len(inputs), "zero_stamps": zero, "batch": batch}
    fp32 = predict_proba(model, ts, lengths, static, stamps)
    for precision in ("fp32", "bf16"):
        m = copy.deepcopy(model)
        configure_inference(m, precision, "cpu")
        probs = predict_proba(m, ts, lengths, static, stamps)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            predict_proba(m, ts[idx], lengths[idx], static[idx], stamps[idx])
            n += batch
        out[precision] = {"alerts_per_s": n / (time.perf_counter() - t0),
                          "max_abs_dp": float(np.abs(probs - fp32).max())}
    return out
