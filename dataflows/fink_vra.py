"""Fink VRA features: Fink alerts in, the active-learning feature table out.

    python -m bytewax.run dataflows.fink_vra

Reads Fink's `fink_vra_ztf` Kafka topic when `FINK_VRA_KAFKA_BROKERS` is set,
the Avro/Parquet files `FINK_VRA_INPUT` names (`operators.fink_files`), or
else the real Fink alerts shipped in `data/fink/`. Each alert becomes one
row of 21 features (`operators.vra_features`), appended once per candid to the
Parquet dataset `results/fink_vra/`; alerts Sherlock calls AGN or VS are
dropped and counted; anything unusable goes to
`results/fink_vra_deadletters.jsonl`. Configuration: `FinkVraConfig.from_env`.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Optional

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source

from operators.deadletter import DeadLetterSink
from operators.fink_files import AlertFileSource, file_alert
from operators.fink_vra import (
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
from operators.lasair_sherlock import SherlockClient
from operators.sfd_ebv import open_sfd

log = logging.getLogger(__name__)


def build_flow(cfg: FinkVraConfig, source: Optional[Source] = None) -> Dataflow:
    """The flow for `cfg`; `source` (of `Message`s) replaces the configured input."""
    flow = Dataflow("fink_vra")
    letters = []
    decoded = None

    if source is not None:
        messages = op.input("inp", flow, source)
    elif cfg.uses_kafka:
        from bytewax.connectors.kafka import operators as kop
        from confluent_kafka import OFFSET_BEGINNING, OFFSET_END

        kin = kop.input(
            "kafka_in", flow,
            brokers=list(cfg.kafka_brokers),
            topics=[cfg.topic],
            tail=cfg.kafka_tail,
            starting_offset=OFFSET_BEGINNING if cfg.kafka_starting_offset == "beginning" else OFFSET_END,
            add_config=dict(cfg.kafka_config) or None,
        )
        messages = op.map("kafka_msg", kin.oks, kafka_message)
        letters.append(op.map("kafka_err", kin.errs, kafka_error_letter))
    elif cfg.uses_files:
        records = op.input("files", flow, AlertFileSource(cfg.input_path))
        decoded = op.map("file_alert", records, file_alert)
    else:
        messages = op.input("embedded", flow, EmbeddedAlertSource(cfg.embedded_dir, cfg.embedded_glob))

    if decoded is None:
        schema = load_schema(str(cfg.schema_path)) if cfg.schema_path else None
        decoded = op.flat_map("decode", messages, partial(decode_message, schema))
    split = op.branch("decoded", decoded, is_alert)
    alerts, letters = split.trues, letters + [split.falses]

    if cfg.stream_filter:
        alerts = op.filter("vra_cut", alerts, passes_vra_cut)

    if cfg.lasair_token:
        client = SherlockClient(
            cfg.lasair_token, cfg.lasair_endpoint, timeout=cfg.sherlock_timeout, retries=cfg.sherlock_retries
        )
        by_object = op.key_on("by_object", alerts, object_key)
        looked_up = op.key_rm("unkey", op.stateful_map("sherlock", by_object, partial(lookup_sherlock, client)))
        split = op.branch("sherlocked", looked_up, is_alert)
        letters.append(split.falses)
        kept = op.branch("agn_vs", split.trues, kept_by_sherlock)
        alerts = kept.trues
        drops = op.stateful_map("drop_count", op.key_on("by_class", kept.falses, sherlock_class), count_drops)
        op.inspect("log_drops", drops, log_drop_count)
    else:
        log.warning("LASAIR_TOKEN not set: sep_arcsec is NaN and no AGN/VS alert is dropped")

    rows = op.map("features", alerts, partial(feature_row, open_sfd(cfg.sfd_dir)))
    split = op.branch("featured", rows, is_row)
    letters.append(split.falses)

    op.output("parquet", op.key_on("by_candid", split.trues, candid_key),
              ParquetDatasetSink(cfg.out_dir, cfg.out_partitions))
    op.output("deadletters", op.key_on("dl_key", op.merge("all_letters", *letters), letter_key),
              DeadLetterSink(cfg.deadletter_path))
    return flow


flow = build_flow(FinkVraConfig.from_env())
