"""The one driver, with a fake backend on a fake clock: a group of one, a group of two with
one failing (and resume pushing it again alone), a push refused for want of a GPU slot,
and the deadline. The fake only moves records through the lifecycle table; the driver is
the real one."""

from __future__ import annotations

import pytest

from imggenhub import backends
from imggenhub.run import driver, runs
from imggenhub.config import Tunables
from imggenhub.errors import NoFreeSlot, NothingYet, RunFailedError, StillRunning
from imggenhub.run.lifecycle import RunState
from imggenhub.run.runs import Failure, Run

S = RunState


class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.slept = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class FakeBackend(backends.Backend):
    """Each session's script: how its pushes go ("slot": no free GPU slot) and how it ends
    ("complete", "error", or "never": still running at any deadline; a list: one session
    after another, then "complete")."""

    name = "fake"
    title = "Fake"

    def __init__(self, pushes: dict, ends: dict, wait_seconds: float = 10.0):
        super().__init__(Tunables(gpu_wait=5.0, gpu_wait_total=100.0, clock=FakeClock()))
        self.pushes, self.ends, self.wait_seconds = pushes, ends, wait_seconds
        self.calls: list[tuple[str, str]] = []

    def submit(self, run, on_event):
        self.calls.append(("submit", run.run_id))
        if run.state.failed:  # the rest of a failed session, again
            run.state = S.RENDERED
            runs.save(run)
        outcome = self.pushes.get(run.run_id, []).pop(0) if self.pushes.get(run.run_id) else "ok"
        if outcome == "slot":
            raise NoFreeSlot("no free slot")
        run.state = S.PUSHING
        runs.save(run)
        run.state = S.PUSHED
        return runs.save(run)

    def rest(self, run):  # what a failed session owes: all of it, here
        from imggenhub.engine import Plan

        return Plan.whole(run.image_count)

    def wait(self, members, say_for):
        self.calls.append(("wait", ",".join(m.run_id for m in members)))
        clock = self.tunables.clock
        if self.deadline.passed(after=self.wait_seconds) and all(
                self.ends.get(m.run_id) == "never" for m in members):
            clock.now = self.deadline.at
            raise StillRunning("still going; 'imggenhub resume' picks it up.")
        clock.now += self.wait_seconds
        for m in members:  # the first that is not "never" ends
            script = self.ends.get(m.run_id, "complete")
            end = (script.pop(0) if script else "complete") if isinstance(script, list) else script
            if end != "never":
                m.state = S.COMPLETE if end == "complete" else S.ERROR
                m.failure = None if end == "complete" else Failure(kind="kernel", evalue=end)
                runs.save(m)
                if not isinstance(script, list):
                    self.ends[m.run_id] = "complete"  # its next session ends well
                break
        return members

    def fetch(self, run, on_event):
        self.calls.append(("fetch", run.run_id))
        run.images_fetched = run.image_count
        if run.state == S.COMPLETE:
            run.state = S.DOWNLOADED
        return runs.save(run)

    def refresh(self, run, on_event):
        return run


@pytest.fixture
def fake(monkeypatch):
    made = {}

    def install(pushes=None, ends=None, **kwargs):
        made["backend"] = FakeBackend(pushes or {}, ends or {}, **kwargs)
        monkeypatch.setitem(backends._REGISTRY, "fake", lambda: made["backend"])
        return made["backend"]

    return install


def _run(run_id: str, shards: int = 0) -> Run:
    (runs.runs_dir() / run_id).mkdir(parents=True, exist_ok=True)
    run = Run(run_id=run_id, backend="fake", job_id="j", image_count=4, out_dir="/tmp/out")
    for k in range(1, shards + 1):
        runs.save(Run(run_id=f"{run_id}/shard-{k}", backend="fake", job_id="j", image_count=2,
                      out_dir="/tmp/out", shard=k))
        run.shards.append(f"{run_id}/shard-{k}")
    return runs.save(run)


def test_a_group_of_one_is_pushed_followed_and_fetched(fake):
    backend = fake()
    events = []
    run = driver.advance(_run("one"), "generate", events.append)
    assert run.state == S.DOWNLOADED
    assert backend.calls == [("submit", "one"), ("wait", "one"), ("fetch", "one")]
    assert any("bringing the outputs of run one" in e for e in events)


def test_a_group_of_two_with_one_failing_keeps_the_others_and_resume_pushes_it_alone(fake):
    backend = fake(ends={"two/shard-2": "error"})
    events = []
    with pytest.raises(RunFailedError) as failed:
        driver.advance(_run("two", shards=2), "generate", events.append)
    assert "shard 2 (error) failed" in str(failed.value) and "resume two" in str(failed.value)
    parent = runs.load("two")
    assert parent.state == S.ERROR
    assert [s.state for s in runs.shards_of(parent)] == [S.DOWNLOADED, S.ERROR]
    assert ("fetch", "two/shard-2") in backend.calls  # what it finished came home
    assert any(e.startswith("[shard 2/2]") for e in events)
    backend.calls.clear()
    run = driver.advance(parent, "resume", events.append)
    assert run.state == S.DOWNLOADED
    assert {c[1] for c in backend.calls} == {"two/shard-2"}  # the other shard was left alone


def test_a_failed_run_is_pushed_again_by_resume_but_not_a_third_time_after_the_same_failure(fake):
    backend = fake(ends={"bad": ["boom", "boom", "bang", "bang"]})
    with pytest.raises(RunFailedError) as failed:
        driver.advance(_run("bad"), "generate", lambda m: None)
    assert "boom" in str(failed.value)
    backend.calls.clear()
    with pytest.raises(RunFailedError):  # generate (a cron line) reports it, never re-pushes
        driver.advance(runs.load("bad"), "generate", lambda m: None)
    assert ("submit", "bad") not in backend.calls
    events = []
    with pytest.raises(RunFailedError) as failed:  # resume: pushed again, fails the same way
        driver.advance(runs.load("bad"), "resume", events.append)
    assert ("submit", "bad") in backend.calls and "boom" in str(failed.value)
    assert any("ended error (boom); pushing a new session" in e for e in events)
    backend.calls.clear()
    with pytest.raises(RunFailedError) as failed:  # the same failure twice: not a third push
        driver.advance(runs.load("bad"), "resume", lambda m: None)
    assert ("submit", "bad") not in backend.calls
    assert "failed the same way twice (boom)" in str(failed.value) and "--force" in str(failed.value)
    with pytest.raises(RunFailedError) as failed:  # --force pushes; another failure ...
        driver.advance(runs.load("bad"), "resume", lambda m: None, force=True)
    assert ("submit", "bad") in backend.calls and "bang" in str(failed.value)
    backend.calls.clear()
    with pytest.raises(RunFailedError) as failed:  # ... is a first, so resume pushes again
        driver.advance(runs.load("bad"), "resume", lambda m: None)
    assert ("submit", "bad") in backend.calls and "bang" in str(failed.value)
    run = driver.advance(runs.load("bad"), "resume", lambda m: None, force=True)
    assert run.state == S.DOWNLOADED and run.failures == ["boom", "boom", "bang", "bang"]


def test_two_failures_are_the_same_whatever_numbers_they_carry():
    def failure(seconds, error):
        tail = (f"[imggenhub] image 1/3 in {seconds}s\nTraceback (most recent call last):\n"
                f"{error}\n[imggenhub] done: 1 image in {seconds}s (failed, exit 1)\n")
        return Failure(kind="kernel", ename="KernelError", evalue="Your notebook failed",
                       log_tail=tail)

    oom = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate {} MiB (GPU 0)"
    first, again = failure(4.4, oom.format(512)), failure(4.5, oom.format(640))
    assert first.signature() == again.signature() and first.said() != again.said()
    assert "OutOfMemoryError" in first.said() and "done:" not in first.said()
    other = failure(4.4, "ValueError: the prompt is too long")
    assert other.signature() != first.signature()


def test_a_push_without_a_free_slot_is_pushed_again_when_one_frees(fake):
    backend = fake(pushes={"slots/shard-2": ["slot", "slot"]})
    events = []
    run = driver.advance(_run("slots", shards=2), "generate", events.append)
    assert run.state == S.DOWNLOADED
    submits = [c for c in backend.calls if c == ("submit", "slots/shard-2")]
    assert len(submits) == 3
    assert sum("GPU sessions are all taken: no free slot" in e for e in events) == 2


def test_slots_that_stay_busy_end_at_the_deadline_with_exit_6(fake):
    backend = fake(pushes={"busy": ["slot"] * 100})
    with pytest.raises(NothingYet) as busy:
        driver.advance(_run("busy"), "generate", lambda m: None, timeout=12)
    assert "stayed busy (no free slot)" in str(busy.value) and "resume busy" in str(busy.value)
    clock = backend.tunables.clock
    assert clock.now <= 12 and clock.slept == [5.0, 5.0]  # one deadline, never overrun
    assert runs.load("busy").state == S.RENDERED


def test_the_deadline_bounds_a_group_and_names_the_run(fake):
    backend = fake(ends={"long/shard-1": "never", "long/shard-2": "never"})
    with pytest.raises(StillRunning) as still:
        driver.advance(_run("long", shards=2), "generate", lambda m: None, timeout=25)
    assert str(still.value).startswith("Run long: ") and "'imggenhub resume long'" in str(still.value)
    assert backend.tunables.clock.now == pytest.approx(25)
    assert runs.load("long").state == S.PUSHED


def test_a_second_run_kind_is_a_module_not_a_branch(fake, monkeypatch):
    """A kind registered the way a new module would: the driver's sentences count its items
    through it, and nothing else in the driver changes."""
    from imggenhub.run import kinds

    class Weights(kinds.RunKind):
        name = "weights"

        def count(self, n):
            return f"{n} checkpoint" + ("" if n == 1 else "s")

    monkeypatch.setitem(kinds.KINDS, "weights", Weights())
    fake(ends={"tune": "error"})
    run = _run("tune")
    run.kind = "weights"
    runs.save(run)
    with pytest.raises(RunFailedError) as failed:
        driver.advance(run, "generate", lambda m: None)
    assert "the 4 checkpoints finished before it are in /tmp/out" in str(failed.value)
    with pytest.raises(Exception, match="Unknown run kind 'nothing'"):
        kinds.of("nothing")
