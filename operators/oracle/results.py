"""Classification results and the results CSV.

A `Result` is one classified alert: identifiers, the class probability of
every taxonomy node, the predicted leaf, the model name and the time.

`results/oracle_{survey}_results.csv` columns (`csv_columns`): `candid, objectId`,
the alert's time in the survey's own convention (`jd` for ZTF, `mjd` for LSST:
`time_field`), `ra, dec`, one column per taxonomy node (level order, as the model
emits them), `predicted` and `predicted_probability` (the most probable leaf and its
probability), `model`, `processed_at`; then, for surveys Fritz holds,
`fritz_classifications` (what people said on Fritz) and `fritz_ml_classifications`
(what machine classifiers said there); and for image models `stamp` (how the image
was made, `template`, `none`, `bad shape 58x63`, ... as in `operators/oracle/stamps.py`).
No column is written that the survey or the model always leaves empty. One row per
candid, one header, whatever the worker count or number of crashes (see
`operators/io/files.py`; a file with another header is set aside, never appended to).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Optional

import erfa

from models.oracle.taxonomy import Taxonomy
from operators.io.files import AppendFileSink, Encoded


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


MJD_OFFSET = 2400000.5  # MJD = JD - 2400000.5

# The survey's own time: ZTF's alerts carry a JD (UTC), Rubin's an MJD in TAI
# (`midpointMjdTai`). `Result.jd` is a UTC JD for every survey: BOOM writes `candidate.jd`
# on LSST documents too, 37 s behind `midpointMjdTai` (TAI - UTC since 2017).
TIME_FIELD = {"ZTF": "jd", "LSST": "mjd"}


def time_field(survey: str) -> str:
    """`jd` or `mjd`: the time a survey's results carry (JD for surveys not listed)."""
    return TIME_FIELD.get(survey.upper(), "jd")


@lru_cache(maxsize=4096)
def _tai_minus_utc_s(civil_day: int) -> float:
    y, m, d, _ = erfa.jd2cal(civil_day - 0.5, 0.0)  # leap seconds step at UTC midnight: one value a civil day
    return float(erfa.dat(y, m, d, 0.0))


def tai_minus_utc_days(jd_utc: float) -> float:
    """TAI - UTC at a UTC JD, in days (IERS leap-second table via erfa, as astropy uses)."""
    return _tai_minus_utc_s(int(math.floor(jd_utc + 0.5))) / 86400.0


def mjd_tai(jd: float) -> float:
    """A UTC JD as an MJD in TAI, Rubin's `midpointMjdTai` scale (float noise below 1e-9
    day, 0.1 ms, rounded off)."""
    return round(jd - MJD_OFFSET + tai_minus_utc_days(jd), 9)


def jd_utc(mjd_tai_value: float) -> float:
    """An MJD in TAI back to a UTC JD (the inverse of `mjd_tai`)."""
    jd = mjd_tai_value + MJD_OFFSET
    return jd - tai_minus_utc_days(jd)


def survey_time(result: Result) -> float:
    """The result's time in its survey's convention (`time_field`): a UTC JD, or Rubin's
    MJD (TAI)."""
    return mjd_tai(float(result.jd)) if time_field(result.survey) == "mjd" else float(result.jd)


@dataclass(frozen=True)
class CsvLayout:
    """Which optional columns a results file has: they depend on the survey and the model."""

    time: str = "jd"  # time_field(survey)
    fritz: bool = True  # the survey's objects are on Fritz (Survey.fritz)
    stamp: bool = False  # an image model (model.needs_stamp)

    @classmethod
    def of(cls, survey, model) -> "CsvLayout":
        return cls(time_field(survey.name), bool(survey.fritz), bool(getattr(model, "needs_stamp", False)))


def csv_columns(taxonomy: Taxonomy, layout: CsvLayout = CsvLayout()) -> list[str]:
    return ["candid", "objectId", layout.time, "ra", "dec", *taxonomy.nodes, "predicted", "predicted_probability",
            "model", "processed_at", *(["fritz_classifications", "fritz_ml_classifications"] if layout.fritz else []),
            *(["stamp"] if layout.stamp else [])]


def _number(x: float) -> str:
    return repr(float(x)) if x == x else ""  # NaN (position unknown) -> empty


def _fields(taxonomy: Taxonomy, layout: CsvLayout, r: Result) -> list:
    return [
        r.candid, r.objectId, repr(survey_time(r)), _number(r.ra), _number(r.dec),
        *(f"{r.probabilities[n]:.6g}" for n in taxonomy.nodes),
        r.predicted, f"{r.probabilities[r.predicted]:.6g}", r.model, r.processed_at,
        *((r.fritz_classifications, r.fritz_ml_classifications) if layout.fritz else ()),
        *((r.stamp,) if layout.stamp else ()),
    ]


def _encoder(taxonomy: Taxonomy, layout: CsvLayout):
    def encode(results: list[Result]) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        for r in results:
            w.writerow(_fields(taxonomy, layout, r))
        return buf.getvalue()

    return encode


class _Line:
    """A file for `csv.writer` whose `write` returns the line: `writerow` returns it."""

    @staticmethod
    def write(line: str) -> str:
        return line


def csv_rows(taxonomy: Taxonomy, layout: CsvLayout, results: list[Result]) -> Optional[Encoded]:
    """One model batch's results as CSV lines, encoded by the worker that classified them
    (None for an empty batch: nothing to send). The single CSV writer of a cluster receives
    these strings and numbers instead of `Result` objects to unpickle and encode, so the
    encoding is shared by every process and the writer's process is not the busier one
    (docs/performance.md, two processes). The lines are those `results_csv_sink` writes
    for the same results; `received_ms` rides along for the end-to-end latency."""
    if not results:
        return None
    w = csv.writer(_Line, lineterminator="\n")
    return Encoded(tuple(r.candid for r in results), tuple(w.writerow(_fields(taxonomy, layout, r)) for r in results),
                   tuple(r.received_ms for r in results))


def _candids_in(path: Path) -> Iterable[int]:
    with path.open(newline="") as f:
        reader = csv.reader(f)
        next(reader, None)
        for row in reader:
            if row and row[0].isdigit():
                yield int(row[0])


def results_csv_sink(path, taxonomy: Taxonomy, layout: CsvLayout = CsvLayout(), after_write=lambda items: None,
                     after_skip=lambda n: None) -> AppendFileSink:
    """Sink for `(key, [Result, ...])` items, one list per model batch (moving one list
    to the single writer costs less than one item per result), or `(key, Encoded)` from
    `csv_rows` (the flows: encoded where classified), into the results CSV (deduplicated
    by candid). `after_write` receives the written `Result`s, or the `received_ms` of the
    written encoded rows."""
    return AppendFileSink(
        path,
        encode=_encoder(taxonomy, layout),
        key=lambda r: r.candid,
        existing_keys=_candids_in,
        header=",".join(csv_columns(taxonomy, layout)) + "\n",
        after_write=after_write,
        grouped=True,
        after_skip=after_skip,
    )


def read_results(path):
    import pandas as pd

    return pd.read_csv(path, dtype={"candid": "int64", "objectId": str, "fritz_classifications": str,
                                    "fritz_ml_classifications": str, "stamp": str},
                       keep_default_na=False, na_values={c: [""] for c in ("jd", "mjd", "ra", "dec")})
