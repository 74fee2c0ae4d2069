"""What a grid of simulated loops says: labels needed per setting, and strategy vs random.

Input: the rounds of `models.vetting.experiments.run_experiments` (one row per
setting, seed and round, with `n_labels` and held-out scores). Outputs:

- `labels_needed`: one row per setting (first batch x step x strategy x
  learning rate x class weight): for each target x, the training labels at
  which held-out macro F1 first reaches x, mean and std over the seeds that
  got there, and how many did (`k/n`); a seed that never got there is not
  averaged in, it is counted out;
- `paired_vs_random`: per strategy, the area under its learning curve (mean
  macro F1 over rounds) minus random's, paired by setting and seed (the same
  seed gives both the same held-out split and first batch), with a one-sided
  Wilcoxon signed-rank test; "beats random" only when p < 0.05.

Scores come from the rounds, which come from `sklearn.metrics`-equal
confusion-matrix metrics (`models.vetting.classifier`).
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

SETTING_KEYS = ["first_batch", "batch_size", "strategy", "learning_rate", "class_weight"]
PAIR_KEYS = ["first_batch", "batch_size", "learning_rate", "class_weight", "seed"]
ALPHA = 0.05


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--first-batches", type=_ints, default=[],
                        help="first-batch sizes to cross, e.g. 10,30 (default: --first-batch)")
    parser.add_argument("--f1-targets", type=_floats, default=[0.7, 0.8],
                        help="macro-F1 levels for the labels-needed table (default 0.7,0.8)")


def _first_reaching(curve: pd.DataFrame, metric: str, level: float) -> float:
    hit = curve.loc[curve[metric] >= level, "n_labels"]
    return float(hit.iloc[0]) if len(hit) else np.nan


def labels_needed(rounds: pd.DataFrame, levels: list[float], metric: str = "f1_macro") -> pd.DataFrame:
    """One row per setting: labels to reach each level (mean, std, reached) and the final score."""
    per_seed = []
    for key, curve in rounds.sort_values("round").groupby([*SETTING_KEYS, "seed"], sort=True):
        row = dict(zip([*SETTING_KEYS, "seed"], key))
        row["final"] = float(curve[metric].iloc[-1])
        for level in levels:
            row[f"n_{level:g}"] = _first_reaching(curve, metric, level)
        per_seed.append(row)
    per_seed = pd.DataFrame(per_seed)
    out = []
    for key, seeds in per_seed.groupby(SETTING_KEYS, sort=True):
        row = dict(zip(SETTING_KEYS, key))
        row["n_seeds"] = len(seeds)
        row[f"final_{metric}_mean"] = seeds["final"].mean()
        row[f"final_{metric}_std"] = seeds["final"].std(ddof=0)
        for level in levels:
            got = seeds[f"n_{level:g}"].dropna()
            row[f"labels_to_{level:g}_mean"] = got.mean() if len(got) else np.nan
            row[f"labels_to_{level:g}_std"] = got.std(ddof=0) if len(got) else np.nan
            row[f"labels_to_{level:g}_reached"] = f"{len(got)}/{len(seeds)}"
        out.append(row)
    return pd.DataFrame(out)


def paired_vs_random(rounds: pd.DataFrame, metric: str = "f1_macro", alpha: float = ALPHA) -> pd.DataFrame:
    """Per strategy: mean paired difference in learning-curve area vs random, wins, and Wilcoxon p."""
    from scipy.stats import wilcoxon  # noqa: PLC0415  (scikit-learn's dependency)

    area = rounds.groupby([*PAIR_KEYS, "strategy"])[metric].mean().unstack("strategy")
    rows = []
    if "random" not in area.columns:
        return pd.DataFrame(rows)
    for strategy in [s for s in area.columns if s != "random"]:
        pairs = area[[strategy, "random"]].dropna()
        diff = (pairs[strategy] - pairs["random"]).to_numpy()
        if len(diff) == 0 or np.allclose(diff, 0):
            p = 1.0
        else:
            p = float(wilcoxon(diff, alternative="greater", zero_method="zsplit").pvalue)
        beats = bool(p < alpha and diff.mean() > 0)
        rows.append({
            "strategy": strategy, "n_pairs": len(diff), "mean_area_difference": float(diff.mean()) if len(diff) else 0.0,
            "wins": int((diff > 0).sum()), "losses": int((diff < 0).sum()), "p_value": p, "beats_random": beats,
            "statement": (f"{strategy} beats random (paired Wilcoxon, one-sided p={p:.3g} < {alpha})" if beats
                          else f"{strategy} is not shown to beat random (p={p:.3g}, {len(diff)} paired runs)"),
        })
    return pd.DataFrame(rows)


def format_needed(needed: pd.DataFrame) -> str:
    levels = [c[len("labels_to_"):-len("_mean")] for c in needed.columns if c.endswith("_mean")
              and c.startswith("labels_to_")]
    head = "first  step  strategy      lr      weight    final F1      " + "  ".join(
        f"labels to F1>={lv:<14}" for lv in levels)
    lines = [head]
    final = [c for c in needed.columns if c.startswith("final_") and c.endswith("_mean")][0]
    for r in needed.to_dict("records"):
        cells = []
        for lv in levels:
            m, s, k = r[f"labels_to_{lv}_mean"], r[f"labels_to_{lv}_std"], r[f"labels_to_{lv}_reached"]
            cells.append(f"{m:6.0f} +- {s:4.0f} ({k})" if np.isfinite(m) else f"{'never':>13} ({k})")
        lines.append(f"{r['first_batch']:>5}  {r['batch_size']:>4}  {r['strategy']:<12}  {r['learning_rate']:<6}  "
                     f"{str(r['class_weight']):<8}  {r[final]:.3f}+-{r[final.replace('_mean', '_std')]:.3f}  "
                     + "  ".join(f"{c:<26}" for c in cells))
    return "\n".join(lines)


def write_study(needed: pd.DataFrame, paired: pd.DataFrame, out: Path) -> str:
    """Write labels_needed.csv and vs_random.csv to `out`; return the text to print."""
    out.mkdir(parents=True, exist_ok=True)
    needed.to_csv(out / "labels_needed.csv", index=False)
    paired.to_csv(out / "vs_random.csv", index=False)
    text = ["labels needed per setting (mean +- std over the seeds that got there):", format_needed(needed), ""]
    text += list(paired["statement"]) if len(paired) else ["(no random baseline to compare with)"]
    text += [f"labels needed -> {out / 'labels_needed.csv'}", f"strategy vs random -> {out / 'vs_random.csv'}"]
    return "\n".join(text)


class _Bar:
    def __init__(self, bar):
        self._bar = bar

    def step(self, note: str = "") -> None:
        if note:
            self._bar.set_postfix_str(note, refresh=False)
        self._bar.update(1)


@contextmanager
def progress_bar(total: int, unit: str) -> Iterator[_Bar]:
    """A tqdm bar with `step(note)`; on stderr, and plain lines when not a terminal (tqdm's own)."""
    from tqdm import tqdm  # noqa: PLC0415

    bar = tqdm(total=total, unit=unit, dynamic_ncols=True, mininterval=1.0)
    try:
        yield _Bar(bar)
    finally:
        bar.close()
