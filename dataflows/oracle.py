"""The ORACLE flow, shared by every survey.

    messages → parse → passed filter? → batch by shard → enrich → build inputs
             → classify → results CSV (+ Fritz, Slack) ; anything unusable → dead letters

`build_flow(survey)` reads the configuration from the environment
(`operators/config.py`): with `KAFKA_BROKERS` it follows the survey's BOOM
filter-results topic until stopped; otherwise it replays the bundled sample and
exits. With `MONGODB_URI` or `BOOM_DATABASE__HOST` it enriches from BOOM's
MongoDB; otherwise from the bundled documents.
"""

from __future__ import annotations

import atexit
import logging
from datetime import timedelta
from functools import partial
from typing import Optional

import bytewax.operators as op
from bytewax.dataflow import Dataflow

import torch

from models.oracle import predict_proba
from operators import metrics
from operators import oracle_steps as steps
from operators.batching import batch
from operators.config import Settings
from operators.deadletter import DeadLetter, dead_letter, dead_letter_sink
from operators.fritz import FritzAnnotationSink, FritzClient
from operators.logs import quiet_interrupt, setup_logging, watch_sigint
from operators.messages import FilterResult, origin_of, parse_message
from operators.preflight import exit_on_failures, read_or_exit, validate
from operators.results import results_csv_sink
from operators.recovery import enable_default_recovery, run_by_bytewax as _run_by_bytewax
from operators.slack import SlackSink
from operators.sources import SampleSource
from operators.store import EmbeddedStore
from operators.surveys import Survey, configured

log = logging.getLogger("alertflow.oracle")

FRITZ_SURVEYS = ("ZTF",)  # Fritz holds ZTF sources; LSST objects link to Babamul instead


def make_store(settings: Settings, survey: Survey):
    if settings.mongo is not None:
        from operators.mongo_store import MongoStore

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


def count_message(survey: str, step_id: str, msg) -> None:
    metrics.count_messages(survey)


def count_dead_letter(survey: str, step_id: str, letter) -> None:
    metrics.count_dead_letters(survey, letter)


def is_alert(item) -> bool:
    return isinstance(item, FilterResult)


def keyed(item):
    return ("out", item)


def build_flow(survey: Survey, settings: Optional[Settings] = None, source=None, store=None) -> Dataflow:
    """The dataflow for `survey`; `source` and `store` override the configured ones (tests).

    Configuration problems end the process here, before any dataflow exists: one line
    each on stderr, exit status 2 (operators/preflight.py, the same checks as
    `python -m dataflows check`). Run by `python -m bytewax.run` with Kafka, it then waits
    for the brokers (operators/kafka_input.py); building alone connects nowhere."""
    if settings is None:
        settings = read_or_exit(lambda: Settings.from_env(survey))
    survey, settings = configured(survey, settings)
    checks, model = validate(settings, survey)
    exit_on_failures(c for c in checks if source is None or c.name != "input")  # a given source needs no sample
    setup_logging(settings.log_file, settings.log_level)
    metrics.begin(survey.name)
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
    model_name = f"ORACLE-{model.kind}:{settings.weights.name}"
    lazy_store = steps.Lazy((lambda: store) if store is not None else partial(make_store, settings, survey))
    metrics.start_exporter(settings.metrics_port)
    fritz = FritzClient(settings.fritz) if settings.fritz.enabled and survey.name in FRITZ_SURVEYS else None
    log.info("%s flow: filter %r, model %s, input %s, store %s", survey.name, settings.filter_name, model_name,
             "kafka " + ",".join(settings.kafka.brokers) + f" topic {settings.kafka.topic}" if settings.kafka else "bundled sample",
             settings.mongo.describe() if settings.mongo else "bundled documents")

    flow = Dataflow(f"oracle_{survey.name.lower()}")
    if source is None and settings.kafka is not None:
        from confluent_kafka import OFFSET_BEGINNING, OFFSET_END

        from operators.kafka_input import consumer_config, kafka_input, wait_for_kafka

        k = settings.kafka
        where = ",".join(k.brokers)
        if _run_by_bytewax():  # about to run: wait here, where Ctrl-C works (building alone never connects)
            wait_for_kafka({"bootstrap.servers": where, **k.client_config}, k.topic, where=where,
                           topic_var="KAFKA_TOPIC", exit_after_s=k.unreachable_exit_s, redact=settings.redact)
        consumed = kafka_input(
            "kafka", flow, brokers=list(k.brokers), topics=[k.topic], tail=True,
            starting_offset=OFFSET_BEGINNING if k.starting_offset == "beginning" else OFFSET_END,
            add_config=consumer_config({"group.id": k.group_id, **k.client_config}, where, k.unreachable_exit_s,
                                       settings.redact),
        )
        messages, consumer_errors = consumed.oks, op.filter_map("consumer_error", consumed.errs, consumer_error)
    else:
        messages = op.input("sample", flow, source or SampleSource(settings.sample_dir, survey.topic))
        consumer_errors = None

    messages = op.inspect("count_in", messages, partial(count_message, survey.name))
    parsed = op.map("parse", messages, partial(parse_message, keep_template=model.needs_stamp))
    split = op.branch("parsed_ok", parsed, is_alert)
    alerts, unparsed = split.trues, split.falses
    wanted = op.filter("passed_filter", alerts, partial(steps.passed_filter, survey.name, settings.filter_name))
    batches = batch("batch", op.key_on("shard", wanted, partial(steps.shard_of, settings.shards)),
                    settings.batch_size, timedelta(seconds=settings.batch_timeout_s))
    work = op.map("start", op.key_rm("unkey", batches), steps.start_batch)
    work = op.map("enrich", work, partial(steps.enrich, lazy_store.get, with_cutouts=model.needs_stamp))
    work = op.map("build_inputs", work, partial(steps.build_inputs, survey.build_inputs, with_stamp=model.needs_stamp))
    work = op.map("classify", work, partial(steps.classify, model, predict_proba, model_name, survey.name))
    if fritz is not None:
        work = op.map("fritz_context", work, partial(steps.add_fritz_context, fritz, settings.fritz.context_timeout))
    work = op.map("log_batch", work, partial(steps.log_batch, survey.name))
    results = op.flat_map("results", work, steps.results_of)
    op.output("csv", op.map("key_results", results, keyed), results_csv_sink(
        settings.results_csv, survey.taxonomy, after_write=partial(metrics.observe_written, survey.name),
        after_skip=partial(metrics.count_skipped, survey.name)))
    if fritz is not None:
        op.output("fritz", results, FritzAnnotationSink(settings.fritz, survey.taxonomy, client=fritz))
    if settings.slack.enabled:
        op.output("slack", op.map("key_slack", results, keyed), SlackSink(settings.slack, survey.taxonomy, fritz=fritz))

    dead = op.merge("dead", unparsed, op.flat_map("batch_dead", work, steps.dead_of),
                    *([consumer_errors] if consumer_errors is not None else []))
    dead = op.inspect("count_dead", dead, partial(count_dead_letter, survey.name))
    op.output("dead_letters", op.map("key_dead", dead, keyed), dead_letter_sink(settings.deadletters))
    if _run_by_bytewax():  # the process is this run: its totals are the run's
        atexit.register(lambda: log.info("%s", metrics.run_summary(survey.name)))
    return flow
