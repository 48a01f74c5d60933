"""Talking to Kaggle through the official client (kagglesdk), with one retry policy.

kagglesdk sets no timeout and retries nothing on kernel calls; this module adds a
timeout to every call and one tenacity policy for the idempotent ones. A push is
retried only when it surely did not reach Kaggle (a refused connection, a 429).
``IMGGENHUB_KAGGLE_API_URL`` points the same client code at another server (the
tests' emulator); nothing else changes.
"""

from __future__ import annotations

import email.utils
import os
import random
import time
from collections.abc import Callable

import requests
from requests.adapters import HTTPAdapter
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, stop_after_delay

from .credentials import HOW_TO, Credentials, find_credentials
from .errors import CredentialsError, ImggenhubError

API_URL_VAR = "IMGGENHUB_KAGGLE_API_URL"
MAX_ATTEMPTS = 10


def setting(name: str, default: float) -> float:
    """Tunables (timeouts, waits) from the environment, read when used."""
    return float(os.environ.get(name, default))


def call_timeout() -> float:
    return setting("IMGGENHUB_HTTP_TIMEOUT", 60)


class KaggleApiError(ImggenhubError):
    """Kaggle refused or failed a call; carries the status code when there is one."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class _TimeoutAdapter(HTTPAdapter):
    """Every request gets a timeout (kagglesdk sets none)."""

    def send(self, request, **kwargs):
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = call_timeout()
        return super().send(request, **kwargs)


def status_of(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def is_transient(exc: BaseException) -> bool:
    """429, 5xx, timeouts and dropped connections are worth another try; nothing else."""
    if isinstance(exc, (requests.ConnectionError, requests.Timeout,
                        requests.exceptions.ChunkedEncodingError, TruncatedDownload)):
        return True
    status = status_of(exc)
    return status is not None and (status == 429 or status >= 500)


def surely_not_sent(exc: BaseException) -> bool:
    """For a push: only a refused/unresolved connection or a 429 proves nothing was done."""
    if status_of(exc) == 429:
        return True
    if isinstance(exc, requests.ConnectionError):
        text = repr(exc)
        return "NewConnectionError" in text or "ConnectTimeout" in text or "NameResolution" in text
    return False


class TruncatedDownload(IOError):
    pass


def retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    value = response.headers.get("Retry-After") if response is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time())


def _wait(state: RetryCallState) -> float:
    """Retry-After when the server says it, else exponential backoff with full jitter; capped."""
    exc = state.outcome.exception() if state.outcome else None
    told = retry_after(exc) if exc else None
    cap = setting("IMGGENHUB_RETRY_MAX_WAIT", 60)
    if told is not None:
        return min(told, cap)
    return min(cap, random.uniform(0, 0.5 * 2 ** (state.attempt_number - 1)))


def retrying(on_retry: Callable[[str], None] | None = None,
             predicate: Callable[[BaseException], bool] = is_transient) -> Retrying:
    """The one retry policy: tenacity, transient errors only, each retry reported."""

    def before_sleep(state: RetryCallState) -> None:
        if on_retry:
            exc = state.outcome.exception()
            status = status_of(exc)
            what = f"HTTP {status}" if status else type(exc).__name__
            on_retry(f"{what}; retry {state.attempt_number} in {state.upcoming_sleep:.1f}s")

    return Retrying(retry=retry_if_exception(predicate), wait=_wait, reraise=True,
                    stop=stop_after_attempt(MAX_ATTEMPTS)
                    | stop_after_delay(setting("IMGGENHUB_RETRY_TOTAL", 600)),
                    before_sleep=before_sleep)


# HTTP status -> the sentence for a call that failed for good ({what}: the call, {detail}:
# the server's text).
_SENTENCES = {
    401: "Kaggle rejected the credentials while {what} (HTTP 401); check them with 'imggenhub doctor'.",
    403: "Kaggle denied access while {what} (HTTP 403): {detail}; check the kernel id and that it "
         "is yours.",
    404: "Kaggle found nothing while {what} (HTTP 404): {detail}; check the kernel id.",
    429: "Kaggle kept rate-limiting us while {what} (HTTP 429); try again in a few minutes.",
}


def explain(exc: BaseException, what: str) -> KaggleApiError:
    """One sentence for a call that failed for good."""
    status = status_of(exc)
    detail = str(exc).split("\n")[0][:200]
    if isinstance(exc, (requests.exceptions.ChunkedEncodingError, TruncatedDownload)):
        return KaggleApiError(f"The transfer kept breaking off while {what}; run the same command "
                              "again: files already downloaded and verified are kept.")
    if status is None:
        return KaggleApiError(f"Could not reach Kaggle while {what} ({type(exc).__name__}); check "
                              "the network and try again.")
    template = _SENTENCES.get(status, "Kaggle failed while {what} (HTTP {status}): {detail}.")
    return KaggleApiError(template.format(what=what, detail=detail, status=status), status)


def credentials() -> Credentials:
    creds = find_credentials()
    if creds is None:
        raise CredentialsError(HOW_TO)
    return creds


def make_client(creds: Credentials | None = None):
    """A kagglesdk KaggleClient for these credentials, with timeouts, at the configured URL."""
    from kagglesdk.kaggle_client import KaggleClient
    from kagglesdk.kaggle_env import KaggleEnv

    creds = creds or credentials()
    url = os.environ.get(API_URL_VAR)
    client = KaggleClient(env=KaggleEnv.LOCAL if url else KaggleEnv.PROD,
                          username=creds.username, password=creds.key, api_token=creds.token,
                          user_agent="imggenhub")
    http = client.http_client()
    if url:
        http._endpoint = url.rstrip("/")  # the same client code, another base URL
    http._init_session()
    for prefix in ("http://", "https://"):
        http._session.mount(prefix, _TimeoutAdapter())
    return client


def web_url(ref: str) -> str:
    base = os.environ.get(API_URL_VAR)
    return f"{base.rstrip('/')}/code/{ref}" if base else f"https://www.kaggle.com/code/{ref}"
