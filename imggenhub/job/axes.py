"""The parameters a --sweep varies, in the order the help and the docs name them: one table
for the parser, the help and the docs (a module of its own, importing nothing, because the
CLI's start-up path reads it)."""

SWEEPABLE = ("model", "steps", "guidance", "size", "strength", "scheduler", "lora-scale",
             "refiner-start")
SHOWN = {"size": "size WxH"}  # how the help names a value's form, where it has one


def sweepable_text() -> str:
    """"model, steps, guidance, size WxH, ..." for the help."""
    return ", ".join(SHOWN.get(name, name) for name in SWEEPABLE)
