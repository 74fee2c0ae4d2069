"""Append-only output files that survive crashes without duplicates.

Used for the results CSV and the dead-letter JSONL. One partition per file, so
with `-w 4` every line is written by one worker and lines never interleave.

Why this is enough for at-least-once inputs with exactly-one rows:
- with bytewax recovery, the partition's snapshot is the file size at the end
  of an epoch; on resume the file is truncated back to it, and the replayed
  epoch rewrites the same rows (a half-written line from a `kill -9` goes too);
- without recovery (embedded replays, or a recovery store deleted by hand),
  the keys already in the file are read at start and those items are skipped.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Hashable, Iterable, Optional

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

log = logging.getLogger(__name__)


class _AppendPartition(StatefulSinkPartition):
    def __init__(self, sink: "AppendFileSink", resume_offset: Optional[int]):
        self._sink = sink
        path = sink.path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._seen: set = set()
        if resume_offset is not None and path.exists() and path.stat().st_size > resume_offset:
            log.info("%s: resuming, truncating %d bytes written after the last snapshot",
                     path, path.stat().st_size - resume_offset)
            os.truncate(path, resume_offset)
        elif resume_offset is None and path.exists() and sink.existing_keys is not None:
            self._seen = set(sink.existing_keys(path))
            if self._seen:
                log.info("%s: %d records already present; replayed ones are skipped", path, len(self._seen))
        self._f = path.open("a", encoding="utf-8", newline="")
        if self._f.tell() == 0 and sink.header:
            self._f.write(sink.header)
        self._skipped = 0

    def write_batch(self, items: list) -> None:
        if self._seen:
            fresh = [it for it in items if self._sink.key(it) not in self._seen]
            self._skipped += len(items) - len(fresh)
            items = fresh
        if items:
            self._f.write(self._sink.encode(items))
            self._f.flush()
        self._sink.after_write(items)

    def snapshot(self) -> int:
        self._f.flush()
        return self._f.tell()

    def close(self) -> None:
        if self._skipped:
            log.info("%s: skipped %d records already written by an earlier run", self._sink.path, self._skipped)
        self._f.close()


class AppendFileSink(FixedPartitionedSink):
    """Write items to one append-only file.

    `encode(items) -> str` makes the text of a batch; `key(item)` identifies an
    item across runs; `existing_keys(path)` reads the keys already in a file.
    Items are `(key, value)` pairs as bytewax partitioned sinks require; only
    values reach `encode`.
    """

    def __init__(
        self,
        path: os.PathLike | str,
        encode: Callable[[list], str],
        key: Callable[[object], Hashable],
        existing_keys: Optional[Callable[[Path], Iterable[Hashable]]] = None,
        header: str = "",
        after_write: Callable[[list], None] = lambda items: None,
    ):
        self.path = Path(path)
        self.encode = encode
        self.key = key
        self.existing_keys = existing_keys
        self.header = header
        self.after_write = after_write

    def list_parts(self) -> list[str]:
        return [self.path.name]

    def part_fn(self, item_key: str) -> int:
        return 0

    def build_part(self, step_id: str, for_part: str, resume_state: Optional[int]) -> _AppendPartition:
        return _AppendPartition(self, resume_state)
