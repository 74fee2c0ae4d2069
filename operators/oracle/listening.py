"""What `python -m dataflows listen` does with each results record, as pure functions.

A record is a dict of the results schema (`operators/oracle/result_record.py`,
`data/schemas/oracle_result.avsc`), as `decode` returns it. Here: the cuts on
node probabilities (`--where "SN-Ia>0.8"`), the one line printed per result,
and the rows saved to Parquet, whose columns are the results CSV's
(`operators/oracle/results.py` `csv_columns`): the columns follow that one
function, and their types follow the schema. The Kafka consumer around them is
`dataflows/listen.py`.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterable, Optional, Sequence

from models.oracle.taxonomy import Taxonomy
from operators.oracle.result_record import schema
from operators.oracle.results import CsvLayout, csv_columns, jd_utc, mjd_tai, time_field

# ------------------------------------------------------------------ cuts

COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt,
}
# NODE OP P: node names hold letters, digits, spaces, '-', '/', '.' (ELAsTiCC's "Dwarf Novae", "SNIb/c").
_CUT = re.compile(r"^\s*(?P<node>[^<>=]*?)\s*(?P<op>>=|<=|>|<)\s*(?P<value>[^<>=]*?)\s*$")
CUT_FORM = "write NODE>P, NODE>=P, NODE<P or NODE<=P with P a probability between 0 and 1, e.g. --where 'SN-Ia>0.8'"


class CutError(ValueError):
    """A malformed `--where`; the message is one line naming the option and the fix."""


@dataclass(frozen=True)
class Cut:
    node: str
    op: str
    threshold: float

    def passes(self, probabilities: dict) -> bool:
        """A result whose probabilities lack the node (another taxonomy) does not pass."""
        value = probabilities.get(self.node)
        return value is not None and COMPARISONS[self.op](float(value), self.threshold)

    def __str__(self) -> str:
        return f"{self.node}{self.op}{self.threshold:g}"


def parse_cut(text: str, taxonomy: Taxonomy, survey: str = "") -> Cut:
    """`"SN-Ia>0.8"` -> Cut, the node checked against `taxonomy`; else `CutError`."""
    m = _CUT.match(text)
    if m is None or not m.group("node") or not m.group("value"):
        raise CutError(f"--where {text!r}: {CUT_FORM}")
    node, raw = m.group("node"), m.group("value")
    try:
        threshold = float(raw)
    except ValueError:
        raise CutError(f"--where {text!r}: {raw!r} is not a number; {CUT_FORM}") from None
    if not 0.0 <= threshold <= 1.0:
        raise CutError(f"--where {text!r}: {raw} is not a probability; use a number between 0 and 1 "
                       f"(e.g. 0.8, not 80)")
    if node not in taxonomy.nodes:
        same = [n for n in taxonomy.nodes if n.lower() == node.lower()]
        hint = f"did you mean {same[0]!r}? " if same else ""
        where = f"the {survey} taxonomy ({taxonomy.name})" if survey else f"taxonomy {taxonomy.name}"
        raise CutError(f"--where {text!r}: no node {node!r} in {where}; {hint}nodes: {', '.join(taxonomy.nodes)}")
    return Cut(node, m.group("op"), threshold)


def passes(record: dict, cuts: Sequence[Cut]) -> bool:
    """Every cut holds (several `--where` are ANDed)."""
    probabilities = record.get("probabilities") or {}
    return all(cut.passes(probabilities) for cut in cuts)


# ------------------------------------------------------------------ one line per result

JD_UNIX_EPOCH = 2440587.5  # 1970-01-01T00:00:00 UTC as a Julian date


def alert_jd(record: dict) -> Optional[float]:
    """The alert's time as a JD, whichever of `jd` (ZTF) or `mjd` (LSST) the record carries."""
    if record.get("jd") is not None:
        return float(record["jd"])
    if record.get("mjd") is not None:  # Rubin's MJD is TAI
        return jd_utc(float(record["mjd"]))
    return None


def jd_to_utc(jd: float) -> datetime:
    return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(days=jd - JD_UNIX_EPOCH)


def top_leaves(record: dict, taxonomy: Taxonomy, n: int) -> list[tuple[str, float]]:
    """The `n` most probable leaf classes other than the predicted one (the runners-up)."""
    probabilities = record.get("probabilities") or {}
    leaves = [taxonomy.nodes[i] for i in taxonomy.leaves]
    others = [(name, float(probabilities[name])) for name in leaves
              if name in probabilities and name != record.get("predicted")]
    return sorted(others, key=lambda kv: -kv[1])[:n]


def result_line(record: dict, taxonomy: Taxonomy, runners_up: int = 2) -> str:
    """`objectId candid time(UTC) predicted probability (runner-up p, ...)`, one line."""
    jd = alert_jd(record)
    when = jd_to_utc(jd).strftime("%Y-%m-%d %H:%M:%S") if jd is not None else "-" * 19
    p = record.get("predicted_probability")
    if p is None:  # a record without the field (not written by schema 1.x)
        p = (record.get("probabilities") or {}).get(record.get("predicted"), float("nan"))
    others = ", ".join(f"{name} {value:.3f}" for name, value in top_leaves(record, taxonomy, runners_up))
    return (f"{record.get('objectId', '?'):<14} {record.get('candid', '?'):>19}  {when}  "
            f"{record.get('predicted', '?'):<10} {float(p):.3f}" + (f"  ({others})" if others else ""))


# ------------------------------------------------------------------ rows for Parquet

# CSV columns the record does not carry: what people and other classifiers said on
# Fritz is looked up for the CSV only. Saved as null.
NOT_IN_RECORD = ("fritz_classifications", "fritz_ml_classifications")


def _field_kinds() -> dict[str, str]:
    """Schema field -> 'long', 'double' or 'string' (a union with null counts as its other branch)."""
    kinds = {}
    for f in schema()["fields"]:
        t = f["type"]
        if isinstance(t, list):
            t = next(x for x in t if x != "null")
        kinds[f["name"]] = t if isinstance(t, str) else "map"
    return kinds


def saved_layout(taxonomy: Taxonomy) -> CsvLayout:
    """The results CSV's columns of the survey whose taxonomy this is (its time field, Fritz
    columns only for a survey Fritz holds), with `stamp` always: the record carries it, and
    every file saved for a survey then has one schema, whatever model wrote the records."""
    from operators.oracle.surveys import SURVEYS

    survey = next((s for s in SURVEYS.values() if s.taxonomy is taxonomy), None)
    if survey is None:
        return CsvLayout("jd", fritz=False, stamp=True)
    return CsvLayout(time_field(survey.name), bool(survey.fritz), stamp=True)


def column_kinds(taxonomy: Taxonomy) -> dict[str, str]:
    """The results CSV's columns (`csv_columns`, `saved_layout`) and each one's kind: 'long',
    'double' or 'string'. The time is the survey's own, as in its CSV: `jd` or `mjd`."""
    fields = _field_kinds()
    out = {}
    for name in csv_columns(taxonomy, saved_layout(taxonomy)):
        if name in taxonomy.nodes or name in ("jd", "mjd"):
            out[name] = "double"
        elif fields.get(name) in {"long", "double"}:
            out[name] = fields[name]
        else:
            out[name] = "string"
    return out


def csv_row(record: dict, taxonomy: Taxonomy) -> dict:
    """One record as a row of the results CSV's columns (None where the record has nothing)."""
    probabilities = record.get("probabilities") or {}
    row = {}
    for name in csv_columns(taxonomy, saved_layout(taxonomy)):
        if name == "jd":
            row[name] = alert_jd(record)
        elif name == "mjd":
            jd = alert_jd(record)
            row[name] = record.get("mjd") if record.get("mjd") is not None else (None if jd is None else mjd_tai(jd))
        elif name in taxonomy.nodes:
            row[name] = probabilities.get(name)
        elif name in NOT_IN_RECORD:
            row[name] = None
        else:
            row[name] = record.get(name)
    return row


def parquet_table(records: Iterable[dict], taxonomy: Taxonomy):
    """A pyarrow Table of the records, the results CSV's columns, typed from the schema."""
    import pyarrow as pa

    types = {"long": pa.int64(), "double": pa.float64(), "string": pa.string()}
    kinds = column_kinds(taxonomy)
    rows = [csv_row(r, taxonomy) for r in records]
    arrow_schema = pa.schema([pa.field(name, types[kind]) for name, kind in kinds.items()])
    return pa.Table.from_pylist(rows, schema=arrow_schema)


def batch_file_name(survey: str, received: datetime, partition: int, offset: int) -> str:
    """One Parquet file per poll batch: sortable by time, unique by its first message."""
    return f"oracle_{survey.lower()}_{received.strftime('%Y%m%dT%H%M%S.%f')}Z_p{partition}-o{offset}.parquet"

