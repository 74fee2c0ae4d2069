"""Slack posts, the plain parts: the message, the upload, and what Slack's errors mean.

`post_alert` uploads the probability tree with its message through
`WebClient.files_upload_v2` (`files.getUploadURLExternal`, the byte upload,
`files.completeUploadExternal`); `failure_kind` sorts a failed post into
errors waiting cannot heal ("fatal"), transient ones and the rest. The sink
that uses them is `operators/sinks/slack.py`.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Optional

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)

from models.oracle.taxonomy import Taxonomy
from operators.oracle.tree_plot import format_probability, render_result_png

# slack_sdk logs every failed attempt at ERROR; the sink says each kind of failure
# once itself. Lower this logger's level (e.g. to DEBUG) to see slack_sdk's detail.
sdk_log = logging.getLogger("operators.sinks.slack.sdk")
if sdk_log.level == logging.NOTSET:
    sdk_log.setLevel(logging.CRITICAL)


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


def probability(probabilities: Mapping[str, float], name: str) -> Optional[float]:
    """The class's probability; None when the taxonomy has no such class. (Results
    are finite: `classify` dead-letters a non-finite model output.)"""
    p = probabilities.get(name)
    return None if p is None else float(p)


def top_classes(probabilities: Mapping[str, Any], taxonomy: Taxonomy, k: int = 3) -> list[tuple[str, float]]:
    """The `k` most probable leaves, most probable first."""
    leaves = [(taxonomy.nodes[i], probability(probabilities, taxonomy.nodes[i])) for i in taxonomy.leaves]
    known = [(n, p) for n, p in leaves if p is not None]
    return sorted(known, key=lambda np_: -np_[1])[: max(0, k)]


def leaf_probability(record: Any, taxonomy: Taxonomy) -> float:
    """Probability of the predicted leaf (the best leaf when `predicted` is unknown)."""
    probs = record.probabilities or {}
    p = probability(probs, getattr(record, "predicted", None) or "")
    if p is None:
        best = top_classes(probs, taxonomy, 1)
        p = best[0][1] if best else 0.0
    return p


def object_link(survey: Any, object_id: str, config: Any, fritz_link: Optional[str] = None) -> str:
    """The Fritz link the flow found (a source page), else the survey's object page
    (`Survey.object_url`) with the configured FRITZ_URL / BABAMUL_URL."""
    return fritz_link or survey.object_url(str(object_id), fritz_url=config.fritz_url,
                                           babamul_url=config.babamul_url)


def _esc(text: str) -> str:
    """Slack mrkdwn escaping of the three control characters."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def format_message(record: Any, taxonomy: Taxonomy, *, link: str, site: str = "Link",
                   fritz_classifications: str = "", top_k: int = 3, fritz_ml_classifications: str = "") -> str:
    """The initial comment of a post (Slack mrkdwn); `site` names where `link` goes
    (the survey's `link_site`)."""
    survey = str(getattr(record, "survey", ""))
    probs = record.probabilities or {}
    predicted = getattr(record, "predicted", None)
    head = f"*{_esc(record.objectId)}*"
    if predicted:
        head += f"  ORACLE: *{_esc(predicted)}* ({format_probability(probability(probs, predicted))})"
    lines = [head]
    tops = top_classes(probs, taxonomy, top_k)
    if tops:
        lines.append("Top classes: " + " · ".join(f"{_esc(n)} {format_probability(p)}" for n, p in tops))
    lines.append(f"{_esc(site)}: <{link}|{_esc(record.objectId)}>  {link}")
    if fritz_classifications:
        lines.append(f"Fritz classifications: {_esc(fritz_classifications)}")
    if fritz_ml_classifications:
        lines.append(f"Fritz machine classifications: {_esc(fritz_ml_classifications)}")
    meta = [f"{survey or '?'} candid {record.candid}"]
    jd = getattr(record, "jd", None)
    if jd is not None:
        meta.append(f"jd {jd:.5f}")
    if getattr(record, "model", None):
        meta.append(f"model {_esc(record.model)}")
    lines.append(" · ".join(meta))
    return "\n".join(lines)


def post_alert(client: WebClient, channel: str, record: Any, taxonomy: Taxonomy, *, link: str,
               site: str = "Link", fritz_classifications: str = "", top_k: int = 3, dpi: float = 110.0,
               fritz_ml_classifications: str = ""):
    """Upload the probability tree of `record` with its message to `channel`; raises slack_sdk errors."""
    png = render_result_png(record, taxonomy, dpi=dpi)
    return client.files_upload_v2(
        channel=channel,
        file=png,
        filename=f"{record.objectId}_{record.candid}.png",
        title=f"ORACLE {record.objectId} ({record.candid})",
        initial_comment=format_message(record, taxonomy, link=link, site=site,
                                       fritz_classifications=fritz_classifications,
                                       top_k=top_k, fritz_ml_classifications=fritz_ml_classifications),
    )


# Errors waiting cannot heal: posting stops, and the line says what to do in Slack.
FATAL = {
    "not_in_channel": "invite the bot to the channel (/invite @<bot> in it)",
    "channel_not_found": "the channel id is wrong, or the channel is private and the bot is not in it",
    "is_archived": "the channel is archived: unarchive it or set another channel id",
    "invalid_auth": "SLACK_BOT_TOKEN is wrong or revoked: copy the Bot User OAuth Token again",
    "not_authed": "SLACK_BOT_TOKEN is missing",
    "account_inactive": "the Slack app's token was deactivated: reinstall the app to the workspace",
    "token_revoked": "SLACK_BOT_TOKEN was revoked: reinstall the app and copy the new token",
    "token_expired": "SLACK_BOT_TOKEN expired: reinstall the app and copy the new token",
    "missing_scope": "give the Slack app the files:write scope (and chat:write) and reinstall it",
    "no_permission": "the bot may not post files in that channel: check the channel's posting permissions",
}
TRANSIENT = {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
MAX_OTHER_ATTEMPTS = 5  # a client-side error that is not the network: give up on that alert after this many


def failure_kind(exc: BaseException) -> tuple[str, str]:
    """("fatal" | "transient" | "other", short name) of a failed post."""
    if isinstance(exc, SlackApiError):
        resp = exc.response
        code = (resp.get("error") if resp is not None else None) or ""
        status = getattr(resp, "status_code", 200) or 200
        if code in FATAL:
            return "fatal", code
        if code in TRANSIENT or status == 429 or status >= 500:
            return "transient", code or f"HTTP {status}"
        return "other", code or f"HTTP {status}"
    if isinstance(exc, (OSError, TimeoutError)):  # URLError, HTTPError (the byte upload), resets
        return "transient", type(exc).__name__
    if isinstance(exc, SlackRequestError):  # e.g. "Failed to upload a file (status: 502)"
        return "transient", "upload"
    return "other", type(exc).__name__
