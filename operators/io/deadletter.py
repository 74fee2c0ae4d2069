"""Dead letters: every message a flow cannot use, with the reason, kept for replay.

A dead letter is one JSON line holding where the message came from (topic,
partition, offset), what we know of it (candid, objectId), why it was
rejected, when, and the raw payload (base64) so that nothing is lost: a fixed
bug can be followed by a replay of the dead-letter file.

Inputs: anything a step failed on. Output: `DeadLetter` records; `dead_letter_sink`
appends them to a JSONL file (one partition, so lines never interleave).
"""

from __future__ import annotations

import base64
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from operators.io.files import AppendFileSink

log = logging.getLogger(__name__)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Origin:
    """Where a message came from; carried beside it through the flow."""

    topic: Optional[str] = None
    partition: Optional[int] = None
    offset: Optional[int] = None
    # Kafka append time (ms since epoch) when known, for end-to-end latency.
    timestamp_ms: Optional[int] = None


@dataclass(frozen=True)
class DeadLetter:
    reason: str
    stage: str
    topic: Optional[str] = None
    partition: Optional[int] = None
    offset: Optional[int] = None
    candid: Optional[int] = None
    objectId: Optional[str] = None
    time: str = field(default_factory=utc_now)
    payload_b64: Optional[str] = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def dead_letter(
    stage: str,
    reason: str,
    origin: Optional[Origin] = None,
    candid: Any = None,
    object_id: Any = None,
    payload: Optional[bytes] = None,
) -> DeadLetter:
    """Build a dead letter; tolerant of whatever half-parsed values are at hand."""
    origin = origin or Origin()
    try:
        candid = int(candid) if candid is not None else None
    except (TypeError, ValueError):
        candid = None
    return DeadLetter(
        reason=reason,
        stage=stage,
        topic=origin.topic,
        partition=origin.partition,
        offset=origin.offset,
        candid=candid,
        objectId=str(object_id) if object_id is not None else None,
        payload_b64=base64.b64encode(payload).decode("ascii") if payload else None,
    )


def read_dead_letters(path: os.PathLike | str) -> list[dict]:
    """All records of a dead-letter file (empty if the file does not exist)."""
    p = Path(path)
    if not p.exists():
        return []
    with p.open() as f:
        return [json.loads(line) for line in f if line.strip()]


def _letter_key(letter) -> tuple:
    if isinstance(letter, dict):
        return (letter.get("stage"), letter.get("topic"), letter.get("partition"), letter.get("offset"), letter.get("candid"))
    return (letter.stage, letter.topic, letter.partition, letter.offset, letter.candid)


def _letters_in(path: Path):
    return (_letter_key(d) for d in read_dead_letters(path))


def _log_letters(letters: list[DeadLetter]) -> None:
    for letter in letters:
        log.warning("dead letter: %s (stage=%s candid=%s objectId=%s offset=%s)",
                    letter.reason, letter.stage, letter.candid, letter.objectId, letter.offset)


def dead_letter_sink(path: os.PathLike | str) -> AppendFileSink:
    """Sink for `(key, DeadLetter)` items: one JSON line each, never twice for the
    same message (keyed by stage, topic, partition, offset and candid)."""
    return AppendFileSink(
        path,
        encode=lambda letters: "".join(d.to_json() + "\n" for d in letters),
        key=_letter_key,
        existing_keys=_letters_in,
        after_write=_log_letters,
    )

