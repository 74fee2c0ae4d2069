"""The 21 columns of the Fink VRA feature table: the contract between the flow that
writes them (operators/vra/features.py) and the classifier that reads them.

Here, at the bottom, so that both import it downward.
"""

from __future__ import annotations

# The light-curve features kept from Fink's 26, in the order the table uses.
LC_FEATURES = [
    "amplitude",
    "linear_fit_reduced_chi2",
    "linear_fit_slope",
    "linear_fit_slope_sigma",
    "median",
    "median_absolute_deviation",
]

# ZTF filter id -> column suffix. The odd "r_" suffix is the name the trained
# models already use, so it stays.
BANDS = {1: "", 2: "r_"}

FEATURE_COLUMNS = [
    "ra",
    "dec",
    "drb",
    "ndets",
    "nnondets",
    "dets_median",
    "dets_std",
    "sep_arcsec",
    *LC_FEATURES,
    *[name + BANDS[2] for name in LC_FEATURES],
    "ebv",
]
