"""``--notify URL``: one message when a run ends (all home, some home and the rest owed,
failed, cancelled, refused over its cost), so a run left to cron says so instead of waiting
to be polled.

The URL decides the format: Slack's and Discord's incoming webhooks get the payload they
expect, an ntfy topic (``ntfy.sh``, a host named ``ntfy.*``) a plain-text POST with a
title, any other URL a JSON POST of the run's summary; ``ntfy+``, ``slack+`` or ``discord+``
before a URL asks for that format elsewhere (an ntfy server of one's own, Mattermost's
Slack-compatible webhooks). Each is tried a few times with backoff; one that cannot be delivered is said in
one line and never changes the command's exit code.

A URL's path and query are its secret (Slack's and Discord's tokens, an ntfy topic, a
webhook's key): only ``scheme://host/…`` is ever printed or put in the record. The run
keeps its URLs in a file of its own beside the record, readable by this user only, so that
the command that sees the run end (a later ``resume`` or ``download``, a cron line's) can
send the message; the file is removed once the message is sent."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .errors import SpecError
from .run.lifecycle import RunState

ENV = "IMGGENHUB_NOTIFY"  # URLs, separated by spaces or commas
FILE = "notify.json"  # in the run's folder, mode 0600
TRIES = 3
MAX_URL = 2000
DISCORD_HOSTS = {"discord.com", "discordapp.com", "ptb.discord.com", "canary.discord.com"}


@dataclass(frozen=True)
class Target:
    url: str  # as it is sent (an ntfy+ prefix taken off)
    kind: str  # webhook, ntfy, slack, discord

    @property
    def shown(self) -> str:
        return redact(self.url)


def redact(url: str) -> str:
    """``scheme://host[:port]/…``: never the path, query, fragment or credentials."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if _port(parts) else ""
    rest = "/…" if (parts.path not in ("", "/") or parts.query or parts.fragment) else ""
    return f"{parts.scheme}://{host}{port}{rest}"


def _port(parts) -> int | None:
    try:
        return parts.port
    except ValueError:
        return None


def target(url: str) -> Target:
    """One --notify URL, checked; a bad one is one sentence (shown without its secret)."""
    raw = url.strip()
    kind = None
    for prefix in ("ntfy", "slack", "discord"):  # an ntfy server of one's own; Mattermost...
        if raw.lower().startswith(prefix + "+"):
            raw, kind = raw[len(prefix) + 1:], prefix
    try:
        parts = urlsplit(raw)
    except ValueError:  # an unclosed [ipv6], say
        raise SpecError("--notify: a notification URL is http:// or https:// with a host "
                        "(this one does not parse).") from None
    if len(raw) > MAX_URL or any(not c.isprintable() or c.isspace() for c in raw) \
            or parts.scheme not in ("http", "https") or not parts.hostname \
            or (":" in parts.netloc.rsplit("@", 1)[-1].rsplit("]", 1)[-1] and not _port(parts)):
        shown = f" {redact(raw)}" if parts.scheme in ("http", "https") and parts.hostname else ""
        raise SpecError(f"--notify{shown}: a notification URL is http:// or https:// with a "
                        "host (ntfy+, slack+ or discord+ before it for that format elsewhere).")
    host = parts.hostname.lower()
    if kind is None:
        if host == "hooks.slack.com":
            kind = "slack"
        elif host in DISCORD_HOSTS and parts.path.startswith("/api/webhooks/"):
            kind = "discord"
        elif host == "ntfy.sh" or host.startswith("ntfy."):
            kind = "ntfy"
        else:
            kind = "webhook"
    return Target(raw, kind)


def targets(given: list[str] | None, lenient_env: bool = False, on_event=None) -> list[Target]:
    """The command's --notify URLs and IMGGENHUB_NOTIFY's, checked, each once. A bad one
    is one sentence (the variable named when it is the variable's); ``lenient_env``: a bad
    one of the variable's is said in a line and left out (a run's end is never lost to it)."""
    out = []
    for url in given or []:
        t = target(url)
        if t not in out:
            out.append(t)
    for url in [u for u in os.environ.get(ENV, "").replace(",", " ").split() if u]:
        try:
            t = target(url)
        except SpecError as exc:
            said = str(exc).replace("--notify", ENV, 1)
            if not lenient_env:
                raise SpecError(said) from None
            if on_event is not None:
                on_event(f"note: {said}")
            continue
        if t not in out:
            out.append(t)
    return out


# --- the run's own list -------------------------------------------------------------


def keep(run_folder: Path, found: list[Target]) -> None:
    """Add ``found`` to the run's list (a file only this user can read)."""
    if not found:
        return
    have = kept(run_folder)
    merged = have + [t for t in found if t not in have]
    if merged == have:
        return
    path = Path(run_folder) / FILE
    tmp = path.with_name(f".{FILE}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump([{"url": t.url, "kind": t.kind} for t in merged], handle)
    os.replace(tmp, path)


def kept(run_folder: Path) -> list[Target]:
    try:
        data = json.loads((Path(run_folder) / FILE).read_text(encoding="utf-8"))
        return [Target(str(d["url"]), str(d["kind"])) for d in data
                if d.get("kind") in ("webhook", "ntfy", "slack", "discord")]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return []


# --- the message --------------------------------------------------------------------


def summary(run, outcome: str, failure: str | None = None) -> dict:
    """What the message says: the run, its end, images made of planned, GPU time and cost,
    the failure's first line, where the images are."""
    timings = run.timings or {}
    return {
        "event": "run-ended", "run_id": run.run_id, "name": run.name, "outcome": outcome,
        "state": run.state.value, "backend": run.backend, "kind": run.kind,
        "images_made": run.images_fetched, "images_planned": run.image_count,
        "gpu_hours": run.engine_hours if run.engine_hours is not None else run.estimate_hours,
        "gpu_hours_measured": run.engine_hours is not None,
        "cost_usd": timings.get("billed_usd"),
        "failure": (failure or "").strip().splitlines()[0][:500] if failure else None,
        "out_dir": run.out_dir,
    }


def title(s: dict) -> str:
    what = {"done": "done", "partial": "partly done", "failed": "failed",
            "cancelled": "cancelled", "refused": "refused over its cost"}.get(s["outcome"],
                                                                            s["outcome"])
    return f"imggenhub: run {s['name'] or s['run_id']} {what}"


def text(s: dict) -> str:
    from .engine import counted

    lines = [f"{s['images_made']} of {counted(s['images_planned'], 'image')} made "
             f"({s['backend']}; run {s['run_id']}"
             + (f", {s['gpu_hours']:.2f} GPU h" if isinstance(s["gpu_hours"], (int, float)) else "")
             + (f", ${s['cost_usd']:.2f}" if isinstance(s["cost_usd"], (int, float)) else "")
             + ")"]
    if s["failure"]:
        lines.append(s["failure"])
    lines.append(f"in {s['out_dir']}")
    return "\n".join(lines)


def request(t: Target, s: dict) -> tuple[dict, bytes]:
    """The headers and body a target's kind expects."""
    if t.kind == "slack":
        body = {"text": f"*{title(s)}*\n{text(s)}"}
    elif t.kind == "discord":
        body = {"content": f"**{title(s)}**\n{text(s)}"[:2000],
                "allowed_mentions": {"parse": []}}  # a prompt's "@everyone" pings no one
    elif t.kind == "ntfy":
        return ({"Title": _header(title(s)), "Tags": "white_check_mark" if s["outcome"] == "done"
                 else "warning", "Content-Type": "text/plain; charset=utf-8"},
                text(s).encode("utf-8"))
    else:
        body = s
    return {"Content-Type": "application/json"}, json.dumps(body).encode("utf-8")


def _header(value: str) -> str:
    """A header value: printable ASCII only (ntfy reads RFC 2047 for the rest; kept simple)."""
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in value)[:200]


def send(found: list[Target], s: dict, on_event, tunables) -> list[str]:
    """Send the message to each target (a few tries each, with backoff, while the answer is
    a server error, a refused rate or no answer); the ones not reached are said in one
    line each and returned (redacted)."""
    import requests

    missed = []
    for t in found:
        headers, body = request(t, s)
        wait, problem, tries = 1.0, None, 0
        while tries < TRIES:
            tries += 1
            try:
                answer = requests.post(t.url, data=body, headers=headers,
                                       timeout=min(tunables.http_timeout, 30.0),
                                       allow_redirects=False)
                problem = None if answer.status_code < 300 else f"HTTP {answer.status_code}"
                if answer.status_code < 500 and answer.status_code != 429:
                    break  # sent, or refused: another try would get the same answer
            except (requests.RequestException, ValueError, UnicodeError) as exc:
                problem = type(exc).__name__  # a host urllib3 cannot parse is a miss too
            if tries < TRIES:
                tunables.clock.sleep(min(wait, tunables.retry_max_wait))
                wait *= 2
        if problem is None:
            on_event(f"notified {t.shown}")
        else:
            on_event(f"note: could not notify {t.shown} ({problem}, {tries} "
                     f"tr{'y' if tries == 1 else 'ies'}); the run is as it was")
            missed.append(t.shown)
    return missed


OUTCOMES = {RunState.DOWNLOADED: "done", RunState.PARTIAL: "partial",
            RunState.CANCELLED: "cancelled", RunState.ERROR: "failed",
            RunState.PUSH_FAILED: "failed"}


def _mark(run, outcome: str) -> str:
    """What makes two ends the same end: the outcome and the sessions of the run (each
    shard's); for ``done``, the pictures home too (a run made whole again is said again)."""
    from .run import runs

    members = runs.shards_of(run) if run.shards else [run]
    sessions = ",".join(str(m.session) for m in members)
    return f"{outcome}:{sessions}" + (f":{run.images_fetched}" if outcome == "done" else "")


def ended(run, error: BaseException | None, on_event, tunables) -> None:
    """After a command on a run: if it ended (all home, partly home, failed, cancelled, or
    refused over its cost), the message to the run's list and IMGGENHUB_NOTIFY's, once per
    end (a run that ends again after a resume says so again). Never raises: a message that
    cannot be made or sent is one line, and the command's outcome stands."""
    try:
        _ended(run, error, on_event, tunables)
    except Exception as exc:  # noqa: BLE001 - a notification never changes the command's end
        on_event(f"note: the notification of run {run.run_id}'s end failed "
                 f"({type(exc).__name__}); the run is as it was")


def _ended(run, error, on_event, tunables) -> None:
    from .errors import OverQuota, RunFailedError

    if isinstance(error, OverQuota):
        outcome = "refused"
    elif error is None or isinstance(error, RunFailedError):
        outcome = OUTCOMES.get(run.state)
        if outcome is None or (error is None and outcome == "failed"):
            return
    else:
        return
    path = Path(run.folder) / FILE
    mark = _mark(run, outcome)
    if (run.timings or {}).get("notified") == mark:
        if outcome == "done":
            path.unlink(missing_ok=True)  # said already: its URLs are needed here no more
        return
    found = kept(run.folder)
    found += [t for t in targets(None, lenient_env=True, on_event=on_event) if t not in found]
    if not found:
        return
    missed = send(found, summary(run, outcome, str(error) if error else None), on_event,
                  tunables)
    from .run import runs

    fresh = runs.reload(run)
    fresh.timings["notified"] = mark
    fresh.timings["notify_missed"] = missed
    runs.save(fresh)
    if not missed and outcome == "done":
        path.unlink(missing_ok=True)  # the run is over: its URLs are needed here no more


def refused(run, error: BaseException, given: list[Target], on_event, tunables) -> None:
    """A run refused before it was recorded (its estimate over the quota or --max-cost):
    the message says so, with the sentence. Never raises."""
    try:
        found = given + [t for t in targets(None, lenient_env=True, on_event=on_event)
                         if t not in given]
        if found:
            send(found, summary(run, "refused", str(error)), on_event, tunables)
    except Exception as exc:  # noqa: BLE001 - the refusal is the command's end, not this
        on_event(f"note: the notification of the refusal failed ({type(exc).__name__})")
