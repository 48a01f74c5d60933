"""The engine's overhead on a real-sized model, for a lent GPU: an SDXL-shaped pipeline
with full-size random weights (UNet, VAE and both text encoders at SDXL base's sizes,
built from configs: nothing is downloaded), saved as a diffusers folder in fp16, then

- a bare diffusers loop that loads it with the engine's own loader and generates and
  discards N images, against
- the engine as a user's job runs it (``python -m imggenhub.engine`` in a process of its
  own, writer thread, PNGs, sha256, manifest part),

side by side, at 512 and 1024 px, with SDXL-Turbo's recipe as the sdxl-turbo preset runs
it (1 step, no guidance, a VAE that decodes in fp16 like the fp16-fix VAE the SDXL presets
load: the fastest images, where writing them costs the GPU most). Prints the ratio
engine/bare by total time (a job's measure; goal: at least 0.95) and by the median image,
images/s, the PNGs' mean size (random weights must not give blank images, which would be
cheap to write) and the time from the engine's process start to its first image written
(the model read from a local disk just written, not a cold Kaggle or Hub load).

    python benchmarks/engine_overhead_sdxl.py --scale full     # on a CUDA GPU
    python benchmarks/engine_overhead_sdxl.py --scale tiny     # anywhere: the same path, tiny
    python benchmarks/engine_overhead_sdxl.py --quick          # tiny, 2 images: a check that it runs
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.engine_overhead import engine_times  # noqa: E402
from imggenhub.engine.pipelines import enable_memory_savers, load_pipeline  # noqa: E402
from imggenhub.engine.tiny import build_tiny_sdxl_pipeline, tiny_tokenizer  # noqa: E402
from imggenhub.job.models import resolve_model  # noqa: E402
from imggenhub.job.resolve import build_job
from imggenhub.job.spec import parse_settings, prompts_from_flags  # noqa: E402

PROMPT = "a lighthouse at dusk, volumetric light, detailed"


def full_sdxl(device: str):
    """SDXL base's architecture (its published configs) with random weights, built on
    ``device`` (on a GPU: seconds, not the minutes a CPU takes to initialise 3.5 billion
    weights). The tokenizers are the offline byte-level ones (token ids differ, cost not);
    the embedding tables have CLIP's 49408 rows all the same, so the sizes are SDXL's."""
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from imggenhub.engine.tiny import _sdxl_scheduler

    tokenizer, tokenizer_2 = tiny_tokenizer(), tiny_tokenizer()
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(
            sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
            cross_attention_dim=2048, use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816)
        vae = AutoencoderKL(
            block_out_channels=[128, 256, 512, 512], in_channels=3, out_channels=3,
            down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
            latent_channels=4, layers_per_block=2, sample_size=1024, scaling_factor=0.13025,
            force_upcast=False)  # decodes in fp16, as the fp16-fix VAE of the presets does
        common = dict(vocab_size=49408, max_position_embeddings=77,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
            hidden_act="quick_gelu", projection_dim=768, **common))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(
            hidden_size=1280, intermediate_size=5120, num_attention_heads=20,
            num_hidden_layers=32, hidden_act="gelu", projection_dim=1280, **common))
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=_sdxl_scheduler(), image_encoder=None,
        feature_extractor=None, force_zeros_for_empty_prompt=True, add_watermarker=False)


def save_model(scale: str, device: str, dtype, folder: Path) -> int:
    """Build the pipeline and save it as a diffusers folder, in the job's precision (with
    the fp16 variant names the engine asks for). Returns its parameter count."""
    pipe = full_sdxl(device) if scale == "full" else build_tiny_sdxl_pipeline()
    params = sum(p.numel() for name in ("unet", "vae", "text_encoder", "text_encoder_2")
                 for p in getattr(pipe, name).parameters())
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    variant = "fp16" if dtype == torch.float16 else None
    pipe.save_pretrained(folder, variant=variant)
    del pipe
    free()
    return params


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def bare(model: dict, device: str, dtype, n: int, size: int, steps: int) -> list[float]:
    """The engine's loader, then generate and discard: each image's seconds."""
    pipe = load_pipeline(model, device, dtype)
    enable_memory_savers(pipe)
    pipe.set_progress_bar_config(disable=True)
    times = []
    for i in range(n):
        t = time.monotonic()
        pipe(PROMPT, num_inference_steps=steps, guidance_scale=0.0, width=size, height=size,
             generator=torch.Generator("cpu").manual_seed(i)).images[0]  # a PIL image: synced
        times.append(time.monotonic() - t)
    del pipe
    free()
    return times


def engine(folder: Path, gpu: bool, n: int, size: int, steps: int, work: Path):
    """The engine in a process of its own, as a job runs it. Returns (each image's seconds,
    seconds from the process's start to its first image written, its model load seconds,
    the PNGs' mean bytes)."""
    job = build_job(parse_settings(model=str(folder), seed=0, steps=steps, guidance=0.0,
                                   width=size, height=size, num_images=n, gpu=gpu),
                    prompts_from_flags([PROMPT])).document()
    out = work / f"out-{time.monotonic_ns()}"
    job_file = work / "job.json"
    job_file.write_text(json.dumps(job), encoding="utf-8")
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "IMGGENHUB_PROCESSES": "1", "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-u", "-m", "imggenhub.engine", "--job",
                             str(job_file), "--out", str(out)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first, tail = None, []
    for line in proc.stdout:
        if first is None and " image 1/" in line:
            first = time.monotonic() - t0
        tail = (tail + [line])[-20:]
    if proc.wait() != 0 or first is None:
        sys.exit("the engine failed (or wrote no 'image 1/' line):\n" + "".join(tail))
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert len(manifest["images"]) == n, manifest
    png_bytes = statistics.mean(r["bytes"] for r in manifest["images"])
    return (engine_times(manifest), first, manifest["processes"][0]["model_load_seconds"],
            png_bytes)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", choices=("full", "tiny"), default=None,
                        help="full-size SDXL (the default on a CUDA GPU) or the tiny one")
    parser.add_argument("--images", type=int, default=24, help="images a pattern makes a round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--sizes", default=None, help="comma-separated, default 512,1024")
    parser.add_argument("--quick", action="store_true", help="tiny, 2 images, 1 round")
    args = parser.parse_args()
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()  # the bare loop's loads: no bars
    transformers.utils.logging.disable_progress_bar()
    cuda = torch.cuda.is_available()
    if args.quick:
        args.scale, args.images, args.rounds, args.sizes = "tiny", 2, 1, "64"
    scale = args.scale or ("full" if cuda else "tiny")
    if scale == "full" and not cuda:
        sys.exit("--scale full needs a CUDA GPU (3.5 billion random weights in fp16); "
                 "on a CPU use --scale tiny.")
    sizes = [int(s) for s in (args.sizes or ("512,1024" if scale == "full" else "64,128")).split(",")]
    device, dtype = ("cuda", torch.float16) if cuda else ("cpu", torch.float32)
    name = torch.cuda.get_device_name(0) if cuda else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder = work / "sdxl-random"
        t = time.monotonic()
        params = save_model(scale, device, dtype, folder)
        model = resolve_model(str(folder)).engine_dict()
        print(f"SDXL-shaped, {scale} size ({params / 1e9:.2f} billion weights, random), "
              f"{str(dtype).replace('torch.', '')} on {name}, built and saved in "
              f"{time.monotonic() - t:.1f}s; {args.steps} steps, no guidance, {args.images} "
              f"images a pattern a round, {args.rounds} rounds")
        for size in sizes:
            rounds, firsts, loads, sizes_ = [], [], [], []
            for r in range(args.rounds):  # order reversed every other round
                times = {}
                for pattern in (("bare", "engine") if r % 2 == 0 else ("engine", "bare")):
                    if pattern == "bare":
                        times["bare"] = bare(model, device, dtype, args.images, size, args.steps)
                    else:
                        times["engine"], first, load, png = engine(folder, cuda, args.images,
                                                                   size, args.steps, work)
                        firsts.append(first)
                        loads.append(load)
                        sizes_.append(png)
                rounds.append(times)
            per = {k: statistics.median([t for r in rounds for t in r[k]]) for k in ("bare", "engine")}
            total = statistics.median([sum(r["bare"]) / sum(r["engine"]) for r in rounds])
            steady = statistics.median([statistics.median(r["bare"]) / statistics.median(r["engine"])
                                        for r in rounds])
            print(f"{size}x{size}: median image: bare loop {per['bare'] * 1000:.1f} ms "
                  f"({1 / per['bare']:.2f} img/s), engine {per['engine'] * 1000:.1f} ms "
                  f"({1 / per['engine']:.2f} img/s); PNGs {statistics.mean(sizes_) / 1024:.0f} KiB "
                  f"on average")
            print(f"  engine process start to first image written: {statistics.median(firsts):.1f}s "
                  f"(model load {statistics.median(loads):.1f}s; medians of {len(firsts)})")
            print(f"  ratio engine/bare by the median image (steady state): {steady:.3f}x; "
                  f"by total time: {total:.3f}x")
    print(json.dumps({"goal_engine_over_bare": 0.95}))


if __name__ == "__main__":
    main()
