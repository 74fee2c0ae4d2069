"""Bytewax recovery on by default for Kafka runs.

bytewax keeps Kafka offsets only in its recovery snapshots (never in a consumer
group), so a flow that follows a topic without recovery replays it from the
starting offset after every restart. For Kafka runs we therefore switch
recovery on unless the user chose otherwise, and create the recovery
partitions on first start.

`python -m bytewax.run` builds its run arguments before it imports the flow
module and keeps them in its `__main__` module as `kwargs`; when `-r` was not
given we fill in a `RecoveryConfig` there. bytewax is pinned at 0.21.1, its
last release, so this hook cannot drift under us; `-r/-s/-b` (or the
`BYTEWAX_RECOVERY_*` variables) still win.
"""

from __future__ import annotations

import logging
import sys
from datetime import timedelta
from pathlib import Path
from typing import Optional

from bytewax.recovery import RecoveryConfig, init_db_dir

log = logging.getLogger(__name__)


def ensure_partitions(directory: Path, count: int) -> None:
    """Create `count` empty recovery partitions unless some exist already."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if not any(directory.glob("part-*.sqlite3")):
        init_db_dir(directory, count)
        log.info("created %d recovery partitions in %s", count, directory)


def run_by_bytewax() -> bool:
    """This process is `python -m bytewax.run ...` (so it ends when the flow ends)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec is not None and spec.name == "bytewax.run"


def _bytewax_run_kwargs() -> Optional[dict]:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is None or spec.name != "bytewax.run":
        return None
    kwargs = getattr(main, "kwargs", None)
    return kwargs if isinstance(kwargs, dict) and "recovery_config" in kwargs else None


def enable_default_recovery(directory: Path, partitions: int, snapshot_s: float, backup_s: float) -> Optional[Path]:
    """Turn on recovery for this `python -m bytewax.run` invocation; returns the
    recovery directory in use, or None when not run by bytewax.run."""
    kwargs = _bytewax_run_kwargs()
    if kwargs is None:
        return None
    current = kwargs.get("recovery_config")
    if current is not None:  # the user's -r wins; still make its partitions on first start
        ensure_partitions(Path(current.db_dir), partitions)
        return Path(current.db_dir)
    ensure_partitions(directory, partitions)
    kwargs["recovery_config"] = RecoveryConfig(str(directory), timedelta(seconds=backup_s))
    kwargs["epoch_interval"] = timedelta(seconds=snapshot_s)
    log.info("recovery on: %s (snapshot every %gs); a restart resumes from the last snapshot",
             directory, snapshot_s)
    return directory


def recovery_dir_in_use() -> Optional[Path]:
    """The recovery directory this `python -m bytewax.run` invocation uses (`-r`), or None."""
    kwargs = _bytewax_run_kwargs()
    current = kwargs.get("recovery_config") if kwargs is not None else None
    return Path(current.db_dir) if current is not None else None
