"""Logging set-up shared by every flow: console plus a rotated file per flow."""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"


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
