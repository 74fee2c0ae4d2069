"""Which BOOM filters the alerts passed: a hint when ORACLE_FILTER matches none of them.

A misspelt `ORACLE_FILTER` used to look like a quiet night (`0 passed filter`, exit 0).
Two places now say which filters the alerts actually carry:

- the flow (`FilterWatch`, fed by `steps.passed_filter`): once `HINT_AFTER` alerts have
  arrived and none passed the configured filter, one warning naming the filters seen;
  after that (or as soon as one alert passes) it costs nothing;
- `python -m dataflows check` (`check_filter`): the filters in the topic's most recent
  messages, and a failure when the configured one is not among them.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from types import SimpleNamespace
from typing import Any, Iterable, Mapping, Optional, Sequence

from operators.oracle.messages import FilterResult, parse_message

HINT_AFTER = 20  # alerts without a single one passing before the flow warns
RECENT = 200  # messages per partition `check` reads back from the end of the topic
VARIABLE = "ORACLE_FILTER"


def seen_list(seen: Counter, most: int = 8) -> str:
    """`a (28), b (9)`: the filter names, most frequent first."""
    if not seen:
        return "none"
    shown = ", ".join(f"{name} ({n})" for name, n in seen.most_common(most))
    return shown + (f" and {len(seen) - most} more" if len(seen) > most else "")


def filter_hint(filter_name: str, seen: Counter, alerts: int, where: str = "alerts") -> str:
    """The one line said when `alerts` arrived, none of which passed `filter_name`."""
    return (f"{VARIABLE}={filter_name!r}: none of the first {alerts} {where} passed it; the filters they passed: "
            f"{seen_list(seen)} -> set {VARIABLE} to the BOOM filter whose alerts should be classified")


class FilterWatch:
    """Per process (workers are threads): tallies the filters of arriving alerts until one
    passes the configured filter or `after` alerts have arrived; `observe` returns the hint once."""

    def __init__(self, filter_name: str, after: int = HINT_AFTER):
        self.filter_name, self.after = filter_name, after
        self._seen: Counter = Counter()
        self._alerts = 0
        self._done = False
        self._lock = threading.Lock()

    def observe(self, alerts: Sequence[FilterResult], passed: int) -> Optional[str]:
        if self._done:
            return None
        with self._lock:
            if self._done:
                return None
            if passed:
                self._done = True
                return None
            self._alerts += len(alerts)
            for a in alerts:
                self._seen.update(a.filters)
            if self._alerts < self.after:
                return None
            self._done = True
            return filter_hint(self.filter_name, self._seen, self._alerts)


_watches: dict[tuple[str, str], FilterWatch] = {}
_watches_lock = threading.Lock()


def watch(survey: str, filter_name: str) -> FilterWatch:
    """The process's watch for (survey, filter)."""
    key = (survey, filter_name)
    found = _watches.get(key)
    if found is None:
        with _watches_lock:
            found = _watches.setdefault(key, FilterWatch(filter_name))
    return found


# ---------------------------------------------------------------- check: the topic's recent messages


def names_in(values: Iterable[bytes]) -> tuple[Counter, int]:
    """(filter names → how many messages passed each, how many messages were alerts)."""
    seen, alerts = Counter(), 0
    for value in values:
        parsed = parse_message(SimpleNamespace(value=value))
        if isinstance(parsed, FilterResult):
            alerts += 1
            seen.update(parsed.filters)
    return seen, alerts


def recent_values(client_config: Mapping[str, Any], topic: str, per_partition: int = RECENT,
                  timeout_s: float = 5.0) -> list[bytes]:
    """Up to `per_partition` of the last messages of every partition of `topic` (read without a
    consumer group: nothing is committed)."""
    from confluent_kafka import Consumer, TopicPartition

    conf = {k: v for k, v in client_config.items() if k not in {"group.id", "enable.auto.commit"}}
    consumer = Consumer({**conf, "group.id": "alertflow-check", "enable.auto.commit": False, "log_level": 0})
    try:
        md = consumer.list_topics(topic, timeout=timeout_s).topics[topic]
        wanted, assign = {}, []
        for p in md.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            if high > low:
                start = max(low, high - per_partition)
                wanted[p] = high
                assign.append(TopicPartition(topic, p, start))
        if not assign:
            return []
        consumer.assign(assign)
        values, deadline = [], time.monotonic() + timeout_s
        while wanted and time.monotonic() < deadline:
            for msg in consumer.consume(500, 0.2):
                if msg.error() is not None:
                    continue
                if msg.value():
                    values.append(msg.value())
                if msg.offset() + 1 >= wanted.get(msg.partition(), 0):
                    wanted.pop(msg.partition(), None)
        return values
    finally:
        consumer.close()


def filter_result(filter_name: str, seen: Counter, alerts: int, topic: str):
    """(ok, detail, fix) for `check`'s filter line."""
    if alerts == 0:
        return True, f"{filter_name}: topic {topic} holds no alert to compare with yet", ""
    if seen.get(filter_name):
        return True, (f"{filter_name}: passed by {seen[filter_name]} of the {alerts} most recent alerts on {topic} "
                      f"(filters in them: {seen_list(seen)})"), ""
    return False, (f"{VARIABLE}={filter_name!r} passed none of the {alerts} most recent alerts on {topic}; the "
                   f"filters they passed: {seen_list(seen)}"), f"set {VARIABLE} to one of them"
