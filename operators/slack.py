"""Slack posts of ORACLE classifications: text for people and the probability tree.

Each post goes to the survey's channel (`SLACK_ORACLE_CHANNEL_ID` for ZTF,
`SLACK_ORACLE_LSST_CHANNEL_ID` for LSST) as one file upload
(`WebClient.files_upload_v2`: `files.getUploadURLExternal`, the upload, then
`files.completeUploadExternal`) whose initial comment holds the object id, the
top classes with their probabilities, a link (the Fritz source page or alert
page for ZTF, Babamul for LSST) and, when known, the classifications people
gave on Fritz; the file is a PNG of the probability tree (`operators.tree_plot`).

Only alerts worth a look are posted (predicted leaf probability at least
`SLACK_MIN_LEAF_PROBABILITY`), and an alert (candid) is never posted twice:
the posted candids and the alerts still waiting are the sink's recovery state.
Posting happens on the one-thread `BackgroundSender` (operators/background.py)
with a bounded queue, so a slow or failing Slack never blocks classification. What a failure does:

- errors that cannot heal by waiting (`not_in_channel`, `channel_not_found`,
  `invalid_auth`, `account_inactive`, `missing_scope`, ...) stop Slack posting
  with one line saying what to do in Slack — instead of failing every later
  alert (with `not_in_channel` each of those would leave an unshared file);
- transient failures (network, 5xx, `ratelimited` beyond slack_sdk's retries,
  the byte upload that slack_sdk does not retry) keep the alert at the head of
  the queue and retry it after 1, 2, 4 ... 60 s: an outage of minutes loses no
  post, and a restart resumes the queue from the recovered state;
- anything else (e.g. a refused argument) drops that alert, said once per kind.

Rate limits are first retried by slack_sdk's `RateLimitErrorRetryHandler`
(honouring Retry-After). Nothing is raised out of the sink.

Inputs: result records (candid, objectId, jd, survey, probabilities,
predicted, model, processed_at, and for ZTF the Fritz context the flow's
`fritz_context` step put on them), a `Taxonomy` (or one per survey).
Outputs: Slack file posts.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional, Union

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from cachetools import FIFOCache
from slack_sdk import WebClient
from slack_sdk.errors import SlackRequestError

from models.taxonomy import Taxonomy
from operators import metrics
from operators.background import STOP, BackgroundSender
from operators.config import env_bool
from operators.fritz_client import scrub
from operators.fritz_config import DEFAULT_URL as FRITZ_DEFAULT_URL
from operators.ratelimit import backoff_delay
from operators.results import Result
from operators.slack_post import (  # noqa: F401 - the plain parts, re-exported for callers
    FATAL,
    MAX_OTHER_ATTEMPTS,
    failure_kind,
    format_message,
    leaf_probability,
    make_client,
    object_link,
    post_alert,
    sdk_log,
    top_classes,
)

log = logging.getLogger(__name__)

BABAMUL_URL = "https://babamul.caltech.edu"


@dataclass(frozen=True)
class SlackConfig:
    """Slack sink settings. Posts only when `enabled` (POST_TO_SLACK)."""

    enabled: bool = False
    token: str = field(default="", repr=False)
    ztf_channel: str = ""
    lsst_channel: str = ""
    min_leaf_probability: float = 0.0
    top_k: int = 3
    fritz_url: str = FRITZ_DEFAULT_URL
    babamul_url: str = BABAMUL_URL
    base_url: Optional[str] = None  # Slack API base (tests, proxies); slack_sdk's default when None
    rate_limit_retries: int = 3
    timeout: int = 30  # seconds per Slack request
    max_pending: int = 500  # alerts waiting to be posted; the oldest is dropped beyond
    max_remembered: int = 20_000  # posted candids kept in the recovery state
    retry_base: float = 1.0  # seconds before the first retry of a transient failure; doubles
    retry_max: float = 60.0  # seconds, the longest wait between retries
    close_timeout: float = 60.0  # at the end of a run, wait this long for the queue
    dpi: float = 110.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_leaf_probability <= 1.0:
            raise ValueError("SLACK_MIN_LEAF_PROBABILITY must be within [0, 1]")
        if self.enabled:
            if not self.token:
                raise ValueError("POST_TO_SLACK is true but SLACK_BOT_TOKEN is not set")
            if not (self.ztf_channel or self.lsst_channel):
                raise ValueError("POST_TO_SLACK is true but neither SLACK_ORACLE_CHANNEL_ID nor "
                                 "SLACK_ORACLE_LSST_CHANNEL_ID is set")

    def channel_for(self, survey: str) -> str:
        return {"ZTF": self.ztf_channel, "LSST": self.lsst_channel}.get(str(survey).upper(), "")

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None) -> "SlackConfig":
        env = os.environ if environ is None else environ
        raw_min = env.get("SLACK_MIN_LEAF_PROBABILITY", "").strip()
        try:
            min_p = float(raw_min) if raw_min else 0.0
        except ValueError:
            raise ValueError(f"SLACK_MIN_LEAF_PROBABILITY must be a number, got {raw_min!r}") from None
        return cls(
            enabled=env_bool(env, "POST_TO_SLACK", False),
            token=env.get("SLACK_BOT_TOKEN", "").strip(),
            ztf_channel=env.get("SLACK_ORACLE_CHANNEL_ID", "").strip(),
            lsst_channel=env.get("SLACK_ORACLE_LSST_CHANNEL_ID", "").strip(),
            min_leaf_probability=min_p,
            fritz_url=(env.get("FRITZ_URL", "").strip() or FRITZ_DEFAULT_URL).rstrip("/"),
            babamul_url=(env.get("BABAMUL_URL", "").strip() or BABAMUL_URL).rstrip("/"),
            base_url=env.get("SLACK_API_URL", "").strip() or None,
        )


# ---------------------------------------------------------------------------
# Bytewax sink


@dataclass(frozen=True)
class _Alert:
    """What a post needs from a result record (kept in the recovery state)."""

    candid: int
    objectId: str
    jd: Optional[float]
    survey: str
    probabilities: dict
    predicted: Optional[str]
    model: Optional[str]
    fritz_classifications: str = ""
    fritz_ml_classifications: str = ""
    fritz_link: str = ""

    @classmethod
    def of(cls, r: Result) -> "_Alert":
        return cls(int(r.candid), r.objectId, float(r.jd), r.survey.upper(), dict(r.probabilities), r.predicted,
                   r.model, r.fritz_classifications, r.fritz_ml_classifications, r.fritz_link)


class _SlackPartition(StatefulSinkPartition):
    """Takes `Result`s (bytewax hands a partitioned sink the values, not the keys) and
    posts them from a one-thread `BackgroundSender`: in order, the head retried."""

    def __init__(self, sink: "SlackSink", resume_state: Optional[dict]):
        self._sink = sink
        self._cfg = sink.config
        self._posted: FIFOCache = FIFOCache(maxsize=max(1, self._cfg.max_remembered))
        self.stats: Counter[str] = Counter()
        self._warned: set[str] = set()
        self._failures = 0  # consecutive transient failures of the alert at the head
        self.stopped: Optional[str] = None  # why posting stopped (an error that cannot heal)
        state = resume_state or {}
        for c in state.get("posted", []):
            self._posted[int(c)] = None
        self._client: Optional[WebClient] = None
        self._sender: Optional[BackgroundSender] = None
        if self._cfg.enabled:
            self._client = sink.client or make_client(
                self._cfg.token, base_url=self._cfg.base_url,
                rate_limit_retries=self._cfg.rate_limit_retries, timeout=self._cfg.timeout)
            self._sender = BackgroundSender("slack-poster", self._send, max_pending=self._cfg.max_pending)
            for a in state.get("pending", []):
                alert = _Alert(**a)
                self._sender.submit(alert.candid, alert)
        elif "disabled" not in sink._said:
            sink._said.add("disabled")
            log.info("Slack posts disabled (POST_TO_SLACK is not true)")
        self._resumed_pending = [] if self._sender else list(state.get("pending", []))

    # -- bytewax side (never blocks, never raises) ----------------------------

    def write_batch(self, values: list[Result]) -> None:
        if self._sender is None:
            return
        for result in values:
            try:
                self._accept(result)
            except Exception:  # noqa: BLE001
                self._once("record", logging.ERROR, "Slack sink: cannot use record %r",
                           getattr(result, "candid", result), exc_info=True)

    def _accept(self, result: Result) -> None:
        if self.stopped:
            self.stats["not_posted_stopped"] += 1
            return
        alert = _Alert.of(result)
        taxonomy = self._sink.taxonomy_for(alert.survey)
        if taxonomy is None:
            self._once(f"tax-{alert.survey}", logging.WARNING,
                       "Slack sink: no taxonomy for survey %s; its alerts are not posted", alert.survey)
            return
        if not self._cfg.channel_for(alert.survey):
            self._once(f"chan-{alert.survey}", logging.WARNING,
                       "Slack sink: no channel for %s alerts (set %s); they are not posted", alert.survey,
                       "SLACK_ORACLE_LSST_CHANNEL_ID" if alert.survey == "LSST" else "SLACK_ORACLE_CHANNEL_ID")
            return
        if leaf_probability(alert, taxonomy) < self._cfg.min_leaf_probability:
            self.stats["below_threshold"] += 1
            return
        if alert.candid in self._posted or alert.candid in self._sender:
            self.stats["already_posted"] += 1
            return
        dropped = self._sender.submit(alert.candid, alert)
        if dropped:
            self.stats["dropped"] += len(dropped)
            first = dropped[0][1]
            self._once("dropped", logging.WARNING,
                       "Slack posting is behind: more than %d alerts waiting; dropping the oldest "
                       "(first dropped: %s %s)", self._cfg.max_pending, first.objectId, first.candid)

    def snapshot(self) -> dict:
        pending = self._sender.pending() if self._sender else []
        return {"posted": list(self._posted), "pending": [asdict(a) for a in pending] or self._resumed_pending}

    def close(self) -> None:
        if self._sender is not None:
            left = self._sender.close(self._cfg.close_timeout)
            log.info("Slack posts this run: %s%s", dict(self.stats),
                     f"; {left} alerts not posted (flow closing)" if left else "")

    # -- the sender's thread --------------------------------------------------

    def _send(self, candid: int, alert: _Alert) -> Union[None, float, str]:
        """Post one alert: None when done with it, a pause before retrying it, or STOP."""
        outcome = self._post(alert, self._failures)
        if outcome == "retry":
            self._failures += 1
            self.stats["retries"] += 1
            return backoff_delay(self._failures, base=self._cfg.retry_base, cap=self._cfg.retry_max, jitter=0.5)
        self._failures = 0
        if outcome == "stopped":
            return STOP
        if outcome == "posted":
            self._posted[alert.candid] = None
        return None

    def _post(self, alert: _Alert, failures: int) -> str:
        """Post one alert: "posted", "retry" (transient: keep it at the head), "dropped" or "stopped"."""
        cfg = self._cfg
        try:
            taxonomy = self._sink.taxonomy_for(alert.survey)
            link = object_link(alert, cfg, alert.fritz_link or None)
            post_alert(self._client, cfg.channel_for(alert.survey), alert, taxonomy, link=link,
                       fritz_classifications=alert.fritz_classifications, top_k=cfg.top_k, dpi=cfg.dpi,
                       fritz_ml_classifications=alert.fritz_ml_classifications)
        except Exception as e:  # noqa: BLE001 - never let Slack break anything
            kind, name = failure_kind(e)
            text = scrub(f"{type(e).__name__}: {e}", (cfg.token,)).splitlines()[0][:300]
            metrics.slack_post("failure", survey=alert.survey)
            self.stats[f"error_{name}"] += 1
            if kind == "fatal":
                channel = cfg.channel_for(alert.survey)
                self.stopped = name
                log.error("Slack posting stopped: Slack answered %s for channel %s (%s). Classification and "
                          "the CSV go on; restart the flow after fixing it in Slack.", name, channel, FATAL[name])
                return "stopped"
            if kind == "transient" or (isinstance(e, SlackRequestError) and failures < MAX_OTHER_ATTEMPTS):
                self._once(f"transient-{name}", logging.WARNING,
                           "Slack post of %s (%s) failed (%s); it is retried with backoff and the alerts "
                           "behind it wait in the queue (at most %d). Said once per kind of failure.",
                           alert.objectId, alert.candid, text, cfg.max_pending)
                return "retry"
            self._once(f"other-{name}", logging.ERROR,
                       "Slack refused the post of %s (%s): %s. This alert is not posted; classification and "
                       "the CSV are not affected; said once per error kind.", alert.objectId, alert.candid, text)
            return "dropped"
        metrics.slack_post("success", survey=alert.survey)
        self.stats["posted"] += 1
        return "posted"

    def _once(self, key: str, level: int, msg: str, *args: Any, exc_info: bool = False) -> None:
        if key in self._warned:
            log.debug(msg, *args)
            return
        self._warned.add(key)
        log.log(level, msg, *args, exc_info=exc_info)


class SlackSink(FixedPartitionedSink):
    """Post worthwhile classifications to Slack, each candid once (recoverable).

    Items: `Result`s, keyed on the stream as a partitioned sink needs (the key is
    ignored; one partition). The recovery state is `{"posted": [candid, ...], "pending": [alert, ...]}`.
    `taxonomy` is one Taxonomy for every survey, or a mapping survey -> Taxonomy.
    """

    def __init__(
        self,
        config: SlackConfig,
        taxonomy: Union[Taxonomy, Mapping[str, Taxonomy]],
        *,
        client: Optional[WebClient] = None,
    ):
        self.config = config
        self.taxonomy = taxonomy
        self.client = client
        self._said: set[str] = set()

    def taxonomy_for(self, survey: str) -> Optional[Taxonomy]:
        if isinstance(self.taxonomy, Taxonomy):
            return self.taxonomy
        return self.taxonomy.get(str(survey).upper())

    def list_parts(self) -> list[str]:
        return ["slack"]

    def part_fn(self, item_key: str) -> int:
        return 0

    def build_part(self, step_id: str, for_part: str, resume_state: Optional[dict]) -> _SlackPartition:
        return _SlackPartition(self, resume_state)


__all__ = [
    "SlackConfig",
    "SlackSink",
    "failure_kind",
    "format_message",
    "leaf_probability",
    "make_client",
    "object_link",
    "post_alert",
    "sdk_log",
    "top_classes",
]
