"""The app's work, apart from its page: a form becomes a job through the CLI's own builders
(the same checks, the same one-sentence errors), the job becomes a run through the same
library (``jobs.start`` then the driver, on a thread of its own), and runs are read from the
same run store, so that runs started here show in ``imggenhub runs`` and the CLI's and
cron's show here; the locks are the run store's. Uploaded pictures are checked (size,
pixels) and kept content-addressed in the app's folder; a drawn mask becomes a black and
white picture there. Nothing here reads or writes outside the runs' folders and that one."""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import state_dir
from ..errors import ImggenhubError, SpecError

MAX_UPLOAD_BYTES = 50 * 1024 * 1024  # a picture to redraw or a mask: never larger
SHOWN_LINES = 200  # a run's progress lines kept for the page


def uploads_dir() -> Path:
    path = state_dir() / "app" / "uploads"
    path.mkdir(parents=True, exist_ok=True)
    return path


def shown_dir() -> Path:
    """Where the page's pictures are linked from the runs' folders (by their content), so
    that the page serves this folder and the uploads only, wherever a run's folder is."""
    path = state_dir() / "app" / "shown"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _shown(path: Path, sha256: str | None) -> str:
    import os
    import shutil

    from ..engine import sha256_of

    digest = sha256 if isinstance(sha256, str) and len(sha256) == 64 and sha256.isalnum() \
        else sha256_of(path)
    suffix = path.suffix.lower() if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp") \
        else ".png"
    target = shown_dir() / f"{digest}{suffix}"
    if not target.exists():
        tmp = target.with_name(f".{target.name}.{threading.get_ident()}.tmp")
        try:
            os.link(path, tmp)
        except OSError:
            shutil.copyfile(path, tmp)
        tmp.replace(target)
    return str(target)


def keep_picture(path: str | Path) -> str:
    """An uploaded picture, checked (a picture, under the byte and pixel limits), kept as
    ``<sha256>.png`` in the app's uploads; its path there."""
    from PIL import Image

    from ..engine import PictureTooLarge, open_picture

    source = Path(path)
    try:
        if source.stat().st_size > MAX_UPLOAD_BYTES:
            raise SpecError(f"The picture is larger than {MAX_UPLOAD_BYTES >> 20} MiB; send a "
                            "smaller one.")
        with open_picture(source) as picture:
            picture = picture.convert("RGB")
    except PictureTooLarge as exc:
        raise SpecError(f"The picture {exc.reason}; send a smaller one.") from None
    except (OSError, Image.DecompressionBombError, ValueError, SyntaxError):
        raise SpecError("That file is not a picture imggenhub can read (PNG, JPEG, WebP...).") \
            from None
    return _store(picture)


def _store(picture) -> str:
    import io

    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    data = buffer.getvalue()
    target = uploads_dir() / f"{hashlib.sha256(data).hexdigest()}.png"
    if not target.exists():
        tmp = target.with_name(f".{target.name}.{threading.get_ident()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(target)
    return str(target)


def _drawn(layers):
    """Where anything was drawn on the editor's layers (RGBA arrays), or None."""
    import numpy as np

    drawn = None
    for layer in layers or []:
        if layer is None:
            continue
        array = np.asarray(layer)
        if array.ndim != 3 or array.shape[2] < 4:
            continue
        alpha = array[:, :, 3] > 0
        drawn = alpha if drawn is None else (drawn | alpha)
    return drawn if drawn is not None and drawn.any() else None


def mask_from_layers(layers, size: tuple[int, int]) -> str | None:
    """The strokes drawn over the picture (the editor's layers, RGBA arrays) as a mask:
    white where anything was drawn, black elsewhere, the picture's size; None when nothing
    was drawn."""
    import numpy as np
    from PIL import Image

    drawn = _drawn(layers)
    if drawn is None:
        return None
    mask = Image.fromarray(np.where(drawn, 255, 0).astype(np.uint8), mode="L")
    if mask.size != tuple(size):
        mask = mask.resize(tuple(size), Image.NEAREST)
    return _store(mask)


def describe_picture(value) -> str:
    """The editor's value in one line, as the page has it now: the picture's size and how
    much of it is painted to redraw (what Run will send)."""
    import numpy as np

    if not value or value.get("background") is None:
        return "No picture: the prompts are drawn from nothing."
    height, width = np.asarray(value["background"]).shape[:2]
    drawn = _drawn(value.get("layers"))
    if drawn is None:
        return (f"A {width} x {height} picture, nothing painted: all of it is redrawn "
                "(image to image, at the strength below).")
    return (f"A {width} x {height} picture, {drawn.mean():.0%} of it painted: that part is "
            "redrawn, the rest kept.")


@dataclass
class Form:
    """What the page sends: the CLI's flags, by the same names."""

    prompts: str = ""
    model: str = "tiny-shapes"
    negative_prompt: str = ""
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    num_images: int | None = 1
    scheduler: str = ""
    loras: str = ""  # one a line: REF[:SCALE], as --lora
    trained: list[str] = field(default_factory=list)  # names of the user's trained LoRAs
    sweeps: str = ""  # one a line, as --sweep
    init_image: str | None = None  # a kept picture (keep_picture)
    mask_image: str | None = None  # a kept mask (mask_from_layers)
    strength: float | None = None
    backend: str = "local"
    flavor: str = ""  # hf-jobs: the GPU flavor (default t4-small)
    notify: str = ""  # URLs, one a line or separated by spaces

    def lines(self, text: str) -> list[str]:
        return [line.strip() for line in (text or "").splitlines() if line.strip()]


def compose(form: Form):
    """The job the form asks for, built as the CLI builds it; bad input: SpecError, one
    sentence (the field named as its flag)."""
    from ..job.resolve import build_job
    from ..job.spec import parse_settings, prompts_from_flags

    prompts = form.lines(form.prompts)
    if not prompts:
        raise SpecError("Write a prompt (one a line).")
    local = form.backend == "local"
    settings = parse_settings(
        model=form.model.strip() or None, negative_prompt=form.negative_prompt.strip() or None,
        width=form.width, height=form.height, steps=form.steps,  # 0 is refused, as by the CLI
        guidance=form.guidance, seed=form.seed,
        num_images=1 if form.num_images is None else form.num_images,
        scheduler=form.scheduler.strip() or None,
        lora=[*form.lines(form.loras), *(t for t in form.trained if t)] or None,
        sweep=form.lines(form.sweeps) or None, init_image=form.init_image,
        mask_image=form.mask_image if form.init_image else None,
        strength=form.strength if form.init_image else None, gpu=not local or None)
    return build_job(settings, prompts_from_flags(prompts))


@dataclass
class Watch:
    """A run started here: its progress lines and its end, as the driver says them."""

    run_id: str
    lines: list = field(default_factory=list)
    done: bool = False
    error: str | None = None
    started: float = field(default_factory=time.monotonic)

    def say(self, message: str) -> None:
        from ..text import printable

        self.lines.append(printable(str(message)))
        del self.lines[:-SHOWN_LINES]


class Runner:
    """Runs started from the page, each followed on a thread of its own."""

    def __init__(self):
        self.watches: dict[str, Watch] = {}
        self.lock = threading.Lock()

    def submit(self, form: Form) -> Watch:
        """Start the run the form asks for (checked and recorded here: a refusal is raised
        before anything runs); the driver takes it on in the background."""
        from .. import notify
        from ..run import jobs

        if form.backend not in ("local", "kaggle", "hf-jobs"):
            raise SpecError(f"The backend {form.backend[:20]!r} is not one of local, kaggle, "
                            "hf-jobs.")
        job = compose(form)
        targets = notify.targets(form.lines(form.notify.replace(" ", "\n")))
        pending: list[str] = []
        run = jobs.start(job, form.backend, None, _options(form), pending.append,
                         notify=targets)
        watch = Watch(run.run_id)
        for line in pending:
            watch.say(line)
        with self.lock:
            self.watches[run.run_id] = watch
        return _on_thread(watch, lambda: jobs.advance(run, "generate", watch.say, notify=targets))

    def command(self, run_id: str, command: str) -> Watch:
        """``resume``, ``download`` or ``cancel`` a recorded run, as the commands do, on a
        thread; its lines and end go to a fresh watch of the run."""
        from ..run import jobs, runs

        if command not in ("resume", "download", "cancel"):
            raise SpecError(f"{command[:20]!r} is not resume, download or cancel.")
        run = runs.load(run_id)
        watch = Watch(run.run_id)
        with self.lock:
            busy = self.watches.get(run.run_id)
            if busy is not None and not busy.done:
                raise SpecError(f"Run {run.run_id} is being worked on from this page; wait "
                                "for it to end (its status says when).")
            self.watches[run.run_id] = watch

        if command == "cancel":
            return _on_thread(watch, lambda: jobs.cancel(run.run_id, watch.say))
        return _on_thread(watch, lambda: jobs.command_on(run.run_id, command, watch.say))

    def watch(self, run_id: str) -> Watch | None:
        with self.lock:
            return self.watches.get(run_id)


def _on_thread(watch: Watch, work) -> Watch:
    """``work()`` on a thread of its own; its end (an error's sentence) into ``watch``."""
    def run() -> None:
        try:
            work()
        except ImggenhubError as exc:
            watch.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - said on the page, never a dead thread
            watch.error = f"{type(exc).__name__}: {exc}"
        finally:
            watch.done = True

    threading.Thread(target=run, daemon=True, name=f"imggenhub-app-{watch.run_id}").start()
    return watch


def pace(lines: list[str]) -> str | None:
    """From the engine's last "image k/n ... (elapsed Ts)" line: pictures made of planned,
    the seconds a picture, and the time left at that pace (None before the first)."""
    import re

    for line in reversed(lines):
        found = re.search(r"image (\d+)/(\d+) .*\(elapsed ([\d.]+)s\)", line)
        if found:
            k, n, elapsed = int(found.group(1)), int(found.group(2)), float(found.group(3))
            each = elapsed / max(1, k)
            left = (n - k) * each
            return (f"{k} of {n} pictures, {each:.1f} s a picture, about "
                    f"{left / 60:.0f} min left" if left >= 90 else
                    f"{k} of {n} pictures, {each:.1f} s a picture, about {left:.0f} s left")
    return None


# which field of the form an error's sentence is about: the flag or label it names first
# (at one place, the longer name)
FIELD_WORDS = [("negative_prompt", ("--negative-prompt", "negative prompt")),
               ("num_images", ("--num-images", "Images per prompt")),
               ("strength", ("--strength",)), ("picture", ("--init-image", "--mask-image",
                                                           "picture")),
               ("width", ("--width", "Width ", " width")),
               ("height", ("--height", "Height ", " height")),
               ("steps", ("--steps", "Steps ", " steps")),
               ("guidance", ("--guidance", "Guidance ")),
               ("seed", ("--seed", "Seed ")), ("scheduler", ("--scheduler",)),
               ("loras", ("--lora", "LoRA")), ("sweeps", ("--sweep", "sweep")),
               ("notify", ("--notify", "IMGGENHUB_NOTIFY")), ("flavor", ("--flavor",)),
               ("model", ("--model",)), ("prompts", ("prompt",))]


def field_of(sentence: str) -> str | None:
    """The form's field an error's sentence names first (None: the job as a whole)."""
    found = [(at, -len(w), name) for name, words in FIELD_WORDS for w in words
             if (at := sentence.find(w)) >= 0]
    return min(found)[2] if found else None


def trained_loras() -> list[str]:
    """The names of the LoRAs ``imggenhub train`` made here whose weights are still here."""
    from ..run import trained

    return [e["name"] for e in trained.all_entries()
            if e.get("method") != "textual-inversion" and trained.find(e.get("name", ""))]


def _options(form: Form):
    from ..backends.kaggle.meta import KernelOptions

    return KernelOptions(gpu=form.backend != "local", flavor=form.flavor.strip() or None)


def estimate_of(form: Form) -> str:
    """What the job would cost on its backend (GPU hours and the quota left on Kaggle, time
    and dollars on a Hugging Face Jobs flavor), in the backend's own sentence; nothing is
    pushed or started."""
    from .. import backends

    if form.backend not in ("local", "kaggle", "hf-jobs"):
        raise SpecError(f"The backend {form.backend[:20]!r} is not one of local, kaggle, "
                        "hf-jobs.")
    job = compose(form)
    said: list[str] = []
    sentence = backends.get_backend(form.backend).estimate(job, _options(form), said.append)
    return "\n".join([*said, sentence])


def run_rows() -> list[list]:
    """Every run of the store, newest first: id, name, backend, state, images, created."""
    from ..cli.output import shown_state
    from ..run import runs

    rows = []
    for run in sorted(runs.all_runs(), key=lambda r: r.created, reverse=True):
        if run.shard is not None:
            continue
        rows.append([run.run_id, run.name or "", run.backend, shown_state(run),
                     f"{run.images_fetched}/{run.image_count}",
                     time.strftime("%Y-%m-%d %H:%M", time.localtime(run.created))])
    return rows


ORDERS = {"order made": "index", "prompt": "prompt", "seed": "seed", "score": "score"}


def home(run_id: str, query: str = "", order: str = "order made") -> list[tuple[Path, dict]]:
    """A run's pictures that are home, with their manifest records: only files the manifest
    names, plain names inside the run's folder; those whose prompt, negative prompt, seed,
    model, scheduler or file name hold ``query``, sorted as gallery.html sorts (made, prompt,
    seed, or the best score first)."""
    from ..outputs import artifacts
    from ..run import runs

    try:
        run = runs.load(run_id)
    except ImggenhubError:
        return []
    folder = Path(run.out_dir)
    out = []
    for record in (artifacts.read_manifest(folder) or {}).get("images") or []:
        name = record.get("file")
        if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith("."):
            continue
        if (folder / name).is_file():
            out.append((folder / name, record))
    words = (query or "").strip().lower()
    if words:
        out = [(path, r) for path, r in out if words in " ".join(
            str(r.get(k) if r.get(k) is not None else "") for k in (
                "prompt", "negative_prompt", "seed", "model", "scheduler", "file")).lower()]
    key = ORDERS.get(order, "index")

    def rank(item):
        value, index = item[1].get(key), item[1].get("index")
        number = isinstance(value, (int, float)) and not isinstance(value, bool) \
            and value == value  # NaN is no number to sort by
        missing = value is None or (key == "score" and not number)
        if key == "score" and not missing:
            value = -value  # the best first
        # numbers before text (a manifest's seed may be either), each among its own kind
        return (missing, 0 if number else 1, value if number else str(value),
                index if isinstance(index, int) else 1 << 62)

    return out if key == "index" else sorted(out, key=rank)


def pictures(run_id: str, query: str = "", order: str = "order made") -> list[tuple[str, str]]:
    """A run's pictures that are home, as (their link in the shown folder, their prompt)."""
    return [(_shown(path, record.get("sha256")), str(record.get("prompt") or ""))
            for path, record in home(run_id, query, order)]


def settings_of(run_id: str, index: int, query: str = "", order: str = "order made") -> dict:
    """The manifest's record of the ``index``-th picture ``pictures`` gives (its settings)."""
    found = home(run_id, query, order)
    return found[index][1] if 0 <= index < len(found) else {}


def describe(run_id: str) -> str:
    """A run as ``status`` and ``show`` say it, in lines: its state, its pictures, its
    failure's sentence and the last lines of its log, and what ``resume`` would do."""
    from ..cli.output import shown_state
    from ..run import runs
    from ..run.lifecycle import what_it_does
    from ..text import printable

    try:
        run = runs.load(run_id)
    except ImggenhubError as exc:
        return str(exc)
    lines = [f"run {run.run_id}{' (' + run.name + ')' if run.name else ''}: "
             f"{shown_state(run)} on {run.backend}; {run.images_fetched} of {run.image_count} "
             f"pictures home, in {run.out_dir}"]
    if run.failure is not None:
        lines.append(f"failed: {run.failure.sentence()}")
        tail = run.failure.log_tail.strip().splitlines()[-8:]
        if tail:
            lines += ["its log ends with:", *tail]
    lines.append(f"resume: {what_it_does('resume', run.state)}")
    return printable("\n".join(lines))


def form_of(run_id: str) -> dict:
    """A recorded run's job as the form's fields, to run it again with changes."""
    from ..run import runs

    doc = runs.document(runs.load(run_id)) or {}
    items = doc.get("prompts") or [{}]
    first = items[0]
    prompts = list(dict.fromkeys(str(p.get("prompt") or "") for p in items if p.get("prompt")))
    loras = [f"{r.get('ref')}:{r.get('scale')}" for r in doc.get("loras") or [] if r.get("ref")]
    return {
        "prompts": "\n".join(prompts), "negative_prompt": first.get("negative_prompt") or "",
        "model": doc.get("model_name") or (doc.get("model") or {}).get("id") or "",
        "width": first.get("width"), "height": first.get("height"), "steps": first.get("steps"),
        "guidance": first.get("guidance"), "seed": doc.get("seed"),
        "num_images": first.get("num_images") or 1, "scheduler": doc.get("scheduler") or "",
        "loras": "\n".join(loras), "sweeps": "\n".join(doc.get("sweep") or []),
        "strength": first.get("strength"), "init_image": _again(first.get("init_image")),
    }


def _again(path) -> str | None:
    """The picture a run redrew, kept in the uploads as a new upload is (None: gone)."""
    if not isinstance(path, str) or not Path(path).is_file():
        return None
    try:
        return keep_picture(path)
    except SpecError:
        return None

