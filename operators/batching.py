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
from typing import Iterable, List, Optional, Tuple, TypeVar

import bytewax.operators as op
from bytewax.dataflow import operator
from bytewax.operators import KeyedStream, StatefulLogic

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

    def on_item(self, value) -> Tuple[Iterable[list], bool]:
        if not self.state.items:
            self.state.deadline = datetime.now(timezone.utc) + self.timeout
        self.state.items.append(value)
        if len(self.state.items) >= self.max_size:
            return ((self.state.items,), StatefulLogic.DISCARD)
        return ((), StatefulLogic.RETAIN)

    def on_notify(self) -> Tuple[Iterable[list], bool]:
        return ((self.state.items,), StatefulLogic.DISCARD)

    def on_eof(self) -> Tuple[Iterable[list], bool]:
        return ((self.state.items,), StatefulLogic.DISCARD)

    def notify_at(self) -> Optional[datetime]:
        return self.state.deadline

    def snapshot(self) -> _OpenBatch:
        return _OpenBatch(list(self.state.items), self.state.deadline)


@operator
def batch(step_id: str, up: KeyedStream[V], max_size: int, timeout: timedelta) -> KeyedStream[List[V]]:
    """Gather items of each key into lists of at most `max_size`, each list
    emitted no later than `timeout` after its first item arrived."""
    return op.stateful("batch", up, lambda resume: _BatchLogic(max_size, timeout, resume))
