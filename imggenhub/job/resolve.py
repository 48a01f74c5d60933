"""Resolving a job: the flags and prompts (validated by ``spec``) with the model's
defaults, the files they name checked (init images, masks, LoRAs, embeddings), the sweep
expanded and the refiner fitted, into one JobSpec the engine's planner accepts."""

from __future__ import annotations

import functools
import re
import secrets
from pathlib import Path

from ..engine import PictureTooLarge, open_picture, plan_images
from ..errors import SpecError
from .models import (
    DEFAULT_REFINER,
    HUB_ID,
    TINY_SDXL_REFINER,
    ModelPreset,
    resolve_model,
)
from .spec import (
    MAX_IMAGES,
    SEED_MAX,
    EmbeddingRef,
    JobSpec,
    LoraRef,
    PromptItem,
    ResolvedPrompt,
    Settings,
    load_prompts,
    prompts_from_flags,
)
from .sweeps import check_sweep, expand_sweeps, parse_sweeps


def _check_size(value: int, preset: ModelPreset, what: str) -> None:
    m = preset.size_multiple
    if value % m:
        lo, hi = value - value % m, value - value % m + m
        raise SpecError(f"{what} {value} is not a multiple of {m}; use {lo or hi} or {hi}.")
    if not preset.min_size <= value <= preset.max_size:
        raise SpecError(f"{what} {value} is outside {preset.min_size}..{preset.max_size} for "
                        f"model {preset.name}; pick a size in that range.")



DEFAULT_STRENGTH = 0.8
MAX_INPUT_BYTES = 50 << 20


def _input_file(value: str, where: str, what: str = "init image") -> str:
    """An input picture: an existing, bounded file on this machine, as an absolute path."""
    path = Path(value).expanduser()
    try:
        size = path.stat().st_size
    except OSError:
        raise SpecError(f"{where}: {what} '{value}' not found; give the path of a picture.") \
            from None
    if not path.is_file():
        raise SpecError(f"{where}: {what} '{value}' is not a file.")
    if size > MAX_INPUT_BYTES:
        raise SpecError(f"{where}: {what} '{value}' is larger than 50 MiB.")
    problem = _picture_problem(str(path.resolve()), size, path.stat().st_mtime_ns)
    if problem:
        raise SpecError(f"{where}: {what} '{value}' {problem}.")
    return str(path.resolve())


@functools.lru_cache(maxsize=256)  # one look per file, however many prompts name it
def _picture_problem(path: str, size: int, mtime: int) -> str | None:
    """What keeps a file from being used as an input picture or mask, if anything."""
    try:
        with open_picture(path) as image:  # its size from the header, before decoding
            image.load()  # decoded whole, as the engine will: a cut-off file fails here
    except PictureTooLarge as exc:
        return f"{exc.reason}; shrink it"
    except Exception as exc:  # Pillow's decoders raise many kinds for a damaged file
        reason = "not a picture Pillow can read" if "identify" in str(exc) else f"damaged: {exc}"
        return f"is {reason}; give a PNG, JPEG or WebP file"
    return None  # every mode a file holds converts to RGB, and from there to a mask's L


MAX_LORA_BYTES = 2 << 30


def parse_lora(value: str) -> LoraRef:
    """REF[:SCALE] -> a LoRA reference, checked (a local file must exist, a Hub ref must be
    owner/name or owner/name/file.safetensors)."""
    ref, scale = value, 1.0
    head, sep, tail = value.rpartition(":")
    if sep and head:
        try:
            ref, scale = head, float(tail)
        except ValueError:
            pass
    if not -10.0 <= scale <= 10.0:
        raise SpecError(f"--lora {value!r}: the scale {scale} is outside -10..10.")
    path = Path(ref).expanduser()
    if ref.endswith(".safetensors") and path.is_file():
        if path.stat().st_size > MAX_LORA_BYTES:
            raise SpecError(f"--lora {value!r}: the file is larger than 2 GiB; it is no LoRA.")
        return LoraRef(ref=str(path.resolve()), scale=scale, local=True)
    if _hub_ref(ref, (".safetensors",)):
        return LoraRef(ref=ref, scale=scale, local=False)
    if ref.endswith(".safetensors") and (ref.startswith((".", "/", "~")) or path.parent.is_dir()):
        raise SpecError(f"--lora {value!r}: the file {ref} is not found here.")
    trained = _trained(ref, "lora", f"--lora {value!r}")
    if trained is not None:
        return LoraRef(ref=trained["file"], scale=scale, local=True)
    raise SpecError(f"--lora {value!r} is neither a .safetensors file here, a Hub repo "
                    "(owner/name or owner/name/file.safetensors) nor a name 'imggenhub train' "
                    "gave a LoRA; add :SCALE for a weight.")


def _trained(name: str, method: str, flag: str) -> dict | None:
    """The weights 'imggenhub train' registered under ``name`` (None: no such name)."""
    from ..run import trained

    from ..engine.training import LORAS

    entry = trained.find(name)
    if entry is None:
        return None
    made = "lora" if entry.get("method") in LORAS else entry.get("method")
    if made != method:
        raise SpecError(f"{flag}: '{name}' names a {entry.get('method')} trained here, not a "
                        f"{method}; use --{'lora' if entry.get('method') == 'lora' else 'embedding'}.")
    return entry


EMBEDDING_SUFFIXES = (".safetensors", ".bin", ".pt")
TOKEN = re.compile(r"^[^\s/:]{1,40}$")


def _hub_ref(ref: str, suffixes: tuple[str, ...]) -> bool:
    """owner/name, or owner/name/file with one of ``suffixes``."""
    parts = ref.split("/")
    return len(parts) in (2, 3) and bool(HUB_ID.match("/".join(parts[:2]))) and (
        len(parts) == 2 or (parts[2].endswith(suffixes) and ".." not in parts[2]))


def parse_embedding(value: str) -> EmbeddingRef:
    """REF[:TOKEN] -> a textual-inversion embedding (a local file's token defaults to <stem>)."""
    ref, token = value, None
    head, sep, tail = value.rpartition(":")
    if sep and head and TOKEN.match(tail):
        ref, token = head, tail
    path = Path(ref).expanduser()
    if ref.endswith(EMBEDDING_SUFFIXES) and path.is_file():
        if path.stat().st_size > MAX_INPUT_BYTES:
            raise SpecError(f"--embedding {value!r}: the file is larger than 50 MiB.")
        return EmbeddingRef(ref=str(path.resolve()), token=token or f"<{path.stem}>", local=True)
    if _hub_ref(ref, EMBEDDING_SUFFIXES):
        return EmbeddingRef(ref=ref, token=token, local=False)
    trained = _trained(ref, "textual-inversion", f"--embedding {value!r}")
    if trained is not None:
        return EmbeddingRef(ref=trained["file"], token=token or trained.get("token"), local=True)
    raise SpecError(f"--embedding {value!r} is neither an embedding file here (.safetensors, .bin, "
                    ".pt), a Hub repo (owner/name or owner/name/file) nor a name 'imggenhub "
                    "train' gave an embedding; add :TOKEN to name its token.")


def _score_model(settings: Settings) -> str | None:
    from ..engine import DEFAULT_SCORE_MODEL, TINY_CLIP

    if not settings.score:
        if settings.score_model is not None:
            raise SpecError("--score-model applies with --score; add it.")
        return None
    model = settings.score_model or DEFAULT_SCORE_MODEL
    if model != TINY_CLIP and not HUB_ID.match(model):
        raise SpecError(f"--score-model {model[:80]!r} is not a Hugging Face model id like "
                        "openai/clip-vit-large-patch14.")
    return model


# What a sweep may vary: each cell is a prompt with its own values of these.
REFINER_FLAG = "default"  # what a bare --refiner stands for
DEFAULT_REFINER_START = 0.8


def _refiner(settings: Settings, preset: ModelPreset) -> dict | None:
    """--refiner [MODEL] / --refiner-start F -> the job's refiner, checked."""
    if settings.refiner is None:
        if settings.refiner_start is not None:
            raise SpecError("--refiner-start applies with --refiner; add it.")
        return None
    if preset.pipeline != "sdxl":
        raise SpecError(f"--refiner hands SDXL latents to the SDXL refiner; model {preset.name} is "
                        "not an SDXL model (try --model sdxl).")
    value = settings.refiner
    tiny = preset.refiner == TINY_SDXL_REFINER
    if value == REFINER_FLAG:
        value = preset.refiner or DEFAULT_REFINER
    elif value != TINY_SDXL_REFINER:
        folder = Path(value).expanduser()
        if (folder / "model_index.json").is_file():
            value = str(folder.resolve())
        elif not HUB_ID.match(value):
            raise SpecError(f"--refiner {value!r} is neither a Hugging Face model id (owner/name) nor "
                            "a diffusers folder; give none for the default refiner.")
    if tiny != (value == TINY_SDXL_REFINER):
        raise SpecError(f"--refiner {value} does not fit model {preset.name}: the tiny SDXL pairs only "
                        "with its tiny refiner, and the tiny refiner only with it.")
    start = settings.refiner_start if settings.refiner_start is not None else DEFAULT_REFINER_START
    return {"id": value, "start": start}


def _check_refined(refiner: dict, steps: int, where: str) -> None:
    base = round(steps * refiner["start"])
    if base < 1 or steps - base < 1:
        need = max(-(-1 // refiner["start"]), -(-1 // (1 - refiner["start"])), 2)
        raise SpecError(f"{where}: {steps} steps with --refiner-start {refiner['start']:g} leave "
                        f"the {'base' if base < 1 else 'refiner'} no step; use at least {need:.0f} "
                        "steps.")


def build_job(settings: Settings, items: list[PromptItem]) -> JobSpec:
    """Resolve presets, flags and per-prompt overrides into a JobSpec."""
    try:
        preset = resolve_model(settings.model)
    except ValueError as exc:
        raise SpecError(f"Invalid option: --model: {exc}.") from None
    refiner = _refiner(settings, preset)
    score = _score_model(settings)
    base_seed = settings.seed if settings.seed is not None else secrets.randbelow(SEED_MAX + 1)
    axes = parse_sweeps(settings.sweep or [])
    cells: list[tuple[dict | None, int | None, dict]] = [(None, None, {})] * len(items)
    if axes:
        check_sweep(axes, settings, items, refiner)
        items, cells = expand_sweeps(items, axes, base_seed)
    if preset.pipeline == "kandinsky" and (settings.lora or settings.embedding):
        raise SpecError(f"LoRAs and embeddings apply to SD and SDXL models, not to {preset.name}.")
    if preset.pipeline in ("flux", "sd3") and settings.embedding:
        raise SpecError(f"textual-inversion embeddings apply to SD and SDXL models, not to "
                        f"{preset.name}; a LoRA (--lora) does.")
    if settings.precision != "auto" and preset.memory:
        raise SpecError(f"{preset.name} takes its dtypes from its memory plan (fp16 on a T4, bf16 "
                        "where the card has it, its VAE in fp32 where fp16 is unsafe); leave "
                        "--precision out.")
    if settings.quantize != "auto" and not preset.memory:
        raise SpecError(f"--quantize applies to FLUX and SD 3.5 models (flux-schnell, flux-dev, "
                        f"flux-fill, sd35-medium, sd35-large, sd35-large-turbo), not to "
                        f"{preset.name}.")
    resolved = [_resolve(i, item, cells[i], settings, preset, refiner)
                for i, item in enumerate(items)]
    total = sum(p.num_images for p in resolved)
    if total > MAX_IMAGES:
        raise SpecError(f"The job asks for {total} images, more than the {MAX_IMAGES} a job may hold; "
                        "split it into several jobs.")
    job = JobSpec(
        model_name=preset.name, model=preset.engine_dict(settings.quantize), prompts=tuple(resolved),
        seed=base_seed, sweep=tuple((n, tuple(v)) for n, v in axes) or None,
        batch_size=settings.batch_size, scheduler=settings.scheduler,
        precision=settings.precision, gpu=settings.gpu,
        loras=tuple(parse_lora(v) for v in settings.lora or ()),
        embeddings=tuple(parse_embedding(v) for v in settings.embedding or ()), refiner=refiner,
        score=score)
    plan_images(job.document())  # the engine's own planner accepts it
    return job


def job_from_inputs(settings: Settings, prompts: list[str] | None, prompts_file: Path) -> JobSpec:
    """``--prompt`` (any number) replaces the prompts file entirely."""
    items = prompts_from_flags(prompts) if prompts else load_prompts(prompts_file)
    return build_job(settings, items)


def _resolve(i: int, item: PromptItem, cell_of: tuple, settings: Settings, job_preset: ModelPreset,
             refiner: dict | None) -> ResolvedPrompt:
    """One prompt with every default applied (the prompt's own, the flags', the model's),
    checked as a whole: sizes, init image and mask, strength, the refiner's steps."""
    cell, sweep_of, extra = cell_of
    where = f"prompt {i + 1}" if cell is None else \
        f"prompt {sweep_of + 1} at " + ", ".join(f"{k}={v}" for k, v in cell.items())
    preset = resolve_model(extra["model"]) if "model" in extra else job_preset
    if "model" in extra:  # a model sweep's cell: that model, with its own defaults
        extra = {**extra, "model": preset.engine_dict(settings.quantize)}
    width = item.width or settings.width or preset.width
    height = item.height or settings.height or preset.height
    if (width is None) != (height is None):
        raise SpecError(f"{where}: model {preset.name} has no default size; give both width "
                        "and height.")
    if width is not None:
        _check_size(width, preset, f"{where}: width" if item.width else "--width")
        _check_size(height, preset, f"{where}: height" if item.height else "--height")
    steps = item.steps or settings.steps or preset.steps
    init = item.init_image or settings.init_image
    mask = item.mask_image or settings.mask_image
    strength = item.strength if item.strength is not None else settings.strength
    if init is None and (strength is not None or mask is not None):
        given = " and ".join(f for f, v in (("--strength", strength), ("--mask-image", mask))
                             if v is not None)
        raise SpecError(f"{where}: {given} appl{'y' if ' and ' in given else 'ies'} to an "
                        "--init-image; give it too.")
    if init is not None and refiner is not None:
        raise SpecError(f"{where}: --refiner applies to text-to-image prompts; run the "
                        "image-to-image ones as another job.")
    negative = item.negative_prompt if item.negative_prompt is not None else settings.negative_prompt
    if negative and preset.pipeline == "flux":
        raise SpecError(f"{where}: FLUX is guidance-distilled and takes no negative prompt; "
                        "say it in the prompt instead.")
    if preset.fill and mask is None:
        raise SpecError(f"{where}: {preset.name} redraws the masked part of a picture; give "
                        "it --init-image and --mask-image (white is redrawn).")
    if init is not None and preset.pipeline == "kandinsky":
        raise SpecError(f"{where}: image-to-image and inpainting are offered for SD and SDXL "
                        f"models, not for {preset.name}.")
    if refiner is not None:
        _check_refined({**refiner, "start": extra.get("refiner_start") or refiner["start"]},
                       steps, where)
    if mask is not None:
        mask = _input_file(mask, where, "mask image")
    if init is not None:
        init = _input_file(init, where)
        if strength is None:
            strength = 1.0 if mask else DEFAULT_STRENGTH
        if int(steps * strength) < 1:
            raise SpecError(f"{where}: {steps} steps x strength {strength} leaves no "
                            f"denoising step; use at least {-(-1 // strength):.0f} steps or "
                            "a higher --strength.")
    return ResolvedPrompt(
        prompt=item.prompt,
        negative_prompt=negative,
        seed=item.seed,
        num_images=item.num_images or settings.num_images,
        width=width, height=height,
        steps=steps, init_image=init, mask_image=mask, strength=strength,
        guidance=float(item.guidance if item.guidance is not None else
                       settings.guidance if settings.guidance is not None else preset.guidance),
        scheduler=item.scheduler, cell=cell, sweep_of=sweep_of,
        **extra,
    )
