"""``imggenhub app``: the local web page over the same runs (the ``[app]`` extra)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .options import Json
from .output import STATE, result


def app(
    port: Annotated[int, typer.Option(min=1, max=65535, help="The port to listen on.")] = 7860,
    host: Annotated[str, typer.Option(
        help="The address to listen on (default: this machine only). Another needs --auth.")]
    = "127.0.0.1",
    auth: Annotated[Optional[str], typer.Option(
        envvar="IMGGENHUB_APP_AUTH", metavar="USER:PASSWORD",
        help="Ask for this user and password (required beyond 127.0.0.1; also "
             "IMGGENHUB_APP_AUTH).")] = None,
    open_browser: Annotated[bool, typer.Option(
        "--open/--no-open", help="Open the page in the default browser.")] = True,
    json: Json = False,
) -> None:
    """A web page to compose, inpaint, run, watch and browse runs (local, Kaggle,
    hf-jobs): the same runs as the commands. Ctrl-C stops it."""
    import importlib.util

    from ..errors import SpecError
    from ..webapp import check_listen, serve

    STATE["json"] = json
    credentials = check_listen(host, auth)
    if importlib.util.find_spec("gradio") is None:
        raise SpecError("The app needs Gradio: pip install '.[app]' (from the clone), or "
                        "bash scripts/setup.sh local,app.")
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    serve(host, port, credentials, open_browser, lambda: result(
        {"ok": True, "url": url, "auth": credentials is not None},
        f"imggenhub app on {url} (Ctrl-C stops it)", json))
