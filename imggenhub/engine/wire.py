"""The wire names the engine, the notebook's run cell and the host share (one spelling),
and the progress lines a poller reads from the kernel log."""

from __future__ import annotations

import logging

ENGINE_VERSION = 3
# The wire names the engine, the notebook's run cell and the host share (one spelling).
PROGRESS_PREFIX = "[imggenhub]"
MANIFEST = "manifest.json"
PARTS_DIR = ".parts"
BUNDLES_DIR = "bundles"  # big jobs: the images again, packed in tar bundles
OUTPUT_DIR = "output"  # under the notebook's working folder (/kaggle/working on Kaggle)
ENGINE_PACKAGE = "imggenhub_engine"  # what the notebook writes its modules into
JOB_FILE = "imggenhub_job.json"
WEIGHTS = "weights"  # a training job's kind (its document's "kind"; generation has none)
KAGGLE_INPUT = "/kaggle/input"  # where Kaggle mounts the datasets a kernel lists
LOG_FILE = "kernel.log"  # the kernel's stdout/stderr, as the host saves it
ERROR_PREFIX = PROGRESS_PREFIX + " error: "
SEED_MODULUS = 2**32
# The generation parameters of one image, as the job's prompts, the engine's tasks and the
# image records name them (the host's schema spells the same: job.spec.ImageParams).
IMAGE_PARAMS = ("negative_prompt", "seed", "width", "height", "steps", "guidance", "init_image",
                "mask_image", "strength", "scheduler")
SWEEP_PARAMS = ("lora_scale", "refiner_start", "model", "cell", "sweep_of")  # a sweep cell's own

# Scheduler names users type -> (diffusers class, extra config).
SCHEDULERS = {
    "dpm++": ("DPMSolverMultistepScheduler", {}),
    "dpm++-karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "dpm++-sde": ("DPMSolverSDEScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "lcm": ("LCMScheduler", {}),
}

TINY_RANDOM = "tiny-random"  # the tiny offline pipelines' model ids (engine/tiny.py)
TINY_SDXL = "tiny-random-sdxl"
TINY_SDXL_REFINER = "tiny-random-sdxl-refiner"
TINY_KANDINSKY = "tiny-random-kandinsky"
TINY_FLUX = "tiny-random-flux"
TINY_SD3 = "tiny-random-sd3"
TINY_FLUX_FILL = "tiny-random-flux-fill"
TINY_SHAPES = "tiny-shapes"  # trained here on drawn shapes; its weights ship with imggenhub
TINY_CLIP = "tiny-random-clip"  # a tiny random CLIP for --score in tests
SDXL_VAE_FP16_FIX = "madebyollin/sdxl-vae-fp16-fix"


def log(message: str) -> None:
    """One progress line a poller can read from the kernel log."""
    print(f"{PROGRESS_PREFIX} {message}", flush=True)


def progress_message(line: str) -> str | None:
    """The message of a progress line from the kernel log (None for any other line)."""
    head = PROGRESS_PREFIX + " "
    return line[len(head):] if line.startswith(head) else None


def counted(n: int, noun: str) -> str:
    """'1 file', '2 files': a count as a sentence says it (nouns that take an s)."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def images_text(n: int) -> str:
    """'1 image', '2 images'."""
    return counted(n, "image")


class _NoTorchvisionNote(logging.Filter):
    """transformers 5 says, for each image processor it serves through Pillow because
    torchvision is not installed, that it does so: in every run's log, about a fallback
    that changes nothing here. Only that note is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


logging.getLogger("transformers.utils.import_utils").addFilter(_NoTorchvisionNote())
