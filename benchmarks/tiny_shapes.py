"""tiny-shapes, measured: what the checker (imggenhub.shapes.read) reads in pictures the
trained model makes from held-out prompts (colour-shape pairs it never saw in training),
at several guidance scales, and from training prompts at its preset's guidance; with the
training time its folder records. The goals: colour right >= 90 %, shape right >= 70 % on
held-out prompts.

    .venv/bin/python benchmarks/tiny_shapes.py            # 4 draws of 100 pictures a figure
    .venv/bin/python benchmarks/tiny_shapes.py --quick    # a few, to see that it runs
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(REPO / "imggenhub" / "models" / "tiny-shapes"),
                    help="the diffusers folder scripts/train_tiny_shapes.py wrote")
    ap.add_argument("--n", type=int, default=100, help="pictures per draw")
    ap.add_argument("--draws", type=int, default=4,
                    help="held-out draws of n pictures (other prompts and seeds) per guidance")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", default="1,2,4,7", help="guidance scales, comma-separated")
    ap.add_argument("--quick", action="store_true", help="a few pictures at one guidance")
    args = ap.parse_args(argv)
    from imggenhub.shapes import GUIDANCE, evaluate

    if args.quick:
        args.n, args.steps, args.guidance, args.draws = 4, 4, f"{GUIDANCE:g}", 1

    import torch
    from diffusers import StableDiffusionPipeline

    folder = Path(args.model)
    made = folder / "training.json"
    if made.is_file():
        record = json.loads(made.read_text(encoding="utf-8"))
        print(f"training: {record['seconds']['all']} s ({record['seconds']['vae']} s of it the "
              f"VAE) on {record['torch_threads']} torch threads"
              + (f"; {record['note']}" if record.get("note") else ""))
    t0 = time.monotonic()
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    print(f"loaded {folder.name} in {time.monotonic() - t0:.1f}s; {torch.get_num_threads()} "
          "torch threads")
    for guidance in (float(g) for g in args.guidance.split(",")):
        t0 = time.monotonic()
        draws = [evaluate(pipe, args.n, 1000 * (k + 1), steps=args.steps, guidance=guidance)
                 for k in range(args.draws)]
        per = (time.monotonic() - t0) / (args.n * args.draws)
        colour = sum(d["colour"] for d in draws) / len(draws)
        shape = sum(d["shape"] for d in draws) / len(draws)
        spread = "" if len(draws) == 1 else (
            f" (draws of {args.n}: colour {min(d['colour'] for d in draws):.0%}-"
            f"{max(d['colour'] for d in draws):.0%}, shape {min(d['shape'] for d in draws):.0%}-"
            f"{max(d['shape'] for d in draws):.0%})")
        print(f"held-out prompts, guidance {guidance:g} ({args.n * args.draws} pictures, "
              f"{per:.2f}s each, {args.steps} steps): colour {colour:.0%}, shape {shape:.0%}{spread}")
    got = evaluate(pipe, args.n, 2000, steps=args.steps, guidance=GUIDANCE, held_out=False)
    print(f"training prompts, guidance {GUIDANCE:g} ({args.n} pictures): colour "
          f"{got['colour']:.0%}, shape {got['shape']:.0%}")


if __name__ == "__main__":
    main()
