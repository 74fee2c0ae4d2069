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
Posting happens on a background thread with a bounded queue, so a slow or
failing Slack never blocks classification; rate limits are retried by
slack_sdk's `RateLimitErrorRetryHandler` (honouring Retry-After); errors are
logged once per kind, clearly, and never raised out of the sink.

Inputs: result records (candid, objectId, jd, survey, probabilities,
predicted, model, processed_at), a `Taxonomy` (or one per survey), optionally
a `FritzClient` for context. Outputs: Slack file posts.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional, Union

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)

from models.taxonomy import Taxonomy
from operators import metrics
from operators.config import env_bool
from operators.fritz import DEFAULT_URL as FRITZ_DEFAULT_URL
from operators.fritz import FritzClient, alert_link
from operators.tree_plot import format_probability, render_result_png

log = logging.getLogger(__name__)

# slack_sdk logs every failed attempt at ERROR; the sink says each kind of failure
# once itself. Lower this logger's level (e.g. to DEBUG) to see slack_sdk's detail.
sdk_log = logging.getLogger(__name__ + ".sdk")
if sdk_log.level == logging.NOTSET:
    sdk_log.setLevel(logging.CRITICAL)

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
    fritz_context_timeout: float = 5.0  # wait for Fritz classifications before posting
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
# Plain functions


def make_client(token: str, *, base_url: Optional[str] = None, rate_limit_retries: int = 3,
                timeout: int = 30) -> WebClient:
    """A WebClient that retries rate limits (Retry-After), connection and server errors."""
    kwargs: dict[str, Any] = {}
    if base_url:
        kwargs["base_url"] = base_url if base_url.endswith("/") else base_url + "/"
    return WebClient(
        token=token,
        timeout=timeout,
        logger=sdk_log,
        retry_handlers=[
            ConnectionErrorRetryHandler(max_retry_count=2),
            RateLimitErrorRetryHandler(max_retry_count=rate_limit_retries),
            ServerErrorRetryHandler(max_retry_count=2),
        ],
        **kwargs,
    )


def _p(probabilities: Mapping[str, Any], name: str) -> Optional[float]:
    try:
        p = float(probabilities.get(name))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return p if math.isfinite(p) else None


def top_classes(probabilities: Mapping[str, Any], taxonomy: Taxonomy, k: int = 3) -> list[tuple[str, float]]:
    """The `k` most probable leaves, most probable first."""
    leaves = [(taxonomy.nodes[i], _p(probabilities, taxonomy.nodes[i])) for i in taxonomy.leaves]
    known = [(n, p) for n, p in leaves if p is not None]
    return sorted(known, key=lambda np_: -np_[1])[: max(0, k)]


def leaf_probability(record: Any, taxonomy: Taxonomy) -> float:
    """Probability of the predicted leaf (the best leaf when `predicted` is unknown)."""
    probs = record.probabilities or {}
    p = _p(probs, getattr(record, "predicted", None) or "")
    if p is None:
        best = top_classes(probs, taxonomy, 1)
        p = best[0][1] if best else 0.0
    return p


def object_link(record: Any, config: SlackConfig, fritz_link: Optional[str] = None) -> str:
    """Babamul for LSST; for ZTF the Fritz link found (source page) or the alert page."""
    survey = str(getattr(record, "survey", "ZTF")).upper()
    if survey == "LSST":
        return f"{config.babamul_url}/objects/LSST/{record.objectId}"
    return fritz_link or alert_link(config.fritz_url, str(record.objectId))


def _esc(text: str) -> str:
    """Slack mrkdwn escaping of the three control characters."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def format_message(record: Any, taxonomy: Taxonomy, *, link: str, fritz_classifications: str = "",
                   top_k: int = 3) -> str:
    """The initial comment of a post (Slack mrkdwn)."""
    survey = str(getattr(record, "survey", "")).upper()
    where = "Babamul" if survey == "LSST" else "Fritz"
    probs = record.probabilities or {}
    predicted = getattr(record, "predicted", None)
    head = f"*{_esc(record.objectId)}*"
    if predicted:
        head += f"  ORACLE: *{_esc(predicted)}* ({format_probability(_p(probs, predicted))})"
    lines = [head]
    tops = top_classes(probs, taxonomy, top_k)
    if tops:
        lines.append("Top classes: " + " · ".join(f"{_esc(n)} {format_probability(p)}" for n, p in tops))
    lines.append(f"{where}: <{link}|{_esc(record.objectId)}>  {link}")
    if fritz_classifications:
        lines.append(f"Fritz classifications: {_esc(fritz_classifications)}")
    meta = [f"{survey or '?'} candid {record.candid}"]
    jd = _p({"jd": getattr(record, "jd", None)}, "jd")
    if jd is not None:
        meta.append(f"jd {jd:.5f}")
    if getattr(record, "model", None):
        meta.append(f"model {_esc(record.model)}")
    lines.append(" · ".join(meta))
    return "\n".join(lines)


def post_alert(client: WebClient, channel: str, record: Any, taxonomy: Taxonomy, *, link: str,
               fritz_classifications: str = "", top_k: int = 3, dpi: float = 110.0):
    """Upload the probability tree of `record` with its message to `channel`; raises slack_sdk errors."""
    png = render_result_png(record, taxonomy, dpi=dpi)
    return client.files_upload_v2(
        channel=channel,
        file=png,
        filename=f"{record.objectId}_{record.candid}.png",
        title=f"ORACLE {record.objectId} ({record.candid})",
        initial_comment=format_message(record, taxonomy, link=link,
                                       fritz_classifications=fritz_classifications, top_k=top_k),
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

    @classmethod
    def of(cls, r: Any) -> "_Alert":
        jd = _p({"jd": getattr(r, "jd", None)}, "jd")
        return cls(int(r.candid), str(r.objectId), jd, str(getattr(r, "survey", "ZTF") or "ZTF").upper(),
                   dict(r.probabilities or {}), getattr(r, "predicted", None), getattr(r, "model", None))


_HINTS = {
    "invalid_auth": "SLACK_BOT_TOKEN is wrong or revoked",
    "not_authed": "SLACK_BOT_TOKEN is missing",
    "account_inactive": "the Slack app's token was deactivated",
    "token_revoked": "SLACK_BOT_TOKEN was revoked",
    "missing_scope": "the Slack bot needs the files:write scope",
    "channel_not_found": "the channel id is wrong, or the bot cannot see that channel",
    "not_in_channel": "invite the bot to the channel",
    "ratelimited": "Slack kept rate-limiting after the retries",
}


class _SlackPartition(StatefulSinkPartition):
    def __init__(self, sink: "SlackSink", resume_state: Optional[dict]):
        self._sink = sink
        self._cfg = sink.config
        self._lock = threading.Condition()
        self._posted: OrderedDict[int, None] = OrderedDict()
        self._pending: deque[_Alert] = deque()
        self._queued: set[int] = set()
        self.stats: Counter[str] = Counter()
        self._warned: set[str] = set()
        self._closing = False
        state = resume_state or {}
        for c in state.get("posted", []):
            self._posted[int(c)] = None
        for a in state.get("pending", []):
            alert = _Alert(**a)
            self._pending.append(alert)
            self._queued.add(alert.candid)
        self._client: Optional[WebClient] = None
        self._thread: Optional[threading.Thread] = None
        if self._cfg.enabled:
            self._client = sink.client or make_client(
                self._cfg.token, base_url=self._cfg.base_url,
                rate_limit_retries=self._cfg.rate_limit_retries, timeout=self._cfg.timeout)
            self._thread = threading.Thread(target=self._run, name="slack-poster", daemon=True)
            self._thread.start()
        elif "disabled" not in sink._said:
            sink._said.add("disabled")
            log.info("Slack posts disabled (POST_TO_SLACK is not true)")

    # -- bytewax side (never blocks, never raises) ----------------------------

    def write_batch(self, values: list) -> None:
        if not self._cfg.enabled:
            return
        for item in values:
            try:
                self._accept(item[1] if isinstance(item, tuple) and len(item) == 2 else item)
            except Exception:  # noqa: BLE001
                self._once("record", logging.ERROR, "Slack sink: cannot use record %r",
                           getattr(item, "candid", item), exc_info=True)

    def _accept(self, record: Any) -> None:
        alert = _Alert.of(record)
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
        with self._lock:
            if alert.candid in self._posted or alert.candid in self._queued:
                self.stats["already_posted"] += 1
                return
            self._pending.append(alert)
            self._queued.add(alert.candid)
            dropped = None
            if len(self._pending) > self._cfg.max_pending:
                dropped = self._pending.popleft()
                self._queued.discard(dropped.candid)
                self.stats["dropped"] += 1
            self._lock.notify()
        if dropped is not None:
            self._once("dropped", logging.WARNING,
                       "Slack posting is behind: more than %d alerts waiting; dropping the oldest "
                       "(first dropped: %s %s)", self._cfg.max_pending, dropped.objectId, dropped.candid)

    def snapshot(self) -> dict:
        with self._lock:
            return {"posted": list(self._posted), "pending": [asdict(a) for a in self._pending]}

    def close(self) -> None:
        if self._thread is not None:
            deadline = time.monotonic() + self._cfg.close_timeout
            with self._lock:
                while self._pending and time.monotonic() < deadline:
                    self._lock.wait(min(0.2, max(0.0, deadline - time.monotonic())))
                left = len(self._pending)
                self._closing = True
                self._lock.notify_all()
            self._thread.join(timeout=max(0.5, min(5.0, self._cfg.close_timeout)))
            log.info("Slack posts this run: %s%s", dict(self.stats),
                     f"; {left} alerts not posted (flow closing)" if left else "")

    # -- poster thread ------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._closing:
                    self._lock.wait(0.5)
                if self._closing:
                    return
                alert = self._pending[0]  # stays in the state until it is done
            ok = self._post(alert)
            with self._lock:
                if self._pending and self._pending[0] is alert:
                    self._pending.popleft()
                self._queued.discard(alert.candid)
                if ok:
                    self._posted[alert.candid] = None
                    while len(self._posted) > self._cfg.max_remembered:
                        self._posted.popitem(last=False)
                self._lock.notify_all()

    def _post(self, alert: _Alert) -> bool:
        cfg = self._cfg
        try:
            taxonomy = self._sink.taxonomy_for(alert.survey)
            fritz_link, fritz_text = None, ""
            if alert.survey == "ZTF" and self._sink.fritz is not None:
                ctx = self._sink.fritz.context(alert.objectId, timeout=cfg.fritz_context_timeout)
                fritz_link, fritz_text = ctx.link, ctx.classifications
            link = object_link(alert, cfg, fritz_link)
            post_alert(self._client, cfg.channel_for(alert.survey), alert, taxonomy, link=link,
                       fritz_classifications=fritz_text, top_k=cfg.top_k, dpi=cfg.dpi)
        except SlackApiError as e:
            code = (e.response.get("error") if e.response is not None else None) or "unknown"
            metrics.slack_post("failure", survey=alert.survey)
            self.stats[f"error_{code}"] += 1
            self._once(f"api-{code}", logging.ERROR,
                       "Slack refused the post of %s (%s): %s%s. Classification and the CSV are not "
                       "affected; this is said once per error kind.", alert.objectId, alert.candid, code,
                       f" ({_HINTS[code]})" if code in _HINTS else "")
            return False
        except Exception as e:  # noqa: BLE001 - never let Slack break anything
            metrics.slack_post("failure", survey=alert.survey)
            self.stats["error_other"] += 1
            self._once(f"exc-{type(e).__name__}", logging.ERROR,
                       "Slack post of %s (%s) failed: %s: %s. Classification and the CSV are not "
                       "affected; this is said once per error kind.", alert.objectId, alert.candid,
                       type(e).__name__, e)
            return False
        metrics.slack_post("success", survey=alert.survey)
        self.stats["posted"] += 1
        return True

    def _once(self, key: str, level: int, msg: str, *args: Any, exc_info: bool = False) -> None:
        if key in self._warned:
            log.debug(msg, *args)
            return
        self._warned.add(key)
        log.log(level, msg, *args, exc_info=exc_info)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until nothing is waiting to be posted (for tests and tools)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(min(0.1, left))
        return True


class SlackSink(FixedPartitionedSink):
    """Post worthwhile classifications to Slack, each candid once (recoverable).

    Items: `(key, record)` pairs (the key is ignored; one partition). The
    recovery state is `{"posted": [candid, ...], "pending": [alert, ...]}`.
    `taxonomy` is one Taxonomy for every survey, or a mapping survey -> Taxonomy.
    `fritz`: an optional FritzClient for ZTF links and Fritz classifications.
    """

    def __init__(
        self,
        config: SlackConfig,
        taxonomy: Union[Taxonomy, Mapping[str, Taxonomy]],
        *,
        fritz: Optional[FritzClient] = None,
        client: Optional[WebClient] = None,
    ):
        self.config = config
        self.taxonomy = taxonomy
        self.fritz = fritz
        self.client = client
        self._said: set[str] = set()
        self.partition: Optional[_SlackPartition] = None  # the last one built (tests, tools)

    def taxonomy_for(self, survey: str) -> Optional[Taxonomy]:
        if isinstance(self.taxonomy, Taxonomy):
            return self.taxonomy
        return self.taxonomy.get(str(survey).upper())

    def list_parts(self) -> list[str]:
        return ["slack"]

    def part_fn(self, item_key: str) -> int:
        return 0

    def build_part(self, step_id: str, for_part: str, resume_state: Optional[dict]) -> _SlackPartition:
        self.partition = _SlackPartition(self, resume_state)
        return self.partition


__all__ = [
    "SlackConfig",
    "SlackSink",
    "format_message",
    "leaf_probability",
    "make_client",
    "object_link",
    "post_alert",
    "top_classes",
]
