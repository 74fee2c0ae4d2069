"""Logging set-up shared by every flow: console plus a rotated file per flow."""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"


def quiet_interrupt() -> None:
    """Ctrl-C ends a following flow: say so in one line instead of a traceback.
    The exit status stays the conventional one for SIGINT; state up to the last
    snapshot is kept and the rest is replayed on restart."""
    previous = sys.excepthook

    def hook(kind, value, tb):
        if issubclass(kind, KeyboardInterrupt):
            logging.getLogger("alertflow").info("stopped by Ctrl-C (SIGINT); restart to resume")
            return
        previous(kind, value, tb)

    if getattr(previous, "__name__", "") != "hook":
        sys.excepthook = hook


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
