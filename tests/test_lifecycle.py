"""The run lifecycle: its tables, and every state x command pair through the real CLI
against the emulator (exit code, one sentence, never a traceback)."""

from __future__ import annotations

import json

import pytest

from imggenhub.run import lifecycle, runs
from imggenhub.run.lifecycle import COMMANDS, Exit, RunState, Step, plan

from imggenhub.backends.kaggle.backend import KaggleBackend
from imggenhub.backends.kaggle.meta import METADATA_FILE
from imggenhub.job.notebook import write_notebook
from imggenhub.job.resolve import build_job
from imggenhub.job.spec import parse_settings, prompts_from_flags

from .conftest import REPO
from .test_kaggle import SPEC


def test_every_command_is_defined_for_every_state():
    for name in COMMANDS:
        for state in RunState:
            p = plan(name, state)
            assert isinstance(p.exit, Exit)
            assert p.step is None or (p.exit == Exit.OK and p.step in COMMANDS[name].steps)
            sentence = p.sentence.format(state=state.value, run="RUN", failure="why")
            assert "{" not in sentence


def test_transitions_lead_somewhere_and_terminal_states_stay():
    for state, nexts in lifecycle.TRANSITIONS.items():
        assert state not in nexts
    assert lifecycle.TRANSITIONS[RunState.PUSH_FAILED] == frozenset()
    # downloaded is the end, unless its folder lost files since: a remote run's fetched
    # again, a local run's made again (the rest, or all of it without its manifest)
    assert lifecycle.TRANSITIONS[RunState.DOWNLOADED] == {RunState.COMPLETE, RunState.PARTIAL,
                                                          RunState.RENDERED}
    assert RunState.DOWNLOADED.terminal and RunState.PUSH_FAILED.terminal
    # a failed kernel stays failed, except that resume pushes the rest of a failed run
    for state in (RunState.ERROR, RunState.CANCELLED):
        assert lifecycle.TRANSITIONS[state] == {RunState.RENDERED, RunState.DOWNLOADED}
        assert state.terminal
    # the rest of the job, rendered; or, when every image is already here, done
    assert lifecycle.TRANSITIONS[RunState.PARTIAL] == {RunState.RENDERED, RunState.DOWNLOADED}
    assert RunState.PARTIAL in lifecycle.TRANSITIONS[RunState.RUNNING]  # a local interrupt
    # every state but the end can reach downloaded
    reach = {RunState.DOWNLOADED}
    for _ in RunState:
        reach |= {s for s, n in lifecycle.TRANSITIONS.items() if n & reach}
    assert reach >= {RunState.RENDERED, RunState.PUSHING, RunState.PUSH_UNKNOWN, RunState.PUSHED,
                     RunState.QUEUED, RunState.RUNNING, RunState.COMPLETE, RunState.PARTIAL}


def test_a_save_that_breaks_the_table_is_refused(tmp_path):
    run = runs.Run(run_id="r1", backend="kaggle", job_id="j", image_count=1, out_dir=str(tmp_path),
                   state=RunState.DOWNLOADED)
    runs.save(run)
    run.state = RunState.RUNNING
    with pytest.raises(runs.TransitionError):
        runs.save(run)


def test_resume_takes_every_step_and_download_only_fetches():
    assert plan("resume", RunState.RENDERED).step == Step.PUSH
    assert plan("resume", RunState.PUSH_UNKNOWN).step == Step.RESOLVE
    assert plan("resume", RunState.RUNNING).step == Step.WAIT
    assert plan("resume", RunState.COMPLETE).step == Step.FETCH
    assert plan("resume", RunState.DOWNLOADED).exit == Exit.OK and plan(
        "resume", RunState.DOWNLOADED).step is None
    assert plan("download", RunState.RUNNING).exit == Exit.NOTHING_YET
    assert plan("download", RunState.ERROR).step == Step.KEEP
    assert plan("poll", RunState.CANCELLED).exit == Exit.RUN_FAILED


def test_the_docs_show_the_generated_tables():
    """scripts/doc_tables.py writes these; the docs must hold exactly what the code makes."""
    from imggenhub.config import tunables_markdown

    lifecycle_doc = (REPO / "docs" / "lifecycle.md").read_text(encoding="utf-8")
    assert lifecycle.table_markdown() in lifecycle_doc
    assert lifecycle.exit_table_markdown() in lifecycle_doc
    assert tunables_markdown() in (REPO / "docs" / "tunables.md").read_text(encoding="utf-8")


# What each command must answer for a run recorded in each state; the emulator's kernel
# version 1 is COMPLETE, so a wait ends complete. (Written out, not derived from the table.)
EXPECTED = {
    "rendered": {"poll": 6, "download": 6, "resume": 0, "generate": 0, "deploy": 0},
    "pushing": {"poll": 6, "download": 6, "resume": 0, "generate": 0, "deploy": 0},
    "push-unknown": {"poll": 6, "download": 6, "resume": 0, "generate": 0, "deploy": 0},
    "push-failed": {"poll": 1, "download": 1, "resume": 1, "generate": 1, "deploy": 1},
    "pushed": {"poll": 0, "download": 6, "resume": 0, "generate": 0, "deploy": 0},
    "queued": {"poll": 0, "download": 6, "resume": 0, "generate": 0, "deploy": 0},
    "running": {"poll": 0, "download": 6, "resume": 0, "generate": 0, "deploy": 0},
    "complete": {"poll": 0, "download": 0, "resume": 0, "generate": 0, "deploy": 0},
    "error": {"poll": 1, "download": 1, "resume": 0, "generate": 1, "deploy": 1},
    "cancelled": {"poll": 1, "download": 1, "resume": 0, "generate": 1, "deploy": 1},
    "downloaded": {"poll": 0, "download": 0, "resume": 0, "generate": 0, "deploy": 0},
    # a session's images are here; resume, generate and deploy push the rest
    "partial": {"poll": 6, "download": 6, "resume": 0, "generate": 0, "deploy": 0},
}


AFTER_PUSH = {"pushed", "queued", "running", "complete", "error", "cancelled", "downloaded"}


@pytest.mark.parametrize("command", ["poll", "download", "resume", "generate", "deploy"])
def test_every_state_and_command_pair_through_the_cli(command, emulator, cli, tmp_path):
    """One command against a run recorded in each state (a test per command, so that test
    workers share the 60 pairs)."""
    assert set(EXPECTED) == {s.value for s in RunState}
    assert all(set(answers) == {"poll", "download", "resume", "generate", "deploy"}
               for answers in EXPECTED.values())
    code, out, err = cli("deploy", *SPEC, "--json", cwd=tmp_path)
    assert code == 0, err
    base = runs.load(json.loads(out)["run_id"])
    assert cli("resume", base.run_id)[0] == 0  # v1 complete and downloaded
    emulator.wait_idle()
    template = base.model_dump()
    job = build_job(parse_settings(model="tiny-random", seed=7, num_images=2),
                    prompts_from_flags(["a lighthouse at dusk", "a red fox"]))
    assert job.job_id == base.job_id
    for state, answers in EXPECTED.items():
        expected = answers[command]
        run_id = f"t-{state}-{command}"
        record = runs.Run.model_validate({
            **template, "run_id": run_id, "name": run_id, "state": state,
            "out_dir": str(tmp_path / run_id),
            "images_fetched": 0, "failure": {"kind": "kernel", "ename": "KernelError",
                                             "evalue": "it broke"} if state in (
                "error", "cancelled", "push-failed") else None})
        runs.runs_dir().joinpath(run_id).mkdir()
        # the notebook a push would send, as start() leaves it (carrying this run's id)
        write_notebook(record.notebook_dir, job, run_id)
        (record.notebook_dir / METADATA_FILE).write_bytes(
            (base.notebook_dir / METADATA_FILE).read_bytes())
        if state in AFTER_PUSH:  # a version of its own on the emulator, then the state
            record.state = RunState.RENDERED
            runs.save(record)
            record = KaggleBackend().submit(record, lambda m: None)
            emulator.wait_idle()
            record.state = RunState(state)
            (record.folder / runs.RUN_FILE).write_text(record.model_dump_json())
        else:
            runs.save(record)
        # generate and deploy find the run by its name (the same job: the same spec)
        target = [*SPEC, "--name", run_id] if command in ("generate", "deploy") else [run_id]
        args = [command, *target] + (["--timeout", "20"] if command != "download" else [])
        code, out, err = cli(*args)
        assert code == expected, (state, command, code, err)
        assert "Traceback" not in err and "Internal error" not in err, (state, command, err)
        if code:
            assert err.strip().splitlines()[-1].startswith("Error: "), (state, command, err)
        code, out, err = cli("status", run_id, "--json")
        assert code == 0 and json.loads(out)["run_id"] == run_id
    code, out, err = cli("runs", "--json")
    assert code == 0 and len(json.loads(out)) == 1 + len(EXPECTED)
    emulator.wait_idle()
