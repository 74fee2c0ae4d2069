"""Command line of the active-learning loop: `python -m models.vetting.active_learning ...`.

Sub-commands `round` (tonight's round on real labels), `simulate` (one
simulated loop), `experiments` (a grid of simulated loops, see
`models.vetting.experiments`) and `night` (see `models.vetting.night`). Each
only parses its options and calls the library in `models.vetting.active_learning`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from models.vetting.active_learning import DEFAULT_OUT, RoundResult, format_round, simulate
from models.vetting.cli_options import add_loop_arguments, add_tracking_arguments, config_from_args, tracking_from_args
from models.vetting.live import live_round


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
