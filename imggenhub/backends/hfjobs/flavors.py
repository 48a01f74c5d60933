"""Hugging Face Jobs' hardware flavors: their prices (the API's list, else a built-in table
of the published ones) and their speed for diffusion against a T4 (a first guess from
published fp16 throughput, corrected by nothing yet), and the time and cost of a job on one.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import SpecError

DEFAULT_FLAVOR = "t4-small"
# a GPU's diffusion speed in fp16 against a T4's (published throughput figures; estimates)
SPEED = {"T4": 1.0, "L4": 1.7, "A10G": 2.3, "L40S": 4.5, "A100": 5.0, "H100": 8.0, "H200": 9.0}
START_SECONDS = 180.0  # the job's start: the image pulled, the packages checked


@dataclass(frozen=True)
class Flavor:
    name: str
    gpu: str | None  # the accelerator's model ("T4"); None: CPU only
    gpus: int
    usd_per_hour: float

    @property
    def speed(self) -> float:
        """The flavor's images a second against one T4's (one engine process a GPU)."""
        return SPEED.get((self.gpu or "").upper(), 1.0) * max(1, self.gpus) if self.gpu else 0.05


# the published prices (late 2026); the API's list replaces them when it answers
TABLE = {f.name: f for f in [
    Flavor("t4-small", "T4", 1, 0.40), Flavor("t4-medium", "T4", 1, 0.60),
    Flavor("l4x1", "L4", 1, 0.80), Flavor("l4x4", "L4", 4, 3.80),
    Flavor("a10g-small", "A10G", 1, 1.00), Flavor("a10g-large", "A10G", 1, 1.50),
    Flavor("l40sx1", "L40S", 1, 1.80), Flavor("a100-large", "A100", 1, 2.50),
    Flavor("h200", "H200", 1, 5.00),
]}


def from_hardware(listing) -> dict:
    """Flavors from ``list_jobs_hardware()``'s answer (JobHardwareInfo objects); an entry
    that does not parse is left out, never guessed."""
    out = {}
    for hw in listing or ():
        try:
            per_minute = float(hw.unit_cost_usd)
            if hw.unit_label != "minute" or not 0 <= per_minute < 10:
                continue
            accel = hw.accelerator
            gpus = int(str(getattr(accel, "quantity", 1) or 1)) if accel else 0
            model = str(accel.model).split()[-1].upper() if accel else None
            out[str(hw.name)] = Flavor(str(hw.name), model, gpus, round(per_minute * 60, 4))
        except (AttributeError, TypeError, ValueError):
            continue
    return out


def choose(name: str | None, known: dict) -> Flavor:
    """The flavor asked (the default: a T4), or one sentence naming the GPU ones there are."""
    name = name or DEFAULT_FLAVOR
    if name in known and known[name].gpu:
        return known[name]
    gpus = ", ".join(sorted(n for n, f in known.items() if f.gpu))
    what = "has no GPU" if name in known else "is not a Hugging Face Jobs flavor"
    raise SpecError(f"--flavor {name[:40]!r} {what}; choose one of {gpus}.")


@dataclass(frozen=True)
class Cost:
    flavor: Flavor
    jobs: int
    minutes: float  # each job's, start included
    usd: float  # all of them

    def sentence(self) -> str:
        each = " each" if self.jobs > 1 else ""
        return (f"estimate: {self.jobs} job{'s' if self.jobs > 1 else ''} on {self.flavor.name} "
                f"(${self.flavor.usd_per_hour:.2f}/h), ~{self.minutes:.0f} min{each}, about "
                f"${self.usd:.2f} in all (an estimate: T4 figures scaled by the GPU's speed)")


def cost(t4_seconds: float, load_seconds: float, flavor: Flavor, jobs: int) -> Cost:
    """The time and price of ``t4_seconds`` of generation on one T4, split over ``jobs`` jobs
    of ``flavor``, each with its start and model load; billed by the minute."""
    import math

    minutes = (START_SECONDS + load_seconds + t4_seconds / max(1, jobs) / flavor.speed) / 60
    billed = math.ceil(minutes) * jobs
    return Cost(flavor, jobs, minutes, round(billed * flavor.usd_per_hour / 60, 2))
