"""`MongoStore`: BOOM's MongoDB as an `AlertStore` (see `operators/oracle/store.py`).

Per batch, one `find({"_id": {"$in": [...]}}, projection)` per collection:
`{SURVEY}_alerts` by candid, `{SURVEY}_alerts_aux` by objectId and, only when
the model needs a stamp, `{SURVEY}_alerts_cutouts` by candid. The projection
holds exactly the fields listed in `Collections`, so nothing else crosses the
wire. `_id` is the key of every lookup; MongoDB indexes `_id` on every
collection, so no index is created here (BOOM owns its collections and their
other indexes).

Connection: one `MongoClient` per process and URI (bytewax workers are threads
of one process and share it; pymongo's pool is thread-safe), with
`serverSelectionTimeoutMS`, `connectTimeoutMS` and `socketTimeoutMS` set to
`MongoSettings.timeout_ms` and TLS switched on when `MongoSettings.tls` is.

Failures: a store that is down must pause the flow, never make it skip an
alert. A fetch that hits a connection-level error (`AutoReconnect`,
`ServerSelectionTimeoutError`, `NetworkTimeout`, `ConnectionFailure`) is
retried with exponential backoff and jitter, at most `MongoSettings.retries`
attempts per fetch, with one WARNING per retry; after the last attempt it
raises `StoreUnavailable`, whose message says what to check. Logs and
exception messages name the server as `MongoSettings.describe()` does and are
scrubbed of the password and URI.

Server quirks handled here, harmless on a real MongoDB:
- a projection of a dotted path (`candidate.jd`) comes back nested on MongoDB
  but as a flat `"candidate.jd"` key from some wire-compatible servers
  (nx-27017); such keys are folded back into nested documents;
- `_id` is normalised to `int` (candids) or `str` (objectIds).
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from typing import Any, Callable, Iterable, Optional

from pymongo import MongoClient
from pymongo.errors import (
    AutoReconnect,
    ConnectionFailure,
    NetworkTimeout,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
)
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, stop_never

from operators.runtime.config import ConfigError, MongoSettings
from operators.runtime.logs import interruptible_sleep
from operators.oracle.store import Collections, Documents

log = logging.getLogger(__name__)

# Errors that mean "the server is not reachable right now": retried.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    AutoReconnect,
    ServerSelectionTimeoutError,
    NetworkTimeout,
    ConnectionFailure,
)
# OperationFailure codes that mean "wrong credentials / not allowed": not retried.
_AUTH_ERROR_CODES = {11, 13, 18}  # UserNotFound, Unauthorized, AuthenticationFailed

_CHECK = (
    "Check that the server is up and reachable from this host, MONGODB_URI or "
    "BOOM_DATABASE__HOST/BOOM_DATABASE__PORT, BOOM_DATABASE__TLS, the credentials, "
    "and MONGODB_TIMEOUT_MS / MONGODB_RETRIES."
)


class StoreUnavailable(RuntimeError):
    """The alert store could not answer (after retries, or because access is refused).

    The flow must stop or pause on it, never drop the batch: the alerts it was
    fetching have not been processed.
    """



def redact(text: str, settings: MongoSettings) -> str:
    """`text` without the password, the URI or its user-info part (also URL-encoded)."""
    return settings.redact(text)


def where(settings: MongoSettings) -> str:
    """Where we connect, for logs and errors: `describe()`, robust to unescaped URIs."""
    return settings.describe()


# ---------------------------------------------------------------- shared clients

_clients_lock = threading.Lock()
# key -> [client, number of stores using it]
_clients: dict[tuple, list] = {}


def _client_key(settings: MongoSettings) -> tuple:
    return (settings.client_uri(), bool(settings.tls), int(settings.timeout_ms))


def _new_client(settings: MongoSettings) -> MongoClient:
    kwargs: dict[str, Any] = dict(
        serverSelectionTimeoutMS=settings.timeout_ms,
        connectTimeoutMS=settings.timeout_ms,
        socketTimeoutMS=settings.timeout_ms,
        appname="alertflow",
    )
    if settings.tls:
        kwargs["tls"] = True
    try:
        # Connects in the background: construction does not wait for the server.
        return MongoClient(settings.client_uri(), **kwargs)
    except (PyMongoError, ValueError, TypeError) as exc:
        raise ConfigError(
            f"cannot set up a MongoDB client for {where(settings)}: "
            f"{type(exc).__name__}: {redact(str(exc), settings)} Check MONGODB_URI, or "
            "BOOM_DATABASE__HOST/PORT/USERNAME/PASSWORD/TLS."
        ) from None


def acquire_client(settings: MongoSettings) -> MongoClient:
    """The process's client for these settings, created on first use."""
    key = _client_key(settings)
    with _clients_lock:
        entry = _clients.get(key)
        if entry is None:
            entry = _clients[key] = [_new_client(settings), 0]
        entry[1] += 1
        return entry[0]


def release_client(settings: MongoSettings) -> None:
    """Drop one user of the shared client; the last one closes it."""
    key = _client_key(settings)
    with _clients_lock:
        entry = _clients.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del _clients[key]
            entry[0].close()


# ---------------------------------------------------------------- documents


def _unflatten(doc: dict) -> dict:
    """Fold flat dotted keys (`"candidate.jd": 1.0`) into nested documents."""
    if not any("." in key for key in doc):
        return doc
    out: dict = {}
    for key, value in doc.items():
        if "." not in key:
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key].update(value)
            else:
                out[key] = value
            continue
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[leaf] = value
    return out


def describe_error(exc: BaseException, settings: MongoSettings, limit: int = 240) -> str:
    """`Type: message`, redacted, without pymongo's topology dump and timeout list."""
    text = redact(str(exc), settings)
    text = text.split(", Timeout:", 1)[0].split(", Topology Description:", 1)[0]
    text = re.sub(r"\s*\(configured timeouts:[^)]*\)", "", text)
    reason = f"{type(exc).__name__}: {text}"
    return reason if len(reason) <= limit else reason[: limit - 3] + "..."


def projection(fields: Iterable[str]) -> dict[str, int]:
    """A find projection of exactly `fields` (plus `_id`, always returned)."""
    return {name: 1 for name in fields}


class MongoStore:
    """`AlertStore` over BOOM's MongoDB.

    `client` lets a caller supply its own `MongoClient` (it is then not closed
    by `close()`); by default the process-wide client for `settings` is used.
    `sleep` and `backoff_*` shape the retry pauses (tests shorten them).
    """

    def __init__(
        self,
        settings: MongoSettings,
        collections: Collections,
        *,
        client: Optional[MongoClient] = None,
        backoff_initial_s: float = 0.25,
        backoff_max_s: float = 10.0,
        sleep: Callable[[float], None] = interruptible_sleep,
    ):
        self._settings = settings
        self._c = collections
        self._own_client = client is None
        self._client = acquire_client(settings) if client is None else client
        self._db = self._client[settings.database]
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._sleep = sleep
        # 0 (the default) retries until the server is back: the flow pauses, it never skips.
        self._attempts = int(settings.retries) if int(settings.retries) > 0 else None
        self._closed = False

    @property
    def settings(self) -> MongoSettings:
        return self._settings

    def fetch(self, candids: list[int], object_ids: list[str], with_cutouts: bool) -> Documents:
        c = self._c
        candid_keys = list(dict.fromkeys(int(k) for k in candids))
        object_keys = list(dict.fromkeys(str(k) for k in object_ids))
        queries = [("alerts", c.alerts, candid_keys, c.alert_fields, int)]
        queries.append(("aux", c.aux, object_keys, c.aux_fields, str))
        if with_cutouts:
            queries.append(("cutouts", c.cutouts, candid_keys, c.cutout_fields, int))
        found: dict[str, dict] = {"alerts": {}, "aux": {}, "cutouts": {}}
        pending = [q for q in queries if q[2]]  # nothing to ask for: no round trip

        def run_pending() -> None:
            # Collections already answered are not asked again on a retry.
            while pending:
                part, name, keys, fields, key_type = pending[0]
                cursor = self._db[name].find(
                    {"_id": {"$in": keys}}, projection(fields), batch_size=max(len(keys), 1)
                )
                found[part] = {key_type(doc["_id"]): _unflatten(doc) for doc in cursor}
                pending.pop(0)

        self._with_retries(f"fetch of {len(candid_keys)} alerts", run_pending)
        return Documents(alerts=found["alerts"], aux=found["aux"], cutouts=found["cutouts"])

    def _with_retries(self, what: str, action: Callable[[], Any]) -> Any:
        """`action()`, retried on transient errors with a growing jittered pause (tenacity),
        one warning line per retry; Ctrl-C ends a pause at once (`interruptible_sleep`)."""
        server = where(self._settings)
        started = time.monotonic()
        attempts = self._attempts

        def pause(state: RetryCallState) -> float:
            delay = min(self._backoff_max_s, self._backoff_initial_s * 2 ** (state.attempt_number - 1))
            return delay * random.uniform(0.5, 1.0)  # jitter: workers do not retry in step

        def say_retry(state: RetryCallState) -> None:
            log.warning(
                "MongoDB at %s unavailable during the %s (%s); retry %d/%s in %.2f s; the flow waits",
                server, what, describe_error(state.outcome.exception(), self._settings), state.attempt_number,
                attempts - 1 if attempts else "unlimited", state.next_action.sleep,
            )

        def give_up(state: RetryCallState) -> Any:
            reason = describe_error(state.outcome.exception(), self._settings)
            raise StoreUnavailable(
                f"MongoDB at {server} did not answer the {what}: {attempts} attempts "
                f"failed over {time.monotonic() - started:.1f} s (last error: {reason}). {_CHECK}"
            ) from None

        retrying = Retrying(
            retry=retry_if_exception_type(TRANSIENT_ERRORS),
            stop=stop_after_attempt(attempts) if attempts else stop_never,
            wait=pause, sleep=self._sleep, before_sleep=say_retry, retry_error_callback=give_up,
        )
        try:
            return retrying(action)
        except OperationFailure as exc:
            if exc.code in _AUTH_ERROR_CODES:
                raise StoreUnavailable(
                    f"MongoDB at {server} refused the {what}: {type(exc).__name__} "
                    f"(code {exc.code}): {redact(str(exc), self._settings)}. Check the "
                    "credentials (BOOM_DATABASE__USERNAME/BOOM_DATABASE__PASSWORD or "
                    "MONGODB_URI) and the user's read access to the database."
                ) from None
            raise

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._own_client:
            release_client(self._settings)
