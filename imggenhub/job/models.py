"""Model presets: which pipeline a model needs, its defaults, and its size rules."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from ..engine import (TINY_FLUX, TINY_FLUX_FILL, TINY_KANDINSKY, TINY_RANDOM, TINY_SD3, TINY_SDXL, TINY_SDXL_REFINER,
                      TINY_SHAPES)
from ..shapes import GUIDANCE as TINY_SHAPES_GUIDANCE

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
    memory: str | None = None  # its family in the memory plan's table (engine/memory.py)
    max_sequence_length: int | None = None  # T5's tokens (FLUX, SD 3.5)
    licence: str = ""  # the Hub's licence tag, where it restricts use
    gated: bool = False  # the Hub asks to accept its terms: a token is needed
    fill: bool = False  # it redraws the masked part of a picture only (FLUX.1 Fill)

    def engine_dict(self, quantize: str = "auto") -> dict:
        """What the engine needs to load the model (travels in the notebook)."""
        planned = {"memory": self.memory, "max_sequence_length": self.max_sequence_length,
                   **({"quantize": quantize} if quantize != "auto" else {}),
                   **({"fill": True} if self.fill else {})} if self.memory else {}
        return {"id": self.id, "pipeline": self.pipeline, "variant": self.variant,
                "vae_fp16_fix": self.vae_fp16_fix, **planned}

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
    ModelPreset("flux-schnell", "black-forest-labs/FLUX.1-schnell", "flux", 1024, 1024, 4, 0.0,
                variant=None, size_multiple=16, memory="flux", max_sequence_length=256,
                licence="apache-2.0",
                note="FLUX.1 schnell (12B), 4 steps; NF4 on a T4 by default"),
    ModelPreset("flux-dev", "black-forest-labs/FLUX.1-dev", "flux", 1024, 1024, 28, 3.5,
                variant=None, size_multiple=16, memory="flux", max_sequence_length=512,
                licence="flux-1-dev-non-commercial-license", gated=True,
                note="FLUX.1 dev (12B), guidance-distilled; NF4 on a T4 by default"),
    ModelPreset("flux-fill", "black-forest-labs/FLUX.1-Fill-dev", "flux", 1024, 1024, 50, 30.0,
                variant=None, size_multiple=16, memory="flux", max_sequence_length=512,
                licence="flux-1-dev-non-commercial-license", gated=True, fill=True,
                note="FLUX.1 Fill dev (12B): redraws a masked region (--init-image and "
                     "--mask-image); planned as FLUX.1"),
    ModelPreset("sd35-medium", "stabilityai/stable-diffusion-3.5-medium", "sd3", 1024, 1024, 40,
                4.5, variant=None, size_multiple=16, memory="sd3-medium", max_sequence_length=256,
                licence="stabilityai-ai-community", gated=True, note="SD 3.5 medium (2.5B)"),
    ModelPreset("sd35-large", "stabilityai/stable-diffusion-3.5-large", "sd3", 1024, 1024, 28, 3.5,
                variant=None, size_multiple=16, memory="sd3-large", max_sequence_length=256,
                licence="stabilityai-ai-community", gated=True, note="SD 3.5 large (8B)"),
    ModelPreset("sd35-large-turbo", "stabilityai/stable-diffusion-3.5-large-turbo", "sd3", 1024,
                1024, 4, 0.0, variant=None, size_multiple=16, memory="sd3-large",
                max_sequence_length=256, licence="stabilityai-ai-community", gated=True,
                note="SD 3.5 large turbo (8B), 4 steps, no guidance"),
    ModelPreset("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5", "sd", 512, 512, 30, 7.5,
                note="Stable Diffusion 1.5"),
    ModelPreset("sd14", "CompVis/stable-diffusion-v1-4", "sd", 512, 512, 50, 7.5,
                note="Stable Diffusion 1.4"),
    ModelPreset("playground-v2", "playgroundai/playground-v2-1024px-aesthetic", "sdxl", 1024, 1024,
                50, 3.0, vae_fp16_fix=True, note="SDXL architecture"),
    ModelPreset("kandinsky-2.2", "kandinsky-community/kandinsky-2-2-decoder", "kandinsky", 512, 512,
                25, 4.0, variant=None, size_multiple=64,
                note="prior and decoder through AutoPipeline; sizes are multiples of 64"),
    ModelPreset("tiny-shapes", TINY_SHAPES, "sd", 64, 64, 20, TINY_SHAPES_GUIDANCE, min_size=32, max_size=128,
                size_multiple=16, variant=None,
                note="tiny SD pipeline trained here on drawn shapes ('a red circle on a white "
                     "background'); ships with imggenhub, runs on this machine"),
    ModelPreset("tiny-random", TINY_RANDOM, "sd", 64, 64, 4, 5.0, min_size=16, max_size=256,
                variant=None,
                note="tiny random SD pipeline built offline for tests and smoke runs; its images are noise"),
    ModelPreset("tiny-sdxl", TINY_SDXL, "sdxl", 64, 64, 10, 5.0, min_size=16, max_size=256,
                variant=None, refiner=TINY_SDXL_REFINER,
                note="tiny random SDXL base (two text encoders) with a tiny refiner; noise"),
    ModelPreset("tiny-flux", TINY_FLUX, "flux", 64, 64, 4, 3.5, min_size=16, max_size=256,
                size_multiple=16, variant=None, memory="tiny-flux", max_sequence_length=64,
                note="tiny random FLUX.1 (CLIP, T5, one double and one single block); noise"),
    ModelPreset("tiny-flux-fill", TINY_FLUX_FILL, "flux", 64, 64, 4, 30.0, min_size=16,
                max_size=256, size_multiple=16, variant=None, memory="tiny-flux",
                max_sequence_length=64, fill=True,
                note="tiny random FLUX.1 Fill (the mask and masked picture as inputs); noise"),
    ModelPreset("tiny-sd3", TINY_SD3, "sd3", 64, 64, 4, 5.0, min_size=16, max_size=256,
                size_multiple=16, variant=None, memory="tiny-sd3", max_sequence_length=64,
                note="tiny random SD 3.5 (two CLIPs, T5, one MMDiT layer); noise"),
    ModelPreset("tiny-kandinsky", TINY_KANDINSKY, "kandinsky", 64, 64, 4, 4.0, min_size=16,
                max_size=256, variant=None,
                note="tiny random Kandinsky 2.2, prior and decoder; noise"),
]}

# Any other Hub id: AutoPipeline with generic defaults; the size is the model's own.
GENERIC = dict(pipeline="auto", width=None, height=None, steps=30, guidance=7.5, variant="fp16",
               min_size=64)
# Other Hub ids of the planned families (fine-tunes, repacks): their family's defaults
# (FLUX.1's Canny, Depth, Redux and Kontext need other pipelines and inputs: not these)
FAMILY_IDS = [(re.compile(r"flux\.?1.*fill", re.I), "flux-fill"),
              (re.compile(r"^(?!.*(fill|canny|depth|redux|kontext)).*flux\.?1", re.I), "flux-dev"),
              (re.compile(r"stable-diffusion-3(\.5)?-large", re.I), "sd35-large"),
              (re.compile(r"stable-diffusion-3(\.5)?-medium|sd3(\.5)?[-_]medium", re.I),
               "sd35-medium")]


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
    for pattern, like in FAMILY_IDS:
        if pattern.search(name):
            from dataclasses import replace

            return replace(PRESETS[like], name=name, id=name, licence="", gated=False,
                           note=f"a Hub id of {PRESETS[like].note.split(' (')[0]}'s family, "
                                f"with {like}'s defaults")
    return ModelPreset(name=name, id=name, note="any Hub id, loaded with AutoPipeline", **GENERIC)
