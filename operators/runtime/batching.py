"""Batching by key with a deadline that starts at a batch's first item.

bytewax's `collect` restarts its timeout on every item of a key, so a steady
trickle below `max_size` could hold a batch indefinitely. Here the deadline is
fixed when a batch opens: no alert waits longer than `timeout` for its batch
(plus the time the flow takes to notice), and a full batch leaves at once.
Open batches are part of the recovery snapshot, so a crash loses none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterable, List, Optional, Tuple, TypeVar

import bytewax.operators as op
from bytewax.dataflow import operator
from bytewax.operators import KeyedStream, StatefulLogic

from operators.runtime import bounds

V = TypeVar("V")


@dataclass
class _OpenBatch:
    items: list = field(default_factory=list)
    deadline: Optional[datetime] = None


class _BatchLogic(StatefulLogic):
    def __init__(self, max_size: int, timeout: timedelta, state: Optional[_OpenBatch]):
        self.max_size = max_size
        self.timeout = timeout
        self.state = state or _OpenBatch()
        bounds.track("open_batches", self, max_size,
                     where="ORACLE_BATCH_SIZE per open batch key (operators/runtime/batching.py)")

    def __len__(self) -> int:  # items waiting in this key's open batch (< max_size between items)
        return len(self.state.items)

    def on_item(self, values: list) -> Tuple[Iterable[list], bool]:
        """`values`: the alerts of one key from one input batch (grouped before the exchange)."""
        if not values:
            return ((), StatefulLogic.RETAIN if self.state.items else StatefulLogic.DISCARD)
        if not self.state.items:
            self.state.deadline = datetime.now(timezone.utc) + self.timeout
        self.state.items.extend(values)
        if len(self.state.items) < self.max_size:
            return ((), StatefulLogic.RETAIN)
        items, size = self.state.items, self.max_size
        full = [items[i:i + size] for i in range(0, len(items) - size + 1, size)]
        rest = items[len(full) * size:]
        if not rest:
            return (full, StatefulLogic.DISCARD)
        # the leftover opens a new batch with its own deadline
        self.state = _OpenBatch(rest, datetime.now(timezone.utc) + self.timeout)
        return (full, StatefulLogic.RETAIN)

    def on_notify(self) -> Tuple[Iterable[list], bool]:
        return ((self.state.items,), StatefulLogic.DISCARD)

    def on_eof(self) -> Tuple[Iterable[list], bool]:
        return ((self.state.items,), StatefulLogic.DISCARD)

    def notify_at(self) -> Optional[datetime]:
        return self.state.deadline

    def snapshot(self) -> _OpenBatch:
        return _OpenBatch(list(self.state.items), self.state.deadline)


@operator
def batch(step_id: str, up: KeyedStream[List[V]], max_size: int, timeout: timedelta) -> KeyedStream[List[V]]:
    """Gather the lists of items of each key into lists of at most `max_size`, each
    emitted no later than `timeout` after its first item arrived. The input is
    lists (see `group_by_key`) so that items cross workers in groups, not one by one."""
    return op.stateful("batch", up, lambda resume: _BatchLogic(max_size, timeout, resume))


GROUP_MAX = 32


def group_by_key(key: Callable[[V], str], items: List[V], most: int = GROUP_MAX) -> List[Tuple[str, List[V]]]:
    """One input batch (a `flat_map_batch` call) → `(key, [items])` per key present,
    in lists of at most `most` items.

    bytewax exchanges every item of a keyed stream between workers on its own
    (pickled, with per-item overhead); grouping first moves one list per key per
    input batch instead. The lists stay short because each is pickled whole: an alert
    carries its ~40 kB message, and one pickle of 500 of them costs 4x per alert what
    lists of 8-64 cost (bytes copied into an ever-growing buffer). Order within a key is kept."""
    groups: dict[str, list] = {}
    for item in items:
        k = key(item)
        group = groups.get(k)
        if group is None:
            groups[k] = [item]
        else:
            group.append(item)
    return [(k, group[i:i + most]) for k, group in groups.items() for i in range(0, len(group), most)]
