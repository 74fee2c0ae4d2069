"""What an exported ORACLE network takes and gives, in words another system can follow.

The `.onnx` files written by `models/oracle/export.py` carry this as metadata
(`metadata_props`), so that a system without this project can build the inputs.
The input builders that the flows use are the reference for every column here:
`operators/oracle/ztf_inputs.py` (ZTF: BTSv2, Omni) and `operators/oracle/lsst_inputs.py`
(LSST: ELAsTiCCv2-lite); tests/test_onnx_export.py checks that the names and band
wavelengths below are theirs (this layer may not import them).
"""

from __future__ import annotations

MISSING_STATIC = -9.0  # ORACLE's value for a missing static feature

# ZTF static features, in the network's input order (ztf_inputs.STATIC_FEATURES).
ZTF_STATIC_FEATURES = (
    "l", "b", "W1mag", "W2mag", "W3mag", "W4mag", "W1-W3", "W2-W3",
    "sky", "sgscore1", "sgscore2", "distpsnr1", "distpsnr2", "fwhm", "diffmaglim",
    "ndethist", "nmtchps", "drb", "ncovhist", "chinr", "sharpnr", "scorr",
    "sgmag1", "srmag1", "simag1", "szmag1", "sgmag2", "srmag2", "simag2", "szmag2",
)
ZTF_BANDS_UM = {"g": 0.476, "r": 0.6215, "i": 0.7545}
LSST_BANDS_UM = {"u": 0.36, "g": 0.476, "r": 0.6215, "i": 0.7545, "z": 0.87, "y": 1.015}

TIME_SERIES = {
    "ztf": [
        {"column": 0, "name": "dt", "unit": "day",
         "description": "candidate jd minus the jd of the series' first point (0 for the first)"},
        {"column": 1, "name": "magpsf", "unit": "mag", "description": "ZTF PSF-fit difference magnitude"},
        {"column": 2, "name": "sigmapsf", "unit": "mag", "description": "its 1-sigma error"},
        {"column": 3, "name": "wavelength", "unit": "micrometre",
         "description": f"band centre: {ZTF_BANDS_UM} (ZTF fid 1, 2, 3)"},
        {"column": 4, "name": "flag", "unit": "", "description": "1 for every detection (ORACLE's training value)"},
    ],
    "lsst": [
        {"column": 0, "name": "dt", "unit": "day",
         "description": "DiaSource midpointMjdTai minus that of the series' first point (0 for the first)"},
        {"column": 1, "name": "FLUXCAL", "unit": "ELAsTiCC FLUXCAL (zero point 27.5 mag)",
         "description": "Rubin psfFlux (nJy, zero point 31.4) times 10^(-0.4*3.9), i.e. divided by 36.31"},
        {"column": 2, "name": "FLUXCALERR", "unit": "ELAsTiCC FLUXCAL", "description": "psfFluxErr, converted the same way"},
        {"column": 3, "name": "wavelength", "unit": "micrometre", "description": f"band centre: {LSST_BANDS_UM}"},
        {"column": 4, "name": "flag", "unit": "",
         "description": "1 if the DiaSource's snr >= 5 (|psfFlux|/psfFluxErr without snr), else 0; "
                        "0 for forced photometry"},
    ],
}

SERIES_RULES = {
    "ztf": "detections (magpsf present) of programid 1 or 2 up to the alert's own jd, within 180 days of the "
           "newest point, duplicates of (jd, band, mag) removed, sorted by jd",
    "lsst": "DiaSources up to the alert's own midpointMjdTai, one per diaSourceId, without psfFlux_flag or "
            "pixelFlags_saturatedCenter, with a finite flux and a positive error, sorted by time",
}

STAMP = ("float32 [B, 3, 63, 63]: zeros except the channel of the band of the light curve's last point "
         "(g 0, r 1, i 2), which holds the ZTF cutoutTemplate (FITS primary HDU as read, NaN/inf -> 0) divided "
         "by its L2 norm; all zeros when there is no usable 63x63 template. The graph upsamples it to 224x224 "
         "(bilinear, half-pixel centres).")


def inputs_card(survey: str, n_static: int, needs_stamp: bool) -> list[dict]:
    """The graph's inputs, in order, with shapes, dtypes, units and how to build them."""
    survey = survey.lower()
    if survey not in TIME_SERIES:
        raise ValueError(f"no input description for survey {survey!r}: use one of {sorted(TIME_SERIES)}")
    out = [
        {"name": "ts", "dtype": "float32", "shape": ["batch", "time", 5],
         "layout": "one row per light-curve point, zero-padded after each series' own length",
         "columns": TIME_SERIES[survey], "series": SERIES_RULES[survey]},
        {"name": "lengths", "dtype": "int64", "shape": ["batch"],
         "description": "points of each series (1 <= length <= time); the recurrence never reads the padding"},
    ]
    if n_static:
        if survey != "ztf" or n_static != len(ZTF_STATIC_FEATURES):
            raise ValueError(f"a network with {n_static} static features has no description for survey {survey!r}")
        out.append({"name": "static", "dtype": "float32", "shape": ["batch", n_static],
                    "features": list(ZTF_STATIC_FEATURES),
                    "description": "l, b: galactic coordinates (deg, l in [0, 360)); W*: nearest AllWISE match "
                                   "(w1mpro..w4mpro) and colours; the rest: the ZTF candidate's fields of those "
                                   f"names. Missing, NaN, -99 or -999 -> {MISSING_STATIC:g}"})
    if needs_stamp:
        out.append({"name": "stamps", "dtype": "float32", "shape": ["batch", 3, 63, 63], "description": STAMP})
    return out


OUTPUTS = [
    {"name": "probabilities", "dtype": "float32", "shape": ["batch", "nodes"],
     "description": "class probability of every taxonomy node, in the order of `nodes`: the product of the "
                    "softmax-within-siblings probabilities from the root down (root 1; leaves sum to 1)"},
    {"name": "logits", "dtype": "float32", "shape": ["batch", "nodes"],
     "description": "the network's raw output per node (the probabilities come from these as described)"},
]
