"""The command line: thin. Each command parses flags, calls one library function and
prints its result. One error boundary in ``main`` turns errors into one sentence and
an exit code; a traceback only with IMGGENHUB_DEBUG=1."""

from __future__ import annotations

import functools
import inspect
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

# Usage errors (bad flags). Newer typer carries its own copy of click, so find the base
# class through a public one rather than importing either click.
_CLICK_ERRORS = tuple(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")

from . import __version__
from .errors import CredentialsError, ImggenhubError, SpecError
from .lifecycle import Exit

app = typer.Typer(
    name="imggenhub", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Generate images in batch with Hugging Face diffusers on Kaggle's free GPUs, or here.")


_STATE = {"json": False, "reporter": None}


def _err(message: str) -> None:
    typer.echo(message, err=True)


def _reporter():
    """Progress for long commands: a live line on a terminal, timestamped lines elsewhere."""
    from .report import make_reporter

    _STATE["reporter"] = _STATE["reporter"] or make_reporter()
    return _STATE["reporter"]


def _close_reporter() -> None:
    if _STATE["reporter"] is not None:
        _STATE["reporter"].close()
        _STATE["reporter"] = None


def _result(data, human: str, as_json: bool) -> None:
    """The command's result: one JSON document on stdout with --json, else one line."""
    _close_reporter()
    if as_json:
        import json

        typer.echo(json.dumps(data, ensure_ascii=False))
    else:
        typer.echo(human)


def _run_data(run) -> dict:
    data = run.model_dump(mode="json", include={
        "run_id", "name", "backend", "state", "job_id", "kernel_ref", "version", "url",
        "image_count", "images_fetched", "out_dir", "failure", "session", "created"})
    if run.shards:
        from .runs import shards_of

        data["shards"] = [s.model_dump(mode="json", include={
            "run_id", "shard", "state", "kernel_ref", "version", "url", "image_count",
            "images_fetched", "session"}) for s in shards_of(run)]
    return {"ok": True, **data}


# --- the job-spec options, declared once and shared by every command that takes a job ---

_JOB_OPTIONS = {
    "prompt": (Optional[list[str]], typer.Option(
        "--prompt", "-p", metavar="TEXT",
        help="A prompt (repeatable); replaces the prompts file entirely.")),
    "prompts_file": (Path, typer.Option(
        "--prompts-file", help="JSON list of prompts (strings or objects with overrides).")),
    "model": (str, typer.Option(
        "--model", "-m", help="A preset (see 'imggenhub models') or any diffusers model id on the Hub.")),
    "steps": (Optional[int], typer.Option(help="Denoising steps (default: the model's).")),
    "guidance": (Optional[float], typer.Option(help="Classifier-free guidance scale.")),
    "width": (Optional[int], typer.Option(help="Image width in pixels (a multiple of 8).")),
    "height": (Optional[int], typer.Option(help="Image height in pixels (a multiple of 8).")),
    "negative_prompt": (Optional[str], typer.Option(help="What the images should not show.")),
    "seed": (Optional[int], typer.Option(
        help="Base seed; each image gets its own derived seed, recorded (default: random).")),
    "num_images": (int, typer.Option(help="Images per prompt.")),
    "batch_size": (int, typer.Option(help="Images per pipeline call.")),
    "scheduler": (Optional[str], typer.Option(
        help="dpm++, dpm++-karras, euler, euler-a, ddim, ... (default: the model's own).")),
    "precision": (str, typer.Option(help="auto, fp16 or fp32 (auto: fp16 on a GPU).")),
    "init_image": (Optional[str], typer.Option(
        "--init-image", metavar="PATH", help="Image-to-image: start from this picture.")),
    "mask_image": (Optional[str], typer.Option(
        "--mask-image", metavar="PATH", help="Inpainting, with --init-image: white is redrawn.")),
    "lora": (Optional[list[str]], typer.Option(
        "--lora", metavar="REF[:SCALE]",
        help="A LoRA (repeatable): a local .safetensors, a Hub repo, or owner/name/file.safetensors.")),
    "embedding": (Optional[list[str]], typer.Option(
        "--embedding", metavar="REF[:TOKEN]",
        help="A textual-inversion embedding (repeatable): a local file or a Hub repo.")),
    "strength": (Optional[float], typer.Option(
        help="Image-to-image: how much of the picture is redrawn, 0 < s <= 1 (default 0.8).")),
    "sweep": (Optional[list[str]], typer.Option(
        "--sweep", metavar="NAME=V1,V2",
        help="Repeatable: make each prompt at every combination of these values, one seed "
             "(steps, guidance, size WxH, strength, scheduler).")),
    "score": (bool, typer.Option(
        "--score", help="Score each image with CLIP (100 x cosine of image and prompt; see --score-model).")),
    "score_model": (Optional[str], typer.Option(
        "--score-model", metavar="ID", help="The CLIP model for --score (default "
        "openai/clip-vit-large-patch14).")),
    "refiner": (Optional[str], typer.Option(
        "--refiner", metavar="[MODEL]",
        help="SDXL: hand the last steps to the refiner (alone: the model's, else "
             "stabilityai/stable-diffusion-xl-refiner-1.0).")),
    "refiner_start": (Optional[float], typer.Option(
        "--refiner-start", metavar="F",
        help="With --refiner: the share of the steps the base runs (default 0.8).")),
    "gpu": (bool, typer.Option("--gpu/--no-gpu", help="Ask for a GPU.")),
    # the kernel (Kaggle) options: they shape kernel-metadata.json
    "metadata_template": (Path, typer.Option(
        "--metadata-template", help="The kernel-metadata.json template (never rewritten).")),
    "kernel_id": (Optional[str], typer.Option(help="The Kaggle kernel, as owner/slug.")),
    "title": (Optional[str], typer.Option(help="The kernel's title.")),
    "internet": (Optional[bool], typer.Option(
        "--internet/--no-internet", help="Internet in the kernel (the Hub needs it; default on).")),
    "shards": (str, typer.Option(
        "--shards", metavar="N|auto",
        help="Kaggle: split the images over N kernels run at once (auto: 2 when the job is long "
             "enough to gain from it).")),
    "bundle": (Optional[bool], typer.Option(
        "--bundle/--no-bundle",
        help="Kaggle: also pack the images in tar bundles, downloaded instead of the loose files "
             "(default: for jobs of 200 images or more).")),
    "force": (bool, typer.Option(
        "--force", help="Push even when the GPU-hour estimate exceeds the quota left.")),
    "hf_token_env": (Optional[str], typer.Option(
        "--hf-token-env", metavar="VAR",
        help="Gated or private Hub models: ship the Hugging Face token in this environment "
             "variable to the kernel, through a private Kaggle dataset.")),
}
_JOB_DEFAULTS = {"prompt": None, "prompts_file": Path("prompts.json"), "model": "sdxl-turbo",
                 "num_images": 1, "batch_size": 1, "precision": "auto", "gpu": True,
                 "metadata_template": Path("kernel-metadata.json"), "force": False, "score": False,
                 "shards": "auto"}
_KERNEL_FLAGS = ("metadata_template", "kernel_id", "title", "internet", "hf_token_env", "force",
                 "bundle", "shards")
_GIVEN = ("job", "kernel")


def job_options(fn):
    """Add the job and kernel options, declared once, to a command. It receives them parsed:
    ``job`` (a validated JobSpec) and ``kernel`` (the Kaggle KernelOptions)."""
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                               default=_JOB_DEFAULTS.get(name),
                               annotation=Annotated[kind, option])
             for name, (kind, option) in _JOB_OPTIONS.items()]
    sig = inspect.signature(fn, eval_str=True)
    own = [p for p in sig.parameters.values() if p.name not in _GIVEN]

    @functools.wraps(fn)
    def wrapper(**kwargs):
        flags = {name: kwargs.pop(name) for name in _JOB_OPTIONS}
        if flags["seed"] is None and kwargs.get("name"):
            # a named run is one job: the same line run again must make the same spec
            from .spec import seed_for_name

            flags["seed"] = seed_for_name(kwargs["name"])
        return fn(**_parse_job(flags), **kwargs)

    wrapper.__signature__ = sig.replace(parameters=own + extra)
    wrapper.__annotations__ = {p.name: p.annotation for p in own + extra}
    return wrapper


def _shards(value: str) -> int | None:
    if value == "auto":
        return None
    if not value.isdigit() or not 1 <= int(value) <= 20:
        raise SpecError(f"--shards {value[:20]!r} must be auto or a number from 1 to 20.")
    return int(value)


def _parse_job(flags: dict) -> dict:
    from .backends.kaggle_meta import KernelOptions
    from .spec import job_from_inputs, parse_settings

    kernel = {name: flags.pop(name) for name in _KERNEL_FLAGS}
    settings = parse_settings(**{k: v for k, v in flags.items() if k not in ("prompt", "prompts_file")})
    return {
        "job": job_from_inputs(settings, flags["prompt"], flags["prompts_file"]),
        "kernel": KernelOptions(kernel_id=kernel["kernel_id"], title=kernel["title"],
                                gpu=flags["gpu"], internet=kernel["internet"],
                                template=kernel["metadata_template"],
                                hf_token_env=kernel["hf_token_env"], force=kernel["force"],
                                bundle=kernel["bundle"], shards=_shards(kernel["shards"])),
    }


TimeoutHours = Annotated[Optional[float], typer.Option(
    help="Cap the Kaggle session at H hours (Kaggle's own cap is 12).", min=0.1, max=12)]
RunId = Annotated[Optional[str], typer.Argument(
    help="A run id, its prefix, or a --name (default: the latest run).")]
Timeout = Annotated[Optional[float], typer.Option(
    "--timeout", min=0, help="Stop waiting after this many seconds (exit 3); the run goes on.")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
Name = Annotated[Optional[str], typer.Option(
    help="A name for the run (an idempotency key): run again, the same name picks it up.")]
Out = Annotated[Optional[Path], typer.Option(help="Output folder (default: outputs/<run id>/).")]


def _default_backend() -> str:
    from .credentials import HOW_TO, find_credentials

    if find_credentials() is None:
        raise CredentialsError(HOW_TO)
    return "kaggle"


def _done(run, as_json: bool) -> None:
    if run.state.value == "downloaded" or run.images_fetched:
        from .engine import images_text

        human = f"{images_text(run.images_fetched)} in {run.out_dir} (manifest.json; run {run.run_id})"
    else:
        human = f"{run.run_id} {run.state.value} {run.url or ''}".rstrip()
    _result(_run_data(run), human, as_json)


@app.command()
@job_options
def generate(
    job, kernel,
    backend: Annotated[Optional[str], typer.Option(
        help="Where to run: 'kaggle' (the default when credentials are found) or 'local'.")] = None,
    out: Out = None, name: Name = None, timeout_hours: TimeoutHours = None, timeout: Timeout = None,
    json: Json = False,
) -> None:
    """Render the job's notebook, run it, and bring the images home (deploy + poll + download)."""
    from . import jobs

    _STATE["json"] = json
    backend = backend or _default_backend()
    report = _reporter()
    if backend == "local":
        from dataclasses import fields

        from .backends.kaggle_meta import KernelOptions

        defaults = KernelOptions(template=_JOB_DEFAULTS["metadata_template"])  # the flags' own
        given = [f.name for f in fields(KernelOptions) if f.name not in ("gpu", "reserved_hours")
                 and getattr(kernel, f.name) != getattr(defaults, f.name)]
        if given:
            flags = ", ".join("--" + {"template": "metadata-template"}.get(n, n).replace("_", "-")
                              for n in given)
            report(f"note: {flags} shape{'s' if len(given) == 1 else ''} the Kaggle kernel; the "
                   "local backend has none and leaves "
                   f"{'it' if len(given) == 1 else 'them'} aside")
    run = jobs.generate(job, backend, out, kernel, report, timeout_hours, timeout, name)
    _done(run, json)


@app.command()
@job_options
def deploy(
    job, kernel,
    out: Annotated[Optional[Path], typer.Option(
        help="Where 'download' will put the images (default: outputs/<run id>/).")] = None,
    name: Name = None, timeout_hours: TimeoutHours = None,
    timeout: Annotated[Optional[float], typer.Option(
        "--timeout", min=0, help="Wait at most this long for a free GPU session (exit 6).")] = None,
    json: Json = False,
) -> None:
    """Validate, render and push the job to Kaggle as a new kernel version; save the run."""
    from . import jobs

    _STATE["json"] = json
    run = jobs.deploy(job, out, kernel, _reporter(), timeout_hours, timeout, name)
    _result(_run_data(run), f"{run.run_id} {run.url}", json)


@app.command()
def poll(run_id: RunId = None, timeout: Timeout = None, json: Json = False) -> None:
    """Follow a run's exact kernel version to its end: 0 complete, 1 failed, 3 timeout, 5 unreachable."""
    from . import jobs

    _STATE["json"] = json
    run = jobs.command_on(run_id, "poll", _reporter(), timeout)
    _result(_run_data(run), f"{run.run_id} {run.state.value}", json)


@app.command()
def download(run_id: RunId = None, out: Annotated[Optional[Path], typer.Option(
        help="Output folder (default: the run's).")] = None, json: Json = False) -> None:
    """Download and verify a complete run's images, manifest and kernel log (skips verified files)."""
    from . import jobs

    _STATE["json"] = json
    _done(jobs.command_on(run_id, "download", _reporter(), out_dir=out), json)


@app.command()
def resume(run_id: RunId = None, timeout: Timeout = None, json: Json = False) -> None:
    """Advance a run from wherever it stands: push, poll, download; exit 0 at once if done."""
    from . import jobs

    _STATE["json"] = json
    _done(jobs.command_on(run_id, "resume", _reporter(), timeout), json)


@app.command()
def status(run_id: RunId = None, json: Json = False) -> None:
    """One look at a run's state (asks Kaggle when the run is still going)."""
    from . import jobs

    _STATE["json"] = json
    run = jobs.status(run_id, _reporter())
    kernel = f" {run.kernel_ref} v{run.version}" if run.kernel_ref and run.version else ""
    lines = [f"{run.run_id} {run.state.value}{kernel}"] + _shard_lines(run)
    _result(_run_data(run), "\n".join(lines), json)


def _shard_lines(run) -> list[str]:
    if not run.shards:
        return []
    from .runs import shards_of

    return [f"  shard {s.shard}: {s.state.value:<10} {s.kernel_ref or '-'} v{s.version or '-'} "
            f"{s.images_fetched}/{s.image_count} images" for s in shards_of(run)]


@app.command("runs")
def list_runs(json: Json = False) -> None:
    """List the run records: id, name, backend, state, images, when, kernel, output folder."""
    import time

    from .runs import all_runs

    _STATE["json"] = json
    rows = all_runs()
    if json:
        _result([_run_data(r) for r in rows], "", True)
        return
    if not rows:
        typer.echo("No runs yet.")
        return
    typer.echo(f"{'run':<28} {'name':<12} {'backend':<7} {'state':<12} {'images':>9}  "
               f"{'created':<16}  {'kernel':<28} output")
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created))
        kernel = f"{r.kernel_ref} v{r.version}" if r.kernel_ref and r.version else (r.kernel_ref or "-")
        typer.echo(f"{r.run_id:<28} {(r.name or '-'):<12} {r.backend:<7} {r.state.value:<12} "
                   f"{r.images_fetched:>4}/{r.image_count:<4}  {when:<16}  {kernel:<28} {r.out_dir}")
        for line in _shard_lines(r):
            typer.echo(line)


@app.command()
def doctor(timeout: Annotated[float, typer.Option(
        "--timeout", min=1, help="Give up on the API after this many seconds (exit 5).")] = 30.0,
        json: Json = False) -> None:
    """Say which Kaggle credential is used and whether the API answers (never the secret)."""
    from .backends import get_backend

    _STATE["json"] = json
    lines = get_backend("kaggle").health(_reporter(), timeout)
    _result({"ok": True, "lines": lines}, "\n".join(lines), json)


@app.command("open")
def open_gallery(run_id: RunId = None, json: Json = False) -> None:
    """Open a run's gallery.html in the default browser (and print where it is)."""
    import webbrowser

    from . import artifacts, runs

    _STATE["json"] = json
    run = runs.load(run_id)
    page = artifacts.fresh_gallery(run)
    opened = webbrowser.open(page.as_uri())
    _result({"ok": True, "run_id": run.run_id, "gallery": str(page), "opened": bool(opened)},
            str(page) if opened else f"{page} (no browser found here: open it by hand)", json)


@app.command()
def grid(run_id: RunId = None, cols: Annotated[Optional[int], typer.Option(
        "--cols", min=1, max=50, help="Tiles a row (default: up to 10, about square).")] = None,
        json: Json = False) -> None:
    """Remake a run's contact sheets (grid.png, ...: every image as a labelled tile) and its
    sweep grids (sweep-NN.png)."""
    from . import artifacts, runs

    _STATE["json"] = json
    run = runs.load(run_id)
    paths = artifacts.remake_sheets(run, cols)
    _result({"ok": True, "run_id": run.run_id, "sheets": [str(p) for p in paths]},
            "\n".join(str(p) for p in paths), json)


@app.command()
def score(folder: Annotated[Path, typer.Argument(help="A folder of PNGs that carry their prompt.")],
          model: Annotated[Optional[str], typer.Option(
              "--model", help="The CLIP model (default openai/clip-vit-large-patch14).")] = None,
          json: Json = False) -> None:
    """CLIP-score a folder's PNGs (ours, or A1111's 'parameters'), here; with a manifest,
    record the scores there and in the gallery."""
    from . import scores

    _STATE["json"] = json
    found = scores.score_folder(folder, model, _reporter())
    mean = found["score_mean"]
    lines = [f"{r['score']:7.2f}  {r['file']}" for r in found["images"]]
    lines.append(f"mean {mean:.2f} over {len(found['images'])} images ({found['model']})"
                 if mean is not None else "no image with a prompt to score")
    _result({"ok": True, **found}, "\n".join(lines), json)


@app.command()
def show(run_id: RunId = None, thumbnails: Annotated[bool, typer.Option(
        "--thumbnails", help="Show the contact sheet inline (kitty, iTerm2).")] = False,
        json: Json = False) -> None:
    """One run at a glance: state, model, images, seconds per image, score, where its files are."""
    from . import runs
    from . import show as shown

    _STATE["json"] = json
    info = shown.summary(runs.load(run_id))
    text = "\n".join(shown.lines(info))
    if thumbnails and not json:
        protocol = shown.terminal_images()
        if protocol is None:
            text += "\n(this terminal shows no images: open the gallery with 'imggenhub open')"
        elif info["sheets"]:
            text += "\n" + shown.inline_image(Path(info["folder"]) / info["sheets"][0], protocol)
    _result({"ok": True, **info}, text, json)


@app.command()
def quota(timeout: Annotated[float, typer.Option(
        "--timeout", min=1, help="Give up on the API after this many seconds (exit 5).")] = 30.0,
        json: Json = False) -> None:
    """Kaggle's GPU quota this week: hours used and left, and when it refreshes."""
    from .backends import get_backend

    _STATE["json"] = json
    backend = get_backend("kaggle")
    backend.bound(timeout)
    q = backend.quota(_reporter())
    when = f"; it refreshes at {q['refreshes_at']}" if q["refreshes_at"] else ""
    if q["gpu_hours_total"] is None:
        human = f"GPU quota: {q['gpu_hours_used']:.1f} h used this week; Kaggle did not say the total"
    else:
        human = (f"GPU quota: {q['gpu_hours_used']:.1f} h used of {q['gpu_hours_total']:.1f} h "
                 f"this week, {q['gpu_hours_left']:.1f} h left{when}")
    _result({"ok": True, **q}, human, json)


@app.command()
@job_options
def render(
    job, kernel,
    out: Annotated[Path, typer.Option(help="Folder for the notebook and kernel-metadata.json.")],
) -> None:
    """Write the job's notebook and kernel-metadata.json; run nothing."""
    from . import jobs
    from .backends.kaggle_meta import PLACEHOLDER_OWNER
    from .engine import images_text

    path, meta = jobs.render(job, kernel, out)
    typer.echo(f"{path} (job {job.job_id}, {images_text(job.image_count)})")
    if meta["id"].startswith(PLACEHOLDER_OWNER + "/"):
        typer.echo(f"note: kernel-metadata.json names the owner '{PLACEHOLDER_OWNER}' (no Kaggle "
                   "username was found here without the network): put yours in its \"id\" "
                   "before 'kaggle kernels push'", err=True)


@app.command()
def models(json: Json = False) -> None:
    """List the model presets and their defaults."""
    from .models import PRESETS

    if json:
        _result([p.as_dict() for p in PRESETS.values()], "", True)
        return
    typer.echo(f"{'preset':<15} {'size':>9} {'steps':>5} {'cfg':>5}  model id / note")
    for p in PRESETS.values():
        size = f"{p.width}x{p.height}" if p.width else "model's"
        typer.echo(f"{p.name:<15} {size:>9} {p.steps:>5} {p.guidance:>5}  {p.id}")
        if p.note:
            typer.echo(f"{'':<39}{p.note}")
    typer.echo("Any other Hugging Face id (owner/name) loads with diffusers' AutoPipeline.")


@app.command()
def version() -> None:
    """Print imggenhub's version."""
    typer.echo(__version__)


def _version_flag(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option(
        "--version", callback=_version_flag, is_eager=True, help="Print the version and exit.")] = False
          ) -> None:
    """Generate images in batch with Hugging Face diffusers on Kaggle's free GPUs, or here."""


def _fail(exc_or_message, code: int, run_id: str | None = None) -> int:
    message = str(exc_or_message)
    _close_reporter()
    _err(f"Error: {message}")
    if _STATE["json"]:
        import json

        typer.echo(json.dumps({"ok": False, "exit_code": int(code), "error": message,
                               "run_id": run_id}, ensure_ascii=False))
    return int(code)


def _bare_refiner(args: list[str]) -> list[str]:
    """``--refiner`` with no MODEL after it stands for the model's own refiner."""
    if "--refiner" not in args:
        return args  # the common case: nothing to import on the start-up path
    from .spec import REFINER_FLAG

    end = args.index("--") if "--" in args else len(args)
    out = []
    for i, arg in enumerate(args):
        out.append(arg)
        if i < end and arg == "--refiner" and (i + 1 >= end or args[i + 1].startswith("-")):
            out.append(REFINER_FLAG)
    return out


def main(argv: list[str] | None = None) -> None:
    """The one error boundary: one sentence and an exit code, never a traceback."""
    from .config import debug

    args = _bare_refiner(sys.argv[1:] if argv is None else list(argv))
    # known before any parsing, so that bad input gets its JSON answer too
    _STATE.update(json="--json" in args[: args.index("--")] if "--" in args else "--json" in args,
                  reporter=None)
    try:
        code = app(args=args, prog_name="imggenhub", standalone_mode=False)
    except _CLICK_ERRORS as exc:  # usage errors: one line, like every other error
        message = exc.format_message()
        code = _fail(message, exc.exit_code) if message else 0  # bare 'imggenhub' shows the help
    except (typer.Abort, KeyboardInterrupt):
        code = _fail("Interrupted; nothing that was finished is lost.", Exit.INTERRUPTED)
    except ImggenhubError as exc:
        if debug():
            raise
        tail = getattr(exc, "log_tail", "")
        if tail and getattr(getattr(exc, "failure", None), "kind", "") in ("kernel", "cancelled"):
            _close_reporter()
            _err("The kernel log ends with:\n" + "\n".join("  " + l for l in tail.splitlines()))
        code = _fail(exc, exc.exit_code, getattr(exc, "run_id", None))
    except RecursionError:
        code = _fail("The input is nested too deeply to be read.", Exit.BAD_INPUT)
    except Exception as exc:  # a bug of ours: say so, in one sentence
        if debug():
            raise
        code = _fail(f"Internal error ({type(exc).__name__}: {exc}); rerun with IMGGENHUB_DEBUG=1 "
                     "for the traceback and report it.", 70)
    finally:
        _close_reporter()
    sys.exit(code if isinstance(code, int) else 0)
