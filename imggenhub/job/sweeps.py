"""Sweeps: --sweep NAME=V1,V2,... axes, each value checked against its flag's range, and
each prompt expanded into one prompt per cell (the prompt's seed kept, so that only the
swept values change between cells)."""

from __future__ import annotations

from pydantic import ValidationError

from ..engine import SCHEDULERS
from ..errors import SpecError
from .axes import SWEEPABLE
from .models import resolve_model
from .spec import SEED_MAX, PromptItem, Settings

MAX_SWEEP_CELLS = 100


def parse_sweeps(values: list[str]) -> list[tuple[str, list]]:
    """--sweep NAME=V1,V2,... (repeatable) -> [(name, [values])], each value checked."""
    axes = []
    for raw in values:
        name, sep, rest = raw.partition("=")
        name = name.strip().lower()
        if not sep or not rest.strip():
            raise SpecError(f"--sweep {raw[:60]!r} must be NAME=V1,V2,... (for example "
                            "guidance=3,5,7).")
        if name not in SWEEPABLE:
            raise SpecError(f"--sweep {name}: sweepable are {', '.join(SWEEPABLE)}.")
        if name in (a for a, _ in axes):
            raise SpecError(f"--sweep {name} is given twice; give its values once.")
        parsed = []
        for value in (v.strip() for v in rest.split(",")):
            try:
                if name == "steps":
                    parsed.append(int(value))
                elif name in ("guidance", "strength", "lora-scale", "refiner-start"):
                    parsed.append(float(value))
                elif name == "size":
                    w, _, h = value.lower().partition("x")
                    parsed.append(f"{int(w)}x{int(h)}")
                elif name == "model":
                    resolve_model(value)
                    parsed.append(value)
                else:
                    if value not in SCHEDULERS:
                        raise ValueError
                    parsed.append(value)
            except ValueError:
                raise SpecError(f"--sweep {name}: {value[:40]!r} is not a {name} value.") from None
            _check_swept(name, parsed[-1])
        if len(set(parsed)) != len(parsed):
            raise SpecError(f"--sweep {name}: a value is given twice.")
        axes.append((name, parsed))
    cells = 1
    for _, vals in axes:
        cells *= len(vals)
    if cells > MAX_SWEEP_CELLS:
        raise SpecError(f"The sweep makes {cells} cells a prompt, more than {MAX_SWEEP_CELLS}; "
                        "sweep fewer values.")
    return axes


def _check_swept(name: str, value) -> None:
    """A swept value within the range its flag allows."""
    if name == "size":
        w, h = (int(x) for x in value.split("x"))
        fields = {"width": w, "height": h}
    elif name in ("steps", "guidance", "strength", "refiner-start"):
        fields = {name.replace("-", "_"): value}
    else:
        return
    try:
        Settings.model_validate(fields)
    except ValidationError as exc:
        why = exc.errors(include_url=False)[0]["msg"].lower()
        raise SpecError(f"--sweep {name}: {value} is out of range ({why}).") from None


def expand_sweeps(items: list[PromptItem], axes, base_seed: int):
    """Each prompt becomes one prompt per cell of the sweep, all with the prompt's seed, so
    that only the swept values change between cells."""
    import itertools

    out, cells = [], []
    for i, item in enumerate(items):
        seed = item.seed if item.seed is not None else (base_seed + i) % (SEED_MAX + 1)
        for combo in itertools.product(*(vals for _, vals in axes)):
            cell = dict(zip((name for name, _ in axes), combo))
            changes = {"seed": seed}
            extra = {}
            for name, value in cell.items():
                if name == "size":
                    w, h = (int(x) for x in value.split("x"))
                    changes.update(width=w, height=h)
                elif name in ("lora-scale", "refiner-start", "model"):
                    extra[name.replace("-", "_")] = value
                else:
                    changes[name] = value
            out.append(item.model_copy(update=changes))
            cells.append((cell, i, extra))
    return out, cells


def check_sweep(axes, settings: Settings, items: list[PromptItem], refiner: dict | None) -> None:
    """What a sweep's axes need of the rest of the job."""
    swept = dict(axes)
    if "lora-scale" in swept and not settings.lora:
        raise SpecError("--sweep lora-scale varies the first --lora's scale; give a --lora.")
    if any(not -10 <= v <= 10 for v in swept.get("lora-scale", [])):
        raise SpecError("--sweep lora-scale: each scale must be within -10..10.")
    if "refiner-start" in swept and refiner is None:
        raise SpecError("--sweep refiner-start needs --refiner.")
    if any(not 0 < v < 1 for v in swept.get("refiner-start", [])):
        raise SpecError("--sweep refiner-start: each value must be between 0 and 1.")
    if "model" in swept and (settings.lora or settings.embedding or refiner or
                             settings.init_image or any(i.init_image for i in items)):
        raise SpecError("--sweep model: LoRAs, embeddings, a refiner and init images belong "
                        "to one model; sweep models over plain text-to-image prompts.")
