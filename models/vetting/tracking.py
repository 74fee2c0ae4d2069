"""MLflow tracking of active-learning rounds.

One round = one run named `round_{N}_{strategy}` in experiment `gal_model_AL`
holding:
- params: every `LoopConfig` field and classifier hyper-parameter, plus
  `round`, `n_labels`, `n_features`;
- metrics: held-out accuracy, precision/recall/F1 per class and macro,
  confusion-matrix cells (`cm_<true>_as_<predicted>`), class counts
  (`train_<class>`, `holdout_<class>`, `unlabelled`) and `n_labels`;
- artifacts: the model (`model/`, skops format), `permutation_importance.csv`
  and `.png`, `confusion_matrix.csv`, `next_batch.csv`.

Where: `Tracking.uri`, else `$MLFLOW_TRACKING_URI`, else a local SQLite
store `results/mlflow/mlflow.db` with artifacts beside it in
`results/mlflow/artifacts/` (needs no server; this mlflow refuses the old
`./mlruns` file store). Browse with
`mlflow ui --backend-store-uri sqlite:///results/mlflow/mlflow.db`.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pandas as pd

EXPERIMENT_NAME = "gal_model_AL"
# Written by us, loaded by us: the tree nodes skops cannot vet on its own.
SKOPS_TRUSTED_TYPES = ["sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"]


@dataclass
class Tracking:
    """Where rounds are logged. `uri=None`: `$MLFLOW_TRACKING_URI` or local SQLite."""

    uri: Optional[str] = None
    experiment: str = EXPERIMENT_NAME
    log_model: bool = True
    default_root: Path = field(default_factory=lambda: Path("results/mlflow"))

    def resolved_uri(self) -> str:
        if self.uri:
            return self.uri
        if os.environ.get("MLFLOW_TRACKING_URI"):
            return os.environ["MLFLOW_TRACKING_URI"]
        root = Path(self.default_root).resolve()
        return f"sqlite:///{root / 'mlflow.db'}"


def _artifact_location(uri: str) -> Optional[str]:
    """For a local SQLite store, keep artifacts next to the database file.

    Otherwise MLflow would put them in `./mlruns` under whatever directory
    the command happened to run from. Other stores keep their own default.
    """
    if uri.startswith("sqlite:///"):
        return str(Path(uri[len("sqlite:///"):]).parent / "artifacts")
    return None


def _setup(tracking: Tracking):
    # Science pipelines run offline and should not phone home; users can still
    # opt in by setting the variable themselves.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow  # noqa: PLC0415

    uri = tracking.resolved_uri()
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(tracking.experiment)
    if experiment is None:
        experiment_id = client.create_experiment(tracking.experiment, artifact_location=_artifact_location(uri))
    else:
        experiment_id = experiment.experiment_id
    return mlflow, experiment_id


def _param_value(value: Any) -> Any:
    # MLflow stores params as strings; make None explicit rather than "None"-vs-missing.
    return "none" if value is None else value


def log_round(result, config, tracking: Tracking, tags: Optional[dict[str, str]] = None) -> str:
    """Log one `RoundResult` as run `round_{N}_{strategy}`; returns the run id."""
    from models.vetting.classifier import get_target  # noqa: PLC0415

    mlflow, experiment_id = _setup(tracking)
    target = get_target(config.target)
    params = {k: _param_value(v) for k, v in config.params().items()}
    params.update(round=result.round, n_labels=result.n_labels, n_features=len(result.features))
    metrics = {**result.scores, **result.counts, "n_labels": result.n_labels}
    if result.confusion is not None:
        for i, true in enumerate(target.classes):
            for j, pred in enumerate(target.classes):
                metrics[f"cm_{true}_as_{pred}"] = int(result.confusion[i, j])
    run_tags = {"target": config.target, "strategy": config.strategy, **(tags or {})}
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"round_{result.round}_{config.strategy}",
                          tags=run_tags) as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.log_params(params)
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        tmp = Path(tmp)
        if result.confusion is not None:
            pd.DataFrame(result.confusion, index=[f"true_{c}" for c in target.classes],
                         columns=[f"pred_{c}" for c in target.classes]).to_csv(tmp / "confusion_matrix.csv")
        if result.importance is not None:
            from models.vetting.classifier import plot_importance  # noqa: PLC0415

            result.importance.to_csv(tmp / "permutation_importance.csv", index=False)
            plot_importance(result.importance, tmp / "permutation_importance.png",
                            title=f"Permutation importance (held-out {target.name}, F1 macro)\n"
                                  f"round {result.round}, {config.strategy}, {result.n_labels} labels")
        result.query.to_csv(tmp / "next_batch.csv", index=False)
        mlflow.log_artifacts(str(tmp))
        if tracking.log_model:
            _log_model(mlflow, result)
        return run.info.run_id


def _log_model(mlflow, result) -> None:
    import sklearn  # noqa: PLC0415
    from mlflow.models import infer_signature  # noqa: PLC0415

    import mlflow.sklearn  # noqa: PLC0415

    # Input schema only: every feature is a float that may be NaN.
    signature = infer_signature(pd.DataFrame({c: pd.Series(dtype="float64") for c in result.features}))
    mlflow.sklearn.log_model(
        result.model,
        name="model",
        signature=signature,
        # Explicit requirements: skips MLflow's slow import-scanning inference.
        pip_requirements=[f"scikit-learn=={sklearn.__version__}"],
        skops_trusted_types=SKOPS_TRUSTED_TYPES,
    )
