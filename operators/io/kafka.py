"""Reading Kafka without hanging or flooding the log when the brokers are away.

bytewax's `KafkaSource` lists a topic's partitions with `AdminClient.list_topics(topic)`
and no timeout: against a dead or black-holed broker that call never returns,
and it runs inside bytewax's Rust loop, which then never looks at Ctrl-C. Left
alone, librdkafka also writes every failed connect to stderr (~19 lines a
second). So a flow that reads Kafka:

1. waits for the brokers before its dataflow starts (`wait_for_kafka`): a
   metadata request with a 1 s timeout, repeated, on the main thread in
   Python, so Ctrl-C stops it at once (exit 130); one log line when the
   brokers are first found missing and then one every 30 s; after
   `KAFKA_UNREACHABLE_EXIT_S` (when set) it exits with status 3 so that a
   supervisor can alert;
2. reads through `kafka_input`, bytewax's own connector with a partition
   listing that has a timeout (`_WaitingKafkaSource`), and consumer settings
   (`consumer_config`) that route librdkafka's log through ours, rate-limited
   (`RateLimitedLog`), and its broker errors to a `BrokerWatch`, which, while
   the brokers are down, probes them in a background thread, says so once per
   interval and exits the process (status 3) after `KAFKA_UNREACHABLE_EXIT_S`.
   While the brokers are away the consumer's poll returns at once, so the flow
   stays responsive to Ctrl-C;
3. stops reading on Ctrl-C (`STOPPING`, operators/runtime/logs.py): each partition
   ends (bytewax snapshots its offset at that end), the batches in flight are
   classified and written, and the process exits 130. Nothing raises inside
   bytewax's Rust loop, which would panic.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable, Mapping, Optional

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSource
from bytewax.connectors.kafka.operators import KafkaOpOut, _kafka_error_split
from bytewax.dataflow import Dataflow, operator
from bytewax.inputs import StatefulSourcePartition
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from operators.runtime.logs import STOPPING, inputs_stop_on_ctrl_c

log = logging.getLogger("alertflow.kafka")

EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130
ATTEMPT_TIMEOUT_S = 1.0  # per metadata request: bounds how long Ctrl-C waits while connecting
LINE_EVERY_S = 30.0
# Consumer-only properties an AdminClient (a producer-type client) warns about.
CONSUMER_ONLY = {"group.id", "enable.auto.commit", "auto.offset.reset", "enable.partition.eof",
                 "statistics.interval.ms", "fetch.max.bytes", "fetch.min.bytes", "max.partition.fetch.bytes",
                 "queued.max.messages.kbytes", "queued.min.messages", "fetch.wait.max.ms", "session.timeout.ms",
                 "max.poll.interval.ms", "isolation.level", "enable.auto.offset.store", "auto.commit.interval.ms"}
DOWN_CODES = {KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE}


class RateLimitedLog:
    """What confluent-kafka calls as `logger`: `log(level, fmt, *args)`, with args
    (facility, client name, text). At most one line per facility per `every_s`;
    the next line says how many were held back. Errors are logged as warnings:
    librdkafka retries them by itself."""

    def __init__(self, logger: logging.Logger = log, every_s: float = LINE_EVERY_S,
                 redact: Callable[[str], str] = lambda s: s, clock: Callable[[], float] = time.monotonic):
        self._log, self._every, self._redact, self._clock = logger, every_s, redact, clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> Optional[int]:
        """None to hold this line back; else how many of its kind were held back since the last one."""
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._every:
                self._held[key] = self._held.get(key, 0) + 1
                return None
            self._last[key] = now
            return self._held.pop(key, 0)

    def log(self, level: int, fmt: str, *args) -> None:
        facility = str(args[0]) if args else fmt
        held = self.allow(facility)
        if held is None:
            return
        text = args[-1] if args else fmt
        suffix = f" ({held} more like it in the last {self._every:.0f} s)" if held else ""
        self._log.log(min(int(level), logging.WARNING), "librdkafka %s: %s%s", facility,
                      self._redact(str(text)), suffix)


def admin_config(client_config: Mapping[str, object]) -> dict:
    """The settings of an AdminClient (or producer) from a consumer's: no consumer-only
    properties, no callbacks (the consumer's error watch stays the consumer's)."""
    return {k: v for k, v in client_config.items() if k not in CONSUMER_ONLY and k not in {"error_cb", "stats_cb"}}


def _probe(admin: AdminClient, topic: Optional[str]) -> tuple[Optional[str], int]:
    """(None, the topic's partition count) when the brokers answer (and hold `topic`); else
    (what is wrong, 0)."""
    try:
        md = admin.list_topics(topic, timeout=ATTEMPT_TIMEOUT_S) if topic else admin.list_topics(
            timeout=ATTEMPT_TIMEOUT_S)
    except KafkaException as exc:
        err = exc.args[0] if exc.args else exc
        return (err.str() if hasattr(err, "str") else str(err)), 0
    if topic:
        t = md.topics.get(topic)
        if t is None or t.error is not None or not t.partitions:
            return f"topic {topic} does not exist" + (f" ({t.error.str()})" if t is not None and t.error else ""), 0
        return None, len(t.partitions)
    return None, 0


def wait_for_kafka(client_config: Mapping[str, object], topic: str, *, where: str, topic_var: str,
                   exit_after_s: Optional[float] = None, every_s: float = LINE_EVERY_S,
                   redact: Callable[[str], str] = lambda s: s, clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], None] = time.sleep) -> int:
    """Return once the brokers answer and hold `topic`, with its partition count. Meant for the main thread before
    the dataflow exists: Ctrl-C ends the process (130), `exit_after_s` without an
    answer ends it with status 3; in between one line every `every_s`."""
    conf = {**admin_config(client_config), "logger": RateLimitedLog(redact=redact, every_s=3600)}
    admin = AdminClient(conf)
    started, last_line = clock(), None
    try:
        while True:
            problem, partitions = _probe(admin, topic)
            waited = clock() - started
            if problem is None:
                if last_line is not None:
                    log.info("Kafka %s reachable after %.0f s", where, waited)
                return partitions
            if exit_after_s and waited >= exit_after_s:
                print(f"Kafka {where} unreachable for {waited:.0f} s ({redact(problem)}); giving up as "
                      f"KAFKA_UNREACHABLE_EXIT_S={exit_after_s:g} asks", file=_stderr(), flush=True)
                raise SystemExit(EXIT_UNREACHABLE)
            if last_line is None or clock() - last_line >= every_s:
                last_line = clock()
                fix = f"check {topic_var}" if problem.startswith("topic ") else "check the brokers and the network"
                log.warning("Kafka %s unreachable for %.0f s, still retrying (%s; %s; Ctrl-C to stop)",
                            where, waited, redact(problem), fix)
            sleep(0.2)
    except KeyboardInterrupt:
        log.info("stopped by Ctrl-C while waiting for Kafka %s", where)
        raise SystemExit(EXIT_INTERRUPTED) from None


def _stderr():
    import sys

    return sys.stderr


class BrokerWatch:
    """librdkafka's `error_cb`: broker errors are counted here, not dead-lettered.

    On a broker-down error a background thread probes the brokers until they
    answer, logging one line per `every_s`; after `exit_after_s` without them it
    exits the process with status 3 (outputs and recovery are safe against a
    hard stop, see operators/io/files.py). Other errors are logged, rate-limited."""

    def __init__(self, client_config: Mapping[str, object], where: str, exit_after_s: Optional[float] = None,
                 every_s: float = LINE_EVERY_S, redact: Callable[[str], str] = lambda s: s,
                 exit: Callable[[int], None] = os._exit):
        self._conf = {**admin_config(client_config), "logger": RateLimitedLog(redact=redact, every_s=3600)}
        self._where, self._exit_after, self._every, self._redact, self._exit = where, exit_after_s, every_s, redact, exit
        self._lines = RateLimitedLog(every_s=every_s, redact=redact)
        self._lock = threading.Lock()
        self._probing = False
        self.down_since: Optional[float] = None

    def __call__(self, err) -> None:
        if err.code() in DOWN_CODES:
            with self._lock:
                if self._probing:
                    return
                self._probing = True
                self.down_since = time.monotonic()
            threading.Thread(target=self._probe_until_back, name="kafka-watch", daemon=True).start()
        else:
            self._lines.log(logging.WARNING, "%s", f"error {err.name()}", err.str())

    def _probe_until_back(self) -> None:
        admin = AdminClient(self._conf)
        last_line = None
        try:
            while True:
                problem, _ = _probe(admin, None)
                down = time.monotonic() - self.down_since
                if problem is None:
                    if last_line is not None:
                        log.info("Kafka %s reachable again after %.0f s", self._where, down)
                    return
                if self._exit_after and down >= self._exit_after:
                    log.error("Kafka %s unreachable for %.0f s (%s); exiting (status %d) as KAFKA_UNREACHABLE_EXIT_S=%g "
                              "asks; a restart resumes from the last snapshot", self._where, down,
                              self._redact(problem), EXIT_UNREACHABLE, self._exit_after)
                    logging.shutdown()
                    self._exit(EXIT_UNREACHABLE)
                    return
                if last_line is None or time.monotonic() - last_line >= self._every:
                    last_line = time.monotonic()
                    log.warning("Kafka %s unreachable for %.0f s, still retrying (%s)", self._where, down,
                                self._redact(problem))
                time.sleep(1.0)
        finally:
            with self._lock:
                self._probing = False
                self.down_since = None


def consumer_config(client_config: Mapping[str, object], where: str, exit_after_s: Optional[float] = None,
                    redact: Callable[[str], str] = lambda s: s) -> dict:
    """`client_config` plus librdkafka's log and errors routed through ours (see the module doc)."""
    brokers = {"bootstrap.servers": where, **dict(client_config)}
    return {"reconnect.backoff.max.ms": 10_000, **dict(client_config),
            "logger": RateLimitedLog(redact=redact),
            "error_cb": BrokerWatch(brokers, where, exit_after_s, redact=redact)}


class _EndsOnCtrlC(StatefulSourcePartition):
    """bytewax's Kafka partition, ended (as at the end of a topic) once Ctrl-C was pressed."""

    def __init__(self, inner: StatefulSourcePartition):
        self._inner = inner

    def next_batch(self) -> list:
        if STOPPING.is_set():
            raise StopIteration()
        return self._inner.next_batch()

    def next_awake(self):
        return self._inner.next_awake()

    def snapshot(self):
        return self._inner.snapshot()

    def close(self) -> None:
        self._inner.close()


class _WaitingKafkaSource(KafkaSource):
    """bytewax's source, with a partition listing that waits (interruptibly) instead of hanging,
    and partitions that end on Ctrl-C (`_EndsOnCtrlC`)."""

    def build_part(self, step_id: str, for_part: str, resume_state):
        return _EndsOnCtrlC(super().build_part(step_id, for_part, resume_state))

    def list_parts(self) -> list[str]:
        inputs_stop_on_ctrl_c()  # every worker lists the partitions when the dataflow starts
        conf = {"bootstrap.servers": ",".join(self._brokers), **self._add_config}
        where = ",".join(self._brokers)
        out = []
        for topic in self._topics:
            wait_for_kafka(conf, topic, where=where, topic_var="the topic")
            md = AdminClient(admin_config(conf)).list_topics(topic, timeout=30).topics[topic]
            out.extend(f"{i}-{topic}" for i in md.partitions)
        return out


@operator
def kafka_input(step_id: str, flow: Dataflow, *, brokers: list[str], topics: list[str], tail: bool = True,
                starting_offset: int, add_config: Optional[dict] = None, batch_size: int = 1000) -> KafkaOpOut:
    """`bytewax.connectors.kafka.operators.input`, with `_WaitingKafkaSource`. The inner
    step ids are the same as bytewax's, so recovery snapshots taken before still apply."""
    source = _WaitingKafkaSource(brokers, topics, tail, starting_offset, add_config, batch_size,
                                 raise_on_errors=False)
    return op.input("kafka_input", flow, source).then(_kafka_error_split, "split_err")
