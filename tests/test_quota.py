"""The weekly GPU quota: `imggenhub quota` says what GetAcceleratorQuotaStatistics says."""

from __future__ import annotations

import json

import pytest


def test_quota_says_used_left_and_refresh(emulator, cli):
    emulator.gpu_used_seconds = 12.5 * 3600
    emulator.gpu_quota_hours = 30.0
    code, out, err = cli("quota")
    assert code == 0, err
    assert "12.5 h used of 30.0 h this week, 17.5 h left; it refreshes at 2026-11-30T00:00:00Z" in out
    code, out, err = cli("quota", "--json")
    data = json.loads(out)
    assert (data["gpu_hours_used"], data["gpu_hours_left"], data["gpu_hours_total"]) == (12.5, 17.5, 30.0)
    assert data["refreshes_at"] == "2026-11-30T00:00:00Z"


def test_quota_without_credentials_is_one_sentence(cli, monkeypatch):
    code, out, err = cli("quota")
    assert code == 4 and len(err.strip().splitlines()) == 1


def test_quota_when_kaggle_cannot_be_reached(emulator, cli, monkeypatch):
    monkeypatch.setenv("IMGGENHUB_RETRY_TOTAL", "0.5")
    emulator.faults.set(server_error=100)
    code, out, err = cli("quota", "--timeout", "2")
    assert code == 5 and "reading the GPU quota" in err


def test_the_t4_table_agrees_with_the_published_figures():
    from imggenhub.backends.kaggle import estimate
    from imggenhub.job.resolve import build_job
    from imggenhub.job.spec import parse_settings, prompts_from_flags

    def per_image(**flags):
        doc = build_job(parse_settings(seed=1, **flags), prompts_from_flags(["x"])).document()
        return estimate.estimate(doc, []).seconds_per_image

    assert 25 < per_image(model="sdxl") < 28  # published: ~26 s at 30 steps, 1024x1024
    assert 3.4 < per_image(model="sd15", steps=25) < 4.0  # published: ~3.6 s at 25 steps
    assert per_image(model="sdxl-turbo") < 0.5  # one step, no guidance: well under a second


def test_a_job_over_the_quota_left_is_refused_with_both_figures(emulator, cli, tmp_path):
    from imggenhub.run import runs

    emulator.gpu_used_seconds = 30 * 3600 - 30  # 30 s left this week
    code, out, err = cli("deploy", "--model", "tiny-random", "-p", "x", "--json", cwd=tmp_path)
    assert code == 7, err
    assert "needs about 0.03 GPU h, more than the 0.01 h left" in err and "--force" in err
    assert not [m for m, _ in emulator.calls if m == "SaveKernel"] and runs.all_runs() == []
    code, out, err = cli("deploy", "--model", "tiny-random", "-p", "x", "--force", "--json",
                         cwd=tmp_path)
    assert code == 0, err
    run = runs.load(json.loads(out)["run_id"])
    assert run.estimate_hours and 0.02 < run.estimate_hours < 0.04



def test_a_sharded_job_is_refused_on_its_total_with_each_sessions_share(emulator, cli, tmp_path):
    import re

    emulator.gpu_used_seconds = 30 * 3600 - 200  # 0.06 h left: one session fits, three do not
    flags = ["deploy", "--model", "tiny-random", "-p", "x", "--num-images", "3"]
    code, out, err = cli(*flags, "--shards", "3", cwd=tmp_path)
    assert code == 7, err
    said = re.search(r"needs about ([\d.]+) GPU h in 3 sessions: ([\d.]+) \+ ([\d.]+) \+ "
                     r"([\d.]+) h, more than the 0.06 h left", err)
    assert said, err
    total, *shares = map(float, said.groups())
    assert abs(total - sum(shares)) < 0.011 and min(shares) > 0.02
    assert not [m for m, _ in emulator.calls if m == "SaveKernel"]
    code, out, err = cli(*flags, "--shards", "1", cwd=tmp_path)
    assert code == 0, err

def test_finished_runs_correct_the_next_estimate(emulator, cli, tmp_path):
    from imggenhub.run import runs

    emulator.image_seconds = 0.3  # the stub takes 0.3 s an image: six times the table's guess
    flags = ["--model", "tiny-random", "-p", "x", "--num-images", "3", "--seed", "1"]
    code, out, err = cli("generate", *flags, "--json", "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert code == 0, err
    assert "from the T4 table" in err
    run = runs.load(json.loads(out)["run_id"])
    assert run.engine_hours is not None and run.engine_hours >= 0.9 / 3600
    code, out, err = cli("deploy", *flags, "-p", "y", cwd=tmp_path)
    assert code == 0, err
    line = next(l for l in err.splitlines() if "estimate:" in l)
    assert "from 1 of your runs of tiny-random" in line
    assert float(line.split("at ~")[1].split("s each")[0]) >= 0.3
    # kept per endpoint: a test server's runs never correct the real Kaggle's estimates
    from imggenhub.backends.kaggle import estimate
    from imggenhub.backends.kaggle.api import KAGGLE_URL
    from imggenhub.config import state_dir

    (entry,) = estimate.read_history(state_dir())
    assert entry["endpoint"] == emulator.url != KAGGLE_URL
    assert estimate.read_history(state_dir(), KAGGLE_URL) == []
    # an entry from before the history was kept per endpoint counts for none
    with open(state_dir() / estimate.HISTORY, "a", encoding="utf-8") as f:
        f.write(json.dumps({k: v for k, v in entry.items() if k != "endpoint"}) + "\n")
    assert len(estimate.read_history(state_dir(), emulator.url)) == 1


# Answers a broken or hostile server might give to GetAcceleratorQuotaStatistics: each
# parses badly in kagglesdk, or parses into figures no weekly quota has.
BAD_QUOTA_ANSWERS = {
    "negative": '{"gpuQuota": {"timeUsed": "-3600s", "totalTimeAllowed": "108000s"}}',
    "more than a week": '{"gpuQuota": {"timeUsed": "0s", "totalTimeAllowed": "700000s"}}',
    "beyond any duration": '{"gpuQuota": {"timeUsed": "99999999999999999999s", '
                           '"totalTimeAllowed": "108000s"}}',
    "not a number": '{"gpuQuota": {"timeUsed": "lots", "totalTimeAllowed": "108000s"}}',
    "a number, not a duration": '{"gpuQuota": {"timeUsed": 3600, "totalTimeAllowed": "108000s"}}',
    "a text, not an object": '{"gpuQuota": "timeUsed"}',
    "a number, not an object": '{"gpuQuota": 7}',
    "no GPU quota": '{"gpuQuota": null, "quotaRefreshTime": "2026-11-30T00:00:00Z"}',
    "null used": '{"gpuQuota": {"timeUsed": null, "totalTimeAllowed": "108000s"}}',
    "null body": "null",
    "a date that is no date": '{"gpuQuota": {"timeUsed": "0s", "totalTimeAllowed": "108000s"}, '
                              '"quotaRefreshTime": "soon"}',
    "a code that is no number": '{"code": "teapot"}',
    "not JSON": "<html>maintenance</html>",
}


@pytest.mark.parametrize("kind", sorted(BAD_QUOTA_ANSWERS))
def test_an_unusable_quota_answer_is_unknown_and_the_push_goes_on(emulator, cli, tmp_path, kind):
    emulator.faults.set(api_body={"GetAcceleratorQuotaStatistics": BAD_QUOTA_ANSWERS[kind]})
    code, out, err = cli("quota", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["gpu_hours_left"] is None and data["gpu_hours_used"] is None, data
    if kind != "null used":  # what it does say, it says: the week's total
        assert data["gpu_hours_total"] is None
    warnings = [l for l in err.splitlines() if "quota answer is unusable" in l]
    assert len(warnings) == 1 and "Traceback" not in err and "Internal error" not in err, err
    code, out, err = cli("quota")
    assert code == 0 and "unknown" in out, err
    code, out, err = cli("deploy", "--model", "tiny-random", "-p", "x", "--json", cwd=tmp_path)
    assert code == 0, err
    assert [m for m, _ in emulator.calls if m == "SaveKernel"]
    assert "quota answer is unusable" in err and "pushed unchecked" in err
    assert emulator.faults.fired["api_body"] == 3


def test_the_week_bounds_every_quota_figure(emulator, cli):
    """A week's hours are a figure; one hour more is not (and doctor says '?' for it)."""
    emulator.gpu_quota_hours = 7 * 24.0  # the most a week holds is still a figure
    code, out, err = cli("quota", "--json")
    assert code == 0 and json.loads(out)["gpu_hours_total"] == 168.0, err
    emulator.gpu_quota_hours = 7 * 24.0 + 1
    code, out, err = cli("quota", "--json")
    assert code == 0 and json.loads(out)["gpu_hours_left"] is None
    assert "hours total 169 h is not within 0 to 168 h" in err
    code, out, err = cli("doctor")
    assert code == 0 and "GPU quota used ? of ? h" in out, err


@pytest.mark.parametrize("method,body", [
    ("GetKernelSessionStatus", "<html>a proxy's error page</html>"),
    ("GetKernelSessionStatus", '{"status": {"nested": "where a name goes"}}'),
    ("ListKernelSessionOutput", "]] not JSON"),
    ("SaveKernel", '{"versionNumber": "seven"}'),
])
def test_an_unreadable_answer_to_any_call_is_one_sentence_and_exit_5(method, body, emulator, cli,
                                                                     tmp_path):
    """Any Kaggle answer the client cannot read (not JSON, a field of the wrong type) is one
    sentence naming what was asked, exit 5 (the run, if any, goes on), never an internal
    error; a push answered so may have landed, and resume finds out."""
    emulator.faults.set(api_body={method: body})
    code, out, err = cli("generate", "--model", "tiny-random", "-p", "x", "--json", cwd=tmp_path)
    assert code == 5, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("Error: Kaggle's answer while ") and "could not be read" in last, err
    assert "Internal error" not in err and "Traceback" not in err
    assert emulator.faults.fired.get("api_body")
    if method == "SaveKernel":
        from imggenhub.run import runs

        assert runs.load().state.value == "push-unknown" and "may or may not" in last


def test_an_answer_larger_than_the_bound_is_never_read_whole(emulator, cli, tmp_path, monkeypatch):
    """A server that answers a status call with megabytes (or endlessly) is cut off at the
    bound, in pieces: one sentence, exit 5, the run goes on."""
    from imggenhub.backends.kaggle import api

    monkeypatch.setattr(api, "MAX_ANSWER", 1 << 20)
    body = json.dumps({"status": "RUNNING", "failureMessage": "x" * (2 << 20)})
    emulator.faults.set(api_body={"GetKernelSessionStatus": body})
    code, out, err = cli("generate", "--model", "tiny-random", "-p", "x", cwd=tmp_path)
    assert code == 5, err
    assert "an answer of more than 1 MiB" in err.strip().splitlines()[-1]
