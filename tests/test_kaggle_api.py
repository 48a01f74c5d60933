"""Credentials as the official client finds them, and the one retry policy."""

from __future__ import annotations

import json

import pytest
import requests

from imggenhub import kaggle_api
from imggenhub.credentials import find_credentials


def test_no_credentials(isolated):
    assert find_credentials() is None


def test_token_value_wins_over_everything(isolated, monkeypatch):
    (isolated / ".kaggle").mkdir()
    (isolated / ".kaggle" / "kaggle.json").write_text(json.dumps({"username": "u", "key": "k"}))
    monkeypatch.setenv("KAGGLE_API_TOKEN", "tok-123")
    creds = find_credentials()
    assert creds.token == "tok-123" and creds.source == "KAGGLE_API_TOKEN"
    assert "tok-123" not in repr(creds)


def test_token_as_a_file_path_and_access_token_file(isolated, monkeypatch, tmp_path):
    path = tmp_path / "token.txt"
    path.write_text("tok-file\n")
    monkeypatch.setenv("KAGGLE_API_TOKEN", str(path))
    assert find_credentials().token == "tok-file"
    monkeypatch.delenv("KAGGLE_API_TOKEN")
    (isolated / ".kaggle").mkdir()
    (isolated / ".kaggle" / "access_token").write_text("tok-home")
    assert find_credentials().token == "tok-home"


def test_kaggle_json_places_and_env_override(isolated, monkeypatch, tmp_path):
    (isolated / ".config" / "kaggle").mkdir(parents=True)
    (isolated / ".config" / "kaggle" / "kaggle.json").write_text(json.dumps({"username": "a", "key": "1"}))
    creds = find_credentials()
    assert (creds.username, creds.key) == ("a", "1") and creds.source.endswith(".config/kaggle/kaggle.json")
    custom = tmp_path / "cfg"
    custom.mkdir()
    (custom / "kaggle.json").write_text(json.dumps({"username": "b", "key": "2"}))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(custom))
    assert find_credentials().username == "b"
    monkeypatch.setenv("KAGGLE_KEY", "3")
    creds = find_credentials()
    assert (creds.username, creds.key, creds.source) == ("b", "3", "KAGGLE_USERNAME/KAGGLE_KEY")


def http_error(status, headers=None):
    response = requests.Response()
    response.status_code = status
    response.headers.update(headers or {})
    return requests.HTTPError(f"HTTP {status}", response=response)


@pytest.mark.parametrize("exc,transient", [
    (http_error(429), True), (http_error(500), True), (http_error(503), True),
    (http_error(401), False), (http_error(403), False), (http_error(404), False),
    (requests.ConnectionError("reset"), True), (requests.Timeout("slow"), True),
    (ValueError("bug"), False),
])
def test_what_is_retried(exc, transient):
    assert kaggle_api.is_transient(exc) is transient


def test_retry_after_is_honoured_and_capped(monkeypatch):
    monkeypatch.setenv("IMGGENHUB_RETRY_MAX_WAIT", "5")
    calls, waits = [], []
    policy = kaggle_api.retrying(waits.append)
    policy.sleep = lambda seconds: None  # an injected clock: no real sleeping

    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise http_error(429, {"Retry-After": "3"})
        if len(calls) == 2:
            raise http_error(503, {"Retry-After": "120"})
        return "ok"

    assert policy(flaky) == "ok"
    assert waits == ["HTTP 429; retry 1 in 3.0s", "HTTP 503; retry 2 in 5.0s"]


def test_backoff_without_retry_after_grows_with_jitter_and_gives_up(monkeypatch):
    monkeypatch.setenv("IMGGENHUB_RETRY_MAX_WAIT", "100")
    slept = []
    policy = kaggle_api.retrying()
    policy.sleep = slept.append
    with pytest.raises(requests.ConnectionError):
        policy(lambda: (_ for _ in ()).throw(requests.ConnectionError("down")))
    assert len(slept) == kaggle_api.MAX_ATTEMPTS - 1
    assert all(0 <= s <= 0.5 * 2 ** i for i, s in enumerate(slept))


def test_errors_that_are_not_retried_give_one_sentence():
    for status, words in ((401, "rejected the credentials"), (403, "denied access"),
                          (404, "found nothing")):
        message = str(kaggle_api.explain(http_error(status), "reading the kernel status"))
        assert words in message and "\n" not in message


def test_kaggle_states_map_in_one_place():
    from kagglesdk.kernels.types.kernels_enums import KernelWorkerStatus

    from imggenhub.backends.kaggle import STATES, _parse_state
    from imggenhub.runs import RunState

    for status in KernelWorkerStatus:
        assert _parse_state(status) == STATES[status.name]
    assert _parse_state("COMPLETE") == RunState.COMPLETE
    assert _parse_state("cancelAcknowledged") == RunState.CANCELLED
    assert _parse_state("running") == RunState.RUNNING
    assert _parse_state(None) == RunState.QUEUED  # an empty body parses as QUEUED
    assert {s for s in RunState if s.terminal} == {RunState.COMPLETE, RunState.ERROR,
                                                   RunState.CANCELLED}
