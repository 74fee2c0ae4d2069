"""Command-line options of the active-learning loop, shared by its sub-commands.

`models.vetting.cli` builds the parser from these; `night` and `experiments`
turn the parsed options back into a `LoopConfig` and a `Tracking` with them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional

from models.vetting.active_learning import LoopConfig
from models.vetting.classifier import STRATEGIES, TARGETS, ClassifierConfig


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

