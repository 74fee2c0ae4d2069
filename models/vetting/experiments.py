"""Simulated active-learning experiments and learning curves.

    python -m models.vetting.active_learning experiments --pool synthetic:3000 \\
        --strategies uncertainty,margin,entropy,random --batch-sizes 10,20 \\
        --learning-rates 0.1,0.05 --class-weights none,balanced --seeds 5

runs `models.vetting.active_learning.simulate` for every combination and seed, then
writes to `--out` (default `results/al_experiments/`):
- `rounds.csv`: one row per (configuration, seed, round) with all scores;
- `summary.csv`: mean and standard deviation per configuration and round;
- `learning_curves_<metric>.png`: metric vs number of training labels, mean
  line and +/-1 std band over seeds, one panel per (batch size, learning
  rate, class weight), the random baseline dashed in every panel.

The pool is `synthetic:N` (`synthetic_pool`, made-up class-conditional
feature distributions), a labelled CSV/Parquet, or the feature table joined
with a labels CSV. Curves from simulations on proxy or synthetic labels are
illustrations of the method, not science results.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from models.vetting.classifier import STRATEGIES

@dataclass
class ExperimentGrid:
    """Values to cross; every combination runs once per seed (0..seeds-1).

    `random` is always added to `strategies`: the curves need their baseline.
    """

    strategies: list[str] = field(default_factory=lambda: list(STRATEGIES))
    batch_sizes: list[int] = field(default_factory=lambda: [10])
    first_batches: list[int] = field(default_factory=list)  # empty: the base config's
    learning_rates: list[float] = field(default_factory=lambda: [0.1])
    class_weights: list[Optional[str]] = field(default_factory=lambda: [None])
    seeds: int = 3

    def configs(self, base):
        """`LoopConfig`s (copies of `base`) for every combination and seed."""
        strategies = list(dict.fromkeys([*self.strategies, "random"]))
        for bad in set(strategies) - set(STRATEGIES):
            raise ValueError(f"unknown strategy {bad!r}; choose from {list(STRATEGIES)}")
        for fb, bs, lr, cw, strategy, seed in itertools.product(
                self.first_batches or [base.first_batch], self.batch_sizes, self.learning_rates,
                self.class_weights, strategies, range(self.seeds)):
            classifier = replace(base.classifier, learning_rate=lr, class_weight=cw, random_state=seed)
            yield replace(base, strategy=strategy, first_batch=fb, batch_size=bs, seed=seed, classifier=classifier)


def run_experiments(pool: pd.DataFrame, grid: ExperimentGrid, base, progress=None,
                    features: Optional[list[str]] = None, validation: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """Simulate every grid configuration; all rounds in one frame.

    Adds `first_batch`, `batch_size`, `learning_rate`, `class_weight` columns
    to `simulate`'s output. `base` is a `LoopConfig` for everything else;
    `progress` has `step(note)` (`models.vetting.study.progress_bar`).
    """
    from models.vetting.active_learning import simulate  # noqa: PLC0415

    frames = []
    for config in grid.configs(base):
        rounds = simulate(pool, config, features=features, validation=validation)
        rounds["first_batch"] = config.first_batch
        rounds["batch_size"] = config.batch_size
        rounds["learning_rate"] = config.classifier.learning_rate
        rounds["class_weight"] = config.classifier.class_weight or "none"
        frames.append(rounds)
        if progress is not None:
            progress.step(f"{config.strategy} bs={config.batch_size} lr={config.classifier.learning_rate} "
                          f"cw={config.classifier.class_weight or 'none'} seed={config.seed}")
    return pd.concat(frames, ignore_index=True)


def small_pool_warning(pool: pd.DataFrame, base, first_batches: list[int], validated: bool) -> Optional[str]:
    """A warning when the pool leaves no more rows to label than a first batch takes: every loop
    then labels the whole pool at once and there is no curve to draw (`simulate` caps silently)."""
    from models.vetting.active_learning import prepare_pool, split_holdout  # noqa: PLC0415

    data = prepare_pool(pool, base.target)
    rest = data if validated else split_holdout(data, base.holdout_fraction, 0)[0]
    too_big = sorted(fb for fb in set(first_batches or [base.first_batch]) if fb >= len(rest))
    if not too_big:
        return None
    held = "" if validated else f" after the {base.holdout_fraction:.0%} held out"
    return (f"warning: the pool leaves {len(rest)} rows to label for {base.target}{held}, no more than the first "
            f"batch ({', '.join(map(str, too_big))}): each loop labels the whole pool at once and draws no "
            f"learning curve -> a bigger pool, or --first-batch/--first-batches below {len(rest)}")


PANEL_KEYS = ["first_batch", "batch_size", "learning_rate", "class_weight"]


def summarize(rounds: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Mean and std over seeds per (panel, strategy, round); x is the mean `n_labels`."""
    keys = [*PANEL_KEYS, "strategy", "round"]
    agg = {"n_labels": "mean", "seed": "count"}
    table = rounds.groupby(keys).agg(agg).rename(columns={"seed": "n_seeds"})
    for metric in metrics:
        stats = rounds.groupby(keys)[metric].agg(["mean", "std"])
        table[f"{metric}_mean"] = stats["mean"]
        table[f"{metric}_std"] = stats["std"].fillna(0.0)
    return table.reset_index()


STRATEGY_STYLE = {"uncertainty": ("tab:blue", "-"), "margin": ("tab:orange", "-."),
                  "entropy": ("tab:green", ":"), "random": ("black", "--")}


def plot_learning_curves(summary: pd.DataFrame, metric: str, path: str | Path, title: str = "") -> Path:
    """Metric vs training labels, mean line and +/-1 std band, one panel per setting."""
    from matplotlib.figure import Figure  # noqa: PLC0415

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    panels = list(summary.groupby(PANEL_KEYS, sort=True))
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig = Figure(figsize=(max(7.0, 4.6 * ncols), 3.4 * nrows + 0.8))
    # Shared y axis: panels are compared by eye.
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False, sharey=True)).ravel()
    for ax, ((fb, bs, lr, cw), panel) in zip(axes, panels):
        for strategy, curve in panel.groupby("strategy", sort=False):
            colour, style = STRATEGY_STYLE.get(strategy, ("grey", "-"))
            curve = curve.sort_values("n_labels")
            x, mean, std = curve["n_labels"], curve[f"{metric}_mean"], curve[f"{metric}_std"]
            ax.plot(x, mean, style, color=colour, label=strategy, lw=1.6)
            ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.12, lw=0)
        ax.set_title(f"first {fb}, step {bs}, learning rate {lr}, class weight {cw}", fontsize=9)
        ax.set_xlabel("training labels")
        ax.set_ylabel(metric)
        ax.yaxis.set_tick_params(labelleft=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    n_seeds = int(summary["n_seeds"].max())
    fig.suptitle((title + "\n" if title else "") +
                 f"mean and +/-1 std over {n_seeds} seeds; simulated: an illustration, not a science result",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def format_table(summary: pd.DataFrame, metric: str, points: int = 5) -> str:
    """Text table: metric mean +/- std by strategy at a few label counts, per panel."""
    lines = []
    for (fb, bs, lr, cw), panel in summary.groupby(PANEL_KEYS):
        rounds = sorted(panel["round"].unique())
        picks = sorted(set(np.linspace(0, len(rounds) - 1, min(points, len(rounds))).round().astype(int)))
        chosen = [rounds[i] for i in picks]
        lines.append(f"{metric}  (first batch {fb}, step {bs}, learning rate {lr}, class weight {cw})")
        header = panel[panel["round"].isin(chosen)].groupby("round")["n_labels"].mean()
        lines.append("  labels      " + "".join(f"{x:>13.0f}" for x in header))
        for strategy, rows in panel.groupby("strategy"):
            rows = rows.set_index("round").loc[chosen]
            cells = "".join(f"{m:>8.3f}+-{s:.2f}" for m, s in zip(rows[f"{metric}_mean"], rows[f"{metric}_std"]))
            lines.append(f"  {strategy:<12}{cells}")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# CLI glue (called from models.vetting.active_learning)
# --------------------------------------------------------------------------


def _list(cast):
    def parse(text: str):
        return [cast(v.strip()) for v in text.split(",") if v.strip()]
    return parse


def _class_weights(text: str) -> Optional[str]:
    return None if text.lower() == "none" else text


def add_experiment_arguments(parser: argparse.ArgumentParser) -> None:
    from models.vetting.study import add_study_arguments  # noqa: PLC0415
    from models.vetting.tables import add_table_arguments  # noqa: PLC0415

    add_table_arguments(parser)
    add_study_arguments(parser)
    parser.add_argument("--strategies", type=_list(str), default=list(STRATEGIES))
    parser.add_argument("--batch-sizes", type=_list(int), default=[10])
    parser.add_argument("--learning-rates", type=_list(float), default=[0.1])
    parser.add_argument("--class-weights", type=_list(_class_weights), default=[None], help="e.g. none,balanced")
    parser.add_argument("--balanced-sampling", action="store_true", help="balanced batches in every run")
    parser.add_argument("--seeds", type=int, default=3, help="repeats per configuration (seeds 0..N-1)")
    parser.add_argument("--max-labels", type=int, default=150)
    parser.add_argument("--metrics", type=_list(str), default=["f1_macro", "accuracy"])
    parser.add_argument("--out", default="results/al_experiments")
    parser.add_argument("--track", action="store_true", help="log a summary run (CSV + plots) to MLflow")


def run_from_args(args: argparse.Namespace) -> int:
    from models.vetting.cli_options import config_from_args, tracking_from_args  # noqa: PLC0415
    from models.vetting.study import labels_needed, paired_vs_random, progress_bar, write_study  # noqa: PLC0415
    from models.vetting.tables import class_balance, load_table_pool  # noqa: PLC0415

    out = Path(args.out)
    base = config_from_args(args, balanced_sampling=args.balanced_sampling)
    grid = ExperimentGrid(args.strategies, args.batch_sizes, args.first_batches, args.learning_rates,
                          args.class_weights, args.seeds)
    pool = load_table_pool(args, seed=0)
    n_runs = sum(1 for _ in grid.configs(base))
    print(f"{n_runs} simulated loops on pool {args.pool} ({len(pool.table)} rows: {class_balance(pool)}; "
          f"{len(pool.features)} features), target {base.target}, up to {base.max_labels} labels"
          + (f", validation {args.validation}" if pool.validation is not None else ""), file=sys.stderr)
    small = small_pool_warning(pool.table, base, grid.first_batches, pool.validation is not None)
    if small:
        print(small, file=sys.stderr)
    with progress_bar(n_runs, "loops") as progress:
        rounds = run_experiments(pool.table, grid, base, progress, pool.features, pool.validation)
    out.mkdir(parents=True, exist_ok=True)
    rounds.to_csv(out / "rounds.csv", index=False)
    summary = summarize(rounds, args.metrics)
    summary.to_csv(out / "summary.csv", index=False)
    title = f"Active learning, target {base.target}, pool {args.pool}" + (
        ", balanced batches" if base.balanced_sampling else "")
    plots = [plot_learning_curves(summary, m, out / f"learning_curves_{m}.png", title) for m in args.metrics]
    for metric in args.metrics:
        print(format_table(summary, metric))
    if len({"uncertainty", "margin", "entropy"} & set(args.strategies)) > 1:
        print("note: with two classes, uncertainty, margin and entropy rank alerts identically, "
              "so their curves coincide")
    print(f"rounds -> {out / 'rounds.csv'}\nsummary -> {out / 'summary.csv'}")
    for p in plots:
        print(f"plot -> {p}")
    print(write_study(labels_needed(rounds, args.f1_targets), paired_vs_random(rounds), out))
    if args.track:
        _track_summary(args, base, out, plots, tracking_from_args(args, out))
    return 0


def _track_summary(args, base, out: Path, plots: list[Path], tracking) -> None:
    from models.vetting.tracking import _setup  # noqa: PLC0415

    mlflow, experiment_id = _setup(tracking)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"experiments_{base.target}",
                          tags={"mode": "experiments", "target": base.target}):
        mlflow.log_params({"pool": args.pool, "strategies": ",".join(args.strategies),
                           "batch_sizes": ",".join(map(str, args.batch_sizes)),
                           "learning_rates": ",".join(map(str, args.learning_rates)),
                           "class_weights": ",".join(str(c or "none") for c in args.class_weights),
                           "seeds": args.seeds, "max_labels": base.max_labels})
        for f in [out / "rounds.csv", out / "summary.csv", *plots]:
            mlflow.log_artifact(str(f))
    print(f"MLflow: run experiments_{base.target} in {tracking.experiment!r} at {tracking.resolved_uri()}")
