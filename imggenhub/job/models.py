"""Model presets: which pipeline a model needs, its defaults, and its size rules."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from ..engine import TINY_KANDINSKY, TINY_RANDOM, TINY_SDXL, TINY_SDXL_REFINER, TINY_SHAPES

DEFAULT_REFINER = "stabilityai/stable-diffusion-xl-refiner-1.0"
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


@dataclass(frozen=True)
class ModelPreset:
    name: str
    id: str  # Hugging Face Hub id ("tiny-random" is built offline)
    pipeline: str  # "sd", "sdxl", "kandinsky", "auto" (all loaded with diffusers' AutoPipeline)
    width: int | None
    height: int | None
    steps: int
    guidance: float
    min_size: int = 256
    max_size: int = 2048
    size_multiple: int = 8
    variant: str | None = "fp16"
    vae_fp16_fix: bool = False
    note: str = ""
    refiner: str | None = None  # what a bare --refiner means for this model

    def engine_dict(self) -> dict:
        """What the engine needs to load the model (travels in the notebook)."""
        return {"id": self.id, "pipeline": self.pipeline, "variant": self.variant,
                "vae_fp16_fix": self.vae_fp16_fix}

    def as_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, ModelPreset] = {p.name: p for p in [
    ModelPreset("sdxl-turbo", "stabilityai/sdxl-turbo", "sdxl", 512, 512, 1, 0.0,
                vae_fp16_fix=True, note="one step, no guidance; fast"),
    ModelPreset("sd-turbo", "stabilityai/sd-turbo", "sd", 512, 512, 1, 0.0,
                note="one step, no guidance; fastest"),
    ModelPreset("sdxl", "stabilityai/stable-diffusion-xl-base-1.0", "sdxl", 1024, 1024, 30, 5.0,
                vae_fp16_fix=True, refiner=DEFAULT_REFINER,
                note="SDXL base 1.0; ~26 s an image on a T4; --refiner adds the refiner"),
    ModelPreset("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5", "sd", 512, 512, 30, 7.5,
                note="Stable Diffusion 1.5"),
    ModelPreset("sd14", "CompVis/stable-diffusion-v1-4", "sd", 512, 512, 50, 7.5,
                note="Stable Diffusion 1.4"),
    ModelPreset("playground-v2", "playgroundai/playground-v2-1024px-aesthetic", "sdxl", 1024, 1024,
                50, 3.0, vae_fp16_fix=True, note="SDXL architecture"),
    ModelPreset("kandinsky-2.2", "kandinsky-community/kandinsky-2-2-decoder", "kandinsky", 512, 512,
                25, 4.0, variant=None, size_multiple=64,
                note="prior and decoder through AutoPipeline; sizes are multiples of 64"),
    ModelPreset("tiny-shapes", TINY_SHAPES, "sd", 64, 64, 20, 7.0, min_size=32, max_size=128,
                size_multiple=16, variant=None,
                note="tiny SD pipeline trained here on drawn shapes ('a red circle on a white "
                     "background'); ships with imggenhub, runs on this machine"),
    ModelPreset("tiny-random", TINY_RANDOM, "sd", 64, 64, 4, 5.0, min_size=16, max_size=256,
                variant=None,
                note="tiny random SD pipeline built offline for tests and smoke runs; its images are noise"),
    ModelPreset("tiny-sdxl", TINY_SDXL, "sdxl", 64, 64, 10, 5.0, min_size=16, max_size=256,
                variant=None, refiner=TINY_SDXL_REFINER,
                note="tiny random SDXL base (two text encoders) with a tiny refiner; noise"),
    ModelPreset("tiny-kandinsky", TINY_KANDINSKY, "kandinsky", 64, 64, 4, 4.0, min_size=16,
                max_size=256, variant=None,
                note="tiny random Kandinsky 2.2, prior and decoder; noise"),
]}

# Any other Hub id: AutoPipeline with generic defaults; the size is the model's own.
GENERIC = dict(pipeline="auto", width=None, height=None, steps=30, guidance=7.5, variant="fp16",
               min_size=64)


def did_you_mean(name: str) -> str:
    """" (did you mean 'sdxl-turbo'?)" for a near miss of a preset's name or Hub id, else ""."""
    import difflib

    names = [*(p.name for p in PRESETS.values()), *(p.id for p in PRESETS.values())]
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.75)
    return f" (did you mean '{close[0]}'?)" if close else ""


def resolve_model(name: str) -> ModelPreset:
    """A preset by name (or by its Hub id), else a generic entry for any valid Hub id."""
    if name in PRESETS:
        return PRESETS[name]
    for preset in PRESETS.values():
        if preset.id == name:
            return preset
    folder = Path(name).expanduser()
    if (folder / "model_index.json").is_file() or name.startswith("/kaggle/input/"):
        # a diffusers folder: on this machine, or a Kaggle dataset/model the kernel mounts
        path = str(folder.resolve()) if folder.is_dir() else name
        return ModelPreset(name=path, id=path, note="a local diffusers folder", **GENERIC)
    if not HUB_ID.match(name):
        known = ", ".join(PRESETS)
        raise ValueError(
            f"'{name}' is neither a preset{did_you_mean(name) or f' ({known})'}, a Hugging Face "
            "model id like 'owner/name', nor a diffusers folder")
    return ModelPreset(name=name, id=name, note="any Hub id, loaded with AutoPipeline", **GENERIC)
