"""How a flow process ends when it cannot go on: one line naming the cause and what to
do, and an exit status a supervisor can act on (docs/reliability.md).

| status | meaning                                                           | what to do                               |
|--------|-------------------------------------------------------------------|------------------------------------------|
| 2      | configuration refused before the flow started (dataflows/preflight.py) | fix the variable the line names      |
| 3      | Kafka unreachable for `KAFKA_UNREACHABLE_EXIT_S` (operators/io/kafka.py) | bring the brokers back, restart     |
| 4      | `EXIT_PEER_LOST`: another process of the cluster is gone          | restart every process of the cluster     |
| 5      | `EXIT_DISK`: an output file or the recovery store cannot be written | free space / fix permissions, restart  |
| 130    | Ctrl-C (operators/runtime/logs.py)                                | restart to resume                        |

Why an excepthook: bytewax 0.21.1 runs the dataflow in Rust and gives Python one
exception when it ends. When a peer process dies, timely's TCP receive thread panics
("timely communication error: reading data: ...", timely-communication
`allocator/zero_copy/tcp.rs`); bytewax's panic hook (src/run.rs `cluster_main`) turns
that into a shutdown request, the workers stop, and dropping timely's `CommsGuard` then
joins the send thread, which panicked too, with `.expect("Send thread panic")`: Python
sees `pyo3_runtime.PanicException: Send thread panic: Any { .. }` (or, when a worker
panicked first, a RuntimeError carrying the communication error). A snapshot write that
fails in bytewax's recovery store is a Rust `unwrap()` on a rusqlite error
(src/recovery.rs), seen as a RuntimeError or PanicException naming `SqliteFailure`. A
file sink's failed write reaches Python as the OSError under bytewax's RuntimeError.
None of these can be caught inside the dataflow, so the hook classifies the exception
that ends `python -m bytewax.run` and exits with the status above; anything else keeps
its traceback.
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import re
import sys
from pathlib import Path
from typing import Optional, Sequence

log = logging.getLogger("alertflow")

EXIT_PEER_LOST = 4
EXIT_DISK = 5

_PEER_SIGNS = ("timely communication error", "Send thread panic", "Recv thread panic")
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO, errno.EFBIG,
                errno.ENOTDIR, errno.EISDIR}
_SQLITE = re.compile(r"SqliteFailure\(Error \{ code: (\w+)[^}]*\}, (?:Some\(\"([^\"]*)\"\)|None)")


def _chain(exc: Optional[BaseException]):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def peer_lost(exc: BaseException) -> Optional[str]:
    """The communication error when `exc` says a peer process of the cluster is gone."""
    for e in _chain(exc):
        text = str(e)
        if any(sign in text for sign in _PEER_SIGNS):
            found = re.search(r"timely communication error: ([^\n]*)", text)
            return found.group(1).strip() if found else "connection to a peer closed"
    return None


def disk_trouble(exc: BaseException) -> Optional[tuple[str, Optional[str]]]:
    """(what failed, the file) when `exc` is a write that the file system refused:
    an OSError from an output file, or the recovery store's SQLite write."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in _DISK_ERRNOS:
            return os.strerror(e.errno), e.filename
        found = _SQLITE.search(str(e))
        if found:
            code, message = found.groups()
            return f"recovery store: {message or code}", None
    return None


def describe_peers(addresses: Sequence[str], me: int) -> str:
    others = [f"process {i} ({a})" for i, a in enumerate(addresses) if i != me]
    return others[0] if len(others) == 1 else "one of " + ", ".join(others)


def peer_lost_line(cause: str, addresses: Sequence[str], me: int, recovery_dir: Optional[Path]) -> str:
    resume = (f"the run resumes from the last snapshot in {recovery_dir}" if recovery_dir is not None else
              "recovery is off: the topic is replayed from the starting offset and rows already written are skipped")
    return (f"lost {describe_peers(addresses, me)} of the cluster ({cause}); process {me} stops with status "
            f"{EXIT_PEER_LOST}. Restart every process of the cluster (-i 0..{len(addresses) - 1}, same -a): {resume}")


def disk_line(what: str, path: Optional[str], recovery_dir: Optional[Path]) -> str:
    where = path or (str(recovery_dir) if recovery_dir is not None else "an output directory")
    resume = ("the restart resumes from the last snapshot (files are cut back to it, nothing lost or doubled)"
              if recovery_dir is not None else "rows already written are skipped on restart")
    return (f"cannot write {where}: {what}; stopping with status {EXIT_DISK}. Free space or fix the permissions "
            f"there, then restart: {resume}")


def _finish(status: int, line: str) -> None:
    log.error("%s", line)
    try:
        atexit._run_exitfuncs()  # the run summary, log handlers' flush
    except Exception:  # noqa: BLE001 - the line above is what matters
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass
    os._exit(status)


def install(addresses: Optional[Sequence[str]], process_id: int, recovery_dir: Optional[Path],
            stopping=None) -> None:
    """Classify the exception that ends this process (see the module docstring).
    `stopping`: an Event set by Ctrl-C, whose handling (status 130) comes first."""
    previous = sys.excepthook
    if getattr(previous, "__name__", "") == "alertflow_exits_hook":
        previous = getattr(previous, "previous")

    def alertflow_exits_hook(kind, value, tb):
        if stopping is None or not stopping.is_set():
            cause = peer_lost(value) if addresses and len(addresses) > 1 else None
            if cause is not None:
                _finish(EXIT_PEER_LOST, peer_lost_line(cause, addresses, process_id, recovery_dir))
            trouble = disk_trouble(value)
            if trouble is not None:
                _finish(EXIT_DISK, disk_line(*trouble, recovery_dir))
        previous(kind, value, tb)

    alertflow_exits_hook.previous = previous
    sys.excepthook = alertflow_exits_hook


def install_for_bytewax_run(recovery_dir: Optional[Path], stopping=None) -> None:
    """`install` with the cluster read from `python -m bytewax.run`'s parsed arguments
    (kept in its `__main__` as `kwargs`, see operators/runtime/recovery.py); nothing otherwise."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    kwargs = getattr(main, "kwargs", None)
    if spec is None or spec.name != "bytewax.run" or not isinstance(kwargs, dict):
        return
    if kwargs.get("addresses") is None and "workers_per_process" in kwargs:
        # One process: run it as a cluster of one (`cli_main` picks `cluster_main` for a
        # non-None address list). `run_main` keeps Rust's default panic hook, which prints
        # "thread '<unnamed>' panicked at ..." and a backtrace for a failed write before
        # Python gets the error; `cluster_main`'s hook only hands the error to Python.
        kwargs["addresses"] = []
    install(kwargs.get("addresses"), int(kwargs.get("process_id") or 0), recovery_dir, stopping)
