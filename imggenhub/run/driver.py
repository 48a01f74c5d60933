"""The driver: the one loop that advances every run through the lifecycle.

A run is a group of sessions on one backend: a plain run is a group of one (the run itself),
a sharded run the group of its shards (each a record of its own). ``advance`` asks the
lifecycle what ``command`` does next with each member, takes the pushes, resolutions and
fetches one after another and the waits together, on one deadline, through the backend
protocol only (it knows no backend by name), and ends with one exit code and sentence.
A push that finds no free GPU slot is pushed again when one frees (bounded by the deadline,
else IMGGENHUB_GPU_WAIT_TOTAL).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from .. import backends
from ..config import Deadline
from ..errors import (
    ImggenhubError,
    Interrupted,
    interruption,
    NoFreeSlot,
    NothingYet,
    OverQuota,
    RunFailedError,
    SpecError,
    StillRunning,
)
from ..outputs import artifacts
from . import kinds, runs
from .lifecycle import Exit, RunState, Step, plan, pushes_again, summary
from .runs import Run


def failure_error(run: Run) -> RunFailedError:
    """The sentence (and typed failure) of a run that failed, in its backend's words."""
    failure = run.failure
    why = failure.sentence() if failure else run.state.value
    where = _title(run)
    if failure and failure.kind in ("kernel", "cancelled"):
        tail = failure.log_tail.strip().splitlines()
        last = f"; the log ends with: {tail[-1]}" if tail else ""
        message = (f"{where} reports {run.state.value} for {run.kernel_ref} v{run.version}: "
                   f"{failure.evalue}{last}")
    elif failure and failure.kind == "push":
        message = f"{where} refused the push of run {run.run_id}: {failure.evalue}"
    else:
        message = f"The notebook failed {why}" if failure and failure.cell_index is not None \
            else f"Run {run.run_id} failed: {why}"
    if run.images_fetched:
        message += (f"; the {kinds.of(run.kind).count(run.images_fetched)} finished before it "
                    f"are in {run.out_dir}")
    return RunFailedError(message.rstrip(".") + ".", failure, run.run_id)


def _keep_old_document(run: Run) -> None:
    """A record made before records kept their job document: read it from the notebook, once."""
    from ..job.notebook import CODE_FILE, read_job_document

    for one in [run, *(runs.shards_of(run) if run.shards else [])]:
        if runs.document(one) is None and (one.notebook_dir / CODE_FILE).exists():
            try:
                text = (one.notebook_dir / CODE_FILE).read_text(encoding="utf-8")
            except (OSError, ValueError) as exc:  # unreadable, or not UTF-8
                raise runs.state_error(exc) from None
            doc = read_job_document(text)
            if doc is not None:
                runs.keep_document(one, doc)


class _Group:
    """The members a run advances: itself, or its shards; what each has to say is tagged."""

    def __init__(self, run: Run, on_event, force: bool = False):
        self.run, self.on_event, self.force = run, on_event, force
        self.sharded = bool(run.shards)
        self.members = runs.shards_of(run) if self.sharded else [run]
        self.kept: set[str] = set()  # failed members whose images came home this time
        self.again: set[str] = set()  # failed members pushed again this time (once at most)
        # only a failure known before this command is pushed again: one seen now is said first
        self.failed_before = {m.run_id for m in self.members if m.state.failed}
        self.stops: dict[str, Exception] = {}  # what ended a member's part this time
        self.cancelled: set[str] = set()  # members whose remote run was asked to stop

    def say(self, member: Run):
        if not self.sharded:
            return self.on_event
        count = len(self.members)
        return lambda message: self.on_event(f"[shard {member.shard}/{count}] {message}")

    def lock(self, member: Run):
        """A shard is locked while a step is taken on it (the run itself is locked already)."""
        return runs.working_on(member) if self.sharded else contextlib.nullcontext()

    def step(self, command: str, member: Run) -> Step | None:
        """What ``command`` does next with a member (None: nothing more this time)."""
        if member.run_id in self.stops:
            return None
        if member.state.failed and member.run_id in self.kept:
            # its images are home: resume pushes the rest again (a shard alone), unless it
            # failed the same way as the session that resume pushed last time
            if not pushes_again(command, member.state) or member.run_id in self.again \
                    or member.run_id not in self.failed_before:
                return None
            why = member.failure.said() if member.failure else member.state.value
            if member.failures[-1:] == [_signature(member)] and not self.force:
                self.stops[member.run_id] = RunFailedError(
                    f"Run {member.run_id} failed the same way twice ({why}); it is not pushed "
                    f"a third time: fix the cause, then 'imggenhub resume {self.run.run_id} "
                    "--force' pushes what is not here yet.", member.failure, self.run.run_id)
                return None
            self.kept.discard(member.run_id)  # the new session's failure is fetched and said
            self.again.add(member.run_id)
            return Step.PUSH
        p = plan(command, member.state)
        if p.step == Step.CANCEL and member.run_id in self.cancelled:
            return Step.WAIT  # asked once: its end is waited for
        return p.step if p.step not in (None, Step.DONE, Step.FAIL) else None


def advance(run: Run, command: str, on_event: backends.OnEvent,
            timeout: float | None = None, out_dir: Path | None = None,
            force: bool = False, notify: list | None = None) -> Run:
    """Take the steps ``command`` may take until its work is done; raise with the right
    exit code otherwise. One process at a time per run (the others are refused).
    ``force``: resume pushes a run again even after the same failure twice. ``notify``:
    where to say the run's end (kept with the run: the command that sees it end says it)."""
    from .. import notify as notices

    impl = backends.get_backend(run.backend)
    deadline = Deadline(impl.tunables, timeout)
    with runs.working_on(run):
        run = runs.reload(run)
        if run.state != RunState.DOWNLOADED:  # a run done and said keeps no URL here
            notices.keep(run.folder, notify or [])
        try:
            if command in ("download", "resume", "generate"):
                run = _check_home(impl, run, on_event)
            _keep_old_document(run)
            if out_dir is not None:
                run = _move_output(impl, run, command, Path(out_dir))
            group = _Group(run, on_event, force)
            try:
                _drive(impl, group, command, deadline)
            finally:
                impl.close()
                if group.sharded:
                    run = _sum_up(run, [runs.reload(s) for s in group.members])
            try:
                run = _verdict(runs.reload(run), group, command)
            except (RunFailedError, OverQuota) as exc:
                notices.ended(runs.reload(run), exc, on_event, impl.tunables)
                raise
            notices.ended(run, None, on_event, impl.tunables)
            return run
        except KeyboardInterrupt as stop:
            raise _interrupted(impl, runs.reload(run), stop) from None
        except ImggenhubError as exc:
            if getattr(exc, "run_id", None) is None:
                exc.run_id = run.run_id  # --json names the run every error is about
            raise


def _drive(impl: backends.Backend, group: _Group, command: str, deadline: Deadline) -> None:
    """The loop: every member as far as ``command`` takes it, or until the deadline."""
    tunables = impl.tunables
    slots = deadline if deadline.at is not None else Deadline(tunables, tunables.gpu_wait_total)
    members = group.members
    while True:
        waiting, blocked, moved = [], [], False
        for i, member in enumerate(members):
            step = group.step(command, member)
            if step is None:
                continue
            if step == Step.WAIT:
                waiting.append(i)
                continue
            say = group.say(member)
            impl.bound(deadline.left())
            try:
                with group.lock(member):
                    members[i] = _take(impl, step, runs.reload(member), say)
                if step == Step.CANCEL:
                    group.cancelled.add(member.run_id)
                moved = True
            except NoFreeSlot as exc:
                members[i] = runs.reload(member)
                blocked.append((i, str(exc)))
                say(f"{impl.title}'s GPU sessions are all taken: {exc}; waiting "
                    f"{tunables.gpu_wait:.0f}s for one to end, then pushing again")
            except RunFailedError as exc:
                members[i] = runs.reload(member)
                if step == Step.KEEP:  # home; resume may push a shard again next
                    group.kept.add(member.run_id)
                    moved = True
                else:
                    group.stops[member.run_id] = exc
            except ImggenhubError as exc:
                members[i] = runs.reload(member)
                group.stops[member.run_id] = exc
        if moved:
            continue
        if waiting:
            impl.bound(deadline.left())
            try:
                updated = impl.wait([members[i] for i in waiting], group.say)
            except StillRunning as exc:
                if not group.sharded:
                    raise
                parent = group.run.run_id
                raise StillRunning(f"Run {parent}: {exc}".replace(
                    "'imggenhub resume'", f"'imggenhub resume {parent}'")) from None
            for i, member in zip(waiting, updated):
                members[i] = member
            continue
        if blocked:  # nothing runs here that could free a slot soon: wait, then push again
            pause = tunables.gpu_wait
            if slots.passed(after=pause):
                run_id = group.run.run_id
                what = (f"{len(blocked)} shards of run {run_id} wait to be pushed" if
                        group.sharded else f"run {run_id} was not pushed")
                raise NothingYet(f"{impl.title}'s GPU sessions stayed busy ({blocked[0][1]}); "
                                 f"{what}; 'imggenhub resume {run_id}' pushes "
                                 f"{'them' if group.sharded else 'it'}.")
            tunables.clock.sleep(pause)
            continue
        return


def _take(impl: backends.Backend, step: Step, member: Run, say) -> Run:
    if step == Step.PUSH:
        if member.state.failed:  # resume: a new session for the rest, after saying why
            owed = impl.rest(member)
            if owed:  # (none: it failed after its last item; submit says so and ends it)
                why = member.failure.said() if member.failure else member.state.value
                say(f"session {member.session} of run {member.run_id} ended "
                    f"{member.state.value} ({why}); pushing a new session for the "
                    f"{kinds.of(member.kind).count(len(owed))} not here yet")
                member.failures.append(_signature(member))
                runs.save(member)
        return impl.submit(member, say)
    if step == Step.RESOLVE:
        return impl.resolve(member, say)
    if step == Step.CANCEL:
        return impl.cancel(member, say)
    if step == Step.FETCH:
        say(f"bringing the outputs of run {member.run_id} into {member.out_dir}")
        return impl.fetch(member, say)
    if step == Step.KEEP:
        say(f"run {member.run_id} {member.state.value}; bringing home what it finished")
        raise failure_error(impl.fetch(member, say))
    raise AssertionError(step)


def _signature(member: Run) -> str:
    """What makes two failures of a run the same failure (numbers aside)."""
    return member.failure.signature() if member.failure else member.state.value


def _sum_up(parent: Run, shards: list[Run]) -> Run:
    parent.state = summary([s.state for s in shards])
    parent.images_fetched = sum(s.images_fetched for s in shards)
    parent.url = next((s.url for s in shards if s.url), None)
    hours = [s.engine_hours for s in shards if s.engine_hours is not None]
    parent.engine_hours = round(sum(hours), 4) if hours else None
    failed = next((s for s in shards if s.failure is not None and s.state.failed), None)
    parent.failure = failed.failure if failed else None
    return runs.save(parent)


def _verdict(run: Run, group: _Group, command: str) -> Run:
    """The run's exit: what stopped a member this time first (5, 6...), then a failure,
    then a state with nothing to do yet, else done."""
    for exc in group.stops.values():
        raise exc
    if command == "cancel" and all(
            s.state in (RunState.CANCELLED, RunState.DOWNLOADED, RunState.PARTIAL)
            for s in group.members):
        return run  # stopped as asked (or done before it could be): what it made is here
    failed = [s for s in group.members if s.state.failed]
    if failed and group.sharded:
        names = ", ".join(f"shard {s.shard} ({s.state.value})" for s in failed)
        why = failed[0].failure.sentence() if failed[0].failure else failed[0].state.value
        again = (f"'imggenhub resume {run.run_id}' pushes the failed shards again, alone"
                 if any(s.state != RunState.PUSH_FAILED for s in failed) else
                 f"{_title(run)} refused the push itself: fix the cause and start a new run")
        message = f"Run {run.run_id}: {names} failed: {why}; the images made are in " \
                  f"{run.out_dir}; {again}"
        raise RunFailedError(message + ".", failed[0].failure, run.run_id)
    if failed and run.run_id in group.kept:
        raise failure_error(run)
    p = plan(command, run.state)
    if p.step is not None or p.exit == Exit.OK:
        return run
    if p.exit == Exit.RUN_FAILED:
        raise failure_error(run)
    sentence = p.sentence.format(state=run.state.value, run=run.run_id, failure="")
    raise NothingYet(f"Run {run.run_id} {sentence}.")


def _title(run: Run) -> str:
    return backends.get_backend(run.backend).title


def _check_home(impl: backends.Backend, run: Run, on_event: backends.OnEvent) -> Run:
    """A run downloaded before whose folder has lost or changed files since (sizes checked,
    not hashes), whatever its record says: a remote run's are fetched again (a sharded
    run's by the shards that made them); a local run's, which exist nowhere else, are taken
    out of the manifest and made again by resume (the same seeds), as a partial run's rest."""
    if run.state != RunState.DOWNLOADED:
        return run
    out = Path(run.out_dir)
    try:
        manifest = artifacts.read_manifest(out) if out.is_dir() else None
    except ImggenhubError:  # a damaged manifest: the fetch writes it again
        manifest = None
    records = (manifest or {}).get("images") or []
    lost = [r for r in records if artifacts.verify_image(out, r, hashed=False) is not None]
    if manifest is not None and not lost:
        return run
    count = (f"{len(lost)} of its files {'is' if len(lost) == 1 else 'are'}"
             if manifest is not None else "its manifest is")
    if not impl.remote:
        if manifest is None:  # nothing says what is here: everything is made again
            run.state, run.images_fetched = RunState.RENDERED, 0
        else:
            run.state, run.images_fetched = RunState.PARTIAL, _forget(out, manifest, lost)
        on_event(f"run {run.run_id}: {count} missing or changed in {out} since it was made "
                 f"here; 'imggenhub resume {run.run_id}' makes them again (the same seeds)")
        return runs.save(run)
    # each session keeps its outputs on Kaggle until the next one: a file of the latest
    # session of its run (or shard) is fetched again; an earlier session's is made again
    members = runs.shards_of(run) if run.shards else [run]
    lost_at = {r.get("index"): r for r in lost}
    unplaced = manifest is None or any(not isinstance(i, int) for i in lost_at)
    old = []
    for member in members:
        share = member.only
        mine = [i for i in lost_at if isinstance(i, int)
                and (share is None or any(a <= i < b for a, b in share))]
        newest = impl.fetchable(member)  # what the remote still holds (None: all of it)
        again = [i for i in mine if newest is not None and i not in newest]
        old += [lost_at[i] for i in again]
        if unplaced or len(mine) > len(again):
            member.state = RunState.COMPLETE
        elif again:
            member.state = RunState.PARTIAL
        if run.shards:
            runs.save(member)
    if old:
        _forget(out, manifest, old)
    fetched = "fetching them again" if len(old) < len(lost) or unplaced else ""
    remade = (f"{len(old)} of them {'was' if len(old) == 1 else 'were'} made by a session "
              f"whose outputs {impl.title} keeps no longer: 'imggenhub resume {run.run_id}' "
              "makes them again (the same seeds)") if old else ""
    on_event(f"run {run.run_id}: {count} missing or changed in {out} since it was downloaded; "
             + "; ".join(p for p in (fetched, remade) if p))
    run.state = summary([m.state for m in members]) if run.shards else members[0].state
    return runs.save(run)


def _forget(out: Path, manifest: dict, gone: list[dict]) -> int:
    """The folder's manifest without the records of ``gone`` (files to be made again);
    how many records it keeps."""
    names = {r["file"] for r in gone}
    kept = [r for r in manifest["images"] if r["file"] not in names]
    with artifacts.folder_lock(out):
        artifacts.write_manifest(out, {**manifest, "images": kept})
    return len(kept)


def _interrupted(impl: backends.Backend, run: Run, stop: BaseException) -> Interrupted:
    how, code = interruption(stop)
    if not impl.remote:
        if run.state == RunState.PARTIAL:
            said = (f"{how}; the {kinds.of(run.kind).count(run.images_fetched)} finished are in "
                    f"{run.out_dir}; 'imggenhub resume {run.run_id}' makes the rest.")
        else:
            said = (f"{how} before anything was finished; 'imggenhub resume {run.run_id}' runs "
                    "it again.")
    elif run.state in (RunState.PUSHING, RunState.PUSH_UNKNOWN, RunState.PUSHED, RunState.QUEUED,
                       RunState.RUNNING):
        where = f" ({run.url})" if run.url else ""
        said = (f"{how}; the {impl.title} run {run.run_id}{where} goes on and uses GPU quota; "
                f"'imggenhub resume {run.run_id}' picks it up.")
    else:
        said = f"{how} at state {run.state.value}; 'imggenhub resume {run.run_id}' picks it up."
    error = Interrupted(said)
    error.exit_code = code
    return error


def _move_output(impl: backends.Backend, run: Run, command: str, out: Path) -> Run:
    """--out on download: a new home for the images, checked and claimed, under the lock."""
    if str(out.resolve()) == run.out_dir:
        return run
    if run.shards:
        raise SpecError(f"Run {run.run_id} is sharded; its shards download into {run.out_dir}, "
                        "not elsewhere.")
    if plan(command, run.state).step not in (Step.FETCH, Step.KEEP):
        raise SpecError(f"Run {run.run_id} is {run.state.value}; --out applies only to a run whose "
                        f"images are still to be downloaded (they are in {run.out_dir}).")
    here = artifacts.read_manifest(Path(run.out_dir)) if Path(run.out_dir).is_dir() else None
    if not impl.remote and here is not None and here.get("run_id") == run.run_id:
        # a local run's images move out of its work folder once: some are in the old home
        raise SpecError(f"Some images of run {run.run_id} are in {run.out_dir} already; a local "
                        "run keeps one output folder (move it by hand, or free space there and "
                        f"run 'imggenhub download {run.run_id}' again).")
    artifacts.prepare_destination(out, run.run_id, run.job_id,
                                  lambda other: other != run.run_id and is_active(other))
    run.out_dir = str(out.resolve())
    return runs.save(run)


def is_active(run_id: str | None) -> bool:
    """A run that is recorded and not over (its output folder is still being filled)."""
    try:
        other = runs.load(run_id) if run_id else None
    except ImggenhubError:
        return False
    return other is not None and not other.state.terminal
