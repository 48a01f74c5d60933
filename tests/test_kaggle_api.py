"""Credentials as the official client finds them, and the one retry policy."""

from __future__ import annotations

import json

import pytest
import requests

from imggenhub.backends.kaggle import api as kaggle_api
from imggenhub.config import Clock, Tunables
from imggenhub.backends.kaggle.credentials import find_credentials


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


class FakeClock(Clock):
    """Time that moves only when something sleeps."""

    def __init__(self):
        self.now, self.slept = 1000.0, []

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def test_retry_after_is_honoured_and_capped():
    clock = FakeClock()
    calls, waits = [], []
    policy = kaggle_api.retrying(Tunables(retry_max_wait=5, clock=clock), on_retry=waits.append)

    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise http_error(429, {"Retry-After": "3"})
        if len(calls) == 2:
            raise http_error(503, {"Retry-After": "120"})
        return "ok"

    assert policy(flaky) == "ok"
    assert waits == ["HTTP 429; retry 1 in 3.0s", "HTTP 503; retry 2 in 5.0s"]
    assert clock.slept == [3.0, 5.0]


def test_backoff_without_retry_after_grows_with_jitter_and_gives_up():
    clock = FakeClock()
    policy = kaggle_api.retrying(Tunables(retry_max_wait=100, clock=clock))
    with pytest.raises(requests.ConnectionError):
        policy(lambda: (_ for _ in ()).throw(requests.ConnectionError("down")))
    assert len(clock.slept) == kaggle_api.MAX_ATTEMPTS - 1
    assert all(0 <= s <= 0.5 * 2 ** i for i, s in enumerate(clock.slept))


def test_retries_never_sleep_past_the_commands_deadline():
    """--timeout bounds the time spent in retries too: the network down, 30 s given."""
    clock = FakeClock()
    tunables = Tunables(retry_max_wait=20, clock=clock)
    deadline = kaggle_api.Deadline(tunables, 30)
    calls = []

    def down():
        calls.append(clock.now)
        raise http_error(503, {"Retry-After": "20"})

    with pytest.raises(Exception) as info:
        kaggle_api.call(tunables, deadline, "reading the kernel status", down)
    assert clock.now - 1000.0 <= 30 and len(calls) == 2  # slept 20 s once, not again
    assert info.value.exit_code == 5 and "HTTP 503" in str(info.value)


def test_errors_that_are_not_retried_give_one_sentence():
    for status, words in ((401, "rejected the credentials"), (403, "denied access"),
                          (404, "found nothing")):
        message = str(kaggle_api.explain(http_error(status), "reading the kernel status"))
        assert words in message and "\n" not in message


def test_kaggle_states_map_in_one_place():
    from kagglesdk.kernels.types.kernels_enums import KernelWorkerStatus

    from imggenhub.backends.kaggle.backend import STATES, parse_state
    from imggenhub.run.lifecycle import RunState

    for status in KernelWorkerStatus:
        assert parse_state(status) == STATES[status.name]
    assert parse_state("COMPLETE") == RunState.COMPLETE
    assert parse_state("cancelAcknowledged") == RunState.CANCELLED
    assert parse_state("running") == RunState.RUNNING
    assert parse_state(None) == RunState.QUEUED  # an empty body parses as QUEUED
    assert parse_state("SOMETHING_NEW") == RunState.RUNNING  # never taken for a verdict


def test_a_broken_kaggle_json_or_a_missing_token_file_is_said(isolated, monkeypatch, tmp_path):
    from imggenhub.errors import CredentialsError

    (isolated / ".kaggle").mkdir()
    (isolated / ".kaggle" / "kaggle.json").write_text('{"username": "x"')  # cut off
    with pytest.raises(CredentialsError, match="kaggle.json is not valid JSON"):
        find_credentials()
    monkeypatch.setenv("KAGGLE_USERNAME", "u")  # the variables stand in for the file
    monkeypatch.setenv("KAGGLE_KEY", "k")
    assert find_credentials().username == "u"
    monkeypatch.setenv("KAGGLE_API_TOKEN", str(tmp_path / "no-such-token"))
    with pytest.raises(CredentialsError, match="names the file .*no-such-token, which does not"):
        find_credentials()


def test_a_token_file_under_home_and_render_with_a_broken_kaggle_json(isolated, monkeypatch, cli,
                                                                       tmp_path):
    (isolated / "tok").write_text("tok-home-file\n")
    monkeypatch.setenv("KAGGLE_API_TOKEN", "~/tok")
    assert find_credentials().token == "tok-home-file"
    monkeypatch.setenv("KAGGLE_API_TOKEN", "a/b")  # no folder 'a' here: a token, not a path
    assert find_credentials().token == "a/b"
    monkeypatch.delenv("KAGGLE_API_TOKEN")
    (isolated / ".kaggle").mkdir()
    (isolated / ".kaggle" / "kaggle.json").write_text("{")
    code, out, err = cli("render", "--out", str(tmp_path / "r"), "--model", "tiny-random",
                         "-p", "x", cwd=tmp_path)  # render needs no credentials
    assert code == 0 and "your-kaggle-username" in err
