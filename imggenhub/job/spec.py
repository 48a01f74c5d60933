"""The job spec: prompts.json and the generation flags, validated into one JobSpec.

Everything is checked here, before anything runs; a bad value becomes one
SpecError sentence that names the field and the fix.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import secrets
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..engine import SCHEDULERS, plan_images
from ..errors import SpecError
from .models import DEFAULT_REFINER, HUB_ID, TINY_SDXL_REFINER, ModelPreset, resolve_model

MAX_STEPS = 500
MAX_GUIDANCE = 50.0
MAX_IMAGES_PER_PROMPT = 1000
MAX_IMAGES = 10000
MAX_BATCH = 64
SEED_MAX = 2**32 - 1
MAX_PROMPTS_BYTES = 16 << 20

Precision = Literal["auto", "fp16", "fp32"]


def _check_text(value: str | None, what: str) -> str | None:
    if value is None:
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} holds invalid Unicode (an unpaired surrogate)") from None
    return value


def _scheduler(value: str | None) -> str | None:
    if value is not None and value not in SCHEDULERS:
        raise ValueError(f"unknown scheduler '{value}'; choose one of {', '.join(SCHEDULERS)}")
    return value


Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]
Count = Annotated[int, Field(ge=1, le=MAX_IMAGES_PER_PROMPT)]
Side = Annotated[int, Field(ge=1)]
Steps = Annotated[int, Field(ge=1, le=MAX_STEPS)]
Guidance = Annotated[float, Field(ge=0.0, le=MAX_GUIDANCE)]
Strength = Annotated[float, Field(gt=0.0, le=1.0)]


class ImageParams(BaseModel):
    """The generation parameters of an image, spelled once: what a prompts.json entry may
    set, what the flags default, and what the resolved job, the engine's tasks and the
    image records carry (the engine names them ``wire.IMAGE_PARAMS``)."""

    negative_prompt: str | None = None
    seed: Seed | None = None
    width: Side | None = None
    height: Side | None = None
    steps: Steps | None = None
    guidance: Guidance | None = None
    init_image: str | None = None  # resolved: an absolute path on this machine (image-to-image)
    mask_image: str | None = None  # with init_image: inpainting (white = redraw)
    strength: Strength | None = None
    scheduler: str | None = None  # resolved: this prompt's own (a sweep's cell), else the job's

    _known_scheduler = field_validator("scheduler")(classmethod(lambda cls, v: _scheduler(v)))

    @field_validator("negative_prompt")
    @classmethod
    def _negative_ok(cls, value: str | None) -> str | None:
        return _check_text(value, "the negative prompt")


class PromptItem(ImageParams):
    """One entry of prompts.json; every field but ``prompt`` overrides a flag."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str
    num_images: Count | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the prompt is empty; write some text")
        return _check_text(value, "the prompt")


class Settings(ImageParams):
    """The generation flags: job-wide defaults under the per-prompt overrides."""

    model_config = ConfigDict(extra="forbid")

    model: str = "sdxl-turbo"
    num_images: Count = 1
    batch_size: int = Field(1, ge=1, le=MAX_BATCH)
    precision: Precision = "auto"
    gpu: bool = True
    lora: list[str] | None = None
    embedding: list[str] | None = None
    score: bool = False
    score_model: str | None = None
    sweep: list[str] | None = None
    refiner: str | None = None  # "default": the model's own refiner
    refiner_start: float | None = Field(None, gt=0.0, lt=1.0)


class ResolvedPrompt(ImageParams):
    """A prompt with every default applied: what the engine makes, image by image."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str
    num_images: Count
    steps: Steps
    guidance: Guidance
    lora_scale: float | None = None  # a sweep's cell: the first LoRA's scale
    refiner_start: float | None = None  # a sweep's cell: where the refiner takes over
    model: dict | None = None  # a model sweep's cell: its model (else the job's)
    cell: dict | None = None  # a sweep's cell: the swept values, as the user gave them
    sweep_of: int | None = None  # a sweep's cell: the number of the prompt it sweeps


class LoraRef(BaseModel):
    """A LoRA to load: a local .safetensors file (an absolute path), a Hub repo, or a file in
    a Hub repo (owner/name/file.safetensors); with its weight."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ref: str
    scale: float
    local: bool


class EmbeddingRef(BaseModel):
    """A textual-inversion embedding: a local file or a Hub ref, and the token it teaches."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ref: str
    token: str | None
    local: bool


class JobSpec(BaseModel):
    """A validated job: what the engine needs, and nothing about where it runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_name: str
    model: dict
    prompts: tuple[ResolvedPrompt, ...]
    loras: tuple[LoraRef, ...] = ()
    embeddings: tuple[EmbeddingRef, ...] = ()
    refiner: dict | None = None  # {"id": refiner model, "start": the share of steps the base runs}
    score: str | None = None  # the CLIP model that scores each image (None: no scores)
    sweep: tuple[tuple[str, tuple], ...] | None = None  # the swept axes: (name, values)
    seed: int
    batch_size: int
    scheduler: str | None
    precision: Precision
    gpu: bool

    @property
    def job_id(self) -> str:
        """Stable content hash of the validated spec: same spec, same id."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"),
                               ensure_ascii=True)
        return hashlib.sha256(canonical.encode("ascii")).hexdigest()[:16]

    def document(self) -> dict:
        """The job as the engine reads it (JSON-ready)."""
        return {"job_id": self.job_id, **self.model_dump(mode="json")}

    @property
    def image_count(self) -> int:
        return sum(p.num_images for p in self.prompts)


# ---------------------------------------------------------------------------
# Turning pydantic's findings into one sentence
# ---------------------------------------------------------------------------

_FLAG = {name: "--" + name.replace("_", "-") for name in Settings.model_fields}


def _sentence(exc: ValidationError, where: str, flags: bool = False) -> str:
    err = exc.errors(include_url=False)[0]
    loc = [str(part) for part in err["loc"]]
    field = loc[-1] if loc else ""
    name = _FLAG.get(field, field) if flags else field
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        allowed = ", ".join(PromptItem.model_fields)
        return f"{where}: unknown field '{field}'; the fields allowed are {allowed}."
    if err["type"] == "missing":
        return f"{where}: the field '{field}' is missing; add it."
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    shown = repr(err.get("input"))
    if len(shown) > 60:
        shown = shown[:57] + "..."
    subject = f"{where}: {name}" if name else where
    return f"{subject}: {msg[0].lower() + msg[1:]} (got {shown})."


def seed_for_name(name: str) -> int:
    """The base seed of a named run given no --seed: stable, so the name stays one job."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:4], "big")


def parse_settings(**flags) -> Settings:
    try:
        return Settings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        raise SpecError(_sentence(exc, "Invalid option", flags=True)) from None


def load_prompts(path: Path) -> list[PromptItem]:
    """Read prompts.json: a list of strings, or of objects with per-prompt overrides."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:  # bounded: a prompts file is never gigabytes (/dev/zero)
            raw = fh.read(MAX_PROMPTS_BYTES + 1)
    except FileNotFoundError:
        raise SpecError(f"Prompts file '{path}' not found; create it, pass --prompts-file PATH, "
                        "or give --prompt TEXT.") from None
    except IsADirectoryError:
        raise SpecError(f"Prompts file '{path}' is a folder; pass the path of a JSON file.") from None
    except OSError as exc:
        raise SpecError(f"Prompts file '{path}' cannot be read ({exc.strerror or exc}).") from None
    if len(raw) > MAX_PROMPTS_BYTES:
        raise SpecError(f"Prompts file '{path}' is larger than {MAX_PROMPTS_BYTES >> 20} MiB; split "
                        "the job into several files.")
    try:
        text = raw.decode("utf-8-sig")  # a BOM, as Notepad writes it, is fine
    except UnicodeDecodeError:
        raise SpecError(f"Prompts file '{path}' is not UTF-8 text; save it as UTF-8.") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError(f"Prompts file '{path}' is not valid JSON: {exc.msg} at line {exc.lineno} "
                        f"column {exc.colno}.") from None
    except RecursionError:
        raise SpecError(f"Prompts file '{path}' is nested too deeply; it should be a flat list of "
                        "prompts.") from None
    if not isinstance(data, list) or not data:
        raise SpecError(f"Prompts file '{path}' must hold a non-empty JSON list of prompts "
                        '(strings, or objects like {"prompt": "..."}).')
    items = [_item(entry, f"{path} item {i + 1}") for i, entry in enumerate(data)]
    for item in items:  # an input file named in prompts.json is relative to that file
        for field in ("init_image", "mask_image"):
            value = getattr(item, field)
            if value and not Path(value).expanduser().is_absolute():
                setattr(item, field, str(path.parent / value))
    return items


def _item(entry, where: str) -> PromptItem:
    if isinstance(entry, str):
        entry = {"prompt": entry}
    if not isinstance(entry, dict):
        raise SpecError(f"{where}: each prompt must be a string or an object with a \"prompt\" "
                        f"field (got {type(entry).__name__}).")
    try:
        return PromptItem(**entry)
    except ValidationError as exc:
        raise SpecError(_sentence(exc, where)) from None
    except TypeError:  # non-string keys cannot happen in JSON, but be safe
        raise SpecError(f"{where}: invalid fields.") from None


def prompts_from_flags(prompts: list[str]) -> list[PromptItem]:
    return [_item(p, f"--prompt {i + 1}") for i, p in enumerate(prompts)]


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
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()  # decoded whole, as the engine will: a cut-off file fails here
    except Image.DecompressionBombError as exc:
        return f"is too large a picture ({exc})"
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
    raise SpecError(f"--lora {value!r} is neither a .safetensors file here nor a Hub repo "
                    "(owner/name or owner/name/file.safetensors); add :SCALE for a weight.")


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
    raise SpecError(f"--embedding {value!r} is neither an embedding file here (.safetensors, .bin, "
                    ".pt) nor a Hub repo (owner/name or owner/name/file); add :TOKEN to name its "
                    "token.")


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
SWEEPABLE = ("steps", "guidance", "size", "strength", "scheduler", "lora-scale", "refiner-start",
             "model")
MAX_SWEEP_CELLS = 100


def parse_sweeps(values: list[str]) -> list[tuple[str, list]]:
    """--sweep NAME=V1,V2,... (repeatable) -> [(name, [values])], each value checked."""
    axes = []
    for raw in values:
        name, sep, rest = raw.partition("=")
        name = name.strip().lower()
        if not sep or not rest.strip():
            raise SpecError(f"--sweep {raw[:60]!r} must be NAME=V1,V2,... (for example "
                            "guidance=3,5,7).")
        if name not in SWEEPABLE:
            raise SpecError(f"--sweep {name}: sweepable are {', '.join(SWEEPABLE)}.")
        if name in (a for a, _ in axes):
            raise SpecError(f"--sweep {name} is given twice; give its values once.")
        parsed = []
        for value in (v.strip() for v in rest.split(",")):
            try:
                if name == "steps":
                    parsed.append(int(value))
                elif name in ("guidance", "strength", "lora-scale", "refiner-start"):
                    parsed.append(float(value))
                elif name == "size":
                    w, _, h = value.lower().partition("x")
                    parsed.append(f"{int(w)}x{int(h)}")
                elif name == "model":
                    resolve_model(value)
                    parsed.append(value)
                else:
                    if value not in SCHEDULERS:
                        raise ValueError
                    parsed.append(value)
            except ValueError:
                raise SpecError(f"--sweep {name}: {value[:40]!r} is not a {name} value.") from None
            _check_swept(name, parsed[-1])
        if len(set(parsed)) != len(parsed):
            raise SpecError(f"--sweep {name}: a value is given twice.")
        axes.append((name, parsed))
    cells = 1
    for _, vals in axes:
        cells *= len(vals)
    if cells > MAX_SWEEP_CELLS:
        raise SpecError(f"The sweep makes {cells} cells a prompt, more than {MAX_SWEEP_CELLS}; "
                        "sweep fewer values.")
    return axes


def _check_swept(name: str, value) -> None:
    """A swept value within the range its flag allows."""
    if name == "size":
        w, h = (int(x) for x in value.split("x"))
        fields = {"width": w, "height": h}
    elif name in ("steps", "guidance", "strength", "refiner-start"):
        fields = {name.replace("-", "_"): value}
    else:
        return
    try:
        Settings.model_validate(fields)
    except ValidationError as exc:
        why = exc.errors(include_url=False)[0]["msg"].lower()
        raise SpecError(f"--sweep {name}: {value} is out of range ({why}).") from None


def expand_sweeps(items: list[PromptItem], axes, base_seed: int):
    """Each prompt becomes one prompt per cell of the sweep, all with the prompt's seed, so
    that only the swept values change between cells."""
    import itertools

    out, cells = [], []
    for i, item in enumerate(items):
        seed = item.seed if item.seed is not None else (base_seed + i) % (SEED_MAX + 1)
        for combo in itertools.product(*(vals for _, vals in axes)):
            cell = dict(zip((name for name, _ in axes), combo))
            changes = {"seed": seed}
            extra = {}
            for name, value in cell.items():
                if name == "size":
                    w, h = (int(x) for x in value.split("x"))
                    changes.update(width=w, height=h)
                elif name in ("lora-scale", "refiner-start", "model"):
                    extra[name.replace("-", "_")] = value
                else:
                    changes[name] = value
            out.append(item.model_copy(update=changes))
            cells.append((cell, i, extra))
    return out, cells


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
        swept = dict(axes)
        if "lora-scale" in swept and not settings.lora:
            raise SpecError("--sweep lora-scale varies the first --lora's scale; give a --lora.")
        if any(not -10 <= v <= 10 for v in swept.get("lora-scale", [])):
            raise SpecError("--sweep lora-scale: each scale must be within -10..10.")
        if "refiner-start" in swept and refiner is None:
            raise SpecError("--sweep refiner-start needs --refiner.")
        if any(not 0 < v < 1 for v in swept.get("refiner-start", [])):
            raise SpecError("--sweep refiner-start: each value must be between 0 and 1.")
        if "model" in swept and (settings.lora or settings.embedding or refiner or
                                 settings.init_image or any(i.init_image for i in items)):
            raise SpecError("--sweep model: LoRAs, embeddings, a refiner and init images belong "
                            "to one model; sweep models over plain text-to-image prompts.")
        items, cells = expand_sweeps(items, axes, base_seed)
    if preset.pipeline == "kandinsky" and (settings.lora or settings.embedding):
        raise SpecError(f"LoRAs and embeddings apply to SD and SDXL models, not to {preset.name}.")
    resolved = []
    job_preset = preset
    for i, item in enumerate(items):
        cell, sweep_of, extra = cells[i]
        where = f"prompt {i + 1}" if cell is None else \
            f"prompt {sweep_of + 1} at " + ", ".join(f"{k}={v}" for k, v in cell.items())
        preset = resolve_model(extra["model"]) if "model" in extra else job_preset
        if "model" in extra:  # a model sweep's cell: that model, with its own defaults
            extra = {**extra, "model": preset.engine_dict()}
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
        resolved.append(ResolvedPrompt(
            prompt=item.prompt,
            negative_prompt=item.negative_prompt if item.negative_prompt is not None
            else settings.negative_prompt,
            seed=item.seed,
            num_images=item.num_images or settings.num_images,
            width=width, height=height,
            steps=steps, init_image=init, mask_image=mask, strength=strength,
            guidance=float(item.guidance if item.guidance is not None else
                           settings.guidance if settings.guidance is not None else preset.guidance),
            scheduler=item.scheduler, cell=cell, sweep_of=sweep_of,
            **extra,
        ))
    preset = job_preset
    total = sum(p.num_images for p in resolved)
    if total > MAX_IMAGES:
        raise SpecError(f"The job asks for {total} images, more than the {MAX_IMAGES} a job may hold; "
                        "split it into several jobs.")
    job = JobSpec(
        model_name=preset.name, model=preset.engine_dict(), prompts=tuple(resolved),
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
