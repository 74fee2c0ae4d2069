"""Labelled pools for simulated active learning, from any table users hold.

    --pool synthetic:3000                          the made-up pool (models.vetting.experiments)
    --pool results/fink_vra --labels labeled.csv   our feature table joined with our labels
    --pool X.csv [--labels y.csv] --label-column type \\
        --label-map 'galactic=gal,pm=varstar,good=extragal,garbage=bogus,AGN=agn' \\
        [--feature-columns a,b,c] [--validation X_val.csv --validation-labels y_val.csv]

A foreign table is a CSV or Parquet file with one row per example and a label
column; its labels split off into another file (the original finkvra
project's `X_*.csv` / `y_*.csv`) are joined on the columns both files share
(e.g. `ATLAS_ID`). Labels are mapped to our vocabulary (`LABEL_TABLE`:
real, extragal, gal, agn, bogus, varstar); a label mapped to `none` drops its
rows, and a label neither ours nor mapped is an error naming it. Feature
columns are the ones given, else every numeric column that is not an
identifier or the label. `--validation` fixes the held-out table (the
original project's day-1 / day-N splits) instead of a random split.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd

from models.vetting.classifier import LABELS

DROP = {"none", "-", "drop", ""}
# Never features: identifiers, bookkeeping, and our own label columns.
_ID_NAMES = {"candid", "objectid", "id", "index", "label", "timestamp", "y", "unnamed: 0"}
_ID_PATTERN = re.compile(r"(^|_)id$|id$", re.IGNORECASE)


@dataclass
class Pool:
    """A pool ready for `simulate`: rows with features and `label`, the feature names,
    and the fixed validation table (None: a random held-out split)."""

    table: pd.DataFrame
    features: list[str]
    validation: Optional[pd.DataFrame] = None


def parse_label_map(text: Optional[str]) -> dict[str, Optional[str]]:
    """`'galactic=gal,pm=varstar,unclear=none'` -> `{"galactic": "gal", "pm": "varstar", "unclear": None}`."""
    mapping: dict[str, Optional[str]] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        theirs, sep, ours = item.partition("=")
        if not sep or not theirs.strip():
            raise ValueError(f"--label-map expects THEIRS=OURS pairs separated by commas, got {item!r}")
        ours = ours.strip()
        if ours.lower() in DROP:
            mapping[theirs.strip()] = None
        elif ours not in LABELS:
            raise ValueError(f"--label-map {item!r}: {ours!r} is not one of our labels {list(LABELS)} (or none)")
        else:
            mapping[theirs.strip()] = ours
    return mapping


def map_labels(labels: pd.Series, mapping: dict[str, Optional[str]]) -> pd.Series:
    """Their labels in our vocabulary (None where mapped to none). Unknown labels raise ValueError."""
    text = labels.astype("string").str.strip()
    unknown = sorted(set(text.dropna()) - set(mapping) - set(LABELS))
    if unknown:
        raise ValueError(f"label(s) {unknown} are neither ours {list(LABELS)} nor in --label-map; "
                         f"map them, e.g. --label-map '{unknown[0]}=extragal' (or '{unknown[0]}=none' to drop them)")
    return pd.Series([mapping.get(v, v) if pd.notna(v) else None for v in text], index=labels.index, dtype=object)


def is_identifier(name: str, column: pd.Series) -> bool:
    """Identifier-like: by name (candid, objectId, ATLAS_ID, ...) or a column of unique big integers."""
    if name.lower() in _ID_NAMES or _ID_PATTERN.search(name):
        return True
    if pd.api.types.is_integer_dtype(column) and len(column) > 1 and column.is_unique:
        return bool(column.abs().min() > 10**9)
    return False


def infer_feature_columns(table: pd.DataFrame, label_column: str) -> list[str]:
    """Numeric (or boolean) columns that are neither identifiers nor the label."""
    return [c for c in table.columns
            if c != label_column and not is_identifier(str(c), table[c])
            and (pd.api.types.is_numeric_dtype(table[c]) or pd.api.types.is_bool_dtype(table[c]))]


def read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no table at {path}")
    if path.is_dir() or path.suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    return pd.read_csv(path)


def join_labels(table: pd.DataFrame, labels: pd.DataFrame, label_column: str) -> pd.DataFrame:
    """`table` with `label_column` from `labels`, joined on the columns both share."""
    table = table.reset_index() if table.index.name else table
    on = [c for c in labels.columns if c in table.columns and c != label_column]
    if not on:
        raise ValueError(f"the labels file shares no column with the table to join on; "
                         f"labels columns: {list(labels.columns)}")
    return table.merge(labels[[*on, label_column]], on=on, how="inner")


def labelled_table(path: str, labels: Optional[str], label_column: str,
                   mapping: dict[str, Optional[str]]) -> pd.DataFrame:
    """A table with our `label` column, rows mapped to none dropped."""
    table = read_table(path)
    if labels:
        table = join_labels(table, read_table(labels), label_column)
    if label_column not in table.columns:
        raise ValueError(f"{path} has no label column {label_column!r}; name it with --label-column "
                         f"(columns: {list(table.columns)[:12]}...)")
    ours = map_labels(table[label_column], mapping)
    out = table.drop(columns=[label_column]).assign(label=ours.to_numpy())
    if label_column != "label" and "label" in table.columns:
        raise ValueError(f"{path} has both {label_column!r} and 'label'; drop or rename one")
    return out[out["label"].notna()].reset_index(drop=True)


def load_table_pool(args: argparse.Namespace, seed: int = 0) -> Pool:
    """The pool the `simulate` / `experiments` options describe (see the module docstring)."""
    from models.vetting.classifier import feature_columns  # noqa: PLC0415

    spec = args.pool
    foreign = bool(args.label_column or args.label_map or args.feature_columns or args.validation)
    if spec.startswith("synthetic:"):
        from models.vetting.synthetic import synthetic_pool  # noqa: PLC0415

        table = synthetic_pool(int(spec.split(":", 1)[1]), seed=seed)
        return Pool(table, _features(args, table, "label") or feature_columns(table))
    if args.labels and not foreign and _is_our_labels(args.labels):
        from models.vetting.live import load_features  # noqa: PLC0415
        from models.vetting.labeling import latest_labels, read_labels  # noqa: PLC0415

        lab = latest_labels(read_labels(args.labels))
        table = load_features(spec).merge(lab[["candid", "label"]], on="candid", how="inner")
        return Pool(table, feature_columns(table))
    label_column = args.label_column or "label"
    mapping = parse_label_map(args.label_map)
    table = labelled_table(spec, args.labels, label_column, mapping)
    features = _features(args, table, "label") or infer_feature_columns(table, "label")
    validation = None
    if args.validation:
        validation = labelled_table(args.validation, args.validation_labels, label_column, mapping)
        missing = [c for c in features if c not in validation.columns]
        if missing:
            raise ValueError(f"--validation {args.validation} lacks feature column(s) {missing}")
    if not features:
        raise ValueError(f"{spec}: no numeric feature columns found; name them with --feature-columns")
    return Pool(table, features, validation)


def _features(args, table: pd.DataFrame, label_column: str) -> list[str]:
    given = [c.strip() for c in (args.feature_columns or "").split(",") if c.strip()]
    missing = [c for c in given if c not in table.columns]
    if missing:
        raise ValueError(f"--feature-columns {missing} not in the table (columns: {list(table.columns)[:12]}...)")
    return given


def _is_our_labels(path: str) -> bool:
    try:
        head = pd.read_csv(path, nrows=0).columns
    except (OSError, ValueError, pd.errors.EmptyDataError):
        return True  # missing or empty: read_labels says what is wrong
    return {"candid", "label"} <= set(head)


def add_table_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pool", default="synthetic:3000",
                        help="synthetic:N, a labelled CSV/Parquet, or a feature table with --labels")
    parser.add_argument("--labels", default=None,
                        help="labels to join: our labeled.csv, or a table sharing an id column with --pool")
    parser.add_argument("--label-column", default=None, help="the label column of a foreign table (default: label)")
    parser.add_argument("--label-map", default=None, metavar="THEIRS=OURS,...",
                        help="e.g. 'galactic=gal,pm=varstar,good=extragal,garbage=bogus,AGN=agn' (=none drops)")
    parser.add_argument("--feature-columns", default=None, help="comma-separated; default: numeric, not identifiers")
    parser.add_argument("--validation", default=None, help="fixed validation table (instead of a random split)")
    parser.add_argument("--validation-labels", default=None, help="labels of --validation, when in their own file")


def class_balance(pool: Pool) -> str:
    counts = pool.table["label"].value_counts()
    return ", ".join(f"{k}={v}" for k, v in counts.items()) or "empty"

