"""Surveys as data: everything that differs between the ZTF and LSST flows.

Both flows are the same chain of operators (`dataflows/oracle.py`); a survey
contributes its topic, BOOM filter, collection names and fields, input
builder, taxonomy, default weights, sample, whether Fritz holds its objects,
its Slack channel variable, and where links point. Nothing outside this module
compares survey names: a third survey is one more `Survey` (here, or in a test:
tests/test_third_survey.py) and one input builder module.

A builder may take options from the settings (`Settings` fields named in the
survey's `input_options`, e.g. LSST's `forced_photometry`); `configured(survey)`
binds them, and the flow modules run `build_flow(*configured(SURVEY))`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable, Optional

from models.oracle.taxonomy import LSST_TAXONOMY, ZTF_TAXONOMY, Taxonomy
from operators.oracle import lsst_inputs, ztf_inputs
from operators.runtime.config import DATA_DIR, Settings
from operators.runtime.fritz_settings import DEFAULT_URL as FRITZ_URL
from operators.oracle.store import Collections


# Base URLs a link template may name (`{fritz_url}`, `{babamul_url}`); the Slack
# settings FRITZ_URL and BABAMUL_URL override them for the posts.
LINK_BASES = {"fritz_url": FRITZ_URL, "babamul_url": "https://babamul.caltech.edu"}


@dataclass(frozen=True)
class Survey:
    name: str  # "ZTF", "LSST": results' `survey` column, file names (oracle_<name>_results.csv), variables
    topic: str
    filter_name: str
    collections: Collections
    build_inputs: Callable  # (alert_doc, aux_doc, cutout_doc, with_stamp) -> ModelInputs
    taxonomy: Taxonomy  # the classes of the survey's ORACLE checkpoints (load_oracle is given it)
    weights: Path
    sample_dir: Path
    # Where a person looks at an object: a template of `{object_id}` and LINK_BASES names,
    # and the site's name, shown before the link in Slack posts.
    object_link: str
    link_site: str
    slack_channel_env: str  # the variable holding this survey's Slack channel id
    input_options: tuple[str, ...] = ()  # Settings fields passed to build_inputs as keywords
    # A better page once the object is known there (compare reports); `object_link` when empty.
    source_link: str = ""
    # Fritz (SkyPortal) holds this survey's objects: the flow reads their context there and
    # annotates them with FRITZ_TOKEN, and `check` asks Fritz. Off: Fritz is never asked.
    fritz: bool = False
    # Alert-document field holding the alert's time as a JD (backfill windows). BOOM writes
    # `candidate.jd` (UTC) on LSST documents too, beside the DiaSource's `midpointMjdTai` (TAI).
    time_field: str = "candidate.jd"

    def __post_init__(self) -> None:
        for template in (self.object_link, self.source_link):
            try:  # a misspelt placeholder fails here, not in the first Slack post at night
                template.format_map({**LINK_BASES, "object_id": "x"})
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"survey {self.name}: link template {template!r} names {exc}; it may use "
                                 f"{{object_id}} and {', '.join('{' + k + '}' for k in LINK_BASES)}") from None

    def object_url(self, object_id: str, **bases: str) -> str:
        """The object's page (`bases` override LINK_BASES, e.g. `fritz_url=` from the settings)."""
        return self.object_link.format_map({**LINK_BASES, **bases, "object_id": object_id})

    def link(self, object_id: str, **bases: str) -> str:
        """The best page for a person: the source page where there is one, else the object page."""
        return (self.source_link or self.object_link).format_map({**LINK_BASES, **bases, "object_id": object_id})


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
    object_link="{fritz_url}/alerts/ztf/{object_id}",
    source_link="{fritz_url}/source/{object_id}",
    link_site="Fritz",
    fritz=True,
    slack_channel_env="SLACK_ORACLE_CHANNEL_ID",
)

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
    object_link="{babamul_url}/objects/LSST/{object_id}",  # Fritz holds no LSST objects
    link_site="Babamul",
    slack_channel_env="SLACK_ORACLE_LSST_CHANNEL_ID",
    input_options=("forced_photometry",),
)

SURVEYS = {"ZTF": ZTF, "LSST": LSST}


def configured(survey: Survey, settings: Optional[Settings] = None) -> tuple[Survey, Settings]:
    """What `build_flow` takes: `survey` with its input builder given the `input_options`
    it takes from `settings`, and those settings (read from the environment when not given)."""
    settings = settings or Settings.from_env(survey)
    options = {name: getattr(settings.oracle, name) for name in survey.input_options}
    if options:
        survey = replace(survey, build_inputs=partial(survey.build_inputs, **options))
    return survey, settings


def survey_named(name: str) -> Survey:
    try:
        return SURVEYS[name.upper()]
    except KeyError:
        raise ValueError(f"unknown survey {name!r}; known: {', '.join(SURVEYS)}") from None
