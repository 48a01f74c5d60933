"""Shards: one run's images split over several Kaggle kernels (``<slug>-1``, ``<slug>-2``,
...), pushed together, followed together and downloaded into the run's one folder, where
their manifests join into one. Each shard is a run record of its own (kept inside the
run's folder) that goes through the lifecycle as any run does; the run's own state sums
them up. At most as many shards run as Kaggle gives GPU sessions: a further one waits for
a slot, which Kaggle's "maximum GPU session count" answer means, not an error. A failed
shard is pushed again alone by ``resume`` (the images not yet here); the others are left
as they are."""

from __future__ import annotations

import dataclasses
from . import backends, runs
from .errors import ImggenhubError, NoFreeSlot, NothingYet, RunFailedError, StillRunning
from .lifecycle import Exit, RunState, Step, plan
from .runs import Run

GPU_SESSIONS = 2  # Kaggle runs at most 2 GPU sessions at once per account
AUTO_MIN_MINUTES = 10.0  # auto: shard when the job's generation is at least this long


def share(job, shards: int) -> list[list[list[int]]]:
    """Each shard's image indices, as ranges: contiguous, in the job's order."""
    from .engine import Plan

    plan = Plan.of(job.document())
    return [plan.split(k, shards).ranges() for k in range(shards)]


def auto_count(job) -> int:
    """As many shards as Kaggle runs at once, when the job is long enough to gain from it."""
    from . import estimate
    from .config import state_dir

    guess = estimate.estimate(job.document(), estimate.read_history(state_dir()))
    generation_minutes = guess.seconds_per_image * guess.images / estimate.GPUS / 60
    return GPU_SESSIONS if generation_minutes >= AUTO_MIN_MINUTES and guess.images > 1 else 1


def start(job, parent: Run, impl, options, on_event) -> None:
    """Make the shards' records and notebooks (each checked as a run is) under ``parent``."""
    count = min(options.shards or auto_count(job), job.image_count)
    if count < 2:
        return
    reserved, made = 0.0, []
    for k, ranges in enumerate(share(job, count), start=1):
        child = Run(run_id=f"{parent.run_id}/shard-{k}", backend=parent.backend,
                    job_id=job.job_id, image_count=sum(b - a for a, b in ranges),
                    out_dir=parent.out_dir, session_timeout_seconds=parent.session_timeout_seconds,
                    shard=k, only=ranges)
        child.notebook_dir.mkdir(parents=True, exist_ok=True)  # prepare writes its notebook
        impl.prepare(job, child, dataclasses.replace(options, reserved_hours=reserved),
                     tagged(on_event, child, count))
        reserved += child.estimate_hours or 0.0
        made.append(runs.save(child))
        parent.shards.append(child.run_id)
    parent.estimate_hours = round(reserved, 3) if reserved else None
    parent.kernel_ref = None
    on_event(f"{count} shards: " + ", ".join(f"{c.kernel_ref} ({c.image_count} images)"
                                             for c in made))


def tagged(on_event, shard: Run, count: int):
    return lambda message: on_event(f"[shard {shard.shard}/{count}] {message}")


def summary(shards: list[Run]) -> RunState:
    """The run's state from its shards'."""
    states = [s.state for s in shards]
    if all(s == RunState.DOWNLOADED for s in states):
        return RunState.DOWNLOADED
    if all(s.terminal or s == RunState.PARTIAL for s in states):  # DOWNLOADED is terminal
        for bad in (RunState.PUSH_FAILED, RunState.ERROR, RunState.CANCELLED):
            if bad in states:
                return bad
        if RunState.PARTIAL in states:
            return RunState.PARTIAL
        return RunState.COMPLETE
    for state in (RunState.RUNNING, RunState.QUEUED, RunState.PUSHED, RunState.PUSH_UNKNOWN,
                  RunState.PUSHING):
        if state in states:
            return state
    return RunState.RENDERED


def advance(parent: Run, command: str, on_event, timeout: float | None = None) -> Run:
    """Take each shard as far as ``command`` takes a run: the pushes, fetches and resolutions
    one after another, the waits together; then the run's state and exit code sum them up."""
    impl = backends.get_backend(parent.backend)
    impl.slot_wait = False
    clock = impl.tunables.clock
    ends = None if timeout is None else clock.monotonic() + timeout
    # the wait for a free GPU session: --timeout, else IMGGENHUB_GPU_WAIT_TOTAL (as a push)
    slot_ends = ends if ends is not None else clock.monotonic() + impl.tunables.gpu_wait_total
    count = len(parent.shards)

    def left() -> float | None:
        return None if ends is None else max(0.0, ends - clock.monotonic())

    with runs.working_on(parent):
        shards = runs.shards_of(runs.reload(parent))
        kept: set[str] = set()  # failed shards whose images were brought home this time
        stops: dict[str, Exception] = {}
        try:
            while True:
                waiting, blocked, moved = [], [], False
                for i, shard in enumerate(shards):
                    if shard.run_id in stops:
                        continue
                    say = tagged(on_event, shard, count)
                    step = _step(command, shard, kept)
                    if step is None:
                        continue
                    if step == Step.WAIT:
                        waiting.append(i)
                        continue
                    impl.bound(left())
                    try:
                        with runs.working_on(shard):
                            shards[i] = _take(impl, step, runs.reload(shard), say)
                        moved = True
                    except NoFreeSlot:
                        shards[i] = runs.reload(shard)
                        blocked.append(i)
                        say("Kaggle's GPU sessions are all taken; this shard is pushed when "
                            "one ends")
                    except NothingYet as exc:
                        shards[i] = runs.reload(shard)
                        stops[shard.run_id] = exc
                    except RunFailedError as exc:
                        shards[i] = runs.reload(shard)
                        if step == Step.KEEP:  # home; resume may push it again next
                            kept.add(shard.run_id)
                            moved = True
                        else:
                            stops[shard.run_id] = exc
                    except ImggenhubError as exc:
                        shards[i] = runs.reload(shard)
                        stops[shard.run_id] = exc
                if moved:
                    continue
                if waiting:
                    impl.bound(left())
                    updated = impl.wait_some([shards[i] for i in waiting],
                                             lambda s: tagged(on_event, s, count))
                    for i, shard in zip(waiting, updated):
                        shards[i] = shard
                    continue
                if blocked:  # nothing runs that could free a slot soon: wait, then push again
                    pause = impl.tunables.gpu_wait
                    if clock.monotonic() + pause >= slot_ends:
                        raise NothingYet(f"Kaggle's GPU sessions stayed busy; {len(blocked)} "
                                         f"shards of run {parent.run_id} wait to be pushed; "
                                         f"'imggenhub resume {parent.run_id}' pushes them.")
                    clock.sleep(pause)
                    continue
                break
        except StillRunning as exc:
            raise StillRunning(f"Run {parent.run_id}: {exc}".replace(
                "'imggenhub resume'", f"'imggenhub resume {parent.run_id}'")) from None
        finally:
            impl.slot_wait = True
            impl.close_followers()
            parent = _sum_up(parent, [runs.reload(s) for s in shards])
        return _verdict(parent, shards, command, stops)


def _step(command: str, shard: Run, kept: set[str]) -> Step | None:
    """What ``command`` does next with a shard (None: nothing more this time)."""
    if shard.state.failed and shard.run_id in kept:
        # its images are home: resume pushes the rest of a failed shard again, alone
        return Step.PUSH if command == "resume" and shard.state != RunState.PUSH_FAILED else None
    p = plan(command, shard.state)
    return p.step if p.step not in (None, Step.DONE, Step.FAIL) else None


def _take(impl, step: Step, shard: Run, say) -> Run:
    if step == Step.PUSH:
        return impl.submit(shard, say)
    if step == Step.RESOLVE:
        return impl.resolve(shard, say)
    if step in (Step.FETCH, Step.KEEP):
        shard = impl.fetch(shard, say)
        if step == Step.KEEP:
            from .jobs import failure_error

            raise failure_error(shard)
        return shard
    raise AssertionError(step)


def _sum_up(parent: Run, shards: list[Run]) -> Run:
    parent.state = summary(shards)
    parent.images_fetched = sum(s.images_fetched for s in shards)
    parent.url = next((s.url for s in shards if s.url), None)
    hours = [s.engine_hours for s in shards if s.engine_hours is not None]
    parent.engine_hours = round(sum(hours), 4) if hours else None
    failed = next((s for s in shards if s.failure is not None and s.state.failed), None)
    parent.failure = failed.failure if failed else None
    return runs.save(parent)


def _verdict(parent: Run, shards: list[Run], command: str, stops: dict) -> Run:
    """The run's exit: a failure first, then a shard with nothing to do yet, else done."""
    for exc in stops.values():  # what stopped a shard this time comes first (5, 6...)
        raise exc
    failed = [s for s in shards if s.state.failed]
    if failed:
        names = ", ".join(f"shard {s.shard} ({s.state.value})" for s in failed)
        why = failed[0].failure.sentence() if failed[0].failure else failed[0].state.value
        again = (f"'imggenhub resume {parent.run_id}' pushes the failed shards again, alone"
                 if any(s.state != RunState.PUSH_FAILED for s in failed) else
                 "Kaggle refused the push itself: fix the cause and start a new run")
        message = f"Run {parent.run_id}: {names} failed: {why}; the images made are in " \
                  f"{parent.out_dir}; {again}"
        raise RunFailedError(message + ".", failed[0].failure, parent.run_id)
    p = plan(command, parent.state)
    if p.step is not None or p.exit == Exit.OK:
        return parent
    sentence = p.sentence.format(state=parent.state.value, run=parent.run_id, failure="")
    raise NothingYet(f"Run {parent.run_id} {sentence}.")
