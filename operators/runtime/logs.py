"""Logging set-up shared by every flow: console plus a rotated file per flow."""

from __future__ import annotations

import logging
import logging.handlers
import os
import signal
import sys
import threading
from pathlib import Path

_on_stop = None
FORMAT = "%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"


def _interrupted(exc: BaseException | None) -> bool:
    """Ctrl-C, possibly wrapped by bytewax in a runtime error raised from it."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


# Set by Ctrl-C (SIGINT): steps that wait (store retries) watch it, so that Ctrl-C stops a flow
# whose worker threads are backing off, not only the main thread.
STOPPING = threading.Event()


def interruptible_sleep(seconds: float) -> None:
    """`time.sleep` that ends at once with KeyboardInterrupt when Ctrl-C was pressed."""
    if STOPPING.wait(seconds):
        raise KeyboardInterrupt("Ctrl-C while waiting")


def _sigint(signum, frame):
    STOPPING.set()
    raise KeyboardInterrupt  # what Python's default handler does; bytewax stops its workers on it


def watch_sigint() -> None:
    """Ctrl-C also sets `STOPPING` (bytewax delivers SIGINT to Python through the main thread)."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is not _sigint:
        signal.signal(signal.SIGINT, _sigint)


def quiet_interrupt(on_stop=None) -> None:
    """Ctrl-C ends a following flow: say so in one line instead of a traceback,
    and exit with the conventional status 130. State up to the last snapshot is
    kept and the rest is replayed on restart. `on_stop()` (the run summary) is
    called first; the last call's wins."""
    global _on_stop
    _on_stop = on_stop
    previous = sys.excepthook

    def alertflow_excepthook(kind, value, tb):
        # With several workers the stop surfaces as bytewax's worker panic, not as KeyboardInterrupt.
        if _interrupted(value) or STOPPING.is_set():
            logging.getLogger("alertflow").info("stopped by Ctrl-C (SIGINT); restart to resume")
            if _on_stop is not None:
                try:
                    _on_stop()
                except Exception:  # noqa: BLE001 - a summary must not turn a clean stop into a traceback
                    pass
            logging.shutdown()
            os._exit(130)
        previous(kind, value, tb)

    if getattr(previous, "__name__", "") != "alertflow_excepthook":
        sys.excepthook = alertflow_excepthook


def exit_130_if_stopped() -> None:
    """For `atexit` in a process that is the run: Ctrl-C caught where a traceback would
    help nobody (a sink's close waiting for a service, operators/sinks/background.py)
    lets the flow close normally; the process still ends as a Ctrl-C stop, status 130."""
    if STOPPING.is_set():
        logging.getLogger("alertflow").info("stopped by Ctrl-C (SIGINT)")
        logging.shutdown()
        os._exit(130)


def setup_logging(log_file: Path, level: str = "INFO") -> None:
    """Idempotent: a second call (another flow in the same process) adds only its file."""
    root = logging.getLogger()
    root.setLevel(level)
    fmt = logging.Formatter(FORMAT)
    if not any(getattr(h, "_alertflow_console", False) for h in root.handlers):
        console = logging.StreamHandler()
        console.setFormatter(fmt)
        console._alertflow_console = True
        root.addHandler(console)
    log_file = Path(log_file).resolve()
    if not any(getattr(h, "baseFilename", None) == str(log_file) for h in root.handlers):
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.handlers.RotatingFileHandler(log_file, maxBytes=50_000_000, backupCount=5)
        fh.setFormatter(fmt)
        root.addHandler(fh)
    # Per-request chatter from client libraries is noise at INFO.
    for noisy in ("urllib3", "pymongo", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
