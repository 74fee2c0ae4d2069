"""Slack sink settings (`SlackConfig`, a settings model; see operators/runtime/settings.py).

Apart from operators/sinks/slack.py so that the flow's settings (operators/runtime/config.py)
never import the sink: the sink imports its settings.
"""

from __future__ import annotations

import os
from typing import Annotated, Mapping, Optional

from pydantic import Field, SecretStr, field_validator, model_validator

from operators.runtime.fritz_settings import DEFAULT_URL as FRITZ_DEFAULT_URL
from operators.runtime.settings import ConfigError, EnvModel, plain

BABAMUL_URL = "https://babamul.caltech.edu"


class SlackConfig(EnvModel):
    """Slack sink settings. Posts only when `enabled` (POST_TO_SLACK)."""

    enabled: bool = Field(False, validation_alias="POST_TO_SLACK", description="post classifications to Slack")
    token: SecretStr = Field(SecretStr(""), validation_alias="SLACK_BOT_TOKEN",
                             description="Slack bot token; needed when POST_TO_SLACK=true")
    ztf_channel: str = Field("", validation_alias="SLACK_ORACLE_CHANNEL_ID", description="Slack channel id for ZTF posts")
    lsst_channel: str = Field("", validation_alias="SLACK_ORACLE_LSST_CHANNEL_ID",
                              description="Slack channel id for LSST posts")
    # Further surveys' channels: their `slack_channel_env` variable -> channel id (read by `from_env`).
    channels: Mapping[str, str] = Field(default_factory=dict, exclude=True)
    min_leaf_probability: Annotated[float, Field(ge=0, le=1)] = Field(
        0.0, validation_alias="SLACK_MIN_LEAF_PROBABILITY",
        description="post only alerts whose predicted leaf has at least this probability")
    fritz_url: str = Field(FRITZ_DEFAULT_URL, validation_alias="FRITZ_URL",
                           description="Fritz base URL (ZTF links in Slack posts)")
    babamul_url: str = Field(BABAMUL_URL, validation_alias="BABAMUL_URL",
                             description="Babamul base URL (LSST links in Slack posts)")
    base_url: Optional[str] = Field(None, validation_alias="SLACK_API_URL",
                                    description="Slack Web API base URL (a proxy or a test server); "
                                                "unset: slack_sdk's default")
    # Not read from the environment: tuned in code.
    top_k: int = 3
    rate_limit_retries: int = 3
    timeout: int = 30  # seconds per Slack request
    max_pending: int = 500  # alerts waiting to be posted; the oldest is dropped beyond
    max_remembered: int = 20_000  # posted candids kept in the recovery state
    retry_base: float = 1.0  # seconds before the first retry of a transient failure; doubles
    retry_max: float = 60.0  # seconds, the longest wait between retries
    close_timeout: float = 60.0  # at the end of a run, wait this long for the queue
    dpi: float = 110.0

    @field_validator("fritz_url", "babamul_url")
    @classmethod
    def _no_trailing_slash(cls, v: str) -> str:
        return v.rstrip("/")

    @model_validator(mode="after")
    def _check(self) -> "SlackConfig":
        if self.enabled:
            if not plain(self.token):
                raise ValueError("POST_TO_SLACK is true but SLACK_BOT_TOKEN is not set")
        return self

    def channel_for(self, survey) -> str:
        """The channel id set in the survey's `slack_channel_env` variable ("" when unset)."""
        return self.channel_named(survey.slack_channel_env)

    def channel_named(self, variable: str) -> str:
        """The channel id set in `variable` ("" when unset)."""
        known = {"SLACK_ORACLE_CHANNEL_ID": self.ztf_channel, "SLACK_ORACLE_LSST_CHANNEL_ID": self.lsst_channel}
        return {**known, **self.channels}.get(variable, "")

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None,
                 channel_variables: tuple[str, ...] = ()) -> "SlackConfig":
        """`channel_variables`: further channel variables to read (a survey's `slack_channel_env`)."""
        config = cls.read(environ)
        env = os.environ if environ is None else environ
        extra = {v: env.get(v, "").strip() for v in channel_variables}
        config = config.model_copy(update={"channels": extra}) if any(extra.values()) else config
        if config.enabled and not (config.ztf_channel or config.lsst_channel or any(extra.values())):
            wanted = " or ".join(dict.fromkeys((*channel_variables, "SLACK_ORACLE_CHANNEL_ID",
                                                "SLACK_ORACLE_LSST_CHANNEL_ID")))
            raise ConfigError(f"POST_TO_SLACK is true but no Slack channel is set -> set {wanted}, "
                              "or POST_TO_SLACK=false")
        return config


__all__ = ["BABAMUL_URL", "SlackConfig"]
