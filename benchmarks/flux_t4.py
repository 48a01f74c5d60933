"""Would FLUX.1 fit a T4, and how fast: for a lent GPU. A FLUX-shaped pipeline with
full-size random weights (the transformer's 11.9 billion, T5-XXL's encoder, CLIP-L and the
16-channel VAE, built from their published configs: nothing is downloaded), saved as a
diffusers folder in fp16, then loaded by the engine's own planned loader
(``load_planned``: diffusers' PipelineQuantizationConfig, NF4 for the transformer and T5,
the VAE in fp32 as on a T4) with the card's memory capped at a T4's 14.74 GiB
(``torch.cuda.set_per_process_memory_fraction``), so that a larger card answers for a T4.

Prints the memory plan it chose (what imggenhub plans for one of Kaggle's T4s), each
component's memory on the card, the peak while generating, and seconds per image at 1024 px
for 4 steps (schnell's) and 28 (dev's), with the plan's figures beside the measured ones
(ratio measured/planned). A larger card computes faster than a T4: its seconds are not a
T4's (a T4 is about a fifth of an H100 in fp16), its memory figures are.

    python benchmarks/flux_t4.py               # on a CUDA GPU with 40 GB of disk free
    python benchmarks/flux_t4.py --quick       # anywhere: the tiny FLUX, the same path
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from imggenhub.engine.memory import CONTEXT_GIB, GIB, KAGGLE_T4X2, Machine, plan_memory  # noqa: E402
from imggenhub.engine.pipelines import load_planned  # noqa: E402
from imggenhub.engine.tiny import (build_tiny_flux_pipeline, tiny_t5_tokenizer,  # noqa: E402
                                   tiny_tokenizer)
from imggenhub.job.models import resolve_model  # noqa: E402

PROMPT = "a lighthouse at dusk, volumetric light, detailed"
T4 = Machine(cards=1, card_gib=KAGGLE_T4X2.card_gib, host_gib=KAGGLE_T4X2.host_gib,
             capability=KAGGLE_T4X2.capability)  # one of Kaggle's two


def full_flux(device: str):
    """FLUX.1's architecture with random weights, built in fp16 on ``device`` (small
    uniform values: random weights must not overflow, or every picture is NaN)."""
    from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline,
                           FluxTransformer2DModel)
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    tokenizer, tokenizer_2 = tiny_tokenizer(), tiny_t5_tokenizer()
    torch.set_default_dtype(torch.float16)
    try:
        with torch.device(device):
            transformer = FluxTransformer2DModel(guidance_embeds=True)  # dev's: schnell's has none
            text_encoder_2 = T5EncoderModel(T5Config(
                vocab_size=32128, d_model=4096, d_ff=10240, d_kv=64, num_layers=24,
                num_heads=64, feed_forward_proj="gated-gelu", relative_attention_num_buckets=32))
            text_encoder = CLIPTextModel(CLIPTextConfig(
                vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                num_hidden_layers=12, hidden_act="quick_gelu", projection_dim=768,
                max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
            vae = AutoencoderKL(
                block_out_channels=[128, 256, 512, 512], in_channels=3, out_channels=3,
                down_block_types=["DownEncoderBlock2D"] * 4,
                up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=16, layers_per_block=2,
                use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159,
                scaling_factor=0.3611, sample_size=1024)
    finally:
        torch.set_default_dtype(torch.float32)
    with torch.no_grad():
        for model in (transformer, text_encoder_2, text_encoder, vae):
            for p in model.parameters():
                p.uniform_(-0.02, 0.02)
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                        tokenizer=tokenizer, text_encoder_2=text_encoder_2,
                        tokenizer_2=tokenizer_2, transformer=transformer)


def on_card(module) -> float:
    """GiB of a component's parameters and buffers (quantized ones as stored)."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors) / GIB


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="the tiny FLUX on this machine")
    parser.add_argument("--size", type=int, default=None, help="pixels a side (default 1024)")
    parser.add_argument("--steps", default="4,28")
    parser.add_argument("--images", type=int, default=2, help="timed images a step count")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    if not args.quick and not cuda:
        sys.exit("full size needs a CUDA GPU (11.9 billion random weights, NF4 on the card); "
                 "on a CPU use --quick.")
    full = cuda and not args.quick
    size = args.size or (1024 if full else 64)
    steps = [int(s) for s in args.steps.split(",")] if full else [2, 4]
    images = args.images if full else 1
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    machine = T4 if full else Machine(cards=0, host_gib=T4.host_gib)
    family = "flux" if full else "tiny-flux"
    plan = plan_memory(family, machine, "nf4" if full else "auto", size, size)
    print(f"plan for {'one of Kaggle T4s' if full else 'this CPU'}: {plan.line()}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "flux-random"
        t = time.monotonic()
        pipe = full_flux("cuda") if full else build_tiny_flux_pipeline()
        params = sum(p.numel() for name in ("transformer", "text_encoder_2", "text_encoder", "vae")
                     for p in getattr(pipe, name).parameters())
        pipe.save_pretrained(folder)
        del pipe
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        print(f"FLUX-shaped, {'full' if full else 'tiny'} size ({params / 1e9:.2f} billion "
              f"weights, random), built and saved in {time.monotonic() - t:.0f}s")
        if full:  # from here on the card is a T4 (14.74 GiB, less CUDA's context, which the
            # cap does not count), whatever it really has
            total = torch.cuda.get_device_properties(0).total_memory
            usable = (T4.card_gib - CONTEXT_GIB) * GIB
            torch.cuda.set_per_process_memory_fraction(min(1.0, usable / total))
            torch.cuda.reset_peak_memory_stats()
        # the saved folder, loaded as a Hub id of the family would be
        model = {**resolve_model("flux-dev" if full else "tiny-flux").engine_dict(),
                 "id": str(folder)}
        t = time.monotonic()
        try:
            pipe = load_planned(model, plan, "cuda:0" if full else "cpu")
        except torch.cuda.OutOfMemoryError as exc:
            sys.exit(f"does not fit a 15 GiB card: loading ran out of memory ({exc})")
        load = time.monotonic() - t
        pipe.set_progress_bar_config(disable=True)
        print(f"loaded as planned in {load:.1f}s")
        for part in plan.parts:
            measured = on_card(getattr(pipe, part.name))
            print(f"  {part.name:<15} {part.quant:>4} {part.dtype}: {measured:8.4f} GiB "
                  f"(planned {part.gib:.4f})")
        if full:
            loaded = torch.cuda.memory_allocated() / GIB
        for n in steps:
            if full:
                torch.cuda.reset_peak_memory_stats()
            times = []
            for i in range(images + 1):  # the first one warms up, untimed
                t = time.monotonic()
                try:
                    pipe(PROMPT, num_inference_steps=n, guidance_scale=3.5, width=size,
                         height=size, max_sequence_length=model["max_sequence_length"],
                         generator=torch.Generator("cpu").manual_seed(i)).images[0]
                except torch.cuda.OutOfMemoryError as exc:
                    sys.exit(f"does not fit a 15 GiB card at {size} px: generating ran out of "
                             f"memory ({exc})")
                if i:
                    times.append(time.monotonic() - t)
            per = sum(times) / len(times)
            peak = f", peak {torch.cuda.max_memory_reserved() / GIB:.2f} GiB reserved on the " \
                   f"card (loaded {loaded:.2f})" if full else ""
            print(f"{n} steps at {size} px: {per:.2f} s an image{peak}")
        if full:
            peak = torch.cuda.max_memory_reserved() / GIB + CONTEXT_GIB  # as the plan counts
            print(f"ratio measured/planned peak: {peak / plan.peak_gib:.2f}x")
        else:
            weights = sum(on_card(getattr(pipe, p.name)) for p in plan.parts)
            print(f"ratio measured/planned weights: {weights / max(1e-9, sum(p.gib for p in plan.parts)):.2f}x")


if __name__ == "__main__":
    main()
