"""Live progress from a running kernel's log stream.

``GET {base}/v1/kernels/logs/stream/{owner}/{slug}?versionLabel=vN`` (the version in the
query: in the path it answers 404). While the session runs it answers Server-Sent Events,
``data: {stream_name, time, data}`` per log entry and a last ``data: END_OF_LOG``; after
the session, the stored log as a JSON array of the same objects. A reconnect replays from
the start, so entries already seen are skipped by count. This is what ``kaggle kernels
logs --follow`` (kaggle 2.2.5) reads.

A ``LogFollower`` reads the stream on a thread of its own, reconnecting with backoff when
it drops, and hands the engine's progress lines to the polling loop through a queue (only
that loop reports). Where the stream is not there (404, or it keeps failing) it gives up
and the loop falls back to the log of the output listing.

A line of the stream is read in time linear in its length and held only up to MAX_LINE
(1 MiB): a longer one (a server's line that never ends) is read past and dropped, and one
note says how long it was; a longer line of the kernel's output (over several entries) is
dropped without one (no progress line is that long). What the follower hands on is shown
by the reporter with its control characters made visible.
"""

from __future__ import annotations

import json
import queue
import re
import threading
import time

import requests

from ...engine import progress_message
from ...text import MAX_LINE, Dropped, Lines  # noqa: F401  (Dropped, Lines: read by the tests too)

END_OF_LOG = "END_OF_LOG"
MAX_FAILURES = 5  # reconnects in a row without a new entry, then the follower gives up
READ_SIZE = 512  # as requests' iter_lines: a body not sent in chunks still comes promptly
IMAGE_LINE = re.compile(r"^(?:\[rank (\d+)\] )?image (\d+)/(\d+) ")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 90:
        return f"{seconds}s"
    if seconds < 5400:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Images done over all processes, and the time left at the pace so far."""

    def __init__(self, total: int):
        self.total = total
        self.ranks: dict[int, int] = {}
        self.first: tuple[float, int] | None = None  # (when, images done) at the first image

    def line(self, message: str, when: float) -> str:
        match = IMAGE_LINE.match(message)
        if not match:
            return message
        self.ranks[int(match.group(1) or 0)] = int(match.group(2))
        done = sum(self.ranks.values())
        if self.first is None:
            self.first = (when, done)
            return f"{message}; {done}/{self.total} in all"
        made, spent = done - self.first[1], when - self.first[0]
        if made <= 0 or spent <= 0:
            return f"{message}; {done}/{self.total} in all"
        per_image = spent / made
        left = max(0, self.total - done) * per_image
        return (f"{message}; {done}/{self.total} in all, {per_image:.2f}s an image, about "
                f"{_duration(left)} left")




class LogFollower:
    """Follows the log stream of one kernel version on a daemon thread."""

    def __init__(self, backend, owner: str, slug: str, version: int, total: int):
        from kagglesdk.kaggle_env import KaggleEnv

        http = backend.client.http_client()
        http._init_session()
        base = http._endpoint if http._env == KaggleEnv.PROD else f"{http._endpoint}/api"
        self.url = f"{base}/v1/kernels/logs/stream/{owner}/{slug}"
        self.params = {"versionLabel": f"v{version}"}
        self.headers = {k: v for k, v in http._session.headers.items() if k != "Content-Type"}
        self.headers["Accept"] = "text/event-stream, */*"
        self.auth = http._session.auth
        self.timeout = (backend.tunables.http_timeout, max(60.0, backend.tunables.http_timeout))
        self.progress = Progress(total)
        self.messages: queue.Queue = queue.Queue()
        self.seen = 0  # entries handled; a reconnect replays them
        self.partial: dict[str, Lines] = {}  # per stream: a line not yet ended
        self.ended = threading.Event()  # END_OF_LOG, or the stored log: nothing more comes
        self.gave_up = threading.Event()
        self.reconnects = 0
        self._stop = threading.Event()
        self._response = None
        self._thread = threading.Thread(target=self._run, name="imggenhub-log-stream", daemon=True)

    def start(self) -> "LogFollower":
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        response = self._response
        if response is not None:
            response.close()

    def finish(self, timeout: float) -> None:
        """The session is over: wait (bounded) for the stream to deliver its end."""
        self.ended.wait(timeout)
        self.close()

    def take(self, timeout: float) -> list[str]:
        """The progress messages that arrive within ``timeout`` (returns at the first ones)."""
        out = []
        try:
            out.append(self.messages.get(timeout=max(0.0, timeout)))
            while True:
                out.append(self.messages.get_nowait())
        except queue.Empty:
            return out

    # --- the thread ----------------------------------------------------------------

    def _run(self) -> None:
        with requests.Session() as session:
            self._loop(session)

    def _loop(self, session) -> None:
        failures, pause = 0, 0.5
        while not self._stop.is_set() and not self.ended.is_set():
            before = self.seen
            try:
                self._follow(session)
            except requests.HTTPError as exc:
                status = getattr(exc.response, "status_code", None)
                if status is not None and status < 500 and status != 429:
                    self.gave_up.set()  # no stream here (404), or not ours: the poller falls back
                    return
                failures += 1
            except (requests.RequestException, ValueError, OSError):
                failures += 1
            if self.ended.is_set() or self._stop.is_set():
                return
            failures = 0 if self.seen > before else failures
            if failures >= MAX_FAILURES:
                self.gave_up.set()
                return
            self.reconnects += 1
            self._stop.wait(pause)
            pause = min(10.0, pause * 2) if self.seen == before else 0.5

    def _follow(self, session) -> None:
        response = session.get(self.url, params=self.params, headers=self.headers, auth=self.auth,
                               stream=True, timeout=self.timeout)
        self._response = response
        try:
            if self._stop.is_set():  # closed while connecting
                return
            response.raise_for_status()
            if (response.headers.get("Content-Type") or "").lower().startswith("text/event-stream"):
                for index, line in enumerate(self._events(response)):
                    if self._stop.is_set():
                        return
                    if line is END_OF_LOG:
                        self._flush()
                        self.ended.set()
                        return
                    if index >= self.seen:
                        self.seen = index + 1
                        self._entry(line)
                raise requests.ConnectionError("the log stream ended without END_OF_LOG")
            entries = json.loads(response.text)  # the session is over: the stored log
            for entry in (entries if isinstance(entries, list) else [])[self.seen:]:
                self.seen += 1
                self._entry(entry)
            self._flush()
            self.ended.set()
        finally:
            self._response = None
            response.close()

    @staticmethod
    def _events(response):
        """The stream's events: each ``data:`` line's entry, END_OF_LOG, or ``Dropped`` for a
        line over MAX_LINE bytes (an event too, so that a replay counts it alike)."""
        lines = Lines(MAX_LINE)
        for chunk in response.iter_content(chunk_size=READ_SIZE):
            for line in lines.feed(chunk):
                if isinstance(line, Dropped):
                    yield line
                    continue
                raw = line.removesuffix(b"\r").decode("utf-8", "replace")  # SSE is UTF-8
                if not raw.startswith("data:"):
                    continue
                payload = raw[len("data:"):].lstrip()
                if payload == END_OF_LOG:
                    yield END_OF_LOG
                    return
                try:
                    yield json.loads(payload)
                except ValueError:
                    yield {"data": payload}

    def _entry(self, entry) -> None:
        if isinstance(entry, Dropped):
            self.messages.put(f"note: the log stream sent a line of {int(entry)} bytes; lines "
                              f"over {MAX_LINE >> 20} MiB are dropped")
            return
        if not isinstance(entry, dict) or not isinstance(entry.get("data"), str):
            return
        stream = str(entry.get("stream_name", "stdout"))
        when = entry.get("time")
        when = float(when) if isinstance(when, (int, float)) else time.time()
        for line in self.partial.setdefault(stream, Lines(MAX_LINE)).feed(entry["data"]):
            if not isinstance(line, Dropped):  # no progress line is that long
                self._line(line.rstrip("\r"), when)

    def _flush(self) -> None:
        for lines in self.partial.values():
            rest = lines.rest()
            if rest:
                self._line(rest, time.time())
        self.partial.clear()

    def _line(self, line: str, when: float) -> None:
        message = progress_message(line)
        if message is not None:
            self.messages.put(self.progress.line(message, when))
