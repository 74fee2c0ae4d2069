"""A synthetic labelled pool of VRA feature rows (`synthetic:N` in the experiments).

Made-up class-conditional feature distributions: a pool on which the loop can be
exercised, not a model of the ZTF alert stream. Its own module so that the table
readers (tables.py) and the experiments (experiments.py) both import it downward.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd

from models.vetting.classifier import LABELS
from models.vetting.feature_contract import FEATURE_COLUMNS


# Class-conditional generators, one row per physical kind. Values are rough
# and chosen to overlap: they make a pool on which the loop can be exercised,
# not a model of the ZTF alert stream.
#            ndets  sep(")     g mag       amp    slope(mag/d)  chi2  colour g-r  ebv
_KINDS = {
    "extragal": (8, (1.2, 0.8), (18.8, 1.0), 0.8, (0.04, 0.04), 1.5, (0.10, 0.25), 0.05),
    "gal": (6, (0.25, 0.6), (18.0, 1.5), 1.2, (0.02, 0.08), 2.0, (0.55, 0.35), 0.12),
    "varstar": (30, (0.25, 0.6), (17.5, 1.3), 0.5, (0.00, 0.02), 3.0, (0.60, 0.30), 0.12),
    "agn": (25, (0.25, 0.6), (19.0, 0.8), 0.25, (0.00, 0.005), 1.2, (0.30, 0.20), 0.04),
    "bogus": (1.5, (2.0, 1.0), (19.5, 0.8), 0.2, (0.00, 0.05), 0.5, (0.00, 0.50), 0.06),
}
_DEFAULT_MIX = {"extragal": 0.35, "gal": 0.12, "varstar": 0.23, "agn": 0.10, "bogus": 0.10, "real": 0.10}


def synthetic_pool(n: int, seed: int = 0, mix: Optional[dict[str, float]] = None) -> pd.DataFrame:
    """A made-up labelled pool: `candid, objectId`, the 21 feature columns, `label`.

    Each label draws its features from a kind in `_KINDS` (`real` from a
    random astrophysical kind). Light-curve fits are NaN below 3 detections
    and every r-band feature is NaN for a quarter of rows, as in real tables,
    so the classifier's NaN handling is exercised. Deterministic in `seed`.
    """
    rng = np.random.default_rng(seed)
    mix = mix or _DEFAULT_MIX
    unknown = set(mix) - set(LABELS)
    if unknown:
        raise ValueError(f"mix has unknown labels {sorted(unknown)}; valid: {list(LABELS)}")
    names = list(mix)
    p = np.array([mix[k] for k in names], dtype=float)
    labels = rng.choice(names, size=n, p=p / p.sum())
    kinds = np.where(labels == "real", rng.choice(["extragal", "gal", "varstar", "agn"], size=n), labels)
    col: dict[str, np.ndarray] = {c: np.full(n, np.nan) for c in FEATURE_COLUMNS}
    for kind, (ndet, sep, mag, amp, slope, chi2, colour, ebv) in _KINDS.items():
        m = kinds == kind
        k = int(m.sum())
        if not k:
            continue
        nd = 1 + rng.poisson(ndet, k)
        col["ndets"][m] = nd
        col["nnondets"][m] = rng.poisson(0.8 * nd + 3)
        if kind == "extragal":  # offset from the host nucleus, a fifth of them nuclear
            s = rng.lognormal(np.log(sep[0]), sep[1], k)
            col["sep_arcsec"][m] = np.where(rng.random(k) < 0.2, np.abs(rng.normal(0, 0.3, k)), s)
        elif kind == "bogus":
            col["sep_arcsec"][m] = rng.uniform(0, 6, k)
        else:
            col["sep_arcsec"][m] = rng.lognormal(np.log(sep[0]), sep[1], k)
        g = rng.normal(mag[0], mag[1], k)
        a = rng.lognormal(np.log(amp), 0.6, k)
        col["median"][m] = g
        col["amplitude"][m] = a
        col["median_absolute_deviation"][m] = a * rng.uniform(0.15, 0.4, k)
        col["linear_fit_slope"][m] = rng.normal(slope[0], slope[1], k)
        col["linear_fit_slope_sigma"][m] = np.abs(rng.normal(0.01, 0.005, k)) + 0.05 / np.sqrt(nd)
        col["linear_fit_reduced_chi2"][m] = rng.lognormal(np.log(chi2), 0.8, k)
        col["dets_median"][m] = g + rng.normal(0, 0.1, k)
        col["dets_std"][m] = col["median_absolute_deviation"][m] * 1.48 + np.abs(rng.normal(0, 0.05, k))
        col["medianr_"][m] = g - rng.normal(colour[0], colour[1], k)
        col["amplituder_"][m] = a * rng.uniform(0.7, 1.1, k)
        col["median_absolute_deviationr_"][m] = col["amplituder_"][m] * rng.uniform(0.15, 0.4, k)
        col["linear_fit_sloper_"][m] = col["linear_fit_slope"][m] + rng.normal(0, 0.01, k)
        col["linear_fit_slope_sigmar_"][m] = col["linear_fit_slope_sigma"][m] * rng.uniform(0.8, 1.2, k)
        col["linear_fit_reduced_chi2r_"][m] = col["linear_fit_reduced_chi2"][m] * rng.lognormal(0, 0.3, k)
        col["ebv"][m] = rng.lognormal(np.log(ebv), 0.9, k)
        col["drb"][m] = rng.beta(2, 3, k) if kind == "bogus" else rng.beta(10, 0.6, k)
    col["ra"] = rng.uniform(0, 360, n)
    col["dec"] = np.degrees(np.arcsin(rng.uniform(-0.5, 1.0, n)))  # ZTF sky: north of -30 deg
    few = col["ndets"] < 3
    for c in ("linear_fit_slope", "linear_fit_slope_sigma", "linear_fit_reduced_chi2",
              "linear_fit_sloper_", "linear_fit_slope_sigmar_", "linear_fit_reduced_chi2r_"):
        col[c][few] = np.nan
    no_r = rng.random(n) < 0.25
    for c in FEATURE_COLUMNS:
        if c.endswith("r_"):
            col[c][no_r] = np.nan
    table = pd.DataFrame(col)
    table = table.reindex(columns=list(FEATURE_COLUMNS))
    table.insert(0, "objectId", [f"SYN{seed:03d}{i:07d}" for i in range(n)])
    table.insert(0, "candid", np.arange(n, dtype=np.int64) + 10**12 * (seed + 1))
    table["label"] = labels
    return table


# --------------------------------------------------------------------------
# The grid
# --------------------------------------------------------------------------
