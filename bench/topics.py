"""Reading a whole Kafka topic as it is now, for topics no flow reads (results topics in
benchmarks and tests).

Tansu understates a partition's end offset (it answers the last batch's first offset + 1),
so "read to the end offsets" misses the last batch. Instead `read_to_end` appends an end
marker to every partition and reads up to it; markers (key `END_MARKER_KEY`) are never
returned, its own or an earlier call's.
"""

from __future__ import annotations

import time
import uuid

END_MARKER_KEY = b"alertflow-end-marker"


def read_to_end(bootstrap: str, topic: str, timeout_s: float = 20.0) -> list:
    """Every message on `topic` now (confluent_kafka `Message`s, markers left out); [] for a
    topic that does not exist."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "fetch.message.max.bytes": 10_000_000})
    try:
        meta = consumer.list_topics(topic, timeout=30).topics.get(topic)
        if meta is None or meta.error is not None:
            return []
        partitions = list(meta.partitions)
        marker = uuid.uuid4().hex.encode()
        producer = Producer({"bootstrap.servers": bootstrap})
        for p in partitions:
            producer.produce(topic, value=marker, key=END_MARKER_KEY, partition=p)
        if producer.flush(10):
            raise RuntimeError(f"end markers to {topic} not delivered")
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        pending, out = set(partitions), []
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise RuntimeError(f"read_to_end({topic}): no end marker on partitions {sorted(pending)} "
                                   f"within {timeout_s:.0f} s")
            for msg in consumer.consume(num_messages=500, timeout=0.5):
                if msg.error() is not None or msg.partition() not in pending:  # past this call's marker
                    continue
                if msg.key() != END_MARKER_KEY:
                    out.append(msg)
                elif msg.value() == marker:
                    pending.discard(msg.partition())
        return out
    finally:
        consumer.close()
