"""--notify: one message when a run ends, in the format its URL asks, to a local receiver;
retried while the receiver fails, then one line and the exit code unchanged; the URL's
secret part never printed or recorded."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from imggenhub import notify

SECRET = "T0KEN-c4n4ry-81f2"


class Receiver:
    """A local HTTP server that records each POST (path, headers, body) and answers with
    the next of ``answers`` (then 200)."""

    def __init__(self):
        self.got: list[dict] = []
        self.answers: list[int] = []
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.arrived:
                    code = receiver.answers.pop(0) if receiver.answers else 200
                    receiver.got.append({"path": self.path, "headers": dict(self.headers),
                                         "body": body, "answered": code})
                    receiver.arrived.notify_all()
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def _no_secret(tmp_path, *texts):
    import os
    from pathlib import Path

    assert not [t for t in texts if SECRET in t]
    state = Path(os.environ["IMGGENHUB_HOME"])
    leaked = [p for p in state.rglob("*") if p.is_file() and p.name != notify.FILE
              and SECRET.encode() in p.read_bytes()]
    assert not leaked and not [p for p in tmp_path.rglob("*") if p.is_file()
                               and SECRET.encode() in p.read_bytes()]


def test_each_format_says_the_runs_end_once(hf_jobs, cli, tmp_path, receiver):
    urls = [f"{receiver.url}/hook/{SECRET}", f"ntfy+{receiver.url}/topic-{SECRET}",
            f"slack+{receiver.url}/services/{SECRET}", f"discord+{receiver.url}/api/webhooks/{SECRET}"]
    flags = [x for u in urls for x in ("--notify", u)]
    code, out, err = cli("generate", "--backend", "hf-jobs", "--model", "tiny-random", "-p", "@everyone",
                         "--num-images", "2", "--name", "nightly", "--out", str(tmp_path / "out"),
                         "--json", *flags, cwd=tmp_path)
    assert code == 0, err
    run_id = json.loads(out)["run_id"]
    assert len(receiver.got) == 4 and all(g["path"].endswith(SECRET) for g in receiver.got)
    by = {g["path"].split("/")[1]: g for g in receiver.got}
    hook, ntfy, slack, discord = by["hook"], by[f"topic-{SECRET}"], by["services"], by["api"]
    sent = json.loads(hook["body"])  # a plain webhook: the summary as JSON
    assert sent["run_id"] == run_id and sent["name"] == "nightly" and sent["outcome"] == "done"
    assert sent["images_made"] == sent["images_planned"] == 2 and sent["backend"] == "hf-jobs"
    assert sent["out_dir"] == str((tmp_path / "out").resolve()) and sent["failure"] is None
    assert sent["cost_usd"] == round(0.4 / 60, 4)  # a minute of t4-small, as billed
    assert ntfy["headers"]["Title"] == "imggenhub: run nightly done"
    assert ntfy["body"].decode().startswith("2 of 2 images made (hf-jobs; run ")
    assert json.loads(slack["body"])["text"].startswith("*imggenhub: run nightly done*\n2 of 2")
    body = json.loads(discord["body"])
    assert body["content"].startswith("**imggenhub: run nightly done**")
    assert body["allowed_mentions"] == {"parse": []}  # the prompt pings no one
    assert err.count("notified http://127.0.0.1:") == 4 and "/…" in err
    _no_secret(tmp_path, out, err)
    from imggenhub.run import runs

    assert not (runs.load(run_id).folder / notify.FILE).exists()  # done: the URLs are gone
    code, out, err = cli("resume", run_id, cwd=tmp_path)  # nothing new: nothing said again
    assert code == 0 and len(receiver.got) == 4


def test_a_failed_run_says_its_failure_and_its_resumed_end_says_done(hf_jobs, cli, tmp_path,
                                                                      receiver, monkeypatch):
    monkeypatch.setenv("IMGGENHUB_NOTIFY", f"{receiver.url}/env/{SECRET}")  # a cron line's
    hf_jobs.jobs.job_env = [{"IMGGENHUB_ENGINE_FAIL_AFTER": "1"}]
    code, out, err = cli("generate", "--backend", "hf-jobs", "--model", "tiny-random", "-p", "a",
                         "--num-images", "3", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert code == 1, err
    (first,) = receiver.got
    failed = json.loads(first["body"])
    assert failed["outcome"] == "failed" and failed["images_made"] == 1
    assert "injected failure after 1 image" in failed["failure"] and "\n" not in failed["failure"]
    from imggenhub.run import runs

    run = runs.load(None)
    assert (run.folder / notify.FILE).stat().st_mode & 0o777 == 0o600
    monkeypatch.delenv("IMGGENHUB_NOTIFY")  # the run kept its list: resume says its end
    code, out, err = cli("resume", cwd=tmp_path)
    assert code == 0, err
    assert [json.loads(g["body"])["outcome"] for g in receiver.got] == ["failed", "done"]
    _no_secret(tmp_path, out, err)


def test_a_deployed_run_is_announced_by_the_command_that_sees_it_end(emulator, cli, tmp_path,
                                                                     receiver):
    code, out, err = cli("deploy", "--model", "tiny-random", "-p", "a", "--notify",
                         f"{receiver.url}/{SECRET}", "--json", cwd=tmp_path)
    assert code == 0, err
    assert not receiver.got  # pushed is not an end
    code, out, err = cli("resume", "--json", cwd=tmp_path)
    assert code == 0, err
    (got,) = receiver.got
    assert json.loads(got["body"])["outcome"] == "done"


def test_an_undeliverable_notification_is_one_line_and_changes_no_exit_code(hf_jobs, cli, tmp_path,
                                                                             receiver):
    receiver.answers = [503, 503, 503, 400]
    code, out, err = cli("generate", "--backend", "hf-jobs", "--model", "tiny-random", "-p", "a",
                         "--notify", f"{receiver.url}/a/{SECRET}", "--notify",
                         f"{receiver.url}/b/{SECRET}", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert code == 0, err
    assert [g["answered"] for g in receiver.got] == [503, 503, 503, 400]  # 3 tries; a refusal once
    assert f"could not notify {receiver.url}/… (HTTP 503, 3 tries); the run is as it was" in err
    assert f"could not notify {receiver.url}/… (HTTP 400, 1 try)" in err
    _no_secret(tmp_path, out, err)


def test_a_run_refused_over_its_cost_says_so(hf_jobs, cli, tmp_path, receiver):
    code, out, err = cli("generate", "--backend", "hf-jobs", "--model", "tiny-random", "-p", "a",
                         "--flavor", "h200", "--max-cost", "0.01", "--notify",
                         f"{receiver.url}/{SECRET}", cwd=tmp_path)
    assert code == 7, err
    (got,) = receiver.got
    sent = json.loads(got["body"])
    assert sent["outcome"] == "refused" and "is over --max-cost $0.01" in sent["failure"]


@pytest.mark.parametrize("url", ["ftp://example.com/x", "https:///nohost", "http://h:99999/x",
                                 f"https://example.com/{SECRET} x", "not a url"])
def test_a_bad_url_is_one_sentence_without_its_secret(cli, tmp_path, url):
    code, out, err = cli("generate", "--backend", "local", "--model", "tiny-random", "-p", "a",
                         "--notify", url, cwd=tmp_path)
    assert code == 2 and "a notification URL is http:// or https:// with a host" in err, err
    assert SECRET not in err and len(err.strip().splitlines()) == 1


def test_the_format_follows_the_url():
    assert notify.target("https://hooks.slack.com/services/T/B/x").kind == "slack"
    assert notify.target("https://discord.com/api/webhooks/1/x").kind == "discord"
    assert notify.target("https://discord.com/other").kind == "webhook"
    assert notify.target("https://ntfy.sh/my-topic").kind == "ntfy"
    assert notify.target("https://ntfy.example.org/t").kind == "ntfy"
    assert notify.target("ntfy+https://push.example.org/t").kind == "ntfy"
    assert notify.target("https://example.com/hook?key=1").kind == "webhook"
    assert notify.redact("https://user:pw@example.com:8443/hook?key=1") == "https://example.com:8443/…"
    assert notify.redact("https://example.com") == "https://example.com"


@pytest.mark.parametrize("command", ["generate", "deploy", "resume", "train"])
def test_every_command_that_starts_or_ends_a_run_takes_notify(cli, command):
    code, out, err = cli(command, "--help")
    assert code == 0 and "--notify" in out


def test_a_failed_run_seen_by_poll_then_download_is_said_once(hf_jobs, cli, tmp_path, receiver):
    hf_jobs.jobs.job_env = [{"IMGGENHUB_ENGINE_FAIL_AFTER": "1"}]
    code, out, err = cli("deploy", "--backend", "hf-jobs", "--model", "tiny-random", "-p", "a",
                         "--num-images", "2", "--notify", f"{receiver.url}/{SECRET}", "--json",
                         cwd=tmp_path)
    assert code == 0, err
    hf_jobs.jobs.wait_all()
    code, out, err = cli("poll", cwd=tmp_path)
    assert code == 1 and len(receiver.got) == 1
    code, out, err = cli("download", cwd=tmp_path)  # its finished picture comes home: same end
    assert code == 1 and len(receiver.got) == 1


def test_a_url_no_client_can_use_or_a_bad_variable_never_changes_the_end(
        hf_jobs, cli, tmp_path, receiver, monkeypatch):
    code, out, err = cli("generate", "--backend", "hf-jobs", "--model", "tiny-random", "-p", "a",
                         "--notify", f"http://{'a' * 64}.example/{SECRET}", "--notify",
                         f"{receiver.url}/{SECRET}", "--json", cwd=tmp_path)
    assert code == 0, err
    assert json.loads(out)["state"] == "downloaded" and len(receiver.got) == 1
    assert f"could not notify http://{'a' * 64}.example/…" in err and "Traceback" not in err
    # a cron line's variable gone bad: a command that starts a run says so, exit 2 ...
    monkeypatch.setenv("IMGGENHUB_NOTIFY", "http://[::1/x")
    code, out, err = cli("generate", "--backend", "hf-jobs", "--model", "tiny-random", "-p", "b",
                         cwd=tmp_path)
    assert code == 2 and "IMGGENHUB_NOTIFY: a notification URL is http:// or https://" in err
    # ... and one that sees a run end says it in a line and ends as it would have
    monkeypatch.delenv("IMGGENHUB_NOTIFY")
    hf_jobs.jobs.job_env = [{"IMGGENHUB_ENGINE_FAIL_AFTER": "0"}]
    code, out, err = cli("deploy", "--backend", "hf-jobs", "--model", "tiny-random", "-p", "c",
                         cwd=tmp_path)
    assert code == 0, err
    hf_jobs.jobs.wait_all()
    monkeypatch.setenv("IMGGENHUB_NOTIFY", f"ftp://x/{SECRET}")
    code, out, err = cli("poll", cwd=tmp_path)
    assert code == 1 and "note: IMGGENHUB_NOTIFY: a notification URL is" in err
    _no_secret(tmp_path, out, err)
