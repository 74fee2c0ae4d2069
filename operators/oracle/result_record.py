"""The results record: one classified alert as other systems read it.

The ORACLE flows publish each `Result` to the results topic (an Avro object
container carrying its writer schema, as BOOM's filter results are) and keep it
in the results collection (`_id` = candid, the same fields). The schema is
`data/schemas/oracle_result.avsc`; `schemavsn` says which version wrote a record.

Pure functions on `Result`s and bytes: the sinks and `listen` are thin wrappers.
"""

from __future__ import annotations

import io
import json
from functools import lru_cache
from pathlib import Path
from typing import Optional

import fastavro

from operators.oracle.results import MJD_OFFSET, TIME_FIELD, Result, time_field  # noqa: F401 - the time convention is the CSV's

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "data" / "schemas" / "oracle_result.avsc"
SCHEMA_VERSION = "1.0"


@lru_cache(maxsize=1)
def schema() -> dict:
    """The parsed writer schema."""
    return fastavro.parse_schema(json.loads(SCHEMA_PATH.read_text()))


def to_record(result: Result, taxonomy: str) -> dict:
    """`result` as a record of the schema (plain Python values, ready for Avro or BSON)."""
    field = time_field(result.survey)
    return {
        "schemavsn": SCHEMA_VERSION,
        "candid": int(result.candid),
        "objectId": str(result.objectId),
        "survey": result.survey,
        "jd": float(result.jd) if field == "jd" else None,
        "mjd": float(result.jd) - MJD_OFFSET if field == "mjd" else None,
        "ra": float(result.ra),
        "dec": float(result.dec),
        "model": result.model,
        "taxonomy": taxonomy,
        "probabilities": {k: float(v) for k, v in result.probabilities.items()},
        "predicted": result.predicted,
        "predicted_probability": float(result.probabilities[result.predicted]),
        "stamp": result.stamp or None,
        "processed_at": result.processed_at,
    }


def encode(record: dict) -> bytes:
    """One record as an Avro object container with its writer schema (no codec: the
    Kafka producer compresses). The sync marker is fixed so that equal records give
    equal bytes (a replayed result is a byte-identical duplicate)."""
    buf = io.BytesIO()
    fastavro.writer(buf, schema(), [record], sync_marker=b"alertflow-result"[:16])
    return buf.getvalue()


def decode(data: bytes) -> list[dict]:
    """The records of one container, read with the writer schema it carries."""
    return list(fastavro.reader(io.BytesIO(data)))


def alert_time(record: dict) -> Optional[float]:
    """The record's own time (its `jd` or `mjd`, whichever is set)."""
    return record.get("jd") if record.get("jd") is not None else record.get("mjd")
