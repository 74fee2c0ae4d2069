"""Active-learning loop for the Galactic-vs-extragalactic vetting model.

One round (`run_round`) trains a HistGradientBoostingClassifier on the
labelled alerts outside the held-out set, scores it on the held-out set,
computes permutation importance and ranks the unlabelled alerts with the query
strategy to pick the next batch to label. `simulate` runs rounds offline with
labels revealed from an already-labelled pool (held-out set: a stratified
random split); `models.vetting.live` runs one night's round on real labels.
The command line (`python -m models.vetting.active_learning ...`) is
`models.vetting.cli`.

`experiments` (see `models.vetting.experiments`) repeats the simulation over
strategies, batch sizes, learning rates and class weights, and plots learning
curves against the random baseline. Simulated curves on proxy or synthetic
labels illustrate the method; they are not science results.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd

from models.vetting.classifier import (
    STRATEGIES,
    ClassifierConfig,
    class_counts,
    classification_metrics,
    feature_columns,
    fit_classifier,
    get_target,
    permutation_importance_table,
    query_scores,
    select_batch,
)

DEFAULT_OUT = Path("results/active_learning")


@dataclass
class LoopConfig:
    """Everything that defines a run of the loop (all logged as MLflow params).

    `first_batch` labels train the first model, then each round adds
    `batch_size` labels chosen by `strategy`. `max_labels` stops a
    simulation. `balanced_sampling` alternates the batch between predicted
    classes; class weights live in `classifier.class_weight`.
    `importance_repeats=0` skips permutation importance (faster experiments).
    """

    target: str = "galactic"
    strategy: str = "uncertainty"
    first_batch: int = 30
    batch_size: int = 10
    max_labels: Optional[int] = None
    holdout_fraction: float = 0.3
    balanced_sampling: bool = False
    importance_repeats: int = 5
    seed: int = 0
    # OpenMP threads for fitting/predicting. One is fastest for the small
    # training sets of active learning, and on a shared machine two busy-
    # waiting threads were measured 100x slower than one.
    n_threads: int = 1
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)

    def __post_init__(self) -> None:
        get_target(self.target)
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose one of {list(STRATEGIES)}")
        if self.first_batch < 2 or self.batch_size < 1:
            raise ValueError("first_batch must be >= 2 and batch_size >= 1")
        if not 0 < self.holdout_fraction < 1:
            raise ValueError("holdout_fraction must be between 0 and 1 (e.g. 0.3)")

    def params(self) -> dict[str, Any]:
        """Flat parameter dict: loop settings plus every classifier hyper-parameter."""
        params = {k: v for k, v in asdict(self).items() if k != "classifier"}
        params.update(self.classifier.as_params())
        return params


@dataclass
class RoundResult:
    """What one round produced.

    `scores` and `confusion` are on the held-out set (empty / None when it
    has no rows); `counts` are class counts of the training, held-out and
    still-unlabelled sets (`train_gal`, `holdout_extragal`, `unlabelled`,
    ...); `query` lists the next batch, best first (`candid`, `objectId`,
    `p_positive`, `score`); `importance` is None when skipped.
    """

    round: int
    n_labels: int
    scores: dict[str, float]
    confusion: Optional[np.ndarray]
    counts: dict[str, int]
    model: Any
    importance: Optional[pd.DataFrame]
    query: pd.DataFrame
    features: list[str]

    def summary_row(self, config: LoopConfig) -> dict[str, Any]:
        return {"round": self.round, "n_labels": self.n_labels, "target": config.target,
                "strategy": config.strategy, "seed": config.seed, **self.counts, **self.scores}


# --------------------------------------------------------------------------
# One round
# --------------------------------------------------------------------------


def run_round(
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    unlabelled: pd.DataFrame,
    config: LoopConfig,
    features: list[str],
    round_index: int,
    rng: np.random.Generator,
) -> RoundResult:
    """Train on `train`, score on `holdout`, pick the next batch from `unlabelled`.

    Frames hold the `features` columns; `train`/`holdout` also `y` (0/1).
    Returns a `RoundResult`; `query` has at most `config.batch_size` rows.
    """
    from threadpoolctl import threadpool_limits  # noqa: PLC0415  (a scikit-learn dependency)

    with threadpool_limits(limits=config.n_threads):
        return _run_round(train, holdout, unlabelled, config, features, round_index, rng)


def _run_round(train, holdout, unlabelled, config, features, round_index, rng) -> RoundResult:
    target = get_target(config.target)
    model = fit_classifier(train[features], train["y"].to_numpy(), config.classifier)
    counts = {**class_counts(train["y"], target.classes, "train"),
              **class_counts(holdout["y"], target.classes, "holdout"),
              "unlabelled": len(unlabelled)}
    scores: dict[str, float] = {}
    cm = None
    importance = None
    if len(holdout):
        y_true = holdout["y"].to_numpy(dtype=int)
        scores, cm = classification_metrics(y_true, model.predict(holdout[features]), target.classes)
        if config.importance_repeats > 0:
            importance = permutation_importance_table(
                model, holdout[features], y_true, n_repeats=config.importance_repeats, seed=config.seed)
    query = pd.DataFrame(columns=["candid", "objectId", "p_positive", "score"])
    if len(unlabelled):
        proba = model.predict_proba(unlabelled[features])
        picked = select_batch(proba, config.batch_size, config.strategy, rng, config.balanced_sampling)
        chosen = unlabelled.iloc[picked]
        query = pd.DataFrame({
            "candid": chosen["candid"].to_numpy() if "candid" in chosen else picked,
            "objectId": chosen["objectId"].to_numpy() if "objectId" in chosen else None,
            "p_positive": proba[picked, 1],
            # Deterministic strategies: recompute the score shown to people.
            "score": (query_scores(proba[picked], config.strategy)
                      if config.strategy != "random" else np.nan),
        }, index=chosen.index)
    return RoundResult(round_index, len(train), scores, cm, counts, model, importance, query, features)


# --------------------------------------------------------------------------
# Simulated loop
# --------------------------------------------------------------------------


def prepare_pool(pool: pd.DataFrame, target: str) -> pd.DataFrame:
    """Pool rows usable for `target`, with a 0/1 `y` column added.

    `pool` has a `label` column (the labelling vocabulary) and the features.
    Rows whose label says nothing about the target are dropped.
    """
    pool = with_candid_column(pool)
    if "label" not in pool.columns:
        raise ValueError("the pool needs a 'label' column (real/extragal/gal/agn/bogus/varstar)")
    y = get_target(target).encode(pool["label"])
    out = pool.loc[y.notna().to_numpy()].copy()
    out["y"] = y.dropna().astype(int).to_numpy()
    if "candid" not in out.columns:
        out["candid"] = np.arange(len(out))
    return out.reset_index(drop=True)


def split_holdout(pool: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stratified random split `(rest, holdout)` of a pool with `y`."""
    from sklearn.model_selection import train_test_split  # noqa: PLC0415

    stratify = pool["y"] if pool["y"].value_counts().min() >= 2 else None
    rest, holdout = train_test_split(pool, test_size=fraction, random_state=seed, stratify=stratify)
    return rest, holdout


def simulate(
    pool: pd.DataFrame,
    config: LoopConfig,
    features: Optional[list[str]] = None,
    on_round: Optional[Callable[[RoundResult], None]] = None,
    validation: Optional[pd.DataFrame] = None,
) -> pd.DataFrame:
    """Run the loop with labels revealed from `pool`; one row per round.

    `pool`: features plus `label`. The first batch is random; if it holds a
    single class, random labels are added until both classes appear (a real
    labeller would do the same). Rounds go on until `config.max_labels`
    training labels or the pool is exhausted. `on_round(result)` is called
    after each round (MLflow logging, progress). `validation` (features plus
    `label`) replaces the random held-out split. Returns a DataFrame with
    `round, n_labels, target, strategy, seed`, the class counts and scores.
    """
    data = prepare_pool(pool, config.target)
    features = features or feature_columns(pool)
    if validation is None:
        rest, holdout = split_holdout(data, config.holdout_fraction, config.seed)
    else:
        rest, holdout = data, prepare_pool(validation, config.target)
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(rest))
    n_first = min(config.first_batch, len(rest))
    labelled = list(order[:n_first])
    extra = iter(order[n_first:])
    while rest["y"].iloc[labelled].nunique() < 2:
        nxt = next(extra, None)
        if nxt is None:
            raise ValueError("the pool holds a single class for this target; nothing to learn")
        labelled.append(nxt)
    limit = config.max_labels or len(rest)
    rows = []
    round_index = 0
    while True:
        is_labelled = np.zeros(len(rest), dtype=bool)
        is_labelled[labelled] = True
        train, unlabelled = rest.iloc[np.flatnonzero(is_labelled)], rest.iloc[np.flatnonzero(~is_labelled)]
        if len(train) >= limit:
            unlabelled = unlabelled.iloc[:0]  # last round: no query needed
        result = run_round(train, holdout, unlabelled, config, features, round_index, rng)
        rows.append(result.summary_row(config))
        if on_round is not None:
            on_round(result)
        if result.query.empty:
            break
        positions = rest.index.get_indexer(result.query.index)
        labelled.extend(positions[: max(0, limit - len(train))].tolist())
        round_index += 1
    return pd.DataFrame(rows)


def with_candid_column(table: pd.DataFrame) -> pd.DataFrame:
    """`candid` as a column: `features_table` and the flow's Parquet index by it."""
    if "candid" not in table.columns and table.index.name == "candid":
        return table.reset_index()
    return table


def format_round(result: RoundResult, config: LoopConfig) -> str:
    """Human summary of a round: counts (class balance) and main scores."""
    target = get_target(config.target)
    c = result.counts
    train = " ".join(f"{k}={c[f'train_{k}']}" for k in target.classes)
    hold = " ".join(f"{k}={c[f'holdout_{k}']}" for k in target.classes)
    s = result.scores
    scores = (f"acc {s['accuracy']:.3f}  F1 macro {s['f1_macro']:.3f}  "
              + "  ".join(f"F1 {k} {s[f'f1_{k}']:.3f}" for k in target.classes)) if s else "no held-out scores"
    return (f"round {result.round} ({config.strategy}, {config.target}): {result.n_labels} training labels "
            f"[{train}], held-out [{hold}], unlabelled {c['unlabelled']}\n  {scores}")


if __name__ == "__main__":
    # `python -m models.vetting.active_learning ...` is the documented command; the CLI
    # lives in models.vetting.cli, which imports this module (so no import of it here).
    import runpy  # noqa: PLC0415

    runpy.run_module("models.vetting.cli", run_name="__main__", alter_sys=True)
