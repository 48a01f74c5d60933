"""The package versions a job's features need, checked where the engine runs.

Kaggle's image carries its own diffusers, transformers, peft and bitsandbytes, which drift
and may be older than a model needs. At start the engine names the job's features (FLUX,
SD 3.5, quantized weights, LoRAs), compares what is installed with what each needs, and
either installs the minimum (one logged ``pip install`` of exact pins, where the job says
it may: a Kaggle kernel with internet) or stops with one sentence naming the package and
the version. Standard library only (the engine's rule).
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata

from .plan import models_of
from .wire import log

# feature: ((package, the oldest version that has it, what of it the feature uses), ...)
NEEDS = {
    "flux": (("diffusers", "0.30.0", "FluxPipeline"),),
    "sd3": (("diffusers", "0.31.0", "SD 3.5's transformer"),),
    "flux-img2img": (("diffusers", "0.31.0", "FLUX's image-to-image and inpainting"),),
    "flux-fill": (("diffusers", "0.33.0", "FluxFillPipeline with a strength"),),
    # the transformers spread over the cards by a device map (the split placement)
    "split": (("diffusers", "0.33.0", "a device map of FLUX's and SD 3's transformers"),),
    "quantized": (("diffusers", "0.34.0", "PipelineQuantizationConfig"),
                  ("bitsandbytes", "0.45.0", "4- and 8-bit weights")),
    "lora": (("peft", "0.10.0", "diffusers' LoRA loader"),),
}


class VersionProblem(RuntimeError):
    """A package the job needs is missing or too old here, and cannot be installed."""


def parse(version: str) -> tuple:
    """'0.34.0.dev0' -> (0, 34, 0); the release numbers only, three of them ('1.0' is 1.0.0)."""
    numbers = [int(n) for n in re.findall(r"\d+", version.split("+")[0])[:3]]
    return tuple(numbers + [0] * (3 - len(numbers)))


def installed(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def features(job: dict, quantized: bool = False, planned: set = frozenset()) -> set:
    """The features of a job that need particular versions (``planned``: what its memory
    plans ask for here, "quantized" and "split")."""
    found = {m.get("pipeline") for m in models_of(job)} & {"flux", "sd3"}
    if "flux" in found and any(p.get("init_image") for p in job.get("prompts") or ()):
        found.add("flux-img2img")
    if any(m.get("fill") for m in models_of(job)):
        found.add("flux-fill")
    if quantized:
        found.add("quantized")
    found |= set(planned) & {"quantized", "split"}
    if job.get("loras"):
        found.add("lora")
    return found


def lacking(wanted: set, have=installed) -> list[tuple]:
    """(package, installed version or None, the version needed, what needs it) for each
    package below what the features need; each package once, at its highest need."""
    need: dict = {}
    for feature in sorted(wanted):
        for package, minimum, why in NEEDS.get(feature, ()):
            if package not in need or parse(minimum) > parse(need[package][0]):
                need[package] = (minimum, why)
    out = []
    for package, (minimum, why) in sorted(need.items()):
        version = have(package)
        if version is None or parse(version) < parse(minimum):
            out.append((package, version, minimum, why))
    return out


def ensure(job: dict, quantized: bool = False, have=installed, install=None,
           planned: set = frozenset()) -> list[str]:
    """Make sure this machine has what the job needs: nothing to do, or one ``pip install``
    of exact pins when ``job["install_missing"]``, or VersionProblem. Returns the pins
    installed."""
    missing = lacking(features(job, quantized, planned), have)
    if not missing:
        return []
    said = "; ".join(f"{p} >= {need} for {why} (here: {v or 'not installed'})"
                     for p, v, need, why in missing)
    if not job.get("install_missing"):
        raise VersionProblem(f"this job needs {said}; install {'them' if len(missing) > 1 else 'it'} "
                             "(on Kaggle: give the kernel internet, and imggenhub installs "
                             "them when it starts)")
    pins = [f"{p}=={need}" for p, _, need, _ in missing]
    log(f"installing {' '.join(pins)}: this job needs {said}")
    command = [sys.executable, "-m", "pip", "install", "-q", *pins]
    code = (install or subprocess.call)(command)
    if code != 0:
        raise VersionProblem(f"pip install {' '.join(pins)} failed (exit {code}); the job needs {said}")
    return pins
