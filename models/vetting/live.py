"""The live active-learning loop: one night's round on real labels.

    python -m models.vetting.active_learning round --features results/fink_vra --labels labeled.csv
    python -m models.vetting.labeling label --alerts <tonight's .avro> --labels labeled.csv \\
        --queue results/active_learning/next_batch_galactic.csv

`live_round` joins the feature table (Parquet written by the fink_vra flow)
with `labeled.csv`, runs one round of `models.vetting.active_learning` and
writes the next batch to label. Each round is one MLflow run
`round_{N}_{strategy}` in experiment `gal_model_AL` and one row of
`rounds.csv` (metrics and class counts). With fewer labels than needed it
picks the first batch at random.

Held-out set: the alerts whose candid hashes below `holdout_fraction`, a split
that stays fixed as labels accumulate. Live held-out labels include queried
(hard) alerts, so compare strategies on it rather than reading it as
survey-wide accuracy.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd

from models.vetting.active_learning import (
    DEFAULT_OUT,
    LoopConfig,
    RoundResult,
    format_round,
    run_round,
    with_candid_column,
)
from models.vetting.classifier import class_counts, feature_columns, get_target


def load_features(path: str | Path) -> pd.DataFrame:
    """The feature table (Parquet file or dataset directory), one row per candid."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"no feature table at {path}; run the fink_vra flow first (it writes results/fink_vra/) "
            "or pass --features")
    table = with_candid_column(pd.read_parquet(path))
    if "candid" not in table.columns:
        raise ValueError(f"{path} has no 'candid' column or index; is it the fink_vra feature table?")
    return table.drop_duplicates("candid", keep="last").reset_index(drop=True)


def in_holdout(candids: pd.Series, fraction: float) -> np.ndarray:
    """Stable membership of the live held-out set, from a hash of each candid.

    crc32 (not Python's salted `hash`) so an alert stays on the same side of
    the split across nights, processes and machines.
    """
    values = np.array([zlib.crc32(str(int(c)).encode()) for c in candids], dtype=np.float64)
    return values / 2**32 < fraction


def next_round_index(rounds_csv: Path, target: str, strategy: str) -> int:
    """How many live rounds of this target and strategy `rounds.csv` already holds."""
    if not rounds_csv.exists():
        return 0
    done = pd.read_csv(rounds_csv)
    mask = (done.get("mode") == "live") & (done.get("target") == target) & (done.get("strategy") == strategy)
    return int(mask.sum())


def append_rounds_csv(path: Path, row: dict[str, Any]) -> None:
    """Append one row to rounds.csv, widening the header when new columns appear."""
    new = pd.DataFrame([row])
    if path.exists():
        new = pd.concat([pd.read_csv(path), new], ignore_index=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    new.to_csv(tmp, index=False)
    os.replace(tmp, path)  # atomic: an interrupt never leaves half a file


def _labelled(table: pd.DataFrame, labels_path, config: LoopConfig):
    """(latest labels, table joined with them, rows usable for the target with `y`, their training
    and held-out parts)."""
    from models.vetting.labeling import latest_labels, read_labels  # noqa: PLC0415

    target = get_target(config.target)
    labels = latest_labels(read_labels(labels_path))
    merged = table.merge(labels[["candid", "label"]], on="candid", how="left")
    y = target.encode(merged["label"].where(merged["label"].notna(), None))
    usable = merged.loc[y.notna().to_numpy()].assign(y=y.dropna().astype(int).to_numpy())
    hold = in_holdout(usable["candid"], config.holdout_fraction)
    return labels, merged, usable, usable.loc[~hold], usable.loc[hold]


def _cold(usable: pd.DataFrame, train: pd.DataFrame, config: LoopConfig) -> bool:
    return len(usable) < config.first_batch or train["y"].nunique() < 2


def _cold_line(usable: pd.DataFrame, train: pd.DataFrame, config: LoopConfig) -> str:
    have = ", ".join(f"{k}={v}" for k, v in class_counts(train["y"], get_target(config.target).classes,
                                                         "train").items())
    return (f"Cold start: {len(usable)} usable labels, {len(train)} for training ({have}); the first model "
            f"needs {config.first_batch} labels and both classes in training.")


def cold_start(table: pd.DataFrame, labels_path, config: LoopConfig) -> Optional[str]:
    """None when the labels so far can train a model; else the line saying what is missing
    (said before a round starts: that round trains nothing and logs nothing to MLflow)."""
    _, _, usable, train, _ = _labelled(table, labels_path, config)
    return _cold_line(usable, train, config) if _cold(usable, train, config) else None


@dataclass
class LiveRound:
    """Outcome of `live_round`: the round (None at cold start) and the queue file."""

    result: Optional[RoundResult]
    queue_path: Path
    queue: pd.DataFrame
    run_id: Optional[str] = None


def live_round(
    features_path: str | Path,
    labels_path: str | Path,
    config: LoopConfig,
    out_dir: str | Path = DEFAULT_OUT,
    tracking: Any = None,
    say: Callable[[str], None] = print,
) -> LiveRound:
    """One night's round on real labels; writes the next batch to label.

    Inputs: the feature table, `labeled.csv`, the loop config, an output
    directory and a `models.vetting.tracking.Tracking` (None: no MLflow).
    Outputs (in `out_dir`): `next_batch_{target}.csv` and a row of
    `rounds.csv`; returns a `LiveRound`. Until `config.first_batch` labels
    usable for the target exist (held-out ones included) and training holds
    both classes, the batch is drawn at random and no model is trained.
    """
    out_dir = Path(out_dir)
    table = load_features(features_path)
    features = feature_columns(table)
    missing = [c for c in features if c not in table.columns]
    if missing:
        raise ValueError(f"feature table lacks column(s) {missing}; rerun the fink_vra flow")
    labels, merged, usable, train, holdout = _labelled(table, labels_path, config)
    orphans = ~labels["candid"].isin(table["candid"])
    if orphans.any():
        say(f"note: {int(orphans.sum())} label(s) have no row in the feature table and are not used")
    unlabelled = merged.loc[merged["label"].isna().to_numpy()]
    queue_path = out_dir / f"next_batch_{config.target}.csv"
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([config.seed, len(labels)])

    if _cold(usable, train, config):
        # Cold start: no model worth trusting yet, so the first batch is random.
        need = max(config.first_batch - len(usable), config.batch_size)
        picked = rng.permutation(len(unlabelled))[:need]
        queue = unlabelled.iloc[picked][["candid", "objectId"]].assign(p_positive=np.nan, score=np.nan)
        queue.to_csv(queue_path, index=False)
        say(f"{_cold_line(usable, train, config)} Picked {len(queue)} alerts at random -> {queue_path}")
        return LiveRound(None, queue_path, queue)

    rounds_csv = out_dir / "rounds.csv"
    round_index = next_round_index(rounds_csv, config.target, config.strategy)
    result = run_round(train, holdout, unlabelled, config, features, round_index, rng)
    result.query.to_csv(queue_path, index=False)
    run_id = None
    if tracking is not None:
        from models.vetting.tracking import log_round  # noqa: PLC0415

        run_id = log_round(result, config, tracking, tags={"mode": "live"})
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    append_rounds_csv(rounds_csv, {"time": stamp, "mode": "live", **result.summary_row(config), "run_id": run_id})
    if len(holdout) == 0:
        say("warning: the held-out set is empty; metrics need more labels")
    say(format_round(result, config))
    say(f"Next batch ({len(result.query)} alerts) -> {queue_path}")
    return LiveRound(result, queue_path, result.query, run_id)
