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
from .errors import CredentialsError, ImggenhubError

app = typer.Typer(
    name="imggenhub", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Generate images in batch with Hugging Face diffusers on Kaggle's free GPUs, or here.")


def _err(message: str) -> None:
    typer.echo(message, err=True)


def _progress(line: str) -> None:
    _err(f"  {line}")


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
    "gpu": (bool, typer.Option("--gpu/--no-gpu", help="Ask for a GPU.")),
    # the kernel (Kaggle) options: they shape kernel-metadata.json
    "metadata_template": (Path, typer.Option(
        "--metadata-template", help="The kernel-metadata.json template (never rewritten).")),
    "kernel_id": (Optional[str], typer.Option(help="The Kaggle kernel, as owner/slug.")),
    "title": (Optional[str], typer.Option(help="The kernel's title.")),
    "internet": (Optional[bool], typer.Option(
        "--internet/--no-internet", help="Internet in the kernel (the Hub needs it; default on).")),
}
_JOB_DEFAULTS = {"prompt": None, "prompts_file": Path("prompts.json"), "model": "sdxl-turbo",
                 "num_images": 1, "batch_size": 1, "precision": "auto", "gpu": True,
                 "metadata_template": Path("kernel-metadata.json")}
_KERNEL_FLAGS = ("metadata_template", "kernel_id", "title", "internet")
_GIVEN = ("job", "kernel", "template")


def job_options(fn):
    """Add the job and kernel options, declared once, to a command. It receives them parsed:
    ``job`` (a validated JobSpec), ``kernel`` (KernelOptions) and ``template`` (a path)."""
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                               default=_JOB_DEFAULTS.get(name),
                               annotation=Annotated[kind, option])
             for name, (kind, option) in _JOB_OPTIONS.items()]
    sig = inspect.signature(fn, eval_str=True)
    own = [p for p in sig.parameters.values() if p.name not in _GIVEN]

    @functools.wraps(fn)
    def wrapper(**kwargs):
        flags = {name: kwargs.pop(name) for name in _JOB_OPTIONS}
        return fn(**_parse_job(flags), **kwargs)

    wrapper.__signature__ = sig.replace(parameters=own + extra)
    wrapper.__annotations__ = {p.name: p.annotation for p in own + extra}
    return wrapper


def _parse_job(flags: dict) -> dict:
    from .notebook import KernelOptions
    from .spec import job_from_inputs, parse_settings

    kernel = {name: flags.pop(name) for name in _KERNEL_FLAGS}
    settings = parse_settings(**{k: v for k, v in flags.items() if k not in ("prompt", "prompts_file")})
    return {
        "job": job_from_inputs(settings, flags["prompt"], flags["prompts_file"]),
        "kernel": KernelOptions(kernel_id=kernel["kernel_id"], title=kernel["title"],
                                gpu=flags["gpu"], internet=kernel["internet"]),
        "template": kernel["metadata_template"],
    }


TimeoutHours = Annotated[Optional[float], typer.Option(
    help="Cap the Kaggle session at H hours (Kaggle's own cap is 12).", min=0.1, max=12)]
RunId = Annotated[Optional[str], typer.Argument(help="A run id or its prefix (default: the latest).")]
PollTimeout = Annotated[Optional[float], typer.Option(
    "--timeout", help="Stop waiting after this many seconds (exit 3); the run goes on.")]


def _default_backend() -> str:
    from .credentials import HOW_TO, find_credentials

    if find_credentials() is None:
        raise CredentialsError(HOW_TO)
    return "kaggle"


@app.command()
@job_options
def generate(
    job, kernel, template,
    backend: Annotated[Optional[str], typer.Option(
        help="Where to run: 'kaggle' (the default when credentials are found) or 'local'.")] = None,
    out: Annotated[Optional[Path], typer.Option(
        help="Output folder (default: outputs/<run id>/).")] = None,
    timeout_hours: TimeoutHours = None,
    timeout: PollTimeout = None,
) -> None:
    """Render the job's notebook, run it, and bring the images home (deploy + poll + download)."""
    from . import jobs

    backend = backend or _default_backend()
    run = jobs.generate(job, backend, out, kernel, template, _progress, timeout_hours, timeout)
    typer.echo(f"{run.images_fetched} images in {run.out_dir} (manifest.json; run {run.run_id})")


@app.command()
@job_options
def deploy(
    job, kernel, template,
    out: Annotated[Optional[Path], typer.Option(
        help="Where 'download' will put the images (default: outputs/<run id>/).")] = None,
    timeout_hours: TimeoutHours = None,
) -> None:
    """Validate, render and push the job to Kaggle as a new kernel version; save the run."""
    from . import jobs

    run = jobs.start(job, "kaggle", out, kernel, template, _progress, timeout_hours)
    typer.echo(f"{run.run_id} {run.url}")


@app.command()
def poll(run_id: RunId = None, timeout: PollTimeout = None) -> None:
    """Follow a run's exact kernel version to its end: exit 0 complete, 1 failed, 3 timeout."""
    from . import jobs

    run = jobs.poll(run_id, _progress, timeout)
    typer.echo(f"{run.run_id} {run.state.value}")


@app.command()
def download(
    run_id: RunId = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default: the run's).")] = None,
) -> None:
    """Download and verify a run's images, manifest and kernel log (skips verified files)."""
    from . import jobs

    run = jobs.download(run_id, out, _progress)
    typer.echo(f"{run.images_fetched} images in {run.out_dir} (manifest.json; run {run.run_id})")


@app.command()
def status(run_id: RunId = None) -> None:
    """Ask the backend once for a run's state."""
    from . import backends, runs

    run = runs.load(run_id)
    impl = backends.get_backend(run.backend)
    state = run.state
    if hasattr(impl, "status") and run.kernel_ref and not state.terminal:
        state, _ = impl.status(run)
    typer.echo(f"{run.run_id} {state.value} {run.kernel_ref or ''} v{run.version or '-'}".rstrip())


@app.command("runs")
def list_runs() -> None:
    """List the run records: id, backend, kernel, state, images, when."""
    import time

    from .runs import all_runs

    rows = all_runs()
    if not rows:
        typer.echo("No runs yet.")
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created))
        kernel = f"{r.kernel_ref} v{r.version}" if r.kernel_ref else "-"
        typer.echo(f"{r.run_id}  {r.backend:<6} {r.state.value:<9} "
                   f"{r.images_fetched:>4}/{r.image_count:<4} {when}  {kernel}")


@app.command()
def doctor() -> None:
    """Say which Kaggle credential is used and whether the API answers (never the secret)."""
    from . import kaggle_api

    creds = kaggle_api.credentials()
    typer.echo(f"credential: {creds.source} ({'token' if creds.token else 'username/key'}"
               f"{', user ' + creds.username if creds.username else ''})")
    from .backends.kaggle import KaggleBackend

    backend = KaggleBackend()
    user = backend.owner()
    from kagglesdk.kernels.types.kernels_api_service import ApiGetAcceleratorQuotaStatisticsRequest

    quota = backend._call("reading the GPU quota", lambda: backend.api
                          .get_accelerator_quota_statistics(ApiGetAcceleratorQuotaStatisticsRequest()))
    gpu = quota.gpu_quota
    used = gpu.time_used.total_seconds() / 3600 if gpu and gpu.time_used else 0.0
    total = gpu.total_time_allowed.total_seconds() / 3600 if gpu and gpu.total_time_allowed else 0.0
    typer.echo(f"Kaggle API answers: signed in as {user}; GPU quota used {used:.1f} of {total:.0f} h")


@app.command()
@job_options
def render(
    job, kernel, template,
    out: Annotated[Path, typer.Option(help="Folder for the notebook and kernel-metadata.json.")],
) -> None:
    """Write the job's notebook and kernel-metadata.json; run nothing."""
    from . import jobs
    from .credentials import find_credentials

    creds = find_credentials()  # fill in the owner as deploy would, where it needs no network
    path = jobs.render(job, out, kernel, template, owner=creds.username if creds else None)
    typer.echo(f"{path} (job {job.job_id}, {job.image_count} images)")


@app.command()
def models() -> None:
    """List the model presets and their defaults."""
    from .models import PRESETS

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


def main(argv: list[str] | None = None) -> None:
    """The one error boundary: one sentence and an exit code, never a traceback."""
    from .config import debug

    try:
        code = app(args=argv, prog_name="imggenhub", standalone_mode=False)
    except _CLICK_ERRORS as exc:  # usage errors: one line, like every other error
        message = exc.format_message()
        if message:
            _err(f"Error: {message}")
        code = exc.exit_code if message else 0  # bare 'imggenhub' shows the help
    except typer.Abort:
        _err("Aborted.")
        code = 130
    except KeyboardInterrupt:
        _err("Interrupted; what was finished is kept.")
        code = 130
    except ImggenhubError as exc:
        if debug():
            raise
        tail = getattr(exc, "log_tail", "")
        if tail and getattr(exc, "ename", "") == "KernelError":
            _err("The kernel log ends with:\n" + "\n".join("  " + l for l in tail.splitlines()))
        _err(f"Error: {exc}")
        code = exc.exit_code
    except Exception as exc:  # a bug of ours: say so, in one sentence
        if debug():
            raise
        _err(f"Internal error ({type(exc).__name__}: {exc}); rerun with IMGGENHUB_DEBUG=1 for the "
             "traceback and report it.")
        code = 70
    sys.exit(code if isinstance(code, int) else 0)
