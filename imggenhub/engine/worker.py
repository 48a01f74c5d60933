"""The worker: one process, one device, one pipeline, its share of the images; the launcher
that starts one per GPU; and the notebook's run cell."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

from .inputs import resolve_inputs, use_hf_token
from .manifest import PartLog, merge_manifest
from .outputs import Bundler, ImageWriter
from .pipelines import (apply_embeddings, apply_loras, derived_pipeline, enable_memory_savers,
                        encode_prompts, free_memory, load_init_image, load_pipeline, load_refiner,
                        refuse_text_encoder_loras, set_lora_scale, set_scheduler)
from .memory import DoesNotFit, for_job, machine_here
from .scoring import Scorer
from .versions import VersionProblem
from .versions import ensure as ensure_versions
from .plan import Plan, SessionClock, batches, models_of
from .wire import (ENGINE_PACKAGE, ENGINE_VERSION, ERROR_PREFIX, JOB_FILE, OUTPUT_DIR, PARTS_DIR,
                   WEIGHTS, images_text, log)


def _select_device(job: dict):
    import torch

    from accelerate import PartialState

    state = PartialState(cpu=not (job.get("gpu", True) and torch.cuda.is_available()))
    device = state.device
    if job.get("gpu", True) and device.type != "cuda" and state.is_main_process:
        log("note: no GPU is visible here; running on the CPU")
    precision = job.get("precision", "auto")
    if device.type == "cuda":
        dtype = torch.float32 if precision == "fp32" else torch.float16
    else:
        if precision == "fp16" and state.is_main_process:
            log("note: fp16 is not used on the CPU; running in fp32")
        dtype = torch.float32
    return state, device, dtype


class Session:
    """One process's share of a job, as a runner: ``setup`` once (device, pipeline, LoRAs,
    embeddings, refiner, scorer, the manifest part and the writer thread), then ``make`` a
    batch at a time, each image handed to ``on_image`` (which records and writes it)."""

    def __init__(self, job: dict, out_dir: Path):
        self.t_start = time.monotonic()
        self.job = resolve_inputs(job)  # shipped inputs: found where mounted, checked by sha256
        self.out_dir = Path(out_dir)
        self.names = self.job.get("input_names") or {}
        self.clock = SessionClock(self.job)
        self.made = 0

    def setup(self) -> "Session":
        import torch

        job = self.job
        state, self.device, self.dtype = _select_device(job)
        rank, world = state.process_index, state.num_processes
        # a model sweep's models each load once: ``batches`` keeps each model's work together
        self.tasks = Plan.of(job).split(rank, world).tasks(job)
        self.model = self.tasks[0]["model"] if self.tasks else job["model"]
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / PARTS_DIR).mkdir(exist_ok=True)
        self.tag = tag = f"[rank {rank}] " if world > 1 else ""
        t_load = time.monotonic()
        self._load(self.model)
        self.swept_lora = any(p.get("lora_scale") is not None for p in job["prompts"])
        self.loras = apply_loras(self.pipe, job.get("loras") or [], fuse=not self.swept_lora)
        self.embeddings = apply_embeddings(self.pipe, job.get("embeddings") or [])
        self.refiner = None
        if job.get("refiner"):  # SDXL ensemble of experts: the refiner takes the last steps
            self.refiner = load_refiner(self.pipe, job["refiner"], str(self.device), self.dtype)
            enable_memory_savers(self.refiner)
            set_scheduler(self.refiner, job.get("scheduler"))
            log(f"{tag}refiner {job['refiner']['id']} ready; it takes over at "
                f"{job['refiner']['start']:g} of the steps")
        self.scorer = None
        if job.get("score"):  # CLIP scores: one model per process, loaded once
            self.scorer = Scorer(job["score"], str(self.device))
            log(f"{tag}CLIP {job['score']} ready to score each image")
        load_seconds = time.monotonic() - t_load
        self.device_name = torch.cuda.get_device_name(self.device) \
            if self.device.type == "cuda" else "cpu"
        dtype = str(self.dtype).replace("torch.", "")
        log(f"{tag}model {self.model['id']} ready on {self.device_name} ({dtype}) in "
            f"{load_seconds:.2f}s; {images_text(len(self.tasks))} for this process")
        header = {"engine_version": ENGINE_VERSION, "job_id": job.get("job_id"),
                  "run_id": job.get("run_id"), "model": self.model["id"],
                  "processes_total": world, "loras": self.loras, "embeddings": self.embeddings,
                  "scheduler_flag": job.get("scheduler"),
                  **({"refiner": job["refiner"]} if self.refiner is not None else {}),
                  **({"score_model": job["score"]} if self.scorer is not None else {}),
                  **({"sweep": job["sweep"]} if job.get("sweep") else {})}
        self.part = PartLog(self.out_dir / PARTS_DIR / f"rank-{rank:02d}.jsonl", header, {
            "rank": rank, "run_id": job.get("run_id"), "session": job.get("session", 1),
            "device": self.device_name, "dtype": dtype,
            "model_load_seconds": round(load_seconds, 4), "scheduler": self.scheduler})
        bundler = Bundler(self.out_dir, rank, self.part, job=job) if job.get("bundle") else None
        self.writer = ImageWriter(self.out_dir, self.part, len(self.tasks), tag, self.t_start,
                                  bundler=bundler)
        self.derived = {}  # image-to-image, inpainting: built from the loaded components
        self.t_loop = time.monotonic()
        return self

    def _load(self, model: dict) -> None:
        texts = [(t["prompt"], t["negative_prompt"] or "") for t in self.tasks
                 if t["model"]["id"] == model["id"]]
        self.pipe, self.base_scheduler, self.scheduler, self.encoded = _ready(
            model, str(self.device), self.dtype, self.job, texts)
        self.current = self.job.get("scheduler")
        self.model = model

    def batches(self) -> list[list[dict]]:
        return batches(self.tasks, self.job.get("batch_size", 1))

    def make(self, batch: list[dict]) -> None:
        """One batch: the pipeline as its tasks ask (model, LoRA scale, scheduler, mode),
        then each image to ``on_image``."""
        job, first = self.job, batch[0]
        if first["model"]["id"] != self.model["id"]:  # the next model of a model sweep
            del self.pipe
            self.derived = {}
            free_memory()
            t_swap = time.monotonic()
            self._load(first["model"])
            log(f"{self.tag}model {self.model['id']} ready in {time.monotonic() - t_swap:.2f}s")
        loras = self.loras
        if self.swept_lora:  # a sweep's cell with its own scale for the first LoRA
            scale = first.get("lora_scale")
            weights = set_lora_scale(self.pipe, job["loras"], scale if scale is not None
                                     else job["loras"][0]["scale"])
            loras = [{**r, "scale": w} for r, w in zip(self.loras, weights)]
        wanted = first.get("scheduler") or job.get("scheduler")
        if wanted != self.current:  # a sweep's cell with a scheduler of its own
            self.pipe.scheduler = self.base_scheduler
            self.scheduler = set_scheduler(self.pipe, wanted)
            self.current = wanted
        run, kwargs = self._call(batch)
        t_gen = time.monotonic()
        handover = None
        if self.refiner is not None and run is self.pipe:
            spec = {**job["refiner"], "start": first.get("refiner_start") or job["refiner"]["start"]}
            images, handover = _refined(self.pipe, self.refiner, spec, kwargs, batch)
        else:
            images = checked_call(run, kwargs, batch)
        scores = self.scorer.scores(images, [t["prompt"] for t in batch]) if self.scorer else None
        per_image = (time.monotonic() - t_gen) / len(batch)
        self.clock.lap(time.monotonic() - t_gen)
        for k, (task, image) in enumerate(zip(batch, images)):
            self.on_image(task, image, per_image, loras=loras, handover=handover,
                          score=scores[k] if scores else None)

    def _call(self, batch: list[dict]):
        """The pipeline to call for the batch (the base, or its img2img/inpaint form) and
        its arguments."""
        import torch

        first = batch[0]
        kwargs = {
            "prompt": [t["prompt"] for t in batch],
            "num_inference_steps": first["steps"],
            "guidance_scale": first["guidance"],
            # CPU generators: the same seed gives the same starting noise on any device
            "generator": [torch.Generator("cpu").manual_seed(t["seed"]) for t in batch],
        }
        if any(t["negative_prompt"] for t in batch):
            kwargs["negative_prompt"] = [t["negative_prompt"] or "" for t in batch]
        if self.model.get("max_sequence_length"):  # T5's tokens: FLUX, SD 3.5
            kwargs["max_sequence_length"] = self.model["max_sequence_length"]
        if self.encoded is not None:  # a split plan: the prompts were encoded before it loaded
            rows = [self.encoded[(t["prompt"], t["negative_prompt"] or "")] for t in batch]
            for key in ("prompt", "negative_prompt", "max_sequence_length"):
                kwargs.pop(key, None)
            device = self.pipe._execution_device  # a transformer whole on one device has
            kwargs.update({key: torch.cat([row[key] for row in rows]).to(device)  # no hooks
                           for key in rows[0]})
        run = self.pipe
        if first.get("init_image"):
            mode = "inpaint" if first.get("mask_image") else "img2img"
            if not self.model.get("fill"):  # FLUX.1 Fill's own pipeline inpaints
                run = self.derived.get(mode) or self.derived.setdefault(
                    mode, derived_pipeline(self.pipe, mode))
            kwargs.update(image=[load_init_image(t["init_image"], t["width"], t["height"])
                                 for t in batch], strength=first["strength"])
            if first["width"] and first["height"] and _takes(run, "width"):  # FLUX's, SD3's:
                kwargs.update(width=first["width"], height=first["height"])  # else 1024 or so
            if mode == "inpaint":
                kwargs["mask_image"] = [load_init_image(t["mask_image"], t["width"],
                                                        t["height"], "L") for t in batch]
        elif first["width"] and first["height"]:
            kwargs.update(width=first["width"], height=first["height"])
        return run, kwargs

    def on_image(self, task: dict, image, seconds: float, loras=None, handover=None,
                 score=None) -> None:
        """A finished image: its record (what made it, exactly) to the writer thread."""
        names = self.names
        self.writer.put(task["file"], image, {
            "index": task["index"], "prompt_index": task["prompt_index"],
            "prompt": task["prompt"], "negative_prompt": task["negative_prompt"],
            "seed": task["seed"], "model": self.model["id"], "steps": task["steps"],
            "guidance": task["guidance"], "width": image.width, "height": image.height,
            "scheduler": self.scheduler, "device": self.device_name,
            **({"loras": loras} if loras else {}),
            **({"embeddings": self.embeddings} if self.embeddings else {}),
            **({"init_image": names.get(task["init_image"], Path(task["init_image"]).name),
                "strength": task["strength"],
                "denoising_steps": int(task["steps"] * task["strength"])}
               if task.get("init_image") else {}),
            **({"mask_image": names.get(task["mask_image"], Path(task["mask_image"]).name)}
               if task.get("mask_image") else {}),
            **({"refiner": handover} if handover else {}),
            **({"score": score} if score is not None else {}),
            **({"cell": task["cell"], "sweep_of": task["sweep_of"]}
               if task.get("cell") is not None else {}),
        }, seconds)
        self.made += 1

    def close(self) -> None:
        """Every image handed over is written (also after a failure); the process's times."""
        self.writer.close()
        now = time.monotonic()
        self.part.update_process(seconds=round(now - self.t_start, 4),
                                 generation_seconds=round(now - self.t_loop, 4))


def run_worker(job: dict, out_dir: Path) -> None:
    """Generate this process's share of the job's images, writing each as it is done."""
    session = _with_faults(Session(job, out_dir).setup())
    try:
        for batch in session.batches():
            if session.clock.time_up():
                log(f"{session.tag}the session's time is nearly up: stopping with "
                    f"{len(session.tasks) - session.made} of this process's images still to "
                    "make (the next session makes them)")
                break
            session.make(batch)
    finally:
        session.close()


def run_training(job: dict, out_dir: Path) -> None:
    """A training job in this process (one per GPU): the weights, or, when the session's
    time is nearly up, a checkpoint the next session continues from."""
    from .training import run_job

    job = resolve_inputs(job)  # the pictures: found where mounted, checked by sha256
    _, device, dtype = _select_device(job)
    run_job(job, out_dir, str(device), dtype, SessionClock(job))


def _with_faults(session: Session) -> Session:
    """The tests' fault: IMGGENHUB_ENGINE_FAIL_AFTER=N makes the session fail before a batch
    once N images are made (a crash mid-job, as a real engine crashes). Unset: unchanged."""
    after = int(os.environ.get("IMGGENHUB_ENGINE_FAIL_AFTER", "-1"))
    if after < 0:
        return session
    make = session.make

    def failing(batch):
        if session.made >= after:
            raise RuntimeError(f"injected failure after {images_text(session.made)} "
                               "(IMGGENHUB_ENGINE_FAIL_AFTER)")
        make(batch)

    session.make = failing
    return session


def _ready(model: dict, device: str, dtype, job: dict, texts: list):
    """A model loaded and set up as the job asks: (pipeline, its own scheduler, the name of
    the one in use, and for a split plan its ``texts`` encoded, else None). Every scheduler
    swap starts from the model's own."""
    plan = _planned(job, model, device)
    if plan is not None:
        log(plan.line())
    encoded = None
    if plan is not None and plan.staged:  # the prompts first, then the text encoders go
        refuse_text_encoder_loras(model, job.get("loras") or [])
        encoded = encode_prompts(model, plan, device, texts)
    pipe = load_pipeline(model, device, dtype, plan)
    enable_memory_savers(pipe)
    pipe.set_progress_bar_config(disable=True)
    base_scheduler = pipe.scheduler
    return pipe, base_scheduler, set_scheduler(pipe, job.get("scheduler")), encoded


def _planned(job: dict, model: dict, device: str):
    """The model's memory plan on this machine (None: not a planned model).
    IMGGENHUB_STAGED=1 runs a replicate or cpu plan in the split placement's stages (the
    prompts encoded first, the text encoders freed, then the denoiser): how they are tested
    without two cards, and a way to draw with less memory at once."""
    if not model.get("memory"):
        return None
    plan = for_job(job, model, machine_here(device != "cpu"))
    if os.environ.get("IMGGENHUB_STAGED") == "1" and plan.mode in ("replicate", "cpu"):
        plan = replace(plan, mode="split", shares=())  # the denoiser whole on this device
    return plan


def _refined(pipe, refiner, spec: dict, kwargs: dict, batch: list[dict]):
    """SDXL's ensemble of experts: the base runs the first ``start`` of the steps and hands
    its latents to the refiner, which runs the rest. Returns the images and what each ran
    (counted, not computed: the split follows the scheduler's timesteps)."""
    import torch

    counts = [0, 0]

    def counter(i):
        def step_end(_pipe, _step, _timestep, callback_kwargs):
            counts[i] += 1
            return callback_kwargs
        return step_end

    latents = pipe(**kwargs, denoising_end=spec["start"], output_type="latent",
                   callback_on_step_end=counter(0)).images
    again = {k: kwargs[k] for k in ("prompt", "negative_prompt", "num_inference_steps",
                                    "guidance_scale") if k in kwargs}
    again["generator"] = [torch.Generator("cpu").manual_seed(t["seed"]) for t in batch]
    images = refiner(**again, image=latents, denoising_start=spec["start"],
                     callback_on_step_end=counter(1)).images
    return images, {"model": spec["id"], "start": spec["start"], "base_steps": counts[0],
                    "refiner_steps": counts[1]}


def _takes(pipe, name: str) -> bool:
    import inspect

    return name in inspect.signature(pipe.__call__).parameters


class Overflow(RuntimeError):
    """A picture came out NaN or black: which part of the pipeline overflowed, and where."""


def checked_call(run, kwargs: dict, batch: list[dict]):
    """The pipeline's images, each checked before it may be saved: its prompt embeddings and
    its latents at every step must stay finite (else the text encoder or the denoiser
    overflowed: fp16 on a card without bf16), and no picture may be all black (else the VAE
    decoded NaN, which becomes 0; a picture a safety checker blacked out is not counted).
    Raises Overflow naming the image, the part and the step; the images before it are kept
    and the job stops there (an overflow in fp16 comes back with every seed)."""
    import numpy as np
    import torch

    seen: dict = {}  # the batch's image number -> (the part, the step)
    names = getattr(run, "_callback_tensor_inputs", ())
    denoiser = "transformer" if getattr(run, "transformer", None) is not None else "UNet"

    def bad(tensor, rows: int):
        """Which of ``rows`` images a tensor (their rows, or rows of theirs) is not finite in."""
        if tensor is None or not tensor.shape or tensor.shape[0] % rows:
            return []
        finite = torch.isfinite(tensor.reshape(rows, -1)).all(dim=1).tolist()
        return [k for k, ok in enumerate(finite) if not ok]

    def watch(_pipe, step, _timestep, tensors):
        rows = len(batch)
        for part, key in (("the text encoder", "prompt_embeds"), (f"the {denoiser}", "latents")):
            tensor = tensors.get(key)
            if tensor is not None and tensor.shape[0] == 2 * rows:  # guidance: their half
                tensor = tensor[rows:]
            for k in bad(tensor, rows):
                seen.setdefault(k, (part, step))
        return tensors

    if _takes(run, "callback_on_step_end") and "latents" in names:
        kwargs = {**kwargs, "callback_on_step_end": watch,
                  "callback_on_step_end_tensor_inputs": [n for n in ("latents", "prompt_embeds")
                                                         if n in names]}
    output = run(**kwargs)
    flagged = getattr(output, "nsfw_content_detected", None) or [False] * len(batch)
    for k, (task, image) in enumerate(zip(batch, output.images)):
        black = not np.asarray(image).any() and not flagged[k]
        if k in seen or black:
            part = (f"{seen[k][0]} (non-finite values from step {seen[k][1] + 1} of "
                    f"{kwargs['num_inference_steps']})" if k in seen else "the VAE (every pixel 0)")
            raise Overflow(f"image {task['index'] + 1} (prompt {task['prompt_index'] + 1}, seed "
                           f"{task['seed']}) came out NaN or black: {part} overflowed; it is not "
                           "saved (fp16 on a card without bf16 is the usual cause)")
    return output.images


def _planned_features(job: dict) -> set:
    """What the job's models' memory plans on this machine ask of the packages: weights
    loaded quantized ("quantized"), a transformer spread over the cards ("split")."""
    planned = [m for m in models_of(job) if m.get("memory")]
    if not planned:
        return set()
    machine = machine_here(job.get("gpu", True))
    plans = [for_job(job, m, machine) for m in planned]
    return ({"quantized"} if any(p.quantized() for p in plans) else set()) | \
        ({"split"} if any(p.staged and p.shares for p in plans) else set())


def count_processes(job: dict) -> int:
    """One process per visible GPU (one on the CPU); IMGGENHUB_PROCESSES overrides."""
    forced = os.environ.get("IMGGENHUB_PROCESSES")
    if forced:
        return max(1, int(forced))
    if not job.get("gpu", True):
        return 1
    try:
        import torch

        cards = torch.cuda.device_count()
    except ImportError:
        return 1
    planned = [m for m in models_of(job) if m.get("memory")]
    if cards and planned and job.get("kind") != WEIGHTS:  # each model's plan: the fewest
        machine = machine_here()
        return min(for_job(job, m, machine).processes for m in planned)
    return max(1, cards)


def launch(job_path: Path, out_dir: Path, processes: int) -> int:
    """Start ``processes`` workers through accelerate and wait for them."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    # torchrun under the hood; on a machine without CUDA the workers join over gloo,
    # which is how the multi-process path is tested on CPUs (IMGGENHUB_PROCESSES=2).
    cmd += ["--multi_gpu", "--num_cpu_threads_per_process", "1"]
    cmd += ["--module", __package__, "--job", str(job_path), "--out", str(out_dir), "--worker"]
    return subprocess.call(cmd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="imggenhub engine")
    parser.add_argument("--job", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    job = json.loads(args.job.read_text(encoding="utf-8"))
    args.out.mkdir(parents=True, exist_ok=True)
    if use_hf_token(job) and not args.worker:  # the workers inherit it
        log("a Hugging Face token from the private dataset is set for the engine's processes")
    work = run_training if job.get("kind") == WEIGHTS else run_worker
    if args.worker:
        work(job, args.out)
        return 0
    t0 = time.monotonic()
    os.environ.setdefault("IMGGENHUB_ENGINE_STARTED", str(time.time()))  # the session clock
    try:  # the versions the job's features need: here, or installed, or one sentence
        ensure_versions(job, planned=_planned_features(job) if work is run_worker else set())
    except (VersionProblem, DoesNotFit) as exc:
        print(f"{ERROR_PREFIX}{type(exc).__name__}: {exc}", flush=True)
        merge_manifest(args.out, job)
        return 1
    processes = count_processes(job)
    if work is run_training:  # equal shares of each batch: as many as split it evenly
        from .training import processes_for

        processes = processes_for(int(job["training"].get("batch_size") or 1), processes)
    what = (f"training a {job['training'].get('method', 'lora')} on {len(job['examples'])} pictures"
            if work is run_training else images_text(len(Plan.of(job))))
    log(f"job {job.get('job_id')}: {what} with {job['model']['id']} "
        f"in {processes} process{'es' if processes > 1 else ''}")
    code = 0
    try:
        if processes > 1:
            code = launch(args.job, args.out, processes)
        else:
            work(job, args.out)
    except Exception as exc:
        traceback.print_exc()
        print(f"{ERROR_PREFIX}{type(exc).__name__}: {exc}", flush=True)
        code = 1
    finally:
        manifest = merge_manifest(args.out, job)
    n = len(manifest["images"]) if manifest else 0
    made = (f"{'the weights' if n else 'no weights yet'}" if work is run_training else images_text(n))
    log(f"done: {made} in {time.monotonic() - t0:.1f}s" + ("" if code == 0 else f" (failed, exit {code})"))
    return code


def notebook_main(job_json: str) -> None:
    """The notebook's run cell: write the job, run the engine as a module (one process per
    GPU), stream its lines into the notebook, and fail the cell when the engine fails."""
    Path(JOB_FILE).write_text(job_json, encoding="utf-8")
    command = [sys.executable, "-u", "-m", ENGINE_PACKAGE, "--job", JOB_FILE, "--out", OUTPUT_DIR]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, encoding="utf-8", errors="replace")
    tail: list[str] = []
    for line in process.stdout:
        print(line, end="", flush=True)
        tail = (tail + [line.rstrip()])[-40:]
    if process.wait() != 0:
        errors = [l[len(ERROR_PREFIX):] for l in tail if l.startswith(ERROR_PREFIX)]
        errors = errors or [l for l in tail if l.split(":", 1)[0].endswith(("Error", "Exception"))]
        raise RuntimeError("imggenhub engine failed: "
                           + (errors[-1] if errors else f"exit code {process.returncode}"))
