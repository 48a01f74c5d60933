"""Hugging Face Jobs' hardware flavors: their prices (the API's list, else a built-in table
of the published ones) and their speed for diffusion against a T4 (a first guess from
published fp16 throughput; the user's own runs on a GPU correct the estimate, as Kaggle's
runs correct Kaggle's), and the time and cost of a job on one.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import SpecError

DEFAULT_FLAVOR = "t4-small"
# a GPU's diffusion speed in fp16 against a T4's (published throughput figures; estimates)
SPEED = {"T4": 1.0, "L4": 1.7, "A10G": 2.3, "L40S": 4.5, "A100": 5.0, "H100": 8.0, "H200": 9.0}
START_SECONDS = 180.0  # the job's start: the image pulled, the packages checked
# a GPU's memory (published GB) and compute capability: what the memory plan is made for
CARD = {"T4": (16, (7, 5)), "L4": (24, (8, 9)), "A10G": (24, (8, 6)), "L40S": (48, (8, 9)),
        "A100": (80, (8, 0)), "H100": (80, (9, 0)), "H200": (141, (9, 0))}
USABLE = 0.92  # of a card's published GB, what torch sees as free GiB (a T4: 14.74 of 16)
GIB_PER_GB = 1e9 / 2**30


@dataclass(frozen=True)
class Flavor:
    name: str
    gpu: str | None  # the accelerator's model ("T4"); None: CPU only
    gpus: int
    usd_per_hour: float
    ram_gb: float | None = None  # the machine's memory, as published
    vram_gb: float | None = None  # one card's, where the GPU is not in CARD

    def machine(self):
        """The machine the memory plan is made for: its cards, their usable memory and
        capability, the host's memory (the published figures; unknown: a T4's)."""
        from ...engine import Machine

        gb, capability = CARD.get((self.gpu or "").upper(), (self.vram_gb or 16, (7, 5)))
        return Machine(cards=self.gpus, card_gib=round(gb * USABLE, 2),
                       host_gib=round((self.ram_gb or 15) * GIB_PER_GB, 1), capability=capability)

    def describe(self) -> str:
        return f"{self.name} ({self.gpus} x {self.gpu})"

    @property
    def card_speed(self) -> float:
        """One of its GPUs' images a second against a T4's."""
        return SPEED.get((self.gpu or "").upper(), 1.0) if self.gpu else 0.05


# the published prices (late 2026); the API's list replaces them when it answers
TABLE = {f.name: f for f in [
    Flavor("t4-small", "T4", 1, 0.40, 15), Flavor("t4-medium", "T4", 1, 0.60, 30),
    Flavor("l4x1", "L4", 1, 0.80, 30), Flavor("l4x4", "L4", 4, 3.80, 186),
    Flavor("a10g-small", "A10G", 1, 1.00, 15), Flavor("a10g-large", "A10G", 1, 1.50, 46),
    Flavor("l40sx1", "L40S", 1, 1.80, 62), Flavor("a100-large", "A100", 1, 2.50, 142),
    Flavor("h200", "H200", 1, 5.00, 256),
]}


def _gb(text) -> float | None:
    """ "15 GB" as 15.0 (None: not a size in GB)."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*GB\s*", str(text or ""), re.IGNORECASE)
    return float(m.group(1)) if m else None


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
            vram = _gb(getattr(accel, "vram", None)) if accel else None
            out[str(hw.name)] = Flavor(str(hw.name), model, gpus, round(per_minute * 60, 4),
                                       _gb(getattr(hw, "ram", None)),
                                       vram / max(1, gpus) if vram else None)
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
    basis: str = "the T4 table"  # what the T4 seconds came from

    def sentence(self) -> str:
        each = " each" if self.jobs > 1 else ""
        return (f"estimate: {self.jobs} job{'s' if self.jobs > 1 else ''} on {self.flavor.name} "
                f"(${self.flavor.usd_per_hour:.2f}/h), ~{self.minutes:.0f} min{each}, about "
                f"${self.usd:.2f} in all (an estimate from {self.basis}"
                + (")" if "your runs" in self.basis else ", scaled by the GPU's speed)"))


def cost(seconds: float, load_seconds: float, flavor: Flavor, jobs: int,
         basis: str = "the T4 table", learned: bool = False, processes: int | None = None) -> Cost:
    """The time and price of ``seconds`` of generation on one T4 (``learned``: on one of the
    flavor's cards, as the user's runs there measured), split over ``jobs`` jobs of
    ``flavor``, each with its start and model load and ``processes`` engine processes (one a
    card unless the memory plan says fewer); billed by the minute."""
    import math

    per_card = 1.0 if learned else flavor.card_speed
    cards = min(processes or flavor.gpus, flavor.gpus) if flavor.gpu else 1
    minutes = (START_SECONDS + load_seconds + seconds / max(1, jobs) / (per_card * max(1, cards))) / 60
    billed = math.ceil(minutes) * jobs
    return Cost(flavor, jobs, minutes, round(billed * flavor.usd_per_hour / 60, 2), basis)
