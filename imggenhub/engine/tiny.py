"""Tiny random pipelines, built offline from configs (for tests and smoke runs): Stable
Diffusion, SDXL with its refiner, and Kandinsky 2.2 (prior + decoder). Seeded, so every
build has the same weights; their images are noise: they prove the plumbing, not quality.
The configs follow diffusers' own fast tests; the tokenizer is built here because the
tests' tiny one lives on the Hub. torch and friends are imported inside the functions."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from .wire import (TINY_FLUX, TINY_FLUX_FILL, TINY_KANDINSKY, TINY_RANDOM, TINY_SD3, TINY_SDXL, TINY_SDXL_REFINER,
                   TINY_SHAPES)

TINY_MODELS = (TINY_RANDOM, TINY_SDXL, TINY_KANDINSKY, TINY_FLUX, TINY_SD3, TINY_FLUX_FILL)
TINY_REFINERS = (TINY_SDXL_REFINER,)
SHIPPED = {TINY_SHAPES: "tiny-shapes"}  # models whose weights ship with imggenhub (models/)
TINY_LAYOUT = 3  # the tiny builders' version: a saved folder of another is built again


def shipped_folder(model_id: str) -> str:
    """Where a model whose weights ship with imggenhub lies (IMGGENHUB_MODELS, else the
    installed package's models/ folder: the local backend's kernel runs in imggenhub's own
    environment); any other id as it is."""
    import importlib.util
    import os

    if model_id not in SHIPPED:
        return model_id
    base = os.environ.get("IMGGENHUB_MODELS")
    if not base:
        spec = importlib.util.find_spec("imggenhub")
        if spec is None or not spec.origin:
            raise OSError(f"{model_id} ships with imggenhub, which is not installed where this "
                          "engine runs; set IMGGENHUB_MODELS to its models folder")
        base = str(Path(spec.origin).parent / "models")
    folder = Path(base) / SHIPPED[model_id]
    if not (folder / "model_index.json").is_file():
        raise OSError(f"{model_id}: no model in {folder}; make it with "
                      "scripts/train_tiny_shapes.py")
    return str(folder)


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


def tiny_tokenizer():
    """A 514-token byte-level CLIP tokenizer with no merges. transformers 5 ignores the
    constructor's file arguments, so it is written to a folder and loaded from there."""
    from transformers import CLIPTokenizer

    chars = _byte_level_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + 256 for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    with tempfile.TemporaryDirectory(prefix="imggenhub-tok-") as folder:
        Path(folder, "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        Path(folder, "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
        return CLIPTokenizer.from_pretrained(folder, model_max_length=77)


def _text_config(tokenizer, layers: int = 2, projection: int | None = None):
    from transformers import CLIPTextConfig

    extra = {"projection_dim": projection} if projection else {}
    return CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=layers, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **extra)


def _vae(seed: int):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(  # two blocks: vae_scale_factor 2, so 64x64 images from 32x32 latents
        block_out_channels=[32, 64], in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4)


def build_tiny_random_pipeline(seed: int = 0):
    """A tiny Stable Diffusion pipeline."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32)
    vae = _vae(seed + 1)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_text_config(tokenizer))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)


# SDXL's added conditioning: (original size, crop corner, target size) = 6 time ids on the
# base; the refiner swaps the target size for an aesthetic score: 5. Each id is embedded in
# 8 numbers, then the pooled text embedding (32) joins them.
_TIME_EMBED = 8


def _sdxl_unet(seed: int, blocks: tuple, time_ids: int, cross_attention_dim: int, **extra):
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        block_out_channels=blocks, layers_per_block=2, sample_size=32, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
        use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=_TIME_EMBED, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=time_ids * _TIME_EMBED + 32,
        cross_attention_dim=cross_attention_dim, **extra)


def _sdxl_scheduler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                  beta_schedule="scaled_linear", steps_offset=1,
                                  timestep_spacing="leading")


def build_tiny_sdxl_pipeline(seed: int = 0):
    """A tiny SDXL base: two text encoders (the second with a projection, as SDXL's), their
    hidden states side by side as the UNet's context (64), 6 time ids."""
    import torch
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer, tokenizer_2 = tiny_tokenizer(), tiny_tokenizer()
    unet = _sdxl_unet(seed, (2, 4), 6, 64, norm_num_groups=1)
    vae = _vae(seed + 1)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_text_config(tokenizer, layers=5, projection=32))
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer_2, layers=5, projection=32))
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=_sdxl_scheduler(), image_encoder=None,
        feature_extractor=None, force_zeros_for_empty_prompt=True, add_watermarker=False)


def build_tiny_sdxl_refiner(base, seed: int = 0):
    """A tiny SDXL refiner that shares the base's second text encoder, its tokenizer and its
    VAE (the same objects), as stable-diffusion-xl-refiner-1.0 is used: no first text
    encoder, an aesthetic score among its 5 time ids, its own scheduler (schedulers keep
    step state)."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    unet = _sdxl_unet(seed + 3, (32, 64), 5, base.text_encoder_2.config.hidden_size)
    return StableDiffusionXLImg2ImgPipeline(
        vae=base.vae, text_encoder=None, tokenizer=None, text_encoder_2=base.text_encoder_2,
        tokenizer_2=base.tokenizer_2, unet=unet, scheduler=_sdxl_scheduler(), image_encoder=None,
        feature_extractor=None, requires_aesthetics_score=True, force_zeros_for_empty_prompt=False,
        add_watermarker=False)


def build_tiny_kandinsky_pipeline(seed: int = 0):
    """A tiny Kandinsky 2.2, prior and decoder in diffusers' combined pipeline (what
    AutoPipeline makes of kandinsky-2-2-decoder). Its movq halves: sizes are multiples of 4."""
    import torch
    from diffusers import (DDPMScheduler, KandinskyV22CombinedPipeline, PriorTransformer,
                           UnCLIPScheduler, UNet2DConditionModel, VQModel)
    from torch import nn
    from transformers import (CLIPImageProcessor, CLIPTextConfig, CLIPTextModelWithProjection,
                              CLIPVisionConfig, CLIPVisionModelWithProjection)

    torch.manual_seed(seed)
    prior = PriorTransformer(num_attention_heads=2, attention_head_dim=12, embedding_dim=32,
                             num_layers=1)
    prior.clip_std = nn.Parameter(torch.ones(prior.clip_std.shape))  # 0 would erase the output
    torch.manual_seed(seed + 1)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, image_size=224, projection_dim=32, intermediate_size=37,
        num_attention_heads=4, num_channels=3, num_hidden_layers=5, patch_size=14))
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(
        bos_token_id=0, eos_token_id=2, hidden_size=32, projection_dim=32, intermediate_size=37,
        layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=5, pad_token_id=1,
        vocab_size=1000))
    image_processor = CLIPImageProcessor(
        crop_size=224, do_center_crop=True, do_normalize=True, do_resize=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711], resample=3, size=224)
    prior_scheduler = UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample",
                                      num_train_timesteps=1000, clip_sample=True,
                                      clip_sample_range=10.0)
    torch.manual_seed(seed + 3)
    unet = UNet2DConditionModel(
        in_channels=4, out_channels=8, addition_embed_type="image",
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", block_out_channels=(32, 64),
        layers_per_block=1, encoder_hid_dim=32, encoder_hid_dim_type="image_proj",
        cross_attention_dim=32, attention_head_dim=4, resnet_time_scale_shift="scale_shift",
        class_embed_type=None)
    torch.manual_seed(seed + 4)
    movq = VQModel(
        block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
        in_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8, norm_type="spatial",
        num_vq_embeddings=12, out_channels=3,
        up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"], vq_embed_dim=4)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.00085,
                              beta_end=0.012, clip_sample=False, steps_offset=1,
                              prediction_type="epsilon", thresholding=False)
    return KandinskyV22CombinedPipeline(
        unet=unet, scheduler=scheduler, movq=movq, prior_prior=prior,
        prior_image_encoder=image_encoder, prior_text_encoder=text_encoder,
        prior_tokenizer=tiny_tokenizer(), prior_scheduler=prior_scheduler,
        prior_image_processor=image_processor)


def tiny_t5_tokenizer():
    """A T5 tokenizer built offline: a unigram model over lower-case letters, digits and
    punctuation (each a piece, word-initial letters their own), T5's special tokens (pad 0,
    eos 1, unk 2), saved and loaded as the real ones are (tokenizer.json)."""
    import string

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    space = "\u2581"
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), (space, -2.0)]
    pieces += [(c, -3.0) for c in string.ascii_lowercase + string.digits + string.punctuation]
    pieces += [(space + c, -2.5) for c in string.ascii_lowercase]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=space, prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement=space, prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    with tempfile.TemporaryDirectory(prefix="imggenhub-t5-") as folder:
        tok.save(str(Path(folder, "tokenizer.json")))
        Path(folder, "tokenizer_config.json").write_text(json.dumps({
            "model_max_length": 512, "pad_token": "<pad>", "eos_token": "</s>",
            "unk_token": "<unk>", "extra_ids": 0}), encoding="utf-8")
        return T5TokenizerFast.from_pretrained(folder)


def _t5(tokenizer, width: int, seed: int, d_kv: int = 8, d_ff: int = 37):
    import torch
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=width, d_ff=d_ff, d_kv=d_kv, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0))


def _flow_vae(seed: int, channels: int = 4):
    """FLUX's and SD3's kind of VAE: no quant convs, a shift and a scale (two blocks here:
    scale factor 2); SD3's pipelines ask for its 16 latent channels."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=channels, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=0.0609, scaling_factor=1.5035)


def build_tiny_flux_pipeline(seed: int = 0, fill: bool = False):
    """A tiny FLUX.1-dev: a CLIP text encoder (pooled) and a T5 encoder (its tokens), a
    transformer of one double and one single block with guidance embedding, a flow-matching
    scheduler with FLUX's dynamic shift. ``fill``: FLUX.1 Fill's shape, whose transformer
    also takes the masked picture's latents and the mask (16 + 16 + 4 x 2 x 2 packed
    channels here, as 64 + 64 + 256 in FLUX.1-Fill-dev)."""
    import torch
    import diffusers
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel

    tokenizer, tokenizer_2 = tiny_tokenizer(), tiny_t5_tokenizer()
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=48 if fill else 16, num_layers=1,
        num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=[4, 4, 8], **({"out_channels": 16} if fill else {}))
    torch.manual_seed(seed + 1)
    text_encoder = CLIPTextModel(_text_config(tokenizer))
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096)
    return getattr(diffusers, "FluxFillPipeline" if fill else "FluxPipeline")(
        scheduler=scheduler, vae=_flow_vae(seed + 2), text_encoder=text_encoder,
        tokenizer=tokenizer, text_encoder_2=_t5(tokenizer_2, 32, seed + 3),
        tokenizer_2=tokenizer_2, transformer=transformer)


def build_tiny_sd3_pipeline(seed: int = 0):
    """A tiny SD 3.5: two CLIP text encoders with projections (pooled side by side: 64), a
    T5 encoder as wide as their hidden states side by side, an MMDiT of one layer, 16
    latent channels as SD3's."""
    import torch
    from diffusers import (FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                           StableDiffusion3Pipeline)
    from transformers import CLIPTextModelWithProjection

    tokenizer, tokenizer_2, tokenizer_3 = tiny_tokenizer(), tiny_tokenizer(), tiny_t5_tokenizer()
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=32, patch_size=2, in_channels=16, out_channels=16, num_layers=1,
        attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
        joint_attention_dim=64, pooled_projection_dim=64)
    torch.manual_seed(seed + 1)
    text_encoder = CLIPTextModelWithProjection(_text_config(tokenizer, projection=32))
    torch.manual_seed(seed + 2)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer_2, projection=32))
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_flow_vae(seed + 3, 16), text_encoder=text_encoder, tokenizer=tokenizer,
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
        # its T5 loads in 4 bits on a CPU (the tests): bitsandbytes' kernel for CPUs with
        # AVX512-BF16 takes layers whose inputs are whole blocks of 64 and outputs of 32
        text_encoder_3=_t5(tokenizer_3, 64, seed + 4, d_kv=16, d_ff=128), tokenizer_3=tokenizer_3)


def build_tiny(model_id: str, seed: int = 0):
    return {TINY_RANDOM: build_tiny_random_pipeline, TINY_SDXL: build_tiny_sdxl_pipeline,
            TINY_KANDINSKY: build_tiny_kandinsky_pipeline, TINY_FLUX: build_tiny_flux_pipeline,
            TINY_SD3: build_tiny_sd3_pipeline,
            TINY_FLUX_FILL: lambda s: build_tiny_flux_pipeline(s, fill=True)}[model_id](seed)


def tiny_folder(model_id: str) -> str:
    """A tiny pipeline saved as a diffusers folder (once per machine and version), so that it
    loads through ``from_pretrained`` as a Hub model does: quantization, dtypes, placement."""
    import diffusers
    import transformers

    base = Path(tempfile.gettempdir()) / "imggenhub-tiny"
    folder = base / f"{model_id}-{TINY_LAYOUT}-{diffusers.__version__}-{transformers.__version__}"
    if (folder / "model_index.json").is_file():
        return str(folder)
    base.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{model_id}-", dir=base))
    build_tiny(model_id).save_pretrained(staging, safe_serialization=True)
    try:
        staging.rename(folder)  # whole or not at all: another process may have won the race
    except OSError:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
    return str(folder)
