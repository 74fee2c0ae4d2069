"""What every survey's ORACLE input builder shares.

An input builder (`operators/oracle/ztf_inputs.py`, `operators/oracle/lsst_inputs.py`) turns
one alert's BOOM documents into `ModelInputs`, with the signature
`(alert_doc, aux_doc, cutout_doc, with_stamp) -> ModelInputs`, and raises
`InputError` (whose message becomes the dead-letter reason) when the documents
cannot make one. This module holds the parts that do not depend on the survey:
the input record, the error, number cleaning, the document checks every
builder starts with, and the assembly of ORACLE's time series
`[t − first t, value, error, band wavelength (µm), flag]`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

MISSING = -9.0  # ORACLE's value for a missing static feature
TS_COLUMNS = 5


class InputError(ValueError):
    """The documents cannot make a model input; the message is the dead-letter reason."""


@dataclass(frozen=True)
class ModelInputs:
    ts: np.ndarray  # [T, 5] float32
    static: Optional[np.ndarray] = None  # [n_static] float32
    stamp: Optional[np.ndarray] = None  # [3, 63, 63] float32
    stamp_status: str = ""  # how the stamp was made (operators/oracle/stamps.py); "" without a stamp

    @property
    def length(self) -> int:
        return int(self.ts.shape[0])


def clean(value) -> float:
    """A catalogue number, or −9 when missing, non-numeric, NaN or a −999 sentinel."""
    if value is None or isinstance(value, bool):
        return MISSING
    try:
        x = float(value)
    except (TypeError, ValueError):
        return MISSING
    if not _fits_float32(x) or x == -999.0 or x == -99.0:
        return MISSING
    return x


def number(point: dict, name: str) -> Optional[float]:
    """`point[name]` as a finite float, or None (missing, null, NaN, bool, not a number)."""
    value = point.get(name)
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if _fits_float32(value) else None


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _fits_float32(x: float) -> bool:
    """Finite once in the float32 inputs: a float64 past float32's range would become inf."""
    return math.isfinite(x) and abs(x) <= _FLOAT32_MAX


def candidate_and_series(alert: dict, aux: Optional[dict], *names: str) -> tuple[dict, list[list]]:
    """The alert's `candidate` and the aux document's lists `names` (absent → []).

    Raises `InputError` when the candidate or the aux document is missing, or a
    list is something else.
    """
    cand = alert.get("candidate")
    if not isinstance(cand, dict):
        raise InputError("missing field: candidate in the alert document")
    if aux is None:
        raise InputError("no aux document")
    lists = []
    for name in names:
        value = aux.get(name) or []
        if not isinstance(value, list):
            raise InputError(f"wrong type: {name} is not a list")
        lists.append(value)
    return cand, lists


def time_series(t, value, error, wavelength, flag) -> np.ndarray:
    """ORACLE's `[T, 5]` float32 series from equal-length columns.

    Rows are sorted by `t` (stable: equal times keep the given order) and the
    first column is `t − first t`; the others are copied as given.
    """
    t = np.asarray(t, dtype=np.float64).reshape(-1)
    ts = np.zeros((len(t), TS_COLUMNS), dtype=np.float32)
    if len(t) == 0:
        return ts
    order = np.argsort(t, kind="stable")
    ts[:, 0] = t[order] - t[order[0]]
    for i, column in enumerate((value, error, wavelength, flag), start=1):
        column = np.asarray(column, dtype=np.float64)
        ts[:, i] = column if column.ndim == 0 else column.reshape(t.shape)[order]  # a scalar fills the column
    return ts
