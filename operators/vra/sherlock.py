"""Sherlock context for a sky position, from Lasair's API.

Inputs: ra, dec (degrees) and a Lasair API token. Output: `SherlockMatch`,
the Sherlock class (e.g. "SN", "NT", "AGN", "VS", "ORPHAN") and the separation
in arcsec of its first cross-match (NaN for orphans, which have none).

The API contract followed is the one of Lasair's python client
(`lasair_client.sherlock_position(ra, dec, lite=False)`): a POST of the form
fields ra, dec, lite to `<endpoint>/sherlock/position/` with the header
`Authorization: Token <token>`; 200 carries JSON
`{"classifications": {"transient_00000": ["SN", "..."]}, "crossmatches": [{"separationArcsec": 1.2, ...}, ...]}`
(or `{"error": "..."}`), 400/401/429/500 are errors. Transient failures
(429, 5xx, connection errors) are retried with backoff, honouring
Retry-After. The token is never logged nor put in an exception message.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

LASAIR_ZTF_API = "https://lasair-ztf.lsst.ac.uk/api"

# Sherlock classes whose alerts never enter the VRA training table.
DROP_CLASSES = frozenset({"AGN", "VS"})


class SherlockError(RuntimeError):
    """Sherlock could not answer (after retries); the message holds no secret."""


@dataclass(frozen=True)
class SherlockMatch:
    classification: Optional[str]
    sep_arcsec: float

    @property
    def dropped(self) -> bool:
        return self.classification in DROP_CLASSES


def parse_sherlock(answer: Mapping[str, Any]) -> SherlockMatch:
    """Sherlock's class and first cross-match separation from a Lasair answer."""
    if "error" in answer:
        raise SherlockError(f"lasair error: {answer['error']}")
    classes = answer.get("classifications") or {}
    first = next(iter(classes.values()), None)
    if isinstance(first, (list, tuple)):
        first = first[0] if first else None
    matches = answer.get("crossmatches") or []
    sep = math.nan
    if matches:
        try:
            sep = float(matches[0].get("separationArcsec"))
        except (TypeError, ValueError):
            sep = math.nan
    return SherlockMatch(classification=None if first is None else str(first), sep_arcsec=sep)


def retrying_session(retries: int = 3, backoff: float = 0.5) -> requests.Session:
    """A session that retries transient failures, POST included (the call is a read)."""
    retry = Retry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        backoff_factor=backoff,
        status_forcelist=(429, 500, 502, 503, 504),
        allowed_methods=frozenset({"GET", "POST"}),
        respect_retry_after_header=True,
        raise_on_status=False,
    )
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class SherlockClient:
    """Calls Lasair's `sherlock/position` endpoint."""

    def __init__(
        self,
        token: str,
        endpoint: str = LASAIR_ZTF_API,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.5,
    ):
        self._headers = {"Authorization": f"Token {token}"}
        self._url = endpoint.rstrip("/") + "/sherlock/position/"
        self._timeout = timeout
        self._retries, self._backoff = retries, backoff
        # Workers of one process share this client; requests sessions are not thread-safe.
        self._local = threading.local()

    @property
    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = retrying_session(self._retries, self._backoff)
        return session

    def __repr__(self) -> str:
        return f"SherlockClient(url={self._url!r})"

    def position(self, ra: float, dec: float) -> SherlockMatch:
        try:
            resp = self._session.post(
                self._url,
                data={"ra": ra, "dec": dec, "lite": False},
                headers=self._headers,
                timeout=self._timeout,
            )
        except requests.RequestException as exc:
            # Only the exception class: its text may quote the request.
            raise SherlockError(f"request failed: {type(exc).__name__}") from None
        if resp.status_code != 200:
            raise SherlockError(f"HTTP {resp.status_code}")
        try:
            answer = resp.json()
        except ValueError:
            raise SherlockError("answer is not JSON") from None
        if not isinstance(answer, Mapping):
            raise SherlockError("answer is not a JSON object")
        return parse_sherlock(answer)
