"""Replay dead letters once their cause is fixed (a bug, a missing BOOM document).

    python -m dataflows replay-dead-letters results/oracle_ztf_deadletters.jsonl

Every dead letter carries the raw message (`payload_b64`). With `KAFKA_BROKERS`
set the payloads are published back to the flow's topic (`KAFKA_TOPIC`, or the
survey's), where the running flow picks them up; otherwise they are re-run
here through the same flow, embedded, with the configured store (`MONGODB_URI`
...) and outputs. Re-run messages keep their original topic, partition and
offset, so a message that fails again is not written twice to the dead-letter
file, and rows stay unique by candid as always.
"""

from __future__ import annotations

import argparse
import base64
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from bytewax.connectors.kafka import KafkaSourceMessage
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from operators.io.deadletter import read_dead_letters

log = logging.getLogger("alertflow.replay")


@dataclass(frozen=True)
class Letter:
    payload: bytes
    topic: Optional[str]
    partition: Optional[int]
    offset: Optional[int]


def replayable(path: Path) -> tuple[list[Letter], int]:
    """The letters of a dead-letter file that carry a payload, and how many do not."""
    letters, without = [], 0
    for d in read_dead_letters(path):
        if not d.get("payload_b64"):
            without += 1
            continue
        letters.append(Letter(base64.b64decode(d["payload_b64"]), d.get("topic"), d.get("partition"), d.get("offset")))
    return letters, without


class _LetterPartition(StatefulSourcePartition):
    def __init__(self, letters: list[Letter], start: int):
        self._letters, self._next = letters, start

    def next_batch(self) -> list[KafkaSourceMessage]:
        if self._next >= len(self._letters):
            raise StopIteration()
        batch, self._next = self._letters[self._next:self._next + 500], self._next + 500
        return [KafkaSourceMessage(key=None, value=x.payload, topic=x.topic, partition=x.partition, offset=x.offset)
                for x in batch]

    def snapshot(self) -> int:
        return self._next


class LetterSource(FixedPartitionedSource):
    """The letters' payloads as Kafka-shaped messages with their original origin."""

    def __init__(self, letters: list[Letter]):
        self._letters = letters

    def list_parts(self) -> list[str]:
        return ["0"]

    def build_part(self, step_id: str, for_part: str, resume_state: Optional[int]) -> _LetterPartition:
        return _LetterPartition(self._letters, resume_state or 0)


def publish(letters: list[Letter], kafka) -> int:
    """Publish the payloads to `kafka.topic` (`KafkaSettings`); returns how many were delivered."""
    from operators.samples.load import Publisher, kafka_client_config

    publisher = Publisher(kafka_client_config(kafka), kafka.topic)
    for letter in letters:
        publisher.publish(letter.payload, None)
    publisher.flush()
    return publisher.delivered


def survey_of(path: Path, given: Optional[str]) -> str:
    """The survey given, else the one whose dead-letter file this is (oracle_<survey>_...), else ZTF."""
    from operators.oracle.surveys import SURVEYS, ZTF

    if given:
        return given
    name = path.name.lower()
    named = ([n for n in SURVEYS if name.startswith(f"oracle_{n.lower()}_")]
             or [n for n in SURVEYS if n.lower() in name and n != ZTF.name])
    return named[0] if named else ZTF.name


def main(argv: Optional[Sequence[str]] = None) -> int:
    from operators.runtime.config import Settings
    from dataflows.preflight import read_or_exit
    from operators.oracle.surveys import SURVEYS, survey_named

    ap = argparse.ArgumentParser(prog="python -m dataflows replay-dead-letters",
                                 description="Replay the payloads of a dead-letter file: to Kafka when KAFKA_BROKERS "
                                             "is set, else through the flow here.")
    ap.add_argument("file", type=Path, help="a dead-letter file (results/oracle_<survey>_deadletters.jsonl)")
    ap.add_argument("--survey", choices=[n.lower() for n in SURVEYS],
                    help="the flow the letters came from (default: from the file name, else ztf)")
    args = ap.parse_args(argv)
    if not args.file.is_file():
        ap.error(f"{args.file}: no such file")
    survey = survey_named(survey_of(args.file, args.survey))
    settings = read_or_exit(lambda: Settings.from_env(survey))
    letters, without = replayable(args.file)
    skipped = f" ({without} without a payload skipped)" if without else ""
    if settings.kafka is not None:
        sent = publish(letters, settings.kafka)
        print(f"published {sent} dead-lettered messages to {settings.kafka.topic}{skipped}")
        return 0
    from bytewax.testing import run_main

    from dataflows.oracle import build_flow
    from operators.runtime import metrics

    print(f"re-running {len(letters)} dead-lettered messages through the {survey.name} flow{skipped}", flush=True)
    run_main(build_flow(survey, settings, source=LetterSource(letters)))
    log.info("%s", metrics.run_summary(survey.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
