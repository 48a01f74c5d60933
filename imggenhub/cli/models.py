"""models: the model presets and their defaults."""

from __future__ import annotations

from .options import Json
from .output import echo, result


def models(json: Json = False) -> None:
    """List the model presets and their defaults."""
    from ..job.models import PRESETS

    if json:
        result([p.as_dict() for p in PRESETS.values()], "", True)
        return
    echo(f"{'preset':<15} {'size':>9} {'steps':>5} {'cfg':>5}  model id / note")
    for p in PRESETS.values():
        size = f"{p.width}x{p.height}" if p.width else "model's"
        echo(f"{p.name:<15} {size:>9} {p.steps:>5} {p.guidance:>5}  {p.id}")
        if p.note:
            echo(f"{'':<39}{p.note}")
    echo("Any other Hugging Face id (owner/name) loads with diffusers' AutoPipeline.")
