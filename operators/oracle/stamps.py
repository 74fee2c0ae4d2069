"""The reference stamp for ORACLE image models (Omni), built as the deployment builds it.

What the deployed Omni does (frenbox/oracle_support, `oracle_boom_ztf.py`:
`run_oracle` and `load_cutout`), and so what this module does:

- the image is `[3, 63, 63]`, all zeros except ONE channel that holds the
  template: the channel of the band of the last point of the light curve after
  the programid 1/2 and 180-day filtering, sorted by jd (g 0, r 1, i 2) — not
  the candidate's own `fid`;
- the template (`cutoutTemplate`, a gzipped FITS file) is the primary HDU's
  data as astropy reads it (BSCALE/BZERO applied, no flip, no transpose), in
  float64; NaN and ±inf become 0; it is divided by its L2 norm (left as it is
  when the norm is 0) and then cast to float32;
- a template that is missing, empty, undecodable or not 63×63 gives the
  all-zero image, and the alert is still classified: the model was deployed
  that way, and losing the alert is worse. No padding of edge cutouts.

Each stamp comes with a status, written to the results CSV column `stamp` and
counted in `alertflow_stamps_total{status}`:

    template        the template is in the image
    none            no cutoutTemplate at all (message and BOOM document lack it)
    empty           a cutoutTemplate of zero bytes
    undecodable     not gzip, not FITS, or a FITS file without image data
    bad shape HxW   decoded, but not 63×63 (CCD-edge cutouts: e.g. 58x63)
    blank           63×63 but only zeros/NaN (the image is all zeros too)
    no band         the light curve's last band has no channel

One difference from the deployment: a plain (not gzipped) FITS template is
decoded here, where `load_cutout` would fail on it; ZTF and BOOM always send gzip.
"""

from __future__ import annotations

import base64
import gzip
import io
import warnings
from typing import Optional

import numpy as np

STAMP_SIZE = 63
BAND_CHANNEL = {1: 0, 2: 1, 3: 2}  # ZTF fid (g, r, i) → channel, the deployment's BAND_TO_CHANNEL
TEMPLATE = "template"


def band_channel(ts: np.ndarray, wavelengths_um: dict) -> Optional[int]:
    """Channel of the band of a ZTF light curve's last point. The `[T, 5]` series is
    sorted by time and its fourth column is the band's wavelength, which
    `wavelengths_um` (fid → µm) turns back into a filter id."""
    if len(ts) == 0:
        return None
    wavelength = float(ts[-1, 3])
    for fid, um in wavelengths_um.items():
        if abs(um - wavelength) < 1e-4:
            return BAND_CHANNEL.get(fid)
    return None


def _template_bytes(field) -> Optional[bytes]:
    """The raw bytes of a cutout in any form the deployment accepts: bytes, Avro
    `{"stampData": ...}`, MongoDB extended JSON `{"$binary": {"base64": ...}}`, or base64 text.
    None when there is none; raises on text that is not base64."""
    if isinstance(field, dict):
        if "$binary" in field:
            field = (field["$binary"] or {}).get("base64")
        else:
            field = field.get("stampData")
    if field is None:
        return None
    if isinstance(field, str):
        return base64.b64decode(field, validate=True)
    if isinstance(field, (bytes, bytearray, memoryview)):
        return bytes(field)
    raise TypeError(f"a cutout of type {type(field).__name__}")


def decode_cutout(data: bytes) -> Optional[np.ndarray]:
    """Pixels of a (gzipped) FITS cutout as float64, or None when its primary HDU holds no image."""
    from astropy.io import fits

    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ZTF headers carry non-standard cards
        with fits.open(io.BytesIO(data), memmap=False) as hdul:
            pixels = hdul[0].data
    return None if pixels is None else np.asarray(pixels, dtype=np.float64)


def template_pixels(cutout: Optional[dict]) -> tuple[Optional[np.ndarray], str]:
    """The normalised 63×63 template of a cutouts document (or message), and its status.

    Pixels are None unless the status is `template`; `blank` gives zeros."""
    try:
        data = _template_bytes((cutout or {}).get("cutoutTemplate"))
    except Exception:  # not base64, or an odd type
        return None, "undecodable"
    if data is None:
        return None, "none"
    if not data:
        return None, "empty"
    try:
        pixels = decode_cutout(data)
    except Exception:  # bad gzip, bad FITS: the deployment logs it and uses zeros
        return None, "undecodable"
    if pixels is None:
        return None, "undecodable"
    if pixels.shape != (STAMP_SIZE, STAMP_SIZE):
        shape = "x".join(str(n) for n in pixels.shape)
        return None, f"bad shape {shape}"
    pixels = np.nan_to_num(pixels, nan=0.0, posinf=0.0, neginf=0.0)
    norm = np.linalg.norm(pixels)
    if norm == 0:
        return None, "blank"
    return pixels / norm, TEMPLATE


def ztf_stamp(cutout: Optional[dict], channel: Optional[int]) -> tuple[np.ndarray, str]:
    """The model's `[3, 63, 63]` float32 image and its status (see module docstring).

    `channel` is `band_channel(ts)` of the alert's light curve. Never raises:
    anything but a usable template gives the all-zero image."""
    image = np.zeros((3, STAMP_SIZE, STAMP_SIZE), dtype=np.float32)
    pixels, status = template_pixels(cutout)
    if pixels is None:
        return image, status
    if channel not in (0, 1, 2):
        return image, "no band"
    image[channel] = pixels
    return image, status
