"""The alert store: BOOM's documents for a batch of alerts.

Enrichment needs, per alert, its `{SURVEY}_alerts` document (`_id` = candid),
its object's `{SURVEY}_alerts_aux` document (`_id` = objectId) and, for models
with an image branch, its `{SURVEY}_alerts_cutouts` document (`_id` = candid).
A store answers for a whole batch at once (one `$in` per collection).

Two stores share the `fetch` contract:
- `EmbeddedStore`: the bundled sample under `data/` (MongoDB Extended JSON lines),
  used when no MongoDB is configured;
- `MongoStore` (`operators/oracle/mongo_store.py`): BOOM's MongoDB through pymongo.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Protocol

from bson import json_util


@dataclass
class Documents:
    """What a store found; missing keys mean "no such document"."""

    alerts: dict[int, dict] = field(default_factory=dict)
    aux: dict[str, dict] = field(default_factory=dict)
    cutouts: dict[int, dict] = field(default_factory=dict)


@dataclass(frozen=True)
class Collections:
    alerts: str
    aux: str
    cutouts: str
    # Fields the input builders read; nothing else crosses the wire.
    alert_fields: tuple[str, ...]
    aux_fields: tuple[str, ...]
    cutout_fields: tuple[str, ...] = ("cutoutTemplate",)


class AlertStore(Protocol):
    def fetch(self, candids: list[int], object_ids: list[str], with_cutouts: bool) -> Documents: ...

    def close(self) -> None: ...


def nan_to_none(value):
    """NaN → None, recursively: real BOOM documents hold NaN, which JSON-backed
    stores (and JSON itself) reject."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [nan_to_none(v) for v in value]
    return value


def read_documents(path: Path) -> list[dict]:
    """Documents of one collection, one Extended-JSON document per line."""
    if not path.exists():
        return []
    with path.open() as f:
        return [json_util.loads(line) for line in f if line.strip()]


def write_documents(path: Path, docs: Iterable[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for doc in docs:
            f.write(json_util.dumps(nan_to_none(doc), json_options=json_util.RELAXED_JSON_OPTIONS) + "\n")


def _project(doc: dict, fields: tuple[str, ...]) -> dict:
    out = {"_id": doc["_id"]}
    for name in fields:
        top = name.split(".", 1)[0]
        if top in doc:
            out[top] = doc[top]
    return out


class EmbeddedStore:
    """The bundled sample as an in-memory store (read once, shared read-only)."""

    def __init__(self, sample_dir: Path, collections: Collections):
        self._c = collections
        self._alerts = {int(d["_id"]): d for d in read_documents(sample_dir / f"{collections.alerts}.jsonl")}
        self._aux = {str(d["_id"]): d for d in read_documents(sample_dir / f"{collections.aux}.jsonl")}
        self._cutouts = {int(d["_id"]): d for d in read_documents(sample_dir / f"{collections.cutouts}.jsonl")}

    def fetch(self, candids: list[int], object_ids: list[str], with_cutouts: bool) -> Documents:
        c = self._c
        return Documents(
            alerts={k: _project(self._alerts[k], c.alert_fields) for k in candids if k in self._alerts},
            aux={k: _project(self._aux[k], c.aux_fields) for k in object_ids if k in self._aux},
            cutouts=(
                {k: _project(self._cutouts[k], c.cutout_fields) for k in candids if k in self._cutouts}
                if with_cutouts
                else {}
            ),
        )

    def close(self) -> None:
        pass
