"""What the test emulators (`tests.kaggle_emulator`, `tests.hub_emulator`) share: their HTTP
server, and their command-line life (start, print the ready line, serve until SIGTERM or
Ctrl-C, stop; one sentence and exit 2 when the address cannot be had)."""

from __future__ import annotations

import errno
import signal
import sys
import threading
from http.server import ThreadingHTTPServer
from typing import Callable


def listen(emulator, handler: type, host: str, port: int, name: str):
    """A threaded HTTP server for ``emulator`` (its handler class sees it as ``emulator``),
    serving from a daemon thread; returns (server, its URL)."""

    class Handler(handler):
        pass

    Handler.emulator = emulator
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
                     name=name).start()
    host, port = server.server_address[:2]
    return server, f"http://{host}:{port}"


class Served:
    """An emulator's HTTP side: ``start`` on a port (0: any free one) returns its URL, which
    ``url`` keeps after ``close_server`` (so a test can aim at the now-closed port)."""

    server: ThreadingHTTPServer | None = None
    _url: str | None = None
    thread_name = "emulator"

    def handler(self) -> type:
        raise NotImplementedError

    def start(self, port: int = 0, host: str = "127.0.0.1") -> str:
        self.server, self._url = listen(self, self.handler(), host, port, self.thread_name)
        return self._url

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the emulator has not been started")
        return self._url

    def close_server(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def serve(start: Callable[[int, str], str], stop: Callable[[], None], host: str, port: int,
          ready: Callable[[str], str]) -> int:
    try:
        url = start(port, host)
    except OSError as exc:
        stop()
        if exc.errno == errno.EADDRINUSE:
            print(f"Port {port} on {host} is in use; pick another --port.", file=sys.stderr, flush=True)
        else:
            print(f"Cannot listen on {host}:{port}: {exc.strerror or exc}; pick another "
                  "--host or --port.", file=sys.stderr, flush=True)
        return 2
    stopping = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
    print(ready(url), flush=True)
    try:
        while not stopping.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop()
    return 0
