"""The backend protocol: the one door between the driver and where a run runs. The base
class does the bookkeeping every backend shares (rendering the notebook and keeping its
document, the next session's share, the output folder's lock and claim, verification,
timing, the record, the gallery); a backend implements the transfer itself."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Deadline, Tunables, tunables, writable_folder
from ..engine import Plan, made
from ..errors import (
    DamagedOutputError,
    LocalWriteError,
    SpecError,
    TransferError,
    UnsafeOutputError,
)
from ..job.notebook import CODE_FILE, with_document, write_notebook
from ..job.spec import JobSpec
from ..outputs import artifacts
from ..run import kinds, runs
from ..run.lifecycle import RunState
from ..run.runs import Run

OnEvent = Callable[[str], None]


@dataclass
class Fetched:
    """What a backend's transfer brought: the output folder's manifest as it now stands
    (parsed once, handed on), and the files whose sha256 is still to be checked (those
    that arrived unchecked, or None for all; every other file was checked when it
    arrived)."""

    manifest: dict | None
    unhashed: set[str] | None = field(default_factory=set)  # None: every file
    # files the manifest lists that the remote's output does not hold: fetching again
    # cannot bring them (one missing here is lost, not late)
    unlisted: set[str] = field(default_factory=set)


def take_output(run: Run, src: Path, out_dir: Path, here: dict | None, log: Path | None = None,
                shared: bool = False, remote: bool = False) -> dict | None:
    """An engine's output folder on this disk (``src``) into ``out_dir``: its images moved,
    then its records (its parts merged, if the engine was cut off) joined to ``here`` and
    written whole in one rename (a kill at any point leaves every listed image in place, and
    the source's manifest until its records are in), its log beside them. ``shared``: the
    folder is shared with other sessions or shards of the job, whose records ``here`` keeps;
    else only this run's own records there are kept. ``remote``: the folder came from a
    server: its manifest is validated as Kaggle's is (schema, safe names, this run's), and
    only the files it lists (and the log) are taken. Returns the folder's manifest."""
    import json
    import shutil

    from ..engine import LOG_FILE, MANIFEST, PARTS_DIR, merge_manifest

    if remote and (src / MANIFEST).is_file():  # the engine merged its parts: a copy of them
        shutil.rmtree(src / PARTS_DIR, ignore_errors=True)  # uploaded before is stale
    try:
        new = merge_manifest(src) if src.is_dir() else None  # parts an engine left unmerged
        if new is not None and remote:
            new = artifacts.parse_manifest(json.dumps(new), f"the outputs of run {run.run_id}")
    except UnsafeOutputError:
        raise
    except Exception as exc:  # a server's parts that do not parse: refused, nothing taken
        if not remote:
            raise
        raise UnsafeOutputError(f"The outputs of run {run.run_id} are not an imggenhub manifest "
                                f"({type(exc).__name__}); nothing was kept.") from None
    if new is not None and (new.get("job_id") not in (None, run.job_id) or
                            (remote and new.get("run_id") not in (None, run.run_id))):
        raise UnsafeOutputError(f"The outputs of run {run.run_id} carry another run's manifest "
                                f"({str(new.get('run_id') or new.get('job_id'))[:60]}); nothing "
                                "was kept.")
    listed = None
    if remote:  # what its own manifest lists, nothing else (no claim file, no stray dot-file)
        listed = {r["file"] for r in (new or {}).get("images") or []} | {
            b["file"] for b in (new or {}).get("bundles") or [] if isinstance(b, dict)
            and isinstance(b.get("file"), str)}
    if new is not None and here is not None and (shared or here.get("run_id") == run.run_id):
        new = artifacts.combine(here, new)
    artifacts.collect(src, out_dir, skip=frozenset({MANIFEST, *([log.name] if log else [])}),
                      only=listed)
    if new is not None:
        artifacts.write_manifest(out_dir, new)
        (src / MANIFEST).unlink(missing_ok=True)
    if log is not None and log.exists():
        shutil.copyfile(log, out_dir / LOG_FILE)
    return new if new is not None else here


def session_plan(run: Run) -> Plan | None:
    """The share of the job the run's latest notebook makes (None: no document kept)."""
    doc = runs.document(run)
    return kinds.of(run.kind).plan(doc) if doc else None


class Backend:
    """The one door between the driver and a backend."""

    name = ""
    title = ""  # how sentences name where the run runs
    remote = True  # the run goes on elsewhere when this process stops

    def __init__(self, settings: Tunables | None = None):
        self.tunables = settings or tunables()
        self.deadline = Deadline(self.tunables, None)

    def bound(self, seconds: float | None) -> None:
        """The time the next step may take, retries and lock waits included (None: no limit;
        a time already past: none)."""
        self.deadline = Deadline(self.tunables, None if seconds is None else max(0.0, seconds))

    # --- what a backend implements ---------------------------------------------------

    def prepare_job(self, job: JobSpec, options, on_event: OnEvent, width: int = 1):
        """Check and ship what every session of the job shares, once, before anything is
        pushed; return it for ``prepare``. ``options`` are the backend's own flags; ``width``
        the sessions the job is split over (``width``)."""
        return options

    def width(self, job: JobSpec, asked: int | None) -> int:
        """How many sessions the run is split over (shards; ``asked``: --shards, None for
        auto). One where the backend runs one at a time."""
        return 1

    def prepare(self, job: JobSpec, run: Run, prepared, on_event: OnEvent) -> None:
        """One session's notebook and what its submission needs, in ``run.notebook_dir``."""

    def submit(self, run: Run, on_event: OnEvent) -> Run:
        """Start the run (rendered -> ...). Raises NoFreeSlot when the backend runs as many
        sessions as it can: the driver pushes it again when one ends."""
        raise NotImplementedError

    def resolve(self, run: Run, on_event: OnEvent) -> Run:
        """A push was interrupted (pushing, push-unknown): find out whether it landed."""
        raise NotImplementedError

    def wait(self, members: list[Run], say_for: Callable[[Run], OnEvent]) -> list[Run]:
        """Follow the runs until one of them ends (or the deadline: StillRunning); return
        them updated."""
        raise NotImplementedError

    def close(self) -> None:
        """The command is over: let go of what the waits kept open."""

    def attach_previous(self, run: Run) -> str | None:
        """Let the next session of ``run`` see the output of the sessions before it (a
        training run continues from their newest checkpoint); return where it will find it
        (None: it cannot)."""
        return None

    def refresh(self, run: Run, on_event: OnEvent) -> Run:
        """One look at the run's state (the status command): a remote run still going asks
        the remote; the record is left to the command that owns it."""
        if self.remote and run.state in (RunState.PUSHED, RunState.QUEUED, RunState.RUNNING):
            self.bound(3 * self.tunables.http_timeout)
            state, _ = self.status(run, on_event)
            return run.model_copy(update={"state": state})
        return run

    def status(self, run: Run, on_event: OnEvent | None = None) -> tuple[RunState, str | None]:
        """A remote run's state now, and the remote's word on a failure."""
        raise NotImplementedError

    def fetchable(self, run: Run) -> set[int] | None:
        """The run's items whose files the remote still holds (None: all of them). Kaggle
        keeps the latest session's outputs only, until the next session replaces them."""
        latest = session_plan(run)
        return set(latest.indices) if latest is not None else None

    def clean(self, run: Run, on_event: OnEvent) -> list[str]:
        """Delete what the remote keeps of a run whose images are home; what was deleted."""
        raise SpecError(f"imggenhub keeps nothing of run {run.run_id} on {self.title} to clean "
                        "(a Kaggle kernel and its output are deleted on its page).")

    def cancel(self, run: Run, on_event: OnEvent) -> Run:
        """Ask the remote to stop the run; its end is then waited for as any other."""
        raise SpecError(f"{self.title} cannot cancel a run from here"
                        + (f"; stop it on its page ({run.url}), and imggenhub sees it cancelled"
                           if run.url else "") + ".")

    def estimate(self, job: JobSpec, options, on_event: OnEvent) -> str:
        """What the job would cost here, in a sentence; nothing is sent or started."""
        return f"the {self.name} backend runs it on this machine: no GPU hours or dollars counted"

    def health(self, on_event: OnEvent, timeout: float) -> dict:
        """What 'imggenhub doctor' finds, as fields, and ``lines`` for people."""
        return {"lines": []}

    def bring(self, run: Run, out_dir: Path, here: dict | None, on_event: OnEvent) -> Fetched:
        """Transfer the run's outputs (manifest, images, log) into ``out_dir``, joining its
        manifest to ``here``, the one there."""
        raise NotImplementedError

    # --- shared bookkeeping ----------------------------------------------------------

    def render(self, run: Run, job: JobSpec, document: dict) -> None:
        """The run's notebook, carrying ``document``, which the record keeps too."""
        write_notebook(run.notebook_dir, job, run.run_id, document)
        runs.keep_document(run, document)

    def rest(self, run: Run) -> Plan:
        """What the run still owes: its whole share (a shard's, or the job; not the last
        session's, so that an item lost from the folder since is owed again) less what its
        output folder holds."""
        doc = runs.document(run)
        return kinds.of(run.kind).plan({**doc, "only": run.only}).minus(
            artifacts.read_manifest(Path(run.out_dir)))

    def render_rest(self, run: Run, on_event: OnEvent) -> Run:
        """A session (or a local run) ended before the job did: the notebook again, making
        only the images that are not here (same indices, seeds and file names), as the next
        session."""
        kind, doc = kinds.of(run.kind), runs.document(run)
        rest = self.rest(run)
        if not rest:  # it failed after its last item: every one is here, nothing to push
            on_event(f"run {run.run_id}: all it was to make is here; nothing to push")
            run.state, run.failure = RunState.DOWNLOADED, None
            return runs.save(run)
        run.session += 1
        if kind.continues:  # it goes on from what the sessions before it left
            doc = kind.continue_from(doc, self.attach_previous(run))
        doc.update(only=rest.ranges(), session=run.session)
        path = run.notebook_dir / CODE_FILE
        path.write_text(with_document(path.read_text(encoding="utf-8"), doc), encoding="utf-8")
        runs.keep_document(run, doc)
        on_event(f"session {run.session} of run {run.run_id}: the {kind.count(len(rest))} "
                 "still to make")
        run.state, run.failure = RunState.RENDERED, None
        return runs.save(run)

    def fetch(self, run: Run, on_event: OnEvent) -> Run:
        """Bring the outputs home under the folder's lock, check them, save the record; a
        complete run becomes downloaded. The folder's manifest is parsed once, by the
        transfer, and handed on to the checks, the sheets, the gallery and ``fetched``."""
        t0 = time.monotonic()
        out_dir = Path(run.out_dir)
        problem = "it is a file" if out_dir.is_file() else writable_folder(out_dir)
        if problem:
            raise SpecError(f"The output folder {out_dir} cannot be used ({problem}); download "
                            "with --out DIR.")
        with artifacts.folder_lock(out_dir):
            here = artifacts.check_claim(out_dir, run.run_id, run.job_id)
            artifacts.sweep_partials(out_dir)
            try:
                got = self.bring(run, out_dir, here, on_event)
            except OSError as exc:  # the network's errors were turned into sentences already
                raise LocalWriteError(f"Could not write the outputs of run {run.run_id} into "
                                      f"{out_dir} ({exc.strerror or exc}); free space or choose "
                                      f"another folder, then run 'imggenhub download "
                                      f"{run.run_id}' again.") from None
            manifest = got.manifest
            planned = (manifest or {}).get("planned_images")
            share = Plan.whole(planned if isinstance(planned, int) else len(made(manifest)))
            share = share.only(run.only)  # a shard's share of the job
            own = set(share.indices)
            mine = manifest if run.only is None or not manifest else {  # a shard checks its own
                **manifest, "images": [r for r in manifest["images"] if r.get("index") in own]}
            problems = artifacts.check(out_dir, mine, got.unhashed) if manifest else []
            owed = share.minus(manifest)
            run.images_fetched = len(share) - len(owed) - len(problems)
            if manifest is not None and not problems and manifest.get("backend") != run.backend:
                manifest["backend"] = run.backend  # for the gallery's commands
                artifacts.write_manifest(out_dir, manifest)
            if manifest is not None:
                kinds.of(run.kind).views(out_dir, manifest, complete=not problems)
        run.timings["fetch"] = round(time.monotonic() - t0, 3)
        if problems:
            runs.save(run)
            damaged = [p for p in problems if not p.endswith(artifacts.MISSING)]
            if damaged:  # here, and unlike its record: fetching again brings the same file
                raise DamagedOutputError(f"The outputs in {out_dir} failed verification: "
                                         f"{damaged[0]}: the file is damaged and fetching again "
                                         "does not change it, so the run counts as failed; the "
                                         "files that matched are kept.")
            lost = [p for p in problems if p[:-len(artifacts.MISSING)].rstrip() in got.unlisted]
            if lost:  # the manifest lists it, the remote's output does not hold it
                raise DamagedOutputError(f"The outputs in {out_dir} failed verification: "
                                         f"{lost[0]}, and {self.title}'s output of run "
                                         f"{run.run_id} does not hold it, so fetching again cannot "
                                         "bring it; the run counts as failed; the files that "
                                         "matched are kept.")
            raise TransferError(f"The outputs in {out_dir} failed verification: {problems[0]}; run "
                                f"'imggenhub download {run.run_id}' again.")
        if run.state == RunState.COMPLETE:
            if manifest is None:
                runs.save(run)
                raise UnsafeOutputError(f"Run {run.run_id} ended complete but left no manifest.json; "
                                        "it did not run the imggenhub engine.")
            if owed:  # the session ended before the job did
                run.state = RunState.PARTIAL
                on_event(f"run {run.run_id}: {len(share) - len(owed)} of "
                         f"{kinds.of(run.kind).count(len(share))} are here; the rest needs "
                         f"another session ('imggenhub resume {run.run_id}' pushes it)")
            else:
                run.state = RunState.DOWNLOADED
        self.fetched(run, manifest, on_event)
        return runs.save(run)

    def fetched(self, run: Run, manifest: dict | None, on_event: OnEvent) -> None:
        """After a fetch, with the folder's manifest (a backend may learn from it)."""
