"""Fink VRA features: Fink alerts in, the active-learning feature table out.

    python -m bytewax.run dataflows.fink_vra

Reads Fink's `fink_vra_ztf` Kafka topic when `FINK_VRA_KAFKA_BROKERS` is set,
the Avro/Parquet files `FINK_VRA_INPUT` names (`operators.vra.alert_files`), or
else the real Fink alerts shipped in `data/fink/`. Each alert becomes one
row of 21 features (`operators.vra.features`), appended once per candid to the
Parquet dataset `results/fink_vra/`; alerts Sherlock calls AGN or VS are
dropped and counted; anything unusable goes to
`results/fink_vra_deadletters.jsonl`. Configuration: `FinkVraConfig.from_env`.
"""

from __future__ import annotations

import atexit
import logging
from functools import partial
from typing import Optional

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source

from operators.runtime.service_settings import KafkaWaitSettings
from operators.io.deadletter import dead_letter_sink
from operators.vra.alert_files import AlertFileSource, file_alert
from operators.runtime import exits
from operators.runtime.logs import FORMAT, STOPPING, quiet_interrupt, watch_sigint
from operators.runtime.metrics import Tally
from dataflows.preflight import exit_on_failures, read_or_exit, validate_fink_vra
from operators.runtime.recovery import recovery_dir_in_use, run_by_bytewax
from operators.vra.steps import (
    EmbeddedAlertSource,
    FinkVraConfig,
    ParquetDatasetSink,
    candid_key,
    count_drops,
    decode_message,
    feature_row,
    is_alert,
    is_row,
    kafka_error_letter,
    kafka_message,
    kept_by_sherlock,
    letter_key,
    load_schema,
    log_drop_count,
    lookup_sherlock,
    object_key,
    passes_vra_cut,
    sherlock_class,
)
from operators.vra.sherlock import SherlockClient
from operators.vra.dust import open_sfd

log = logging.getLogger(__name__)


def count(tally: Tally, name: str, step_id: str, item) -> None:
    tally.add(name)
    if name == "messages":
        tally.maybe_log()


def is_dropped_by_cut(item) -> bool:
    return not passes_vra_cut(item)


def build_flow(cfg: FinkVraConfig, source: Optional[Source] = None, unreachable_exit_s: Optional[float] = None,
               tally: Optional[Tally] = None) -> Dataflow:
    """The flow for `cfg`; `source` (of `Message`s) replaces the configured input.
    `tally` counts the run (the summary line, every 60 s and at the end)."""
    flow = Dataflow("fink_vra")
    letters = []
    decoded = None
    tally = tally or Tally("fink_vra summary", TALLY)

    if source is not None:
        messages = op.input("inp", flow, source)
    elif cfg.uses_kafka:
        from confluent_kafka import OFFSET_BEGINNING, OFFSET_END

        from operators.io.kafka import consumer_config, kafka_input

        where, redact = ",".join(cfg.kafka_brokers), cfg.redact
        kin = kafka_input(
            "kafka_in", flow,
            brokers=list(cfg.kafka_brokers),
            topics=[cfg.topic],
            tail=cfg.kafka_tail,
            starting_offset=OFFSET_BEGINNING if cfg.kafka_starting_offset == "beginning" else OFFSET_END,
            add_config=consumer_config(cfg.kafka_config, where, unreachable_exit_s, redact),
        )
        messages = op.map("kafka_msg", kin.oks, kafka_message)
        letters.append(op.map("kafka_err", kin.errs, kafka_error_letter))
    elif cfg.uses_files:
        records = op.input("files", flow, AlertFileSource(cfg.input_path))
        decoded = op.map("file_alert", records, file_alert)
    else:
        messages = op.input("embedded", flow, EmbeddedAlertSource(cfg.embedded_dir, cfg.embedded_glob))

    if decoded is None:
        messages = op.inspect("count_messages", messages, partial(count, tally, "messages"))
        schema = load_schema(str(cfg.schema_path)) if cfg.schema_path else None
        decoded = op.flat_map("decode", messages, partial(decode_message, schema))
    else:  # file records: each one is a message read
        decoded = op.inspect("count_messages", decoded, partial(count, tally, "messages"))
    split = op.branch("decoded", decoded, is_alert)
    alerts, letters = split.trues, letters + [split.falses]

    alerts = op.inspect("count_alerts", alerts, partial(count, tally, "alerts"))
    if cfg.stream_filter:
        cut = op.branch("vra_cut", alerts, passes_vra_cut)
        alerts = cut.trues
        op.inspect("count_cut", cut.falses, partial(count, tally, "dropped by the cut"))

    if cfg.lasair_token:
        client = SherlockClient(
            cfg.lasair_token.get_secret_value(), cfg.lasair_endpoint, timeout=cfg.sherlock_timeout, retries=cfg.sherlock_retries
        )
        by_object = op.key_on("by_object", alerts, object_key)
        looked_up = op.key_rm("unkey", op.stateful_map("sherlock", by_object, partial(lookup_sherlock, client)))
        split = op.branch("sherlocked", looked_up, is_alert)
        letters.append(split.falses)
        kept = op.branch("agn_vs", split.trues, kept_by_sherlock)
        alerts = kept.trues
        op.inspect("count_agn_vs", kept.falses, partial(count, tally, "dropped as AGN/VS"))
        drops = op.stateful_map("drop_count", op.key_on("by_class", kept.falses, sherlock_class), count_drops)
        op.inspect("log_drops", drops, log_drop_count)
    else:
        log.warning("LASAIR_TOKEN not set: sep_arcsec is NaN and no AGN/VS alert is dropped")

    rows = op.map("features", alerts, partial(feature_row, open_sfd(cfg.sfd_dir)))
    split = op.branch("featured", rows, is_row)
    letters.append(split.falses)

    def rows_written(written: int, skipped: int) -> None:
        tally.add("rows written", written)
        tally.add("rows skipped as already written", skipped)

    op.output("parquet", op.key_on("by_candid", split.trues, candid_key),
              ParquetDatasetSink(cfg.out_dir, cfg.out_partitions, on_write=rows_written))
    all_letters = op.inspect("count_letters", op.merge("all_letters", *letters), partial(count, tally, "dead letters"))
    op.output("deadletters", op.key_on("dl_key", all_letters, letter_key), dead_letter_sink(cfg.deadletter_path))
    return flow


TALLY = ("messages", "alerts", "dropped by the cut", "dropped as AGN/VS", "rows written",
         "rows skipped as already written", "dead letters")


def configured_flow() -> Dataflow:
    """The flow as `python -m bytewax.run dataflows.fink_vra` starts it: a configuration
    problem is one line on stderr and exit status 2 (the checks of `python -m dataflows check fink_vra`)."""
    cfg = read_or_exit(FinkVraConfig.from_env)
    exit_after = read_or_exit(KafkaWaitSettings.read).unreachable_exit_s
    exit_on_failures(validate_fink_vra(cfg))
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format=FORMAT)
    if cfg.uses_kafka and run_by_bytewax():  # about to run: wait here, where Ctrl-C works
        from operators.io.kafka import wait_for_kafka

        where = ",".join(cfg.kafka_brokers)
        wait_for_kafka({"bootstrap.servers": where, **cfg.kafka_config}, cfg.topic, where=where,
                       topic_var="FINK_VRA_TOPIC", exit_after_s=exit_after, redact=cfg.redact)
    tally = Tally("fink_vra summary", TALLY)
    if cfg.uses_kafka:  # Ctrl-C: stop reading, drain, one line and the summary (operators/runtime/logs.py)
        watch_sigint()
        quiet_interrupt(on_stop=lambda: log.info("%s", tally.line().replace("summary", "run summary", 1)))
    # A lost cluster process, a full or unwritable output or recovery directory: one line, status 4/5.
    exits.install_for_bytewax_run(recovery_dir_in_use(), STOPPING)
    built = build_flow(cfg, unreachable_exit_s=exit_after, tally=tally)
    if run_by_bytewax():  # the process is this run
        atexit.register(lambda: log.info("%s", tally.line().replace("summary", "run summary", 1)))
    return built


flow = configured_flow()
