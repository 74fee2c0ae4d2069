"""Fink VRA features: one row of 21 numbers per ZTF alert, for the active-learning loop.

Inputs: a decoded Fink/ZTF alert (dict with `candid`, `objectId`, `candidate`,
`prv_candidates`, and optionally Fink's `lc_features_g` / `lc_features_r`),
plus the Sherlock answer for its position and the SFD E(B-V) there, when known.

Outputs: `alert_features` gives a dict holding `META_COLUMNS` then
`FEATURE_COLUMNS`; `features_table` gives a DataFrame indexed by `candid` with
`objectId` then the 21 feature columns. Missing values are NaN, never invented.

Columns:
- `ra, dec, drb`: from the current candidate.
- `ndets, nnondets`: points of history + current candidate with / without a
  magnitude (detections / upper limits); `dets_median, dets_std`: nan-median and
  nan-std (ddof 0) of those difference magnitudes.
- `sep_arcsec`: separation of Sherlock's first cross-match (NaN for orphans or
  when Sherlock was not asked).
- six light-curve features per band, g (fid 1) unsuffixed and r (fid 2) with the
  suffix `r_`: Fink's own `lc_features_<band>` when the alert carries them,
  otherwise computed here exactly as fink-science's `ad_features` module does.
- `ebv`: SFD E(B-V) at (ra, dec), NaN when no map is configured.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Optional

import numpy as np
import pandas as pd

from models.vetting.feature_contract import BANDS, FEATURE_COLUMNS, LC_FEATURES  # noqa: F401 - the table's columns

META_COLUMNS = ["candid", "objectId"]

CARRIED_KEYS = {1: "lc_features_g", 2: "lc_features_r"}

# fink-utils `is_source_behind`: a reference-image source within 1.5 px.
_SOURCE_BEHIND_PX = 1.5


def _float(value: Any) -> float:
    """A float, or NaN for None / non-numeric values (Avro nulls stay missing)."""
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def photometry(alert: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """History then current candidate, as arrays (Fink's `concat_col` order).

    Keys: jd, fid, magpsf, sigmapsf, distnr, magnr, sigmagnr (float, NaN when
    null) and isdiffpos (str).
    """
    points = list(alert.get("prv_candidates") or []) + [alert["candidate"]]
    out = {
        key: np.array([_float(p.get(key)) for p in points], dtype="float64")
        for key in ("jd", "fid", "magpsf", "sigmapsf", "distnr", "magnr", "sigmagnr")
    }
    out["isdiffpos"] = np.array([str(p.get("isdiffpos")) for p in points], dtype=str)
    return out


def detection_stats(alert: Mapping[str, Any]) -> dict[str, float]:
    """ndets, nnondets, dets_median, dets_std over history + current candidate."""
    mag = photometry(alert)["magpsf"]
    dets = mag[~np.isnan(mag)]
    return {
        "ndets": float(dets.size),
        "nnondets": float(mag.size - dets.size),
        "dets_median": float(np.median(dets)) if dets.size else math.nan,
        "dets_std": float(np.std(dets, ddof=0)) if dets.size else math.nan,
    }


def dc_magnitudes(
    magpsf: np.ndarray,
    sigmapsf: np.ndarray,
    magnr: np.ndarray,
    sigmagnr: np.ndarray,
    isdiffpos: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Apparent (DC) magnitude and error from ZTF difference photometry.

    ZTF Explanatory Supplement p.107, as in fink-utils `vect_dc_mag`: the
    difference flux is added to (isdiffpos t/1) or taken from the flux of the
    reference source; errors add in quadrature. A negative magnr means no
    reference source, so the result is NaN.
    """
    # float64 whatever the caller holds (Avro `float` is float32): fink-science's
    # `extract_features_ad_raw` casts every column to float64 before `vect_dc_mag`, and
    # light-curve's straight-line fit on raw jd turns a float32 rounding of the
    # magnitudes of points minutes apart into a slope error of ~1e-4 (relative).
    magpsf, sigmapsf, magnr, sigmagnr = (np.asarray(a, dtype=np.float64) for a in (magpsf, sigmapsf, magnr, sigmagnr))
    isdiffpos = np.asarray(isdiffpos, dtype=str)
    magnr = np.where(magnr < 0.0, np.nan, magnr)
    diff_flux = 10 ** (-0.4 * magpsf)
    diff_sigflux = (sigmapsf / 1.0857) * diff_flux
    ref_flux = 10 ** (-0.4 * magnr)
    ref_sigflux = (sigmagnr / 1.0857) * ref_flux
    positive = (isdiffpos == "t") | (isdiffpos == "1")
    dc_flux = np.where(positive, ref_flux + diff_flux, ref_flux - diff_flux)
    dc_sigflux = np.sqrt(diff_sigflux**2 + ref_sigflux**2)
    with np.errstate(divide="ignore", invalid="ignore"):
        dc_mag = -2.5 * np.log10(dc_flux)
        dc_sigmag = dc_sigflux / dc_flux * 1.0857
    return dc_mag, dc_sigmag


def fink_light_curve(alert: Mapping[str, Any]) -> pd.DataFrame:
    """The points Fink's `ad_features` feeds to light-curve, sorted by jd.

    Detections only (magpsf and sigmapsf present). If any detection lies on a
    reference source (0 <= distnr <= 1.5 px), Fink converts *every* detection to
    a DC magnitude and drops those that come out NaN (no reference source):
    reproduced here as is, since the carried features were made that way.
    Columns: jd, mag, sigma, fid.
    """
    p = photometry(alert)
    ok = ~(np.isnan(p["magpsf"]) | np.isnan(p["sigmapsf"]))
    mag, sig = p["magpsf"][ok], p["sigmapsf"][ok]
    jd, fid = p["jd"][ok], p["fid"][ok]
    distnr = p["distnr"][ok]
    if np.any((distnr >= 0) & (distnr <= _SOURCE_BEHIND_PX)):
        mag, sig = dc_magnitudes(
            mag, sig, p["magnr"][ok], p["sigmagnr"][ok], p["isdiffpos"][ok]
        )
        keep = ~(np.isnan(mag) | np.isnan(sig))
        mag, sig, jd, fid = mag[keep], sig[keep], jd[keep], fid[keep]
    order = np.argsort(jd, kind="stable")
    return pd.DataFrame({"jd": jd[order], "mag": mag[order], "sigma": sig[order], "fid": fid[order]})


def _extractor():
    # Imported here so that modules only needing the column names stay light.
    import light_curve as lc

    return lc.Extractor(
        lc.Amplitude(), lc.LinearFit(), lc.Median(), lc.MedianAbsoluteDeviation()
    )


def computed_band_features(alert: Mapping[str, Any], fid: int) -> dict[str, float]:
    """The six `LC_FEATURES` of one band, computed from the alert's own points.

    Features that need more points than the band has are NaN (light-curve's
    fill_value), as in Fink.
    """
    curve = fink_light_curve(alert)
    band = curve[curve["fid"] == fid]
    extractor = _extractor()
    try:
        values = extractor(  # float64 throughout, as Fink feeds light-curve
            band["jd"].to_numpy(dtype=np.float64),
            band["mag"].to_numpy(dtype=np.float64),
            band["sigma"].to_numpy(dtype=np.float64),
            fill_value=np.nan,
        )
    except ValueError:
        # Fink skips a band light-curve refuses (e.g. repeated times): all NaN.
        return {name: math.nan for name in LC_FEATURES}
    named = dict(zip(extractor.names, (float(v) for v in values)))
    return {name: named[name] for name in LC_FEATURES}


def carried_band_features(alert: Mapping[str, Any], fid: int) -> Optional[dict[str, float]]:
    """Fink's precomputed features of one band, or None if the alert lacks them."""
    carried = alert.get(CARRIED_KEYS[fid])
    if not isinstance(carried, Mapping):
        return None
    return {name: _float(carried.get(name)) for name in LC_FEATURES}


def band_features(alert: Mapping[str, Any], fid: int) -> dict[str, float]:
    """Carried features when present (Fink saw the same points), else computed."""
    carried = carried_band_features(alert, fid)
    return carried if carried is not None else computed_band_features(alert, fid)


def sherlock_separation(sherlock: Any) -> float:
    """Separation (arcsec) of Sherlock's first cross-match; NaN for orphans.

    Accepts Lasair's `sherlock/position` answer (a dict with `crossmatches`),
    a bare number, or None (not asked).
    """
    if sherlock is None:
        return math.nan
    if isinstance(sherlock, Mapping):
        matches = sherlock.get("crossmatches") or []
        return _float(matches[0].get("separationArcsec")) if matches else math.nan
    return _float(sherlock)


def alert_features(alert: Mapping[str, Any], sherlock: Any = None, ebv: Optional[float] = None) -> dict:
    """One table row: `META_COLUMNS` then `FEATURE_COLUMNS`.

    `sherlock` is Lasair's Sherlock answer for the alert's position (or the
    separation itself); `ebv` is the SFD E(B-V) there. Either may be None: the
    column is then NaN. Raises KeyError/TypeError on an alert without a
    candidate; callers in a dataflow route those to dead letters.
    """
    cand = alert["candidate"]
    row: dict[str, Any] = {
        "candid": int(alert.get("candid", cand.get("candid"))),
        "objectId": str(alert["objectId"]),
        "ra": _float(cand.get("ra")),
        "dec": _float(cand.get("dec")),
        "drb": _float(cand.get("drb")),
        **detection_stats(alert),
        "sep_arcsec": sherlock_separation(sherlock),
    }
    for fid, suffix in BANDS.items():
        for name, value in band_features(alert, fid).items():
            row[name + suffix] = value
    row["ebv"] = _float(ebv)
    return {col: row[col] for col in META_COLUMNS + FEATURE_COLUMNS}


def features_table(alerts: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Feature rows of many alerts, indexed by candid (last one wins on repeats).

    No Sherlock or dust lookup happens here: `sep_arcsec` and `ebv` are NaN.
    Columns: `objectId` then `FEATURE_COLUMNS`, features as float64.
    """
    rows = [alert_features(a) for a in alerts]
    return rows_to_frame(rows)


def rows_to_frame(rows: list[Mapping[str, Any]]) -> pd.DataFrame:
    """Rows from `alert_features` as a typed DataFrame indexed by candid."""
    frame = pd.DataFrame(rows, columns=META_COLUMNS + FEATURE_COLUMNS)
    frame = frame.astype({"candid": "int64", "objectId": "str", **{c: "float64" for c in FEATURE_COLUMNS}})
    frame = frame.drop_duplicates("candid", keep="last").set_index("candid")
    return frame
