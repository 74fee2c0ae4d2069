"""A queue that keeps only the newest value per key, in first-come order.

For senders that fall behind a stream of updates (Fritz annotations): an
object's newer classification replaces its older one still waiting, so the
backlog is bounded by the number of objects, not of alerts.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Hashable, Optional


class CoalescingQueue:
    """FIFO of (key -> newest value); at most one value per key waits, and a key
    being worked on is not handed out again until `done(key)`."""

    def __init__(self, maxlen: int):
        self.maxlen = max(1, maxlen)
        # Waiting values in first-come order (OrderedDict: a replaced value keeps its
        # place, the oldest is dropped first; cachetools has no such queue).
        self._items: OrderedDict[Hashable, tuple[Optional[float], Any]] = OrderedDict()
        self._busy: dict[Hashable, Any] = {}  # handed out, not yet done
        self._cond = threading.Condition()
        self._closed = False
        self.coalesced = 0
        self.dropped = 0

    def put(self, key: Hashable, value: Any, order: Optional[float] = None) -> list[tuple[Hashable, Any]]:
        """Queue `value` for `key`; an older waiting value of the key is replaced
        (a value with a larger `order`, e.g. jd, is kept instead). Returns the
        `(key, value)`s dropped to stay within `maxlen`, oldest first."""
        dropped = []
        with self._cond:
            old = self._items.get(key)
            if old is not None:
                self.coalesced += 1
                if old[0] is not None and order is not None and old[0] > order:
                    return dropped
                self._items[key] = (order, value)  # keeps its place in the line
            else:
                self._items[key] = (order, value)
                while len(self._items) > self.maxlen:
                    gone, (_, gone_value) = self._items.popitem(last=False)
                    dropped.append((gone, gone_value))
                    self.dropped += 1
            self._cond.notify()
        return dropped

    def get(self, timeout: Optional[float] = None) -> Optional[tuple[Hashable, Any]]:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                for key in self._items:
                    if key not in self._busy:
                        _, value = self._items.pop(key)
                        self._busy[key] = value
                        return key, value
                if self._closed:
                    return None
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(left)

    def done(self, key: Hashable) -> None:
        with self._cond:
            self._busy.pop(key, None)
            self._cond.notify_all()

    def wake(self) -> None:
        """Let `join` look at its `until` condition again."""
        with self._cond:
            self._cond.notify_all()

    def join(self, timeout: Optional[float] = None, until: Callable[[], bool] = lambda: False) -> bool:
        """Wait until nothing waits or is busy (or `until()` is true); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while (self._items or self._busy) and not until():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        """Values waiting (not those being worked on)."""
        with self._cond:
            return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        with self._cond:
            return key in self._items or key in self._busy

    def pending_count(self) -> int:
        with self._cond:
            return len(self._items) + len(self._busy)

    def pending(self) -> list[Any]:
        """Values being worked on, then those waiting, in order."""
        with self._cond:
            return [*self._busy.values(), *(value for _, value in self._items.values())]
