"""Active-learning loop for the Galactic-vs-extragalactic vetting model.

Night after night (live mode):

    python -m models.vetting.active_learning round --features results/fink_vra --labels labeled.csv
    python -m models.vetting.labeling label --alerts <tonight's .avro> --labels labeled.csv \\
        --queue results/active_learning/next_batch_galactic.csv

`round` joins the feature table (Parquet written by the fink_vra flow) with
`labeled.csv`, trains a HistGradientBoostingClassifier on the labelled alerts
outside the held-out set, scores it on the held-out set, computes permutation
importance, ranks the unlabelled alerts with the query strategy and writes the
next batch to label. Each round is one MLflow run `round_{N}_{strategy}` in
experiment `gal_model_AL` and one row of `rounds.csv` (metrics and class
counts). With fewer labels than needed it picks the first batch at random.

Offline (simulated mode), labels are revealed from an already-labelled pool:

    python -m models.vetting.active_learning simulate --pool synthetic:3000 --strategy uncertainty
    python -m models.vetting.active_learning experiments --pool synthetic:3000 --seeds 5

`experiments` (see `models.vetting.experiments`) repeats the simulation over
strategies, batch sizes, learning rates and class weights, and plots learning
curves against the random baseline. Simulated curves on proxy or synthetic
labels illustrate the method; they are not science results.

Held-out set: in simulations a stratified random split; in live mode the
alerts whose candid hashes below `holdout_fraction`, a split that stays fixed
as labels accumulate. Live held-out labels include queried (hard) alerts, so
compare strategies on it rather than reading it as survey-wide accuracy.
"""

from __future__ import annotations

import argparse
import os
import sys
import zlib
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd

from models.vetting.classifier import (
    STRATEGIES,
    TARGETS,
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


# --------------------------------------------------------------------------
# Live loop
# --------------------------------------------------------------------------


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


def with_candid_column(table: pd.DataFrame) -> pd.DataFrame:
    """`candid` as a column: `features_table` and the flow's Parquet index by it."""
    if "candid" not in table.columns and table.index.name == "candid":
        return table.reset_index()
    return table


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
    from models.vetting.labeling import latest_labels, read_labels  # noqa: PLC0415

    out_dir = Path(out_dir)
    target = get_target(config.target)
    table = load_features(features_path)
    features = feature_columns(table)
    missing = [c for c in features if c not in table.columns]
    if missing:
        raise ValueError(f"feature table lacks column(s) {missing}; rerun the fink_vra flow")
    labels = latest_labels(read_labels(labels_path))
    orphans = ~labels["candid"].isin(table["candid"])
    if orphans.any():
        say(f"note: {int(orphans.sum())} label(s) have no row in the feature table and are not used")
    merged = table.merge(labels[["candid", "label"]], on="candid", how="left")
    labelled_mask = merged["label"].notna().to_numpy()
    y = target.encode(merged["label"].where(merged["label"].notna(), None))
    usable = merged.loc[y.notna().to_numpy()].assign(y=y.dropna().astype(int).to_numpy())
    unlabelled = merged.loc[~labelled_mask]
    hold = in_holdout(usable["candid"], config.holdout_fraction)
    train, holdout = usable.loc[~hold], usable.loc[hold]
    queue_path = out_dir / f"next_batch_{config.target}.csv"
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([config.seed, len(labels)])

    if len(usable) < config.first_batch or train["y"].nunique() < 2:
        # Cold start: no model worth trusting yet, so the first batch is random.
        need = max(config.first_batch - len(usable), config.batch_size)
        picked = rng.permutation(len(unlabelled))[:need]
        queue = unlabelled.iloc[picked][["candid", "objectId"]].assign(p_positive=np.nan, score=np.nan)
        queue.to_csv(queue_path, index=False)
        have = ", ".join(f"{k}={v}" for k, v in class_counts(train["y"], target.classes, "train").items())
        say(f"Cold start: {len(usable)} usable labels, {len(train)} for training ({have}); the first model "
            f"needs {config.first_batch} labels and both classes in training. "
            f"Picked {len(queue)} alerts at random -> {queue_path}")
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


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def _parse_value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"none": None, "true": True, "false": False}.get(text.lower(), text)


def _class_weight(text: str) -> Optional[str]:
    return None if text.lower() == "none" else text


def add_loop_arguments(parser: argparse.ArgumentParser, grid: bool = False) -> None:
    """Loop and classifier options shared by the sub-commands."""
    parser.add_argument("--target", default="galactic", choices=list(TARGETS))
    parser.add_argument("--first-batch", type=int, default=30, help="labels before the first model (default 30)")
    parser.add_argument("--holdout-fraction", type=float, default=0.3)
    parser.add_argument("--max-iter", type=int, default=100)
    parser.add_argument("--l2-regularization", type=float, default=10.0)
    parser.add_argument("--min-samples-leaf", type=int, default=5,
                        help="default 5; scikit-learn's 20 cannot split the first 30 labels")
    parser.add_argument("--max-leaf-nodes", type=int, default=31)
    parser.add_argument("--hp", action="append", default=[], metavar="NAME=VALUE",
                        help="any other HistGradientBoostingClassifier argument (repeatable)")
    parser.add_argument("--importance-repeats", type=int, default=5 if not grid else 0,
                        help="permutation-importance repeats per round; 0 skips it")
    parser.add_argument("--seed", type=int, default=0)
    if not grid:
        parser.add_argument("--strategy", default="uncertainty", choices=list(STRATEGIES))
        parser.add_argument("--batch-size", type=int, default=10, help="labels added per round (default 10)")
        parser.add_argument("--learning-rate", type=float, default=0.1)
        parser.add_argument("--class-weight", type=_class_weight, default=None, help="none or balanced")
        parser.add_argument("--balanced-sampling", action="store_true",
                            help="alternate each batch between predicted classes")


def add_tracking_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                             "sqlite:///<out>/../mlflow/mlflow.db, i.e. results/mlflow/ by default)")
    parser.add_argument("--experiment", default="gal_model_AL")
    parser.add_argument("--no-model", action="store_true", help="do not log the model (smaller store)")


def config_from_args(args: argparse.Namespace, **overrides: Any) -> LoopConfig:
    extra = {}
    for item in args.hp:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--hp expects NAME=VALUE, got {item!r}")
        extra[name.strip()] = _parse_value(value.strip())
    values = {
        "max_iter": args.max_iter, "l2_regularization": args.l2_regularization,
        "min_samples_leaf": args.min_samples_leaf, "max_leaf_nodes": args.max_leaf_nodes,
        "learning_rate": getattr(args, "learning_rate", 0.1), "class_weight": getattr(args, "class_weight", None),
    }
    values.update({k: overrides.pop(k) for k in list(overrides) if k in values})
    classifier = ClassifierConfig(**values, random_state=args.seed, extra=extra)
    loop = dict(target=args.target, first_batch=args.first_batch, holdout_fraction=args.holdout_fraction,
                importance_repeats=args.importance_repeats, seed=args.seed,
                strategy=getattr(args, "strategy", "uncertainty"), batch_size=getattr(args, "batch_size", 10),
                balanced_sampling=getattr(args, "balanced_sampling", False),
                max_labels=getattr(args, "max_labels", None))
    loop.update(overrides)
    return LoopConfig(classifier=classifier, **loop)


def tracking_from_args(args: argparse.Namespace, out_dir: Path):
    from models.vetting.tracking import Tracking  # noqa: PLC0415

    return Tracking(uri=args.tracking_uri, experiment=args.experiment, log_model=not args.no_model,
                    default_root=out_dir.parent / "mlflow")


def main(argv: list[str] | None = None) -> int:
    from models.vetting.night import add_night_parser  # noqa: PLC0415
    from models.vetting.tables import add_table_arguments, load_table_pool  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="python -m models.vetting.active_learning",
                                     description="Active learning for the Galactic-vs-extragalactic vetting model.")
    sub = parser.add_subparsers(dest="command", required=True)

    live = sub.add_parser("round", help="tonight's round on real labels; writes the next batch to label")
    live.add_argument("--features", default="results/fink_vra", help="feature table (default: %(default)s)")
    live.add_argument("--labels", default="labeled.csv",
                      help="your labels, candid,objectId,label,timestamp (written by `python -m models.vetting.labeling "
                           "label`; `python -m models.vetting.labeling proxy` makes a trial one) (default: %(default)s)")
    live.add_argument("--out", default=str(DEFAULT_OUT),
                      help="where the report, importance and next_batch_*.csv go (default: %(default)s)")
    live.add_argument("--no-track", action="store_true", help="skip MLflow")
    add_loop_arguments(live)
    add_tracking_arguments(live)

    sim = sub.add_parser("simulate", help="one simulated loop, one MLflow run per round")
    add_table_arguments(sim)
    sim.add_argument("--max-labels", type=int, default=150)
    sim.add_argument("--out", default=str(DEFAULT_OUT))
    sim.add_argument("--no-track", action="store_true", help="skip MLflow")
    add_loop_arguments(sim)
    add_tracking_arguments(sim)

    exp = sub.add_parser("experiments", help="grid of simulated loops with repeated seeds; learning curves")
    from models.vetting.experiments import add_experiment_arguments  # noqa: PLC0415

    add_experiment_arguments(exp)
    add_loop_arguments(exp, grid=True)
    add_tracking_arguments(exp)
    add_night_parser(sub, add_loop_arguments, add_tracking_arguments)

    args = parser.parse_args(argv)
    out_dir = Path(args.out)
    try:
        if args.command == "night":
            from models.vetting.night import run_from_args as night  # noqa: PLC0415

            return night(args)
        if args.command == "round":
            config = config_from_args(args)
            tracking = None if args.no_track else tracking_from_args(args, out_dir)
            live_round(args.features, args.labels, config, out_dir, tracking)
            return 0
        if args.command == "simulate":
            config = config_from_args(args)
            pool = load_table_pool(args, seed=args.seed)
            tracking = None if args.no_track else tracking_from_args(args, out_dir)

            def on_round(result: RoundResult) -> None:
                if tracking is not None:
                    from models.vetting.tracking import log_round  # noqa: PLC0415

                    log_round(result, config, tracking, tags={"mode": "simulated", "pool": args.pool})
                print(format_round(result, config), flush=True)

            rounds = simulate(pool.table, config, pool.features, on_round, pool.validation)
            out_dir.mkdir(parents=True, exist_ok=True)
            path = out_dir / f"simulated_{config.target}_{config.strategy}_seed{config.seed}.csv"
            rounds.to_csv(path, index=False)
            print(f"rounds -> {path}")
            if tracking is not None:
                print(f"MLflow: experiment {tracking.experiment!r} at {tracking.resolved_uri()}")
            return 0
        from models.vetting.experiments import run_from_args  # noqa: PLC0415

        return run_from_args(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
