"""Reclassify the past: BOOM's alert documents in a time window, through the live flow's steps.

    python -m dataflows backfill ztf --since 2026-11-01 --until 2026-11-08 \\
        [--weights W] [--query JSON] [--candids FILE] [--annotate] [--publish] [-w N]

    window slices (operators/oracle/backfill_source.py) → batch → enrich → build inputs → classify
        → results/backfill/oracle_<survey>_<model-sha12>_<since>_<until>.csv ; unusable → dead letters

The enrich → inputs → classify steps are the live flow's own (`dataflows/oracle.py`
`classify_steps`), and the input builders use only the points up to each alert's
own time, so a backfilled alert gets what it would have got live; the model is
loaded and run on ORACLE_BACKEND as the live flow does (`dataflows/preflight.py`
`backend_predict`). Nothing is
posted to Fritz or Slack unless `--annotate` is given. With ORACLE_RESULTS_COLLECTION the
results are also upserted into the collection (same `_id` = candid: new weights overwrite,
`model` says which); they go to ORACLE_RESULTS_TOPIC only with `--publish`. Without MongoDB
(`MONGODB_URI` / `BOOM_DATABASE__HOST` unset) the bundled documents are read.

Recovery is always on: each slice's position is snapshotted every
`ALERTFLOW_SNAPSHOT_INTERVAL_S` under `recovery/backfill/<job>`, so the same
command after a crash, `kill -9` or Ctrl-C resumes where it stopped; rows are
unique by candid. Delete that directory to run a finished job again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import re
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Optional, Sequence

import bytewax.operators as op
from bytewax.dataflow import Dataflow

from operators.oracle import steps
from operators.oracle.backfill_source import (EmbeddedScanner, MongoScanner, WindowSource, empty_window_line, ids_query,
                                              slice_query)
from operators.runtime.config import Settings
from operators.oracle.messages import FilterResult
from operators.oracle.surveys import SURVEYS, Survey, configured, survey_named

log = logging.getLogger("alertflow.backfill")

UNIX_EPOCH_JD = 2440587.5


def parse_time(text: str) -> tuple[float, str]:
    """`(JD, label for file names)` of an ISO date or date-time (UTC unless it says
    otherwise) or of a Julian date."""
    text = text.strip()
    try:
        jd = float(text)
    except ValueError:
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{text!r} is neither an ISO date (2026-11-01, 2026-11-01T06:00) nor a JD") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return when.timestamp() / 86400.0 + UNIX_EPOCH_JD, re.sub(r"[^0-9A-Za-z.+-]", "", text)
    if not math.isfinite(jd) or jd < 2_400_000:
        raise ValueError(f"{text!r}: give a Julian date (e.g. 2461121.5) or an ISO date")
    return jd, text


@dataclass(frozen=True)
class Job:
    survey: Survey
    since: float
    until: float
    since_label: str
    until_label: str
    weights: Optional[Path] = None  # None: the flow's configured weights
    narrowing: Optional[dict] = None  # --query and --candids, as one MongoDB query
    annotate: bool = False
    slices: int = 32
    batch_size: Optional[int] = None  # None: ORACLE_BATCH_SIZE
    publish: bool = False  # also to ORACLE_RESULTS_TOPIC (the collection is always written when configured)


def narrowing_of(query: Optional[str], candids_file: Optional[Path]) -> Optional[dict]:
    from bson import json_util

    parts = []
    if query:
        try:
            q = json_util.loads(query)
        except ValueError as exc:
            raise ValueError(f"--query is not JSON: {exc}") from None
        if not isinstance(q, dict):
            raise ValueError("--query must be a JSON object (a MongoDB filter), e.g. '{\"candidate.drb\": {\"$gt\": 0.9}}'")
        parts.append(q)
    if candids_file is not None:
        lines = [s.strip() for s in Path(candids_file).read_text().splitlines()]
        parts.append(ids_query([s for s in lines if s and not s.startswith("#")]))
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else {"$and": parts}


def outputs(settings: Settings, job: Job, sha12: str) -> tuple[Path, Path]:
    stem = f"oracle_{job.survey.name.lower()}_{sha12}_{job.since_label}_{job.until_label}"
    out = settings.outputs.results_dir / "backfill"
    return out / f"{stem}.csv", out / f"{stem}_deadletters.jsonl"


def recovery_dir(settings: Settings, results_csv: Path, job: Job) -> Path:
    """One directory per job (window, weights, narrowing, output file): the same command
    resumes; the same job writing elsewhere (another ALERTFLOW_RESULTS_DIR) starts afresh."""
    key = json.dumps({"narrowing": job.narrowing, "csv": str(results_csv.resolve())}, sort_keys=True, default=str)
    name = f"{results_csv.stem}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"
    return Path(settings.recovery.directory).parent / "backfill" / name


def start_batch(items: list) -> steps.Batch:
    """A slice's read as a `Batch`; documents the source could not use are its first dead letters."""
    return steps.Batch(items=[x for x in items if isinstance(x, FilterResult)],
                       dead=[x for x in items if not isinstance(x, FilterResult)], size_in=len(items))


def scanner_factory(survey: Survey, settings: Settings, scanner=None):
    """What makes the scanner of the alert documents: `scanner` (tests), BOOM's MongoDB or the bundled documents."""
    collection = survey.collections.alerts
    if scanner is not None:
        return lambda: scanner
    if settings.mongo is not None:
        return partial(MongoScanner, settings.mongo, collection, survey.time_field)
    return partial(EmbeddedScanner, settings.outputs.sample_dir, collection, survey.time_field)


def empty_window(job: Job, settings: Settings, scanner=None) -> Optional[str]:
    """None when the window holds documents to classify; else the line saying what the store holds."""
    survey, settings = configured(job.survey, settings)
    scanner = scanner_factory(survey, settings, scanner)()
    window = slice_query(survey.time_field, job.since, job.until)

    def holds_any(query: dict) -> bool:  # one document read, not a count of the window
        return next(iter(scanner.scan(query, (survey.time_field,), 1)), None) is not None

    if holds_any(window if not job.narrowing else {"$and": [window, job.narrowing]}):
        return None
    in_window = scanner.count(window) if job.narrowing else 0
    store = settings.mongo.describe() if settings.mongo else f"the bundled documents ({settings.outputs.sample_dir})"
    return empty_window_line(survey.collections.alerts, survey.time_field, (job.since, job.until),
                             (job.since_label, job.until_label), store, scanner.time_range(), in_window)


def build_backfill_flow(job: Job, settings: Optional[Settings] = None, scanner=None, store=None) -> tuple[Dataflow, Path]:
    """The backfill dataflow and its results CSV; `scanner`/`store` override the configured ones (tests)."""
    import torch

    from dataflows.oracle import classify_steps, load_survey_model, write_outputs
    from dataflows.oracle_runtime import Loaded, Models, Outputs, make_store
    from dataflows.preflight import backend_predict
    from operators.oracle.results import CsvLayout
    from models.oracle.loading import model_label, weights_sha12
    from operators.sinks.fritz import FritzClient
    from operators.runtime.logs import setup_logging
    from operators.sinks.results_outputs import settings_problems

    survey, settings = configured(job.survey, settings)
    if job.weights is not None:
        settings = settings.replace(oracle={"weights": Path(job.weights)})
    if job.batch_size is not None:
        settings = settings.replace(oracle={"batch_size": job.batch_size})
    # A backfill always writes its CSV; the results topic only with --publish (issue 25).
    settings = settings.replace(results={"csv": True, **({} if job.publish else {"topic": ""})})
    problem = next(iter(settings_problems(settings, survey)), None)
    if problem is not None:
        raise ValueError(f"{problem.detail} -> {problem.fix}")
    o = settings.oracle
    setup_logging(settings.outputs.logs_dir / f"oracle_{survey.name.lower()}_backfill.log", settings.outputs.log_level)
    torch.set_num_threads(o.torch_threads)
    variable = "--weights" if job.weights is not None else f"ORACLE_{survey.name}_WEIGHTS"
    model = load_survey_model(survey, o.weights, o.model_kind, variable)
    predict = backend_predict(settings, survey, [(model, o.weights)])  # ORACLE_BACKEND, as the live flow
    name = model_label(model, o.weights)
    results_csv, deadletters = outputs(settings, job, weights_sha12(o.weights))
    fritz = None
    if job.annotate and settings.fritz.enabled and survey.fritz:
        fritz = FritzClient(settings.fritz)
    lazy_store = steps.OncePerProcess((lambda: store) if store is not None else partial(make_store, settings, survey))
    collection = survey.collections.alerts
    make_scanner = scanner_factory(survey, settings, scanner)
    log.info("%s backfill %s .. %s (JD %.5f .. %.5f)%s: model %s, store %s -> %s%s", survey.name, job.since_label,
             job.until_label, job.since, job.until, f" narrowed by {json.dumps(job.narrowing, default=str)}"
             if job.narrowing else "", name, settings.mongo.describe() if settings.mongo else "bundled documents",
             results_csv, "; annotating" if job.annotate else "; no Fritz/Slack posts (--annotate to post)")

    flow = Dataflow(f"backfill_{survey.name.lower()}")
    source = WindowSource(make_scanner, collection, survey.time_field, job.since, job.until, job.narrowing,
                          job.slices, o.batch_size, label=f"backfill {survey.name}")
    batch_stream = op.map("start", op.input("window", flow, source), start_batch)
    batch_stream = classify_steps("classify_steps", batch_stream, survey, Models(Loaded(model, name), predict=predict),
                                  lazy_store)
    slack = settings.slack if job.annotate and settings.slack.enabled else None
    write_outputs("write_outputs", batch_stream, Outputs(survey, results_csv, deadletters, settings, fritz=fritz,
                                                         fritz_config=settings.fritz, slack=slack,
                                                         layout=CsvLayout.of(survey, model)))
    return flow, results_csv


# ---------------------------------------------------------------- CLI


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m dataflows backfill",
        description="Classify BOOM's alert documents in a time window with the live flow's steps; "
                    "results in <ALERTFLOW_RESULTS_DIR>/backfill/. Store, batch size and Fritz/Slack "
                    "settings come from the same variables as the flow (python -m dataflows --help).")
    ap.add_argument("survey", choices=[s.lower() for s in SURVEYS])
    ap.add_argument("--since", required=True, help="window start: ISO date/time (UTC) or JD (inclusive)")
    ap.add_argument("--until", required=True, help="window end: ISO date/time (UTC) or JD (exclusive)")
    ap.add_argument("--weights", type=Path, help="ORACLE checkpoint (default: ORACLE_<SURVEY>_WEIGHTS)")
    ap.add_argument("--query", help="MongoDB filter on the alert documents, as JSON")
    ap.add_argument("--candids", type=Path, help="file of candids or objectIds, one per line")
    ap.add_argument("--annotate", action="store_true", help="post to Fritz/Slack as the live flow does")
    ap.add_argument("--publish", action="store_true", help="also publish to ORACLE_RESULTS_TOPIC (the collection "
                                                           "ORACLE_RESULTS_COLLECTION is written without it)")
    ap.add_argument("-w", "--workers-per-process", type=int, default=1, dest="workers")
    ap.add_argument("-i", "--process-id", type=int, default=None)
    ap.add_argument("-a", "--addresses", default=None, help='"host:port;host:port" of every process')
    ap.add_argument("--slices", type=int, default=32, help="time slices the window is cut into (partitions)")
    ap.add_argument("--batch-size", type=int, default=None, help="documents per read and model batch "
                                                                 "(default ORACLE_BATCH_SIZE)")
    ap.add_argument("--recovery-dir", type=Path, default=None,
                    help="where the position is kept (default recovery/backfill/<job>)")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    from bytewax.recovery import RecoveryConfig
    from bytewax.run import cli_main

    from models.oracle.networks import ModelLoadError
    from operators.runtime.recovery import ensure_partitions

    args = parser().parse_args(argv)
    try:
        survey = survey_named(args.survey)
        (since, since_label), (until, until_label) = parse_time(args.since), parse_time(args.until)
        if until <= since:
            raise ValueError(f"--until ({args.until}) must be after --since ({args.since})")
        if args.workers < 1 or args.slices < 1 or (args.batch_size is not None and args.batch_size < 1):
            raise ValueError("-w, --slices and --batch-size must be at least 1")
        job = Job(survey, since, until, since_label, until_label, args.weights,
                  narrowing_of(args.query, args.candids), args.annotate, args.slices, args.batch_size, args.publish)
        settings = Settings.from_env(survey)
        flow, results_csv = build_backfill_flow(job, settings)
    except (ValueError, OSError, ModelLoadError) as exc:  # ConfigError is a ValueError
        print(f"backfill: {exc}", file=sys.stderr)
        return 2
    try:
        nothing = empty_window(job, settings)
    except ValueError as exc:  # a --query the bundled store does not understand
        print(f"backfill: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - MongoDB away: the flow's own reads wait and retry
        log.warning("backfill %s: could not look into the window first (%s: %s)", survey.name,
                    type(exc).__name__, str(exc)[:200])
        nothing = None
    if nothing:
        log.warning("backfill %s: %s; nothing to classify", survey.name, nothing)
        return 0
    rec = args.recovery_dir or recovery_dir(settings, results_csv, job)
    ensure_partitions(rec, settings.recovery.partitions)
    log.info("position kept in %s: the same command resumes after a stop; delete it to start over", rec)
    try:
        cli_main(flow, workers_per_process=args.workers, process_id=args.process_id,
                 addresses=args.addresses.split(";") if args.addresses else None,
                 epoch_interval=timedelta(seconds=settings.recovery.snapshot_interval_s),
                 recovery_config=RecoveryConfig(str(rec)))
    except KeyboardInterrupt:
        log.info("backfill stopped by Ctrl-C; run the same command to resume")
        return 130
    log.info("backfill done: %s", results_csv)
    return 0

