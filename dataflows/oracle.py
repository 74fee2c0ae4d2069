"""The ORACLE flow, shared by every survey.

    messages → parse → passed filter? → batch by shard → enrich → build inputs
             → classify → results CSV (+ Fritz, Slack) ; anything unusable → dead letters

`build_flow(survey)` reads the configuration from the environment
(`operators/runtime/config.py`): with `KAFKA_BROKERS` it follows the survey's BOOM
filter-results topic until stopped; otherwise it replays the bundled sample and
exits. With `MONGODB_URI` or `BOOM_DATABASE__HOST` it enriches from BOOM's
MongoDB; otherwise from the bundled documents. With `ORACLE_<SURVEY>_SHADOW_WEIGHTS`
a second model classifies the same inputs (step `shadow`, before `classify`) into
the shadow CSV and nowhere else. `classify_steps` and `write_outputs` are shared
with backfills (dataflows/backfill.py).
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Optional

import bytewax.operators as op
from bytewax.dataflow import Dataflow

import torch

from models.oracle.loading import configure_inference, load_oracle, model_label
from models.oracle.networks import ModelLoadError, TaxonomyMismatch, predict_proba
from operators.runtime import affinity, metrics
from operators.oracle import steps
from operators.runtime.batching import batch, group_by_key
from operators.runtime.config import Settings
from operators.io.deadletter import DeadLetter, dead_letter
from operators.sinks.fritz import FritzAnnotationSink, FritzClient, add_fritz_context, fritz_key
from operators.runtime.logs import quiet_interrupt, setup_logging, watch_sigint
from operators.oracle.messages import FilterResult, origin_of, parse_message
from dataflows.preflight import CheckResult, exit_on_failures, predict_or_exit, read_or_exit, validate
from operators.oracle.results import CsvLayout, results_csv_sink
from operators.runtime.recovery import enable_default_recovery, run_by_bytewax as _run_by_bytewax
from operators.runtime.routing import batch_keys, bytewax_cluster
from operators.sinks.slack import SlackSink
from operators.sinks import results_outputs as results_out
from operators.samples.source import SampleSource
from operators.oracle.store import EmbeddedStore
from operators.oracle.surveys import Survey, configured

log = logging.getLogger("alertflow.oracle")


def make_store(settings: Settings, survey: Survey):
    if settings.mongo is not None:
        from operators.oracle.mongo_store import MongoStore

        return MongoStore(settings.mongo, survey.collections)
    return EmbeddedStore(settings.sample_dir, survey.collections)


def consumer_error(err) -> Optional[DeadLetter]:
    """A consumer error tied to a message is a dead letter; a broker hiccup
    (disconnect, all brokers down) carries no message and is only logged:
    librdkafka reconnects and resumes from the same offset by itself."""
    msg = err.msg
    origin = origin_of(msg)
    if origin.offset is None and not err.err.fatal():
        log.warning("Kafka consumer: %s (the consumer retries by itself)", err.err.str())
        return None
    return dead_letter("kafka", f"consumer error: {err.err.str()}", origin,
                       payload=msg.value if isinstance(msg.value, bytes) else None)


def parse_messages(survey: str, keep_template: bool, msgs: list) -> list:
    """One input batch of messages → `FilterResult`s and dead letters (`parse_message`),
    counted once per batch: a metric update per message costs more than its parsing saves."""
    metrics.count_messages(survey, len(msgs))
    return [parse_message(m, keep_template) for m in msgs]


def count_dead_letter(survey: str, step_id: str, letter) -> None:
    metrics.count_dead_letters(survey, letter)


def is_alert(item) -> bool:
    return isinstance(item, FilterResult)


def under_one_key(item):
    return ("out", item)


def each(items: list) -> list:
    return items


def build_flow(survey: Survey, settings: Optional[Settings] = None, source=None, store=None) -> Dataflow:
    """The dataflow for `survey`; `source` and `store` override the configured ones (tests).

    Configuration problems end the process here, before any dataflow exists: one line
    each on stderr, exit status 2 (dataflows/preflight.py, the same checks as
    `python -m dataflows check`). Run by `python -m bytewax.run` with Kafka, it then waits
    for the brokers (operators/io/kafka.py); building alone connects nowhere."""
    if settings is None:
        settings = read_or_exit(lambda: Settings.from_env(survey))
    survey, settings = configured(survey, settings)
    # Pinned before the model loads, so that the threads started from here on inherit the core.
    core = affinity.apply(settings.cpu_affinity, sys.argv, os.environ) if settings.cpu_affinity else None
    checks, model = validate(settings, survey)
    checks += [CheckResult(c.name, c.ok, c.detail, c.fix) for c in results_out.settings_problems(settings, survey)]
    exit_on_failures(c for c in checks if source is None or c.name != "input")  # a given source needs no sample
    setup_logging(settings.log_file, settings.log_level)
    metrics.begin(survey.name)
    if core is not None:
        log.info("ALERTFLOW_CPU_AFFINITY=%s: this process runs on core %s", settings.cpu_affinity, core)
    if settings.recovery:
        enable_default_recovery(settings.recovery_dir, settings.recovery_partitions,
                                settings.snapshot_interval_s, settings.backup_interval_s)
    watch_sigint()
    if settings.kafka is not None:
        quiet_interrupt(on_stop=lambda: log.info("%s", metrics.run_summary(survey.name)))
    if settings.kafka is not None and not settings.recovery:
        log.warning("recovery is off: a restart replays %s from its %s offset (rows already in the CSV are "
                    "skipped)", settings.kafka.topic, settings.kafka.starting_offset)
    # Workers are threads sharing the model; more intra-op threads per forward pass mostly
    # contend with them. Processes (-i/-a) are the way to use more cores.
    torch.set_num_threads(settings.torch_threads)
    name = model_label(model, settings.weights)
    shadow = None
    if settings.shadow_weights is not None:  # validated above
        shadow_model = load_oracle(settings.shadow_weights, taxonomy=survey.taxonomy)
        shadow = (shadow_model, model_label(shadow_model, settings.shadow_weights))
    for m in [model] + ([shadow[0]] if shadow else []):
        try:  # device, precision and the compiler were checked in validate(); a failing compile ends here
            configure_inference(m, settings.precision, settings.device, compile=settings.compile)
        except ValueError as exc:
            if not settings.compile:
                raise
            exit_on_failures([CheckResult("compile", False, f"ORACLE_COMPILE=true: {exc}",
                                          "unset ORACLE_COMPILE (eager fp32 gives the same probabilities)", exc)])
    predict = predict_or_exit(settings, survey, [(model, settings.weights)] +
                              ([(shadow[0], settings.shadow_weights)] if shadow else []))
    lazy_store = steps.OncePerProcess((lambda: store) if store is not None else partial(make_store, settings, survey))
    metrics.start_exporter(settings.metrics_port)
    fritz = FritzClient(settings.fritz) if settings.fritz.enabled and survey.fritz else None
    log.info("%s flow: filter %r, model %s%s, input %s, store %s", survey.name, settings.filter_name, name,
             f" (shadow {shadow[1]} -> {settings.shadow_results_csv})" if shadow else "",
             "kafka " + ",".join(settings.kafka.brokers) + f" topic {settings.kafka.topic}" if settings.kafka else "bundled sample",
             settings.mongo.describe() if settings.mongo else "bundled documents")

    if _run_by_bytewax():  # the results topic and collection: wait for the servers, create, prove the right to write
        exit_on_failures(CheckResult(c.name, c.ok, c.detail, c.fix)
                         for c in results_out.check_results(settings, survey, start=True))
    flow = Dataflow(f"oracle_{survey.name.lower()}")
    if source is None and settings.kafka is not None:
        from confluent_kafka import OFFSET_BEGINNING, OFFSET_END

        from operators.io.kafka import consumer_config, kafka_input, wait_for_kafka

        k = settings.kafka
        where = ",".join(k.brokers)
        partitions = None  # the topic's, when known: where batches go (operators/runtime/routing.py)
        if _run_by_bytewax():  # about to run: wait here, where Ctrl-C works (building alone never connects)
            partitions = wait_for_kafka({"bootstrap.servers": where, **k.client_config}, k.topic, where=where,
                                        topic_var="KAFKA_TOPIC", exit_after_s=k.unreachable_exit_s,
                                        redact=settings.redact)
        consumed = kafka_input(
            "kafka", flow, brokers=list(k.brokers), topics=[k.topic], tail=True,
            starting_offset=OFFSET_BEGINNING if k.starting_offset == "beginning" else OFFSET_END,
            add_config=consumer_config({"group.id": k.group_id, **k.consumer_config}, where, k.unreachable_exit_s,
                                       settings.redact),
        )
        messages, consumer_errors = consumed.oks, op.filter_map("consumer_error", consumed.errs, consumer_error)
    else:
        source = source or SampleSource(settings.sample_dir, survey.topic)
        messages = op.input("sample", flow, source)
        consumer_errors = None
        partitions = len(source.list_parts()) if hasattr(source, "list_parts") else None

    needs_stamp = model.needs_stamp or (shadow is not None and shadow[0].needs_stamp)
    parsed = op.flat_map_batch("parse", messages, partial(parse_messages, survey.name, needs_stamp))
    split = op.branch("parsed_ok", parsed, is_alert)
    alerts, unparsed = split.trues, split.falses
    wanted = op.flat_map_batch("passed_filter", alerts, partial(steps.passed_filter, survey.name, settings.filter_name))
    # Alerts cross workers grouped by shard (one list per shard per input batch), not one by one.
    keys = batch_keys(settings.shards, bytewax_cluster(), partitions)
    grouped = op.flat_map_batch("group_by_shard", wanted, partial(group_by_key, partial(steps.shard_of, keys)))
    batches = batch("batch", grouped, settings.batch_size, timedelta(seconds=settings.batch_timeout_s))
    batch_stream = op.map("start", op.key_rm("unkey", batches), steps.start_batch)
    batch_stream = classify_steps(batch_stream, survey, model, name, lazy_store, shadow, predict)
    extra_dead = [unparsed] + ([consumer_errors] if consumer_errors is not None else [])
    write_outputs(batch_stream, survey, settings.results_csv, settings.deadletters, fritz=fritz, settings=settings,
                  slack=settings.slack.enabled, extra_dead=extra_dead, layout=CsvLayout.of(survey, model))
    if shadow is not None:
        shadow_lists = op.map("shadow_results", batch_stream, steps.shadow_of)
        if results_out.shadow_csv_wanted(settings):
            op.output("shadow_csv", op.map("key_shadow", shadow_lists, under_one_key),
                      results_csv_sink(settings.shadow_results_csv, survey.taxonomy, CsvLayout.of(survey, shadow[0])))
        results_out.shadow_outputs(shadow_lists, survey, settings, settings.deadletters)
    if _run_by_bytewax():  # the process is this run: its totals are the run's
        atexit.register(lambda: log.info("%s", metrics.run_summary(survey.name)))
    return flow


def load_survey_model(survey: Survey, weights: Path, kind: Optional[str], variable: str):
    """The ORACLE model in `weights`, refused (one line naming `variable`) when it does not
    exist or is not a model of the survey's taxonomy."""
    if not Path(weights).is_file():
        raise ModelLoadError(f"{weights} does not exist: set {variable} to an ORACLE {survey.name} checkpoint (.pth)")
    try:
        return load_oracle(weights, kind, taxonomy=survey.taxonomy)
    except TaxonomyMismatch as exc:
        raise TaxonomyMismatch(f"{exc}: point {variable} at a {survey.name} checkpoint") from None


def classify_steps(batch_stream, survey: Survey, model, name: str, lazy_store, shadow=None, predict=predict_proba):
    """Batches (`Batch`) → enrich → build inputs → [shadow] → classify → log line, with the
    backend's `predict` (predict_or_exit). Shared by the live flow and backfills (dataflows/backfill.py)."""
    needs_stamp = model.needs_stamp or (shadow is not None and shadow[0].needs_stamp)
    batch_stream = op.map("enrich", batch_stream, partial(steps.enrich, lazy_store.get, with_cutouts=needs_stamp))
    batch_stream = op.map("build_inputs", batch_stream, partial(steps.build_inputs, survey.build_inputs, with_stamp=needs_stamp))
    if shadow is not None:
        batch_stream = op.map("shadow", batch_stream, partial(steps.shadow, shadow[0], predict, shadow[1], survey.name))
    batch_stream = op.map("classify", batch_stream, partial(steps.classify, model, predict, name, survey.name))
    return op.map("log_batch", batch_stream, partial(steps.log_batch, survey.name))


def write_outputs(batch_stream, survey: Survey, results_csv: Path, deadletters: Path, *, settings: Settings,
                  fritz=None, slack: bool = False, extra_dead=(), layout: Optional[CsvLayout] = None) -> None:
    """Results CSV (+ Fritz annotations, Slack posts) and the dead-letter file; `layout`:
    the CSV's survey- and model-dependent columns (default: the survey's, no stamp)."""
    result_lists = op.map("result_lists", batch_stream, steps.results_of)
    if fritz is not None:
        # SkyPortal limits requests per token, not per process: every result goes to one
        # key, so one worker of the cluster makes every Fritz request (reads here, the
        # annotations in the "fritz" sink on the same worker) from one token bucket.
        to_fritz = op.key_on("to_fritz", op.filter("any_results", result_lists, bool), fritz_key)
        with_context = op.stateful_map("fritz_context", to_fritz,
                                       partial(add_fritz_context, fritz, settings.fritz.context_timeout))
        result_lists = op.key_rm("from_fritz", with_context)
    # The single CSV writer receives one list per model batch: fewer items to move.
    if settings.results.csv:
        op.output("csv", op.map("key_results", result_lists, under_one_key), results_csv_sink(
            results_csv, survey.taxonomy, layout or CsvLayout.of(survey, None),
            after_write=partial(metrics.observe_written, survey.name),
            after_skip=partial(metrics.count_skipped, survey.name)))
    results_out.results_outputs(result_lists, survey, settings, deadletters)  # every worker writes its own
    if fritz is not None or slack:
        results = op.flat_map("results", result_lists, each)
    if fritz is not None:
        op.output("fritz", results, FritzAnnotationSink(settings.fritz, survey.taxonomy, client=fritz))
    if slack:
        op.output("slack", op.map("key_slack", results, under_one_key), SlackSink(settings.slack, survey))
    dead = op.merge("dead", *extra_dead, op.flat_map("batch_dead", batch_stream, steps.dead_of))
    dead = op.inspect("count_dead", dead, partial(count_dead_letter, survey.name))
    results_out.dead_letter_outputs(dead, deadletters, settings, survey.name)
