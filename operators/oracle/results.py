"""Classification results and the results CSV.

A `Result` is one classified alert: identifiers, the class probability of
every taxonomy node, the predicted leaf, the model name and the time.

`results/oracle_{survey}_results.csv` columns: `candid, objectId, jd`, one
column per taxonomy node (level order, as the model emits them), `predicted`,
`model`, `processed_at`, `fritz_classifications` (what people said on Fritz),
`fritz_ml_classifications` (what machine classifiers said there), `stamp` (image
models: how the image was made, `template`, `none`, `bad shape 58x63`, ... as in
`operators/oracle/stamps.py`; empty for light-curve models). One row per candid, one
header, whatever the worker count or number of crashes (see `operators/io/files.py`).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from models.oracle.taxonomy import Taxonomy
from operators.io.files import AppendFileSink


@dataclass(frozen=True)
class Result:
    candid: int
    objectId: str
    jd: float
    survey: str
    probabilities: dict  # node name -> class probability, root included
    predicted: str
    model: str
    processed_at: str
    fritz_classifications: str = ""  # people's classifications on Fritz
    fritz_ml_classifications: str = ""  # machine classifiers' classifications on Fritz
    stamp: str = ""  # stamp status of image models (operators/oracle/stamps.py); "" otherwise
    ra: float = float("nan")  # degrees (J2000): the results record and collection carry the position
    dec: float = float("nan")
    fritz_link: str = field(default="", compare=False)  # Fritz page to show people (not in the CSV)
    received_ms: Optional[int] = field(default=None, compare=False)  # Kafka append time


def csv_columns(taxonomy: Taxonomy) -> list[str]:
    return ["candid", "objectId", "jd", *taxonomy.nodes, "predicted", "model", "processed_at", "fritz_classifications",
            "fritz_ml_classifications", "stamp"]


def _encoder(taxonomy: Taxonomy):
    def encode(results: list[Result]) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        for r in results:
            w.writerow([
                r.candid, r.objectId, repr(r.jd),
                *(f"{r.probabilities[n]:.6g}" for n in taxonomy.nodes),
                r.predicted, r.model, r.processed_at, r.fritz_classifications, r.fritz_ml_classifications, r.stamp,
            ])
        return buf.getvalue()

    return encode


def _candids_in(path: Path) -> Iterable[int]:
    with path.open(newline="") as f:
        reader = csv.reader(f)
        next(reader, None)
        for row in reader:
            if row and row[0].isdigit():
                yield int(row[0])


def results_csv_sink(path, taxonomy: Taxonomy, after_write=lambda items: None,
                     after_skip=lambda n: None) -> AppendFileSink:
    """Sink for `(key, [Result, ...])` items, one list per model batch (moving one list
    to the single writer costs less than one item per result), into the results CSV
    (deduplicated by candid)."""
    return AppendFileSink(
        path,
        encode=_encoder(taxonomy),
        key=lambda r: r.candid,
        existing_keys=_candids_in,
        header=",".join(csv_columns(taxonomy)) + "\n",
        after_write=after_write,
        grouped=True,
        after_skip=after_skip,
    )


def read_results(path):
    import pandas as pd

    return pd.read_csv(path, dtype={"candid": "int64", "objectId": str, "fritz_classifications": str,
                                    "fritz_ml_classifications": str, "stamp": str},
                       keep_default_na=False, na_values={"jd": [""]})
