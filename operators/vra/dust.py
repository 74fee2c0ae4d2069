"""SFD (Schlegel, Finkbeiner & Davis 1998) E(B-V) at a sky position.

Inputs: ICRS ra, dec in degrees, and a directory holding SFD's two maps
`SFD_dust_4096_ngp.fits` and `SFD_dust_4096_sgp.fits` (the files `dustmaps`
uses: one Lambert zenithal equal-area projection per Galactic hemisphere).
Output: E(B-V) as float (NaN when no map is configured).

The maps are read with astropy as dustmaps' `SFDQuery` reads them: Galactic
coordinates, the map header's WCS, and bilinear interpolation with edge
clamping (`scipy.ndimage.map_coordinates`, order=1, mode="nearest"). The
tests check the numbers against SFD's own Lambert pixel formula. The maps
cannot be downloaded at run time: point `FINK_VRA_SFD_DIR` at a local copy.
"""

from __future__ import annotations

import logging
import math
import threading
from pathlib import Path
from typing import Optional

import numpy as np
from scipy.ndimage import map_coordinates

log = logging.getLogger(__name__)

POLES = ("ngp", "sgp")


def sfd_map_paths(map_dir: Path | str) -> dict[str, Path]:
    """The two files dustmaps' SFDQuery reads from `map_dir`."""
    return {pole: Path(map_dir) / f"SFD_dust_4096_{pole}.fits" for pole in POLES}


def galactic(ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ICRS degrees to Galactic (l, b) degrees."""
    from astropy.coordinates import SkyCoord

    gal = SkyCoord(ra=np.atleast_1d(ra), dec=np.atleast_1d(dec), unit="deg", frame="icrs").galactic
    return gal.l.deg, gal.b.deg


class SFDMaps:
    """SFD maps read with astropy, queried as dustmaps' `SFDQuery` does."""

    def __init__(self, map_dir: Path | str):
        from astropy.io import fits
        from astropy.wcs import WCS

        # wcslib keeps per-projection scratch state: one query at a time per map.
        self._lock = threading.Lock()
        self._maps = {}
        for pole, path in sfd_map_paths(map_dir).items():
            with fits.open(path) as hdul:
                self._maps[pole] = (np.asarray(hdul[0].data, dtype="float32"), WCS(hdul[0].header))

    def query_lb(self, l_deg: np.ndarray, b_deg: np.ndarray) -> np.ndarray:
        l_deg, b_deg = np.atleast_1d(l_deg), np.atleast_1d(b_deg)
        out = np.full(l_deg.shape, np.nan, dtype="float32")
        for pole in POLES:
            sel = (b_deg >= 0) if pole == "ngp" else (b_deg < 0)
            if np.any(sel):
                image, wcs = self._maps[pole]
                with self._lock:
                    x, y = wcs.wcs_world2pix(l_deg[sel], b_deg[sel], 0)
                out[sel] = map_coordinates(image, [y, x], order=1, mode="nearest")
        return out

    def __call__(self, ra: float, dec: float) -> float:
        l_deg, b_deg = galactic(ra, dec)
        return float(self.query_lb(l_deg, b_deg)[0])


def open_sfd(map_dir: Optional[Path | str]):
    """A callable `(ra, dec) -> E(B-V)`, or None (with one warning) when unusable.

    None when `map_dir` is unset or lacks either map file: `ebv` is then NaN.
    """
    if not map_dir:
        log.warning("FINK_VRA_SFD_DIR not set: ebv will be NaN (SFD maps cannot be downloaded here)")
        return None
    missing = [str(p) for p in sfd_map_paths(map_dir).values() if not p.is_file()]
    if missing:
        log.warning("SFD map files missing (%s): ebv will be NaN", ", ".join(missing))
        return None
    return SFDMaps(map_dir)


def ebv_or_nan(lookup, ra: float, dec: float) -> float:
    """E(B-V) from `lookup`, NaN without a lookup or a finite position."""
    if lookup is None or not (math.isfinite(ra) and math.isfinite(dec)):
        return math.nan
    return lookup(ra, dec)
