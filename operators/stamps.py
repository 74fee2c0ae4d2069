"""The reference stamp for ORACLE image models (Omni).

Input: a ZTF `cutoutTemplate` (gzipped FITS, 63×63, from BOOM's
`ZTF_alerts_cutouts` document or the filter-result message) and the filter id
of the latest detection. Output: a `[3, 63, 63]` float32 array — the stamp with
NaN → 0, divided by its L2 norm, in the channel of that band (g 0, r 1, i 2),
the other channels zero, as ORACLE was trained.
"""

from __future__ import annotations

import gzip
import io
import warnings
from typing import Optional

import numpy as np

from operators.inputs import InputError

STAMP_SIZE = 63
BAND_CHANNEL = {1: 0, 2: 1, 3: 2}  # ZTF fid → channel


def decode_cutout(data: bytes) -> np.ndarray:
    """Pixels of a (possibly gzipped) FITS cutout, as float64."""
    from astropy.io import fits

    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ZTF headers carry non-standard cards
        with fits.open(io.BytesIO(data), memmap=False) as hdul:
            pixels = hdul[0].data
    if pixels is None:
        raise InputError("bad cutout: the FITS file holds no image")
    return np.asarray(pixels, dtype=np.float64)


def normalised_stamp(pixels: np.ndarray, fid: int) -> np.ndarray:
    if fid not in BAND_CHANNEL:
        raise InputError(f"bad cutout: no stamp channel for filter id {fid!r}")
    if pixels.shape != (STAMP_SIZE, STAMP_SIZE):
        # Cutouts at a CCD edge come smaller; pad with zeros (= NaN after cleaning) on the cut side.
        padded = np.zeros((STAMP_SIZE, STAMP_SIZE))
        h, w = min(pixels.shape[0], STAMP_SIZE), min(pixels.shape[1], STAMP_SIZE)
        padded[:h, :w] = pixels[:h, :w]
        pixels = padded
    pixels = np.nan_to_num(pixels, nan=0.0, posinf=0.0, neginf=0.0)
    norm = np.linalg.norm(pixels)
    if norm == 0:
        raise InputError("bad cutout: the reference stamp is empty")
    stamp = np.zeros((3, STAMP_SIZE, STAMP_SIZE), dtype=np.float32)
    stamp[BAND_CHANNEL[fid]] = pixels / norm
    return stamp


def ztf_stamp(cutout: Optional[dict], fid) -> np.ndarray:
    """The model's stamp from a cutouts document; `InputError` when there is none."""
    data = (cutout or {}).get("cutoutTemplate")
    if isinstance(data, dict):  # Avro alerts nest it as {"fileName", "stampData"}
        data = data.get("stampData")
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise InputError("no cutout: the reference stamp is missing")
    try:
        pixels = decode_cutout(bytes(data))
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"bad cutout: {type(exc).__name__}: {exc}"[:200]) from None
    return normalised_stamp(pixels, fid)
