"""The imggenhub engine: the code that runs beside the GPU, on Kaggle or here.

This one file is inlined unchanged into every rendered notebook, which writes it
out as ``imggenhub_engine.py`` and runs it as a script. It therefore imports only
the standard library at module level; torch, diffusers, transformers, accelerate
and Pillow are imported inside the functions that need them, so the host side
(planning, manifests) can use this module without any of them installed.

Run it as ``python imggenhub_engine.py --job JOB.json --out DIR``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
import unicodedata
from pathlib import Path

ENGINE_VERSION = 2
# The wire names the engine, the notebook's run cell and the host share (one spelling).
PROGRESS_PREFIX = "[imggenhub]"
MANIFEST = "manifest.json"
PARTS_DIR = ".parts"
OUTPUT_DIR = "output"  # under the notebook's working folder (/kaggle/working on Kaggle)
ENGINE_FILE = "imggenhub_engine.py"
JOB_FILE = "imggenhub_job.json"
LOG_FILE = "kernel.log"  # the kernel's stdout/stderr, as the host saves it
ERROR_PREFIX = PROGRESS_PREFIX + " error: "
SEED_MODULUS = 2**32

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

TINY_RANDOM = "tiny-random"
SDXL_VAE_FP16_FIX = "madebyollin/sdxl-vae-fp16-fix"


def log(message: str) -> None:
    """One progress line a poller can read from the kernel log."""
    print(f"{PROGRESS_PREFIX} {message}", flush=True)


def progress_message(line: str) -> str | None:
    """The message of a progress line from the kernel log (None for any other line)."""
    head = PROGRESS_PREFIX + " "
    return line[len(head):] if line.startswith(head) else None


# --------------------------------------------------------------------------
# Planning: job document -> one task per image (pure, no third-party imports)
# --------------------------------------------------------------------------

def slugify(text: str, max_len: int = 40) -> str:
    """A file-name-safe slug of a prompt: ASCII letters and digits joined by '-'."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    words = re.findall(r"[a-z0-9]+", ascii_text.lower())
    slug = ""
    for word in words:
        candidate = f"{slug}-{word}" if slug else word
        if len(candidate) > max_len:
            break
        slug = candidate
    return slug or "image"


def plan_images(job: dict) -> list[dict]:
    """Expand a job into one task per image, in a fixed order.

    Image ``k`` of a prompt with its own ``seed`` gets ``seed + k``, so the first
    image of such a prompt uses exactly that seed. Other images get the job's base
    seed plus their global index. Every seed is recorded in the manifest, so any
    image can be made again exactly.
    """
    tasks = []
    index = 0
    for prompt_index, item in enumerate(job["prompts"]):
        for k in range(item["num_images"]):
            if item.get("seed") is not None:
                seed = (item["seed"] + k) % SEED_MODULUS
            else:
                seed = (job["seed"] + index) % SEED_MODULUS
            tasks.append({
                "index": index,
                "prompt_index": prompt_index,
                "prompt": item["prompt"],
                "negative_prompt": item.get("negative_prompt"),
                "seed": seed,
                "width": item.get("width"),
                "height": item.get("height"),
                "steps": item["steps"],
                "guidance": item["guidance"],
                "init_image": item.get("init_image"),
                "mask_image": item.get("mask_image"),
                "strength": item.get("strength"),
                "file": f"{index + 1:04d}-{slugify(item['prompt'])}.png",
            })
            index += 1
    return tasks


def batches(tasks: list[dict], batch_size: int) -> list[list[dict]]:
    """Consecutive tasks that share size, steps and guidance, at most batch_size each."""
    out: list[list[dict]] = []
    for task in tasks:
        key = (task["width"], task["height"], task["steps"], task["guidance"],
               task.get("init_image") is not None, task.get("mask_image") is not None,
               task.get("strength"))
        if out and len(out[-1]) < batch_size and out[-1][0]["_key"] == key:
            out[-1].append({**task, "_key": key})
        else:
            out.append([{**task, "_key": key}])
    return [[{k: v for k, v in t.items() if k != "_key"} for t in b] for b in out]


def shard(items: list, rank: int, world: int) -> list:
    """Contiguous share of ``items`` for process ``rank`` of ``world`` (as accelerate splits)."""
    per, extra = divmod(len(items), world)
    start = rank * per + min(rank, extra)
    return items[start:start + per + (1 if rank < extra else 0)]


# --------------------------------------------------------------------------
# Manifest: per-process parts written as images appear, merged at the end
# --------------------------------------------------------------------------

def _write_json_atomic(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


class PartLog:
    """One process's manifest part, as JSON lines appended as images are written: a header
    line, one line per image, and process lines (the last one wins). Appending costs the
    same for the thousandth image as for the first, and a crash loses at most a torn last
    line, which the merge skips."""

    def __init__(self, path: Path, header: dict, process: dict):
        self.path = Path(path)
        self.process = dict(process)
        with open(self.path, "w", encoding="utf-8") as fh:
            fh.write(json.dumps({"header": header}, ensure_ascii=False) + "\n")
            fh.write(json.dumps({"process": self.process}, ensure_ascii=False) + "\n")

    def _append(self, entry: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, ensure_ascii=False) + "\n")

    def image(self, record: dict) -> None:
        self._append({"image": record})

    def update_process(self, **fields) -> None:
        self.process.update(fields)
        self._append({"process": self.process})


def _read_part(path: Path) -> tuple[dict, dict | None, list[dict]]:
    header, process, images = {}, None, []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line torn by a crash
        header = entry.get("header", header)
        process = entry.get("process", process)
        if "image" in entry:
            images.append(entry["image"])
    return header, process, images


def merge_manifest(out_dir: Path, job: dict | None = None) -> dict | None:
    """Merge the per-process manifest parts into ``manifest.json``; return it.

    Safe to call after a crash: it lists what was finished, and nothing else.
    """
    out_dir = Path(out_dir)
    parts_dir = out_dir / PARTS_DIR
    existing = out_dir / MANIFEST
    images: dict[int, dict] = {}
    runs = []
    header: dict = {}
    if existing.exists():
        old = json.loads(existing.read_text(encoding="utf-8"))
        header = {k: v for k, v in old.items() if k not in ("images", "processes")}
        runs = old.get("processes", [])
        images.update({img["index"]: img for img in old.get("images", [])})
    part_files = sorted(parts_dir.glob("rank-*.jsonl")) if parts_dir.exists() else []
    if not part_files and not existing.exists():
        return None
    for part_file in part_files:
        part_header, process, part_images = _read_part(part_file)
        header = part_header or header
        if process is not None:
            runs.append(process)
        images.update({img["index"]: img for img in part_images})
    manifest = {**header, "processes": runs, "images": [images[i] for i in sorted(images)]}
    if job is not None:
        manifest["planned_images"] = len(plan_images(job))
    manifest["complete"] = manifest.get("planned_images") == len(manifest["images"])
    _write_json_atomic(existing, manifest)
    for part_file in part_files:
        part_file.unlink()
    if parts_dir.exists() and not any(parts_dir.iterdir()):
        parts_dir.rmdir()
    return manifest


class ImageWriter:
    """Encodes, hashes and records finished images on a thread of its own, while the GPU
    makes the next ones; a bounded queue keeps memory flat. ``close`` drains it, so every
    image handed over is written, also when generation fails."""

    def __init__(self, out_dir: Path, part: PartLog, total: int, tag: str, started: float,
                 depth: int = 4):
        import queue
        import threading

        self.out_dir, self.part, self.total, self.tag = Path(out_dir), part, total, tag
        self.started, self.written, self.error = started, 0, None
        self.queue = queue.Queue(maxsize=depth)
        self.thread = threading.Thread(target=self._run, name="imggenhub-writer", daemon=True)
        self.thread.start()

    def put(self, file: str, image, record: dict, seconds: float) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put((file, image, record, seconds))

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is not None:
                continue  # keep draining so that put() never blocks forever
            file, image, record, seconds = item
            try:
                data = save_png(image, self.out_dir / file, record)
                record = {**record, "file": file, "sha256": hashlib.sha256(data).hexdigest(),
                          "bytes": len(data), "seconds": round(seconds, 4)}
                self.part.image(record)
                self.written += 1
                log(f"{self.tag}image {self.written}/{self.total} {file} in {seconds:.2f}s "
                    f"(elapsed {time.monotonic() - self.started:.1f}s)")
            except BaseException as exc:  # surfaced in the generating thread
                self.error = exc

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


# --------------------------------------------------------------------------
# Pipelines (torch and friends from here on, imported lazily)
# --------------------------------------------------------------------------

def _dtype_kwarg(dtype) -> dict:
    """diffusers 0.42 renamed ``torch_dtype=`` to ``dtype=``; Kaggle may carry an older one."""
    import diffusers

    major, minor = (int(x) for x in diffusers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (0, 42) else {"torch_dtype": dtype}


def _byte_level_chars() -> list[str]:
    """The 256 byte-level characters of GPT-2/CLIP BPE, in their usual order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def build_tiny_random_pipeline(seed: int = 0):
    """A tiny randomly initialised Stable Diffusion pipeline, built offline from configs.

    Seeded, so every build has the same weights. Its images are noise: it proves the
    pipeline, not image quality.
    """
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    chars = _byte_level_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + 256 for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    with tempfile.TemporaryDirectory(prefix="imggenhub-tok-") as folder:
        Path(folder, "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        Path(folder, "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
        tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=77)

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def load_pipeline(model: dict, device: str, dtype):
    """Load the job's pipeline once; the caller reuses it for every prompt."""
    import torch

    if model["id"] == TINY_RANDOM:
        pipe = build_tiny_random_pipeline(seed=0)
        return pipe.to(device) if dtype == torch.float32 else pipe.to(device=device, dtype=dtype)

    from diffusers import AutoencoderKL, AutoPipelineForText2Image

    kwargs = dict(_dtype_kwarg(dtype))
    if model.get("pipeline") == "sd":
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    if dtype == torch.float16 and model.get("vae_fp16_fix"):
        kwargs["vae"] = AutoencoderKL.from_pretrained(SDXL_VAE_FP16_FIX, **_dtype_kwarg(dtype))
    variant = model.get("variant") if dtype == torch.float16 else None
    try:
        pipe = AutoPipelineForText2Image.from_pretrained(model["id"], variant=variant, **kwargs)
    except (OSError, ValueError) as exc:
        if variant is None or "variant" not in str(exc):
            raise
        pipe = AutoPipelineForText2Image.from_pretrained(model["id"], **kwargs)
    return pipe.to(device)


def apply_loras(pipe, loras: list[dict]) -> list[dict]:
    """Load the job's LoRAs with diffusers' loader, combine them with their weights, and fuse
    them into the weights (the set never changes during a job, so fused is fastest).
    Returns what to record: each LoRA's name and scale."""
    if not loras:
        return []
    names = []
    for i, lora in enumerate(loras):
        name = f"lora{i}"
        ref = lora["ref"]
        if lora.get("local"):
            pipe.load_lora_weights(str(Path(ref).parent), weight_name=Path(ref).name,
                                   adapter_name=name)
        elif ref.count("/") == 2:  # owner/name/file.safetensors
            repo, _, weight = ref.rpartition("/")
            pipe.load_lora_weights(repo, weight_name=weight, adapter_name=name)
        else:
            pipe.load_lora_weights(ref, adapter_name=name)
        names.append(name)
    pipe.set_adapters(names, adapter_weights=[float(l["scale"]) for l in loras])
    pipe.fuse_lora(adapter_names=names)
    recorded = [{"name": Path(l["ref"]).stem if l.get("local") else l["ref"],
                 "scale": l["scale"]} for l in loras]
    log("LoRA " + ", ".join(f"{r['name']} x{r['scale']}" for r in recorded) + " fused")
    return recorded


def apply_embeddings(pipe, embeddings: list[dict]) -> list[dict]:
    """Load the job's textual-inversion embeddings; return what to record."""
    recorded = []
    for emb in embeddings:
        ref, kwargs = emb["ref"], {"token": emb.get("token")} if emb.get("token") else {}
        if emb.get("local"):
            pipe.load_textual_inversion(ref, **kwargs)
        elif ref.count("/") == 2:
            repo, _, weight = ref.rpartition("/")
            pipe.load_textual_inversion(repo, weight_name=weight, **kwargs)
        else:
            pipe.load_textual_inversion(ref, **kwargs)
        recorded.append({"name": Path(ref).stem if emb.get("local") else ref,
                         "token": emb.get("token")})
    if recorded:
        log("embeddings " + ", ".join(f"{r['name']} as {r['token']}" for r in recorded) + " loaded")
    return recorded


def derived_pipeline(pipe, mode: str):
    """The image-to-image or inpainting pipeline over the same loaded components (nothing
    is loaded twice)."""
    import diffusers

    auto = {"img2img": diffusers.AutoPipelineForImage2Image,
            "inpaint": diffusers.AutoPipelineForInpainting}[mode]
    derived = auto.from_pipe(pipe)
    derived.set_progress_bar_config(disable=True)
    return derived


def load_init_image(path: str, width: int | None, height: int | None, mode: str = "RGB"):
    """An input picture (RGB) or mask (L: white is redrawn), at the job's size if it has one."""
    from PIL import Image

    try:
        with Image.open(path) as opened:
            image = opened.convert(mode)
    except (OSError, ValueError) as exc:
        raise ValueError(f"the init image {Path(path).name!r} cannot be read as a picture ({exc})") \
            from None
    if width and height and image.size != (width, height):
        log(f"note: init image {Path(path).name} is {image.width}x{image.height}; resized to "
            f"{width}x{height}")
        image = image.resize((width, height))
    return image


def set_scheduler(pipe, name: str | None) -> str:
    """Swap in the named scheduler (None keeps the model's own); return its class name."""
    if name:
        import diffusers

        cls_name, extra = SCHEDULERS[name]
        pipe.scheduler = getattr(diffusers, cls_name).from_config(pipe.scheduler.config, **extra)
    return type(pipe.scheduler).__name__


def enable_memory_savers(pipe) -> None:
    vae = getattr(pipe, "vae", None)
    if vae is not None and hasattr(vae, "enable_slicing"):
        vae.enable_slicing()


# --------------------------------------------------------------------------
# Images and their metadata
# --------------------------------------------------------------------------

def a1111_parameters(record: dict) -> str:
    """The A1111-style ``parameters`` text that many image viewers and tools read."""
    lines = [record["prompt"]]
    if record.get("negative_prompt"):
        lines.append(f"Negative prompt: {record['negative_prompt']}")
    if record.get("loras"):  # the convention A1111 and image sites read
        lines[0] += "".join(f" <lora:{Path(l['name']).name}:{l['scale']}>" for l in record["loras"])
    settings = (f"Steps: {record['steps']}, Sampler: {record['scheduler']}, CFG scale: "
                f"{record['guidance']}, Seed: {record['seed']}, Size: {record['width']}x"
                f"{record['height']}, Model: {record['model']}")
    if record.get("strength") is not None:
        settings += f", Denoising strength: {record['strength']}"
    lines.append(settings)
    return "\n".join(lines)


def save_png(image, path: Path, record: dict) -> bytes:
    """Write the PNG with its parameters embedded; return its bytes."""
    import io

    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", a1111_parameters(record))
    info.add_text("imggenhub", json.dumps(record, ensure_ascii=True, sort_keys=True))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    data = buf.getvalue()
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return data


# --------------------------------------------------------------------------
# The worker: one process, one device, one pipeline, its share of the images
# --------------------------------------------------------------------------

def _select_device(job: dict):
    import torch

    from accelerate import PartialState

    state = PartialState(cpu=not (job.get("gpu", True) and torch.cuda.is_available()))
    device = state.device
    if job.get("gpu", True) and device.type != "cuda" and state.is_main_process:
        log("note: a GPU was asked for but none is visible; running on the CPU")
    precision = job.get("precision", "auto")
    if device.type == "cuda":
        dtype = torch.float32 if precision == "fp32" else torch.float16
    else:
        if precision == "fp16" and state.is_main_process:
            log("note: fp16 is not used on the CPU; running in fp32")
        dtype = torch.float32
    return state, device, dtype


def run_worker(job: dict, out_dir: Path) -> None:
    """Generate this process's share of the job's images, writing each as it is done."""
    t_start = time.monotonic()
    import torch

    state, device, dtype = _select_device(job)
    rank, world = state.process_index, state.num_processes
    tasks = shard(plan_images(job), rank, world)
    model = job["model"]
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = out_dir / PARTS_DIR
    parts.mkdir(exist_ok=True)
    tag = f"[rank {rank}] " if world > 1 else ""

    t_load = time.monotonic()
    pipe = load_pipeline(model, str(device), dtype)
    enable_memory_savers(pipe)
    scheduler = set_scheduler(pipe, job.get("scheduler"))
    loras = apply_loras(pipe, job.get("loras") or [])
    embeddings = apply_embeddings(pipe, job.get("embeddings") or [])
    pipe.set_progress_bar_config(disable=True)
    load_seconds = time.monotonic() - t_load
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    log(f"{tag}model {model['id']} ready on {device_name} ({str(dtype).replace('torch.', '')}) "
        f"in {load_seconds:.2f}s; {len(tasks)} images for this process")

    header = {"engine_version": ENGINE_VERSION, "job_id": job.get("job_id"),
              "run_id": job.get("run_id"), "model": model["id"], "processes_total": world,
              "loras": loras, "embeddings": embeddings}
    part = PartLog(parts / f"rank-{rank:02d}.jsonl", header, {
        "rank": rank, "device": device_name, "dtype": str(dtype).replace("torch.", ""),
        "model_load_seconds": round(load_seconds, 4), "scheduler": scheduler})
    writer = ImageWriter(out_dir, part, len(tasks), tag, t_start)
    fail_after = int(os.environ.get("IMGGENHUB_ENGINE_FAIL_AFTER", "-1"))  # test fault knob
    made = 0
    derived = {}  # image-to-image, inpainting: built from the loaded components when needed
    t_loop = time.monotonic()
    try:
        for batch in batches(tasks, job.get("batch_size", 1)):
            if 0 <= fail_after <= made:
                raise RuntimeError(f"injected failure after {made} images (IMGGENHUB_ENGINE_FAIL_AFTER)")
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
            run = pipe
            if first.get("init_image"):
                mode = "inpaint" if first.get("mask_image") else "img2img"
                run = derived.get(mode) or derived.setdefault(mode, derived_pipeline(pipe, mode))
                kwargs.update(image=[load_init_image(t["init_image"], t["width"], t["height"])
                                     for t in batch], strength=first["strength"])
                if mode == "inpaint":
                    kwargs["mask_image"] = [load_init_image(t["mask_image"], t["width"],
                                                            t["height"], "L") for t in batch]
            elif first["width"] and first["height"]:
                kwargs.update(width=first["width"], height=first["height"])
            t_gen = time.monotonic()
            images = run(**kwargs).images
            per_image = (time.monotonic() - t_gen) / len(batch)
            for task, image in zip(batch, images):
                writer.put(task["file"], image, {
                    "index": task["index"], "prompt_index": task["prompt_index"],
                    "prompt": task["prompt"], "negative_prompt": task["negative_prompt"],
                    "seed": task["seed"], "model": model["id"], "steps": task["steps"],
                    "guidance": task["guidance"], "width": image.width, "height": image.height,
                    "scheduler": scheduler, "device": device_name,
                    **({"loras": loras} if loras else {}),
                    **({"embeddings": embeddings} if embeddings else {}),
                    **({"init_image": Path(task["init_image"]).name, "strength": task["strength"],
                        "denoising_steps": int(task["steps"] * task["strength"])}
                       if task.get("init_image") else {}),
                    **({"mask_image": Path(task["mask_image"]).name}
                       if task.get("mask_image") else {}),
                }, per_image)
                made += 1
    finally:
        writer.close()  # every image handed over is written, also after a failure
        now = time.monotonic()
        part.update_process(seconds=round(now - t_start, 4),
                            generation_seconds=round(now - t_loop, 4))


def count_processes(job: dict) -> int:
    """One process per visible GPU (one on the CPU); IMGGENHUB_PROCESSES overrides."""
    forced = os.environ.get("IMGGENHUB_PROCESSES")
    if forced:
        return max(1, int(forced))
    if not job.get("gpu", True):
        return 1
    try:
        import torch

        return max(1, torch.cuda.device_count())
    except ImportError:
        return 1


def launch(job_path: Path, out_dir: Path, processes: int) -> int:
    """Start ``processes`` workers through accelerate and wait for them."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    # torchrun under the hood; on a machine without CUDA the workers join over gloo,
    # which is how the multi-process path is tested on CPUs (IMGGENHUB_PROCESSES=2).
    cmd += ["--multi_gpu", "--num_cpu_threads_per_process", "1"]
    cmd += [os.path.abspath(__file__), "--job", str(job_path), "--out", str(out_dir), "--worker"]
    return subprocess.call(cmd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="imggenhub engine")
    parser.add_argument("--job", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    job = json.loads(args.job.read_text(encoding="utf-8"))
    args.out.mkdir(parents=True, exist_ok=True)
    if args.worker:
        run_worker(job, args.out)
        return 0
    t0 = time.monotonic()
    processes = count_processes(job)
    log(f"job {job.get('job_id')}: {len(plan_images(job))} images with {job['model']['id']} "
        f"in {processes} process{'es' if processes > 1 else ''}")
    code = 0
    try:
        if processes > 1:
            code = launch(args.job, args.out, processes)
        else:
            run_worker(job, args.out)
    except Exception as exc:
        traceback.print_exc()
        print(f"{ERROR_PREFIX}{type(exc).__name__}: {exc}", flush=True)
        code = 1
    finally:
        manifest = merge_manifest(args.out, job)
    n = len(manifest["images"]) if manifest else 0
    log(f"done: {n} images in {time.monotonic() - t0:.1f}s" + ("" if code == 0 else f" (failed, exit {code})"))
    return code


def notebook_main(job_json: str) -> None:
    """The notebook's run cell: write the job, run the engine as a script (one process per
    GPU), stream its lines into the notebook, and fail the cell when the engine fails."""
    Path(JOB_FILE).write_text(job_json, encoding="utf-8")
    command = [sys.executable, "-u", ENGINE_FILE, "--job", JOB_FILE, "--out", OUTPUT_DIR]
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


if __name__ == "__main__":
    sys.exit(main())
