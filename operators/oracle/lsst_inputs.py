"""ORACLE inputs for one Rubin/LSST alert, from its BOOM documents.

Inputs: the `LSST_alerts` document (`candidate` = the alert's Rubin DiaSource
as BOOM flattens it), the `LSST_alerts_aux` document of its object
(`prv_candidates`: earlier DiaSources, which BOOM stores with the current one
included; `fp_hists`: DiaForcedSources). The cutout document is not used: the
LSST model (ORACLE ELAsTiCCv2-lite, kind `lsst_lite`) reads the light curve only.

Output (`ModelInputs`, no static features, no stamp):
`ts` (T×5, float32) = `[mjd − first mjd, FLUXCAL, FLUXCALERR, band wavelength (µm), flag]`
per DiaSource, sorted by `midpointMjdTai`:
- FLUXCAL/FLUXCALERR: the model was trained on ELAsTiCC SNANA fluxes
  (zero point 27.5 mag); Rubin's `psfFlux`/`psfFluxErr` are in nJy (zero point
  31.4 mag), so both are multiplied by 10^(−0.4 × 3.9) (÷ 36.31). The upstream
  bridge (frenbox/oracle_support `oracle_boom_lsst.py`) feeds the nJy values
  unconverted, i.e. 36× too bright for the model: not done here.
- band: BOOM writes Rubin bands in lower case (`u g r i z y`); wavelengths are
  ORACLE's band centres u 0.36, g 0.476, r 0.6215, i 0.7545, z 0.87, y 1.015.
  (ORACLE's own table spells the last band `Y`; the upstream bridge looks BOOM's
  `y` up there and so drops every y point. Here `y` is kept.)
- flag: 1 if the DiaSource's `snr` ≥ 5 (|psfFlux|/psfFluxErr when `snr` is
  absent), else 0, standing in for ELAsTiCC's PHOTFLAG detection bit.
- Only points no later than the alert's own DiaSource (`midpointMjdTai`) are
  used: BOOM's aux document holds every point ingested so far, and an alert
  must get the same probabilities whenever it is processed.
- DiaSources are counted once (by `diaSourceId`); points without a finite
  time, flux or positive error or with an unknown band are skipped, and so are
  those whose PSF fit failed (`psfFlux_flag`) or whose centre is saturated
  (`pixelFlags_saturatedCenter`): ORACLE's training dropped saturated epochs.

Forced photometry (`forced_photometry=True`; in the flows the setting
`ORACLE_LSST_FORCED_PHOTOMETRY=true`, off by default): ORACLE was trained with
forced-photometry epochs (flag 0) beside the detections. With the option on,
every usable `fp_hists` point taken at an epoch (time and band) where the
object has no DiaSource is added, converted the same way, with flag 0.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional

import numpy as np

from operators.oracle.inputs import InputError, ModelInputs, candidate_and_series, number, time_series

LSST_BAND_WAVELENGTH_UM = {"u": 0.36, "g": 0.476, "r": 0.6215, "i": 0.7545, "z": 0.87, "y": 1.015}
RUBIN_ZERO_POINT_NJY = 31.4
ELASTICC_FLUXCAL_ZERO_POINT = 27.5
NJY_TO_FLUXCAL = 10 ** (-0.4 * (RUBIN_ZERO_POINT_NJY - ELASTICC_FLUXCAL_ZERO_POINT))  # 1/36.31
DETECTION_SNR = 5.0
UNUSABLE_FLAGS = ("psfFlux_flag", "pixelFlags_saturatedCenter")
EPOCH_DECIMALS = 5  # one visit's points share its mid-exposure time; 1e-5 d ≈ 1 s

# What the builder reads, so that stores fetch nothing else.
SOURCE_FIELDS = ("diaSourceId", "midpointMjdTai", "band", "psfFlux", "psfFluxErr", "snr", *UNUSABLE_FLAGS)
ALERT_FIELDS = ("objectId", *(f"candidate.{f}" for f in SOURCE_FIELDS))
AUX_FIELDS = ("prv_candidates", "fp_hists")


def _epoch(point) -> Optional[tuple[float, float]]:
    """(time rounded to ~1 s, band wavelength) of a point, or None without a time or a known band."""
    if not isinstance(point, dict):
        return None
    mjd, band = number(point, "midpointMjdTai"), point.get("band")
    wavelength = LSST_BAND_WAVELENGTH_UM.get(band.lower()) if isinstance(band, str) else None
    return None if mjd is None or wavelength is None else (round(mjd, EPOCH_DECIMALS), wavelength)


def _later(point, until_mjd: float) -> bool:
    mjd = number(point, "midpointMjdTai") if isinstance(point, dict) else None
    return mjd is not None and mjd > until_mjd


def _measurement(point) -> Optional[tuple[float, float, float, float]]:
    """(mjd, psfFlux, psfFluxErr, wavelength) of a DiaSource or DiaForcedSource, or None if unusable."""
    epoch = _epoch(point)
    flux, err = (number(point, "psfFlux"), number(point, "psfFluxErr")) if epoch else (None, None)
    if flux is None or err is None or err <= 0:
        return None
    return number(point, "midpointMjdTai"), flux, err, epoch[1]


def light_curve(sources: Iterable[dict], forced: Iterable[dict] = (),
                until_mjd: float = math.inf) -> tuple[np.ndarray, int]:
    """The ORACLE series of DiaSources (+ forced photometry) up to `until_mjd`, and how many DiaSources it holds."""
    rows: dict = {}
    detected = set()  # epochs with a DiaSource, usable or not: forced photometry adds none there
    sources = [p for p in sources if not _later(p, until_mjd)]
    forced = [p for p in forced if not _later(p, until_mjd)]
    for p in sources:
        m = _measurement(p)
        detected.add(_epoch(p))
        if m is None or any(p.get(flag) is True for flag in UNUSABLE_FLAGS):
            continue
        mjd, flux, err, _ = m
        snr = number(p, "snr")
        snr = abs(flux) / err if snr is None else snr
        key = p.get("diaSourceId")
        rows[key if isinstance(key, int) else _epoch(p)] = (*m, 1.0 if snr >= DETECTION_SNR else 0.0)
    n_sources = len(rows)
    for p in forced:
        m = _measurement(p)
        if m is not None and _epoch(p) not in detected:
            rows[("forced", _epoch(p))] = (*m, 0.0)
    if not rows:
        return time_series([], [], [], [], []), 0
    arr = np.array(sorted(rows.values()), dtype=np.float64)  # sorted: the same series whatever the document order
    return time_series(arr[:, 0], arr[:, 1] * NJY_TO_FLUXCAL, arr[:, 2] * NJY_TO_FLUXCAL, arr[:, 3], arr[:, 4]), n_sources


def lsst_inputs(alert: dict, aux: Optional[dict], cutout: Optional[dict] = None, with_stamp: bool = False,
                forced_photometry: bool = False) -> ModelInputs:
    """Build ORACLE inputs; raises `InputError` when the documents cannot make one."""
    if with_stamp:
        raise InputError("no image model for LSST: use the light-curve ORACLE (lsst_lite) weights")
    cand, (history, fp_hists) = candidate_and_series(alert, aux, "prv_candidates", "fp_hists")
    ts, n_sources = light_curve([*history, cand], fp_hists if forced_photometry else (),
                                until_mjd=number(cand, "midpointMjdTai") or math.inf)
    if n_sources == 0:
        raise InputError("no usable detection: no DiaSource with time, psfFlux, psfFluxErr and a u/g/r/i/z/y band")
    return ModelInputs(ts=ts)
