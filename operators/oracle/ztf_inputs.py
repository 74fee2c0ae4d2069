"""ORACLE inputs for one ZTF alert, from its BOOM documents.

Inputs: the `ZTF_alerts` document (`candidate`, `coordinates.l/b`), the
`ZTF_alerts_aux` document of its object (`prv_candidates`, which BOOM stores
with the current candidate included, and `cross_matches`), and optionally the
`ZTF_alerts_cutouts` document (reference stamp, for image models).

Outputs (`ModelInputs`):
- `ts` (T×5, float32): `[jd − first jd, magpsf, sigmapsf, band wavelength (µm), 1]`
  for detections only (magpsf present) of programid 1 or 2, taken no later
  than the alert itself (BOOM's aux document holds every detection ingested so
  far: a lagging or replayed flow would otherwise see the future), within 180
  days of the newest point, duplicates of (jd, band, mag) removed, sorted by jd. The
  last column flags a detection: ORACLE was trained with 1 there (the upstream
  bridge leaves it 0, which the model never saw).
- `static` (30, float32) in `STATIC_FEATURES` order; missing, NaN or −999 → −9.
- `stamp` (3×63×63, float32, image models only) and `stamp_status`: see
  `operators/oracle/stamps.py`; a missing or unusable template gives zeros, not an error.
  `l` is taken mod 360 because BOOM wraps it to (−180, 180] and ORACLE was
  trained on [0, 360).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

# InputError, ModelInputs, MISSING and clean are shared by every survey's builder (operators/oracle/inputs.py)
# and stay importable from here.
from operators.oracle.inputs import MISSING, InputError, ModelInputs, candidate_and_series, clean, time_series  # noqa: F401
from operators.oracle.inputs import number as _number

ZTF_BAND_WAVELENGTH_UM = {1: 0.476, 2: 0.6215, 3: 0.7545}  # fid: g, r, i
WINDOW_DAYS = 180.0

CANDIDATE_STATIC = (
    "sky", "sgscore1", "sgscore2", "distpsnr1", "distpsnr2", "fwhm", "diffmaglim",
    "ndethist", "nmtchps", "drb", "ncovhist", "chinr", "sharpnr", "scorr",
    "sgmag1", "srmag1", "simag1", "szmag1", "sgmag2", "srmag2", "simag2", "szmag2",
)
STATIC_FEATURES = ("l", "b", "W1mag", "W2mag", "W3mag", "W4mag", "W1-W3", "W2-W3") + CANDIDATE_STATIC

# What the builders read, so that stores fetch nothing else.
ALERT_FIELDS = ("objectId", "coordinates", *(f"candidate.{f}" for f in
                ("jd", "fid", "magpsf", "sigmapsf", "programid", "ra", "dec", *CANDIDATE_STATIC)))
AUX_FIELDS = ("prv_candidates", "cross_matches")
WISE_CATALOGS = ("AllWISE",)
WISE_MAGS = ("w1mpro", "w2mpro", "w3mpro", "w4mpro")


def light_curve(points: list[dict], until_jd: float = math.inf) -> np.ndarray:
    """The ORACLE time series of a list of ZTF candidates up to `until_jd` (see module docstring)."""
    rows = set()
    for p in points:
        if not isinstance(p, dict):
            continue
        jd, mag, err = _number(p, "jd"), _number(p, "magpsf"), _number(p, "sigmapsf")
        fid, programid = p.get("fid"), p.get("programid")
        if jd is None or mag is None or err is None or programid not in (1, 2) or jd > until_jd:
            continue
        wavelength = ZTF_BAND_WAVELENGTH_UM.get(fid)
        if wavelength is None:
            continue
        rows.add((jd, wavelength, mag, err))
    if not rows:
        return np.zeros((0, 5), dtype=np.float32)
    ordered = sorted(rows)
    start = ordered[-1][0] - WINDOW_DAYS
    kept, seen = [], set()
    # Plain Python on these 2-50 points: per-alert numpy calls (np.unique above all) cost
    # more than the work (3x the feature time in bench/bench_flow.py).
    for row in ordered:
        if row[0] >= start and row[:3] not in seen:  # same (jd, band, mag), other error: one observation
            seen.add(row[:3])
            kept.append(row)
    arr = np.array(kept, dtype=np.float64)
    return time_series(arr[:, 0], arr[:, 2], arr[:, 3], arr[:, 1], 1.0)


def _separation_deg(ra1, dec1, ra2, dec2) -> float:
    ra1, dec1, ra2, dec2 = map(math.radians, (ra1, dec1, ra2, dec2))
    h = math.sin((dec2 - dec1) / 2) ** 2 + math.cos(dec1) * math.cos(dec2) * math.sin((ra2 - ra1) / 2) ** 2
    return math.degrees(2 * math.asin(min(1.0, math.sqrt(h))))


def nearest_wise(cross_matches, ra: Optional[float], dec: Optional[float]) -> Optional[dict]:
    """The nearest AllWISE match (by `distance_arcsec` when given, else by position)."""
    if not isinstance(cross_matches, dict):
        return None
    best, best_d = None, math.inf
    for catalog in WISE_CATALOGS:
        matches = cross_matches.get(catalog)
        if not isinstance(matches, list):
            continue
        for m in matches:
            if not isinstance(m, dict):
                continue
            d = _number(m, "distance_arcsec")
            if d is None and ra is not None and dec is not None and _number(m, "ra") is not None and _number(m, "dec") is not None:
                d = _separation_deg(ra, dec, m["ra"], m["dec"]) * 3600
            d = math.inf if d is None else d
            if best is None or d < best_d:
                best, best_d = m, d
    return best


def static_features(alert: dict, aux: Optional[dict]) -> np.ndarray:
    cand = alert.get("candidate") or {}
    coords = alert.get("coordinates") or {}
    l, b = clean(coords.get("l")), clean(coords.get("b"))
    if l != MISSING:
        l = l % 360.0
    wise = nearest_wise((aux or {}).get("cross_matches"), _number(cand, "ra"), _number(cand, "dec"))
    w = [clean(wise.get(k)) if wise else MISSING for k in WISE_MAGS]
    w13 = w[0] - w[2] if w[0] != MISSING and w[2] != MISSING else MISSING
    w23 = w[1] - w[2] if w[1] != MISSING and w[2] != MISSING else MISSING
    values = [l, b, *w, w13, w23, *(clean(cand.get(k)) for k in CANDIDATE_STATIC)]
    return np.asarray(values, dtype=np.float32)


def ztf_inputs(alert: dict, aux: Optional[dict], cutout: Optional[dict] = None, with_stamp: bool = False) -> ModelInputs:
    """Build ORACLE inputs; raises `InputError` when the documents cannot make one."""
    cand, (history,) = candidate_and_series(alert, aux, "prv_candidates")
    ts = light_curve([*history, cand], until_jd=_number(cand, "jd") or math.inf)
    if len(ts) == 0:
        raise InputError("no usable detection: no programid 1/2 point with magpsf")
    stamp, stamp_status = None, ""
    if with_stamp:
        from operators.oracle.stamps import band_channel, ztf_stamp  # image models only

        # The band of the light curve's last point, not the candidate's fid, as the deployed Omni.
        stamp, stamp_status = ztf_stamp(cutout, band_channel(ts, ZTF_BAND_WAVELENGTH_UM))
    return ModelInputs(ts=ts, static=static_features(alert, aux), stamp=stamp, stamp_status=stamp_status)
