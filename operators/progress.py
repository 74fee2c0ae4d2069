"""Progress on finite work: embedded replays, benchmarks, active-learning experiments.

    with Progress(len(alerts), "replay") as p:
        for batch in batches:
            ...
            p.advance(len(batch))

On a terminal (stderr is a TTY) it redraws one bar line with the rate and the
ETA; otherwise (log files, CI, `nohup`) it writes a plain line every
`every_s` seconds and one at the end, so logs stay short. Thread-safe:
bytewax workers may advance the same instance. No dependency (tqdm is not
installed here, and this is all we need of it).
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Optional, TextIO


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}"


class Progress:
    """`Progress(total, label)`; `.advance(n)`; `.close()` or use it as a context manager.

    `total=None` when the amount is unknown (shows count and rate only).
    `tty` forces the bar (True) or plain lines (False); by default it follows
    `stream.isatty()`. `every_s` is the interval between plain lines."""

    BAR_WIDTH = 30

    def __init__(self, total: Optional[int], label: str = "progress", *, stream: Optional[TextIO] = None,
                 tty: Optional[bool] = None, every_s: float = 30.0, redraw_s: float = 0.1):
        self.total = total if total is None else max(0, int(total))
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        if tty is None:
            try:
                tty = self.stream.isatty()
            except (AttributeError, ValueError):
                tty = False
        self.tty = bool(tty)
        self.every_s = every_s if not self.tty else redraw_s
        self.done = 0
        self.started = time.monotonic()
        self._last_draw = float("-inf") if self.tty else self.started
        self._lock = threading.Lock()
        self._closed = False
        if self.tty:
            self._draw(self.started)

    # -- text

    def rate(self, now: Optional[float] = None) -> float:
        elapsed = (time.monotonic() if now is None else now) - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def eta(self, now: Optional[float] = None) -> Optional[float]:
        """Seconds left at the average rate so far; None when unknown."""
        rate = self.rate(now)
        if self.total is None or rate <= 0:
            return None
        return max(0, self.total - self.done) / rate

    def text(self, now: Optional[float] = None, final: bool = False) -> str:
        now = time.monotonic() if now is None else now
        rate = self.rate(now)
        if self.total:
            frac = min(1.0, self.done / self.total)
            count = f"{self.done}/{self.total} ({100 * frac:.0f}%)"
        else:
            frac, count = None, str(self.done)
        if final:
            tail = f"done in {format_duration(now - self.started)}"
        else:
            eta = self.eta(now)
            tail = f"ETA {format_duration(eta)}" if eta is not None else "ETA ?"
        body = f"{count} {rate:.1f}/s {tail}"
        if self.tty and frac is not None:
            filled = int(self.BAR_WIDTH * frac)
            return f"{self.label} [{'#' * filled}{'.' * (self.BAR_WIDTH - filled)}] {body}"
        return f"{self.label}: {body}"

    def _draw(self, now: float, final: bool = False) -> None:
        self._last_draw = now
        try:
            if self.tty:
                self.stream.write("\r\x1b[K" + self.text(now, final) + ("\n" if final else ""))
            else:
                self.stream.write(self.text(now, final) + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stream must not stop the work
            pass

    # -- API

    def advance(self, n: int = 1) -> None:
        with self._lock:
            if self._closed:
                return
            self.done += n
            now = time.monotonic()
            if now - self._last_draw >= self.every_s:
                self._draw(now)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._draw(time.monotonic(), final=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
