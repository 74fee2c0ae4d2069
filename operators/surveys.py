"""Surveys as data: everything that differs between the ZTF and LSST flows.

Both flows are the same chain of operators (`dataflows/oracle.py`); a survey
contributes its topic, BOOM filter, collection names and fields, input
builder, taxonomy, default weights, sample, and where links point. A third
survey is one more `Survey` here and one input builder module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from models.taxonomy import ZTF_TAXONOMY, Taxonomy
from operators import ztf_inputs
from operators.config import DATA_DIR
from operators.store import Collections


@dataclass(frozen=True)
class Survey:
    name: str  # "ZTF", "LSST"
    topic: str
    filter_name: str
    collections: Collections
    build_inputs: Callable  # (alert_doc, aux_doc, cutout_doc, with_stamp) -> ModelInputs
    taxonomy: Taxonomy
    weights: Path
    sample_dir: Path
    object_url: Callable[[str], str]
    slack_channel_env: str
    model_name: Optional[str] = None


def fritz_alert_url(object_id: str) -> str:
    return f"https://fritz.science/alerts/ztf/{object_id}"


ZTF = Survey(
    name="ZTF",
    topic="ZTF_alerts_results",
    filter_name="rcfdeep_partnership_ztf",
    collections=Collections(
        alerts="ZTF_alerts",
        aux="ZTF_alerts_aux",
        cutouts="ZTF_alerts_cutouts",
        alert_fields=ztf_inputs.ALERT_FIELDS,
        aux_fields=ztf_inputs.AUX_FIELDS,
    ),
    build_inputs=ztf_inputs.ztf_inputs,
    taxonomy=ZTF_TAXONOMY,
    weights=DATA_DIR / "best_model_f1_ztf.pth",
    sample_dir=DATA_DIR / "ztf_sample",
    object_url=fritz_alert_url,
    slack_channel_env="SLACK_ORACLE_CHANNEL_ID",
)

SURVEYS = {"ZTF": ZTF}


def survey_named(name: str) -> Survey:
    try:
        return SURVEYS[name.upper()]
    except KeyError:
        raise ValueError(f"unknown survey {name!r}; known: {', '.join(SURVEYS)}") from None
