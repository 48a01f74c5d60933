"""The run lifecycle, written down once: the states a run can be in, the moves between
them, the exit codes, and what every command does in every state.

Everything else reads these tables: ``jobs.advance`` takes the next step a state calls
for when the command may take it; the lifecycle and exit-code tables in docs/lifecycle.md
are generated from them (scripts/doc_tables.py; a test checks that they are); the CLI
turns an outcome into one sentence and one code.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum


class Exit(IntEnum):
    """The exit codes a script can trust."""

    OK = 0
    RUN_FAILED = 1
    BAD_INPUT = 2
    STILL_RUNNING = 3
    NO_CREDENTIALS = 4
    UNREACHABLE = 5
    NOTHING_YET = 6
    OVER_QUOTA = 7
    HANGUP = 129
    INTERRUPTED = 130
    TERMINATED = 143


EXIT_MEANINGS = {
    Exit.OK: "done",
    Exit.RUN_FAILED: "the run failed on Kaggle or here (its error and log tail are printed; "
                     "the images it finished are kept)",
    Exit.BAD_INPUT: "bad input: prompts, flags, files, run ids (nothing was pushed)",
    Exit.STILL_RUNNING: "still running at --timeout; the run goes on (run the same command again)",
    Exit.NO_CREDENTIALS: "no Kaggle credentials, or Kaggle rejected them",
    Exit.UNREACHABLE: "Kaggle could not be reached or kept failing; the run, if any, goes on "
                      "(try again later); for `score`, the Hugging Face Hub, with the model "
                      "not cached",
    Exit.NOTHING_YET: "nothing to do yet: the run is not at a state this command acts on, or "
                      "another imggenhub process is working on it",
    Exit.OVER_QUOTA: "the job's estimated GPU hours exceed what is left of this week's Kaggle "
                     "quota (both are said; nothing was pushed; --force pushes anyway)",
    Exit.HANGUP: "stopped by SIGHUP (the terminal closed): as Ctrl-C",
    Exit.INTERRUPTED: "interrupted (Ctrl-C); a remote run goes on, and the exact command that "
                      "picks it up is printed; a local engine is stopped, its finished images "
                      "kept",
    Exit.TERMINATED: "stopped by SIGTERM (`timeout`, systemd, a shutdown): as Ctrl-C",
}


class RunState(str, Enum):
    RENDERED = "rendered"          # the notebook is written; nothing was sent
    PUSHING = "pushing"            # a push is in flight (a record left here was killed mid-push)
    PUSH_UNKNOWN = "push-unknown"  # the connection broke during the push: it may have landed
    PUSH_FAILED = "push-failed"    # Kaggle refused the push (its reason is the failure)
    PUSHED = "pushed"              # Kaggle made version N; no status seen yet
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETE = "complete"
    ERROR = "error"
    CANCELLED = "cancelled"
    DOWNLOADED = "downloaded"      # complete, and every image is here, verified
    PARTIAL = "partial"            # a session's images are here; the rest needs another session

    @property
    def terminal(self) -> bool:
        """The remote run is over (whatever is left is local work)."""
        return self in TERMINAL

    @property
    def failed(self) -> bool:
        return self in FAILED


S = RunState
TERMINAL = frozenset({S.COMPLETE, S.ERROR, S.CANCELLED, S.DOWNLOADED, S.PUSH_FAILED})
FAILED = frozenset({S.ERROR, S.CANCELLED, S.PUSH_FAILED})
# a push from these states makes only what is not here yet (the next session of the run)
PUSH_REST = frozenset({S.PARTIAL, S.ERROR, S.CANCELLED})

# Every move a run may make. A save that breaks this table is a bug, not a user error.
TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    S.RENDERED: frozenset({S.PUSHING, S.RUNNING}),  # RUNNING: the local backend runs it here
    # the rest, rendered as a new notebook; or none left (a session cut off after its last
    # image): downloaded
    S.PARTIAL: frozenset({S.RENDERED, S.DOWNLOADED}),
    S.PUSHING: frozenset({S.PUSHED, S.PUSH_UNKNOWN, S.PUSH_FAILED, S.RENDERED}),
    S.PUSH_UNKNOWN: frozenset({S.PUSHED, S.RENDERED, S.PUSHING}),
    S.PUSH_FAILED: frozenset(),
    S.PUSHED: frozenset({S.QUEUED, S.RUNNING, S.COMPLETE, S.ERROR, S.CANCELLED}),
    S.QUEUED: frozenset({S.RUNNING, S.COMPLETE, S.ERROR, S.CANCELLED}),
    # RENDERED, PARTIAL: a local run interrupted here, before or after its first images
    S.RUNNING: frozenset({S.QUEUED, S.COMPLETE, S.ERROR, S.CANCELLED, S.RENDERED, S.PARTIAL}),
    S.COMPLETE: frozenset({S.DOWNLOADED, S.PARTIAL}),
    # a failed shard, its images home, is pushed again by resume (or, had it made every
    # image before it failed, is done)
    S.ERROR: frozenset({S.RENDERED, S.DOWNLOADED}),
    S.CANCELLED: frozenset({S.RENDERED, S.DOWNLOADED}),
    # its folder lost files since: a remote run's are fetched again; a local run's made
    # again (partial: the rest; rendered: all of it, its manifest lost too)
    S.DOWNLOADED: frozenset({S.COMPLETE, S.PARTIAL, S.RENDERED}),
}


def allowed(old: RunState, new: RunState) -> bool:
    return old == new or new in TRANSITIONS[old]


def summary(states: list[RunState]) -> RunState:
    """A sharded run's state, from its shards' states."""
    if all(s == S.DOWNLOADED for s in states):
        return S.DOWNLOADED
    if all(s.terminal or s == S.PARTIAL for s in states):  # DOWNLOADED is terminal
        for bad in (S.PUSH_FAILED, S.ERROR, S.CANCELLED):
            if bad in states:
                return bad
        if S.PARTIAL in states:
            return S.PARTIAL
        return S.COMPLETE
    for state in (S.RUNNING, S.QUEUED, S.PUSHED, S.PUSH_UNKNOWN,
                  S.PUSHING):
        if state in states:
            return state
    return S.RENDERED


class Step(str, Enum):
    """What a run in a state needs next."""

    PUSH = "push"          # send it (Kaggle: SaveKernel; local: run the notebook here)
    RESOLVE = "resolve"    # ask Kaggle whether an interrupted push landed
    WAIT = "wait"          # follow the remote run to its end
    FETCH = "fetch"        # bring the images home, verified
    KEEP = "keep"          # a failed run: bring home what it finished, then report the failure
    CANCEL = "cancel"      # stop the remote run (Hugging Face Jobs); what it made is kept
    DONE = "done"          # nothing left to do
    FAIL = "fail"          # the run failed and nothing is left to bring home


NEXT_STEP: dict[RunState, Step] = {
    S.RENDERED: Step.PUSH, S.PUSHING: Step.RESOLVE, S.PUSH_UNKNOWN: Step.RESOLVE,
    S.PUSH_FAILED: Step.FAIL, S.PUSHED: Step.WAIT, S.QUEUED: Step.WAIT, S.RUNNING: Step.WAIT,
    S.COMPLETE: Step.FETCH, S.ERROR: Step.KEEP, S.CANCELLED: Step.KEEP, S.DOWNLOADED: Step.DONE,
    S.PARTIAL: Step.PUSH,
}


@dataclass(frozen=True)
class Command:
    """A command as the lifecycle sees it: the steps it may take, and the states at which
    its work is done."""

    name: str
    steps: frozenset[Step]
    goal: frozenset[RunState]


_PUSHED = frozenset({S.PUSHED, S.QUEUED, S.RUNNING, S.COMPLETE, S.DOWNLOADED})
# what a command does where it differs from what the state needs next
ACTS: dict[str, dict[RunState, Step]] = {
    "cancel": {S.PUSHED: Step.CANCEL, S.QUEUED: Step.CANCEL, S.RUNNING: Step.CANCEL},
}
COMMANDS: dict[str, Command] = {c.name: c for c in [
    Command("deploy", frozenset({Step.PUSH, Step.RESOLVE}), _PUSHED),
    Command("poll", frozenset({Step.RESOLVE, Step.WAIT}), frozenset({S.COMPLETE, S.DOWNLOADED})),
    Command("download", frozenset({Step.FETCH, Step.KEEP}), frozenset({S.DOWNLOADED})),
    Command("resume", frozenset(Step) - {Step.CANCEL}, frozenset({S.DOWNLOADED})),
    Command("generate", frozenset(Step) - {Step.CANCEL}, frozenset({S.DOWNLOADED})),
    # a run that is not running has nothing to cancel; what a cancelled (or already
    # complete) session made comes home
    Command("cancel", frozenset({Step.RESOLVE, Step.CANCEL, Step.WAIT, Step.KEEP, Step.FETCH}),
            frozenset({S.RENDERED, S.PARTIAL, S.DOWNLOADED, S.PUSH_FAILED})),
]}

# What to run next, by the step a state needs (for the sentences).
NEXT_COMMAND = {Step.PUSH: "resume", Step.RESOLVE: "resume", Step.WAIT: "poll",
                Step.FETCH: "download", Step.KEEP: "download"}


@dataclass(frozen=True)
class Plan:
    """What a command does with a run in a state: take ``step``, or stop with ``exit``."""

    step: Step | None
    exit: Exit
    sentence: str


def plan(command: str, state: RunState) -> Plan:
    """The one place that decides what ``command`` does with a run in ``state``."""
    cmd = COMMANDS[command]
    need = ACTS.get(command, {}).get(state, NEXT_STEP[state])
    if state in cmd.goal:
        return Plan(None, Exit.OK, "is already {state}; nothing to do")
    if need == Step.FAIL:
        return Plan(None, Exit.RUN_FAILED, "failed: {failure}")
    if need in cmd.steps:
        return Plan(need, Exit.OK, need.value)
    if state.failed:  # a failed run: say so, whatever else the command could have done
        return Plan(None, Exit.RUN_FAILED, "{state}: {failure}")
    return Plan(None, Exit.NOTHING_YET,
                f"is {{state}}, so there is nothing to {command} yet; "
                f"'imggenhub {NEXT_COMMAND[need]} {{run}}' takes it on")


def pushes_again(command: str, state: RunState) -> bool:
    """A failed run (or shard), what it finished brought home: ``resume`` pushes a new
    session for the rest (Kaggle's refusal of the push itself excepted: the same push is
    refused again). The driver stops a run that failed the same way twice (--force)."""
    return command == "resume" and state in (S.ERROR, S.CANCELLED)


def what_it_does(command: str, state: RunState) -> str:
    """What ``command`` does with a run in ``state``, in words (the docs' table, the app)."""
    p = plan(command, state)
    if p.step is None:
        return f"exit {int(p.exit)}"
    if p.step == Step.KEEP:
        return ("fetch what it kept, push the rest, go on" if pushes_again(command, state)
                else "fetch what it kept, exit 1")
    if p.step == Step.WAIT:
        return "wait: 0, 1, 3 or 5"
    if p.step == Step.CANCEL:
        return "cancel, wait, fetch what it kept, exit 0"
    return f"{p.step.value}, go on"


def table_markdown() -> str:
    """The command x state table for docs/lifecycle.md, generated from the rules above."""
    states = list(RunState)
    head = "| state | " + " | ".join(COMMANDS) + " | status, runs |"
    rule = "|" + "---|" * (len(COMMANDS) + 2)
    rows = [head, rule]
    for state in states:
        cells = [what_it_does(name, state) for name in COMMANDS]
        rows.append(f"| `{state.value}` | " + " | ".join(cells) + " | show, exit 0 (5: unreachable) |")
    return "\n".join(rows)


def exit_table_markdown() -> str:
    rows = ["| code | meaning |", "|---|---|"]
    rows += [f"| {int(code)} | {text} |" for code, text in EXIT_MEANINGS.items()]
    return "\n".join(rows)
