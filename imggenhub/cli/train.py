"""Fine-tuning: ``imggenhub train``, the second kind of run. The pictures are read and checked
here; the run is rendered, pushed, followed and brought home as every run is (``resume``,
``status``, ``poll`` and ``download`` take it by its id or name); its weights, once home
and verified, are registered under ``--name`` for ``generate --lora NAME``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import (_JOB_OPTIONS, JOB_DEFAULTS, Json, Notify, Out, Timeout, TimeoutHours,
                      kernel_options)
from .output import STATE, done, reporter


def _kernel(name: str):
    kind, option = _JOB_OPTIONS[name]
    return Annotated[kind, option]


# the kernel flags, declared once with the job options
Gpu, Template, KernelId, Title = (_kernel(n) for n in ("gpu", "metadata_template", "kernel_id", "title"))
Internet, HfTokenEnv, Force = (_kernel(n) for n in ("internet", "hf_token_env", "force"))


def train(
    images: Annotated[Path, typer.Option(
        "--images", help="The folder of training pictures, with captions in metadata.jsonl "
        "(file_name, text), in .txt files beside them, or from --instance-prompt.")],
    model: Annotated[str, typer.Option(
        "--model", "-m", help="A Stable Diffusion 1.x/2.x or SDXL preset, Hub id or diffusers folder.")] = "sd15",
    method: Annotated[str, typer.Option(
        help="lora (LoRA on the UNet's attention), dreambooth-lora (a LoRA on an instance "
        "prompt, with prior preservation given --class-prompt) or textual-inversion (a new "
        "token's embedding).")] = "lora",
    instance_prompt: Annotated[Optional[str], typer.Option(
        help="The caption of every picture that has none (DreamBooth's 'a photo of sks dog').")] = None,
    class_prompt: Annotated[Optional[str], typer.Option(
        help="dreambooth-lora: prior preservation, with class pictures drawn first from this "
        "prompt ('a photo of a dog').")] = None,
    num_class_images: Annotated[Optional[int], typer.Option(
        help="dreambooth-lora: how many class pictures (default 100 with --class-prompt).")] = None,
    prior_loss_weight: Annotated[Optional[float], typer.Option(
        help="dreambooth-lora: the class pictures' weight in the loss (default 1.0).")] = None,
    token: Annotated[Optional[str], typer.Option(
        help="textual-inversion: the new word it learns, as the captions write it (<my-thing>).")] = None,
    initializer: Annotated[Optional[str], typer.Option(
        help="textual-inversion: a word of the model the new token starts from.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Training steps (default 500).")] = None,
    rank: Annotated[Optional[int], typer.Option(help="LoRA rank (default 4).")] = None,
    learning_rate: Annotated[Optional[float], typer.Option(help="Learning rate (default 1e-4).")] = None,
    resolution: Annotated[Optional[int], typer.Option(
        help="Training resolution in pixels (default: the model's size).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Pictures a batch (default 1).")] = None,
    gradient_accumulation: Annotated[Optional[int], typer.Option(
        help="Batches a step, their gradients added up (default 1): a larger batch in the same memory.")] = None,
    lr_scheduler: Annotated[Optional[str], typer.Option(
        help="constant (default), constant_with_warmup, linear or cosine.")] = None,
    lr_warmup_steps: Annotated[Optional[int], typer.Option(
        help="Steps the learning rate rises from 0 (default 0).")] = None,
    checkpoint_every: Annotated[Optional[int], typer.Option(
        help="Write a checkpoint (and validation pictures) every N steps (0: none).")] = None,
    validation_prompt: Annotated[Optional[list[str]], typer.Option(
        "--validation-prompt", help="A prompt drawn at each checkpoint and at the end (repeatable).")] = None,
    seed: Annotated[int, typer.Option(help="The seed of every random draw of the training.")] = 0,
    gradient_checkpointing: Annotated[bool, typer.Option(
        "--gradient-checkpointing", help="Recompute activations: less memory, slower steps.")] = False,
    use_8bit_adam: Annotated[bool, typer.Option(
        "--use-8bit-adam", help="lora, dreambooth-lora: bitsandbytes' 8-bit AdamW, a quarter "
        "of the optimizer's memory (needs bitsandbytes where it runs).")] = False,
    train_text_encoder: Annotated[bool, typer.Option(
        "--train-text-encoder", help="lora, dreambooth-lora: a LoRA on the text encoders' "
        "attention too (SDXL: both), at the same rank.")] = False,
    precision: Annotated[str, typer.Option(help="auto, fp16 or fp32 (auto: fp16 on a GPU).")] = "auto",
    gpu: Gpu = True,
    backend: Annotated[Optional[str], typer.Option(
        help="Where to run: 'kaggle' (the default when credentials are found) or 'local'.")] = None,
    name: Annotated[Optional[str], typer.Option(
        help="The name the weights are registered under (generate --lora NAME) and the run's "
        "name (run again: the same name picks the run up). Default: the folder's name.")] = None,
    out: Out = None, timeout_hours: TimeoutHours = None, timeout: Timeout = None,
    metadata_template: Template = JOB_DEFAULTS["metadata_template"],
    kernel_id: KernelId = None, title: Title = None,
    internet: Internet = None, hf_token_env: HfTokenEnv = None,
    force: Force = False,
    notify: Notify = None,
    json: Json = False,
) -> None:
    """Fine-tune a model on a folder of pictures (a LoRA or an embedding), and bring the
    weights, loss curve and validation pictures home."""
    from ..engine import slugify
    from ..errors import SpecError
    from ..job.training import build_train_spec
    from ..run import jobs, runs
    from .run import _default_backend

    STATE["json"] = json
    from .. import notify as notices

    targets = notices.targets(notify)
    if precision not in ("auto", "fp16", "fp32"):
        raise SpecError(f"--precision {precision[:20]!r} must be auto, fp16 or fp32.")
    name = name or slugify(images.resolve().name, 64)
    if not runs.NAME.match(name):
        raise SpecError(f"--name '{name[:60]}' must be 1 to 64 letters, digits, '.', '_' or '-'.")
    job = build_train_spec(
        images, model, instance_prompt, precision, gpu, method=method, steps=steps, rank=rank,
        learning_rate=learning_rate, resolution=resolution, batch_size=batch_size,
        checkpoint_every=checkpoint_every, seed=seed, name=name, token=token,
        gradient_accumulation=gradient_accumulation, lr_scheduler=lr_scheduler,
        lr_warmup_steps=lr_warmup_steps, class_prompt=class_prompt, class_images=num_class_images,
        prior_loss_weight=prior_loss_weight,
        initializer=initializer, validation_prompts=tuple(validation_prompt or ()),
        gradient_checkpointing=gradient_checkpointing, use_8bit_adam=use_8bit_adam,
        train_text_encoder=train_text_encoder)
    backend = backend or _default_backend()
    kernel = kernel_options(gpu, kernel_id=kernel_id, title=title, internet=internet,
                            template=metadata_template, hf_token_env=hf_token_env, force=force)
    run = jobs.generate(job, backend, out, kernel, reporter(), timeout_hours, timeout, name, 1,
                        targets)
    done(run, json)
