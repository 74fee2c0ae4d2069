"""The steps of an ORACLE flow, as plain functions over batches.

A `Batch` travels through enrich → build_inputs → classify; each step moves
alerts it cannot handle into `Batch.dead` with the reason, so one bad alert
never stops the flow, and records how long it took (for the batch log line).

The store client is created once per process on first use (`OncePerProcess`), so that
importing a flow never connects anywhere.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Callable

import numpy as np

from operators.runtime import metrics
from operators.runtime.routing import mix
from operators.io.deadletter import DeadLetter, dead_letter
from operators.oracle import filter_names
from operators.oracle.messages import FilterResult
from operators.oracle.results import Result
from operators.oracle.store import Documents
from operators.oracle.inputs import InputError, ModelInputs

log = logging.getLogger("alertflow.oracle")


@dataclass
class Batch:
    items: list  # FilterResult, then (FilterResult, docs), then (FilterResult, ModelInputs), then Result
    dead: list[DeadLetter] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    size_in: int = 0
    shadow: list = field(default_factory=list)  # the shadow model's Results for the same alerts


class OncePerProcess:
    """A value built on first use, once per process (bytewax workers are threads
    of one process and share it; each process of a cluster builds its own)."""

    def __init__(self, make: Callable):
        self._make = make
        self._value = None
        self._built = False
        self._lock = threading.Lock()

    def get(self):
        if not self._built:
            with self._lock:
                if not self._built:
                    self._value = self._make()
                    self._built = True
        return self._value


def start_batch(alerts: list[FilterResult]) -> Batch:
    return Batch(items=list(alerts), size_in=len(alerts))


def enrich(get_store: Callable, batch: Batch, with_cutouts: bool = False) -> Batch:
    """Fetch each alert's BOOM documents, one lookup per collection for the batch.

    `get_store()` gives the process's store (built on first use). A store
    outage is retried inside the store; if it gives up, the error stops the
    flow rather than skip alerts (a restart resumes from the last snapshot).
    """
    t0 = time.perf_counter()
    alerts = batch.items
    # The message usually carries the reference stamp; only fetch cutouts it lacks.
    need_cutouts = with_cutouts and any(a.cutout_template is None for a in alerts)
    docs: Documents = get_store().fetch(
        [a.candid for a in alerts], sorted({a.objectId for a in alerts}), need_cutouts
    )
    ready, dead = [], list(batch.dead)
    for a in alerts:
        alert_doc = docs.alerts.get(a.candid)
        aux_doc = docs.aux.get(a.objectId)
        cutout = {"cutoutTemplate": a.cutout_template} if a.cutout_template else docs.cutouts.get(a.candid)
        if alert_doc is None:
            dead.append(dead_letter("enrich", "no alert document", a.origin, a.candid, a.objectId, a.payload))
        elif aux_doc is None:
            dead.append(dead_letter("enrich", "no aux document", a.origin, a.candid, a.objectId, a.payload))
        else:
            ready.append((a, (alert_doc, aux_doc, cutout)))
    return replace(batch, items=ready, dead=dead, timings={**batch.timings, "enrich": time.perf_counter() - t0})


def build_inputs(build: Callable, batch: Batch, with_stamp: bool = False) -> Batch:
    """Model inputs per alert; documents that cannot make one become dead letters."""
    t0 = time.perf_counter()
    ready, dead = [], list(batch.dead)
    for a, (alert_doc, aux_doc, cutout_doc) in batch.items:
        try:
            ready.append((a, build(alert_doc, aux_doc, cutout_doc, with_stamp)))
        except InputError as exc:
            dead.append(dead_letter("inputs", str(exc), a.origin, a.candid, a.objectId, a.payload))
        except Exception as exc:  # a document shape we did not foresee: keep the alert, say why
            dead.append(dead_letter("inputs", f"bad document: {type(exc).__name__}: {exc}"[:300],
                                    a.origin, a.candid, a.objectId, a.payload))
    return replace(batch, items=ready, dead=dead, timings={**batch.timings, "inputs": time.perf_counter() - t0})


def pad(inputs: list[ModelInputs]) -> tuple[np.ndarray, np.ndarray]:
    """Stack series zero-padded to the batch's longest, with their lengths."""
    lengths = np.array([x.length for x in inputs], dtype=np.int64)
    ts = np.zeros((len(inputs), int(lengths.max()), inputs[0].ts.shape[1]), dtype=np.float32)
    for i, x in enumerate(inputs):
        ts[i, : x.length] = x.ts
    return ts, lengths


def classify(model, predict: Callable, model_name: str, survey: str, batch: Batch) -> Batch:
    """One forward pass for the whole batch → one `Result` per alert."""
    t0 = time.perf_counter()
    if not batch.items:
        return replace(batch, timings={**batch.timings, "model": 0.0})
    alerts = [a for a, _ in batch.items]
    inputs = [x for _, x in batch.items]
    ts, lengths = pad(inputs)
    static = np.stack([x.static for x in inputs]) if model.needs_static else None
    stamps = np.stack([x.stamp for x in inputs]) if model.needs_stamp else None
    probs = predict(model, ts, lengths, static, stamps)
    names = model.taxonomy.nodes
    leaves = model.taxonomy.predicted_leaf(probs)
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    results, dead = [], list(batch.dead)
    for a, x, p, leaf in zip(alerts, inputs, probs, leaves):
        if not np.all(np.isfinite(p)):
            dead.append(dead_letter("classify", "model output is not finite", a.origin, a.candid, a.objectId,
                                    a.payload))
            continue
        results.append(Result(
            candid=a.candid, objectId=a.objectId, jd=a.jd, survey=survey, ra=a.ra, dec=a.dec,
            probabilities=dict(zip(names, p.tolist())),
            predicted=leaf, model=model_name, processed_at=now,
            received_ms=a.origin.timestamp_ms, stamp=x.stamp_status,
        ))
    return replace(batch, items=results, dead=dead, timings={**batch.timings, "model": time.perf_counter() - t0})


def shadow(model, predict: Callable, model_name: str, survey: str, batch: Batch) -> Batch:
    """The shadow model on the batch's inputs (before `classify`): its Results go to
    `Batch.shadow`, its time to the `shadow` stage; the batch itself is unchanged,
    so the main model's rows, dead letters and posts never depend on it."""
    t0 = time.perf_counter()
    out = classify(model, predict, model_name, survey, replace(batch, dead=[]))
    if out.dead:
        log.warning("%s shadow model %s: %d alert(s) without a finite output, left out of the shadow CSV",
                    survey, model_name, len(out.dead))
    return replace(batch, shadow=out.items, timings={**batch.timings, "shadow": time.perf_counter() - t0})


def shadow_of(batch: Batch) -> list[Result]:
    return batch.shadow


def log_batch(survey: str, batch: Batch) -> Batch:
    """One INFO line per batch: counts and where the time went; batch metrics."""
    metrics.observe_batch(survey, batch)
    metrics.maybe_log_summary(survey)
    t = batch.timings
    log.info(
        "%s batch: %d in, %d classified, %d dead-lettered | enrich %.1f ms, inputs %.1f ms, model %.1f ms%s",
        survey, batch.size_in, len(batch.items), len(batch.dead),
        1e3 * t.get("enrich", 0), 1e3 * t.get("inputs", 0), 1e3 * t.get("model", 0),
        f", shadow {1e3 * t['shadow']:.1f} ms" if "shadow" in t else "",
    )
    return batch


def results_of(batch: Batch) -> list[Result]:
    return batch.items


def dead_of(batch: Batch) -> list[DeadLetter]:
    return batch.dead


def shard_of(keys: tuple[str, ...], alert: FilterResult) -> str:
    """Batches are keyed by shard so that `-w N` workers share the model work: the
    alert's batch key among `keys` (operators/runtime/routing.py `batch_keys`). The candid
    is mixed first (`mix`, Fibonacci hashing): ids can carry structure in their low digits, and
    with `candid % 2` a stream whose ids share a parity would go to one of two workers
    (the benchmark's did: its failing messages all had even candids, a 4:5 split)."""
    return keys[mix(alert.candid) % len(keys)]


def passed_filter(survey: str, filter_name: str, alerts: list[FilterResult]) -> list[FilterResult]:
    """The alerts of one input batch that passed the BOOM filter `filter_name` (counted per batch)."""
    passed = [a for a in alerts if a.passed(filter_name)]
    hint = filter_names.watch(survey, filter_name).observe(alerts, len(passed))  # a misspelt ORACLE_FILTER
    if hint:
        log.warning("%s", hint)
    metrics.count_filtered(survey, True, len(passed))
    metrics.count_filtered(survey, False, len(alerts) - len(passed))
    return passed
