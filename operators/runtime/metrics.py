"""Prometheus metrics and a periodic summary line for the flows.

Every function here observes the flow and nothing else: it returns nothing,
never raises (a metrics bug must not stop a night), and is cheap enough to call
per message. Metrics live in `prometheus_client`'s default registry, which
bytewax serves at `http://HOST:3030/metrics` when the flow runs with
`BYTEWAX_DATAFLOW_API_ENABLED=true` (port `BYTEWAX_DATAFLOW_API_PORT`), next to
bytewax's own per-step metrics and, with the Kafka input,
`bytewax_kafka_consumer_lag{step_id,topic,partition}`. A flow run some other
way can serve the same registry with `start_exporter(metrics_port())`
(`ALERTFLOW_METRICS_PORT`).

Labels: `flow` (the dataflow name, `oracle_ztf`, `oracle_lsst`, `fink_vra`) and
`survey` (`ZTF`, `LSST`) on everything; `stage`, `reason`, `outcome`, `result`
where they matter. Free-text label values (dead-letter reasons, outcomes) are
normalised and capped so that a stream of odd messages cannot blow up the
number of time series.

    alertflow_messages_total{flow,survey}                   messages read from the input
    alertflow_filter_total{flow,survey,result}              alerts that passed / failed the BOOM filter
    alertflow_classified_total{flow,survey}                 alerts classified by the model
    alertflow_stamps_total{flow,survey,status}              classified alerts of image models by stamp status
                                                            (template, none, empty, undecodable, bad shape NxN, ...)
    alertflow_results_written_total{flow,survey}            rows appended to the results file
    alertflow_dead_letters_total{flow,survey,stage,reason}  dead letters, by stage and reason kind
    alertflow_fritz_requests_total{flow,survey,outcome}     Fritz requests: success, failure, retry, ...
    alertflow_slack_posts_total{flow,survey,outcome}        Slack posts: success, failure, retry, ...
    alertflow_delivery_dropped_total{flow,survey,sink}      Slack posts / Fritz objects dropped past their queue's
                                                            bound (SLACK max_pending, FRITZ_MAX_PENDING): never sent
    alertflow_results_published_total{flow,survey,sink}    results delivered to the results topic / collection
    alertflow_results_delivery_failures_total{flow,survey,sink,outcome}
                                                            failed deliveries: retried (outage) or refused (dead letter)
    alertflow_batch_size{flow,survey}                       histogram: alerts per model batch
    alertflow_stage_seconds{flow,survey,stage}              histogram: time per batch in enrich / inputs / model / shadow
    alertflow_end_to_end_latency_seconds{flow,survey}       histogram: Kafka append time -> results file
    alertflow_last_batch_timestamp_seconds{flow,survey}     gauge: when the last batch finished (stall alarms)
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("alertflow.metrics")

PORT_VARIABLE = "ALERTFLOW_METRICS_PORT"

_BASE = ("flow", "survey")

MESSAGES = Counter("alertflow_messages", "Messages read from the flow's input.", _BASE)
FILTERED = Counter("alertflow_filter", "Alerts by BOOM filter outcome (result=passed|failed).", (*_BASE, "result"))
CLASSIFIED = Counter("alertflow_classified", "Alerts classified by the model.", _BASE)
STAMPS = Counter("alertflow_stamps", "Classified alerts of image models by stamp status "
                 "(template, none, empty, undecodable, bad shape NxN, blank, no band).", (*_BASE, "status"))
WRITTEN = Counter("alertflow_results_written", "Result rows appended to the results file.", _BASE)
DEAD = Counter("alertflow_dead_letters", "Dead letters by stage and reason kind.", (*_BASE, "stage", "reason"))
FRITZ = Counter("alertflow_fritz_requests", "Fritz requests by outcome.", (*_BASE, "outcome"))
SLACK = Counter("alertflow_slack_posts", "Slack posts by outcome.", (*_BASE, "outcome"))
DELIVERY_DROPPED = Counter("alertflow_delivery_dropped", "Items a background delivery dropped past its queue's "
                           "bound, never sent (sink=slack: alerts, sink=fritz: objects).", (*_BASE, "sink"))
PUBLISHED = Counter("alertflow_results_published", "Results delivered, by sink (topic, collection, "
                    "shadow_collection, deadletter_topic).", (*_BASE, "sink"))
DELIVERY_FAILURES = Counter("alertflow_results_delivery_failures", "Failed deliveries by sink and outcome "
                            "(retried: an outage, written again; refused: a dead letter).", (*_BASE, "sink", "outcome"))
BATCH_SIZE = Histogram("alertflow_batch_size", "Alerts per model batch.", _BASE,
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096))
STAGE_SECONDS = Histogram("alertflow_stage_seconds", "Time per batch spent in a stage (enrich, inputs, model, shadow).",
                          (*_BASE, "stage"),
                          buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
LATENCY = Histogram("alertflow_end_to_end_latency_seconds",
                    "From the Kafka append time of an alert to its row in the results file.", _BASE,
                    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 21600, 86400))
LAST_BATCH = Gauge("alertflow_last_batch_timestamp_seconds", "Unix time at which the last batch was observed.", _BASE)

MAX_LABEL_VALUES = 50  # distinct free-text values per label before they become "other"
_seen_values: dict[str, set] = {}
_values_lock = threading.Lock()


def _never_raise(fn):
    """Metrics must never stop a flow: log a failure once per function, then stay quiet."""
    warned = []

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            fn(*args, **kwargs)
        except Exception:  # noqa: BLE001 - observing must not break the observed
            if not warned:
                warned.append(True)
                log.warning("metrics: %s failed (further failures not logged)", fn.__name__, exc_info=True)
        return None

    return wrapper


def _survey_name(survey: Any) -> str:
    return str(getattr(survey, "name", survey) or "unknown")


def flow_name(survey: Any, flow: Optional[str] = None) -> str:
    """The `flow` label: the given name, else the ORACLE flow's (`oracle_ztf`)."""
    return flow or f"oracle_{_survey_name(survey).lower()}"


def _labels(survey: Any, flow: Optional[str]) -> tuple[str, str]:
    return flow_name(survey, flow), _survey_name(survey)


def label_value(kind: str, value: Any, limit: int = MAX_LABEL_VALUES) -> str:
    """A bounded label value: lower-case words, digits folded to `N`, at most `limit` distinct per kind."""
    text = re.sub(r"\d+", "N", str(value if value is not None else "unknown")).strip().lower()
    text = re.sub(r"[^a-z0-9_ .\-/]+", "_", text)[:64] or "unknown"
    with _values_lock:
        seen = _seen_values.setdefault(kind, set())
        if text not in seen:
            if len(seen) >= limit:
                return "other"
            seen.add(text)
    return text


# ---------------------------------------------------------------- totals for the summary line


@dataclass
class _Totals:
    counts: dict = field(default_factory=lambda: {"in": 0, "passed": 0, "failed": 0, "classified": 0,
                                                  "dead": 0, "written": 0, "skipped": 0})
    dead_reasons: dict = field(default_factory=dict)  # "stage: reason kind" -> count
    last_counts: dict = field(default_factory=dict)
    last_time: float = field(default_factory=time.monotonic)
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.last_counts = self.last_counts or dict(self.counts)


_totals: dict[tuple[str, str], _Totals] = {}
_totals_lock = threading.Lock()


def _add(key: tuple[str, str], name: str, n: int, reasons: Optional[dict] = None) -> None:
    with _totals_lock:
        t = _totals.get(key)
        if t is None:
            t = _totals[key] = _Totals()
        t.counts[name] += n
        for reason, k in (reasons or {}).items():
            t.dead_reasons[reason] = t.dead_reasons.get(reason, 0) + k


def begin(survey: Any, flow: Optional[str] = None) -> None:
    """The run starts now (the run summary's time counts from here)."""
    key = _labels(survey, flow)
    with _totals_lock:
        _totals.setdefault(key, _Totals())


# ---------------------------------------------------------------- what the flows call


@_never_raise
def count_messages(survey: Any, n: int = 1, flow: Optional[str] = None) -> None:
    """`n` messages read from the input (Kafka or a replay)."""
    key = _labels(survey, flow)
    MESSAGES.labels(*key).inc(n)
    _add(key, "in", n)


@_never_raise
def count_filtered(survey: Any, passed: bool, n: int = 1, flow: Optional[str] = None) -> None:
    """`n` alerts that passed (or failed) the BOOM filter."""
    key = _labels(survey, flow)
    FILTERED.labels(*key, "passed" if passed else "failed").inc(n)
    _add(key, "passed" if passed else "failed", n)


@_never_raise
def count_dead_letters(survey: Any, letters: Any, flow: Optional[str] = None) -> None:
    """Dead letters (one `DeadLetter`, a dict from a dead-letter file, or an iterable of them).

    Call it once per dead letter in one place (the merged dead-letter stream),
    not per step, so that nothing is counted twice."""
    key = _labels(survey, flow)
    if isinstance(letters, Mapping) or hasattr(letters, "reason") or (
            isinstance(letters, tuple) and len(letters) == 2 and hasattr(letters[1], "reason")):
        letters = [letters]
    n = 0
    reasons: dict = {}
    for letter in letters:
        if isinstance(letter, tuple) and len(letter) == 2:  # a (key, letter) pair from a keyed stream
            letter = letter[1]
        if isinstance(letter, Mapping):
            reason, stage = letter.get("reason") or "", letter.get("stage")
        else:
            reason, stage = getattr(letter, "reason", "") or "", getattr(letter, "stage", None)
        kind = str(reason).split(":", 1)[0]
        stage_label, reason_label = label_value("stage", stage), label_value("reason", kind)
        DEAD.labels(*key, stage_label, reason_label).inc()
        reasons[f"{stage_label}: {reason_label}"] = reasons.get(f"{stage_label}: {reason_label}", 0) + 1
        n += 1
    _add(key, "dead", n, reasons)


@_never_raise
def observe_batch(survey: Any, batch: Any, flow: Optional[str] = None) -> None:
    """A batch after `classify`: its size, the time of each stage, how many were classified.

    Duck-typed on `operators.oracle.steps.Batch` (`size_in`, `items`, `timings`).
    Its dead letters are not counted here: `count_dead_letters` sees them downstream."""
    key = _labels(survey, flow)
    size = int(getattr(batch, "size_in", 0) or len(getattr(batch, "items", ()) or ()))
    BATCH_SIZE.labels(*key).observe(size)
    for stage, seconds in (getattr(batch, "timings", None) or {}).items():
        STAGE_SECONDS.labels(*key, label_value("stage", stage)).observe(max(0.0, float(seconds)))
    classified = len(getattr(batch, "items", ()) or ())
    CLASSIFIED.labels(*key).inc(classified)
    for result in getattr(batch, "items", ()) or ():
        status = getattr(result, "stamp", "")
        if status:  # image models only; sizes fold to N ("bad shape NxN") to bound the label
            STAMPS.labels(*key, label_value("stamp", status, 20)).inc()
    _add(key, "classified", classified)
    LAST_BATCH.labels(*key).set(time.time())


@_never_raise
def observe_written(survey: Any, results: Iterable, flow: Optional[str] = None, now_ms: Optional[float] = None) -> None:
    """Results just appended to the results file: count them, and their end-to-end latency
    (now minus `Result.received_ms`, the Kafka append time; results without it are not timed).
    An item may also be that `received_ms` itself (rows encoded upstream, `results.csv_rows`)."""
    key = _labels(survey, flow)
    now_ms = time.time() * 1e3 if now_ms is None else now_ms
    n = 0
    latency = LATENCY.labels(*key)
    for r in results:
        if isinstance(r, tuple) and len(r) == 2:
            r = r[1]
        n += 1
        received = r if isinstance(r, (int, float)) or r is None else getattr(r, "received_ms", None)
        if received is not None and received > 0:
            latency.observe(max(0.0, (now_ms - float(received)) / 1e3))
    WRITTEN.labels(*key).inc(n)
    _add(key, "written", n)


@_never_raise
def count_skipped(survey: Any, n: int, flow: Optional[str] = None) -> None:
    """`n` rows not written because an earlier run (or a replay) wrote them already."""
    if n:
        _add(_labels(survey, flow), "skipped", int(n))


@_never_raise
def fritz_request(outcome: str, survey: Any = "ZTF", n: int = 1, flow: Optional[str] = None) -> None:
    """A Fritz request ended: `success`, `failure`, `retry`, or a short word (`not_found`, ...)."""
    FRITZ.labels(*_labels(survey, flow), label_value("fritz_outcome", outcome, 20)).inc(n)


@_never_raise
def slack_post(outcome: str, survey: Any = "ZTF", n: int = 1, flow: Optional[str] = None) -> None:
    """A Slack post ended: `success`, `failure`, `retry`, or a short word."""
    SLACK.labels(*_labels(survey, flow), label_value("slack_outcome", outcome, 20)).inc(n)


@_never_raise
def delivery_dropped(sink: str, n: int, survey: Any = "ZTF", flow: Optional[str] = None) -> None:
    """`n` items dropped by `sink`'s background queue past its bound (operators/sinks/background.py)."""
    if n:
        DELIVERY_DROPPED.labels(*_labels(survey, flow), sink).inc(n)


@_never_raise
def results_published(survey: Any, sink: str, n: int, flow: Optional[str] = None) -> None:
    """`n` results delivered to `sink` (topic, collection, ...)."""
    if n:
        PUBLISHED.labels(*_labels(survey, flow), sink).inc(n)


@_never_raise
def results_delivery_failed(survey: Any, sink: str, outcome: str, n: int = 1, flow: Optional[str] = None) -> None:
    """`n` deliveries to `sink` failed: `retried` (written again) or `refused` (dead-lettered)."""
    if n:
        DELIVERY_FAILURES.labels(*_labels(survey, flow), sink, outcome).inc(n)


# ---------------------------------------------------------------- summary line


def _rate(delta: int, seconds: float) -> float:
    return delta / seconds if seconds > 0 else 0.0


def _take(t: _Totals, now: float, reset: bool) -> tuple[dict, dict, float]:
    """Counts now, counts at the last line, seconds since it (call with the lock held)."""
    c, last = dict(t.counts), dict(t.last_counts)
    elapsed = now - t.last_time
    if reset:
        t.last_counts, t.last_time = dict(c), now
    return c, last, elapsed


def _reasons(reasons: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))


def _counts_text(c: dict, reasons: dict) -> str:
    dead = f"{c['dead']} dead-lettered" + (f" ({_reasons(reasons)})" if reasons else "")
    return (f"{c['in']} in, {c['passed']} passed filter, {c['failed']} failed filter, {c['classified']} classified, "
            f"{dead}, {c['written']} written, {c['skipped']} skipped as already written")


def _format(key: tuple[str, str], c: dict, last: dict, elapsed: float, reasons: Optional[dict] = None) -> str:
    d = {k: c[k] - last.get(k, 0) for k in c}
    return (f"{key[1]} summary ({key[0]}): {_counts_text(c, reasons or {})} | "
            f"last {elapsed:.0f} s: {_rate(d['in'], elapsed):.1f} in/s, {_rate(d['classified'], elapsed):.1f} classified/s, "
            f"{_rate(d['dead'], elapsed):.2f} dead/s")


def run_summary(survey: Any, flow: Optional[str] = None, now: Optional[float] = None) -> str:
    """The line logged when a run ends: totals since the process started and the time taken.

    `ZTF run summary (oracle_ztf): 40 in, 31 passed filter, 6 failed filter, 27 classified,
    4 dead-lettered (parse: undecodable avro 2, ...), 27 written, 0 skipped as already written | 3.1 s`"""
    key = _labels(survey, flow)
    now = time.monotonic() if now is None else now
    with _totals_lock:
        t = _totals.get(key) or _Totals(started=now)
        c, reasons, started = dict(t.counts), dict(t.dead_reasons), t.started
    return f"{key[1]} run summary ({key[0]}): {_counts_text(c, reasons)} | {now - started:.1f} s"


def summary_line(survey: Any, flow: Optional[str] = None, now: Optional[float] = None, reset: bool = True) -> str:
    """`ZTF summary (oracle_ztf): 1200 in, ... | last 60 s: 20.0 in/s, 4.8 classified/s, 0.17 dead/s`."""
    key = _labels(survey, flow)
    now = time.monotonic() if now is None else now
    with _totals_lock:
        t = _totals.setdefault(key, _Totals(last_time=now, started=now))
        taken = _take(t, now, reset)
        reasons = dict(t.dead_reasons)
    return _format(key, *taken, reasons)


@_never_raise
def maybe_log_summary(survey: Any, every_s: float = 60.0, flow: Optional[str] = None, now: Optional[float] = None) -> None:
    """Log the summary line at INFO when `every_s` seconds have passed since the last one.

    Call it as often as you like (per batch, from any worker thread): at most
    one line per interval is logged."""
    key = _labels(survey, flow)
    now = time.monotonic() if now is None else now
    with _totals_lock:
        t = _totals.get(key)
        if t is None:  # first call: the interval starts now
            _totals[key] = _Totals(last_time=now, started=now)
            return
        if now - t.last_time < every_s:
            return
        taken = _take(t, now, reset=True)
        reasons = dict(t.dead_reasons)
    log.info("%s", _format(key, *taken, reasons))


class Tally:
    """Named counts of one run and the time since it began, as one line (the Fink VRA
    flow's summary; the ORACLE flows use the totals above). Thread-safe."""

    def __init__(self, title: str, names: Iterable[str], clock=time.monotonic):
        self.title, self._clock = title, clock
        self.counts = {name: 0 for name in names}
        self.started = self._last_line = clock()
        self._lock = threading.Lock()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counts[name] = self.counts.get(name, 0) + n

    def line(self) -> str:
        with self._lock:
            counts = dict(self.counts)
        return f"{self.title}: " + ", ".join(f"{v} {k}" for k, v in counts.items()) + \
            f" | {self._clock() - self.started:.1f} s"

    def maybe_log(self, every_s: float = 60.0) -> None:
        with self._lock:
            now = self._clock()
            if now - self._last_line < every_s:
                return
            self._last_line = now
        log.info("%s", self.line())


# ---------------------------------------------------------------- standalone exporter

_exporter_lock = threading.Lock()
_exporter_port: Optional[int] = None


def metrics_port(env: Optional[Mapping[str, str]] = None) -> Optional[int]:
    """`ALERTFLOW_METRICS_PORT` as an int, or None when unset (0 picks a free port).

    For callers outside the flows (which refuse a malformed value at start, as `check`
    does): a malformed value is logged and ignored. Read by `operators.runtime.config.MetricsSettings`."""
    from operators.runtime.config import ConfigError, MetricsSettings

    try:
        return MetricsSettings.read(env).port
    except ConfigError as exc:
        log.warning("%s; no metrics exporter started", exc)
        return None


def start_exporter(port: Optional[int], addr: str = "0.0.0.0") -> Optional[int]:
    """Serve the default registry on `port` with `prometheus_client.start_http_server`.

    Once per process: later calls return the port already serving. Returns the
    port, or None when `port` is None or the port cannot be bound (logged)."""
    global _exporter_port
    if port is None:
        return _exporter_port
    with _exporter_lock:
        if _exporter_port is not None:
            return _exporter_port
        try:
            server, _thread = start_http_server(port, addr=addr, registry=REGISTRY)
            _exporter_port = int(server.server_port)
        except Exception as exc:  # noqa: BLE001 - an exporter problem must not stop the flow
            log.warning("metrics exporter not started on %s:%s: %s", addr, port, exc)
            return None
    log.info("metrics at http://%s:%d/metrics", addr if addr != "0.0.0.0" else "HOST", _exporter_port)
    return _exporter_port
