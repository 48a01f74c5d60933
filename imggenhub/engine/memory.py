"""The memory plan: which components are quantized how, in which dtype, and where each
lives, decided before anything loads, from the model's sizes and the machine's cards.

A pure function of (family, quantization asked, cards, card memory, host memory, compute
capability, picture size, batch): the host runs it for the target machine (Kaggle's 2 x
T4) to refuse a job that cannot fit before anything is pushed; the engine runs it again on
the machine it finds and logs its one line. The placements, best first:
- ``replicate``: each card holds the whole pipeline; one process a card, the images shared;
- ``offload``: each component moved to its card only while it works (model CPU offload),
  the others in the host's memory; one process a card while the host holds a copy for each;
- ``split``: one process over all the cards, in stages (diffusers' recipe for unquantized
  FLUX on two 16 GB cards): the text encoders on the first card encode every prompt the
  process will draw and are freed; then the denoiser loads spread over the cards (accelerate's
  device map, each card's share capped by the plan) beside the VAE on the first card;
- ``cpu``: no card: everything in the host's memory, fp32.
Where offload would run one process only (the host holds one copy), split is taken if it
fits: one process either way, and it moves no weights between images.
The figures are first guesses from the public parameter counts (bytes per parameter by
quantization, plus a working margin per megapixel), not measurements: benchmarks/flux_t4.py
measures them on a GPU. Standard library only (the engine's rule).
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024 ** 3
QUANTIZATIONS = ("none", "int8", "nf4")
# bytes a parameter: nf4 keeps norms, embeddings and its block scales at 16 bits (FLUX.1's
# transformer in NF4 is reported near 6.7 GB for 11.9 B parameters), int8 its outliers
BYTES = {"none": 2.0, "int8": 1.1, "nf4": 0.56, "fp32": 4.0}
CONTEXT_GIB = 0.5  # a card's CUDA context and allocator slack
HEADROOM = 0.95  # what of a card's memory a plan may fill


@dataclass(frozen=True)
class Part:
    """A component of a family: its parameters (billions) and its role."""
    name: str
    billions: float
    role: str  # "denoiser", "text" (a text encoder), "vae"
    quantizable: bool = False  # the large ones: the denoiser and T5
    # of them, kept in fp32 under fp16 and never quantized: T5's feed-forward outputs ("wo",
    # 24 x 10240 x 4096), which transformers keeps out of fp16 and of bitsandbytes
    fp32_billions: float = 0.0
    block: float = 0.0  # a denoiser's largest block, as a share of it (a device map's unit)


@dataclass(frozen=True)
class Family:
    name: str
    parts: tuple
    work_gib: float  # the denoiser's working memory at 1 megapixel, batch 1
    vae_unsafe_fp16: bool = False  # its VAE overflows in fp16: fp32 on fp16-only cards


T5 = Part("text_encoder_2", 4.76, "text", True, 1.007)  # T5-XXL's encoder
CLIP_L = Part("text_encoder", 0.123, "text")
CLIP_G = Part("text_encoder_2", 0.695, "text")
VAE = Part("vae", 0.084, "vae")
FAMILIES = {f.name: f for f in [
    # (the largest blocks measured on the full-size transformers built on the meta device)
    Family("flux", (Part("transformer", 11.9, "denoiser", True, block=0.0286), T5, CLIP_L, VAE),
           2.0, True),
    Family("sd3-large", (Part("transformer", 8.06, "denoiser", True, block=0.0261), CLIP_L, CLIP_G,
                         Part("text_encoder_3", 4.76, "text", True, 1.007), VAE), 2.0, True),
    Family("sd3-medium", (Part("transformer", 2.47, "denoiser", True, block=0.045), CLIP_L, CLIP_G,
                          Part("text_encoder_3", 4.76, "text", True, 1.007), VAE), 2.0, True),
    # the tiny offline pipelines of the same shapes (engine/tiny.py), for tests: their own
    # parameter counts
    Family("tiny-flux", (Part("transformer", 78544e-9, "denoiser", True),
                         Part("text_encoder_2", 16256e-9, "text", True),
                         Part("text_encoder", 32554e-9, "text"), Part("vae", 658283e-9, "vae")),
           0.01, True),
    Family("tiny-sd3", (Part("transformer", 44992e-9, "denoiser", True),
                        Part("text_encoder", 33578e-9, "text"),
                        Part("text_encoder_2", 33578e-9, "text"),
                        Part("text_encoder_3", 32480e-9, "text", True), Part("vae", 679043e-9, "vae")),
           0.01, True),
    Family("sdxl", (Part("unet", 2.57, "denoiser", True), CLIP_L, CLIP_G, VAE), 1.5),
    Family("sd", (Part("unet", 0.86, "denoiser", True), CLIP_L, VAE), 1.0),
]}


@dataclass(frozen=True)
class Machine:
    cards: int  # 0: no GPU
    card_gib: float = 0.0
    host_gib: float = 29.0
    capability: tuple = (7, 5)  # a T4: Turing, fp16 only

    @property
    def bf16(self) -> bool:
        # a T4 says torch.cuda.is_bf16_supported() by emulation: decide by the hardware
        return self.cards > 0 and tuple(self.capability) >= (8, 0)


# a T4 reports 14.74 GiB (15,095 MiB) to torch
KAGGLE_T4X2 = Machine(cards=2, card_gib=14.74, host_gib=29.0, capability=(7, 5))


@dataclass(frozen=True)
class Placed:
    name: str
    quant: str  # "none", "int8", "nf4"
    dtype: str  # "fp16", "bf16", "fp32"
    where: str  # "each card", "its card while it works", "cards 0-1", "card 0 ...", "cpu"
    gib: float


@dataclass(frozen=True)
class MemoryPlan:
    family: str
    mode: str  # replicate, offload, split, cpu
    quantize: str  # what the denoiser and T5 are quantized to
    parts: tuple
    processes: int  # engine processes (replicate: one a card)
    peak_gib: float  # the fullest card's planned memory (the host's, on the CPU)
    vae_tiling: bool = False
    # split: each card's cap for the denoiser's share (GiB), the first card's first
    shares: tuple = ()

    @property
    def staged(self) -> bool:
        """The prompts are encoded first and the text encoders freed before the denoiser
        loads (split)."""
        return self.mode == "split"

    def max_memory(self) -> dict:
        """accelerate's ``max_memory`` for the denoiser of a split plan: {card: "N GiB"}."""
        return {card: f"{gib:.2f}GiB" for card, gib in enumerate(self.shares)}

    def line(self) -> str:
        """The plan in one log line."""
        parts = ", ".join(f"{p.name} {p.quant + ' ' if p.quant != 'none' else ''}{p.dtype} "
                          f"{p.gib:.1f} GiB on {p.where}" for p in self.parts)
        tiling = "; VAE tiled" if self.vae_tiling else ""
        return (f"memory plan ({self.family}): {self.mode}, {self.processes} process"
                f"{'es' if self.processes > 1 else ''}, fullest {self.peak_gib:.1f} GiB; "
                f"{parts}{tiling}")

    def part(self, name: str) -> Placed:
        return next(p for p in self.parts if p.name == name)

    def quantized(self) -> dict:
        """{component: "nf4" | "int8"} for what loads quantized."""
        return {p.name: p.quant for p in self.parts if p.quant != "none"}


class DoesNotFit(ValueError):
    """No placement holds the model on this machine: the message is one sentence."""


def plan_memory(family: str, machine: Machine, quantize: str = "auto", width: int = 1024,
                height: int = 1024, batch: int = 1) -> MemoryPlan:
    """The plan for ``family`` on ``machine``; ``quantize`` "auto" takes the least
    quantization that gives the best placement (replicate before offload), a named one is
    kept. Raises DoesNotFit with one sentence when nothing fits."""
    fam = FAMILIES[family]
    if quantize not in ("auto", *QUANTIZATIONS):
        raise ValueError(f"unknown quantization {quantize!r} (auto, {', '.join(QUANTIZATIONS)})")
    megapixels = width * height / 1e6
    tiling = megapixels > 1.1
    # the denoiser's working memory, and the VAE's decoding (bounded by its tiles)
    decode = 1.0 if tiling else 0.5 * megapixels * max(1, batch)
    work = fam.work_gib * max(megapixels, 0.05) * max(1, batch) + decode
    if machine.cards == 0:
        q = "none" if quantize == "auto" else quantize
        # diffusers' bitsandbytes quantizer asks for a GPU, transformers' does not: on the
        # CPU only the text encoders load quantized
        parts = tuple(p if part.role != "denoiser" else Placed(p.name, "none", p.dtype, p.where,
                                                                round(part.billions * 1e9 * 4 / GIB, 6))
                      for p, part in zip(_parts(fam, q, machine, "cpu"), fam.parts))
        need = sum(p.gib for p in parts) + work
        if need > machine.host_gib * HEADROOM:
            raise DoesNotFit(f"{family} needs about {need:.0f} GiB of memory here, and this "
                             f"machine has {machine.host_gib:.0f} GiB")
        return MemoryPlan(family, "cpu", q, parts, 1, round(need, 1), tiling)
    tried = QUANTIZATIONS if quantize == "auto" else (quantize,)
    for mode in ("replicate", "offload", "split"):
        for i, q in enumerate(tried):
            plan = _place(fam, q, machine, mode, work, tiling, decode)
            if plan is not None and mode == "offload" and plan.processes < machine.cards:
                # one process either way: the split moves no weights between images, and may
                # need less quantization
                plan = next(filter(None, (_place(fam, lighter, machine, "split", work, tiling,
                                                 decode) for lighter in tried[:i + 1])), plan)
            if plan is not None:
                return plan
    weights = sum(p.gib for p in _parts(fam, tried[-1], machine, ""))
    card = f"{machine.cards} x {machine.card_gib:.1f} GiB card{'s' if machine.cards > 1 else ''}"
    hint = "; try --quantize nf4" if tried[-1] != "nf4" else \
        "; try a smaller size or batch" if work > 3 else ""
    asked = "unquantized" if tried[-1] == "none" else f"in {tried[-1]}"
    raise DoesNotFit(f"{family} {asked} does not fit {card} as this version places it (a whole "
                     "pipeline a card, each part on a card while it works, or the "
                     "denoiser spread over the cards after the prompts are encoded): its weights take "
                     f"about {weights:.1f} GiB and it needs about {work:.1f} GiB more to work at "
                     f"{width}x{height}, batch {batch}{hint}")


def _dtype(part: Part, fam: Family, machine: Machine) -> str:
    if machine.cards == 0:
        return "fp32"
    if part.role == "vae" and fam.vae_unsafe_fp16 and not machine.bf16:
        return "fp32"
    return "bf16" if machine.bf16 else "fp16"


def _parts(fam: Family, quantize: str, machine: Machine, where: str) -> tuple:
    out = []
    for part in fam.parts:
        q = quantize if part.quantizable else "none"
        dtype = _dtype(part, fam, machine)
        per = BYTES[q] if q != "none" else BYTES["fp32" if dtype == "fp32" else "none"]
        kept = part.fp32_billions if dtype == "fp16" or q != "none" else 0.0
        gib = ((part.billions - kept) * per + kept * BYTES["fp32"]) * 1e9 / GIB
        out.append(Placed(part.name, q, dtype, where, round(gib, 6)))
    return tuple(out)


def _place(fam: Family, q: str, machine: Machine, mode: str, work: float,
           tiling: bool, decode: float) -> MemoryPlan | None:
    card = machine.card_gib * HEADROOM - CONTEXT_GIB
    parts = _parts(fam, q, machine, "")
    total = sum(p.gib for p in parts)

    def plan(where: str, processes: int, peak: float) -> MemoryPlan:
        placed = tuple(Placed(p.name, p.quant, p.dtype, where, p.gib) for p in parts)
        return MemoryPlan(fam.name, mode, q, placed, processes,
                          round(peak + CONTEXT_GIB, 1), tiling)

    if mode == "replicate":
        if total + work <= card:
            return plan("each card", machine.cards, total + work)
        return None
    if mode == "split":
        return _split(fam, q, machine, parts, card, work - decode, decode, tiling)
    # offload: a part on its card while it works, all of them in the host's memory (one copy
    # a process); bitsandbytes places its quantized parts on the card as they load, before
    # the offload begins, so those must fit together
    largest = max(p.gib for p in parts)
    loaded = sum(p.gib for p in parts if p.quant != "none")
    copies = min(machine.cards, int(machine.host_gib * HEADROOM // max(total, 1e-9)))
    if largest + work <= card and loaded <= card and copies >= 1:
        return plan("its card while it works", copies, max(largest + work, loaded))
    return None


def _split(fam: Family, q: str, machine: Machine, parts: tuple, card: float, work: float,
           decode: float, tiling: bool) -> MemoryPlan | None:
    """The denoiser spread over the cards (each keeps the denoiser's working memory), the
    VAE and its decoding beside it on the first card; before it loads, the text encoders
    together on the first card."""
    if machine.cards < 2:
        return None
    text = sum(p.gib for p in parts if _role(fam, p.name) == "text")
    denoiser = next(p for p in parts if _role(fam, p.name) == "denoiser")
    vae = sum(p.gib for p in parts if _role(fam, p.name) == "vae")
    shares = [card - work - vae - decode] + [card - work] * (machine.cards - 1)
    # accelerate's map (diffusers' "auto": balanced over the cards) keeps a largest block free
    # on each card, and bitsandbytes takes a tenth off each cap: what the caps must hold
    part = next(p for p in fam.parts if p.role == "denoiser")
    need = denoiser.gib / (0.9 if denoiser.quant != "none" else 1.0) \
        + machine.cards * part.block * denoiser.gib
    if text + 0.5 > card or min(shares) <= 0 or need > sum(shares):
        return None
    spread = f"cards 0-{machine.cards - 1}"
    placed = tuple(Placed(p.name, p.quant, p.dtype, {
        "text": "card 0 until the prompts are encoded", "vae": "card 0",
        "denoiser": spread}[_role(fam, p.name)], p.gib) for p in parts)
    # at most each card's cap and what works beside it
    peak = max(text + 0.5, shares[0] + vae + decode + work, *(s + work for s in shares[1:]))
    return MemoryPlan(fam.name, "split", q, placed, 1, round(peak + CONTEXT_GIB, 1), tiling,
                      tuple(round(s, 2) for s in shares))


def _role(fam: Family, name: str) -> str:
    return next(part.role for part in fam.parts if part.name == name)


def machine_here(gpu: bool = True) -> Machine:
    """This machine, as the plan sees it: its CUDA cards (the smallest one's memory), its
    memory, the first card's compute capability."""
    import os

    try:
        host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    except (ValueError, OSError, AttributeError):
        host = 16.0
    if not gpu:
        return Machine(cards=0, host_gib=host)
    import torch

    cards = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not cards:
        return Machine(cards=0, host_gib=host)
    props = [torch.cuda.get_device_properties(i) for i in range(cards)]
    return Machine(cards=cards, card_gib=min(p.total_memory for p in props) / GIB,
                   host_gib=host, capability=(props[0].major, props[0].minor))


def for_job(job: dict, model: dict, machine: Machine) -> MemoryPlan | None:
    """The plan for a job's model (None: a model with no sizes in the table), sized for its
    largest picture and its batch."""
    family = model.get("memory")
    if not family:
        return None
    sizes = [(p.get("width") or 1024, p.get("height") or 1024) for p in job.get("prompts") or ()]
    width, height = max(sizes or [(1024, 1024)], key=lambda s: s[0] * s[1])
    return plan_memory(family, machine, model.get("quantize") or "auto", width, height,
                       int(job.get("batch_size") or 1))
