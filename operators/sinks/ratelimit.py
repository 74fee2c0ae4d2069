"""Client-side pacing: a token bucket and the backoff used when a server says "too many".

SkyPortal's nginx limits requests per token (5/s, burst 10 by default) and
answers 429 without `Retry-After`. One `TokenBucket` per token keeps us under
it — as long as every request of the token takes its tokens from the same
bucket, which is why the ORACLE flow sends every Fritz request of a cluster
through one worker (dataflows/oracle.py, step `fritz`).
"""

from __future__ import annotations

import random
import threading
import time
from typing import Callable, Optional


class TokenBucket:
    """Thread-safe token bucket: `rate` tokens per second, at most `burst` saved."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate = float(rate)
        self.burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def try_acquire(self) -> bool:
        with self._lock:
            self._refill()
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False

    def acquire(self, timeout: Optional[float] = None) -> bool:
        """Take one token, waiting as long as needed (or `timeout` s); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                self._refill()
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return True
                wait = (1.0 - self._tokens) / self.rate
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                wait = min(wait, left)
            time.sleep(wait)

    def drain(self) -> None:
        """Forget the saved burst: the server just said we went too fast, so every
        thread sharing this bucket slows down, not only the one that got the 429."""
        with self._lock:
            self._refill()
            self._tokens = min(self._tokens, 0.0)


def backoff_delay(attempt: int, base: float = 1.0, cap: float = 30.0, jitter: float = 1.0,
                  rng: Callable[[], float] = random.random) -> float:
    """Seconds to wait before retry number `attempt` (1, 2, ...): `base`·2^(attempt−1),
    at most `cap`, plus up to `jitter`·`base` of random jitter (so that workers that
    failed together do not retry together)."""
    attempt = max(1, int(attempt))
    return min(cap, base * 2 ** (attempt - 1)) + jitter * base * rng()


__all__ = ["TokenBucket", "backoff_delay"]
