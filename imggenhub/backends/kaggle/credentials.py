"""Kaggle credentials, found as the official client finds them, without importing it
(``import kaggle`` authenticates, prints and may exit at import time)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ...errors import CredentialsError


@dataclass(frozen=True)
class Credentials:
    source: str  # where it came from, for messages; never the secret
    username: str | None = None
    key: str | None = None
    token: str | None = None

    def __repr__(self) -> str:  # never print a secret
        return f"Credentials(source={self.source!r}, username={self.username!r})"


def _config_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        dirs.append(Path(os.environ["KAGGLE_CONFIG_DIR"]))
    home = Path.home()
    dirs += [home / ".kaggle", home / ".config" / "kaggle"]
    return dirs


def find_credentials() -> Credentials | None:
    """Token first (KAGGLE_API_TOKEN as value or file, ~/.kaggle/access_token), then
    kaggle.json, then KAGGLE_USERNAME/KAGGLE_KEY (which override the file's fields)."""
    env_token = os.environ.get("KAGGLE_API_TOKEN", "").strip()
    if env_token:
        path = Path(env_token).expanduser()
        try:
            is_file, in_a_folder = path.is_file(), os.sep in env_token and path.parent.is_dir()
        except OSError:  # too long a name for a path: a token
            is_file = in_a_folder = False
        if is_file:
            return Credentials("KAGGLE_API_TOKEN (file)", token=path.read_text().strip())
        if in_a_folder or env_token.startswith("~"):  # a path into a folder here, not a token
            raise CredentialsError(f"KAGGLE_API_TOKEN names the file {env_token}, which does not "
                                   "exist here; give the token itself or the path of its file.")
        return Credentials("KAGGLE_API_TOKEN", token=env_token)
    token_file = Path.home() / ".kaggle" / "access_token"
    if token_file.is_file() and token_file.read_text().strip():
        return Credentials(str(token_file), token=token_file.read_text().strip())
    username, key, source, broken = None, None, None, None
    for folder in _config_dirs():
        path = folder / "kaggle.json"
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                broken = broken or path
                continue
            if not isinstance(data, dict):
                broken = broken or path
                continue
            username, key, source = data.get("username"), data.get("key"), str(path)
            break
    if os.environ.get("KAGGLE_USERNAME"):
        username, source = os.environ["KAGGLE_USERNAME"], "KAGGLE_USERNAME/KAGGLE_KEY"
    if os.environ.get("KAGGLE_KEY"):
        key, source = os.environ["KAGGLE_KEY"], "KAGGLE_USERNAME/KAGGLE_KEY"
    if username and key:
        return Credentials(source, username=username, key=key)
    if broken is not None:
        raise CredentialsError(f"{broken} is not valid JSON; download kaggle.json again from your "
                               "Kaggle account page (or set KAGGLE_API_TOKEN).")
    return None


def looked_at() -> list[dict]:
    """Every place find_credentials reads, in its order, and what is there (never a secret):
    for 'imggenhub doctor'."""
    def variable(name: str) -> str:
        return "set" if os.environ.get(name, "").strip() else "not set"

    def file(path: Path) -> str:
        try:
            if not path.exists():
                return "no file"
            if not path.is_file():
                return "not a file"
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            return f"unreadable ({getattr(exc, 'strerror', None) or type(exc).__name__})"
        if path.name != "kaggle.json":
            return "found" if text.strip() else "empty"
        try:
            data = json.loads(text)
        except ValueError:
            return "not valid JSON"
        if not isinstance(data, dict):
            return "not a JSON object"
        missing = [k for k in ("username", "key") if not data.get(k)]
        return f"found, without {' and '.join(missing)}" if missing else "found"

    places = [{"where": "KAGGLE_API_TOKEN", "found": variable("KAGGLE_API_TOKEN")},
              {"where": str(Path.home() / ".kaggle" / "access_token"),
               "found": file(Path.home() / ".kaggle" / "access_token")}]
    places += [{"where": str(d / "kaggle.json"), "found": file(d / "kaggle.json")}
               for d in _config_dirs()]
    places += [{"where": name, "found": variable(name)} for name in ("KAGGLE_USERNAME", "KAGGLE_KEY")]
    return places


HOW_TO = ("No Kaggle credentials found: set KAGGLE_API_TOKEN (or save ~/.kaggle/kaggle.json from "
          "your Kaggle account page), or run on this machine with --backend local.")
