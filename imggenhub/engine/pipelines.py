"""Pipelines: loading the model once, the tiny offline one, schedulers, LoRAs, embeddings,
and the image-to-image and inpainting pipelines derived from the loaded components.
torch and friends are imported inside the functions."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from .inputs import PictureTooLarge, open_picture
from .tiny import TINY_MODELS, build_tiny, build_tiny_sdxl_refiner, shipped_folder, tiny_folder
from .wire import SCHEDULERS, SDXL_VAE_FP16_FIX, TINY_SDXL_REFINER, log


def _dtype_kwarg(dtype) -> dict:
    """diffusers 0.42 renamed ``torch_dtype=`` to ``dtype=``; Kaggle may carry an older one."""
    import diffusers

    major, minor = (int(x) for x in diffusers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (0, 42) else {"torch_dtype": dtype}


def load_pipeline(model: dict, device: str, dtype, plan=None):
    """Load the job's pipeline once; the caller reuses it for every prompt. A model with a
    memory plan (FLUX, SD 3.5: engine/memory.py) loads as the plan says."""
    import torch

    if plan is not None:
        return load_planned(model, plan, device)
    if model["id"] in TINY_MODELS:
        pipe = build_tiny(model["id"])
        return pipe.to(device) if dtype == torch.float32 else pipe.to(device=device, dtype=dtype)

    from diffusers import AutoencoderKL, AutoPipelineForText2Image

    kwargs = dict(_dtype_kwarg(dtype))
    if model.get("pipeline") == "sd":
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    if dtype == torch.float16 and model.get("vae_fp16_fix"):
        try:
            kwargs["vae"] = AutoencoderKL.from_pretrained(SDXL_VAE_FP16_FIX, **_dtype_kwarg(dtype))
        except OSError as exc:
            raise _not_loaded(SDXL_VAE_FP16_FIX, exc) from None
    variant = model.get("variant") if dtype == torch.float16 else None
    try:
        where = shipped_folder(model["id"])
        try:
            pipe = AutoPipelineForText2Image.from_pretrained(where, variant=variant, **kwargs)
        except (OSError, ValueError) as exc:
            if variant is None or "variant" not in str(exc):
                raise
            pipe = AutoPipelineForText2Image.from_pretrained(where, **kwargs)
    except OSError as exc:
        raise _not_loaded(model["id"], exc) from None
    return pipe.to(device)


DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def _bnb(kind: str, compute: str) -> tuple[str, dict]:
    """bitsandbytes' backend and arguments: NF4 (double quantization) or LLM.int8."""
    import torch

    if kind == "nf4":
        return "bitsandbytes_4bit", {
            "load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
            "bnb_4bit_compute_dtype": getattr(torch, DTYPES[compute])}
    return "bitsandbytes_8bit", {"load_in_8bit": True}


def quantization_config(plan, compute: str, among=None):
    """diffusers' PipelineQuantizationConfig for what the plan quantizes (of the components
    ``among``, when given; None: nothing), computing in ``compute``."""
    quantized = {name: kind for name, kind in plan.quantized().items()
                 if among is None or name in among}
    if not quantized:
        return None
    from diffusers.quantizers import PipelineQuantizationConfig

    (kind,) = set(quantized.values())
    backend, kwargs = _bnb(kind, compute)
    return PipelineQuantizationConfig(quant_backend=backend, quant_kwargs=kwargs,
                                      components_to_quantize=sorted(quantized))


def _compute(plan) -> str:
    return next(p.dtype for p in plan.parts if p.name in ("transformer", "unet"))


def _where(model: dict) -> str:
    return tiny_folder(model["id"]) if model["id"] in TINY_MODELS else shipped_folder(model["id"])


# a split plan's stages: what each family's text encoders give (FLUX: no negative prompt)
ENCODED = {"flux": ("prompt_embeds", "pooled_prompt_embeds"),
           "sd3": ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds",
                   "negative_pooled_prompt_embeds")}
TEXT_PARTS = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3",
              "tokenizer_3")


def _family_pipeline(model: dict):
    """The text-to-image pipeline class of a planned model's family (FLUX, SD 3)."""
    import diffusers

    return {"flux": diffusers.FluxPipeline,
            "sd3": diffusers.StableDiffusion3Pipeline}[model["pipeline"]]


def encode_prompts(model: dict, plan, device: str, texts: list, chunk: int = 8) -> dict:
    """A split plan's first stage: the text encoders alone (on ``device``, quantized as the
    plan says) encode each (prompt, negative prompt) the process will draw; then they are
    freed. Returns {(prompt, negative): {the pipeline's embedding argument: a tensor of one
    row, in the host's memory}}."""
    import torch

    compute = _compute(plan)
    kwargs = dict(_dtype_kwarg(getattr(torch, DTYPES[compute])), transformer=None, vae=None)
    quantized = quantization_config(plan, compute, among=TEXT_PARTS)
    if quantized is not None:
        kwargs["quantization_config"] = quantized
    family = model["pipeline"]
    try:  # the family's text-to-image class: the same encoders (FLUX.1 Fill's own class
        # needs its VAE to be built in older diffusers)
        pipe = _family_pipeline(model).from_pretrained(_where(model), **kwargs)
    except OSError as exc:
        raise _not_loaded(model["id"], exc) from None
    _to_device(pipe, device)
    length = model.get("max_sequence_length") or 256
    encoded, texts = {}, list(dict.fromkeys(texts))
    with torch.no_grad():
        for start in range(0, len(texts), chunk):
            part = texts[start:start + chunk]
            prompts = [p for p, _ in part]
            if family == "flux":
                out = pipe.encode_prompt(prompt=prompts, prompt_2=None, device=device,
                                         max_sequence_length=length)[:2]
            else:
                out = pipe.encode_prompt(prompt=prompts, prompt_2=None, prompt_3=None,
                                         negative_prompt=[n or "" for _, n in part],
                                         do_classifier_free_guidance=True, device=device,
                                         max_sequence_length=length)
            for row, text in enumerate(part):
                encoded[text] = {key: tensor[row:row + 1].to("cpu")
                                 for key, tensor in zip(ENCODED[family], out)}
    del pipe
    free_memory()
    log(f"{len(texts)} prompt{'s' if len(texts) != 1 else ''} encoded; the text encoders freed")
    return encoded


def free_memory() -> None:
    """Give back the memory of components no longer used (before the next ones load)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _load_denoiser(model: dict, plan, device: str, dtype):
    """A split plan's second stage: the denoiser spread over the cards as the plan caps
    each (accelerate's device map), quantized as planned, and the pipeline around it
    without its text encoders."""
    import diffusers
    from diffusers import DiffusionPipeline

    where = _where(model)
    cls = {"flux": diffusers.FluxTransformer2DModel,
           "sd3": diffusers.SD3Transformer2DModel}[model["pipeline"]]
    kwargs = dict(_dtype_kwarg(dtype), subfolder="transformer")
    if plan.shares:
        kwargs.update(device_map="auto", max_memory=plan.max_memory())
    else:  # staged on one device (IMGGENHUB_STAGED)
        kwargs["device_map"] = {"": device}
    kind = plan.part("transformer").quant
    if kind != "none":
        _, quant = _bnb(kind, _compute(plan))
        kwargs["quantization_config"] = diffusers.BitsAndBytesConfig(**quant)
    try:
        transformer = cls.from_pretrained(where, **kwargs)
        pipe = DiffusionPipeline.from_pretrained(
            where, transformer=transformer, **{name: None for name in TEXT_PARTS
                                               if name in _components(where)},
            **_dtype_kwarg(dtype))
    except OSError as exc:
        raise _not_loaded(model["id"], exc) from None
    pipe.vae.to(device)
    return pipe


def _components(where: str) -> set:
    """The component names a diffusers folder (or a Hub model) lists in its model_index.json."""
    from diffusers import DiffusionPipeline

    return set(DiffusionPipeline.load_config(where))


def load_planned(model: dict, plan, device: str):
    """FLUX and SD 3.5 (and their tiny ones): each component quantized, typed and placed as
    the memory plan says; the VAE in fp32 where the plan keeps it out of fp16 (its input cast
    on the way in), tiled for large pictures. A split plan's pipeline has no text encoders:
    its prompts come encoded (encode_prompts). Each loads as its folder's own pipeline class
    (FLUX.1 Fill's has no AutoPipeline)."""
    import torch
    from diffusers import DiffusionPipeline

    compute = _compute(plan)
    dtype = getattr(torch, DTYPES[compute])
    if plan.staged:  # the prompts are encoded already (encode_prompts)
        pipe = _load_denoiser(model, plan, device, dtype)
    else:
        kwargs = dict(_dtype_kwarg(dtype))
        quantized = quantization_config(plan, compute)
        if quantized is not None:
            kwargs["quantization_config"] = quantized
        try:
            pipe = DiffusionPipeline.from_pretrained(_where(model), **kwargs)
        except OSError as exc:
            raise _not_loaded(model["id"], exc) from None
    vae = plan.part("vae")
    if vae.dtype != compute:
        pipe.vae.to(getattr(torch, DTYPES[vae.dtype]))
        cast_inputs(pipe.vae, getattr(torch, DTYPES[vae.dtype]), dtype)
    if plan.vae_tiling:
        pipe.vae.enable_tiling()
    if plan.mode == "offload":
        pipe.enable_model_cpu_offload(gpu_id=torch.device(device).index or 0)
    elif plan.mode in ("replicate", "cpu"):
        _to_device(pipe, device)
    return pipe


def _to_device(pipe, device: str) -> None:
    """Every component on ``device``; bitsandbytes' quantized ones are placed when loaded
    and refuse ``.to`` in older versions, so they stay where they are."""
    for name, component in pipe.components.items():
        quantized = getattr(component, "hf_quantizer", None) is not None or any(
            getattr(component, flag, False) for flag in ("is_loaded_in_4bit", "is_loaded_in_8bit"))
        if hasattr(component, "to") and not quantized:
            component.to(device)


def cast_inputs(vae, dtype, compute=None) -> None:
    """The VAE kept in ``dtype`` while the pipeline runs in ``compute``: each of its parts
    casts what it is handed on the way in (the pipelines hand it latents in their own
    dtype), and what the encoder makes goes back in ``compute`` (FLUX's image-to-image and
    inpainting hand the encoded picture to the transformer as it comes)."""
    import torch

    def cast(_module, args):
        return tuple(a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a
                     for a in args)

    def back(_module, _args, output):
        return output.to(compute) if torch.is_tensor(output) else output

    for part in ("encoder", "decoder", "quant_conv", "post_quant_conv"):
        sub = getattr(vae, part, None)
        if sub is not None:
            sub.register_forward_pre_hook(cast)
    last = getattr(vae, "quant_conv", None) or getattr(vae, "encoder", None)
    if compute is not None and last is not None:
        last.register_forward_hook(back)


def _not_loaded(model_id: str, exc: OSError) -> OSError:
    """Offline, diffusers says a Hub model 'does not appear to have a file named
    model_index.json', as if the id were wrong: say what is the matter."""
    if Path(model_id).is_dir():
        return exc
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model_id, "model_index.json")
    except Exception:  # an id the cache cannot even look up: the loader's words stand
        return exc
    if isinstance(cached, str):  # cached, so something else is wrong: its own words
        return exc
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return OSError(f"{model_id} is not in this machine's Hugging Face cache and the Hub did not "
                   "give it: check the network (on Kaggle, the kernel's internet setting), the "
                   f"model id, and for a gated model the token ({first})")


def load_refiner(base, refiner: dict, device: str, dtype):
    """The SDXL refiner, sharing the base's second text encoder and VAE (loaded once). If base
    and refiner do not fit on the GPU together, both are offloaded to the CPU between uses,
    with a log line (slower, but it runs)."""
    import torch

    if refiner["id"] == TINY_SDXL_REFINER:
        pipe = build_tiny_sdxl_refiner(base)
    else:
        from diffusers import DiffusionPipeline

        kwargs = dict(_dtype_kwarg(dtype), text_encoder_2=base.text_encoder_2, vae=base.vae,
                      use_safetensors=True)
        if dtype == torch.float16:
            kwargs["variant"] = "fp16"
        try:
            pipe = DiffusionPipeline.from_pretrained(refiner["id"], **kwargs)
        except OSError as exc:
            raise _not_loaded(refiner["id"], exc) from None
    pipe.set_progress_bar_config(disable=True)
    try:
        return pipe.to(device) if dtype == torch.float32 else pipe.to(device=device, dtype=dtype)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        log("note: the SDXL base and refiner do not fit on the GPU together; both are offloaded "
            "to the CPU between uses (slower)")
        index = torch.device(device).index or 0
        base.enable_model_cpu_offload(gpu_id=index)
        pipe.enable_model_cpu_offload(gpu_id=index)
        return pipe


def apply_loras(pipe, loras: list[dict], fuse: bool = True) -> list[dict]:
    """Load the job's LoRAs with diffusers' loader, combine them with their weights, and fuse
    them into the weights (the set never changes during a job, so fused is fastest; a sweep
    of the first one's scale keeps them apart: ``set_lora_scale`` changes it per batch).
    Returns what to record: each LoRA's name and scale."""
    if not loras:
        return []
    names = []
    for i, lora in enumerate(loras):
        name = f"lora{i}"
        where, weight = _lora_source(lora)
        with _mapped_in_place(pipe):
            pipe.load_lora_weights(where, adapter_name=name, **weight)
        names.append(name)
    pipe.set_adapters(names, adapter_weights=[float(l["scale"]) for l in loras])
    if fuse:
        pipe.fuse_lora(adapter_names=names)
    recorded = [{"name": _name_of(l), "scale": l["scale"], **_file_of(l)} for l in loras]
    log("LoRA " + ", ".join(f"{r['name']} x{r['scale']}" for r in recorded)
        + (" fused" if fuse else " loaded (its scale is swept)"))
    return recorded


@contextmanager
def _mapped_in_place(pipe):
    """A split plan's transformer is spread over the cards by accelerate's hooks, which
    diffusers' LoRA loader takes for sequential CPU offload: it would strip them and offload
    the whole transformer (diffusers issues 7539, 10914). Marked as device-mapped for the
    load, the LoRA layers are injected in place, each beside its base layer."""
    mapped = getattr(getattr(pipe, "transformer", None), "hf_device_map", None)
    if not mapped or getattr(pipe, "hf_device_map", None) is not None:
        yield
        return
    pipe.hf_device_map = {"transformer": "spread over its cards"}
    try:
        yield
    finally:
        pipe.hf_device_map = None


def _lora_source(lora: dict) -> tuple[str, dict]:
    """Where diffusers' loader finds a LoRA: (a folder or repo, its weight_name if named)."""
    ref = lora["ref"]
    if lora.get("local"):
        return str(Path(ref).parent), {"weight_name": Path(ref).name}
    if ref.count("/") == 2:  # owner/name/file.safetensors
        repo, _, weight = ref.rpartition("/")
        return repo, {"weight_name": weight}
    return ref, {}


def refuse_text_encoder_loras(model: dict, loras: list[dict]) -> None:
    """A split plan encodes the prompts before its denoiser loads, without the LoRAs: one
    that also changes the text encoders is refused in one sentence, before anything loads,
    rather than half applied."""
    cls = _family_pipeline(model)
    for lora in loras:
        where, weight = _lora_source(lora)
        state = cls.lora_state_dict(where, **weight)
        state = state[0] if isinstance(state, tuple) else state
        if any(key.startswith("text_encoder") for key in state):
            raise ValueError(f"the LoRA {_name_of(lora)} also changes the text encoders, which "
                             "the split placement (the prompts encoded before the transformer "
                             "loads) does not apply; use a quantization that fits a card "
                             "(--quantize nf4)")


def _name_of(ref: dict) -> str:
    """A LoRA's or embedding's name as the manifest records it."""
    return ref.get("name") or (Path(ref["ref"]).stem if ref.get("local") else ref["ref"])


def _file_of(ref: dict) -> dict:
    """A local LoRA's or embedding's file name (no path: the manifest keeps none of this
    machine's), so that a command can name it again."""
    if not ref.get("local"):
        return {}
    return {"file": ref.get("file") or Path(ref["ref"]).name}


def set_lora_scale(pipe, loras: list[dict], first: float) -> list[dict]:
    """The first LoRA at ``first`` (a sweep's cell), the others as given; what to record."""
    weights = [float(first)] + [float(l["scale"]) for l in loras[1:]]
    pipe.set_adapters([f"lora{i}" for i in range(len(loras))], adapter_weights=weights)
    return weights


def _load_xl_embedding(pipe, ref: str, token: str | None) -> bool:
    """An SDXL embedding as the common UIs write it (and ``imggenhub train`` does): a
    safetensors file of ``clip_l`` and ``clip_g``, one vector for each text encoder, loaded
    into each (diffusers' documented way). False: not such a file, or not an SDXL pipeline."""
    if getattr(pipe, "text_encoder_2", None) is None or not str(ref).endswith(".safetensors"):
        return False
    from safetensors.torch import load_file

    state = load_file(str(ref))
    if set(state) != {"clip_l", "clip_g"}:
        return False
    token = token or Path(ref).stem
    pipe.load_textual_inversion(state["clip_l"], token=token, text_encoder=pipe.text_encoder,
                                tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(state["clip_g"], token=token, text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
    return True


def apply_embeddings(pipe, embeddings: list[dict]) -> list[dict]:
    """Load the job's textual-inversion embeddings; return what to record."""
    recorded = []
    for emb in embeddings:
        ref, kwargs = emb["ref"], {"token": emb.get("token")} if emb.get("token") else {}
        if emb.get("local"):
            if not _load_xl_embedding(pipe, ref, emb.get("token")):
                pipe.load_textual_inversion(ref, **kwargs)
        elif ref.count("/") == 2:
            repo, _, weight = ref.rpartition("/")
            pipe.load_textual_inversion(repo, weight_name=weight, **kwargs)
        else:
            pipe.load_textual_inversion(ref, **kwargs)
        recorded.append({"name": _name_of(emb),
                         "token": emb.get("token"), **_file_of(emb)})
    if recorded:
        log("embeddings " + ", ".join(f"{r['name']} as {r['token']}" for r in recorded) + " loaded")
    return recorded


def derived_pipeline(pipe, mode: str):
    """The image-to-image or inpainting pipeline over the same loaded components (nothing
    is loaded twice)."""
    import diffusers

    auto = {"img2img": diffusers.AutoPipelineForImage2Image,
            "inpaint": diffusers.AutoPipelineForInpainting}[mode]
    derived = auto.from_pipe(pipe)
    derived.set_progress_bar_config(disable=True)
    return derived


def load_init_image(path: str, width: int | None, height: int | None, mode: str = "RGB"):
    """An input picture (RGB) or mask (L: white is redrawn), at the job's size if it has one."""
    what = "mask image" if mode == "L" else "init image"
    try:
        with open_picture(path) as opened:
            try:
                image = opened.convert(mode)
            except ValueError:  # no direct way (LAB to L, say): through RGB
                image = opened.convert("RGB").convert(mode)
    except PictureTooLarge as exc:
        raise ValueError(f"the {what} {exc.name!r} {exc.reason}") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"the {what} {Path(path).name!r} cannot be read as a picture ({exc})") \
            from None
    if width and height and image.size != (width, height):
        if (path, width, height) not in _RESIZE_NOTED:  # once a file, not once an image
            _RESIZE_NOTED.add((path, width, height))
            log(f"note: {what} {Path(path).name} is {image.width}x{image.height}; resized to "
                f"{width}x{height}")
        image = image.resize((width, height))
    return image


_RESIZE_NOTED: set = set()


def set_scheduler(pipe, name: str | None) -> str:
    """Swap in the named scheduler (None keeps the model's own); return its class name."""
    if name:
        import diffusers

        cls_name, extra = SCHEDULERS[name]
        pipe.scheduler = getattr(diffusers, cls_name).from_config(pipe.scheduler.config, **extra)
    return type(pipe.scheduler).__name__


def enable_memory_savers(pipe) -> None:
    vae = getattr(pipe, "vae", None)
    if vae is not None and hasattr(vae, "enable_slicing"):
        vae.enable_slicing()
