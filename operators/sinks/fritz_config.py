"""Fritz (SkyPortal) pure parts: annotation data, classification text, links, context.

No I/O here: `operators/sinks/fritz_client.py` talks to Fritz, `operators/sinks/fritz.py`
is the flow's side (annotation sender and sink). Imports point that way:
fritz -> fritz_client -> fritz_config, ratelimit. The settings model, `FritzConfig`,
is in operators/runtime/fritz_settings.py (re-exported here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from models.oracle.taxonomy import Taxonomy
from operators.runtime.fritz_settings import (  # noqa: F401 - re-exported for the Fritz modules
    DEFAULT_GROUP_IDS, DEFAULT_ORIGIN, DEFAULT_URL, FritzConfig, is_loopback, parse_group_ids,
)


# ---------------------------------------------------------------------------
# Pure helpers


def annotation_data(probabilities: Mapping[str, Any], taxonomy: Taxonomy, decimals: int = 4) -> dict:
    """Class probabilities in pre-order without the root, rounded; a class missing -> None.

    For ZTF: Persistent, AGN, CV, Varstar, Transient, SN-Ia, SN-II, SN-Ib/c, SLSN.
    """
    out: dict[str, Optional[float]] = {}
    for i in taxonomy.preorder:
        name = taxonomy.nodes[i]
        p = probabilities.get(name)  # finite: `classify` dead-letters a non-finite output
        out[name] = None if p is None else round(float(p), decimals)
    return out


def format_classifications(items: Sequence[Mapping[str, Any]]) -> str:
    """Fritz classifications as `SN Ia(0.9); AGN(None)` (in Fritz's order)."""
    parts = []
    for c in items or ():
        name = c.get("classification")
        if not name:
            continue
        parts.append(f"{name}({c.get('probability')})")
    return "; ".join(parts)


def split_classifications(items: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    """(what people said, what machine classifiers said): SkyPortal flags a
    classification posted by a classifier with `ml: true`."""
    items = [c for c in items or () if isinstance(c, Mapping)]
    human = [c for c in items if not c.get("ml")]
    machine = [c for c in items if c.get("ml")]
    return format_classifications(human), format_classifications(machine)


def source_link(url: str, object_id: str) -> str:
    return f"{url.rstrip('/')}/source/{object_id}"


def alert_link(url: str, object_id: str) -> str:
    return f"{url.rstrip('/')}/alerts/ztf/{object_id}"


@dataclass(frozen=True)
class FritzContext:
    """What Fritz knows of an object, for people: classifications and a link."""

    classifications: str = ""  # by people
    link: str = ""
    exists: Optional[bool] = None  # saved as a source in a group of ours; None: unknown
    ml_classifications: str = ""  # by machine classifiers


__all__ = [
    "DEFAULT_GROUP_IDS",
    "DEFAULT_ORIGIN",
    "DEFAULT_URL",
    "FritzConfig",
    "FritzContext",
    "alert_link",
    "annotation_data",
    "format_classifications",
    "is_loopback",
    "parse_group_ids",
    "source_link",
    "split_classifications",
]
