"""Where the ORACLE flows publish their results besides (or instead of) the CSV.

`ResultsSettings` (an `EnvModel`, see operators/runtime/settings.py): the results
topic on the flow's Kafka cluster, the results collection in the configured
MongoDB, the CSV switch and the dead-letter topic. Names are checked here, where
they are read: a topic name Kafka rejects or a collection name MongoDB rejects is
one line naming the variable and the fix (exit 2 before the flow starts).
What needs more than one model (a collection without a MongoDB, a topic without
Kafka, a BOOM collection) is checked in operators/sinks/results_outputs.py
`check_results_settings`.
"""

from __future__ import annotations

import re
from typing import Optional

from pydantic import Field, field_validator, model_validator

from operators.runtime.settings import EnvModel

# Kafka's own rule (clients/.../common/internals/Topic.java): 1-249 of [a-zA-Z0-9._-], not "." or "..".
_TOPIC = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")
# MongoDB: database names may not hold /\. "$*<>:|? or NUL and have fewer than 64 bytes;
# collection names may not hold $ or NUL, start with "system." or be empty; db.collection < 255 bytes.
_BAD_DATABASE = set('/\\. "$*<>:|?\0')


def topic_problem(name: str) -> Optional[str]:
    """Why Kafka would reject `name` as a topic (None when it would not)."""
    if name in {".", ".."}:
        return "is not a topic name"
    if not _TOPIC.match(name):
        return "is not a Kafka topic name (1-249 letters, digits, '.', '_' or '-')"
    return None


def collection_problem(name: str) -> Optional[str]:
    """Why MongoDB would reject `name` as a collection (None when it would not)."""
    if "$" in name or "\0" in name:
        return "may not contain '$' or NUL"
    if name.startswith("system."):
        return "is a name MongoDB reserves (system.*)"
    if name.startswith(".") or name.endswith("."):
        return "may not begin or end with '.'"
    if len(name.encode()) > 200:
        return "is too long (MongoDB allows ~255 bytes for database.collection)"
    return None


def database_problem(name: str) -> Optional[str]:
    """Why MongoDB would reject `name` as a database (None when it would not)."""
    if any(c in _BAD_DATABASE for c in name):
        return "may not contain any of / \\ . space \" $ * < > : | ?"
    if len(name.encode()) >= 64:
        return "is too long (MongoDB allows fewer than 64 bytes)"
    return None


# field -> (variable, the check that names what is wrong, a good name to suggest)
NAME_RULES = {
    "topic": ("ORACLE_RESULTS_TOPIC", topic_problem, "ZTF_alerts_oracle"),
    "deadletter_topic": ("ALERTFLOW_DEADLETTER_TOPIC", topic_problem, "ZTF_alerts_oracle_deadletters"),
    "collection": ("ORACLE_RESULTS_COLLECTION", collection_problem, "ZTF_alerts_oracle"),
    "database": ("ORACLE_RESULTS_DATABASE", database_problem, "boom"),
}


class ResultsSettings(EnvModel):
    """The results topic and collection (issue 25): first-class outputs written by every worker."""

    topic: str = Field("", validation_alias="ORACLE_RESULTS_TOPIC",
                       description="Kafka topic on the flow's cluster (KAFKA_BROKERS, KAFKA_OPT_*) that gets one "
                                   "Avro record per classified alert, keyed by objectId, written by the worker "
                                   "that classified it; unset: off")
    collection: str = Field("", validation_alias="ORACLE_RESULTS_COLLECTION",
                            description="MongoDB collection that gets one document per alert (_id = candid), "
                                        "upserted; the shadow model writes to <collection>_shadow; unset: off")
    database: str = Field("", validation_alias="ORACLE_RESULTS_DATABASE",
                          description="database of ORACLE_RESULTS_COLLECTION; unset: BOOM_DATABASE__NAME")
    csv: bool = Field(True, validation_alias="ALERTFLOW_RESULTS_CSV",
                      description="false: no results CSV (needs ORACLE_RESULTS_TOPIC or ORACLE_RESULTS_COLLECTION); "
                                  "dead letters then go to one file per process, deadletters-<process>.jsonl")
    deadletter_topic: str = Field("", validation_alias="ALERTFLOW_DEADLETTER_TOPIC",
                                  description="Kafka topic that also gets every dead letter (the file's JSON line, "
                                              "reason and payload), keyed by candid; unset: off")

    @field_validator("topic", "deadletter_topic", "collection", "database")
    @classmethod
    def _name(cls, v: str, info) -> str:
        """A name Kafka or MongoDB would refuse stops the flow here, in one line."""
        variable, problem_of, example = NAME_RULES[info.field_name]
        problem = problem_of(v) if v else None
        if problem:
            raise ValueError(f"{variable}={v!r} {problem} -> set {variable} to a name like {example}, or unset it")
        return v

    @model_validator(mode="after")
    def _somewhere(self) -> "ResultsSettings":
        if not self.csv and not (self.topic or self.collection):
            raise ValueError("ALERTFLOW_RESULTS_CSV=false with neither ORACLE_RESULTS_TOPIC nor "
                             "ORACLE_RESULTS_COLLECTION set: the results would go nowhere -> set one of them, "
                             "or unset ALERTFLOW_RESULTS_CSV")
        if self.topic and self.topic == self.deadletter_topic:
            raise ValueError(f"ORACLE_RESULTS_TOPIC and ALERTFLOW_DEADLETTER_TOPIC are both {self.topic!r} -> "
                             "give the dead letters a topic of their own")
        return self

    @property
    def shadow_collection(self) -> str:
        """Where the shadow model's results go ("" when no collection is configured)."""
        return f"{self.collection}_shadow" if self.collection else ""

    def database_for(self, boom_database: str) -> str:
        return self.database or boom_database
