"""The results topic: bytewax's Kafka sink with delivery reports, waits and dead letters.

    results → KafkaSinkMessage(key=objectId, value=encode(to_record(result))) → ResultsTopicSink

`ResultsTopicSink` is bytewax's `KafkaSink` (one producer per worker: each worker
publishes what it classified) whose partition does what bytewax's leaves out:

- every message gets a delivery report; `write_batch` returns only when every
  message of the batch is acknowledged (so a recovery snapshot never runs ahead
  of the topic: after `kill -9`, what the restart replays is at most re-sent);
- a record Kafka refuses for good (too large, invalid) becomes a dead letter with
  Kafka's reason (`refuse`), the rest of the batch is delivered;
- an outage (brokers down, timeouts) is waited out: the undelivered messages are
  produced again after a growing pause, one warning line per round, Ctrl-C ends the
  wait at once (`interruptible_sleep`); nothing is dropped;
- the producer is idempotent and compresses (`producer_config`): librdkafka's own
  retries never duplicate or reorder within a partition.

Duplicates are possible only for alerts classified again after the last snapshot
(bytewax's at-least-once): same candid, same probabilities, a later `processed_at`.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Mapping, Optional

from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage
from bytewax.connectors.kafka import _KafkaSinkPartition  # bytewax's partition: produce + flush per batch
from confluent_kafka import KafkaError, KafkaException, Producer

from operators.io.deadletter import DeadLetter, dead_letter
from operators.io.kafka import RateLimitedLog, admin_config
from operators.oracle.result_record import encode, to_record
from operators.oracle.results import Result
from operators.runtime import metrics
from operators.runtime.logs import STOPPING, draining, interruptible_sleep, stop_now

log = logging.getLogger("alertflow.results_topic")

# Ours unless KAFKA_OPT_* says otherwise. Idempotence: librdkafka's retries neither
# duplicate nor reorder; lz4: cheap on the CPU, ~3x on these records (the schema
# travels in every container); a message not acknowledged in 60 s comes back to us
# as a timeout and is produced again (an outage is waited out here, visibly).
PRODUCER_DEFAULTS = {
    "enable.idempotence": "true",
    "compression.type": "lz4",
    "linger.ms": "20",
    "message.timeout.ms": "60000",
}
# Delivery errors that mean "not now": the message is produced again after a pause.
TRANSIENT = {KafkaError._MSG_TIMED_OUT, KafkaError._TIMED_OUT, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN,
             KafkaError._RESOLVE, KafkaError._QUEUE_FULL, KafkaError.NOT_ENOUGH_REPLICAS,
             KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND, KafkaError.LEADER_NOT_AVAILABLE,
             KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.REQUEST_TIMED_OUT, KafkaError.NETWORK_EXCEPTION,
             KafkaError._UNKNOWN_PARTITION}
FLUSH_STEP_S = 0.5  # flush in steps so that Ctrl-C is seen while the brokers are away
DRAIN_DELIVERY_S = 30.0  # after the first Ctrl-C, how long deliveries in flight may still take


def producer_config(brokers: str, client_config: Mapping[str, object]) -> dict:
    """The producer's librdkafka settings: ours, then the flow's KAFKA_OPT_* (security, ...)
    without the consumer-only ones."""
    return {"bootstrap.servers": brokers, **PRODUCER_DEFAULTS, **admin_config(client_config)}


def result_message(taxonomy: str, result: Result) -> KafkaSinkMessage:
    """One result as the topic holds it: key objectId, value the Avro container."""
    return KafkaSinkMessage(key=str(result.objectId).encode(), value=encode(to_record(result, taxonomy)))


def letter_message(letter: DeadLetter) -> KafkaSinkMessage:
    """One dead letter as the dead-letter topic holds it: the file's JSON line, keyed by candid."""
    key = str(letter.candid).encode() if letter.candid is not None else None
    return KafkaSinkMessage(key=key, value=letter.to_json().encode())


def transient(err: KafkaError) -> bool:
    """Sent again after a pause (an outage; a fatal producer error, after a new producer)."""
    return err.code() in TRANSIENT or err.retriable() or err.fatal()


def fatal_of(exc: BaseException) -> Optional[KafkaError]:
    """The fatal KafkaError behind `exc` (itself or its cause), if any."""
    for e in (exc, exc.__cause__, exc.__context__):
        if isinstance(e, KafkaException) and e.args and isinstance(e.args[0], KafkaError) and e.args[0].fatal():
            return e.args[0]
    return None


def why(failed: list) -> str:
    """Kafka's reason for the first transient failure of `failed`."""
    return next((err.str() for _, err in failed if transient(err)), "")


class _ResultsTopicPartition(_KafkaSinkPartition):
    def __init__(self, sink: "ResultsTopicSink", producer: Optional[Producer] = None):
        self._sink = sink
        self._fatal: Optional[KafkaError] = None
        super().__init__(producer if producer is not None else self._new_producer(), sink.topic)

    def _new_producer(self) -> Producer:
        return Producer({**self._sink._add_config, "error_cb": self._on_error})

    def _on_error(self, err: KafkaError) -> None:
        """librdkafka's client-level errors: a fatal one retires the producer (see `_deliver`);
        the others (a broker away) are retried by librdkafka and said once in a while."""
        if err.fatal():
            self._fatal = err
        else:
            self._sink.lines.log(logging.WARNING, "%s", f"error {err.name()}", f"topic {self._sink.topic}: {err.str()}")

    def write_batch(self, items: list[KafkaSinkMessage]) -> None:
        pending, pause = list(items), self._sink.backoff_initial_s
        started = None
        while pending:
            failed = self._deliver(pending)
            delivered = len(pending) - len(failed)
            metrics.results_published(self._sink.survey, self._sink.metric, delivered)
            again = [m for m, err in failed if transient(err)]
            refused = [(m, err) for m, err in failed if not transient(err)]
            if refused:
                metrics.results_delivery_failed(self._sink.survey, self._sink.metric, "refused", len(refused))
                self._sink.refuse([self._sink.letter(m, f"{self._sink.label} refused: {err.str()}")
                                   for m, err in refused])
            if not again:
                return
            started = started or time.monotonic()
            metrics.results_delivery_failed(self._sink.survey, self._sink.metric, "retried", len(again))
            self._sink.lines.log(logging.WARNING, "%s", "outage",
                                 f"topic {self._sink.topic}: {len(again)} message(s) not delivered for "
                                 f"{time.monotonic() - started:.0f} s ({why(failed)}); producing "
                                 f"them again, the flow waits (Ctrl-C to stop)")
            interruptible_sleep(pause)
            pause = min(self._sink.backoff_max_s, pause * 2)
            pending = again

    def _deliver(self, items: list[KafkaSinkMessage]) -> list[tuple[KafkaSinkMessage, KafkaError]]:
        """Produce `items`, wait for every delivery report; the (message, error) pairs that failed.
        A fatal producer error (the idempotent producer lost its id: a broker that forgot its
        state) replaces the producer; what was not acknowledged fails as transient, to be sent again."""
        outcome: dict[int, Optional[KafkaError]] = {}

        def report(i: int):
            return lambda err, _m: outcome.__setitem__(i, err)

        try:
            for i, msg in enumerate(items):
                while True:
                    try:
                        self._producer.produce(self._topic if msg.topic is None else msg.topic, value=msg.value,
                                               key=msg.key, headers=msg.headers, on_delivery=report(i))
                        break
                    except BufferError:  # librdkafka's queue is full: let it send, then go on
                        self._poll(FLUSH_STEP_S)
                    except KafkaException as exc:  # refused before sending (larger than message.max.bytes, ...)
                        if exc.args[0].fatal():
                            raise
                        outcome[i] = exc.args[0]
                        break
                self._producer.poll(0)
            stop_by = None
            while self._producer.flush(FLUSH_STEP_S) and self._fatal is None:
                # A draining flow (first Ctrl-C) finishes the batches in flight, these deliveries
                # included, unless Kafka does not answer within DRAIN_DELIVERY_S (a second Ctrl-C
                # ends the process at once, logs.stop_now). A flow that does not drain stops now.
                if STOPPING.is_set():
                    if not draining():
                        raise KeyboardInterrupt("Ctrl-C while delivering to Kafka")
                    stop_by = stop_by or time.monotonic() + DRAIN_DELIVERY_S
                    if time.monotonic() > stop_by:
                        stop_now(f" while delivering to Kafka (no answer for {DRAIN_DELIVERY_S:.0f} s)")
        except (KafkaException, SystemError) as exc:
            # confluent-kafka raises a fatal error from flush() even with an error_cb, and when it
            # does so inside a delivery callback it surfaces as a SystemError caused by it.
            fatal = fatal_of(exc)
            if fatal is None:
                raise
            self._fatal = fatal
        if self._fatal is not None:  # whatever was not acknowledged goes again, with a new producer
            outcome = {i: self._fatal for i in range(len(items)) if outcome.get(i, self._fatal) is not None}
            self._fatal = None
        failed = [(items[i], err) for i, err in sorted(outcome.items()) if err is not None]
        fatal = next((err for _, err in failed if err.fatal()), None)
        if fatal is not None:
            log.warning("topic %s: the producer failed for good (%s); a new producer sends the %d undelivered "
                        "message(s) again", self._sink.topic, fatal.str(), len(failed))
            self._producer = self._new_producer()
        return failed

    def _poll(self, seconds: float) -> None:
        self._producer.poll(seconds)
        if STOPPING.is_set():
            raise KeyboardInterrupt("Ctrl-C while delivering to Kafka")


class ResultsTopicSink(KafkaSink):
    """bytewax's Kafka sink for the results (or dead-letter) topic; see the module doc.

    `refuse(letters)` receives the dead letters of records Kafka refused; `label` names
    the sink in metrics and reasons (`results topic`, `dead-letter topic`)."""

    def __init__(self, brokers: str, topic: str, client_config: Mapping[str, object], *, survey: str,
                 refuse: Callable[[list[DeadLetter]], None], label: str = "results topic",
                 redact: Callable[[str], str] = lambda s: s, backoff_initial_s: float = 0.5,
                 backoff_max_s: float = 10.0):
        conf = producer_config(brokers, client_config)
        conf["logger"] = RateLimitedLog(logging.getLogger("alertflow.results_topic"), redact=redact)
        super().__init__(brokers.split(","), topic, conf)
        self.topic, self.survey, self.refuse, self.label = topic, survey, refuse, label
        self.metric = "topic" if label == "results topic" else label.replace("-", "").replace(" ", "_")
        self.backoff_initial_s, self.backoff_max_s = backoff_initial_s, backoff_max_s
        self.lines = RateLimitedLog(log, every_s=30.0, redact=redact)

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ResultsTopicPartition:
        return _ResultsTopicPartition(self)

    def letter(self, msg: KafkaSinkMessage, reason: str) -> DeadLetter:
        """The dead letter of a refused message: the record's candid and objectId when it is one."""
        candid: Optional[int] = None
        object_id = msg.key.decode(errors="replace") if isinstance(msg.key, bytes) else None
        if self.label == "results topic":
            try:
                from operators.oracle.result_record import decode

                candid = decode(msg.value)[0]["candid"]
            except Exception:  # noqa: BLE001 - a letter with less detail beats no letter
                candid = None
        return dead_letter(self.label.replace(" ", "_"), reason, candid=candid, object_id=object_id,
                           payload=msg.value if isinstance(msg.value, bytes) else None)
