"""A night's round in one command.

    python -m models.vetting.active_learning night [--features results/fink_vra] [--labels labeled.csv] \\
        [--alerts 'night/*.avro'] [--no-label] [--no-track]

Reads tonight's VRA feature table (what `dataflows.fink_vra` wrote), trains
on the labels so far, logs the round to MLflow, writes the batch to label
(`models.vetting.live.live_round`), then opens the labelling CLI on that
batch (`models.vetting.labeling.label_session`) unless `--no-label`. A progress bar
(tqdm, on stderr) follows the steps. `--alerts` (default: `$FINK_VRA_INPUT`)
names the alert files the batch came from -- any file, directory or glob the
flow reads, Avro or Parquet -- so the labelling CLI can draw light curves;
without it, alerts are shown with their Lasair and Fink links only.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Optional, TextIO

STEPS = ("read tonight's features", "train, log to MLflow, write the batch", "label the batch")
COLD_STEP = "pick a random first batch (too few labels for a model)"


def add_night_parser(sub, add_loop_arguments: Callable, add_tracking_arguments: Callable) -> None:
    from models.vetting.active_learning import DEFAULT_OUT  # noqa: PLC0415

    night = sub.add_parser("night", help="tonight's round: features -> train -> MLflow -> batch -> labelling CLI")
    night.add_argument("--features", default="results/fink_vra", help="feature table (default: %(default)s)")
    night.add_argument("--labels", default="labeled.csv")
    night.add_argument("--alerts", default=None,
                       help="tonight's alert files, for light curves (default: $FINK_VRA_INPUT)")
    night.add_argument("--plots", default="results/labeling", help="where light-curve PNGs go")
    night.add_argument("--out", default=str(DEFAULT_OUT))
    night.add_argument("--no-label", action="store_true", help="stop after writing the batch")
    night.add_argument("--no-hints", action="store_true", help="hide catalogue hints while labelling")
    night.add_argument("--no-track", action="store_true", help="skip MLflow")
    add_loop_arguments(night)
    add_tracking_arguments(night)


def read_alert_files(spec: Optional[str]) -> list[dict]:
    """Alert dicts from the files `spec` names (Avro or Parquet, as the flow reads them)."""
    if not spec:
        return []
    from operators.vra.alert_files import expand_input, processed_row_alert, read_records  # noqa: PLC0415

    alerts = []
    for path in expand_input(spec):
        for rec in read_records(path):
            if rec.kind == "error" or not isinstance(rec.record, dict):
                continue
            row = rec.record
            if "candidate" not in row and {"ra", "dec"} <= row.keys():
                row = processed_row_alert(row)[0]
            if row.get("candid") is not None and isinstance(row.get("candidate"), dict):
                alerts.append(row)
    return alerts


def night(args: argparse.Namespace, stdin: Optional[TextIO] = None, stdout: Optional[TextIO] = None) -> int:
    """Run the steps; returns the exit code (0, or 130 when the labelling is interrupted)."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    from tqdm import tqdm  # noqa: PLC0415

    from models.vetting.cli_options import config_from_args, tracking_from_args  # noqa: PLC0415
    from models.vetting.live import cold_start, live_round, load_features  # noqa: PLC0415

    out_dir = Path(args.out)
    config = config_from_args(args)
    cold = cold_start(load_features(args.features), args.labels, config)
    if cold:  # said first: the bar must not promise a model and an MLflow run
        print(f"{cold} Tonight's batch is drawn at random; no model is trained and nothing is logged to MLflow.",
              file=stdout, flush=True)
    steps = (STEPS if not cold else (STEPS[0], COLD_STEP, STEPS[2]))[: 2 if args.no_label else 3]
    lines: list[str] = []
    with tqdm(total=len(steps), unit="step", file=sys.stderr, dynamic_ncols=True) as bar:
        bar.set_description(steps[0])
        table = load_features(args.features)
        bar.update(1)
        bar.set_description(steps[1])
        tracking = None if args.no_track or cold else tracking_from_args(args, out_dir)
        done = live_round(args.features, args.labels, config, out_dir, tracking, say=lines.append)
        bar.update(1)
        if args.no_label:
            bar.close()
            _say(stdout, [f"{len(table)} alerts in {args.features}", *lines])
            return 0
        bar.set_description(steps[2])
        bar.clear()  # the labelling CLI owns the screen now
        _say(stdout, [f"{len(table)} alerts in {args.features}", *lines])
        from models.vetting.labeling import label_session  # noqa: PLC0415

        alerts = read_alert_files(args.alerts or os.environ.get("FINK_VRA_INPUT"))
        try:
            summary = label_session(alerts, args.labels, args.plots, queue=done.queue, stdin=stdin,
                                    stdout=stdout, hints=not args.no_hints)
        except KeyboardInterrupt:
            print(f"\nInterrupted. Every label keyed so far is saved in {args.labels}.", file=sys.stderr)
            return 130
        bar.update(1)
    _say(stdout, [f"{summary.labelled} labelled, {summary.skipped} skipped, {summary.remaining} left; "
                  f"labels in {args.labels}. Tomorrow: run `night` again."])
    return 0


def _say(stream: TextIO, lines: list[str]) -> None:
    for line in lines:
        print(line, file=stream, flush=True)


def run_from_args(args: argparse.Namespace) -> int:
    return night(args)
