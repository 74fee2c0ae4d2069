"""Slack posts of ORACLE classifications: text for people and the probability tree.

Each post goes to the survey's channel (the variable its `Survey.slack_channel_env`
names: `SLACK_ORACLE_CHANNEL_ID` for ZTF, `SLACK_ORACLE_LSST_CHANNEL_ID` for LSST) as one file upload
(`WebClient.files_upload_v2`: `files.getUploadURLExternal`, the upload, then
`files.completeUploadExternal`) whose initial comment holds the object id, the
top classes with their probabilities, a link (the Fritz source page found by
the flow, else the survey's `object_link`: Fritz for ZTF, Babamul for LSST) and, when known, the classifications people
gave on Fritz; the file is a PNG of the probability tree (`operators.oracle.tree_plot`).

Only alerts worth a look are posted (predicted leaf probability at least
`SLACK_MIN_LEAF_PROBABILITY`), and an alert (candid) is never posted twice:
the posted candids and the alerts still waiting are the sink's recovery state.
Posting happens on the one-thread `SlackPoster`, a `Delivery` (operators/sinks/background.py),
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
`fritz_context` step put on them), the `Survey` (or one per survey name).
Outputs: Slack file posts.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Mapping, Optional, Union

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from cachetools import FIFOCache
from slack_sdk import WebClient
from slack_sdk.errors import SlackRequestError

from operators.runtime import bounds, metrics
from operators.runtime.settings import plain
from operators.sinks.background import RETRY, STOP, Delivery
from operators.sinks.fritz_client import scrub
from operators.oracle.results import Result
from operators.runtime.slack_settings import SlackConfig  # noqa: F401 - the sink's settings, re-exported
from operators.sinks.slack_post import (  # noqa: F401 - the plain parts, re-exported for callers
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

if TYPE_CHECKING:  # the flow hands the sink its survey; nothing here imports the surveys
    from operators.oracle.surveys import Survey


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
        return cls(int(r.candid), r.objectId, float(r.jd), r.survey, dict(r.probabilities), r.predicted,
                   r.model, r.fritz_classifications, r.fritz_ml_classifications, r.fritz_link)


class SlackPoster(Delivery):
    """How to post one alert to Slack (the rest is `Delivery`'s): one thread, so posts keep
    their order and a transient failure keeps the alert at the head, retried with backoff."""

    what = "alerts"
    service = "Slack"
    kept = "they are in the recovery state (with ALERTFLOW_RECOVERY on) and posted after a restart"

    def __init__(self, sink: "SlackSink", client: WebClient, posted: FIFOCache):
        cfg = sink.config
        super().__init__("slack-poster", max_pending=cfg.max_pending, retry_base=cfg.retry_base,
                         retry_max=cfg.retry_max)
        self._sink, self._cfg, self._client, self._posted = sink, cfg, client, posted
        self.stopped: Optional[str] = None  # why posting stopped (an error that cannot heal)

    def send(self, candid: int, alert: _Alert) -> Union[None, str]:
        """Post one alert: None when done with it (posted, or dropped after saying why), RETRY or STOP."""
        cfg = self._cfg
        try:
            survey = self._sink.survey_for(alert.survey)
            link = object_link(survey, alert.objectId, cfg, alert.fritz_link or None)
            post_alert(self._client, cfg.channel_for(survey), alert, survey.taxonomy, link=link, site=survey.link_site,
                       fritz_classifications=alert.fritz_classifications, top_k=cfg.top_k, dpi=cfg.dpi,
                       fritz_ml_classifications=alert.fritz_ml_classifications)
        except Exception as e:  # noqa: BLE001 - never let Slack break anything
            kind, name = failure_kind(e)
            text = scrub(f"{type(e).__name__}: {e}", (plain(cfg.token),)).splitlines()[0][:300]
            metrics.slack_post("failure", survey=alert.survey)
            self.count(f"error_{name}")
            if kind == "fatal":
                self.stopped = name
                log.error("Slack posting stopped: Slack answered %s for channel %s (%s). Classification and "
                          "the CSV go on; restart the flow after fixing it in Slack.", name,
                          cfg.channel_for(survey), FATAL[name])
                return STOP
            if kind == "transient" or (isinstance(e, SlackRequestError) and self._failures < MAX_OTHER_ATTEMPTS):
                self.last_failure = f"Slack: {text}"
                self.once(f"transient-{name}", logging.WARNING,
                          "Slack post of %s (%s) failed (%s); it is retried with backoff and the alerts "
                          "behind it wait in the queue (at most %d). Said once per kind of failure.",
                          alert.objectId, alert.candid, text, cfg.max_pending)
                return RETRY
            self.once(f"other-{name}", logging.ERROR,
                      "Slack refused the post of %s (%s): %s. This alert is not posted; classification and "
                      "the CSV are not affected; said once per error kind.", alert.objectId, alert.candid, text)
            return None
        metrics.slack_post("success", survey=alert.survey)
        self.count("posted")
        self._posted[alert.candid] = None
        return None


class _SlackPartition(StatefulSinkPartition):
    """Takes `Result`s (bytewax hands a partitioned sink the values, not the keys), keeps
    those worth a post and not posted yet, and hands them to a `SlackPoster`."""

    def __init__(self, sink: "SlackSink", resume_state: Optional[dict]):
        self._sink = sink
        self._cfg = sink.config
        self._posted: FIFOCache = FIFOCache(maxsize=max(1, self._cfg.max_remembered))
        state = resume_state or {}
        for c in state.get("posted", []):
            self._posted[int(c)] = None
        self._poster: Optional[SlackPoster] = None
        if self._cfg.enabled:
            client = sink.client or make_client(
                plain(self._cfg.token), base_url=self._cfg.base_url,
                rate_limit_retries=self._cfg.rate_limit_retries, timeout=self._cfg.timeout)
            self._poster = SlackPoster(sink, client, self._posted)
            for a in state.get("pending", []):
                alert = _Alert(**a)
                self._poster.submit(alert.candid, alert)
        elif "disabled" not in sink._said:
            sink._said.add("disabled")
            log.info("Slack posts disabled (POST_TO_SLACK is not true)")
        self._resumed_pending = [] if self._poster else list(state.get("pending", []))
        # Sizes for the soak and `alertflow_bounded_items` (one writer, the poster thread; len() is atomic):
        # the queue holds at most max_pending alerts waiting plus the one being posted.
        if self._poster is not None:
            bounds.track("slack_posted", self._posted, self._posted.maxsize,
                         where="SlackConfig.max_remembered (operators/runtime/slack_settings.py)")
            bounds.track("slack_queue", self._poster, self._cfg.max_pending + 1,
                         where="SlackConfig.max_pending waiting + 1 being posted (operators/runtime/slack_settings.py)")

    @property
    def stats(self) -> Counter:
        return self._poster.stats if self._poster is not None else Counter()

    @property
    def stopped(self) -> Optional[str]:
        return self._poster.stopped if self._poster is not None else None

    # -- bytewax side (never blocks, never raises) ----------------------------

    def write_batch(self, values: list[Result]) -> None:
        if self._poster is None:
            return
        for result in values:
            try:
                self._accept(result)
            except Exception:  # noqa: BLE001
                self._poster.once("record", logging.ERROR, "Slack sink: cannot use record %r",
                                  getattr(result, "candid", result), exc_info=True)

    def _accept(self, result: Result) -> None:
        poster = self._poster
        if poster.stopped:
            poster.count("not_posted_stopped")
            return
        alert = _Alert.of(result)
        survey = self._sink.survey_for(alert.survey)
        if survey is None:
            poster.once(f"tax-{alert.survey}", logging.WARNING,
                        "Slack sink: unknown survey %s; its alerts are not posted", alert.survey)
            return
        if not self._cfg.channel_for(survey):
            poster.once(f"chan-{alert.survey}", logging.WARNING,
                        "Slack sink: no channel for %s alerts (set %s); they are not posted", survey.name,
                        survey.slack_channel_env)
            return
        if leaf_probability(alert, survey.taxonomy) < self._cfg.min_leaf_probability:
            poster.count("below_threshold")
            return
        if alert.candid in self._posted or alert.candid in poster:
            poster.count("already_posted")
            return
        dropped = poster.submit(alert.candid, alert)
        if dropped:
            poster.count("dropped", len(dropped))
            first = dropped[0][1]
            poster.once("dropped", logging.WARNING,
                        "Slack posting is behind: more than %d alerts waiting; dropping the oldest "
                        "(first dropped: %s %s)", self._cfg.max_pending, first.objectId, first.candid)

    def snapshot(self) -> dict:
        pending = self._poster.pending() if self._poster else []
        return {"posted": list(self._posted), "pending": [asdict(a) for a in pending] or self._resumed_pending}

    def close(self) -> None:
        if self._poster is not None:
            left = self._poster.close(self._cfg.close_timeout)
            log.info("Slack posts this run: %s%s", dict(self.stats),
                     f"; {left} alerts not posted (flow closing)" if left else "")


class SlackSink(FixedPartitionedSink):
    """Post worthwhile classifications to Slack, each candid once (recoverable).

    Items: `Result`s, keyed on the stream as a partitioned sink needs (the key is
    ignored; one partition). The recovery state is `{"posted": [candid, ...], "pending": [alert, ...]}`.
    `surveys` is the flow's `Survey` (every result is of it), or a mapping of
    survey name (the results' `survey`) -> `Survey`: its taxonomy, channel and links.
    """

    def __init__(
        self,
        config: SlackConfig,
        surveys: Union["Survey", Mapping[str, "Survey"]],
        *,
        client: Optional[WebClient] = None,
    ):
        self.config = config
        self.surveys = surveys
        self.client = client
        self._said: set[str] = set()

    def survey_for(self, name: str) -> Optional["Survey"]:
        if isinstance(self.surveys, Mapping):
            return self.surveys.get(name)
        return self.surveys

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
