"""How the CLI shows progress: on a terminal, a live line (kernel state, images k/n,
elapsed, ETA); elsewhere (cron, pipes, logs) one line per event with an ISO timestamp
and no ANSI codes. Results go to stdout (one JSON object with --json); everything
else goes to stderr. Each message is shown with its control characters made visible
(``text.printable``): a progress line may carry a notebook's or Kaggle's text."""

from __future__ import annotations

import re
import sys
import time
from datetime import datetime, timezone

from .text import printable

IMAGE = re.compile(r"image (\d+)/(\d+)")
STATE = re.compile(r"^(queued|running|complete|error|cancelled|pushed) after")


def stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class LineReporter:
    """One timestamped line per event: what a cron log should hold."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr

    def __call__(self, message: str) -> None:
        self.stream.write(f"{stamp()} imggenhub: {printable(message)}\n")
        self.stream.flush()

    def close(self) -> None:
        pass

    def say(self, message: str) -> None:
        self(message)


class LiveReporter:
    """A rich status line on a terminal, with the events printed above it."""

    def __init__(self):
        from rich.console import Console
        from rich.live import Live

        self.console = Console(stderr=True)
        self.started = time.monotonic()
        self.state, self.done, self.total = "starting", 0, 0
        self.live = Live(console=self.console, refresh_per_second=4, transient=True,
                         get_renderable=self._render)  # elapsed and ETA tick between events
        self.live.start()

    def _render(self):
        from rich.text import Text

        elapsed = time.monotonic() - self.started
        line = f"{self.state}  images {self.done}/{self.total or '?'}  elapsed {elapsed:.0f}s"
        if self.done and self.total and self.done < self.total:
            eta = elapsed / self.done * (self.total - self.done)
            line += f"  ETA {eta:.0f}s"
        return Text(line, style="bold")

    def __call__(self, message: str) -> None:
        message = printable(message)
        m = IMAGE.search(message)
        if m:
            self.done, self.total = int(m.group(1)), int(m.group(2))
            self.state = "running"
            return  # the live line shows it: no wall of image lines
        s = STATE.match(message)
        if s:
            self.state = s.group(1)
        self.console.print(f"  {message}", markup=False, highlight=False)

    def say(self, message: str) -> None:
        self.console.print(printable(message), markup=False, highlight=False)

    def close(self) -> None:
        self.live.stop()


def make_reporter():
    if sys.stderr.isatty():
        try:
            return LiveReporter()
        except Exception:  # no usable terminal after all
            pass
    return LineReporter()
