"""Surveys as data: everything that differs between the ZTF and LSST flows.

Both flows are the same chain of operators (`dataflows/oracle.py`); a survey
contributes its topic, BOOM filter, collection names and fields, input
builder, taxonomy, default weights, sample, and where links point. A third
survey is one more `Survey` here and one input builder module.

A builder may take options from the settings (`Settings` fields named in the
survey's `input_options`, e.g. LSST's `forced_photometry`); `configured(survey)`
binds them, and the flow modules run `build_flow(*configured(SURVEY))`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable, Optional

from models.taxonomy import LSST_TAXONOMY, ZTF_TAXONOMY, Taxonomy
from operators import lsst_inputs, ztf_inputs
from operators.config import DATA_DIR, Settings
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
    input_options: tuple[str, ...] = ()  # Settings fields passed to build_inputs as keywords
    # Where a person looks at an object (compare reports); `object_url` when unset.
    source_url: Optional[Callable[[str], str]] = None
    # Alert-document field holding the alert's time as a JD (backfill windows). BOOM writes
    # `candidate.jd` (UTC) on LSST documents too, beside the DiaSource's `midpointMjdTai` (TAI).
    time_field: str = "candidate.jd"

    def link(self, object_id: str) -> str:
        return (self.source_url or self.object_url)(object_id)


def fritz_alert_url(object_id: str) -> str:
    return f"https://fritz.science/alerts/ztf/{object_id}"


def fritz_source_url(object_id: str) -> str:
    return f"https://fritz.science/source/{object_id}"


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
    source_url=fritz_source_url,
    slack_channel_env="SLACK_ORACLE_CHANNEL_ID",
)


def babamul_object_url(object_id: str) -> str:
    return f"https://babamul.caltech.edu/objects/LSST/{object_id}"


LSST = Survey(
    name="LSST",
    topic="LSST_alerts_results",
    filter_name="superphot_lsst",
    collections=Collections(
        alerts="LSST_alerts",
        aux="LSST_alerts_aux",
        cutouts="LSST_alerts_cutouts",
        alert_fields=lsst_inputs.ALERT_FIELDS,
        aux_fields=lsst_inputs.AUX_FIELDS,
    ),
    build_inputs=lsst_inputs.lsst_inputs,
    taxonomy=LSST_TAXONOMY,
    weights=DATA_DIR / "best_model_f1_lsst.pth",  # ORACLE ELAsTiCCv2-lite
    sample_dir=DATA_DIR / "lsst_sample",
    object_url=babamul_object_url,
    slack_channel_env="SLACK_ORACLE_LSST_CHANNEL_ID",
    input_options=("forced_photometry",),
)

SURVEYS = {"ZTF": ZTF, "LSST": LSST}


def configured(survey: Survey, settings: Optional[Settings] = None) -> tuple[Survey, Settings]:
    """What `build_flow` takes: `survey` with its input builder given the `input_options`
    it takes from `settings`, and those settings (read from the environment when not given)."""
    settings = settings or Settings.from_env(survey)
    options = {name: getattr(settings, name) for name in survey.input_options}
    if options:
        survey = replace(survey, build_inputs=partial(survey.build_inputs, **options))
    return survey, settings


def survey_named(name: str) -> Survey:
    try:
        return SURVEYS[name.upper()]
    except KeyError:
        raise ValueError(f"unknown survey {name!r}; known: {', '.join(SURVEYS)}") from None
