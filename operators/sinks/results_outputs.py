"""The results topic and collection wired into a flow, their dead letters, and their checks.

    result lists ─┬─ flatten → KafkaSinkMessage → results topic    (ORACLE_RESULTS_TOPIC)
                  └─ results collection                              (ORACLE_RESULTS_COLLECTION)
    shadow lists ──── <collection>_shadow                            (never the topic)
    dead letters ─┬─ the dead-letter file: one per flow, or one per process with ALERTFLOW_RESULTS_CSV=false
                  └─ dead-letter topic                               (ALERTFLOW_DEADLETTER_TOPIC)

Records a sink's server refuses (Kafka: too large; MongoDB: a write error) become
dead letters too, written by the sink itself (`DeliveryLetters`) to
`oracle_<survey>_deadletters-delivery-<process>.jsonl` and to the dead-letter topic.

`check_results` (one OK/FAIL line per output, for `python -m dataflows check`) and
`prepare_results` (the flow's start: the same, exit 2 on a failure) share the work.
"""

from __future__ import annotations

import copy
import logging
import threading
from functools import partial
from pathlib import Path
from typing import Optional

import bytewax.operators as op
from bytewax.dataflow import Stream

from operators.io.deadletter import DeadLetter, _log_letters, dead_letter_sink
from operators.io.files import AppendFileSink, _AppendPartition
from operators.oracle.result_record import time_field
from operators.runtime.routing import bytewax_cluster
from operators.sinks.results_collection import NotAllowed, ResultsCollectionSink, prepare_collection
from operators.sinks.results_topic import ResultsTopicSink, letter_message, producer_config, result_message

log = logging.getLogger("alertflow.results")


class CheckLine:
    """One OK/FAIL line (the fields of dataflows.preflight.CheckResult, which sits above us)."""

    def __init__(self, name: str, ok: bool, detail: str, fix: str = ""):
        self.name, self.ok, self.detail, self.fix = name, ok, detail, fix


def process_id() -> int:
    """This process's id in a `python -m bytewax.run -i N` cluster (0 otherwise)."""
    cluster = bytewax_cluster()
    return cluster.process_id if cluster is not None else 0


def per_process(path: Path, process: Optional[int] = None) -> Path:
    """`…/oracle_ztf_deadletters.jsonl` → `…/oracle_ztf_deadletters-<process>.jsonl`."""
    return path.with_name(f"{path.stem}-{process_id() if process is None else process}{path.suffix}")


# ---------------------------------------------------------------- settings that need two models


def boom_collections(survey) -> set[str]:
    c = survey.collections
    return {c.alerts, c.aux, c.cutouts, "filters", "users"}


def settings_problems(settings, survey) -> list[CheckLine]:
    """What the results settings ask that the rest of the configuration cannot give."""
    r, out = settings.results, []
    if r.collection and settings.mongo is None:
        out.append(CheckLine("results", False, f"ORACLE_RESULTS_COLLECTION={r.collection} needs a MongoDB, and the "
                                               f"flow reads the bundled documents",
                             "set MONGODB_URI (or BOOM_DATABASE__HOST) to the MongoDB to write to, or unset "
                             "ORACLE_RESULTS_COLLECTION"))
    if r.collection and r.collection in boom_collections(survey):
        out.append(CheckLine("results", False, f"ORACLE_RESULTS_COLLECTION={r.collection} is one of BOOM's own "
                                               f"collections, which alertflow never writes",
                             f"set ORACLE_RESULTS_COLLECTION to a collection of its own, e.g. "
                             f"{survey.name}_alerts_oracle"))
    if r.shadow_collection and r.shadow_collection in boom_collections(survey):
        out.append(CheckLine("results", False, f"the shadow collection {r.shadow_collection} is one of BOOM's",
                             "set ORACLE_RESULTS_COLLECTION to another name"))
    for variable, topic in (("ORACLE_RESULTS_TOPIC", r.topic), ("ALERTFLOW_DEADLETTER_TOPIC", r.deadletter_topic)):
        if topic and settings.kafka is None:
            out.append(CheckLine("results", False, f"{variable}={topic} is on the flow's Kafka cluster, and "
                                                   f"KAFKA_BROKERS is unset",
                                 f"set KAFKA_BROKERS (and KAFKA_OPT_* for its security), or unset {variable}"))
        if topic and settings.kafka is not None and topic == settings.kafka.topic:
            out.append(CheckLine("results", False, f"{variable}={topic} is the topic the flow reads (KAFKA_TOPIC)",
                                 f"give {variable} a topic of its own"))
    return out


# ---------------------------------------------------------------- services: check and start


def ensure_topic(settings, topic: str, variable: str, create: bool, timeout_s: float = 5.0) -> CheckLine:
    """The topic exists, or (with `create`) was created with the input topic's partition count;
    without `create`, that it could be (the broker validates the request)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    k = settings.kafka
    where = ",".join(k.brokers)
    conf = {**producer_config(where, k.client_config), "log_level": 0}
    for key in ("enable.idempotence", "compression.type", "linger.ms", "message.timeout.ms"):
        conf.pop(key, None)
    admin = AdminClient(conf)
    try:
        topics = admin.list_topics(timeout=timeout_s).topics
    except Exception as exc:  # noqa: BLE001 - KafkaException on timeout
        return CheckLine(variable.lower(), False, f"Kafka {where} unreachable within {timeout_s:.0f} s "
                                                  f"({settings.redact(str(exc))})",
                         "check KAFKA_BROKERS, the network and KAFKA_OPT_* security settings")
    if topic in topics and topics[topic].error is None:
        return CheckLine(variable.lower(), True, f"{where} topic {topic}: {len(topics[topic].partitions)} "
                                                 f"partition(s), present")
    source = topics.get(k.topic)
    partitions = len(source.partitions) if source is not None and source.partitions else 1
    future = admin.create_topics([NewTopic(topic, partitions)], validate_only=not create,
                                 request_timeout=timeout_s)[topic]
    try:
        future.result(timeout=timeout_s)
    except Exception as exc:  # noqa: BLE001 - KafkaException: not allowed, invalid, ...
        err = exc.args[0] if exc.args else exc
        text = settings.redact(err.str() if hasattr(err, "str") else str(err))
        if hasattr(err, "code") and err.code() == 36:  # TOPIC_ALREADY_EXISTS: created by another process
            return CheckLine(variable.lower(), True, f"{where} topic {topic}: present")
        return CheckLine(variable.lower(), False, f"{where}: topic {topic} does not exist and cannot be created "
                                                  f"({text})",
                         f"create {topic} on the cluster (or let this user create topics), or unset {variable}")
    verb = "created" if create else "absent, can be created"
    return CheckLine(variable.lower(), True, f"{where} topic {topic}: {verb} ({partitions} partition(s), as "
                                             f"{k.topic})")


def check_collection(settings, survey, collection: str, label: str, wait: bool = False) -> CheckLine:
    """Indexes created and the right to write proven, or one line saying why not."""
    from operators.oracle.mongo_store import acquire_client, release_client

    m, database = settings.mongo, settings.results.database_for(settings.mongo.database)
    where = f"{m.describe()} {database}.{collection}"
    try:
        client = acquire_client(m)
        try:
            if not wait:
                client.admin.command("ping")
            names = prepare_collection(client, m, database, collection, survey.name, wait=wait)
        finally:
            release_client(m)
    except NotAllowed as exc:
        detail, _, fix = str(exc).partition(" -> ")
        return CheckLine(label, False, f"{where}: {detail}", fix)
    except Exception as exc:  # noqa: BLE001 - unreachable, refused
        return CheckLine(label, False, f"{where}: {settings.redact(f'{type(exc).__name__}: {exc}')[:240]}",
                         "check MONGODB_URI or BOOM_DATABASE__HOST/PORT/USERNAME/PASSWORD/TLS, "
                         "ORACLE_RESULTS_DATABASE and the network")
    return CheckLine(label, True, f"{where}: writable, indexes {', '.join(names)} (time field "
                                  f"{time_field(survey.name)})")


def check_results(settings, survey, start: bool = False) -> list[CheckLine]:
    """One line per configured output: settings, then the topic(s) and collection(s).
    `check` asks once (`start=False`: nothing is created, the first failure is the answer);
    the flow's start (`start=True`) waits for the brokers and MongoDB, creates a missing topic
    and the indexes, and fails only on what waiting cannot fix (not allowed, invalid)."""
    r = settings.results
    out = settings_problems(settings, survey)
    if out:
        return out
    topics = [(v, t) for v, t in (("ORACLE_RESULTS_TOPIC", r.topic), ("ALERTFLOW_DEADLETTER_TOPIC",
                                                                      r.deadletter_topic)) if t]
    if topics and start:
        from operators.io.kafka import wait_for_kafka

        k = settings.kafka
        wait_for_kafka({"bootstrap.servers": ",".join(k.brokers), **k.client_config}, "", where=",".join(k.brokers),
                       topic_var="KAFKA_BROKERS", exit_after_s=k.unreachable_exit_s, redact=settings.redact)
    out.extend(ensure_topic(settings, topic, variable, create=start) for variable, topic in topics)
    if r.collection:
        out.append(check_collection(settings, survey, r.collection, "results", wait=start))
        if settings.oracle.shadow_weights is not None:
            out.append(check_collection(settings, survey, r.shadow_collection, "shadow", wait=start))
    return out


# ---------------------------------------------------------------- dead letters of the sinks


class DeliveryLetters:
    """Dead letters of records a server refused, written by the sinks themselves (a sink has
    no stream to send them down): one JSON line each, appended under a lock (the workers of a
    process share the file), and to the dead-letter topic when there is one."""

    def __init__(self, path: Path, topic_sink: Optional[ResultsTopicSink] = None):
        self.path = path
        self._lock = threading.Lock()
        self._topic = topic_sink
        self._producer = None

    def __call__(self, letters: list[DeadLetter]) -> None:
        if not letters:
            return
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write("".join(d.to_json() + "\n" for d in letters))
            _log_letters(letters)
            if self._topic is not None:
                if self._producer is None:
                    self._producer = self._topic.build("delivery_letters", 0, 1)
                self._producer.write_batch([letter_message(d) for d in letters])


# ---------------------------------------------------------------- per-process dead-letter files


class PerProcessFileSink(AppendFileSink):
    """An `AppendFileSink` with one file per process (`…-<process>.jsonl` in the process's own
    working directory): each process lists only its own file, and items keyed by the file's
    name go to it, so the processes of a cluster need no shared filesystem."""

    def __init__(self, base: AppendFileSink, processes: int):
        super().__init__(base.path, base.encode, base.key, base.existing_keys, base.header, base.after_write,
                         base.window, base.grouped, base.after_skip)
        self.names = sorted(per_process(base.path, p).name for p in range(processes))
        self.own = per_process(base.path)

    def list_parts(self) -> list[str]:
        return [self.own.name]

    def part_fn(self, item_key: str) -> int:
        return self.names.index(item_key)  # bytewax indexes the sorted set of every process's parts

    def build_part(self, step_id: str, for_part: str, resume_state: Optional[int]) -> _AppendPartition:
        mine = copy.copy(self)
        mine.path = self.path.with_name(for_part)
        return _AppendPartition(mine, resume_state)


def _keyed(name: str, letter):
    return (name, letter)


def dead_letter_outputs(dead: Stream, path: Path, settings, survey_name: str) -> None:
    """The dead-letter file (one per flow, or per process with ALERTFLOW_RESULTS_CSV=false),
    and the dead-letter topic."""
    r = settings.results
    if r.csv:
        op.output("dead_letters", op.map("key_dead", dead, partial(_keyed, "out")), dead_letter_sink(path))
    else:
        cluster = bytewax_cluster()
        sink = PerProcessFileSink(dead_letter_sink(path), cluster.processes if cluster else 1)
        op.output("dead_letters", op.map("key_dead", dead, partial(_keyed, sink.own.name)), sink)
    if r.deadletter_topic:
        op.output("deadletter_topic", op.map("deadletter_messages", dead, letter_message),
                  deadletter_topic_sink(settings, survey_name))


def deadletter_topic_sink(settings, survey_name: str) -> ResultsTopicSink:
    def log_only(letters: list[DeadLetter]) -> None:
        for d in letters:
            log.error("the dead-letter topic refused a dead letter (it stays in the file): %s", d.reason)

    return ResultsTopicSink(",".join(settings.kafka.brokers), settings.results.deadletter_topic,
                            settings.kafka.client_config, survey=survey_name, refuse=log_only,
                            label="dead-letter topic", redact=settings.redact)


# ---------------------------------------------------------------- results


_delivery: dict[Path, DeliveryLetters] = {}


def delivery_letters(settings, deadletters: Path, survey_name: str) -> DeliveryLetters:
    """The process's writer of delivery dead letters (one per file: the sinks share its lock)."""
    path = per_process(deadletters.with_name(f"{deadletters.stem}-delivery{deadletters.suffix}"))
    if path not in _delivery:
        topic = deadletter_topic_sink(settings, survey_name) if settings.results.deadletter_topic else None
        _delivery[path] = DeliveryLetters(path, topic)
    return _delivery[path]


def results_outputs(result_lists: Stream, survey, settings, deadletters: Path) -> None:
    """The results topic and the results collection of `result_lists` (lists of `Result`)."""
    r = settings.results
    if not (r.topic or r.collection):
        return
    refuse = delivery_letters(settings, deadletters, survey.name)
    if r.topic:
        messages = op.flat_map("topic_messages", result_lists, partial(_messages, survey.taxonomy.name))
        op.output("results_topic", messages, ResultsTopicSink(
            ",".join(settings.kafka.brokers), r.topic, settings.kafka.client_config, survey=survey.name,
            refuse=refuse, redact=settings.redact))
    if r.collection:
        op.output("results_collection", op.filter("any_to_store", result_lists, bool), ResultsCollectionSink(
            settings.mongo, r.database_for(settings.mongo.database), r.collection, survey=survey.name,
            taxonomy=survey.taxonomy.name, refuse=refuse))


def shadow_outputs(shadow_lists: Stream, survey, settings, deadletters: Path) -> None:
    """The shadow model's results into `<collection>_shadow` (never the topic)."""
    r = settings.results
    if r.collection:
        op.output("shadow_collection", op.filter("any_shadow", shadow_lists, bool), ResultsCollectionSink(
            settings.mongo, r.database_for(settings.mongo.database), r.shadow_collection, survey=survey.name,
            taxonomy=survey.taxonomy.name, refuse=delivery_letters(settings, deadletters, survey.name),
            shadow=True))


def _messages(taxonomy: str, results: list) -> list:
    return [result_message(taxonomy, r) for r in results]


def shadow_csv_wanted(settings) -> bool:
    """The shadow CSV is written unless the CSV is off and the shadow collection takes its place."""
    return settings.results.csv or not settings.results.collection


