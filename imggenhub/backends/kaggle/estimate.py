"""What a job will cost in Kaggle GPU hours, said before it is pushed.

A table of T4 seconds per UNet step by model family (published fp16 figures at a
reference size, scaled by pixels and halved without classifier-free guidance), plus the
VAE decode, the model's download and load, and the session's start; the images are shared
by the two T4s. Every run downloaded from Kaggle teaches it: the manifest holds each
image's seconds and the model's load time as measured there, and the ratio of measured to
predicted, per model (else per family), corrects the next estimate. The history is kept per
API endpoint: a test server's or emulator's runs never correct the real Kaggle's estimates.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from ...engine import (KAGGLE_T4X2, TINY_FLUX, TINY_FLUX_FILL, TINY_KANDINSKY, TINY_RANDOM, TINY_SD3, TINY_SDXL,
                       WEIGHTS, DoesNotFit, Plan, counted, for_job)
from ...engine.training import DEFAULTS as TRAINING_DEFAULTS, processes_for

NO_GUIDANCE = 0.55  # a step without classifier-free guidance runs a batch of 1, not 2
# family: (reference pixels, seconds per UNet step with guidance on a T4 in fp16)
T4_STEP = {
    "sd": (512 * 512, 1 / 6.9),  # SD 1.5: 6.9 it/s at 512x512 (ENGINE_NOTES)
    "sdxl": (1024 * 1024, 1 / 1.15),  # SDXL base: 1.15 it/s at 1024x1024
    "kandinsky": (512 * 512, 1 / 6.9),  # its decoder UNet is SD-sized (assumed, not published)
    "auto": (1024 * 1024, 1 / 1.15),  # an unknown Hub model: the SDXL figure, the safe side
    "tiny": (64 * 64, 0.01),
    # FLUX.1 in NF4: a first guess, not measured on a T4: 15-17 s for 4 steps at 1024 px on an
    # RTX 3060 (ENGINE_NOTES), about 1.7 T4s in fp16: ~6 s a step (no CFG: guidance-distilled)
    "flux": (1024 * 1024, 6.0),
    # SD 3.5 scaled from it by the transformer's parameters (8.1 B, 2.5 B of 11.9 B), doubled
    # for classifier-free guidance as the table's figures are
    "sd3-large": (1024 * 1024, 6.0 * 8.06 / 11.9 / NO_GUIDANCE),
    "sd3-medium": (1024 * 1024, 6.0 * 2.47 / 11.9 / NO_GUIDANCE),
}
NO_CFG = {"flux"}  # families whose guidance is an input of the model, not a second batch
DECODE = {"sd": 0.15, "sdxl": 0.6, "kandinsky": 0.15, "auto": 0.6, "tiny": 0.01,
          "flux": 2.0, "sd3-large": 2.0, "sd3-medium": 2.0}  # at reference; fp32 VAEs on T4s
LOAD = {"sd": 60.0, "sdxl": 150.0, "kandinsky": 120.0, "auto": 150.0, "tiny": 10.0,  # Hub + GPU
        # FLUX.1: ~33 GB from the Hub, quantized as it loads; SD 3.5 large ~27 GB, medium ~16
        "flux": 300.0, "sd3-large": 250.0, "sd3-medium": 150.0}
SESSION_START = 90.0  # Kaggle's container start and the notebook's first cells
GPUS = 2  # T4 x2: one engine process per GPU
# Training: T4 seconds a training step of one picture at the reference size, fp16 with fp32
# trained weights. SDXL: a DreamBooth LoRA at 1024 px with gradient checkpointing and 8-bit
# Adam is reported at 1.5-3 h for 500 steps on a T4 (about 16 s a step, the middle); SD 1.5
# LoRA at 512 px is reported several times faster (taken as 1 s a step). Not measured here:
# each of the user's own training runs corrects it, as generation's are.
T4_TRAIN_STEP = {"sd": (512 * 512, 1.0), "sdxl": (1024 * 1024, 16.0), "kandinsky": (512 * 512, 1.0),
                 "auto": (1024 * 1024, 16.0), "tiny": (64 * 64, 0.05)}
HISTORY = "gpu-history.jsonl"
HISTORY_KEPT = 200
TINY = {TINY_RANDOM, TINY_SDXL, TINY_KANDINSKY, TINY_FLUX, TINY_SD3, TINY_FLUX_FILL}


def family(model: dict) -> str:
    if model["id"] in TINY:
        return "tiny"
    if model.get("memory") in T4_STEP:  # FLUX, SD 3.5 large or medium
        return model["memory"]
    return "auto" if model.get("pipeline") in (None, "flux", "sd3") else model["pipeline"]


def predicted_seconds(doc: dict) -> tuple[float, int]:
    """(T4 seconds of generation for the images this document makes, by the table; their
    number) -- on one GPU. A training document: its steps' seconds and their number."""
    if doc.get("kind") == WEIGHTS:
        settings = doc["training"]
        ref_pixels, step = T4_TRAIN_STEP[family(doc["model"])]
        steps = int(settings["steps"])
        pixels = int(settings["resolution"]) ** 2
        scale = (pixels / ref_pixels * int(settings.get("batch_size") or 1)
                 * int(settings.get("gradient_accumulation") or 1))
        prior = int(settings.get("class_images") or 0) if settings.get("class_prompt") else 0
        if prior:  # the class pictures drawn first, then learned beside the instance's
            gen_pixels, gen_step = T4_STEP[family(doc["model"])]
            class_steps = int(settings.get("class_steps") or TRAINING_DEFAULTS["class_steps"])
            drawn = prior * (gen_step * pixels / gen_pixels * class_steps
                             + DECODE[family(doc["model"])] * pixels / gen_pixels)
            return step * scale * 2 * steps + drawn, steps
        return step * scale * steps, steps
    total, images = 0.0, 0
    for t in Plan.of(doc).tasks(doc):
        fam = family(t.get("model") or doc["model"])  # a model sweep: each cell's own
        ref_pixels, step = T4_STEP[fam]
        scale = ((t.get("width") or 0) * (t.get("height") or 0) or ref_pixels) / ref_pixels
        steps = t["steps"]
        if t.get("init_image"):
            steps = max(1, int(steps * (t.get("strength") or 1.0)))
        guided = 1.0 if t["guidance"] > 1.0 or fam in NO_CFG else NO_GUIDANCE
        total += step * scale * steps * guided + DECODE[fam] * scale
        images += 1
    return total, images


@dataclass(frozen=True)
class Estimate:
    hours: float
    images: int
    seconds_per_image: float  # on one T4 (the table's), or on the history's card
    startup_seconds: float  # session start and model load
    basis: str  # "the T4 table" or "N of your runs of MODEL"
    shares: tuple = ()  # a job split over sessions: each one's hours (they add up to hours)
    noun: str = "image"  # what ``images`` counts (a training job's: its steps)
    gpus: int = GPUS  # the T4s that share the work
    learned: bool = False  # from the history: seconds measured on its card, not a T4's guess

    def shares_text(self) -> str:
        """" in 3 sessions: 0.41 + 0.41 + 0.40 h" for a split job; "" for one session."""
        if len(self.shares) < 2:
            return ""
        return f" in {len(self.shares)} sessions: " + " + ".join(f"{h:.2f}" for h in self.shares) \
            + " h"

    def sentence(self, left: float | None) -> str:
        tail = "" if left is None else f"; {left:.1f} h left this week"
        each = " each" if self.shares else ""
        return (f"estimate: about {self.hours:.2f} GPU h{self.shares_text()} ("
                f"{counted(self.images, self.noun)} at ~{self.seconds_per_image:.1f}s each over "
                f"{counted(self.gpus, 'T4')}, plus ~{self.startup_seconds / 60:.0f} min{each} to start and load; "
                f"from {self.basis}){tail}")


def read_history(folder: Path, where: str | None = None) -> list[dict]:
    """The history's entries (``where``: only that endpoint's; entries written before the
    history was kept per endpoint name none and count for none)."""
    try:
        lines = (Path(folder) / HISTORY).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("ratio"), (int, float)) \
                and (where is None or entry.get("endpoint") == where):
            out.append(entry)
    return out


def estimate(doc: dict, history: list[dict], width: int = 1, where: str = "") -> Estimate:
    """The job's GPU hours; split over ``width`` sessions (shards, as ``run.shards`` splits
    it), the sum of theirs, each with its own start and model load. ``where`` names the
    machine the history was measured on, for the basis said ("on A10G")."""
    if width > 1:
        plan = Plan.of(doc)
        parts = [estimate(dict(doc, only=plan.split(k, width).ranges()), history, where=where)
                 for k in range(width)]
        hours = round(sum(p.hours for p in parts), 3)
        images = sum(p.images for p in parts)
        per_image = sum(p.seconds_per_image * p.images for p in parts) / max(1, images)
        return Estimate(hours, images, per_image, parts[0].startup_seconds, parts[0].basis,
                        tuple(p.hours for p in parts), learned=parts[0].learned)
    fam = family(doc["model"])
    table, images = predicted_seconds(doc)
    training = doc.get("kind") == WEIGHTS
    gpus = GPUS
    # a training run's history corrects training estimates, a generation run's generation's
    history = [h for h in history if (h.get("kind") == WEIGHTS) == training]
    if training:  # data-parallel over the GPUs that split the batch evenly
        gpus = processes_for(int(doc["training"].get("batch_size") or 1), GPUS)
    elif doc["model"].get("memory"):  # one pipeline a card, or one over both (memory plan)
        try:
            gpus = for_job(doc, doc["model"], KAGGLE_T4X2).processes
        except DoesNotFit:  # refused before any push (prepare's check says why)
            gpus = 1
    same = [h for h in history if h.get("model") == doc["model"]["id"]]
    kin = same or [h for h in history if h.get("family") == fam]
    ratio = statistics.median(h["ratio"] for h in kin) if kin else 1.0
    loads = [h["load_seconds"] for h in same if isinstance(h.get("load_seconds"), (int, float))]
    load = statistics.median(loads) if loads else LOAD[fam]
    if doc.get("refiner"):
        load += LOAD["sdxl"]
    generation = table * ratio
    hours = (SESSION_START + load + generation / gpus) / 3600
    basis = (f"{len(kin)} of your runs of {doc['model']['id'] if same else 'this model family'}"
             f"{where}" if kin else "the T4 table")
    return Estimate(round(hours, 3), images, generation / max(1, images), SESSION_START + load,
                    basis, noun="training step" if training else "image", gpus=gpus,
                    learned=bool(kin))


def learn(folder: Path, doc: dict, manifest: dict, where: str, gpu: str = "T4") -> dict | None:
    """Add what a finished run (or shard: its own pictures only) at ``where`` (an endpoint,
    and the machine) measured on ``gpu`` cards to the history, as seconds on that card
    against the T4 table; return it."""
    only = doc.get("only")
    images = [i for i in manifest.get("images") or [] if only is None
              or any(a <= (i.get("index") if isinstance(i.get("index"), int) else -1) < b
                     for a, b in only)]

    def on_gpu(device) -> bool:  # "Tesla T4", "NVIDIA A10G"; L4 is not L40S
        return re.search(rf"(?<![A-Z0-9]){re.escape(gpu)}(?![A-Z0-9])", str(device or ""),
                         re.IGNORECASE) is not None

    seconds = [i["seconds"] for i in images if isinstance(i.get("seconds"), (int, float))
               and on_gpu(i.get("device"))]
    table, planned = predicted_seconds(doc)
    training = doc.get("kind") == WEIGHTS
    if training:  # each session's first process: its loop's seconds and the steps it took
        done = [(p["training_seconds"], p["session_steps"]) for p in manifest.get("processes") or []
                if on_gpu(p.get("device_name")) and p.get("rank", 0) == 0
                and isinstance(p.get("training_seconds"), (int, float))
                and isinstance(p.get("session_steps"), int) and p["session_steps"] > 0]
        seconds = [sum(t for t, _ in done) / sum(n for _, n in done)] if done else []
    if not seconds or not table or not planned:
        return None
    measured = statistics.mean(seconds) * planned  # the job's generation (or steps) on one card
    loads = [p.get("model_load_seconds") for p in manifest.get("processes") or []
             if isinstance(p.get("model_load_seconds"), (int, float))]
    entry = {"model": doc["model"]["id"], "family": family(doc["model"]),
             **({"kind": WEIGHTS} if training else {}),
             "ratio": round(measured / table, 4), "load_seconds": max(loads) if loads else None,
             "images": len(seconds), "at": int(time.time()), "endpoint": where}
    _append(Path(folder), entry)
    return entry


def _append(folder: Path, entry: dict) -> None:
    """The entry added, each endpoint's newest HISTORY_KEPT kept; one writer at a time (a
    download here and one in another terminal may end together); a history that cannot
    be written is left as it was (an estimate is not worth a failed download)."""
    import os
    import tempfile

    from filelock import FileLock, Timeout

    path = folder / HISTORY
    try:
        with FileLock(str(path) + ".lock", timeout=10):
            every = read_history(folder) + [entry]
            mine = [e for e in every if e.get("endpoint") == entry["endpoint"]]
            drop = {id(e) for e in mine[:-HISTORY_KEPT]}
            kept = [e for e in every if id(e) not in drop]
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{HISTORY}.", suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write("".join(json.dumps(e) + "\n" for e in kept))
            os.replace(tmp, path)
    except (OSError, Timeout):
        pass


def learn_run(run, manifest: dict | None, where: str, gpu: str = "T4") -> None:
    """Once a run is all home: its engine's hours into the record, and what it measured into
    the history (once: a record with engine hours has taught it)."""
    from ...config import state_dir
    from ...run import runs
    from ...run.lifecycle import RunState

    doc = runs.document(run)
    if run.state != RunState.DOWNLOADED or run.engine_hours is not None or not manifest \
            or not doc:
        return
    run.engine_hours = engine_hours(manifest, run.run_id)
    learn(state_dir(), doc, manifest, where, gpu)


def engine_hours(manifest: dict, run_id: str | None = None) -> float | None:
    """The engine's time on Kaggle by its own clock, in hours: the longest process of each
    session of the run (``run_id``: only that run's, as a shard's), added up."""
    longest: dict = {}
    for p in manifest.get("processes") or []:
        if not isinstance(p.get("seconds"), (int, float)):
            continue
        if run_id is not None and p.get("run_id") not in (None, run_id):
            continue
        key = p.get("session", 1)
        longest[key] = max(longest.get(key, 0.0), p["seconds"])
    spans = list(longest.values())
    return round(sum(spans) / 3600, 4) if spans else None
