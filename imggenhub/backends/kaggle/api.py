"""Talking to Kaggle through the official client (kagglesdk), with one retry policy.

kagglesdk sets no timeout and retries nothing on kernel calls; this module adds a
timeout to every call and one tenacity policy for the idempotent ones, bounded by the
command's deadline. A push is retried only when it surely did not reach Kaggle (a
refused connection, a 429). Only network and HTTP errors are turned into sentences
here; anything else is a bug and reaches the CLI's boundary as what it is.
``IMGGENHUB_KAGGLE_API_URL`` points the same client code at another server (the
tests' emulator); nothing else changes.
"""

from __future__ import annotations

import email.utils
import random
import os
import re
import time
from collections.abc import Callable

import requests
from requests.adapters import HTTPAdapter
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
)

from ...config import Deadline, Tunables
from ...errors import CredentialsError, KaggleApiError, TransferError, Unreachable
from .credentials import HOW_TO, Credentials, find_credentials

KAGGLE_URL = "https://www.kaggle.com"
MAX_ATTEMPTS = 10
# bytes: the most an API answer may hold (a status, or an output listing, which carries the
# kernel's whole log with every page)
MAX_ANSWER = 256 << 20


class _TimeoutAdapter(HTTPAdapter):
    """Every request gets a timeout (kagglesdk sets none), never past the deadline; an
    answer read whole (not a file streamed) is read in bounded pieces, at most
    MAX_ANSWER bytes: a server's answer never takes all memory."""

    def __init__(self, timeout: Callable[[], float]):
        super().__init__()
        self._timeout = timeout

    def send(self, request, **kwargs):
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self._timeout()
        if kwargs.get("stream"):
            return super().send(request, **kwargs)
        resp = super().send(request, **{**kwargs, "stream": True})
        body, size = [], 0
        for piece in resp.iter_content(1 << 20):
            size += len(piece)
            if size > MAX_ANSWER:
                resp.close()
                raise BadAnswer(f"an answer of more than {MAX_ANSWER >> 20} MiB")
            body.append(piece)
        resp._content, resp._content_consumed = b"".join(body), True
        resp.close()
        return resp


class TruncatedDownload(IOError):
    """A body shorter than its Content-Length, or different from the manifest: worth a retry."""


NETWORK_ERRORS = (requests.RequestException, TruncatedDownload)
# What kagglesdk's parsing raises on a malformed or mistyped answer: int("x") on a duration,
# None.rstrip, "code" in 5, a date that is no date, a number too large for a timedelta.
PARSE_ERRORS = (ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError)


class BadAnswer(Unreachable):
    """Kaggle answered, but with something the client could not parse: data, not a bug of
    ours and not a network error (it is not retried). ``detail`` says what was wrong; its
    sentence, once ``call`` knows what was asked, says that the run goes on (exit 5)."""

    def __init__(self, detail: str, what: str | None = None):
        self.detail = detail
        super().__init__(f"Kaggle's answer while {what} could not be read ({detail}); the run, "
                         "if any, goes on: try again later." if what else detail)


def _raised_in_the_client(exc: BaseException) -> bool:
    """Whether the error came from inside kagglesdk (reading Kaggle's answer), not from code
    of ours around it."""
    tb = exc.__traceback__
    while tb is not None:
        if f"{os.sep}kagglesdk{os.sep}" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def parsed(fn: Callable):
    """``fn`` (one kagglesdk call) with an answer the client cannot parse raised as
    BadAnswer (its first words said), so that the caller decides what an unreadable
    answer means instead of the CLI's boundary calling it an internal error."""

    if getattr(fn, "parsed", False):
        return fn

    def run():
        try:
            return fn()
        except requests.exceptions.JSONDecodeError as exc:  # a RequestException, and data
            raise BadAnswer(f"not JSON: {str(exc)[:80]}") from None
        except requests.RequestException:
            raise
        except PARSE_ERRORS as exc:
            if not _raised_in_the_client(exc):
                raise  # a bug of ours stays one
            raise BadAnswer(f"{type(exc).__name__}: {str(exc)[:80]}") from None

    run.parsed = True
    return run


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


def retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    value = response.headers.get("Retry-After") if response is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, parsed.timestamp() - time.time())


def retrying(tunables: Tunables, deadline: Deadline | None = None,
             on_retry: Callable[[str], None] | None = None,
             predicate: Callable[[BaseException], bool] = is_transient,
             attempts: int = MAX_ATTEMPTS) -> Retrying:
    """The one retry policy: tenacity, transient errors only, Retry-After honoured, each
    wait and the total capped, never sleeping past the deadline, each retry reported."""

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        told = retry_after(exc) if exc else None
        if told is not None:
            return min(told, tunables.retry_max_wait)
        return min(tunables.retry_max_wait, random.uniform(0, 0.5 * 2 ** (state.attempt_number - 1)))

    def past_deadline(state: RetryCallState) -> bool:
        return deadline is not None and deadline.passed(after=state.upcoming_sleep or 0.0)

    def before_sleep(state: RetryCallState) -> None:
        if on_retry:
            exc = state.outcome.exception()
            status = status_of(exc)
            what = f"HTTP {status}" if status else type(exc).__name__
            on_retry(f"{what}; retry {state.attempt_number} in {state.upcoming_sleep:.1f}s")

    return Retrying(retry=retry_if_exception(predicate), wait=wait, reraise=True,
                    sleep=tunables.clock.sleep,
                    stop=stop_after_attempt(attempts) | stop_after_delay(tunables.retry_total)
                    | past_deadline,
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


def explain(exc: BaseException, what: str, url: str = "") -> Exception:
    """One sentence for a network or HTTP error that failed for good (``url``: the API's
    address, named when it cannot be reached)."""
    status = status_of(exc)
    # never a signed URL's query (its signature) in a message
    detail = re.sub(r"(https?://[^\s?]+)\?\S*", r"\1", str(exc).split("\n")[0])[:200]
    if isinstance(exc, (requests.exceptions.ChunkedEncodingError, TruncatedDownload)):
        return TransferError(f"The transfer kept breaking off while {what} ({detail}); run the same "
                             "command again: files already downloaded and verified are kept.")
    if status is None:
        at = f" at {url}" if url else ""
        return Unreachable(f"Could not reach Kaggle{at} while {what} ({type(exc).__name__}); "
                           "check the network and try again.")
    template = _SENTENCES.get(status, "Kaggle failed while {what} (HTTP {status}): {detail}.")
    return KaggleApiError(template.format(what=what, detail=detail, status=status), status)


def call(tunables: Tunables, deadline: Deadline | None, what: str, fn,
         on_retry: Callable[[str], None] | None = None, attempts: int = MAX_ATTEMPTS):
    """Run an idempotent call under the retry policy; network errors become one sentence,
    and so does an answer the client cannot read (BadAnswer, exit 5: never an internal
    error)."""
    fn = parsed(fn)
    try:
        for attempt in retrying(tunables, deadline, on_retry, attempts=attempts):
            with attempt:
                return fn()
    except NETWORK_ERRORS as exc:
        raise explain(exc, what, endpoint(tunables)) from None
    except BadAnswer as exc:
        raise BadAnswer(exc.detail, what) from None


def credentials() -> Credentials:
    creds = find_credentials()
    if creds is None:
        raise CredentialsError(HOW_TO)
    return creds


def make_client(tunables: Tunables, creds: Credentials | None = None,
                timeout: Callable[[], float] | None = None):
    """A kagglesdk KaggleClient for these credentials, with timeouts, at the configured URL."""
    from kagglesdk.kaggle_client import KaggleClient
    from kagglesdk.kaggle_env import KaggleEnv

    creds = creds or credentials()
    url = tunables.api_url
    client = KaggleClient(env=KaggleEnv.LOCAL if url else KaggleEnv.PROD,
                          username=creds.username, password=creds.key, api_token=creds.token,
                          user_agent="imggenhub")
    http = client.http_client()
    if url:
        http._endpoint = url.rstrip("/")  # the same client code, another base URL
    http._init_session()
    adapter = _TimeoutAdapter(timeout or (lambda: tunables.http_timeout))
    for prefix in ("http://", "https://"):
        http._session.mount(prefix, adapter)
    return client


def endpoint(tunables: Tunables) -> str:
    """Where the API is: the real Kaggle, or the configured URL (a test server)."""
    return (tunables.api_url or KAGGLE_URL).rstrip("/")


def web_url(tunables: Tunables, ref: str) -> str:
    return f"{endpoint(tunables)}/code/{ref}"
