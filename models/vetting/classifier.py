"""Galactic-vs-extragalactic (and real-vs-bogus) vetting classifier.

What lives here, all plain functions over numpy/pandas:

- the label vocabulary a human types in the labelling CLI, and the ONE table
  (`LABEL_TABLE`) that maps each label to the binary targets;
- `ClassifierConfig` / `make_classifier`: a scikit-learn
  `HistGradientBoostingClassifier` (native NaN handling, so missing light-curve
  features need no imputation);
- query strategies that rank unlabelled alerts for the next labelling batch;
- held-out metrics (accuracy, precision/recall/F1 per class and macro,
  confusion matrix) and permutation importance with a plot.

Inputs are feature frames with the columns of `models.vetting.feature_contract.
FEATURE_COLUMNS`; outputs are dicts, arrays and DataFrames that
`models.vetting.active_learning` logs to MLflow.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from models.vetting.feature_contract import FEATURE_COLUMNS

# --------------------------------------------------------------------------
# Labels and targets
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelInfo:
    key: str  # the single key typed in the labelling CLI
    meaning: str
    galactic: Optional[int]  # 1 Galactic, 0 not Galactic, None: says nothing
    real: Optional[int]  # 1 real astrophysical source, 0 bogus
    transient: Optional[int] = None  # 1 transient (extragal, gal), 0 persistent variable (agn, varstar)


# The one mapping table from human labels to binary targets. `None` means the
# label carries no information for that target, so the alert is left out of
# that target's training and evaluation sets (rather than guessed).
#
#   label       key  galactic  real  transient  why
#   real         r     --       1      --      real source, origin not decided yet
#   extragal     x      0       1       1      SN, TDE, ... in or behind a galaxy
#   gal          g      1       1       1      Galactic transient: CV outburst, nova, flare, YSO burst
#   agn          a      0       1       0      AGN/QSO nuclei are extragalactic, and persistent
#   bogus        b     --       0      --      artefact: not a sky source at all
#   varstar      v      1       1       0      variable stars are Galactic, and persistent
# (the transient target is the original finkvra project's: extragal and gal
# are the transients worth a look, agn and varstar the persistent variables.)
LABEL_TABLE: dict[str, LabelInfo] = {
    "real": LabelInfo("r", "real astrophysical source, origin not decided", None, 1, None),
    "extragal": LabelInfo("x", "extragalactic transient (SN, TDE, ...)", 0, 1, 1),
    "gal": LabelInfo("g", "Galactic source (CV, nova, flare, YSO, ...)", 1, 1, 1),
    "agn": LabelInfo("a", "active galactic nucleus / QSO", 0, 1, 0),
    "bogus": LabelInfo("b", "artefact (bad subtraction, cosmic ray, ghost, ...)", None, 0, None),
    "varstar": LabelInfo("v", "variable star", 1, 1, 0),
}
LABELS: tuple[str, ...] = tuple(LABEL_TABLE)
LABEL_KEYS: dict[str, str] = {info.key: label for label, info in LABEL_TABLE.items()}


@dataclass(frozen=True)
class Target:
    """A binary target read off one column of `LABEL_TABLE`.

    `classes[0]` is the name of class 0, `classes[1]` of class 1; metric names
    use them (e.g. `f1_gal`, `recall_bogus`).
    """

    name: str
    column: str  # attribute of LabelInfo
    classes: tuple[str, str]

    def encode(self, labels: Sequence[str] | pd.Series) -> pd.Series:
        """Human labels -> 0/1 floats, NaN where the label says nothing here.

        Raises ValueError naming the unknown labels, so a typo in labeled.csv
        is fixed rather than silently dropped.
        """
        labels = pd.Series(labels, dtype="object")
        unknown = sorted(set(labels.dropna()) - set(LABEL_TABLE))
        if unknown:
            raise ValueError(
                f"unknown label(s) {unknown}; valid labels are {list(LABELS)}. "
                "Fix or delete those rows of labeled.csv."
            )
        mapping = {lab: getattr(info, self.column) for lab, info in LABEL_TABLE.items()}
        return labels.map(lambda lab: np.nan if mapping.get(lab) is None else float(mapping[lab]))


TARGETS: dict[str, Target] = {
    "galactic": Target("galactic", "galactic", ("extragal", "gal")),
    "real_bogus": Target("real_bogus", "real", ("bogus", "real")),
    "transient": Target("transient", "transient", ("persistent", "transient")),
}


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise ValueError(f"unknown target {name!r}; choose one of {list(TARGETS)}") from None


def feature_columns(table: pd.DataFrame | None = None) -> list[str]:
    """The model's input columns: the VRA feature table's (`models/vetting/feature_contract.py`).
    `table` is accepted for callers that pass one; the contract does not depend on it."""
    return list(FEATURE_COLUMNS)


# --------------------------------------------------------------------------
# Classifier
# --------------------------------------------------------------------------


@dataclass
class ClassifierConfig:
    """Hyper-parameters of the HistGradientBoostingClassifier.

    Defaults are the prototype's (`max_iter=100, l2_regularization=10,
    learning_rate=0.1`) and scikit-learn's for the rest, except
    `min_samples_leaf=5`: with scikit-learn's 20 no tree can split fewer than
    40 rows, so the first model (30 labels) predicted one class for everything
    (simulated accuracy 0.51 at 30 labels vs 0.78 with 5; equal by 150).
    Pass `min_samples_leaf=20` to reproduce the prototype. `class_weight` is
    None or "balanced" (weights inversely proportional to class counts).
    `extra` passes any other HistGradientBoostingClassifier argument through.
    """

    max_iter: int = 100
    learning_rate: float = 0.1
    l2_regularization: float = 10.0
    max_leaf_nodes: Optional[int] = 31
    max_depth: Optional[int] = None
    min_samples_leaf: int = 5
    class_weight: Optional[str] = None
    # Off: with a few dozen labels a validation split would eat the training set.
    early_stopping: bool = False
    random_state: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_params(self) -> dict[str, Any]:
        """Flat dict of every hyper-parameter (for MLflow and the estimator)."""
        params = asdict(self)
        extra = params.pop("extra")
        params.update(extra)
        return params


def make_classifier(config: ClassifierConfig | None = None):
    """A fresh, unfitted HistGradientBoostingClassifier for `config`."""
    from sklearn.ensemble import HistGradientBoostingClassifier  # noqa: PLC0415

    return HistGradientBoostingClassifier(**(config or ClassifierConfig()).as_params())


def fit_classifier(X: pd.DataFrame, y: np.ndarray, config: ClassifierConfig | None = None):
    """Fit a classifier on features `X` (NaN allowed) and 0/1 targets `y`.

    Raises ValueError when `y` holds only one class, saying what to label next.
    """
    y = np.asarray(y, dtype=int)
    present = set(np.unique(y))
    if len(present) < 2:
        missing = 1 - next(iter(present)) if present else 0
        raise ValueError(
            f"the training labels hold only class {sorted(present)}; label at least one "
            f"alert of class {missing} before training (for the galactic target: 0 = "
            "extragal/agn, 1 = gal/varstar)."
        )
    # A column with no value at all in the training rows (e.g. `ebv` before a
    # dust map is configured) makes scikit-learn's binning fail. As a constant
    # it gets no split, so the model ignores it, whatever it holds later.
    empty = [c for c in X.columns if X[c].isna().all()]
    if empty:
        X = X.assign(**{c: 0.0 for c in empty})
    model = make_classifier(config)
    model.fit(X, y)
    return model


# --------------------------------------------------------------------------
# Query strategies
# --------------------------------------------------------------------------

STRATEGIES: tuple[str, ...] = ("uncertainty", "margin", "entropy", "random")


def _as_2d(proba: np.ndarray) -> np.ndarray:
    proba = np.asarray(proba, dtype=float)
    if proba.ndim == 1:  # P(class 1) only
        proba = np.column_stack([1.0 - proba, proba])
    return proba


def query_scores(proba: np.ndarray, strategy: str, rng: np.random.Generator | None = None) -> np.ndarray:
    """Informativeness of each row; the batch takes the HIGHEST scores.

    `proba` is `[n, n_classes]` (or `[n]` = P(class 1)).
    - uncertainty: `-|p1 - 0.5|` for two classes (least confident, `1 - max p`,
      for more), so the rows nearest 0.5 come first;
    - margin: `-(p_top1 - p_top2)`;
    - entropy: `-sum p log p`;
    - random: uniform noise (the baseline).
    For two classes uncertainty, margin and entropy are monotone in |p1 - 0.5|
    and so rank alike; they differ with more classes.
    """
    proba = _as_2d(proba)
    if strategy == "uncertainty":
        if proba.shape[1] == 2:
            return -np.abs(proba[:, 1] - 0.5)
        return 1.0 - proba.max(axis=1)
    if strategy == "margin":
        top = np.sort(proba, axis=1)
        return -(top[:, -1] - top[:, -2])
    if strategy == "entropy":
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(proba > 0, proba * np.log(proba), 0.0)
        return -terms.sum(axis=1)
    if strategy == "random":
        rng = rng if rng is not None else np.random.default_rng()
        return rng.random(len(proba))
    raise ValueError(f"unknown query strategy {strategy!r}; choose one of {list(STRATEGIES)}")


def select_batch(
    proba: np.ndarray,
    n: int,
    strategy: str,
    rng: np.random.Generator | None = None,
    balanced: bool = False,
) -> np.ndarray:
    """Indices (into `proba`'s rows) of the `n` rows to label next, best first.

    Ties are broken at random, never by row position, so an uninformative model
    does not always send the first alerts of the table. With `balanced=True`
    the batch alternates between rows predicted as each class (each ranked by
    the strategy), filling from the other class when one runs out: this keeps
    the rare class coming when the model is sure almost everything is common.
    """
    rng = rng if rng is not None else np.random.default_rng()
    proba = _as_2d(proba)
    n = min(int(n), len(proba))
    if n <= 0:
        return np.zeros(0, dtype=int)
    scores = query_scores(proba, strategy, rng)
    # lexsort: last key is primary. Highest score first, random tie-break.
    order = np.lexsort((rng.random(len(scores)), -scores))
    if not balanced:
        return order[:n]
    predicted = proba.argmax(axis=1)[order]
    queues = [list(order[predicted == c]) for c in range(proba.shape[1])]
    picked: list[int] = []
    while len(picked) < n:
        for q in queues:
            if q and len(picked) < n:
                picked.append(q.pop(0))
    return np.asarray(picked, dtype=int)


# --------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str] = ("extragal", "gal")
) -> tuple[dict[str, float], np.ndarray]:
    """Held-out scores and the confusion matrix, from `sklearn.metrics`.

    Returns `(scores, cm)`: `scores` has `accuracy`, `precision_<class>`,
    `recall_<class>`, `f1_<class>` for each class name and their `_macro`
    means (a ratio with a zero denominator counts as 0); `cm` has rows for
    the true class and columns for the predicted one, every class included.
    """
    from sklearn import metrics as skm  # noqa: PLC0415 - scikit-learn imports slowly

    labels = list(range(len(class_names)))
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    cm = skm.confusion_matrix(y_true, y_pred, labels=labels)
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    scores = {"accuracy": float(skm.accuracy_score(y_true, y_pred)) if len(y_true) else 0.0}
    for i, name in enumerate(class_names):
        scores[f"precision_{name}"] = float(precision[i])
        scores[f"recall_{name}"] = float(recall[i])
        scores[f"f1_{name}"] = float(f1[i])
    scores["precision_macro"] = float(precision.mean())
    scores["recall_macro"] = float(recall.mean())
    scores["f1_macro"] = float(f1.mean())
    return scores, cm


def class_counts(y: np.ndarray, class_names: Sequence[str], prefix: str) -> dict[str, int]:
    """`{f"{prefix}_{class}": count}` for each class, zeros included."""
    y = np.asarray(y, dtype=int)
    return {f"{prefix}_{name}": int((y == i).sum()) for i, name in enumerate(class_names)}


# --------------------------------------------------------------------------
# Explanations
# --------------------------------------------------------------------------


def permutation_importance_table(
    model, X: pd.DataFrame, y: np.ndarray, n_repeats: int = 5, seed: int = 0, scoring: str = "f1_macro"
) -> pd.DataFrame:
    """Permutation importance on a held-out set, most important first.

    Columns: `feature, importance_mean, importance_std` (drop in `scoring`
    when that feature's values are shuffled; near zero or negative means the
    model does not rely on it, or the held-out set is too small to tell).
    """
    from sklearn.inspection import permutation_importance  # noqa: PLC0415

    y = np.asarray(y, dtype=int)
    result = permutation_importance(model, X, y, n_repeats=n_repeats, random_state=seed, scoring=scoring)
    table = pd.DataFrame(
        {
            "feature": list(X.columns),
            "importance_mean": result.importances_mean,
            "importance_std": result.importances_std,
        }
    )
    return table.sort_values("importance_mean", ascending=False, kind="stable").reset_index(drop=True)


def plot_importance(table: pd.DataFrame, path: str | Path, title: str = "Permutation importance") -> Path:
    """Horizontal bar chart of `permutation_importance_table` output, saved as PNG."""
    # Figure without pyplot: no GUI backend, no global state, safe headless.
    from matplotlib.figure import Figure  # noqa: PLC0415

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    shown = table.iloc[::-1]  # most important at the top
    fig = Figure(figsize=(7, 0.28 * len(shown) + 1.5))
    ax = fig.subplots()
    ax.barh(shown["feature"], shown["importance_mean"], xerr=shown["importance_std"], color="tab:blue")
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("drop in score when shuffled")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
