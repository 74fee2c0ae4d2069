"""Sizes of the flow's bounded in-memory structures, as metrics gauges.

A long run must keep each of these at or under its bound (issue 28, the soak benchmark
`bench/soak.py` checks it): the results CSV's and the dead-letter file's dedup windows
(operators/io/files.py, `window`), the open model batches (operators/runtime/batching.py,
`ORACLE_BATCH_SIZE` per key), and whatever a sink registers. An owner calls
`track(name, obj, limit)` once; `obj` is held weakly and measured with `len()` when
scraped, so tracking costs nothing per item. Several objects under one name (one per
worker or key) are summed, limits too. A structure its owner guards with a lock is
measured under that lock (`lock=`): a TTL cache's `len()` expires entries, i.e. writes.

    alertflow_bounded_items{structure="csv_dedup_window"}   keys held now
    alertflow_bounded_limit{structure="csv_dedup_window"}   its bound
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Optional

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily

_lock = threading.Lock()
_tracked: dict[str, dict[int, tuple]] = {}  # name -> id(obj) -> (weak reference, limit, lock); caches are unhashable


def track(name: str, obj: object, limit: int, lock: Optional[Any] = None, where: str = "") -> None:
    """Measure `len(obj)` under `name` while `obj` lives; `limit` is its documented bound and
    `where` says where it is set (for reports); `lock` (a context manager) is held while
    measuring, for a structure its owner guards."""
    key = id(obj)

    def gone(_ref, name=name, key=key):
        with _lock:
            _tracked.get(name, {}).pop(key, None)

    with _lock:
        _tracked.setdefault(name, {})[key] = (weakref.ref(obj, gone), int(limit), lock, where)


def snapshot() -> dict[str, dict[str, int]]:
    """{name: {"items": n, "limit": bound, "objects": k, "where": text}} of what is alive now."""
    with _lock:
        groups = {name: [(ref(), *rest) for ref, *rest in objs.values()] for name, objs in _tracked.items()}
    out = {}
    for name, entries in groups.items():
        entries = [e for e in entries if e[0] is not None]
        items = 0
        for obj, _, lock, _ in entries:
            try:
                if lock is None:
                    items += len(obj)
                else:
                    with lock:
                        items += len(obj)
            except Exception:  # noqa: BLE001 - a structure mid-change is measured next time
                pass
        out[name] = {"items": items, "limit": sum(e[1] for e in entries), "objects": len(entries),
                     "where": next((e[3] for e in entries if e[3]), "")}
    return out


class _Collector:
    def collect(self):
        items = GaugeMetricFamily("alertflow_bounded_items", "Items held by a bounded in-memory structure.",
                                  labels=["structure"])
        limit = GaugeMetricFamily("alertflow_bounded_limit", "The bound of a bounded in-memory structure.",
                                  labels=["structure"])
        for name, s in snapshot().items():
            items.add_metric([name], s["items"])
            limit.add_metric([name], s["limit"])
        yield items
        yield limit


_registered: Optional[_Collector] = None


def _register() -> None:
    global _registered
    if _registered is None:
        _registered = _Collector()
        REGISTRY.register(_registered)


_register()
