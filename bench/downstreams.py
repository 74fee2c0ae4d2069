"""Slow and absent downstreams for benchmarks (issue 28 item 3): the fakes of tests/fakes.py
as `bench/soak.py --downstreams slow` runs them, and what the sinks said about what they
could not send.

- SkyPortal (Fritz) answering every request in `FRITZ_DELAY_S` (its rules otherwise: 404 on
  POST for an object it does not know; it knows 9 in 10 of the workload's objects);
- Slack down: 503 to everything, the whole run.
"""

from __future__ import annotations

import re

FRITZ_TOKEN = "soak-fritz-token-0123456789abcdef"  # the fakes' tokens, never a real one
SLACK_TOKEN = "xoxb-soak"
FRITZ_DELAY_S = 2.0


class Downstreams:
    """The fakes of tests/fakes.py for `--downstreams slow`: SkyPortal answering every request in
    2 s, knowing 9 in 10 of the workload's objects (the others: 404 on POST), and Slack down."""

    def __init__(self, workload):
        from tests.fakes import FakeSkyPortal, FakeSlack

        known = tuple(name for k, name in enumerate(workload.object_names()) if k % 10)
        self.fritz = FakeSkyPortal(token=FRITZ_TOKEN, objects=known, sources=known[::4])
        self.fritz.delay = FRITZ_DELAY_S
        self.slack = FakeSlack(token=SLACK_TOKEN)
        self.slack.outage(10 * 365 * 86400.0)  # 503 to everything, the whole run

    def __enter__(self):
        self.fritz.start()
        self.slack.start()
        return self

    def __exit__(self, *exc):
        self.fritz.stop()
        self.slack.stop()

    def env(self) -> dict:
        return {"FRITZ_TOKEN": FRITZ_TOKEN, "FRITZ_URL": self.fritz.url, "POST_TO_SLACK": "true",
                "SLACK_BOT_TOKEN": SLACK_TOKEN, "SLACK_ORACLE_CHANNEL_ID": "CZTF", "SLACK_API_URL": self.slack.base_url}

    def counts(self) -> dict:
        with self.fritz.lock, self.slack.lock:
            fritz = [r["method"] for r in self.fritz.requests]
            return {"fritz_delay_s": FRITZ_DELAY_S, "fritz_requests": {m: fritz.count(m) for m in sorted(set(fritz))},
                    "fritz_annotations": len(self.fritz.annotations), "slack_requests": len(self.slack.requests),
                    "slack_posts": len(self.slack.posts)}


# What the sinks say about what they could not send (kept, dropped, counted): the last of each.
_SAID = {"slack_behind": r"Slack posting is behind[^\n]*", "slack_summary": r"Slack posts this run[^\n]*",
         "fritz_backlog": r"Fritz backlog[^\n]*", "fritz_summary": r"Fritz annotations this run[^\n]*"}


def said(log_text: str) -> dict:
    out = {}
    for key, pattern in _SAID.items():
        found = re.findall(pattern, log_text)
        out[key] = {"times": len(found), "last": found[-1][:400] if found else ""}
    return out
