"""Train tiny-shapes from nothing: a Stable-Diffusion-shaped pipeline (diffusers' own
AutoencoderKL, UNet2DConditionModel, CLIPTextModel and a CLIP tokenizer whose words are
whole tokens) on imggenhub.shapes' drawn scenes, seeded, on a CPU. It writes a diffusers
folder (safetensors) that StableDiffusionPipeline.from_pretrained loads as it is, so
img2img, inpainting, LoRA and textual inversion run on it unchanged.

    .venv/bin/python scripts/train_tiny_shapes.py --out imggenhub/models/tiny-shapes

The recipe is diffusers' text-to-image one: the VAE first (reconstruction + a small KL),
then the UNet and the text encoder together on the VAE's scaled latents (DDPM noise
schedule, epsilon prediction, 10 % of captions dropped for classifier-free guidance).
It prints each phase's time and, at the end, what the checker reads in pictures made
from held-out prompts (colour-shape pairs never seen in training)."""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from imggenhub import shapes  # noqa: E402
from imggenhub.shapes import MAX_TOKENS, evaluate, word_tokenizer  # noqa: E402

FOREGROUND_WEIGHT = 3.0  # the VAE's loss on a shape's pixels, over the background's


def pictures(scenes, seed: int, any_colour: bool = False):
    """The scenes drawn (jittered), as a float tensor in [-1, 1], N x 3 x 64 x 64; with
    ``any_colour``, their shapes in colours at random (any hue; saturation and brightness
    from a half up), for the VAE: an autoencoder of these pictures, not of the six named
    colours only, gives back a colour it never saw (what fine-tuning a new colour needs: a
    VAE of six colours turned cyan to blue)."""
    import colorsys

    import numpy as np
    import torch

    rng = random.Random(seed)
    arr = []
    for s in scenes:
        fill = None
        if any_colour:
            rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.0))
            fill = tuple(round(255 * c) for c in rgb)
        arr.append(np.asarray(shapes.draw(s, rng, fill=fill)))
    return torch.from_numpy(np.stack(arr)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def as_pixels(out):
    """Decoded pictures (N x 3 x H x W in [-1, 1]) as uint8 arrays, N x H x W x 3."""
    return ((out.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def foreground(images, factor: int):
    """Where each picture's shape is (what differs from its corner's colour), at the
    latents' size (a latent pixel counts if any of its pixels does): N x 1 x H/f x W/f."""
    import torch

    bg = images[:, :, :1, :1]
    mask = ((images - bg).abs().sum(dim=1, keepdim=True) > 0.5).float()
    return torch.nn.functional.max_pool2d(mask, factor)


def make_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 3,
                         up_block_types=("UpDecoderBlock2D",) * 3,
                         block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=16,
                         mid_block_add_attention=False, sample_size=shapes.SIZE)


def stitched(z, x, gen, share: float):
    """A share of the batch's latents with others' beyond a cut (across or down, at a
    latent column or row at random), and the pictures cut the same way: what inpainting
    decodes (the kept picture's latents beside the drawn ones, each encoded alone). The
    decoder's convolutions and group norms reach across the cut, so one that never saw
    such latents tints the kept part (a red disc beside a green one came back purple)."""
    import torch

    n, size, scale = int(len(z) * share), z.shape[-1], x.shape[-1] // z.shape[-1]
    cut = torch.randint(1, size, (n,), generator=gen)
    across = torch.rand(n, generator=gen) < 0.5
    pos = torch.arange(size)
    keep = torch.where(across[:, None, None], pos[None, None, :] < cut[:, None, None],
                       pos[None, :, None] < cut[:, None, None])[:, None]  # (n, 1, h, w)
    big = keep.repeat_interleave(scale, -1).repeat_interleave(scale, -2)
    z = torch.cat([z[:n], torch.where(keep, z[n:2 * n], z[:n]), z[2 * n:]])
    x = torch.cat([x[:n], torch.where(big, x[n:2 * n], x[:n]), x[2 * n:]])
    return z, x


def train_vae(images, steps: int, batch: int, seed: int, log, fg_weight: float = FOREGROUND_WEIGHT,
              stitch: float = 0.0):
    import torch

    torch.manual_seed(seed)
    vae = make_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(  # a cosine down to a tenth
        opt, lambda s: 0.1 + 0.45 * (1 + math.cos(math.pi * s / steps)))
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(0, len(images), (batch,), generator=gen)
        x = images[idx]
        post = vae.encode(x).latent_dist
        z = post.sample(generator=gen)
        if stitch:
            z, x = stitched(z, x, gen, stitch)
        recon = vae.decode(z).sample
        # the shape is a small part of the picture: its pixels weigh more, or the colours
        # come back muddy (a plain MSE is won by the background)
        weight = 1.0 + fg_weight * foreground(x, 1)
        loss = (weight * (recon - x) ** 2).mean() + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"vae step {step + 1}/{steps}: loss {loss.item():.4f}")
    vae.eval()
    return vae


def vae_check(vae, n: int, seed: int) -> tuple[float, float]:
    """The shares of drawn scenes whose colour and shape the checker reads right after the
    VAE's round trip: what the UNet can at best draw."""
    import torch
    from PIL import Image

    scenes = shapes.scenes(random.Random(seed), n)
    x = pictures(scenes, seed)
    with torch.no_grad():
        out = vae.decode(vae.encode(x).latent_dist.mean).sample
    reads = [(shapes.read(Image.fromarray(a)), s) for s, a in zip(scenes, as_pixels(out))]
    return (sum(r.colour == s.colour for r, s in reads) / n,
            sum(r.shape == s.shape for r, s in reads) / n)


def vae_cut_check(vae) -> float:
    """The share of cut pictures whose kept part the checker reads right: a small shape in
    the left half's latents, a large one of another colour in the right half's (each
    encoded alone), decoded together, as inpainting decodes them; every ordered pair of
    the six colours, two layouts, both backgrounds (120 pictures)."""
    import torch
    from PIL import Image

    def latents(scene):
        with torch.no_grad():
            return vae.encode(pictures([scene], 0)).latent_dist.mean

    right = n = 0
    layouts = (("circle", "top left", "circle", "bottom right"),
               ("square", "bottom left", "triangle", "top right"))
    for kept, drawn in itertools.permutations(shapes.COLOURS, 2):
        for shape, place, other, there in layouts:
            for ground in shapes.BACKGROUNDS:
                a = latents(shapes.Scene(kept, shape, "small", place, ground))
                b = latents(shapes.Scene(drawn, other, "large", there, ground))
                half = a.shape[-1] // 2
                with torch.no_grad():
                    out = vae.decode(torch.cat([a[..., :half], b[..., half:]], -1)).sample
                read = shapes.read(Image.fromarray(as_pixels(out)[0][:, :28]))
                right += (read.colour, read.shape) == (kept, shape)
                n += 1
    return right / n


def make_unet_and_encoder(tokenizer, width: int, text_width: int, text_layers: int,
                          attention: str = "8,4", only_cross: bool = False):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=text_width, intermediate_size=text_width * 2,
        num_attention_heads=4, num_hidden_layers=text_layers, max_position_embeddings=MAX_TOKENS,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    # attention at 8x8 and 4x4 only (or 4x4 only): at 16x16 it costs most of a step on a CPU
    sizes = [int(a) for a in attention.split(",")]
    attn = [size in sizes for size in (16, 8, 4)]
    unet = UNet2DConditionModel(
        sample_size=shapes.SIZE // 4, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(width, width * 2, width * 2), norm_num_groups=16,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        cross_attention_dim=text_width, attention_head_dim=8, only_cross_attention=only_cross)
    return unet, text


def captions(scenes, tokenizer):
    """Each scene's caption as token ids, N x 3 x MAX_TOKENS: whole, without its colour
    word, without its shape word (what word dropout picks from)."""
    def without(scene, word):
        return " ".join(w for w in scene.caption.split() if w != word)

    texts = [t for s in scenes for t in (s.caption, without(s, s.colour), without(s, s.shape))]
    ids = tokenizer(texts, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                    return_tensors="pt").input_ids
    return ids.view(len(scenes), 3, MAX_TOKENS)


def train_unet(latents, spread, ids, tokenizer, steps: int, batch: int, seed: int, width: int,
               text_width: int, text_layers: int, log, drop: float = 0.1, lr: float = 1e-3,
               ema: float = 0.0, snr_gamma: float = 0.0, word_drop: float = 0.0,
               attention: str = "8,4", only_cross: bool = False, fused: bool = False,
               t_power: float = 1.0, shape_weight=None, prediction: str = "epsilon"):
    import torch
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel, compute_snr

    from imggenhub.engine.training import target_of

    torch.manual_seed(seed)
    unet, text = make_unet_and_encoder(tokenizer, width, text_width, text_layers, attention,
                                       only_cross)
    noise_sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                beta_schedule="scaled_linear", clip_sample=False,
                                prediction_type=prediction)
    params = [*unet.parameters(), *text.parameters()]
    # fused: AdamW's update, the EMA and the gradients' norm each in a few calls, not a few
    # per tensor (a step here is mostly per-call cost, not arithmetic)
    averaged = EMAModel(params, decay=ema, foreach=fused) if ema else None
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2, fused=fused or None)
    warm = max(1, steps // 20)  # a short warm-up, then a cosine down to nothing
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    empty = tokenizer("", padding="max_length", max_length=MAX_TOKENS, truncation=True,
                      return_tensors="pt").input_ids[0]
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(0, len(latents), (batch,), generator=gen)
        x0 = latents[idx]
        if spread is not None:  # a fresh draw from the VAE's posterior, as diffusers trains
            x0 = x0 + spread[idx] * torch.randn(x0.shape, generator=gen)
        # word dropout: a caption without its colour (or shape) word still shows one, so
        # each word has to carry its own part of the picture (what held-out pairs need)
        pick = torch.rand(batch, generator=gen)
        variant = (pick < 2 * word_drop).long() + (pick < word_drop).long()
        tokens = ids[idx, variant].clone()
        dropped = torch.rand(batch, generator=gen) < drop
        tokens[dropped] = empty
        noise = torch.randn(x0.shape, generator=gen)
        if t_power == 1.0:
            t = torch.randint(0, 1000, (batch,), generator=gen)
        else:  # more of the noisy steps, where a picture's shape is decided (density ~ t^(p-1))
            t = (1000 * torch.rand(batch, generator=gen) ** (1 / t_power)).long().clamp(max=999)
        noisy = noise_sched.add_noise(x0, noise, t)
        context = text(tokens)[0]
        pred = unet(noisy, t, encoder_hidden_states=context).sample
        # v-prediction: at the noisiest steps the target is mostly the picture itself, so
        # the steps that decide its shape teach the shape (epsilon's target there is the noise)
        error = (pred - target_of(noise_sched, x0, noise, t)) ** 2
        if shape_weight is not None:  # the shape's latent pixels weigh more than the ground's
            error = error * shape_weight[idx]
        error = error.mean(dim=(1, 2, 3))
        if snr_gamma:  # min-SNR weighting (diffusers' --snr_gamma): easy steps weigh less
            snr = compute_snr(noise_sched, t)
            # (over snr + 1 for v: diffusers' weighting of the same curve)
            error = (torch.clamp(snr, max=snr_gamma) / (snr if prediction == "epsilon" else snr + 1)
                     * error)
        loss = error.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=fused or None)
        opt.step()
        sched.step()
        if averaged:
            averaged.step(params)
        if step % 200 == 0 or step == steps - 1:
            log(f"unet step {step + 1}/{steps}: loss {loss.item():.4f}")
    if averaged:
        averaged.copy_to(params)
    unet.eval()
    text.eval()
    return unet, text


def pipeline(vae, unet, text, tokenizer, prediction: str = "epsilon"):
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    sched = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_start=0.00085,
                                        beta_end=0.012, beta_schedule="scaled_linear",
                                        steps_offset=1, prediction_type=prediction)
    return StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                                   scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="the diffusers folder to write (none: no save)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", type=int, default=6000, help="drawn training scenes")
    ap.add_argument("--vae-steps", type=int, default=1500)
    ap.add_argument("--vae-batch", type=int, default=16)
    ap.add_argument("--unet-steps", type=int, default=6000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--fg-weight", type=float, default=FOREGROUND_WEIGHT,
                    help="the VAE loss's extra weight on a shape's pixels")
    ap.add_argument("--width", type=int, default=32, help="the UNet's first block's channels")
    ap.add_argument("--text-width", type=int, default=64)
    ap.add_argument("--text-layers", type=int, default=0,
                    help="the text encoder's transformer layers (0: word and place embeddings)")
    ap.add_argument("--ema", type=float, default=0.999, help="EMA decay of the weights (0: none)")
    ap.add_argument("--snr-gamma", type=float, default=5.0, help="min-SNR weighting (0: none)")
    ap.add_argument("--latents", choices=("sample", "mean"), default="mean",
                    help="train on draws from the VAE's posterior (diffusers' recipe) or its means")
    ap.add_argument("--word-drop", type=float, default=0.0,
                    help="share of captions trained without their colour word, and again "
                         "without their shape word")
    ap.add_argument("--vae-colours", choices=("named", "mix"), default="mix",
                    help="the VAE's pictures: the scenes in their six named colours, or those "
                         "and as many again in colours at random (it then gives back colours "
                         "it never saw, which fine-tuning a new colour needs)")
    ap.add_argument("--vae-stitch", type=float, default=0.25,
                    help="share of the VAE's batch decoded from two pictures' latents cut "
                         "together, what inpainting decodes (0: none)")
    ap.add_argument("--vae-from", type=Path,
                    help="a trained tiny-shapes folder whose VAE to reuse (skips that phase)")
    ap.add_argument("--eval", type=int, default=100, help="pictures checked (held-out prompts)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    ap.add_argument("--attention", default="8,4",
                    help="the latent sizes whose UNet blocks have attention (16, 8, 4)")
    ap.add_argument("--only-cross", action=argparse.BooleanOptionalAction, default=True,
                    help="the UNet's attention blocks attend to the caption only, not to the "
                         "picture itself (a quarter cheaper a step on a CPU)")
    ap.add_argument("--fused", action=argparse.BooleanOptionalAction, default=True,
                    help="fused AdamW, foreach EMA and gradient norm (fewer calls a step)")
    ap.add_argument("--shape-loss", type=float, default=0.0,
                    help="the UNet loss's extra weight on the shape's latent pixels (0: none)")
    ap.add_argument("--t-power", type=float, default=1.0,
                    help="timesteps drawn with density ~ t^(p-1) (1: uniform, diffusers' recipe)")
    ap.add_argument("--prediction", choices=("epsilon", "v_prediction"), default="epsilon",
                    help="what the UNet learns to predict: the noise, or v (diffusers' two)")
    args = ap.parse_args(argv)

    import torch

    torch.set_flush_denormal(True)  # tiny values in the VAE's early steps cost 3x on a CPU
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - t0:7.1f}s] {message}", flush=True)

    tokenizer = word_tokenizer()
    scenes = shapes.scenes(random.Random(args.seed), args.images)
    images = pictures(scenes, args.seed + 1)
    ids = captions(scenes, tokenizer)
    log(f"{len(scenes)} scenes drawn; {len(tokenizer)} tokens")
    if args.vae_from:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(args.vae_from, subfolder="vae").eval()
    else:
        vae_images = images if args.vae_colours == "named" else torch.cat(
            [images, pictures(scenes, args.seed + 5, any_colour=True)])
        vae = train_vae(vae_images, args.vae_steps, args.vae_batch, args.seed + 2, log,
                        args.fg_weight, args.vae_stitch)
    t_vae = time.monotonic() - t0
    colour, shape = vae_check(vae, 200, args.seed + 50)
    round_trip = {"colour": colour, "shape": shape, "kept_beside_a_cut": vae_cut_check(vae)}
    log(f"VAE round trip: colour read right in {colour:.0%}, shape in {shape:.0%}; "
        f"a shape kept beside another's latents read right in {round_trip['kept_beside_a_cut']:.0%}")
    if not args.unet_steps:
        return
    with torch.no_grad():
        dists = [vae.encode(images[i:i + 256]).latent_dist for i in range(0, len(images), 256)]
    means = torch.cat([d.mean for d in dists])
    # img2img and inpainting encode their picture with a draw from the posterior
    # (diffusers' retrieve_latents): the UNet learns on such draws too, unless --latents mean
    spread = torch.cat([d.std for d in dists]) if args.latents == "sample" else None
    drawn = means if spread is None else means + spread * torch.randn(
        means.shape, generator=torch.Generator().manual_seed(args.seed + 4))
    vae.register_to_config(scaling_factor=float(1.0 / drawn.std()))
    scale = vae.config.scaling_factor
    latents, spread = means * scale, None if spread is None else spread * scale
    log(f"latents {tuple(latents.shape[1:])} ({args.latents}), scaling factor {scale:.3f}")
    shape_weight = None
    if args.shape_loss:
        factor = images.shape[-1] // latents.shape[-1]
        shape_weight = 1.0 + args.shape_loss * foreground(images, factor)
    unet, text = train_unet(latents, spread, ids, tokenizer, args.unet_steps, args.batch, args.seed + 3,
                            args.width, args.text_width, args.text_layers, log,
                            ema=args.ema, snr_gamma=args.snr_gamma, word_drop=args.word_drop,
                            attention=args.attention, only_cross=args.only_cross, fused=args.fused,
                            t_power=args.t_power, shape_weight=shape_weight,
                            prediction=args.prediction)
    t_train = time.monotonic() - t0
    pipe = pipeline(vae, unet, text, tokenizer, args.prediction)
    pipe.set_progress_bar_config(disable=True)
    log(f"trained: VAE {t_vae:.0f}s, all {t_train:.0f}s")
    record = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "seconds": {"vae": round(t_vae), "all": round(t_train)},
              "torch_threads": torch.get_num_threads(), "held_out": sorted(shapes.HELD_OUT),
              "vae_round_trip": round_trip}
    if args.out:
        pipe.save_pretrained(args.out, safe_serialization=True)
        shapes.write_for_transformers_4(args.out)
        size = sum(p.stat().st_size for p in Path(args.out).rglob("*") if p.is_file())
        log(f"saved {args.out} ({size / 1e6:.1f} MB)")
    if args.eval:
        for held in (True, False):
            got = evaluate(pipe, args.eval, args.seed + 100, held_out=held)
            record["held-out" if held else "training"] = got
            log(f"{'held-out' if held else 'training'} prompts, {got['n']} pictures at guidance "
                f"{got['guidance']:g}: colour "
                f"{got['colour']:.0%}, shape {got['shape']:.0%}")
    if args.out:  # how it was made, beside it
        (Path(args.out) / "training.json").write_text(json.dumps(record, indent=1) + "\n",
                                                      encoding="utf-8")


if __name__ == "__main__":
    main()
