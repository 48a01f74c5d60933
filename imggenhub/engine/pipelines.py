"""Pipelines: loading the model once, the tiny offline one, schedulers, LoRAs, embeddings,
and the image-to-image and inpainting pipelines derived from the loaded components.
torch and friends are imported inside the functions."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from .wire import SCHEDULERS, SDXL_VAE_FP16_FIX, TINY_RANDOM, log


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
    recorded = [{"name": l.get("name") or (Path(l["ref"]).stem if l.get("local") else l["ref"]),
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
        recorded.append({"name": emb.get("name") or (Path(ref).stem if emb.get("local") else ref),
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
