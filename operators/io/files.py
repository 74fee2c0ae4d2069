"""Append-only output files that survive crashes without duplicates.

Used for the results CSV and the dead-letter JSONL. One partition per file, so
with `-w 4` every line is written by one worker and lines never interleave.

Why this gives one record per key with at-least-once inputs:
- with bytewax recovery, the partition's snapshot is the file size at the end
  of an epoch; on resume the file is truncated back to it, and the replayed
  epoch rewrites the same rows (a half-written line from a `kill -9` goes too);
- an unfinished last line left without a snapshot to cut back to (no recovery, or a
  snapshot taken while the file ended mid-line) is cut off too: the record comes again;
- the keys of the last `window` records (read from the file at start, then
  kept as they are written) are skipped when they come again: replays without
  recovery, a recovery store deleted by hand, or a message published twice.
  The window bounds memory on endless runs; 200,000 candids cover far more
  than any replay after a crash.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from pathlib import Path
from typing import Callable, Hashable, Iterable, NamedTuple, Optional

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from operators.runtime import bounds

log = logging.getLogger(__name__)


def _starts_with(path: Path, header: str) -> bool:
    """Whether the file is empty or begins with `header`."""
    with path.open("r", encoding="utf-8", newline="") as f:
        head = f.read(len(header))
    return head == "" or head == header


class Encoded(NamedTuple):
    """Records already encoded by the worker that made them: their keys, their lines (one
    per record, each ending in a newline) and, per record, what `after_write` receives in
    its place. The single writer of a cluster then only drops repeats and appends, and what
    crosses processes is strings and numbers, not objects to rebuild (docs/performance.md)."""
    keys: tuple
    lines: tuple
    extras: tuple


class RecentKeys:
    """The last `maxsize` distinct keys added: a set to look them up, a deque to forget the
    oldest. ~90 bytes a key against ~200 for cachetools' FIFOCache (three dicts): the
    results CSV's 200,000-candid window is the flow's largest structure (issue 28)."""

    def __init__(self, maxsize: int):
        self.maxsize = max(1, maxsize)
        self._order: deque = deque()
        self._keys: set = set()

    def __contains__(self, key: Hashable) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: Hashable) -> None:
        if key in self._keys:
            return
        self._keys.add(key)
        self._order.append(key)
        if len(self._order) > self.maxsize:
            self._keys.discard(self._order.popleft())


def _cut_partial_line(path: Path, chunk: int = 1 << 16) -> int:
    """Cut an unfinished last line (a write killed half-way) off the file; return the bytes cut.

    Every record ends with a newline, so bytes after the last one are a record that was
    never completely written: it will come again, and appending to it would glue the next
    record onto it (and count its key as written)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        end = size
        while end > 0:
            start = max(0, end - chunk)
            f.seek(start)
            block = f.read(end - start)
            if end == size and block.endswith(b"\n"):
                return 0
            newline = block.rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            end = start
    os.truncate(path, end)
    return size - end


class _AppendPartition(StatefulSinkPartition):
    def __init__(self, sink: "AppendFileSink", resume_offset: Optional[int]):
        self._sink = sink
        path = sink.path
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_offset is not None and path.exists() and path.stat().st_size > resume_offset:
            log.info("%s: resuming, truncating %d bytes written after the last snapshot",
                     path, path.stat().st_size - resume_offset)
            os.truncate(path, resume_offset)
        if path.exists() and path.stat().st_size and (cut := _cut_partial_line(path)):
            log.warning("%s: cut %d bytes of an unfinished last line (a write interrupted by a crash); "
                        "that record is written again when it comes again", path, cut)
        self._seen = RecentKeys(sink.window)  # the last `window` keys written
        bounds.track(f"{sink.bound_name}_dedup_window", self._seen, self._seen.maxsize,
                     where="AppendFileSink(window=) (operators/io/files.py)")
        if sink.header and path.exists() and not _starts_with(path, sink.header):
            # Columns changed (an upgrade added one): appending would put rows under a header
            # that does not describe them. Keep the old file whole beside the new one.
            old = path.with_name(f"{path.stem}.before-{time.strftime('%Y%m%dT%H%M%S')}{path.suffix}")
            path.rename(old)
            log.warning("%s: its header is not this version's (columns changed); moved it to %s and "
                        "starting a new file (records already in the old one are still skipped)", path, old.name)
            self._remember(sink.existing_keys(old))
        if path.exists():
            self._remember(sink.existing_keys(path))
            if len(self._seen):
                log.info("%s: %d records already present; repeats of them are skipped", path, len(self._seen))
        self._f = path.open("a", encoding="utf-8", newline="")
        if self._f.tell() == 0 and sink.header:
            self._f.write(sink.header)
        self._skipped = 0

    def write_batch(self, items: list) -> None:
        lines, extras, repeats = [], [], 0  # from `Encoded` groups
        if self._sink.grouped:  # each item is a list of records or an `Encoded` group (one per upstream batch)
            records = []
            for group in items:
                if isinstance(group, Encoded):
                    repeats += self._fresh_lines(group, lines, extras)
                else:
                    records.extend(group)
            items = records
        fresh = []
        for item in items:
            key = self._sink.key(item)
            if key not in self._seen:
                self._seen.add(key)
                fresh.append(item)
        skipped = len(items) - len(fresh) + repeats
        self._skipped += skipped
        if skipped:
            self._sink.after_skip(skipped)
        if fresh or lines:
            try:
                self._f.write(self._sink.encode(fresh) + "".join(lines) if fresh else "".join(lines))
                self._f.flush()
            except OSError as exc:  # a full or read-only disk: name the file (operators/runtime/exits.py)
                raise OSError(exc.errno, exc.strerror, str(self._sink.path)) from exc
        self._sink.after_write(fresh + extras if extras else fresh)

    def _fresh_lines(self, group: Encoded, lines: list, extras: list) -> int:
        """The lines of `group` whose keys were not written yet, into `lines` (and their
        extras); returns how many were repeats."""
        seen, repeats = self._seen, 0
        for key, line, extra in zip(group.keys, group.lines, group.extras):
            if key in seen:
                repeats += 1
            else:
                seen.add(key)
                lines.append(line)
                extras.append(extra)
        return repeats

    def _remember(self, keys: Iterable[Hashable]) -> None:
        for key in keys:
            self._seen.add(key)

    def snapshot(self) -> int:
        try:
            self._f.flush()
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(self._sink.path)) from exc
        return self._f.tell()

    def close(self) -> None:
        if self._skipped:
            log.info("%s: skipped %d records already written by an earlier run", self._sink.path, self._skipped)
        self._f.close()


class AppendFileSink(FixedPartitionedSink):
    """Write items to one append-only file.

    `encode(items) -> str` makes the text of a batch; `key(item)` identifies an
    item across runs; `existing_keys(path)` reads the keys already in a file, in
    file order; `window` is how many recent keys are remembered.
    Items are `(key, value)` pairs as bytewax partitioned sinks require; only
    values reach `encode`. With `grouped=True` each value is a list of records
    (moving one list per batch to the single writer costs less than one item per record)
    or an `Encoded` group, whose lines are appended as they are.
    """

    def __init__(
        self,
        path: os.PathLike | str,
        encode: Callable[[list], str],
        key: Callable[[object], Hashable],
        existing_keys: Callable[[Path], Iterable[Hashable]],
        header: str = "",
        after_write: Callable[[list], None] = lambda items: None,
        window: int = 200_000,
        grouped: bool = False,
        after_skip: Callable[[int], None] = lambda n: None,
    ):
        self.path = Path(path)
        self.encode = encode
        self.key = key
        self.existing_keys = existing_keys
        self.header = header
        self.after_write = after_write
        self.window = window
        self.grouped = grouped
        self.after_skip = after_skip  # called with how many items of a batch were written before
        self.bound_name = self.path.stem  # its dedup window's name in operators/runtime/bounds.py

    def list_parts(self) -> list[str]:
        return [self.path.name]

    def part_fn(self, item_key: str) -> int:
        return 0

    def build_part(self, step_id: str, for_part: str, resume_state: Optional[int]) -> _AppendPartition:
        return _AppendPartition(self, resume_state)
