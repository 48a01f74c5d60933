"""models: the model presets and their defaults."""

from __future__ import annotations

from .options import Json
from .output import echo, result


def models(json: Json = False) -> None:
    """List the model presets and their defaults."""
    from ..engine.memory import KAGGLE_T4X2, DoesNotFit, plan_memory
    from ..job.models import PRESETS

    if json:
        result([p.as_dict() for p in PRESETS.values()], "", True)
        return
    echo(f"{'preset':<17} {'size':>9} {'steps':>5} {'cfg':>5}  model id / note")
    for p in PRESETS.values():
        size = f"{p.width}x{p.height}" if p.width else "model's"
        echo(f"{p.name:<17} {size:>9} {p.steps:>5} {p.guidance:>5}  {p.id}")
        terms = (f"licence {p.licence}" if p.licence else "") + (
            "; gated: accept its terms on the Hub, then --hf-token-env VAR" if p.gated else "")
        plan = ""
        if p.memory and not p.memory.startswith("tiny-"):
            try:
                got = plan_memory(p.memory, KAGGLE_T4X2, "auto", p.width, p.height)
                plan = (f"on Kaggle's 2 x T4: {got.quantize}, {got.mode}, {got.processes} "
                        f"process{'es' if got.processes > 1 else ''} (memory plan)")
            except DoesNotFit:
                plan = "does not fit Kaggle's 2 x T4"
        for line in (p.note, terms, plan):
            if line:
                echo(f"{'':<41}{line}")
    echo("Any other Hugging Face id (owner/name) loads with diffusers' AutoPipeline.")
