"""Progress on finite work: embedded replays, benchmarks, backfills — a tqdm bar.

    with Progress(len(alerts), "replay") as p:
        for batch in batches:
            ...
            p.advance(len(batch))

On a terminal (stderr is a TTY) it is tqdm's own bar, redrawn in place with
the rate and the ETA. Otherwise (log files, CI, `nohup`) tqdm's `\\r` redraws
would pile up on one line, so the same figures are written as a plain line
every `every_s` seconds and one at the end: logs stay short. Thread-safe:
bytewax workers may advance the same instance.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Optional, TextIO

from tqdm import tqdm

_LINE = "{desc}: {n_fmt}/{total_fmt} ({percentage:.0f}%) {rate_fmt} ETA {remaining}"
_LINE_NO_TOTAL = "{desc}: {n_fmt} {rate_fmt} ETA ?"
_DONE = "{desc}: {n_fmt}/{total_fmt} ({percentage:.0f}%) {rate_fmt} done in {elapsed}"
_DONE_NO_TOTAL = "{desc}: {n_fmt} {rate_fmt} done in {elapsed}"


class _PlainLines(tqdm):
    """tqdm that writes each refresh as a plain line (no `\\r`), not the first empty one."""

    def display(self, msg: Optional[str] = None, pos: Optional[int] = None) -> bool:
        if self.n == 0 and not getattr(self, "_closing", False):
            return True  # nothing done yet: nothing worth a line
        self.bar_format = _LINE if self.total else _LINE_NO_TOTAL  # the total may have grown
        _write_line(self.fp, msg if msg is not None else self.__str__())
        return True

    def close(self) -> None:
        if self.disable:
            return
        self._closing = True
        fmt = _DONE if self.total else _DONE_NO_TOTAL
        _write_line(self.fp, self.format_meter(**{**self.format_dict, "bar_format": fmt}))
        self.disable = True  # tqdm's own close would add its last redraw and a newline
        super().close()


def _size(stream: TextIO) -> tuple[int, int]:
    """The terminal's columns and rows; 80 x 24 when it reports 0 (a bare pty, some CI
    terminals), where tqdm would draw nothing."""
    try:
        size = os.get_terminal_size(stream.fileno())
        return size.columns or 80, size.lines or 24
    except (AttributeError, OSError, ValueError):
        return 80, 24


def _write_line(stream: TextIO, text: str) -> None:
    try:
        stream.write(text + "\n")
        stream.flush()
    except (OSError, ValueError):  # a closed or broken stream must not stop the work
        pass


class Progress:
    """`Progress(total, label)`; `.advance(n)`; `.close()` or use it as a context manager.

    `total=None` when the amount is unknown (shows count and rate only).
    `tty` forces the bar (True) or plain lines (False); by default it follows
    `stream.isatty()`. `every_s` is the interval between plain lines."""

    def __init__(self, total: Optional[int], label: str = "progress", *, stream: Optional[TextIO] = None,
                 tty: Optional[bool] = None, every_s: float = 30.0, redraw_s: float = 0.1):
        stream = stream if stream is not None else sys.stderr
        if tty is None:
            try:
                tty = stream.isatty()
            except (AttributeError, ValueError):
                tty = False
        total = total if total is None else max(0, int(total))
        self._lock = threading.Lock()
        if tty:
            self._bar = tqdm(total=total, desc=label, file=stream, mininterval=redraw_s, unit="",
                             ascii=" #", ncols=_size(stream)[0], nrows=_size(stream)[1])
        else:
            self._bar = _PlainLines(total=total, desc=label, file=stream, mininterval=every_s, unit="",
                                    bar_format=_LINE if total else _LINE_NO_TOTAL)

    @property
    def done(self) -> int:
        return int(self._bar.n)

    def add_total(self, n: int) -> None:
        """More work than announced (e.g. slices found one by one)."""
        with self._lock:
            if not self._bar.disable:
                self._bar.total = (self._bar.total or 0) + max(0, int(n))

    def advance(self, n: int = 1) -> None:
        with self._lock:
            if not self._bar.disable:
                self._bar.update(n)

    def close(self) -> None:
        with self._lock:
            self._bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
