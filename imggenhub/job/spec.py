"""The job spec: prompts.json and the generation flags, validated into one JobSpec.

Everything is checked here, before anything runs; a bad value becomes one
SpecError sentence that names the field and the fix.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..engine import SCHEDULERS
from ..errors import SpecError

MAX_STEPS = 500
MAX_GUIDANCE = 50.0
MAX_IMAGES_PER_PROMPT = 1000
MAX_IMAGES = 10000
MAX_BATCH = 64
SEED_MAX = 2**32 - 1
MAX_PROMPTS_BYTES = 16 << 20

Precision = Literal["auto", "fp16", "fp32"]
Quantize = Literal["auto", "none", "int8", "nf4"]


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
    quantize: Quantize = "auto"
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

    @property
    def kind(self) -> str:
        return "images"  # what a run of it produces (run.kinds)

    def local_files(self) -> list[str]:
        """The distinct files on this machine the job names, in the order it names them
        (what a remote backend ships)."""
        paths = [p for item in self.prompts for p in (item.init_image, item.mask_image)]
        paths += [ref.ref for ref in (*self.loras, *self.embeddings) if ref.local]
        return list(dict.fromkeys(p for p in paths if p))

    def summary(self) -> str:
        """What a run of it makes, as its first line says: the images, and the model (each
        model of a model sweep)."""
        from ..engine import images_text

        ids = dict.fromkeys((p.model or self.model)["id"] for p in self.prompts)
        return f"{images_text(self.image_count)} with {', '.join(ids)}"


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
