"""Everything an ORACLE flow needs before its first step, made once: `prepare(survey) -> Runtime`.

`dataflows/oracle.py` only wires named steps; what those steps use is here,
built in this order:

1. the settings, read once (operators/runtime/config.py), and the local checks
   (dataflows/preflight.py): a problem is one line and exit status 2, before any
   dataflow exists; the checks load the models, which are kept (never loaded twice);
2. the process hooks: logging, metrics, recovery defaults, Ctrl-C handling,
   torch threads, compilation of the image network, the metrics exporter;
3. the clients and stores the steps use (the store lazily, once per process);
4. run by `python -m bytewax.run` with Kafka: waiting for the brokers, where
   Ctrl-C works (building alone connects nowhere).

A new output is a field of `Outputs` (and a step in `write_outputs`); a new
setting is a field of its concern's model in operators/runtime/config.py.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

from dataflows.preflight import CheckResult, checked_models, exit_on_failures, predict_or_exit, read_or_exit
from models.oracle.loading import configure_inference, model_label
from models.oracle.networks import predict_proba
from operators.oracle import steps
from operators.oracle.results import CsvLayout
from operators.oracle.store import EmbeddedStore
from operators.oracle.surveys import Survey, configured
from operators.runtime import affinity, exits, metrics
from operators.runtime.config import Settings
from operators.runtime.logs import STOPPING, exit_130_if_stopped, quiet_interrupt, setup_logging, watch_sigint
from operators.runtime.recovery import enable_default_recovery, run_by_bytewax
from operators.runtime.fritz_settings import FritzConfig
from operators.runtime.slack_settings import SlackConfig
from operators.sinks import results_outputs as results_out

log = logging.getLogger("alertflow.oracle")


@dataclass(frozen=True)
class Loaded:
    """A loaded ORACLE model and its provenance label (the CSV's `model` column)."""

    model: Any
    name: str


@dataclass(frozen=True)
class Models:
    """The model that classifies, the shadow model run on the same batches (or None), and
    the backend's `predict` for both."""

    main: Loaded
    shadow: Optional[Loaded] = None
    predict: Callable = predict_proba  # the backend's (ORACLE_BACKEND: torch, or ONNX Runtime's)

    @property
    def needs_stamp(self) -> bool:
        return self.main.model.needs_stamp or (self.shadow is not None and self.shadow.model.needs_stamp)


@dataclass(frozen=True)
class Outputs:
    """Where `write_outputs` writes: the results CSV (unless ALERTFLOW_RESULTS_CSV=false),
    the results topic and collection (`settings.results`), dead letters; Fritz (a client:
    reads and annotations), Slack and the shadow outputs when set."""

    survey: Survey
    results_csv: Path
    deadletters: Path
    settings: Settings  # the results topic/collection, dead-letter topic and the services they are on
    fritz: Optional[Any] = None  # operators.sinks.fritz.FritzClient
    fritz_config: Optional[FritzConfig] = None
    slack: Optional[SlackConfig] = None  # posts when set
    shadow_csv: Optional[Path] = None  # shadow rows (with a shadow model; also its collection when configured)
    layout: Optional[CsvLayout] = None  # the CSV's survey- and model-dependent columns (None: the survey's, no stamp)
    shadow_layout: Optional[CsvLayout] = None


@dataclass(frozen=True)
class Runtime:
    """What `prepare` made: the flow's steps take their pieces from here."""

    survey: Survey  # with its input builder's options bound (`configured`)
    settings: Settings
    models: Models
    store: steps.OncePerProcess  # the alert store, made on first use in each process
    outputs: Outputs
    partitions: Optional[int] = None  # the input topic's, when known: where batches go


def make_store(settings: Settings, survey: Survey):
    if settings.mongo is not None:
        from operators.oracle.mongo_store import MongoStore

        return MongoStore(settings.mongo, survey.collections)
    return EmbeddedStore(settings.outputs.sample_dir, survey.collections)


def prepare(survey: Survey, settings: Optional[Settings] = None, *, store=None, source_given: bool = False) -> Runtime:
    """The runtime of `survey`'s flow (see the module doc); `store` replaces the configured
    store and `source_given` says the input is not the configured one (tests)."""
    if settings is None:
        settings = read_or_exit(lambda: Settings.from_env(survey))
    survey, settings = configured(survey, settings)
    checks, model, shadow_model = checked_models(settings, survey)
    checks += [CheckResult(c.name, c.ok, c.detail, c.fix) for c in results_out.settings_problems(settings, survey)]
    exit_on_failures(c for c in checks if not source_given or c.name != "input")  # a given source needs no sample
    start_process(settings, survey)
    models = Models(Loaded(model, model_label(model, settings.oracle.weights)),
                    Loaded(shadow_model, model_label(shadow_model, settings.oracle.shadow_weights))
                    if shadow_model is not None else None)
    compile_models(settings, models)
    o = settings.oracle
    models = replace(models, predict=predict_or_exit(settings, survey, [(model, o.weights)] + (
        [(shadow_model, o.shadow_weights)] if shadow_model is not None else [])))
    lazy_store = steps.OncePerProcess((lambda: store) if store is not None else partial(make_store, settings, survey))
    metrics.start_exporter(settings.metrics.port)
    fritz = None
    if settings.fritz.enabled and survey.fritz:
        from operators.sinks.fritz import FritzClient

        fritz = FritzClient(settings.fritz)
    outputs = Outputs(survey, settings.results_csv, settings.deadletters, settings, fritz=fritz, fritz_config=settings.fritz,
                      slack=settings.slack if settings.slack.enabled else None,
                      shadow_csv=settings.shadow_results_csv if models.shadow else None,
                      layout=CsvLayout.of(survey, model),
                      shadow_layout=CsvLayout.of(survey, shadow_model) if shadow_model is not None else None)
    k = settings.kafka
    log.info("%s flow: filter %r, model %s%s, input %s, store %s", survey.name, settings.oracle.filter_name,
             models.main.name, f" (shadow {models.shadow.name} -> {outputs.shadow_csv})" if models.shadow else "",
             "kafka " + ",".join(k.brokers) + f" topic {k.topic}" if k else "bundled sample",
             settings.mongo.describe() if settings.mongo else "bundled documents")
    if run_by_bytewax():  # the results topic and collection: wait for the servers, create, prove the right to write
        exit_on_failures(CheckResult(c.name, c.ok, c.detail, c.fix)
                         for c in results_out.check_results(settings, survey, start=True))
    partitions = None
    if k is not None and not source_given and run_by_bytewax():  # about to run: wait here, where Ctrl-C works
        from operators.io.kafka import wait_for_kafka

        where = ",".join(k.brokers)
        partitions = wait_for_kafka({"bootstrap.servers": where, **k.client_config}, k.topic, where=where,
                                    topic_var="KAFKA_TOPIC", exit_after_s=k.unreachable_exit_s,
                                    redact=settings.redact)
    if run_by_bytewax():  # the process is this run: its totals are the run's
        atexit.register(lambda: log.info("%s", metrics.run_summary(survey.name)))
        freeze_start_up_objects()
    return Runtime(survey, settings, models, lazy_store, outputs, partitions)


def freeze_start_up_objects() -> None:
    """Keep the ~200,000 objects of the start-up (torch, the models, settings) out of every
    later garbage collection (`gc.freeze`): a full collection walks them all, ~100 ms each
    time, a few times per 20,000 alerts, and they live as long as the process anyway.
    Collected once first, so no garbage is frozen with them."""
    import gc

    gc.collect()
    gc.freeze()


def start_process(settings: Settings, survey: Survey) -> None:
    """The process-wide hooks: the core (ALERTFLOW_CPU_AFFINITY), logging, metrics, recovery defaults,
    Ctrl-C, torch threads."""
    import torch

    # Every thread the process has now is pinned; those started later (bytewax's workers) inherit it.
    core = affinity.apply(settings.oracle.cpu_affinity, sys.argv, os.environ) if settings.oracle.cpu_affinity else None
    setup_logging(settings.log_file, settings.outputs.log_level)
    metrics.begin(survey.name)
    if core is not None:
        log.info("ALERTFLOW_CPU_AFFINITY=%s: this process runs on core %s", settings.oracle.cpu_affinity, core)
    r = settings.recovery
    recovery_dir = enable_default_recovery(r.directory, r.partitions, r.snapshot_interval_s,
                                           r.backup_interval_s) if r.enabled else None
    watch_sigint()
    # Ctrl-C is a clean stop: one line and status 130, not a traceback (the bundled replay
    # too: its Slack or Fritz sink may be waiting for a service at the end).
    quiet_interrupt(on_stop=lambda: log.info("%s", metrics.run_summary(survey.name)))
    if run_by_bytewax():  # the process is this run (atexit: LIFO, after the run summary)
        atexit.register(exit_130_if_stopped)
    exits.install_for_bytewax_run(recovery_dir, STOPPING)  # a lost peer, a full disk: one line, status 4/5
    if settings.kafka is not None:
        if not r.enabled:
            log.warning("recovery is off: a restart replays %s from its %s offset (rows already in the CSV are "
                        "skipped)", settings.kafka.topic, settings.kafka.starting_offset)
    # Workers are threads sharing the model; more intra-op threads per forward pass mostly
    # contend with them. Processes (-i/-a) are the way to use more cores.
    torch.set_num_threads(settings.oracle.torch_threads)


def compile_models(settings: Settings, models: Models) -> None:
    """Device, precision and the compiler (checked by preflight); a failing compile ends here."""
    o = settings.oracle
    for loaded in [models.main] + ([models.shadow] if models.shadow else []):
        try:
            configure_inference(loaded.model, o.precision, o.device, compile=o.compile)
        except ValueError as exc:
            if not o.compile:
                raise
            exit_on_failures([CheckResult("compile", False, f"ORACLE_COMPILE=true: {exc}",
                                          "unset ORACLE_COMPILE (eager fp32 gives the same probabilities)", exc)])
