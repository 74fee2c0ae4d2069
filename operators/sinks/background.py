"""Background delivery: Fritz annotations, Slack posts and any later writer to a service.

`Delivery` is the one base of those writers: it owns the queue, the retries,
the counts, the "said once" warnings and the close; a writer implements only
`send(key, value)` (how to send one item) and says what happened. Underneath,
`BackgroundSender` runs the threads.

A sink must never make the flow wait for a slow or failing service, so it
hands each item to a `BackgroundSender` and returns. Items wait in a
`CoalescingQueue` (one per key, the newest wins; beyond `max_pending` the
oldest is dropped, so memory stays bounded however long the service is away);
`workers` threads hand each to `send(key, value)`, whose answer says what
happened:

- `None`: finished (sent, or given up for a reason `send` logged);
- a number: not yet, try the same item again after that many seconds (it
  stays in the queue and its key is not handed out twice; with one worker the
  items behind it wait, so order holds);
- `STOP`: nothing more can be sent this run (e.g. the token was refused): the
  item and everything behind it stay, for the sink's recovery state.

`close(timeout)` waits for the queue to drain, at most `timeout` seconds, then
stops the threads; a retry pause or an idle wait ends at once on close.

`Delivery.close` says at once what it waits for and for how long, and Ctrl-C
during that wait is a clean stop: the wait ends, the items not sent are counted
(a stateful sink keeps them in its recovery state), and the process exits with
status 130 once the flow has closed (operators/runtime/logs.py `STOPPING`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Any, Callable, Hashable, Optional, Union

from operators.runtime import metrics
from operators.runtime.logs import STOPPING
from operators.sinks.coalescing import CoalescingQueue
from operators.sinks.ratelimit import backoff_delay

log = logging.getLogger(__name__)

STOP = "stop"
RETRY = "retry"  # for `Delivery.send`: not yet, retry the item after the delivery's backoff

Send = Callable[[Hashable, Any], Union[None, float, str]]


class BackgroundSender:
    def __init__(self, name: str, send: Send, *, max_pending: int, workers: int = 1):
        self.name = name
        self._send = send
        self.queue = CoalescingQueue(max_pending)
        self._closing = threading.Event()
        self.stopped = False
        self._threads = [threading.Thread(target=self._run, name=f"{name}-{k}", daemon=True)
                         for k in range(max(1, workers))]
        for t in self._threads:
            t.start()

    def submit(self, key: Hashable, value: Any, order: Optional[float] = None) -> list[tuple[Hashable, Any]]:
        """Queue `value` for `key` (never blocks); returns the items dropped to make room."""
        return self.queue.put(key, value, order)

    def __contains__(self, key: Hashable) -> bool:
        return key in self.queue

    def __len__(self) -> int:
        """Items waiting or being sent."""
        return self.queue.pending_count()

    def pending(self) -> list[Any]:
        """The values not yet finished, the one being sent first (for recovery state)."""
        return self.queue.pending()

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until everything is finished (or sending stopped); False on timeout."""
        return self.queue.join(timeout, until=lambda: self.stopped)

    def close(self, timeout: float) -> int:
        """Drain for at most `timeout` s, stop the threads; returns how many items were left."""
        self.flush(timeout)
        self._closing.set()
        self.queue.close()
        deadline = time.monotonic() + max(0.5, min(5.0, timeout))
        for t in self._threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        return len(self)

    def _run(self) -> None:
        while not self._closing.is_set() and not self.stopped:
            item = self.queue.get()
            if item is None:
                return
            key, value = item
            finished = False
            try:
                while not self._closing.is_set():
                    try:
                        outcome = self._send(key, value)
                    except Exception:  # noqa: BLE001 - a sender's bug must not end the thread
                        log.exception("%s: sending %r failed", self.name, key)
                        outcome = None
                    if outcome == STOP:
                        self.stopped = True
                        self.queue.wake()
                        return  # the item stays: it is part of what was not sent
                    if outcome is None:
                        finished = True
                        break
                    self._closing.wait(float(outcome))  # retry pause; close ends it
            finally:
                if finished:
                    self.queue.done(key)


class Delivery:
    """The base of a background writer to one service (see the module doc).

    A subclass sets `what` (the items, for log lines) and implements `send`, which
    returns None (finished: sent, or given up after saying why), `RETRY` (a transient
    failure: the item is retried after 1, 2, 4 ... `retry_max` s, `retries` counted),
    a number of seconds (retry after exactly that), or `STOP` (nothing more can be sent
    this run). `count`, `once` and `stats` are for its outcomes; `kept` says where the
    items not sent at close are kept (for the close line)."""

    what = "items"
    service = "the service"
    kept = "not kept"

    def __init__(self, name: str, *, max_pending: int, workers: int = 1, retry_base: float = 1.0,
                 retry_max: float = 60.0):
        self.name = name
        self.stats: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._said: set[str] = set()
        self._failures = 0  # consecutive transient failures (with one worker: of the item at the head)
        self.last_failure = ""  # what the last transient failure was, for the close line
        self.retry_base, self.retry_max = retry_base, retry_max
        self.sender = BackgroundSender(name, self._deliver, max_pending=max_pending, workers=workers)

    # -- for subclasses

    def send(self, key: Hashable, value: Any) -> Union[None, float, str]:
        raise NotImplementedError

    def count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self.stats[what] += n

    def once(self, key: str, level: int, msg: str, *args: Any, exc_info: bool = False) -> bool:
        """Log `msg` at `level` the first time `key` is seen (later: at DEBUG); True the first time."""
        with self._lock:
            first = key not in self._said
            self._said.add(key)
        log.log(level if first else logging.DEBUG, msg, *args, exc_info=exc_info and first)
        return first

    def forget(self, key: str) -> None:
        """Say `key` again next time (e.g. a failure that healed)."""
        with self._lock:
            self._said.discard(key)

    # -- for the sink

    def submit(self, key: Hashable, value: Any, order: Optional[float] = None) -> list[tuple[Hashable, Any]]:
        """Queue `value` for `key` (never blocks); returns the items dropped to make room,
        counted in `alertflow_delivery_dropped_total{sink}` (an operator alerts on it)."""
        dropped = self.sender.submit(key, value, order)
        for survey, n in Counter(getattr(v, "survey", None) or "ZTF" for _, v in dropped).items():
            metrics.delivery_dropped(self.service.lower(), n, survey=survey)
        return dropped

    def __contains__(self, key: Hashable) -> bool:
        return key in self.sender

    def __len__(self) -> int:
        return len(self.sender)

    def pending(self) -> list[Any]:
        return self.sender.pending()

    def flush(self, timeout: Optional[float] = None) -> bool:
        return self.sender.flush(timeout)

    def close(self, timeout: float) -> int:
        """Wait at most `timeout` s for the queue (saying so first), stop; returns the items not sent.
        Ctrl-C during the wait ends it at once (no traceback: the flow closes normally)."""
        waiting = len(self)
        if waiting and timeout > 0 and not STOPPING.is_set():
            why = f" ({self.last_failure})" if self.last_failure else ""
            log.info("%s: %d %s not sent yet%s; waiting up to %.0f s for %s before the flow ends "
                     "(Ctrl-C stops now; %s)", self.name, waiting, self.what, why, timeout, self.service, self.kept)
        interrupted = False
        try:
            self._drain(timeout)
        except KeyboardInterrupt:  # Ctrl-C in this thread: bytewax would turn it into a panic
            STOPPING.set()
            interrupted = True
        left = self.sender.close(0.0)
        if left and (interrupted or STOPPING.is_set()):
            log.warning("%s: stopped by Ctrl-C with %d %s not sent; %s", self.name, left, self.what, self.kept)
        return left

    def _drain(self, timeout: float) -> None:
        deadline = time.monotonic() + max(0.0, timeout)
        while not self.sender.flush(min(0.25, max(0.0, deadline - time.monotonic()))):
            if STOPPING.is_set() or time.monotonic() >= deadline:  # Ctrl-C seen by another thread
                return

    def _deliver(self, key: Hashable, value: Any) -> Union[None, float, str]:
        outcome = self.send(key, value)
        with self._lock:
            if outcome == RETRY:
                self._failures += 1
                self.stats["retries"] += 1
                attempt = self._failures
            else:
                self._failures = 0
                if outcome is None:
                    self.last_failure = ""
        if outcome == RETRY:
            return backoff_delay(attempt, base=self.retry_base, cap=self.retry_max, jitter=0.5)
        return outcome
