"""The options several commands share, declared once as ``Annotated`` types, and their
parsing: the job and kernel options become a JobSpec and the Kaggle KernelOptions."""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import SpecError
from ..job.axes import sweepable_text

TimeoutHours = Annotated[Optional[float], typer.Option(
    help="Cap the Kaggle session at H hours (Kaggle's own cap is 12).", min=0.1, max=12)]
RunId = Annotated[Optional[str], typer.Argument(
    help="A run id, a unique part of it, or a --name (default: the latest run).")]
Timeout = Annotated[Optional[float], typer.Option(
    "--timeout", min=0, help="Stop waiting after this many seconds (exit 3); the run goes on.")]
ApiTimeout = Annotated[float, typer.Option(
    "--timeout", min=1, help="Give up on the API after this many seconds (exit 5).")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
Notify = Annotated[Optional[list[str]], typer.Option(
    "--notify", metavar="URL",
    help="When the run ends, say so at URL (repeatable; also IMGGENHUB_NOTIFY): a JSON POST, "
         "or the format of a Slack or Discord webhook or an ntfy topic.")]
NAME_MAX = 100


def _check_name(name: Optional[str]) -> Optional[str]:
    if name is not None and (not name.strip() or len(name) > NAME_MAX
                             or any(not c.isprintable() for c in name)):
        raise typer.BadParameter(f"a run's name is 1 to {NAME_MAX} printable characters "
                                 f"(this one has {len(name)})", param_hint="'--name'")
    return name


Name = Annotated[Optional[str], typer.Option(
    callback=_check_name,
    help="A name for the run (an idempotency key): run again, the same name picks it up.")]
Out = Annotated[Optional[Path], typer.Option(help="Output folder (default: outputs/<run id>/).")]


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
    "quantize": (str, typer.Option(
        metavar="auto|nf4|int8|none",
        help="FLUX and SD 3.5: quantize the transformer and T5 (auto: the least that fits the "
             "cards; the memory plan is logged).")),
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
             f"({sweepable_text()}).")),
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
    "flavor": (Optional[str], typer.Option(
        "--flavor", metavar="NAME",
        help="hf-jobs: the GPU flavor of each job (default t4-small; 'imggenhub doctor --backend "
             "hf-jobs' lists them).")),
    "max_cost": (Optional[float], typer.Option(
        "--max-cost", metavar="USD", min=0,
        help="hf-jobs: refuse to start when the estimated cost is over this (exit 7).")),
    "hf_token_env": (Optional[str], typer.Option(
        "--hf-token-env", metavar="VAR",
        help="Gated or private Hub models: ship the Hugging Face token in this environment "
             "variable to the kernel, through a private Kaggle dataset.")),
}
JOB_DEFAULTS = {"prompt": None, "prompts_file": Path("prompts.json"), "model": "sdxl-turbo",
                 "num_images": 1, "batch_size": 1, "precision": "auto", "quantize": "auto", "gpu": True,
                 "metadata_template": Path("kernel-metadata.json"), "force": False, "score": False,
                 "shards": "auto"}
_KERNEL_FLAGS = ("metadata_template", "kernel_id", "title", "internet", "hf_token_env", "force",
                 "bundle", "flavor", "max_cost")
_GIVEN = ("job", "kernel", "shards")


def job_options(fn):
    """Add the job and kernel options, declared once, to a command. It receives them parsed:
    ``job`` (a validated JobSpec), ``kernel`` (the Kaggle KernelOptions) and ``shards`` (how
    many sessions the run is split over; None: auto)."""
    sig = inspect.signature(fn, eval_str=True)
    takes = [n for n in _JOB_OPTIONS if n != "shards" or "shards" in sig.parameters]
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                               default=JOB_DEFAULTS.get(name),
                               annotation=Annotated[_JOB_OPTIONS[name][0], _JOB_OPTIONS[name][1]])
             for name in takes]
    own = [p for p in sig.parameters.values() if p.name not in _GIVEN]

    @functools.wraps(fn)
    def wrapper(**kwargs):
        flags = {name: kwargs.pop(name, JOB_DEFAULTS.get(name)) for name in _JOB_OPTIONS}
        if flags["seed"] is None and kwargs.get("name"):
            # a named run is one job: the same line run again must make the same spec
            from ..job.spec import seed_for_name

            flags["seed"] = seed_for_name(kwargs["name"])
        parsed = _parse_job(flags)
        if "shards" not in sig.parameters:  # render: one notebook; --shards is not its flag
            parsed.pop("shards")
        return fn(**parsed, **kwargs)

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
    from ..job.resolve import job_from_inputs
    from ..job.spec import parse_settings

    kernel = {name: flags.pop(name) for name in _KERNEL_FLAGS}
    shards = _shards(flags.pop("shards"))
    settings = parse_settings(**{k: v for k, v in flags.items() if k not in ("prompt", "prompts_file")})
    return {
        "job": job_from_inputs(settings, flags["prompt"], flags["prompts_file"]),
        "kernel": kernel_options(flags["gpu"], kernel_id=kernel["kernel_id"], title=kernel["title"],
                                 internet=kernel["internet"], template=kernel["metadata_template"],
                                 hf_token_env=kernel["hf_token_env"], force=kernel["force"],
                                 bundle=kernel["bundle"], flavor=kernel["flavor"],
                                 max_cost=kernel["max_cost"]),
        "shards": shards,
    }


def kernel_options(gpu: bool, **flags):
    """The Kaggle kernel's options from its flags (a command's own, or the job options')."""
    from ..backends.kaggle.meta import KernelOptions

    return KernelOptions(gpu=gpu, **flags)


def kernel_flags_given(kernel) -> list[str]:
    """The flags that shape only the Kaggle kernel and were given other values than their
    defaults, as typed (``--kernel-id``, ...)."""
    from dataclasses import fields

    from ..backends.kaggle.meta import KernelOptions

    defaults = KernelOptions(template=JOB_DEFAULTS["metadata_template"])  # the flags' own
    return ["--" + {"template": "metadata-template"}.get(f.name, f.name).replace("_", "-")
            for f in fields(KernelOptions) if f.name not in ("gpu", "flavor", "max_cost")
            and getattr(kernel, f.name) != getattr(defaults, f.name)]


def bare_refiner(args: list[str]) -> list[str]:
    """``--refiner`` with no MODEL after it stands for the model's own refiner."""
    if "--refiner" not in args:
        return args  # the common case: nothing to import on the start-up path
    from ..job.resolve import REFINER_FLAG

    end = args.index("--") if "--" in args else len(args)
    out = []
    for i, arg in enumerate(args):
        out.append(arg)
        if i < end and arg == "--refiner" and (i + 1 >= end or args[i + 1].startswith("-")):
            out.append(REFINER_FLAG)
    return out
