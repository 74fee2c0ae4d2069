"""Light-curve series of aux documents, kept exactly as BOOM keeps them: one point per jd.

boom-astro/boom: src/alert/base.rs `sanitize_timeseries`, src/alert/ztf.rs and
src/alert/lsst.rs `process_alert` (the candidate joins the packet's detections only
when none has its jd), src/utils/db.rs `update_timeseries_op` (and
`prepare_timeseries_update`, its fast path, which keeps the same points). The
first point ingested at a jd wins: within a packet the first after a stable sort,
across packets the one already stored.
"""

from __future__ import annotations

import math
from typing import Iterable


def _finite_jd(point: dict) -> bool:
    jd = point.get("jd")
    return isinstance(jd, (int, float)) and math.isfinite(jd)


def boom_sanitized(points: Iterable[dict]) -> list[dict]:
    """`sanitize_timeseries`: sorted by jd (a stable sort), the first point of each
    jd kept, points with a non-finite jd dropped."""
    out: list[dict] = []
    for point in sorted((p for p in points if _finite_jd(p)), key=lambda p: p["jd"]):
        if not out or out[-1]["jd"] != point["jd"]:
            out.append(point)
    return out


def boom_packet_series(detections: Iterable[dict], candidate: dict) -> list[dict]:
    """A packet's detections as BOOM stores them: the candidate is appended only if
    no detection has its jd (`process_alert`), then `sanitize_timeseries`."""
    detections = list(detections)
    if not any(p["jd"] == candidate["jd"] for p in detections):
        detections.append(candidate)
    return boom_sanitized(detections)


def boom_merged(stored: Iterable[dict], new: Iterable[dict]) -> list[dict]:
    """`update_timeseries_op`: stored points then the new ones, a point dropped when
    its jd is already there (the stored one wins), non-finite jd dropped, sorted by jd."""
    out: list[dict] = []
    seen: set[float] = set()
    for point in [*stored, *new]:
        if point.get("jd") not in seen:
            seen.add(point.get("jd"))
            out.append(point)
    return sorted((p for p in out if _finite_jd(p)), key=lambda p: p["jd"])
