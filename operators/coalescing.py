"""A queue that keeps only the newest value per key, in first-come order.

For senders that fall behind a stream of updates (Fritz annotations): an
object's newer classification replaces its older one still waiting, so the
backlog is bounded by the number of objects, not of alerts.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any, Optional


class CoalescingQueue:
    """FIFO of (key -> newest value); at most one value per key waits, and a key
    being worked on is not handed out again until `done(key)`."""

    def __init__(self, maxlen: int):
        self.maxlen = max(1, maxlen)
        self._items: OrderedDict[str, tuple[Optional[float], Any]] = OrderedDict()
        self._busy: set[str] = set()
        self._cond = threading.Condition()
        self._closed = False
        self.coalesced = 0
        self.dropped = 0

    def put(self, key: str, value: Any, order: Optional[float] = None) -> None:
        """Queue `value` for `key`; an older waiting value of the key is replaced
        (a value with a larger `order`, e.g. jd, is kept instead)."""
        with self._cond:
            old = self._items.get(key)
            if old is not None:
                self.coalesced += 1
                if old[0] is not None and order is not None and old[0] > order:
                    return
                self._items[key] = (order, value)  # keeps its place in the line
            else:
                self._items[key] = (order, value)
                while len(self._items) > self.maxlen:
                    self._items.popitem(last=False)
                    self.dropped += 1
            self._cond.notify()

    def get(self, timeout: Optional[float] = None) -> Optional[tuple[str, Any]]:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                for key in self._items:
                    if key not in self._busy:
                        _, value = self._items.pop(key)
                        self._busy.add(key)
                        return key, value
                if self._closed:
                    return None
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(left)

    def done(self, key: str) -> None:
        with self._cond:
            self._busy.discard(key)
            self._cond.notify_all()

    def join(self, timeout: Optional[float] = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._items or self._busy:
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
        with self._cond:
            return len(self._items)
