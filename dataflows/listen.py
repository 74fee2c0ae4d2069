"""`python -m dataflows listen ztf|lsst`: the flow's classifications as they arrive on the results topic.

    python -m dataflows listen ztf                               new results, one line each
    python -m dataflows listen ztf --where "SN-Ia>0.8" --where "AGN<0.1"   cuts on node probabilities (AND)
    python -m dataflows listen lsst --from-beginning --limit 100 --save night/   + Parquet, one file per poll
    python -m dataflows listen ztf --group-id me                 resume where group `me` stopped

Like Fink's `fink_consumer`: a poll loop, one line per result on stdout
(`objectId candid time(UTC) predicted probability (runners-up)`), `--save` to
disk, `--limit`. Messages on stderr. The topic is `--topic`, else
`ORACLE_RESULTS_TOPIC`; the cluster is the flow's: `KAFKA_BROKERS` and the
`KAFKA_OPT_*` security settings (SASL, TLS).

Without `--group-id` nothing is committed: each run reads every partition from
the end (or the beginning); with one, the group resumes where it stopped (offsets
are committed once a result is printed and saved), and several `listen`s sharing
it split the partitions.

Exit status: 0 when `--limit` results were shown; 2 for a bad option, a topic
that does not exist or brokers that do not answer within `--wait` seconds (one
line saying which); 1 when a Parquet file cannot be written or Kafka fails for good (one line); 130 on Ctrl-C and
143 on SIGTERM, after closing the consumer: the shell convention for a run
stopped by a signal (the project's flows do the same), so that `listen ... &&
next` and `set -e` scripts stop when the user stopped it. `--limit` is the
way to end a run with 0. The pure part (cuts, lines, rows) is
operators/oracle/listening.py.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, TextIO

from operators.oracle.listening import Cut, CutError, batch_file_name, parquet_table, parse_cut, passes, result_line

EXIT_USAGE = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
TOPIC_VAR = "ORACLE_RESULTS_TOPIC"
POLL_S = 1.0  # bounds how long Ctrl-C waits
BATCH = 500  # messages per poll (one Parquet file at most)
REPORT_EVERY_S = 30.0


class UsageError(Exception):
    """One line for the user; exit 2."""


class StopRequest:
    """SIGINT/SIGTERM handler that only takes note: the poll loop looks at it after every poll
    (at most `POLL_S` later) and closes the consumer. A handler that raised instead could
    raise inside a librdkafka callback, where confluent-kafka loses the exception."""

    CODES = {signal.SIGINT: EXIT_INTERRUPTED, signal.SIGTERM: EXIT_TERMINATED}
    NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}

    def __init__(self):
        self.signum: Optional[int] = None

    def __call__(self, signum, frame) -> None:
        if self.signum is not None:  # asked twice: stop now
            raise KeyboardInterrupt
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def code(self) -> int:
        return self.CODES.get(self.signum, EXIT_INTERRUPTED)

    @property
    def name(self) -> str:
        return self.NAMES.get(self.signum, "a signal")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage + message and exits; we want one line
        raise UsageError(f"{message} (python -m dataflows listen --help)")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m dataflows listen", formatter_class=argparse.RawDescriptionHelpFormatter,
                description="Print the ORACLE flow's classifications as they arrive on its results topic, one line "
                            "each\n(objectId candid time(UTC) predicted probability (runners-up)); optionally save "
                            "them.\nThe cluster is the flow's: KAFKA_BROKERS and KAFKA_OPT_* (security).",
                epilog="exit status: 0 after --limit results; 2 bad option, missing topic or unreachable brokers; "
                       "1 cannot save;\n130 Ctrl-C, 143 SIGTERM (consumer closed first)")
    p.add_argument("survey", help="ztf or lsst")
    p.add_argument("--where", action="append", default=[], metavar="CUT",
                   help="NODE>P, NODE>=P, NODE<P or NODE<=P on a node's probability, e.g. 'SN-Ia>0.8'; "
                        "several are ANDed")
    p.add_argument("--from-beginning", action="store_true",
                   help="start at the beginning of every partition (else: new results only, or where --group-id "
                        "stopped)")
    p.add_argument("--save", metavar="DIR", type=Path,
                   help="also write the results shown to DIR as Parquet, one file per poll batch, "
                        "the results CSV's columns")
    p.add_argument("--limit", metavar="N", type=int, help="stop after N results (after the cuts), exit 0")
    p.add_argument("--group-id", metavar="G",
                   help="Kafka consumer group: commit what was shown and resume there next time")
    p.add_argument("--topic", help=f"the results topic (default: ${TOPIC_VAR})")
    p.add_argument("--wait", metavar="S", type=float, default=10.0,
                   help="seconds to wait for the brokers at start (default 10)")
    return p


@dataclass(frozen=True)
class ListenConfig:
    survey: str
    taxonomy: object  # models.oracle.taxonomy.Taxonomy
    topic: str
    brokers: str
    client_config: dict
    cuts: tuple[Cut, ...] = ()
    group_id: Optional[str] = None
    from_beginning: bool = False
    save_dir: Optional[Path] = None
    limit: Optional[int] = None
    wait_s: float = 10.0
    redact: Callable[[str], str] = lambda s: s


def configure(argv: Sequence[str], env: Mapping[str, str]) -> ListenConfig:
    """The options and the flow's Kafka settings, validated; `UsageError` (one line) otherwise."""
    from operators.oracle.surveys import SURVEYS
    from operators.runtime.config import ConfigError, KafkaSettings

    args = parser().parse_args(list(argv))
    survey = SURVEYS.get(args.survey.upper())
    if survey is None:
        raise UsageError(f"unknown survey {args.survey!r}: use {' or '.join(s.lower() for s in SURVEYS)}")
    try:
        cuts = tuple(parse_cut(text, survey.taxonomy, survey.name) for text in args.where)
    except CutError as exc:
        raise UsageError(str(exc)) from None
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit {args.limit}: give a number of results ≥ 1, or leave it out to listen until Ctrl-C")
    if args.wait <= 0:
        raise UsageError(f"--wait {args.wait:g}: give a number of seconds > 0")
    topic = (args.topic or env.get(TOPIC_VAR) or "").strip()
    if not topic:
        raise UsageError(f"{TOPIC_VAR} is unset: set it to the results topic the flow writes "
                         f"(e.g. {survey.name}_alerts_oracle), or give --topic")
    try:
        kafka = KafkaSettings.read(env)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    if not kafka.brokers:
        raise UsageError("KAFKA_BROKERS is unset: set it to the Kafka cluster of the flow's results topic "
                         "(host:port[,host:port])")
    return ListenConfig(survey=survey.name, taxonomy=survey.taxonomy, topic=topic, brokers=",".join(kafka.brokers),
                        client_config=kafka.client_config, cuts=cuts, group_id=args.group_id,
                        from_beginning=args.from_beginning, save_dir=args.save, limit=args.limit,
                        wait_s=args.wait, redact=kafka.redact)


# ------------------------------------------------------------------ Kafka


def find_topic(cfg: ListenConfig, stop: Optional[StopRequest] = None,
               clock: Callable[[], float] = time.monotonic) -> Optional[int]:
    """The topic's partition count, once the brokers answer (at most `cfg.wait_s`); else `UsageError`;
    None when `stop` was requested meanwhile. All topics are listed (a request naming the topic
    could create it on a broker that auto-creates)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    from operators.io.kafka import admin_config

    admin = AdminClient(admin_config({"bootstrap.servers": cfg.brokers, **cfg.client_config, "log_level": 0}))
    deadline, problem = clock() + cfg.wait_s, ""
    while True:
        if stop is not None and stop.requested:
            return None
        try:
            meta = admin.list_topics(timeout=max(0.1, min(1.0, deadline - clock())))
            break
        except KafkaException as exc:
            err = exc.args[0] if exc.args else exc
            problem = err.str() if hasattr(err, "str") else str(err)
        if clock() >= deadline:
            raise UsageError(f"Kafka {cfg.brokers} unreachable within {cfg.wait_s:g} s ({cfg.redact(problem)}): "
                             f"check KAFKA_BROKERS, the network and the KAFKA_OPT_* security settings")
        time.sleep(0.2)
    t = meta.topics.get(cfg.topic)
    if t is None or t.error is not None or not t.partitions:
        results = sorted(name for name in meta.topics if name.endswith("_oracle"))
        seen = f" (results topics there: {', '.join(results)})" if results else ""
        raise UsageError(f"topic {cfg.topic} does not exist on {cfg.brokers}{seen}: check --topic / {TOPIC_VAR}, "
                         f"and that the flow runs with {TOPIC_VAR} set")
    return len(t.partitions)


def consumer_settings(cfg: ListenConfig, error_cb: Callable) -> dict:
    """The flow's client settings (security), then ours: a group only with --group-id, offsets stored
    by hand once a result is shown (and saved), librdkafka's own log off (errors reach `error_cb`)."""
    return {"bootstrap.servers": cfg.brokers, **cfg.client_config,
            "group.id": cfg.group_id or f"alertflow-listen-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": cfg.group_id is not None, "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest" if cfg.from_beginning else "latest",
            "log_level": 0, "error_cb": error_cb}


class _Reporter:
    """stderr lines; those of one kind at most once per `every_s`."""

    def __init__(self, err: TextIO, redact: Callable[[str], str], every_s: float = REPORT_EVERY_S):
        self.err, self.redact, self.every_s = err, redact, every_s
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def say(self, text: str, kind: Optional[str] = None) -> None:
        if kind is not None:
            with self._lock:
                now = time.monotonic()
                if now - self._last.get(kind, -self.every_s) < self.every_s:
                    return
                self._last[kind] = now
        print(f"listen: {self.redact(text)}", file=self.err, flush=True)

    def kafka_error(self, err) -> None:  # librdkafka's error_cb (its thread)
        from operators.io.kafka import DOWN_CODES

        if err.code() in DOWN_CODES:  # one kind: at most one line per interval however librdkafka words it
            self.say(f"Kafka unreachable ({err.str()}); still retrying (Ctrl-C to stop)", kind="down")
        else:
            self.say(f"Kafka {err.name()}: {err.str()}; still retrying (Ctrl-C to stop)", kind=err.name())


def subscribe(consumer, cfg: ListenConfig, partitions: int) -> None:
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, TopicPartition

    if cfg.group_id is None:  # every partition, at once: no group to join
        start = OFFSET_BEGINNING if cfg.from_beginning else OFFSET_END
        consumer.assign([TopicPartition(cfg.topic, p, start) for p in range(partitions)])
        return
    reset: set[int] = set()

    def on_assign(c, assigned):  # --from-beginning rewinds each partition once, not at every rebalance
        if cfg.from_beginning:
            for tp in assigned:
                if tp.partition not in reset:
                    reset.add(tp.partition)
                    tp.offset = OFFSET_BEGINNING
        c.assign(assigned)

    consumer.subscribe([cfg.topic], on_assign=on_assign)


def write_batch(cfg: ListenConfig, records: list[dict], first) -> Path:
    """One Parquet file, written whole or not at all (temporary name, then renamed)."""
    import pyarrow.parquet as pq

    cfg.save_dir.mkdir(parents=True, exist_ok=True)
    path = cfg.save_dir / batch_file_name(cfg.survey, datetime.now(timezone.utc), first.partition(), first.offset())
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        pq.write_table(parquet_table(records, cfg.taxonomy), tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def listen(cfg: ListenConfig, out: TextIO = sys.stdout, err: TextIO = sys.stderr,
           stop: Optional[StopRequest] = None) -> int:
    """The poll loop, until `--limit` results or a `stop` request. Returns the exit status,
    the consumer closed (and, with a group, what was shown committed)."""
    from confluent_kafka import Consumer, KafkaException

    from operators.oracle.result_record import decode

    report = _Reporter(err, cfg.redact)
    stop = stop or StopRequest()
    partitions = find_topic(cfg, stop)
    if partitions is None:
        return stop.code
    consumer = Consumer(consumer_settings(cfg, report.kafka_error))
    shown = messages = files = 0
    try:
        subscribe(consumer, cfg, partitions)
        start = "the beginning" if cfg.from_beginning else ("the group's last commit (a new group: now)" if cfg.group_id else "now")
        cuts = f", where {' and '.join(map(str, cfg.cuts))}" if cfg.cuts else ""
        report.say(f"listening to {cfg.topic} on {cfg.brokers} ({partitions} partition(s), from {start}"
                   f"{cuts}{', group ' + cfg.group_id if cfg.group_id else ''}); Ctrl-C to stop")
        while not stop.requested and (cfg.limit is None or shown < cfg.limit):
            batch, handled = [], []
            for msg in consumer.consume(num_messages=BATCH, timeout=POLL_S):
                if cfg.limit is not None and shown >= cfg.limit:
                    break  # the rest stays unread: the group resumes there
                if msg.error() is not None:
                    report.say(f"Kafka {msg.error().name()}: {msg.error().str()}", kind=msg.error().name())
                    continue
                messages += 1
                handled.append(msg)
                try:
                    records = decode(msg.value() or b"")
                except Exception as exc:  # noqa: BLE001 - not an alertflow results container: say so, go on
                    report.say(f"skipped a message that is not a results record (partition {msg.partition()} "
                               f"offset {msg.offset()}: {type(exc).__name__}: {exc})", kind="undecodable")
                    continue
                for record in records:
                    if passes(record, cfg.cuts) and (cfg.limit is None or shown < cfg.limit):
                        print(result_line(record, cfg.taxonomy), file=out, flush=True)
                        batch.append(record)
                        shown += 1
            if batch and cfg.save_dir is not None:
                try:
                    write_batch(cfg, batch, handled[0])
                except OSError as exc:
                    report.say(f"cannot write Parquet under {cfg.save_dir}: {exc}; check --save")
                    return EXIT_FAILED
                files += 1
            if cfg.group_id is not None:
                for msg in handled:
                    try:
                        consumer.store_offsets(msg)  # committed by the consumer (auto-commit, and at close)
                    except KafkaException:  # the partition moved to another member meanwhile: it reads it again
                        pass
        return stop.code if stop.requested else 0
    finally:
        consumer.close()
        saved = f"; {files} Parquet file(s) in {cfg.save_dir}" if cfg.save_dir is not None else ""
        report.say(f"{shown} result(s) shown of {messages} message(s) read{saved}; consumer closed")


def main(argv: Optional[Sequence[str]] = None, env: Optional[Mapping[str, str]] = None,
         out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """The `listen` command (also a console script's entry): returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in {"-h", "--help"} for a in argv):
        out.write(parser().format_help())
        return 0
    stop = StopRequest()
    main_thread = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, stop) for sig in StopRequest.CODES} if main_thread else {}
    cfg = None
    try:
        cfg = configure(argv, os.environ if env is None else env)
        status = listen(cfg, out, err, stop)
        if stop.requested:
            print(f"listen: stopped by {stop.name}", file=err, flush=True)
        return status
    except UsageError as exc:
        print(f"listen: {exc}", file=err, flush=True)
        return EXIT_USAGE
    except KeyboardInterrupt:  # Ctrl-C pressed twice, or before the handlers were in place
        print("listen: stopped by Ctrl-C", file=err, flush=True)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `listen ztf | head`: the reader has gone; stop quietly
        if out is sys.stdout:  # so that Python's flush at exit does not complain either
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # a fatal Kafka error: one line (the consumer is closed); anything else is a bug
        from confluent_kafka import KafkaException

        if not isinstance(exc, KafkaException):
            raise
        print(f"listen: Kafka: {cfg.redact(str(exc)) if cfg else exc}", file=err, flush=True)
        return EXIT_FAILED
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
