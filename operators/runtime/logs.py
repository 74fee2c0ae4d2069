"""Logging set-up shared by every flow: console plus a rotated file per flow."""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import os
import signal
import sys
import threading
import time
from pathlib import Path

_on_stop = None
# A log file rotates at LOG_FILE_BYTES and LOG_BACKUPS old ones are kept: the logs directory
# never holds more than (1 + LOG_BACKUPS) x LOG_FILE_BYTES per flow, however long the run.
LOG_FILE_BYTES = 50_000_000
LOG_BACKUPS = 5
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

# A running flow whose inputs end by themselves on `STOPPING` (the Kafka source, see
# operators/io/kafka.py) drains instead of being torn down: Ctrl-C must then raise nothing.
# With one worker bytewax runs the dataflow on the main thread, where Python runs signal
# handlers, so a KeyboardInterrupt raised by the handler surfaces inside whatever step or
# `next_batch` was executing, and bytewax's Rust code panics on it ("thread '<unnamed>'
# panicked at src/inputs.rs:446:37: Box<dyn Any>", bytewax 0.21.1 `run_main` keeps Rust's
# default panic hook; with several workers its own hook hides the message).
_drains = threading.Event()


def inputs_stop_on_ctrl_c() -> None:
    """Called by a source when the dataflow starts (every worker lists its partitions):
    from now on the first Ctrl-C only sets `STOPPING`, and the flow ends by draining."""
    _drains.set()


def stop_now(why: str = "") -> None:
    """End the process at once after the one-line notice and the run summary (status 130).
    Outputs and recovery survive a hard stop (operators/io/files.py); the rest is replayed."""
    logging.getLogger("alertflow").info("stopped by Ctrl-C (SIGINT)%s; restart to resume", why)
    if _on_stop is not None:
        try:
            _on_stop()
        except Exception:  # noqa: BLE001 - a summary must not turn a clean stop into a traceback
            pass
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass
    os._exit(130)


def interruptible_sleep(seconds: float) -> None:
    """`time.sleep` that ends at once when Ctrl-C was pressed: inside a running flow the
    process stops (`stop_now`: nothing raised through bytewax); elsewhere KeyboardInterrupt."""
    if STOPPING.wait(seconds):
        if _drains.is_set():
            stop_now(" while waiting")
        raise KeyboardInterrupt("Ctrl-C while waiting")


def _sigint(signum, frame):
    first = not STOPPING.is_set()
    STOPPING.set()
    if _drains.is_set():
        if not first:
            stop_now(" (second Ctrl-C)")
        logging.getLogger("alertflow").info(
            "Ctrl-C: reading no more messages, finishing the batches in flight (Ctrl-C again to stop at once)")
        return
    raise KeyboardInterrupt  # what Python's default handler does; bytewax stops its workers on it


def watch_sigint() -> None:
    """Ctrl-C also sets `STOPPING` (bytewax delivers SIGINT to Python through the main thread)."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is not _sigint:
        signal.signal(signal.SIGINT, _sigint)


def _exit_after_drain() -> None:
    """At exit of a flow that drained after Ctrl-C: the notice and the conventional status 130
    (the run summary was logged by the flow's own exit hook, registered later, so run first)."""
    if STOPPING.is_set() and _drains.is_set():
        global _on_stop
        _on_stop = None
        stop_now()


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
            stop_now()
        previous(kind, value, tb)

    if getattr(previous, "__name__", "") != "alertflow_excepthook":
        sys.excepthook = alertflow_excepthook
        atexit.register(_exit_after_drain)


def exit_130_if_stopped() -> None:
    """For `atexit` in a process that is the run: Ctrl-C caught where a traceback would
    help nobody (a sink's close waiting for a service, operators/sinks/background.py)
    lets the flow close normally; the process still ends as a Ctrl-C stop, status 130."""
    if STOPPING.is_set():
        global _on_stop
        _on_stop = None  # the run summary was logged by the flow's own exit hook, registered later
        stop_now()


class LogFile(logging.handlers.RotatingFileHandler):
    """The flow's rotated log file, which a full or unwritable log directory cannot stop
    or flood: Python's handler would print "--- Logging error ---" and a traceback on
    stderr for every record. Here the first failed write says once, on stderr, which
    file cannot be written and that the flow goes on; file logging is then suspended
    (every line still goes to stderr) and tried again every `RETRY_S` seconds, and when
    a write works again one line says so, with how many lines the file missed. Results
    and recovery are other directories, with their own stop (operators/runtime/exits.py)."""

    RETRY_S = 60.0

    def __init__(self, filename, *args, **kwargs):
        super().__init__(filename, *args, **kwargs)
        self.suspended_since: float | None = None
        self.missed = 0  # records not written to the file while suspended
        self._failed = False  # the last write failed (set by handleError)

    def emit(self, record: logging.LogRecord) -> None:
        if self.suspended_since is None:
            super().emit(record)
            return
        if time.monotonic() - self.suspended_since < self.RETRY_S:
            self.missed += 1
            return
        self._failed = False
        super().emit(record)  # the try: a failure lands in handleError
        if self._failed:
            self.suspended_since = time.monotonic()
            return
        missed, self.missed, self.suspended_since = self.missed, 0, None
        logging.getLogger("alertflow").warning(
            "log file %s can be written again: file logging resumed (%d lines in between went to stderr only)",
            self.baseFilename, missed)

    def handleError(self, record: logging.LogRecord) -> None:
        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):
            super().handleError(record)
            return
        self._failed = True
        self.missed += 1
        if self.stream is not None:  # its buffer holds what could not be written: drop it
            try:
                self.stream.close()
            except Exception:  # noqa: BLE001 - the flush of the lost buffer fails again
                pass
            self.stream = None
        if self.suspended_since is None:
            self.suspended_since = time.monotonic()
            # Through the other handlers (this one is suspended now): the console, i.e. stderr.
            logging.getLogger("alertflow").error(
                "the log file %s cannot be written (ALERTFLOW_LOGS_DIR=%s: %s): file logging is suspended and the "
                "flow goes on (results and recovery are not affected; every line still goes to stderr). Free space "
                "or fix the permissions there: file logging resumes by itself (tried every %.0f s)",
                self.baseFilename, os.path.dirname(self.baseFilename), exc.strerror or exc, self.RETRY_S)


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
        fh = LogFile(log_file, maxBytes=LOG_FILE_BYTES, backupCount=LOG_BACKUPS)
        fh.setFormatter(fmt)
        root.addHandler(fh)
    # Per-request chatter from client libraries is noise at INFO.
    for noisy in ("urllib3", "pymongo", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
