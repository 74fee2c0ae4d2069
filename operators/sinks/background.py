"""One bounded background sender: Fritz annotations and Slack posts.

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
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Hashable, Optional, Union

from operators.sinks.coalescing import CoalescingQueue

log = logging.getLogger(__name__)

STOP = "stop"

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
