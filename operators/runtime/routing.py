"""Batch keys that bytewax routes evenly over the workers.

bytewax sends every item of a keyed step to the worker `hash(key) % workers`, where
`hash` is Rust's `DefaultHasher` (SipHash-1-3 with zero keys) over the key's bytes and
a final 0xFF byte (`str`'s `Hash`), as bytewax 0.21.1 builds it (`src/timely.rs`,
`PartitionFn`; 0.21.1 is the last release, so this does not move under us).
Plain keys "0".."31" land 17:15 on two workers, so one process of a two-process
cluster does 6% more model work and the other waits for it at the end of every epoch.
`batch_keys` picks, for each batch slot j, a key that lands on worker j % workers, so
the alerts (spread uniformly over the slots by candid) are split evenly.
`tests/test_routing.py` checks the prediction against bytewax itself, with 2 to 5 workers.

In a cluster of processes whose input has at least one partition per process
(bytewax gives each worker the same number of partitions, ±1), the keys go to the
workers of the process that read the alert: an alert carries its ~40 kB message (kept
for dead letters), and pickling it to another process and back cost ~45 µs per
message, a sixth of the flow's CPU. With fewer partitions than processes, the keys
spread over every worker so that no process idles.

If the prediction were ever wrong, only the balance would suffer: a key is a key, every
alert of a slot still goes to one worker and is classified once.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Optional, Sequence

_MASK = (1 << 64) - 1


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _MASK


def _sipround(v0: int, v1: int, v2: int, v3: int) -> tuple[int, int, int, int]:
    v0 = (v0 + v1) & _MASK
    v1 = _rotl(v1, 13) ^ v0
    v0 = _rotl(v0, 32)
    v2 = (v2 + v3) & _MASK
    v3 = _rotl(v3, 16) ^ v2
    v0 = (v0 + v3) & _MASK
    v3 = _rotl(v3, 21) ^ v0
    v2 = (v2 + v1) & _MASK
    v1 = _rotl(v1, 17) ^ v2
    v2 = _rotl(v2, 32)
    return v0, v1, v2, v3


def siphash13(data: bytes, k0: int = 0, k1: int = 0) -> int:
    """SipHash-1-3 of `data` (one compression round, three finalisation rounds), as Rust's `SipHasher13`."""
    v0, v1 = k0 ^ 0x736F6D6570736575, k1 ^ 0x646F72616E646F6D
    v2, v3 = k0 ^ 0x6C7967656E657261, k1 ^ 0x7465646279746573
    end = len(data) - len(data) % 8
    for i in range(0, end, 8):
        m = int.from_bytes(data[i:i + 8], "little")
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3 ^ m)
        v0 ^= m
    last = ((len(data) & 0xFF) << 56) | int.from_bytes(data[end:], "little")
    v0, v1, v2, v3 = _sipround(v0, v1, v2, v3 ^ last)
    v0 ^= last
    v2 ^= 0xFF
    for _ in range(3):
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


def mix(n: int) -> int:
    """`n` scrambled (Fibonacci hashing: the high 32 bits of n × 2^64/φ mod 2^64), so that
    `mix(n) % k` splits ids evenly even when their low digits carry structure (a parity)."""
    return ((n * 0x9E3779B97F4A7C15) & _MASK) >> 32


def worker_of(key: str, workers: int) -> int:
    """The worker (0 .. workers-1, in bytewax's order) that a keyed step sends `key` to."""
    return siphash13(key.encode() + b"\xff") % workers


@dataclass(frozen=True)
class Cluster:
    """The shape of a bytewax run: worker w of process p has index p * workers_per_process + w."""
    workers_per_process: int = 1
    processes: int = 1
    process_id: int = 0

    @property
    def workers(self) -> int:
        return self.workers_per_process * self.processes

    def own_workers(self) -> range:
        start = self.process_id * self.workers_per_process
        return range(start, start + self.workers_per_process)


def bytewax_cluster() -> Optional[Cluster]:
    """This run's shape when the process is `python -m bytewax.run` (read from its parsed
    arguments: `-w`, `-i`, `-a`, which it parses before it imports the flow); None otherwise."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    kwargs = getattr(main, "kwargs", None)
    if spec is None or spec.name != "bytewax.run" or not isinstance(kwargs, dict):
        return None
    addresses = kwargs.get("addresses") or [None]
    return Cluster(int(kwargs.get("workers_per_process") or 1), len(addresses), int(kwargs.get("process_id") or 0))


def keys_for(slots: int, workers: int, targets: Sequence[int]) -> tuple[str, ...]:
    """`slots` keys, slot j routed to worker `targets[j % len(targets)]` of `workers`
    ("7", or "7.3" when "7" lands elsewhere)."""
    keys = []
    for j in range(slots):
        target = targets[j % len(targets)]
        candidates = (str(j) if n == 0 else f"{j}.{n}" for n in range(1_000_000))
        keys.append(next(k for k in candidates if worker_of(k, workers) == target))
    return tuple(keys)


def batch_keys(shards: Optional[int], cluster: Optional[Cluster], partitions: Optional[int]) -> tuple[str, ...]:
    """The batch keys of this process (see the module docstring). `shards`: how many
    (None: one per target worker); `partitions`: the input's partition count, if known."""
    if cluster is None:  # run some other way (tests: run_main, cluster_main): plain keys
        return tuple(str(j) for j in range(shards or 32))
    local = cluster.processes > 1 and partitions is not None and partitions >= cluster.processes
    targets = list(cluster.own_workers()) if local else list(range(cluster.workers))
    return keys_for(shards or len(targets), cluster.workers, targets)
