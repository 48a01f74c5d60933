"""A training job: the second kind of run (``imggenhub train``). Its flags checked, its pictures
read and checked on this machine before anything is uploaded (one sentence for the first
problem), into one TrainSpec that the same backends, driver and lifecycle carry as they carry
a generation job; its one product is the trained weights (``engine.WEIGHTS``)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..engine import WEIGHTS, sha256_of
from ..engine.training import DEFAULTS, METHODS, TrainingDataError, check_examples, read_examples
from ..errors import SpecError
from .models import resolve_model
from .spec import SEED_MAX, Guidance, Precision, Steps

MAX_EXAMPLES = 10_000
MAX_STEPS = 1_000_000
MAX_CLASS_IMAGES = 1_000
CLASS_IMAGES = 100  # DreamBooth's class pictures when --class-prompt is given (diffusers' default)
NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class Example(BaseModel):
    """One training picture: where it is on this machine, its caption, its name in the
    training folder, its sha256 (the job's identity changes when a picture does)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str
    text: str
    name: str
    sha256: str


class TrainSettings(BaseModel):
    """The training settings, named as diffusers' training scripts name them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["lora", "dreambooth-lora", "textual-inversion"] = "lora"
    steps: int = Field(DEFAULTS["steps"], ge=1, le=MAX_STEPS)
    rank: int = Field(DEFAULTS["rank"], ge=1, le=256)
    learning_rate: float = Field(DEFAULTS["learning_rate"], gt=0, le=1.0)
    resolution: int = Field(DEFAULTS["resolution"], ge=16, le=2048)
    batch_size: int = Field(DEFAULTS["batch_size"], ge=1, le=256)
    checkpoint_every: int = Field(0, ge=0, le=MAX_STEPS)
    seed: int = Field(0, ge=0, le=SEED_MAX)
    name: str = Field("lora", pattern=NAME)
    token: str | None = Field(None, min_length=1, max_length=64)
    initializer: str | None = Field(None, min_length=1, max_length=64)
    validation_prompts: tuple[str, ...] = Field((), max_length=16)
    # the pictures a run draws itself (validation, DreamBooth's class pictures; the class
    # pictures at the validation guidance): build_train_spec gives the model preset's steps
    # and guidance (drawing_defaults) unless given; the engine's defaults otherwise
    validation_steps: Steps = DEFAULTS["validation_steps"]
    validation_guidance: Guidance = DEFAULTS["validation_guidance"]
    class_steps: Steps = DEFAULTS["class_steps"]
    gradient_checkpointing: bool = False
    gradient_accumulation: int = Field(1, ge=1, le=1024)
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = "constant"
    lr_warmup_steps: int = Field(0, ge=0, le=MAX_STEPS)
    class_prompt: str | None = Field(None, min_length=1, max_length=1000)
    class_images: int = Field(0, ge=0, le=MAX_CLASS_IMAGES)
    prior_loss_weight: float = Field(1.0, ge=0.0, le=100.0)
    use_8bit_adam: bool = False
    train_text_encoder: bool = False


class TrainSpec(BaseModel):
    """A validated training job: what the engine needs, and nothing about where it runs.
    It names no prompts, LoRAs or refiner (what a generation job's other readers look for)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["weights"] = WEIGHTS
    model_name: str
    model: dict
    training: TrainSettings
    examples: tuple[Example, ...] = Field(min_length=1, max_length=MAX_EXAMPLES)
    precision: Precision
    gpu: bool
    prompts: tuple = ()
    loras: tuple = ()
    embeddings: tuple = ()
    refiner: None = None

    @property
    def job_id(self) -> str:
        """Stable content hash: same pictures (by content), captions and settings, same id."""
        data = self.model_dump(mode="json")
        data["examples"] = [{k: e[k] for k in ("name", "text", "sha256")} for e in data["examples"]]
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canonical.encode("ascii")).hexdigest()[:16]

    def document(self) -> dict:
        """The job as the engine reads it (JSON-ready)."""
        return {"job_id": self.job_id, "kind": WEIGHTS, "model": self.model,
                "model_name": self.model_name, "training": self.training.model_dump(mode="json"),
                "examples": [e.model_dump(mode="json") for e in self.examples],
                "precision": self.precision, "gpu": self.gpu}

    @property
    def image_count(self) -> int:
        return 1  # the job's one item: the weights

    def local_files(self) -> list[str]:
        """The files on this machine the job names (what a remote backend ships)."""
        return list(dict.fromkeys(e.file for e in self.examples))

    def summary(self) -> str:
        return (f"a {self.training.method} trained on {len(self.examples)} pictures with "
                f"{self.model['id']}")


def drawing_defaults(preset) -> dict:
    """How a run draws its own pictures (validation, DreamBooth's class pictures): as
    ``generate`` draws with the model, at its preset's steps and guidance (sdxl-turbo: one
    step and no guidance, where 20 steps at 7 burn its pictures)."""
    return {"validation_steps": preset.steps, "class_steps": preset.steps,
            "validation_guidance": preset.guidance}


def build_train_spec(images: Path, model: str, instance_prompt: str | None = None,
                     precision: str = "auto", gpu: bool = True, **settings) -> TrainSpec:
    """The training job of the flags: the model resolved, the settings checked, the pictures
    read (captions from metadata.jsonl, .txt files or the instance prompt) and checked.
    Raises SpecError with one sentence."""
    try:
        preset = resolve_model(model)
    except ValueError as exc:
        raise SpecError(f"--model: {exc}.") from None
    if preset.pipeline not in ("sd", "sdxl", "auto"):
        raise SpecError(f"--model {model}: fine-tuning takes Stable Diffusion 1.x, 2.x and SDXL "
                        f"models, not {preset.pipeline} ones.")
    given = {k: v for k, v in settings.items() if v is not None}
    if given.get("resolution") is None and preset.width:
        given["resolution"] = preset.width  # the model's own size (512 for SD 1.5)
    given = {**drawing_defaults(preset), **given}
    try:
        train = TrainSettings(**given)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        field = str(err["loc"][-1]) if err["loc"] else ""
        flag = {"validation_prompts": "--validation-prompt",  # the next three have no flags
                "validation_steps": "the validation pictures' steps",
                "class_steps": "the class pictures' steps",
                "validation_guidance": "the validation pictures' guidance"}.get(
            field, "--" + field.replace("_", "-"))
        msg = err["msg"].removeprefix("Value error, ")
        shown = repr(err.get("input"))
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise SpecError(f"{flag}: {msg[0].lower() + msg[1:]} (got {shown}).") from None
    if train.method == "textual-inversion" and not train.token:
        raise SpecError("--method textual-inversion needs --token, the new word it learns "
                        "(such as <my-thing>), and --initializer, a word to start from.")
    if train.method != "textual-inversion" and (train.token or train.initializer):
        raise SpecError("--token and --initializer are for --method textual-inversion; a LoRA "
                        "learns from the captions as they are.")
    if train.method != "dreambooth-lora" and (train.class_prompt or train.class_images):
        raise SpecError("--class-prompt and --num-class-images are for --method dreambooth-lora "
                        "(prior preservation).")
    if train.method == "textual-inversion" and train.use_8bit_adam:
        raise SpecError("--use-8bit-adam is for a LoRA (--method lora or dreambooth-lora): "
                        "textual inversion trains one embedding, whose optimizer state is small.")
    if train.method == "textual-inversion" and train.train_text_encoder:
        raise SpecError("--train-text-encoder is for a LoRA (--method lora or dreambooth-lora): "
                        "textual inversion trains the text encoders' embedding of one token.")
    if train.class_images and not train.class_prompt:
        raise SpecError("--num-class-images needs --class-prompt, the prompt the class pictures "
                        "are drawn from (such as 'a photo of a dog').")
    if train.class_prompt and not train.class_images:
        train = train.model_copy(update={"class_images": CLASS_IMAGES})
    if train.method == "dreambooth-lora" and not instance_prompt:
        raise SpecError("--method dreambooth-lora needs --instance-prompt, the prompt with the "
                        "new word that names what the pictures show ('a photo of sks dog').")
    try:
        found = read_examples(images, instance_prompt)
        check_examples(found, train.resolution)
    except TrainingDataError as exc:
        raise SpecError(str(exc)) from None
    if len(found) > MAX_EXAMPLES:
        raise SpecError(f"{len(found)} pictures to train on; at most {MAX_EXAMPLES} go in one run.")
    examples = tuple(Example(file=str(Path(e["file"]).resolve()), text=e["text"], name=e["name"],
                             sha256=sha256_of(e["file"])) for e in found)
    return TrainSpec(model_name=preset.name, model=preset.engine_dict(), training=train,
                     examples=examples, precision=precision, gpu=gpu)


__all__ = ["METHODS", "TrainSpec", "TrainSettings", "build_train_spec", "drawing_defaults"]
