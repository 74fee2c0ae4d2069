"""Fink alerts from files users already hold: the `FINK_VRA_INPUT` input of the VRA flow.

Three kinds of files, told apart by content (never by name):
- Avro containers (magic `Obj\\x01`, also gzipped): `fink_consumer --save`
  writes one alert per file (`<objectId>_<candid>.avro`), `fink_datatransfer
  -outformat avro` many per file;
- Parquet (magic `PAR1`) holding whole alerts: `fink_datatransfer`'s default
  output, a dataset of `part-*.parquet` files, possibly under partition
  directories (`year=2025/month=07/day=01/`, `finkclass=.../`); Avro records
  become structs, arrays lists, Avro `float` Arrow float32 (fink-client's
  `avro2arrow`), so values are the ones the Avro alert holds;
- Parquet of the original finkvra consumer's processed rows: `candid,
  objectId, ra, dec, drb` and per-point lists `mjd, mag, maglim, fid`
  (`isdiffpos`), current candidate FIRST (fink-client's `extract_field`
  order), Fink's `lc_features_g` / `lc_features_r`, and Sherlock's
  `sherl_class`, `sep_arcsec`.

`PATH` is a file, a directory (walked recursively; names starting with `.` or
`_` -- Spark's `_SUCCESS`, `.crc` files -- are skipped) or a glob (`**`
allowed). `AlertFileSource` has one partition per file, so workers share the
files; `file_alert` (a map step) turns each record into the flow's
`AlertItem` or a dead letter. When a Parquet file lacks the fields a feature
needs (a column chosen away, a processed row without Fink's features, which
cannot be recomputed without `sigmapsf`), that feature is NaN, never guessed.
"""

from __future__ import annotations

import base64
import glob
import gzip
import itertools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import fastavro
import pyarrow as pa
import pyarrow.parquet as pq
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from operators.runtime.config import ConfigError
from operators.io.deadletter import Origin, dead_letter
from operators.vra.steps import AVRO_MAGIC, AlertItem, Routed, alert_problem, single_alert_container
from operators.vra.sherlock import SherlockMatch
from operators.vra.features import BANDS, CARRIED_KEYS, LC_FEATURES

log = logging.getLogger(__name__)

PARQUET_MAGIC = b"PAR1"
GZIP_MAGIC = b"\x1f\x8b"

# Features and what they are computed from (see operators.vra.features).
DETECTION_FEATURES = frozenset({"ndets", "nnondets", "dets_median", "dets_std"})
BAND_FEATURES = {fid: frozenset(name + suffix for name in LC_FEATURES) for fid, suffix in BANDS.items()}
# Point fields the computed light-curve features read (fink-science `ad_features`).
LC_POINT_FIELDS = ("jd", "magpsf", "sigmapsf", "fid", "distnr", "magnr", "sigmagnr", "isdiffpos")


# ---------------------------------------------------------------- which files


def _hidden(parts) -> bool:
    return any(p.startswith((".", "_")) for p in parts)


def expand_input(spec: str) -> list[Path]:
    """The files `FINK_VRA_INPUT` names, sorted. Raises ConfigError when there are none."""
    spec = spec.strip()
    if any(ch in spec for ch in "*?["):
        files = [Path(p) for p in glob.glob(spec, recursive=True)]
        files = [p for p in files if p.is_file() and not _hidden([p.name])]
    else:
        root = Path(spec).expanduser()
        if root.is_dir():
            files = [p for p in root.rglob("*") if p.is_file() and not _hidden(p.relative_to(root).parts)]
        elif root.is_file():
            files = [root]
        else:
            raise ConfigError(f"FINK_VRA_INPUT={spec}: no such file or directory; "
                              "give a file, a directory or a glob of Fink Avro/Parquet files")
    if not files:
        raise ConfigError(f"FINK_VRA_INPUT={spec}: no files there; give a file, a directory or a glob "
                          "of Fink Avro/Parquet files")
    return sorted(p.resolve() for p in files)


def file_format(path: Path) -> Optional[str]:
    """"avro", "avro.gz" or "parquet" from the file's first bytes; None if neither."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head == AVRO_MAGIC:
        return "avro"
    if head == PARQUET_MAGIC:
        return "parquet"
    if head[:2] == GZIP_MAGIC:
        try:
            with gzip.open(path, "rb") as f:
                return "avro.gz" if f.read(4) == AVRO_MAGIC else None
        except OSError:
            return None
    return None


# ---------------------------------------------------------------- records


@dataclass(frozen=True)
class FileRecord:
    """One record read from a file, before it is checked.

    `kind` is "avro" (an alert record; `avro_schema` its writer schema, for
    the dead-letter payload), "parquet" (a row; `unavailable` the features
    its file lacks the fields for) or "error" (the file cannot be read from
    `origin.offset` on; `error` says why).
    """

    kind: str
    origin: Origin
    record: Any = None
    avro_schema: Any = None
    unavailable: frozenset = frozenset()
    error: Optional[str] = None


def _origin(path: Path, offset: int) -> Origin:
    return Origin(topic=f"file:{path}", partition=0, offset=offset)


def _has(struct: pa.DataType, *names: str) -> bool:
    return pa.types.is_struct(struct) and all(struct.get_field_index(n) >= 0 for n in names)


def unavailable_features(schema: pa.Schema) -> frozenset:
    """Features a Parquet file of whole alerts lacks the fields for.

    ra, dec and drb are read with a NaN default already; the history-based
    features need `prv_candidates` and `magpsf` in both the candidate and
    the history; computed light-curve features need every point field, unless
    the file carries Fink's own `lc_features_<band>`.
    """
    names = set(schema.names)
    if "candidate" not in names:  # processed rows say per row what they lack
        return frozenset()
    cand = schema.field("candidate").type
    prv = schema.field("prv_candidates").type if "prv_candidates" in names else pa.null()
    prv_item = prv.value_type if pa.types.is_list(prv) or pa.types.is_large_list(prv) else pa.null()
    missing: set[str] = set()
    if not (_has(cand, "magpsf") and _has(prv_item, "magpsf")):
        missing |= DETECTION_FEATURES
    points_ok = _has(cand, *LC_POINT_FIELDS) and _has(prv_item, *LC_POINT_FIELDS)
    for fid, key in CARRIED_KEYS.items():
        if key not in names and not points_ok:
            missing |= BAND_FEATURES[fid]
    return frozenset(missing)


def read_records(path: Path, start: int = 0, batch_rows: int = 256) -> Iterator[FileRecord]:
    """Records of one file from record number `start`; an error record ends a bad file."""
    offset = start
    try:
        fmt = file_format(path)
        if fmt is None:
            yield FileRecord("error", _origin(path, 0), error="neither Avro (Obj\\x01) nor Parquet (PAR1)")
            return
        if fmt in ("avro", "avro.gz"):
            with (gzip.open(path, "rb") if fmt == "avro.gz" else open(path, "rb")) as f:
                reader = fastavro.reader(f)
                for record in itertools.islice(reader, start, None):
                    yield FileRecord("avro", _origin(path, offset), record, avro_schema=reader.writer_schema)
                    offset += 1
            return
        parquet = pq.ParquetFile(path)
        unavailable = unavailable_features(parquet.schema_arrow)
        seen = 0
        for batch in parquet.iter_batches(batch_size=batch_rows):
            if seen + batch.num_rows <= start:
                seen += batch.num_rows
                continue
            for row in batch.slice(max(0, start - seen)).to_pylist():
                yield FileRecord("parquet", _origin(path, offset), row, unavailable=unavailable)
                offset += 1
            seen += batch.num_rows
    except Exception as exc:  # a truncated or corrupt file: what was read stays, the rest is reported
        yield FileRecord("error", _origin(path, offset), error=f"{type(exc).__name__}: {exc}")


# ---------------------------------------------------------------- the source


class _FilePartition(StatefulSourcePartition[FileRecord, int]):
    def __init__(self, path: Path, resume: Optional[int], batch_size: int):
        self._next = resume or 0
        self._records = read_records(path, self._next)
        self._batch = batch_size

    def next_batch(self) -> list[FileRecord]:
        batch = list(itertools.islice(self._records, self._batch))
        if not batch:
            raise StopIteration()
        self._next += sum(1 for r in batch if r.kind != "error")
        return batch

    def snapshot(self) -> int:
        return self._next


class AlertFileSource(FixedPartitionedSource[FileRecord, int]):
    """Every record of the files `spec` names; one partition per file.

    The files are listed when the source is made, so a wrong path stops the
    flow before it starts (ConfigError naming FINK_VRA_INPUT). The state of
    a partition is the number of records read, so a recovered run goes on
    where it stopped.
    """

    def __init__(self, spec: str, batch_size: int = 64):
        self._files = {str(p): p for p in expand_input(spec)}
        self._batch = batch_size

    def list_parts(self) -> list[str]:
        return list(self._files)

    def build_part(self, step_id: str, for_part: str, resume_state: Optional[int]) -> _FilePartition:
        return _FilePartition(self._files[for_part], resume_state, self._batch)


# ---------------------------------------------------------------- records to alerts


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    return str(value)


def _at(values: Any, i: int) -> Any:
    return values[i] if isinstance(values, (list, tuple)) and i < len(values) else None


def processed_row_alert(row: Mapping[str, Any]) -> tuple[dict, frozenset, Optional[SherlockMatch]]:
    """A finkvra processed row as an alert, the features it cannot give, and its Sherlock answer.

    The per-point lists hold the current candidate first, then the history
    (fink-client's `extract_field`); `mjd` is `jd - 2400000.5`. Without
    `sigmapsf` no light-curve feature can be recomputed, so a band without
    Fink's carried features is NaN.
    """
    mag = row.get("mag")
    unavailable: set[str] = set()
    if not isinstance(mag, (list, tuple)) or not mag:
        unavailable |= DETECTION_FEATURES
        mag = [None]
    points = []
    for i in range(len(mag)):
        mjd = _at(row.get("mjd"), i)
        points.append({
            "jd": None if mjd is None else mjd + 2400000.5,
            "magpsf": mag[i],
            "diffmaglim": _at(row.get("maglim"), i),
            "fid": _at(row.get("fid"), i),
            "isdiffpos": _at(row.get("isdiffpos"), i),
        })
    candid = row.get("candid")
    candidate = {**points[0], "candid": candid, "ra": row.get("ra"), "dec": row.get("dec"), "drb": row.get("drb")}
    alert = {"candid": candid, "objectId": row.get("objectId"), "candidate": candidate, "prv_candidates": points[1:]}
    for fid, key in CARRIED_KEYS.items():
        if isinstance(row.get(key), Mapping):
            alert[key] = row[key]
        else:
            unavailable |= BAND_FEATURES[fid]
    sherlock = None
    if "sep_arcsec" in row or "sherl_class" in row:
        sep = row.get("sep_arcsec")
        sherlock = SherlockMatch(row.get("sherl_class"), float("nan") if sep is None else float(sep))
    return alert, frozenset(unavailable), sherlock


def file_alert(rec: FileRecord) -> Routed:
    """Map step: a file record as an `AlertItem`, or a dead letter saying why not."""
    if rec.kind == "error":
        return dead_letter("read", f"unreadable_file: {rec.error}", rec.origin)
    sherlock, unavailable = None, rec.unavailable
    if rec.kind == "avro":
        alert = rec.record
        payload = single_alert_container(rec.avro_schema, alert)
    else:
        payload = json.dumps(rec.record, default=_json_default).encode()
        alert = rec.record
        if isinstance(alert, Mapping) and "candidate" not in alert and {"ra", "dec"} <= alert.keys():
            alert, extra, sherlock = processed_row_alert(alert)
            unavailable = unavailable | extra
    problem = alert_problem(alert)
    if problem is not None:
        ids = alert if isinstance(alert, Mapping) else {}
        return dead_letter("decode", f"invalid_alert: {problem}", rec.origin,
                           candid=ids.get("candid"), object_id=ids.get("objectId"), payload=payload)
    return AlertItem(alert=alert, origin=rec.origin, payload=payload, sherlock=sherlock, unavailable=unavailable)
