"""The ORACLE flow, shared by every survey.

    messages → parse → passed filter? → batch by shard → enrich → build inputs
             → classify → results CSV (+ Fritz, Slack) ; anything unusable → dead letters

`build_flow(survey)` reads the configuration from the environment
(`operators/runtime/config.py`): with `KAFKA_BROKERS` it follows the survey's BOOM
filter-results topic until stopped; otherwise it replays the bundled sample and
exits. With `MONGODB_URI` or `BOOM_DATABASE__HOST` it enriches from BOOM's
MongoDB; otherwise from the bundled documents. With `ORACLE_<SURVEY>_SHADOW_WEIGHTS`
a second model classifies the same inputs (step `shadow`, before `classify`) into
the shadow CSV and nowhere else.

Set-up (settings, models, store, clients, process hooks, waiting for Kafka) is
`prepare` (dataflows/oracle_runtime.py); `build_flow` only wires named steps, top
to bottom. `classify_steps` and `write_outputs` are bytewax operators shared with
backfills (dataflows/backfill.py).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Optional

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream, operator

from dataflows.oracle_runtime import Models, Outputs, Runtime, make_store, prepare  # noqa: F401 - make_store: callers
from models.oracle.loading import load_oracle
from models.oracle.networks import ModelLoadError, TaxonomyMismatch
from operators.io.deadletter import DeadLetter, dead_letter
from operators.oracle import steps
from operators.oracle.messages import FilterResult, origin_of, parse_message
from operators.oracle.results import CsvLayout, csv_rows, results_csv_sink
from operators.oracle.surveys import Survey
from operators.runtime import metrics
from operators.runtime.batching import batch, group_by_key
from operators.runtime.config import Settings
from operators.runtime.routing import batch_keys, bytewax_cluster
from operators.samples.source import SampleSource
from operators.sinks import results_outputs as results_out

log = logging.getLogger("alertflow.oracle")


def build_flow(survey: Survey, settings: Optional[Settings] = None, source=None, store=None) -> Dataflow:
    """The dataflow for `survey`; `source` and `store` override the configured ones (tests).

    Configuration problems end the process in `prepare`, before any dataflow exists: one
    line each on stderr, exit status 2 (dataflows/preflight.py, the same checks as
    `python -m dataflows check`)."""
    rt = prepare(survey, settings, store=store, source_given=source is not None)
    s = rt.settings.oracle
    flow = Dataflow(f"oracle_{rt.survey.name.lower()}")
    messages, input_errors, partitions = read_input(flow, rt, source)
    parsed = op.flat_map_batch("parse", messages, partial(parse_messages, rt.survey.name, rt.models.needs_stamp))
    split = op.branch("parsed_ok", parsed, is_alert)
    wanted = op.flat_map_batch("passed_filter", split.trues, partial(steps.passed_filter, rt.survey.name, s.filter_name))
    # Alerts cross workers grouped by shard (one list per shard per input batch), not one by one.
    keys = batch_keys(s.shards, bytewax_cluster(), partitions)
    grouped = op.flat_map_batch("group_by_shard", wanted, partial(group_by_key, partial(steps.shard_of, keys)))
    batches = batch("batch", grouped, s.batch_size, timedelta(seconds=s.batch_timeout_s))
    started = op.map("start", op.key_rm("unkey", batches), steps.start_batch)
    classified = classify_steps("classify_steps", started, rt.survey, rt.models, rt.store)
    write_outputs("write_outputs", classified, rt.outputs, split.falses, *input_errors)
    return flow


# ---------------------------------------------------------------- the input


def read_input(flow: Dataflow, rt: Runtime, source=None) -> tuple[Stream, list[Stream], Optional[int]]:
    """(messages, consumer errors as dead letters, the input's partition count when known):
    the Kafka topic, or `source`, or the bundled sample. Top-level steps (`kafka`, `sample`):
    their ids key the offsets in the recovery snapshots."""
    k = rt.settings.kafka
    if source is None and k is not None:
        from confluent_kafka import OFFSET_BEGINNING, OFFSET_END

        from operators.io.kafka import consumer_config, kafka_input

        consumed = kafka_input(
            "kafka", flow, brokers=list(k.brokers), topics=[k.topic], tail=True,
            starting_offset=OFFSET_BEGINNING if k.starting_offset == "beginning" else OFFSET_END,
            add_config=consumer_config({"group.id": k.group_id, **k.consumer_config}, ",".join(k.brokers),
                                       k.unreachable_exit_s, rt.settings.redact),
        )
        return consumed.oks, [op.filter_map("consumer_error", consumed.errs, consumer_error)], rt.partitions
    source = source or SampleSource(rt.settings.outputs.sample_dir, rt.survey.topic)
    partitions = len(source.list_parts()) if hasattr(source, "list_parts") else None
    return op.input("sample", flow, source), [], partitions


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


def is_alert(item) -> bool:
    return isinstance(item, FilterResult)


# ---------------------------------------------------------------- the shared operators


@operator
def classify_steps(step_id: str, batches: Stream, survey: Survey, models: Models, store: steps.OncePerProcess) -> Stream:
    """Batches (`Batch`) → enrich → build inputs → [shadow] → classify → log line, with the
    backend's `models.predict`. Shared by the live flow and backfills (dataflows/backfill.py)."""
    stamp = models.needs_stamp
    batches = op.map("enrich", batches, partial(steps.enrich, store.get, with_cutouts=stamp))
    batches = op.map("build_inputs", batches, partial(steps.build_inputs, survey.build_inputs, with_stamp=stamp))
    if models.shadow is not None:
        batches = op.map("shadow", batches, partial(steps.shadow, models.shadow.model, models.predict,
                                                    models.shadow.name, survey.name))
    batches = op.map("classify", batches, partial(steps.classify, models.main.model, models.predict, models.main.name,
                                                  survey.name))
    return op.map("log_batch", batches, partial(steps.log_batch, survey.name))


@operator
def write_outputs(step_id: str, batches: Stream, out: Outputs, *dead: Stream) -> None:
    """Results CSV, topic and collection (+ Fritz annotations, Slack posts, the shadow outputs)
    and the dead letters, which also take the `dead` streams (unparsable messages, consumer errors)."""
    survey = out.survey
    result_lists = op.map("result_lists", batches, steps.results_of)
    if out.fritz is not None:
        from operators.sinks.fritz import add_fritz_context, fritz_key

        # SkyPortal limits requests per token, not per process: every result goes to one
        # key, so one worker of the cluster makes every Fritz request (reads here, the
        # annotations in the "fritz" sink on the same worker) from one token bucket.
        to_fritz = op.key_on("to_fritz", op.filter("any_results", result_lists, bool), fritz_key)
        with_context = op.stateful_map("fritz_context", to_fritz,
                                       partial(add_fritz_context, out.fritz, out.fritz_config.context_timeout))
        result_lists = op.key_rm("from_fritz", with_context)
    if out.settings.results.csv:  # the single CSV writer receives each model batch's rows, encoded where classified
        layout = out.layout or CsvLayout.of(survey, None)
        rows = op.filter_map("csv_rows", result_lists, partial(csv_rows, survey.taxonomy, layout))
        op.output("csv", op.key_on("key_results", rows, under_one_key), results_csv_sink(
            out.results_csv, survey.taxonomy, layout,
            after_write=partial(metrics.observe_written, survey.name),
            after_skip=partial(metrics.count_skipped, survey.name)))
    results_out.results_outputs(result_lists, survey, out.settings, out.deadletters)  # every worker writes its own
    if out.fritz is not None or out.slack is not None:
        results = op.flatten("results", result_lists)
    if out.fritz is not None:
        from operators.sinks.fritz import FritzAnnotationSink

        op.output("fritz", results, FritzAnnotationSink(out.fritz_config, survey.taxonomy, client=out.fritz))
    if out.slack is not None:
        from operators.sinks.slack import SlackSink

        op.output("slack", op.key_on("key_slack", results, under_one_key), SlackSink(out.slack, survey))
    if out.shadow_csv is not None:
        shadow = op.map("shadow_results", batches, steps.shadow_of)
        if results_out.shadow_csv_wanted(out.settings):
            layout = out.shadow_layout or CsvLayout.of(survey, None)
            shadow_rows = op.filter_map("shadow_csv_rows", shadow, partial(csv_rows, survey.taxonomy, layout))
            op.output("shadow_csv", op.key_on("key_shadow", shadow_rows, under_one_key),
                      results_csv_sink(out.shadow_csv, survey.taxonomy, layout))
        results_out.shadow_outputs(shadow, survey, out.settings, out.deadletters)
    letters = op.merge("dead", *dead, op.flat_map("batch_dead", batches, steps.dead_of))
    letters = op.inspect("count_dead", letters, partial(count_dead_letter, survey.name))
    results_out.dead_letter_outputs(letters, out.deadletters, out.settings, survey.name)


def under_one_key(_item) -> str:
    """The one key of a single-writer sink (CSV, Slack, dead letters)."""
    return "out"


def count_dead_letter(survey: str, step_id: str, letter) -> None:
    metrics.count_dead_letters(survey, letter)


def load_survey_model(survey: Survey, weights: Path, kind: Optional[str], variable: str):
    """The ORACLE model in `weights`, refused (one line naming `variable`) when it does not
    exist or is not a model of the survey's taxonomy."""
    if not Path(weights).is_file():
        raise ModelLoadError(f"{weights} does not exist: set {variable} to an ORACLE {survey.name} checkpoint (.pth)")
    try:
        return load_oracle(weights, kind, taxonomy=survey.taxonomy)
    except TaxonomyMismatch as exc:
        raise TaxonomyMismatch(f"{exc}: point {variable} at a {survey.name} checkpoint") from None
