"""Where filter-result messages come from.

- `SampleSource`: the bundled sample (`operators/samples/bundle.py`) replayed once, as
  Kafka-shaped messages (topic `sample:{topic}`, partition 0, offsets 0..N−1),
  so that every later step is the same as with Kafka. Its position is kept in
  recovery snapshots like a Kafka offset.
- Kafka: bytewax's own connector, set up in `dataflows/oracle.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from bytewax.connectors.kafka import KafkaSourceMessage
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from operators.runtime.progress import Progress
from operators.samples.bundle import read_messages


class _SamplePartition(StatefulSourcePartition):
    def __init__(self, values: list[bytes], topic: str, next_index: int, batch_size: int):
        self._values = values
        self._topic = topic
        self._next = next_index
        self._batch = batch_size
        self._progress = Progress(len(values), f"replay of {topic}")
        self._progress.advance(next_index)

    def next_batch(self) -> list[KafkaSourceMessage]:
        if self._next >= len(self._values):
            self._progress.close()
            raise StopIteration()
        start, stop = self._next, min(self._next + self._batch, len(self._values))
        self._next = stop
        self._progress.advance(stop - start)
        return [
            KafkaSourceMessage(key=None, value=self._values[i], topic=self._topic, partition=0, offset=i)
            for i in range(start, stop)
        ]

    def snapshot(self) -> int:
        return self._next


class SampleSource(FixedPartitionedSource):
    """Replay a sample directory's messages once, then end the flow."""

    def __init__(self, sample_dir: Path, topic: str, values: Optional[list[bytes]] = None, batch_size: int = 1000):
        self._values = values
        self._dir = Path(sample_dir)
        self._topic = f"sample:{topic}"
        self._batch = batch_size

    def list_parts(self) -> list[str]:
        return ["0"]

    def build_part(self, step_id: str, for_part: str, resume_state: Optional[int]) -> _SamplePartition:
        values = self._values if self._values is not None else read_messages(self._dir)
        return _SamplePartition(values, self._topic, resume_state or 0, self._batch)
