"""Following Kaggle kernels to their end: each version's status polled in turn (with the
one retry policy), the engine's progress shown as it streams in from the live logs (else,
every third poll, from the output listing's log), and a failed version's reason and log
tail recorded as a typed failure."""

from __future__ import annotations

from ...engine import ERROR_PREFIX, progress_message
from ...errors import KaggleApiError, StillRunning, Unreachable
from ...run import runs
from ...run.lifecycle import RunState
from ...run.runs import Failure, Run
from ..base import OnEvent, session_plan
from .download import log_text, output_page
from .logs import LogFollower


def record(backend, run: Run, state: RunState, failure: str | None) -> None:
    if state == run.state:
        return
    run.state = state
    if state.failed:
        tail = log_tail(backend, run)
        # the notebook's own exception, as the engine printed it, when there is one
        raised = [l[len(ERROR_PREFIX):] for l in tail.splitlines() if l.startswith(ERROR_PREFIX)]
        ename, _, evalue = (raised[-1].partition(": ") if raised else ("", "", ""))
        run.failure = Failure(kind="cancelled" if state == RunState.CANCELLED else "kernel",
                              ename=ename or "KernelError", evalue=failure or state.value,
                              cell_index=None, log_tail=tail)
        if raised:
            run.failure.evalue = f"{failure or state.value} ({ename}: {evalue})"
    runs.save(run)


def _progress(backend, run: Run, seen: set, on_event: OnEvent) -> None:
    try:
        page = output_page(backend, run, None, 1, None)
    except (Unreachable, KaggleApiError):
        return
    for line in log_text(page.log).splitlines():
        message = progress_message(line)
        if message is not None and line not in seen:
            seen.add(line)
            on_event(message)


def follow(backend, shards: list[Run], say_for, group: bool) -> list[Run]:
    """Poll runs' statuses in turn until one of them ends, or the deadline; return them
    updated. Progress streams in from each one's live log (else, every third poll, from
    its output listing's log); the end of a stream cuts a wait short."""
    clock = backend.tunables.clock
    start = clock.monotonic()
    interval = backend.tunables.poll_interval
    seen = {s.run_id: set() for s in shards}
    followers = backend._followers  # kept across calls: a new one would replay the whole log
    polls = 0
    while True:
        polls += 1
        ended = False
        for shard in shards:
            say = say_for(shard)
            state, failure = backend.status(shard, say)
            if state != shard.state:
                say(f"{state.value} after {clock.monotonic() - start:.0f}s")
            key = f"{shard.run_id}@v{shard.version}"
            follower = followers.get(key)
            if state == RunState.RUNNING and follower is None:
                owner, slug = backend._slug(shard)
                follower = followers[key] = LogFollower(
                    backend, owner, slug, shard.version, session_images(backend, shard)).start()
            streaming = follower is not None and not follower.gave_up.is_set()
            if state == RunState.RUNNING and not streaming and polls % 3 == 0:
                _progress(backend, shard, seen[shard.run_id], say)
            record(backend, shard, state, failure)
            if state.terminal:
                if streaming:
                    follower.finish(timeout=min(10.0, backend.tunables.http_timeout))
                    for message in follower.take(0):
                        say(message)
                if not streaming or not follower.ended.is_set():
                    _progress(backend, shard, seen[shard.run_id], say)
                ended = True
        if ended:
            return shards
        if backend.deadline.passed(after=interval):
            elapsed = clock.monotonic() - start
            if group:
                raise StillRunning(f"{len(shards)} shards are still going after "
                                   f"{elapsed:.0f}s; they go on, and 'imggenhub resume' "
                                   "picks them up.")
            one = shards[0]
            raise StillRunning(f"Run {one.run_id} is still {one.state.value} after "
                               f"{elapsed:.0f}s; it goes on, and 'imggenhub resume "
                               f"{one.run_id}' picks it up.")
        _pause_many(backend, interval, {s.run_id: (followers.get(f"{s.run_id}@v{s.version}"),
                                               say_for(s)) for s in shards})
        interval = min(backend.tunables.poll_max_interval,
                       max(backend.tunables.poll_interval, (clock.monotonic() - start) / 5))


def session_images(backend, run: Run) -> int:
    """How many images the version pushed last makes (a later session: only the rest)."""
    share = session_plan(run)
    return len(share) if share is not None else run.image_count


def _pause_many(backend, seconds: float, streams: dict) -> None:
    """Wait until the next poll, showing each shard's progress as it streams in; the end
    of any stream cuts the wait short."""
    clock = backend.tunables.clock
    # a stream that had ended already cuts nothing short (its run's status is awaited)
    live = [(f, say) for f, say in streams.values()
            if f is not None and not f.gave_up.is_set() and not f.ended.is_set()]
    if not live:
        clock.sleep(seconds)
        return
    until = clock.monotonic() + seconds
    while (left := until - clock.monotonic()) > 0 and not any(f.ended.is_set() for f, _ in live):
        for follower, say in live:
            for message in follower.take(min(left, 0.5) / len(live)):
                say(message)


def log_tail(backend, run: Run) -> str:
    try:
        text = log_text(output_page(backend, run, None, 1, None).log)
    except (Unreachable, KaggleApiError):
        return ""
    return "\n".join(text.strip().splitlines()[-20:])
