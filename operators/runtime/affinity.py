"""Pin a flow process to a core (ALERTFLOW_CPU_AFFINITY), applied at process start.

A cluster of flow processes (`python -m bytewax.run ... -i N -a ...`) left to the
scheduler can see two of them share a core while another sits idle, or see them
moved between cores and lose their caches; on a busy host pinning one process per
core keeps each on its own (bench/scaling.py measures what it brings).

    ""        not pinned (the default): the scheduler decides
    "auto"    process i on the i-th core this process may use, modulo their number
    "0,2,5-7" process i on the i-th core of this list, modulo its length

The process index is bytewax's own: `-i`/`--process-id` on the command line, or
BYTEWAX_PROCESS_ID, else 0 (a single process). `parse` and `core_for` are pure
(tested on their own); `apply` is the thin part that calls `os.sched_setaffinity`.
"""

from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence


def available_cores() -> list[int]:
    """The cores this process may run on (all of them where the OS cannot say)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def parse(value: str, available: Sequence[int]) -> Optional[tuple[int, ...]]:
    """None (not pinned), () for "auto", or the explicit cores; ValueError saying what is wrong."""
    value = (value or "").strip().lower()
    if value in ("", "none", "off"):
        return None
    if value == "auto":
        return ()
    cores: list[int] = []
    for part in value.split(","):
        lo, dash, hi = part.strip().partition("-")
        try:
            first, last = int(lo), int(hi) if dash else int(lo)
        except ValueError:
            raise ValueError(f"{part.strip()!r} is not a core number or range: use \"auto\" or core numbers "
                             f"such as \"0,1\" or \"0-3\"") from None
        if first < 0 or last < first:
            raise ValueError(f"{part.strip()!r} is not a core range (first <= last, from 0)")
        cores.extend(range(first, last + 1))
    missing = sorted(set(cores) - set(available))
    if missing:
        raise ValueError(f"cores {missing} are not available to this process (it may use {list(available)})")
    return tuple(cores)


def process_index(argv: Sequence[str], env: Mapping[str, str]) -> int:
    """This flow process's index in its bytewax cluster: `-i N`/`--process-id N`, BYTEWAX_PROCESS_ID, else 0."""
    for i, arg in enumerate(argv):
        if arg in ("-i", "--process-id") and i + 1 < len(argv) and argv[i + 1].isdigit():
            return int(argv[i + 1])
        if arg.startswith("--process-id=") and arg.split("=", 1)[1].isdigit():
            return int(arg.split("=", 1)[1])
    value = env.get("BYTEWAX_PROCESS_ID", "")
    return int(value) if value.isdigit() else 0


def core_for(cores: tuple[int, ...], index: int, available: Sequence[int]) -> int:
    """The core of process `index`: from the explicit list, or ("auto", empty) from the available cores."""
    pool = cores or tuple(available)
    return pool[index % len(pool)]


def apply(value: str, argv: Sequence[str], env: Mapping[str, str]) -> Optional[int]:
    """Pin this process (all its threads) as ALERTFLOW_CPU_AFFINITY says; the core, or None when not pinned."""
    available = available_cores()
    cores = parse(value, available)
    if cores is None or not hasattr(os, "sched_setaffinity"):
        return None
    core = core_for(cores, process_index(argv, env), available)
    # Linux pins one thread per call: every thread the process has now (those started
    # later inherit the core from the thread that starts them).
    try:
        threads = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        threads = [0]
    for tid in threads:
        try:
            os.sched_setaffinity(tid, {core})
        except OSError:  # a thread that ended meanwhile
            pass
    return core
