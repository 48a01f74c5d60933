"""Fine-tuning, the work of a training run: a LoRA on the UNet's attention, and on the text
encoders' too if asked (through peft, as diffusers' examples/text_to_image/
train_text_to_image_lora.py and examples/dreambooth/train_dreambooth_lora.py make one) or a textual-inversion
embedding (examples/textual_inversion), on pictures with captions.

The pictures are encoded once before the loop (each one's latent mean: for Stable Diffusion's
VAE a draw differs from it by thousandths, while a small VAE's posterior is wide, and a model
trained on means, as tiny-shapes is, never saw its spread); a LoRA's caption embeddings too,
when its text encoders are frozen. One seeded generator draws every batch, noise and timestep, and is saved with each checkpoint with the trained
weights and the optimizer's state: a run resumed from a checkpoint ends with the weights of
a run that was never cut. Writes the weights as diffusers' loaders read them
(``load_lora_weights``, ``load_textual_inversion``), ``loss.csv`` and ``training.json``.
torch, diffusers and peft are imported inside the functions."""

from __future__ import annotations

import json
import time
from pathlib import Path

from .inputs import PictureTooLarge, mounted, open_picture, sha256_of
from .plan import split
from .wire import ENGINE_VERSION, PARTS_DIR, WEIGHTS, log

METHODS = ("lora", "dreambooth-lora", "textual-inversion")
LORAS = ("lora", "dreambooth-lora")  # the methods whose product is a LoRA
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # the attention projections
TEXT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")  # a CLIP text encoder's
XL_TIME_IDS = 6  # SDXL base's added conditioning: original size, crop corner, target size
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CHECKPOINTS_DIR = "checkpoints"
LOSS_FILE = "loss.csv"
RECORD_FILE = "training.json"
STATE_FILE = "state.pt"
KOHYA_SUFFIX = "_kohya"  # NAME_kohya.safetensors: the LoRA as the UIs' loaders key it
LOSS_PLOT = "loss.png"
VALIDATION_DIR = "validation"
MIN_EXAMPLES = 3  # fewer pictures teach a LoRA nothing it can generalise
MIN_SIDE_SHARE = 0.5  # a picture's short side at least this share of the resolution
DEFAULTS = {"method": "lora", "steps": 500, "rank": 4, "learning_rate": 1e-4, "resolution": 512,
            "batch_size": 1, "checkpoint_every": 0, "seed": 0, "name": "lora", "token": None,
            "initializer": None, "validation_prompts": [], "validation_steps": 20,
            "validation_guidance": 7.0, "gradient_checkpointing": False, "keep_checkpoints": 3,
            "gradient_accumulation": 1, "lr_scheduler": "constant", "lr_warmup_steps": 0,
            "class_prompt": None, "class_images": 0, "prior_loss_weight": 1.0,
            "class_steps": 25, "use_8bit_adam": False, "train_text_encoder": False}
CLASS_DIR = "class_images"
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")


def target_of(noise_sched, latents, noise, t):
    """What the denoiser learns to predict at timesteps ``t``: the noise (epsilon), or v
    (the noise and the picture mixed by the schedule): diffusers' two objectives."""
    if noise_sched.config.prediction_type == "epsilon":
        return noise
    return noise_sched.get_velocity(latents, noise, t)


class TrainingDataError(ValueError):
    """A training set that cannot be trained on; its message is one sentence for the user."""


def read_examples(folder, instance_prompt: str | None = None) -> list[dict]:
    """The pictures under ``folder`` (its subfolders too) with their captions: from its
    ``metadata.jsonl`` (``file_name`` relative to the folder, ``text``: the Hugging Face
    image-folder convention), else a ``.txt`` beside each picture, else ``instance_prompt``
    for all (it also fills any gap). Sorted by their paths in the folder."""
    import posixpath

    folder = Path(folder)
    if not folder.is_dir():
        raise TrainingDataError(f"The training folder {folder.name} is not a folder here.")
    pictures = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*"))
                if p.is_file() and p.suffix.lower() in PICTURE_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(folder).parts)}
    if not pictures:
        raise TrainingDataError(f"The training folder {folder.name} holds no pictures "
                                f"({', '.join(PICTURE_SUFFIXES)}).")
    captions: dict[str, str] = {}
    meta = folder / "metadata.jsonl"
    if meta.is_file():
        for n, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                name, text = row["file_name"], row["text"]
                if not isinstance(name, str) or not isinstance(text, str):
                    raise TypeError
            except (ValueError, KeyError, TypeError):
                raise TrainingDataError(f"Line {n} of metadata.jsonl is not a JSON object with "
                                        "file_name and text.") from None
            key = posixpath.normpath(name.replace("\\", "/"))
            if key not in pictures:
                raise TrainingDataError(f"Line {n} of metadata.jsonl names {name[:80]!r}, which is "
                                        "not a picture in the training folder.")
            captions[key] = text.strip()
    out = []
    for key, picture in pictures.items():
        text = captions.get(key)
        side = picture.with_suffix(".txt")
        if not text and side.is_file():
            text = side.read_text(encoding="utf-8").strip()
        text = text if text else (instance_prompt or "").strip()
        if not text:
            raise TrainingDataError(f"The picture {key} has no caption (no line in "
                                    "metadata.jsonl, no .txt beside it, no --instance-prompt).")
        out.append({"file": picture, "text": text, "name": key})
    return out


def check_examples(examples: list[dict], resolution: int) -> None:
    """Before anything is uploaded: enough pictures, each readable (its header), none far
    below the training resolution. One sentence for the first problem."""
    if len(examples) < MIN_EXAMPLES:
        raise TrainingDataError(f"{len(examples)} picture{'s' if len(examples) != 1 else ''} "
                                f"to train on; give at least {MIN_EXAMPLES}.")
    for example in examples:
        name = example.get("name") or Path(example["file"]).name
        try:
            with open_picture(example["file"]) as image:
                width, height = image.size
        except PictureTooLarge as exc:
            raise TrainingDataError(str(exc)) from None
        except OSError:
            raise TrainingDataError(f"The picture {name} cannot be read as a picture.") from None
        if min(width, height) < MIN_SIDE_SHARE * resolution:
            raise TrainingDataError(
                f"The picture {name} is {width}x{height}, far below the training resolution "
                f"{resolution} (its short side should be at least {int(MIN_SIDE_SHARE * resolution)}"
                " pixels); use larger pictures or a lower --resolution.")


def load_pictures(examples: list[dict], resolution: int):
    """The pictures as one float tensor in [-1, 1], N x 3 x resolution x resolution: each
    turned as its EXIF says, scaled so that its short side is ``resolution``, then its centre
    cut out (the examples' --center_crop)."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    out = []
    for example in examples:
        name = example.get("name") or Path(example["file"]).name
        try:
            with open_picture(example["file"]) as image:
                image = ImageOps.exif_transpose(image).convert("RGB")
        except PictureTooLarge as exc:
            raise TrainingDataError(str(exc)) from None
        except OSError:
            raise TrainingDataError(f"The picture {name} cannot be read as a picture.") from None
        scale = resolution / min(image.size)
        w, h = max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale))
        image = image.resize((w, h), Image.BICUBIC)
        left, top = (w - resolution) // 2, (h - resolution) // 2
        image = image.crop((left, top, left + resolution, top + resolution))
        out.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1))
    return torch.stack(out)


def _world() -> tuple[int, int]:
    """(this process's rank, the number of processes): (0, 1) unless torch.distributed runs."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _time_ids(pipe) -> int:
    """How many time ids an SDXL UNet's added conditioning takes (the base 6, the refiner 5)."""
    config = pipe.unet.config
    pooled = pipe.text_encoder_2.config.projection_dim
    return (int(config.projection_class_embeddings_input_dim or 0) - pooled) // int(
        config.addition_time_embed_dim or 1)


def _optimizer(eight_bit: bool):
    """AdamW, or bitsandbytes' 8-bit AdamW (diffusers' --use_8bit_adam: its two moments in a
    byte each, a quarter of the memory)."""
    import torch

    if not eight_bit:
        return torch.optim.AdamW
    try:
        import bitsandbytes
    except ImportError:
        raise TrainingDataError("--use-8bit-adam needs bitsandbytes, which this Python lacks "
                                "(pip install bitsandbytes).") from None
    return bitsandbytes.optim.AdamW8bit


def _lora_state(model) -> dict:
    """A UNet's or a text encoder's LoRA layers, keyed as diffusers' writer takes them."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().float().cpu().clone()
            for k, v in convert_state_dict_to_diffusers(get_peft_model_state_dict(model)).items()}


class Trainer:
    """One training run over a loaded pipeline (Stable-Diffusion-shaped: ``vae``, ``unet``,
    ``text_encoder``, ``tokenizer``, ``scheduler``) on ``device``. ``previous``: a previous
    session's output, whose class pictures (DreamBooth's prior) are used again."""

    def __init__(self, pipe, examples: list[dict], settings: dict, out, device: str = "cpu",
                 previous=None):
        import torch

        self.s = {**DEFAULTS, **settings}
        if self.s["lr_scheduler"] not in LR_SCHEDULERS:
            raise TrainingDataError(f"Unknown learning-rate schedule '{self.s['lr_scheduler']}'; "
                                    f"known: {', '.join(LR_SCHEDULERS)}.")
        if self.s["method"] not in METHODS:
            raise TrainingDataError(f"Unknown training method '{self.s['method']}'; known: "
                                    f"{', '.join(METHODS)}.")
        self.pipe, self.examples, self.out, self.device = pipe, examples, Path(out), device
        self.dtype = pipe.unet.dtype  # fp16 on a T4: the trained weights stay in fp32
        # SDXL: two text encoders, their hidden states side by side as the context, the
        # second's pooled embedding and the time ids as added conditioning
        self.xl = getattr(pipe, "text_encoder_2", None) is not None
        self.encoders = [pipe.text_encoder, *([pipe.text_encoder_2] if self.xl else [])]
        self.tokenizers = [pipe.tokenizer, *([pipe.tokenizer_2] if self.xl else [])]
        added = pipe.unet.config.addition_embed_type
        if (added or None) != ("text_time" if self.xl else None) or (self.xl and _time_ids(pipe) != XL_TIME_IDS):
            raise TrainingDataError("Fine-tuning takes Stable Diffusion 1.x, 2.x and SDXL base "
                                    "models; this model is another kind.")
        for part in (pipe.vae, pipe.unet, *self.encoders):
            part.requires_grad_(False)
        from diffusers import DDPMScheduler

        self.noise = DDPMScheduler.from_config(pipe.scheduler.config)
        if self.noise.config.prediction_type not in ("epsilon", "v_prediction"):
            raise TrainingDataError(f"This model predicts '{self.noise.config.prediction_type}'; "
                                    "fine-tuning knows epsilon and v_prediction.")
        self.texts = [e["text"] for e in examples]
        self.lora = self.s["method"] in LORAS
        if self.s["use_8bit_adam"] and not self.lora:
            raise TrainingDataError("--use-8bit-adam is for a LoRA's many weights: textual "
                                    "inversion trains one embedding, whose state is small.")
        # a LoRA on the text encoders too (diffusers' --train_text_encoder): the captions'
        # embeddings then change as it learns, and are computed every step
        self.text_lora = bool(self.s["train_text_encoder"])
        if self.text_lora and not self.lora:
            raise TrainingDataError("--train-text-encoder adds a LoRA to the text encoders (--method "
                                    "lora or dreambooth-lora); textual inversion trains their "
                                    "embedding table already.")
        self.cached = self.lora and not self.text_lora  # the captions' embeddings computed once
        optimizer = _optimizer(bool(self.s["use_8bit_adam"]))
        if self.s["gradient_checkpointing"]:  # activations recomputed: memory for time
            pipe.unet.enable_gradient_checkpointing()
            if self.text_lora:
                for encoder in self.encoders:
                    encoder.gradient_checkpointing_enable()
        # prior preservation (DreamBooth): pictures of the class drawn by the model as it is,
        # before anything is trained, learned beside the instance's so it keeps what it knew
        self.prior = self.s["method"] == "dreambooth-lora" and bool(self.s["class_prompt"]) \
            and int(self.s["class_images"]) > 0
        self.rank, self.world = _world()
        self.class_examples = self._class_pictures(previous) if self.prior else []
        if self.lora:
            self.params = self._add_lora()
        else:
            self.params = self._add_token()
        self.opt = optimizer(self.params, lr=self.s["learning_rate"], weight_decay=1e-2)
        from diffusers.optimization import get_scheduler

        # diffusers' schedules (--lr_scheduler, --lr_warmup_steps), stepped once an update
        self.lr = get_scheduler(self.s["lr_scheduler"], optimizer=self.opt,
                                num_warmup_steps=int(self.s["lr_warmup_steps"]),
                                num_training_steps=int(self.s["steps"]))
        # fp16 on a GPU: the loss scaled against gradients that underflow (accelerate's way)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16)
        self.gen = torch.Generator().manual_seed(int(self.s["seed"]))
        self.step, self.losses = 0, []
        self.first_step = 0  # where this session's loop started (a resumed one: later)
        if int(self.s["batch_size"]) % self.world:
            raise TrainingDataError(f"The batch size {self.s['batch_size']} does not split evenly "
                                    f"over {self.world} processes; use a multiple of {self.world}.")
        self.model_seconds = 0.0  # in forward and backward passes (the benchmark's share)
        self.last_step = 0.0  # the last step's seconds (a session clock's lap)
        self.share = 0  # this process's share of the last batch
        self._encode()

    # -- what is trained ----------------------------------------------------------------

    def _add_lora(self) -> list:
        """A LoRA on the UNet's attention and, with ``train_text_encoder``, on each text
        encoder's (the recipe of diffusers' DreamBooth LoRA script: q, k, v and out
        projections, the same rank). Checked before any adapter is added."""
        import torch
        from peft import LoraConfig

        rank = int(self.s["rank"])
        models = list(self._lora_models().values())
        for encoder in models[1:]:
            if not any(name.endswith(TEXT_LORA_TARGETS) for name, _ in encoder.named_modules()):
                raise TrainingDataError("This model's text encoder has no attention layers to "
                                        "put a LoRA on; train without --train-text-encoder.")
        torch.manual_seed(int(self.s["seed"]))  # the adapters' initial weights
        self.pipe.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                              target_modules=list(LORA_TARGETS)))
        for encoder in models[1:]:
            try:
                encoder.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                               target_modules=list(TEXT_LORA_TARGETS)))
            except ValueError as exc:  # transformers' own check of the installed peft
                if "peft" not in str(exc).lower():
                    raise
                import peft
                import transformers

                raise TrainingDataError(
                    f"--train-text-encoder: transformers {transformers.__version__} adds a text "
                    f"encoder's LoRA only with a newer peft than {peft.__version__} "
                    "(pip install -U peft).") from None
        params = [p for m in models for p in m.parameters() if p.requires_grad]
        for p in params:  # fp32 master weights under fp16 (cast_training_params)
            p.data = p.data.float()
        return params

    def _lora_models(self) -> dict:
        """The models a LoRA adapts, by the name diffusers' writer keys them under: the UNet
        and, with ``train_text_encoder``, the text encoders (SDXL's second as text_encoder_2)."""
        models = {"unet": self.pipe.unet}
        if self.text_lora:
            models.update(zip(("text_encoder", "text_encoder_2"), self.encoders))
        return models

    def _train_mode(self, on: bool = True) -> None:
        """The trained models in training mode (or back to inference)."""
        for model in self._lora_models().values():
            model.train(on)

    def _add_token(self) -> list:
        """The new token in every tokenizer (SDXL: both), its row in each text encoder's
        table started from the initializer's; the tables are what the optimizer holds, and
        every row but the new one is put back after each step."""
        import torch

        token, init = self.s["token"], self.s["initializer"]
        # every check before the tokenizer or the model is touched: a refusal leaves them whole
        if not token:
            raise TrainingDataError("Textual inversion needs the new token it learns (such as "
                                    "<my-thing>).")
        for tok in self.tokenizers:
            # a word the tokenizer has as one token already ("dog", as "dog</w>"): adding it
            # would take that word's meaning from every prompt
            if len(tok.tokenize(token)) == 1 or token in tok.get_vocab():
                raise TrainingDataError(f"The token '{token}' is already a word of this model's "
                                        "tokenizer: pick a new one (such as <my-thing>).")
        if not any(token in text_ for text_ in self.texts):
            raise TrainingDataError(f"No caption uses the token '{token}': the embedding would "
                                    "learn nothing (write it where the thing is named).")
        inits = []
        for tok in self.tokenizers:
            init_ids = tok.encode(init or "", add_special_tokens=False)
            if len(init_ids) != 1:
                raise TrainingDataError(f"The initializer '{init}' must be one token of this "
                                        "model's tokenizer (a word such as 'dog').")
            inits.append(init_ids[0])
        self.token_ids, self.frozen_rows, tables = [], [], []
        for tok, text, init_id in zip(self.tokenizers, self.encoders, inits):
            tok.add_tokens([token])
            text.to(torch.float32)  # the trained table in fp32, as the examples keep it
            text.resize_token_embeddings(len(tok))
            row = tok.convert_tokens_to_ids(token)
            table = text.get_input_embeddings().weight
            table.data[row] = table.data[init_id].clone()
            self.token_ids.append(row)
            self.frozen_rows.append(table.data.clone())
            table.requires_grad_(True)
            tables.append(table)
        return tables

    def _ids(self, texts: list[str]) -> list:
        """The texts' token ids by each tokenizer (SDXL: two)."""
        return [tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                    return_tensors="pt").input_ids for tok in self.tokenizers]

    def _embed(self, ids: list) -> tuple:
        """The UNet's context for token ids (one tensor per tokenizer) and, for SDXL, the
        pooled embedding: as the pipelines encode a prompt (SDXL: each encoder's
        second-to-last hidden states side by side, the second encoder's projection)."""
        import torch

        if not self.xl:
            return self.encoders[0](ids[0].to(self.device))[0], None
        hidden, pooled = [], None
        for encoder, some in zip(self.encoders, ids):
            out = encoder(some.to(self.device), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled = out[0]
        return torch.cat(hidden, dim=-1), pooled

    def _latents(self, examples: list[dict]):
        """The pictures' latent means, eight in memory at a time (an fp16 VAE that asks for
        it, as SDXL's own does, encodes in fp32: in fp16 it overflows)."""
        import torch

        vae, size = self.pipe.vae, int(self.s["resolution"])
        upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
        dtype = torch.float32 if upcast else vae.dtype
        if upcast:
            vae.to(torch.float32)
        with torch.no_grad():
            dists = [vae.encode(load_pictures(examples[i:i + 8], size).to(self.device, dtype)).latent_dist
                     for i in range(0, len(examples), 8)]
        if upcast:
            vae.to(torch.float16)
        return torch.cat([d.mean for d in dists]).float().cpu() * vae.config.scaling_factor

    def _encode(self) -> None:
        """The pictures' latent means; for a LoRA whose text encoders are frozen, the
        captions' embeddings too."""
        import torch

        self.latents = self._latents(self.examples)
        self.ids = self._ids(self.texts)
        if self.cached:
            with torch.no_grad():
                got = [self._embed([i[at:at + 8] for i in self.ids]) for at in range(0, len(self.texts), 8)]
            self.embeds = torch.cat([g[0] for g in got])
            self.pooled = torch.cat([g[1] for g in got]) if self.xl else None
        if self.prior:  # the class's pictures and its one caption
            self.class_latents = self._latents(self.class_examples)
            self.class_ids = self._ids([self.s["class_prompt"]])
            if self.cached:
                with torch.no_grad():
                    self.class_embed = self._embed(self.class_ids)
        # SDXL's time ids: the pictures are resized and centre-cropped to the resolution
        size = float(self.s["resolution"])
        self.time_ids = torch.tensor([[size, size, 0.0, 0.0, size, size]]) if self.xl else None

    def _class_pictures(self, previous) -> list[dict]:
        """DreamBooth's class pictures: ``class_images`` of them, each drawn from the class
        prompt with its own seed by the model before training (each process draws its share,
        into ``class_images/``), or found whole in a previous session's output."""
        import shutil

        import torch

        n, prompt = int(self.s["class_images"]), self.s["class_prompt"]
        names = [f"{i:04d}.png" for i in range(n)]
        folder = self.out / CLASS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        for root in ([Path(previous)] if previous else []):
            found = [f for depth in ("", "*/", "*/*/") for f in root.glob(f"{depth}{CLASS_DIR}")
                     if all((f / name).is_file() for name in names)]
            if found and self.rank == 0 and found[0].resolve() != folder.resolve():
                for name in names:
                    shutil.copyfile(found[0] / name, folder / name)
                log(f"{n} class pictures from the previous session")
            if found:
                break
        else:
            size = int(self.s["resolution"])
            for name in split(names, self.rank, self.world):  # this process's share
                if (folder / name).is_file():
                    continue
                with torch.no_grad():
                    image = self.pipe(prompt, num_inference_steps=int(self.s["class_steps"]),
                                      guidance_scale=float(self.s["validation_guidance"]),
                                      height=size, width=size,
                                      generator=torch.Generator().manual_seed(int(name[:4]))).images[0]
                image.save(folder / name)
            if self.rank == 0:
                log(f"{n} class pictures of {prompt!r} drawn by the model as it is")
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()  # every process's share written before any reads them all
        return [{"file": folder / name, "text": prompt, "name": f"{CLASS_DIR}/{name}"} for name in names]

    # -- the loop ------------------------------------------------------------------------

    def run(self, resume_from=None, stop_after: int | None = None, stop=None) -> dict:
        """Train to ``steps`` (from the checkpoint ``resume_from`` if given); ``stop_after``
        ends early after that many steps (a test's cut); ``stop(seconds of the last step)``
        True ends it early after a checkpoint (a session's time nearly up: every process
        stops at the same step, the vote exchanged with the gradients). Returns the run's
        record.

        Launched as several processes (one per GPU, torch.distributed initialised), every
        process draws the whole batch from the same generator and trains on its own equal
        share; the gradients are averaged across them before each step, so that the trained
        weights are those of one process with the same batch. The first process writes."""
        import torch

        if resume_from:
            self._load(Path(resume_from))
        s = self.s
        steps, every = int(s["steps"]), int(s["checkpoint_every"] or 0)
        self.out.mkdir(parents=True, exist_ok=True)
        self._train_mode()
        t0, first = time.monotonic(), self.step
        self.first_step = first
        stopping = False
        while self.step < steps and not stopping and (stop_after is None or self.step - first < stop_after):
            started = time.monotonic()
            accumulate = int(s["gradient_accumulation"])
            # a step of ``accumulate`` batches: each one's gradients added up, then one update
            loss = sum(self._micro(accumulate) for _ in range(accumulate))
            if self.world > 1:  # the mean of equal shares' means: the whole batch's mean
                import torch.distributed as dist

                # one exchange a step, not one a tensor (a LoRA has a hundred small ones):
                # the gradients and the loss in one flat buffer, as DDP's buckets do
                # (textual inversion: only the new token's row; the others are put back)
                grads = ([p.grad for p in self.params] if self.lora
                         else [t.grad[row] for t, row in zip(self.params, self.token_ids)])
                # (and each process's vote to stop: one stops, all stop at this step)
                vote = torch.tensor([float(stop is not None and stop(self.last_step))])
                flat = torch.cat([*(g.reshape(-1) for g in grads), loss.reshape(1), vote])
                dist.all_reduce(flat)
                flat /= self.world
                at = 0
                for g in grads:
                    g.copy_(flat[at:at + g.numel()].view_as(g))
                    at += g.numel()
                loss, stopping = flat[-2], bool(flat[-1] > 0)
            else:
                stopping = stop is not None and stop(self.last_step)
            self.model_seconds += time.monotonic() - started
            if self.lora:  # the LoRA example's --max_grad_norm 1.0
                self.scaler.unscale_(self.opt)
                torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.scaler.step(self.opt)
            self.scaler.update()
            self.lr.step()
            self.opt.zero_grad(set_to_none=True)
            if s["method"] == "textual-inversion":  # only the new token's row learns
                with torch.no_grad():
                    for table, row, frozen in zip(self.params, self.token_ids, self.frozen_rows):
                        keep = torch.ones(len(table), dtype=torch.bool)
                        keep[row] = False
                        table.data[keep] = frozen[keep].to(table.dtype)
            self.step += 1
            self.losses.append(float(loss))
            self.last_step = time.monotonic() - started
            if self.rank == 0 and (self.step % 50 == 0 or self.step == steps):
                rate = (self.step - first) / max(1e-9, time.monotonic() - t0)
                left = (steps - self.step) / rate if rate else 0
                recent = self.losses[-50:]
                log(f"step {self.step}/{steps}: loss {sum(recent) / len(recent):.4f} "
                    f"({rate:.2f} steps/s, ETA {left:.0f}s)")
            if every and self.step % every == 0 and self.step < steps and self.rank == 0:
                self.checkpoint()
                self.validate()
                self._train_mode()
            elif stopping and self.step < steps and self.rank == 0:
                self.checkpoint()
            if stopping and self.step < steps and self.rank == 0:
                log(f"the session's time is nearly up: stopping at step {self.step} of {steps} "
                    "(the next session continues from its checkpoint)")
        self._train_mode(False)
        self.seconds = time.monotonic() - t0
        if self.step < steps or self.rank != 0:
            if self.rank == 0:
                self._write_losses()
            return {"step": self.step, "steps": steps, "complete": self.step >= steps}
        self._write_losses()
        return self.finish(self.seconds)

    def _micro(self, accumulate: int):
        """One batch drawn from the generator, this process's share of it forward and
        backward (its loss divided by ``accumulate``); returns that loss, detached."""
        import torch
        import torch.nn.functional as F

        s, g = self.s, self.gen
        batch = int(s["batch_size"])
        idx = torch.randint(0, len(self.examples), (batch,), generator=g)
        latents = self.latents[idx]
        noise = torch.randn(latents.shape, generator=g)
        t = torch.randint(0, self.noise.config.num_train_timesteps, (len(idx),), generator=g)
        mine = slice(self.rank * batch // self.world, (self.rank + 1) * batch // self.world)
        idx, latents, noise, t = idx[mine], latents[mine], noise[mine], t[mine]
        self.share = len(idx)
        kind = self.device.split(":")[0]
        fp16 = self.dtype == torch.float16
        if self.cached:  # the text encoders frozen: the captions' embeddings computed once
            cond = self.embeds[idx.to(self.embeds.device)]
            pooled = self.pooled[idx.to(self.pooled.device)] if self.xl else None
        else:  # a new token's embedding or the encoders' LoRA learns: through the encoders
            with torch.autocast(kind, dtype=self.dtype, enabled=fp16):
                cond, pooled = self._embed([i[idx] for i in self.ids])
        if self.prior:  # as many class pictures beside them, in the same forward pass
            cidx = torch.randint(0, len(self.class_latents), (batch,), generator=g)
            clat = self.class_latents[cidx]
            cnoise = torch.randn(clat.shape, generator=g)
            ct = torch.randint(0, self.noise.config.num_train_timesteps, (batch,), generator=g)
            clat, cnoise, ct = clat[mine], cnoise[mine], ct[mine]
            latents, noise, t = torch.cat([latents, clat]), torch.cat([noise, cnoise]), torch.cat([t, ct])
            if self.cached:
                class_cond, class_pooled = self.class_embed
            else:
                with torch.autocast(kind, dtype=self.dtype, enabled=fp16):
                    class_cond, class_pooled = self._embed(self.class_ids)
            cond = torch.cat([cond, class_cond.expand(len(clat), *class_cond.shape[1:])])
            if self.xl:
                pooled = torch.cat([pooled, class_pooled.expand(len(clat), *class_pooled.shape[1:])])
        noisy = self.noise.add_noise(latents, noise, t)
        target = target_of(self.noise, latents, noise, t)
        added = None
        if self.xl:
            added = {"text_embeds": pooled.to(self.device, self.dtype),
                     "time_ids": self.time_ids.expand(len(latents), -1).to(self.device, self.dtype)}
        with torch.autocast(kind, dtype=self.dtype, enabled=fp16):
            pred = self.pipe.unet(noisy.to(self.device, self.dtype), t.to(self.device),
                                  cond.to(self.device, self.dtype), added_cond_kwargs=added).sample
        pred, target = pred.float(), target.to(self.device).float()
        if self.prior:  # the instance's loss, plus the class's weighted (train_dreambooth_lora)
            (pred, prior_pred), (target, prior_target) = pred.chunk(2), target.chunk(2)
            loss = F.mse_loss(pred, target) + float(s["prior_loss_weight"]) * F.mse_loss(
                prior_pred, prior_target)
        else:
            loss = F.mse_loss(pred, target)
        if accumulate > 1:
            loss = loss / accumulate
        self.scaler.scale(loss).backward()
        return loss.detach()

    # -- what it writes ------------------------------------------------------------------

    def _lora_layers(self) -> dict:
        """Each trained part's LoRA layers by the name save_lora_weights takes them under
        (``unet``, ``text_encoder``, SDXL's ``text_encoder_2``)."""
        return {name: _lora_state(model) for name, model in self._lora_models().items()}

    def weights(self) -> dict:
        """The trained weights as their file holds them: a LoRA's layers under their part's
        prefix (``unet.``, ``text_encoder.``, ``text_encoder_2.``); an embedding as
        examples/textual_inversion writes it ({token: its vector}), or for SDXL as the
        common UIs do (``clip_l`` and ``clip_g``, one vector for each text encoder)."""
        if self.lora:
            return {f"{part}.{k}": v for part, layers in self._lora_layers().items()
                    for k, v in layers.items()}
        rows = [t.data[row].detach().float().cpu()[None].clone()
                for t, row in zip(self.params, self.token_ids)]
        if self.xl:
            return {"clip_l": rows[0], "clip_g": rows[1]}
        return {self.s["token"]: rows[0]}

    def save_weights(self, folder: Path) -> Path:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.s['name']}.safetensors"
        if self.lora:  # diffusers' own writer: its keys, its metadata
            from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

            writer = StableDiffusionXLPipeline if self.xl else StableDiffusionPipeline
            writer.save_lora_weights(folder, weight_name=path.name, **{
                f"{part}_lora_layers": layers for part, layers in self._lora_layers().items()})
        else:  # what examples/textual_inversion writes: {token: its vector}
            save_file(self.weights(), str(path), metadata={"format": "pt"})
        return path

    def save_kohya(self, path: Path) -> Path:
        """The LoRA beside ``path`` again, in kohya's keys (``lora_unet_…``,
        ``lora_te_text_model_…``; SDXL ``lora_te1_…``, ``lora_te2_…``; ``lora_down``,
        ``lora_up`` and ``alpha``), which AUTOMATIC1111, ComfyUI and the other UIs read (and
        diffusers too): what diffusers' SDXL DreamBooth script writes under
        ``--output_kohya_format``, from each part's peft state."""
        from diffusers.utils import convert_state_dict_to_kohya
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import save_file

        peft = {f"{name}.{k}": v.detach().float().cpu().contiguous()
                for name, model in self._lora_models().items()
                for k, v in get_peft_model_state_dict(model).items()}
        kohya = {}
        for key, value in convert_state_dict_to_kohya(peft).items():
            if key.startswith("lora_te"):
                # the UIs name an encoder's layers from its text_model (transformers 5's CLIP
                # has no such level); one text encoder is lora_te_, SDXL's two lora_te1_/2_
                encoder, _, rest = key[len("lora_"):].partition("_")
                rest = rest if rest.startswith("text_model_") else "text_model_" + rest
                key = f"lora_{encoder if self.xl else 'te'}_{rest}"
            kohya[key] = value
        out = path.with_name(path.stem + KOHYA_SUFFIX + path.suffix)
        save_file(kohya, str(out))
        return out

    def _trained_state(self) -> tuple[list, dict]:
        """What is trained and the optimizer's state, as a checkpoint keeps them: for an
        embedding only the new token's row and its moments (the other rows are put back
        after each step; a whole table and its two moments are hundreds of MB)."""
        state = self.opt.state_dict()
        if self.lora:
            return [p.detach().cpu() for p in self.params], state
        rows = self.token_ids  # the optimizer's state is keyed by the table's place
        moments = {k: {n: (v[rows[k]].clone() if getattr(v, "dim", lambda: 0)() == 2 else v)
                       for n, v in st.items()} for k, st in state["state"].items()}
        return ([t.detach()[row].cpu().clone() for t, row in zip(self.params, rows)],
                {**state, "state": moments})

    def checkpoint(self) -> Path:
        """The weights, the optimizer, the loss scaler, the generator and the losses at this
        step, written whole into a new folder before it takes its final name (a cut leaves no
        half one; a resumed run that reaches a step again replaces its folder). Keeps the
        newest ``keep_checkpoints``."""
        import shutil

        import torch

        folder = self.out / CHECKPOINTS_DIR / f"step-{self.step:06d}"
        tmp = folder.with_name(folder.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        self.save_weights(tmp)
        trained, optimizer = self._trained_state()
        torch.save({"step": self.step, "optimizer": optimizer, "generator": self.gen.get_state(),
                    "scaler": self.scaler.state_dict(), "losses": self.losses, "trained": trained,
                    "lr_scheduler": self.lr.state_dict(),
                    "method": self.s["method"]}, tmp / STATE_FILE)
        if folder.exists():
            old = folder.with_name(folder.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(folder)
        kept = sorted(p for p in folder.parent.glob("step-*") if p.is_dir() and p.name[5:].isdigit())
        for stale in kept[:-max(1, int(self.s["keep_checkpoints"]))]:
            shutil.rmtree(stale, ignore_errors=True)
        log(f"checkpoint at step {self.step}: {CHECKPOINTS_DIR}/{folder.name}")
        return folder

    def _load(self, folder: Path) -> None:
        import torch

        state = torch.load(folder / STATE_FILE, weights_only=True)
        if state.get("method", self.s["method"]) != self.s["method"]:
            raise TrainingDataError(f"The checkpoint {folder.name} is of a {state['method']} run, "
                                    f"not {self.s['method']}.")
        with torch.no_grad():
            if self.lora:
                for p, saved in zip(self.params, state["trained"]):
                    p.copy_(saved.to(p.device, p.dtype))
            else:
                for table, row, saved in zip(self.params, self.token_ids, state["trained"]):
                    table[row] = saved.to(table.device, table.dtype)
        optimizer = state["optimizer"]
        if not self.lora:  # the row's moments back into whole tables
            full = {}
            for k, st in optimizer["state"].items():
                table, row = self.params[int(k)], self.token_ids[int(k)]
                full[k] = {}
                for n, v in st.items():
                    if getattr(v, "dim", lambda: 0)() == 1 and v.numel() == table.shape[1]:
                        whole = torch.zeros_like(table)
                        whole[row] = v.to(table.device, whole.dtype)
                        full[k][n] = whole
                    else:
                        full[k][n] = v
            optimizer = {**optimizer, "state": full}
        self.opt.load_state_dict(optimizer)
        self.scaler.load_state_dict(state["scaler"])
        if "lr_scheduler" in state:
            self.lr.load_state_dict(state["lr_scheduler"])
        self.gen.set_state(state["generator"])
        self.step, self.losses = int(state["step"]), list(state["losses"])
        log(f"resumed from {folder.name} at step {self.step}")

    def validate(self) -> Path | None:
        """One picture per validation prompt (seed 0 each, the model as trained so far), side
        by side in ``validation/step-NNNNNN.png``."""
        import torch
        from PIL import Image

        prompts = list(self.s["validation_prompts"] or [])
        if not prompts:
            return None
        size = int(self.s["resolution"])
        self._train_mode(False)
        fp16 = self.dtype == torch.float16  # an fp32 text encoder (textual inversion) beside it
        with torch.no_grad(), torch.autocast(self.device.split(":")[0], enabled=fp16):
            images = [self.pipe(p, num_inference_steps=int(self.s["validation_steps"]),
                                guidance_scale=float(self.s["validation_guidance"]),
                                height=size, width=size,
                                generator=torch.Generator().manual_seed(0)).images[0]
                      for p in prompts]
        strip = Image.new("RGB", (size * len(images), size), "white")
        for i, image in enumerate(images):
            strip.paste(image.convert("RGB"), (i * size, 0))
        folder = self.out / VALIDATION_DIR
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step-{self.step:06d}.png"
        strip.save(path)
        log(f"validation pictures at step {self.step}: {VALIDATION_DIR}/{path.name}")
        return path

    def _write_losses(self) -> None:
        rows = "".join(f"{i},{loss:.6f}\n" for i, loss in enumerate(self.losses, 1))
        (self.out / LOSS_FILE).write_text("step,loss\n" + rows, encoding="utf-8")
        if self.losses:
            plot_losses(self.losses).save(self.out / LOSS_PLOT)

    def finish(self, seconds: float) -> dict:
        path = self.save_weights(self.out)
        kohya = self.save_kohya(path) if self.lora else None
        self.validate()
        head, tail = self.losses[:50], self.losses[-50:]
        record = {"method": self.s["method"], "settings": self.s, "steps": self.step,
                  "weights": path.name, "sha256": sha256_of(path),
                  **({"kohya": kohya.name, "kohya_sha256": sha256_of(kohya)} if kohya else {}),
                  "loss_first": sum(head) / len(head), "loss_last": sum(tail) / len(tail),
                  "seconds": round(seconds, 1), "text_encoders": len(self.encoders),
                  "examples": [{"file": e.get("name") or Path(e["file"]).name, "text": e["text"],
                                "sha256": sha256_of(e["file"])} for e in self.examples]}
        (self.out / RECORD_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        log(f"trained {self.step} steps: loss {record['loss_first']:.4f} -> "
            f"{record['loss_last']:.4f}; weights {path.name}")
        return record


def plot_losses(losses: list[float], width: int = 480, height: int = 240):
    """The loss curve as a picture: each step's loss in grey, its running mean over a
    twentieth of the steps in black, the first and last step and the range labelled."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), "white")
    pen = ImageDraw.Draw(image)
    left, right, top, bottom = 48, width - 8, 8, height - 20
    low, high = min(losses), max(losses)
    span = (high - low) or 1.0

    def point(i: int, value: float) -> tuple[float, float]:
        x = left + (right - left) * (i / max(1, len(losses) - 1))
        return x, bottom - (bottom - top) * (value - low) / span

    window = max(1, len(losses) // 20)
    mean, total = [], 0.0
    for i, value in enumerate(losses):
        total += value - (losses[i - window] if i >= window else 0.0)
        mean.append(total / min(i + 1, window))
    pen.rectangle([left, top, right, bottom], outline=(160, 160, 160))
    if len(losses) > 1:
        pen.line([point(i, v) for i, v in enumerate(losses)], fill=(190, 190, 190))
        pen.line([point(i, v) for i, v in enumerate(mean)], fill=(0, 0, 0), width=2)
    pen.text((2, top), f"{high:.3g}", fill=(0, 0, 0))
    pen.text((2, bottom - 10), f"{low:.3g}", fill=(0, 0, 0))
    pen.text((left, bottom + 4), "step 1", fill=(0, 0, 0))
    pen.text((right - 70, bottom + 4), f"step {len(losses)}", fill=(0, 0, 0))
    return image


def _device_name(device: str) -> str:
    """The GPU's name ("Tesla T4"), which the host's estimate learns from; "cpu" else."""
    import torch

    return torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"


def processes_for(batch_size: int, devices: int) -> int:
    """How many processes train a batch of ``batch_size`` on ``devices`` GPUs: the most that
    split it evenly (a batch of 1 trains on one GPU; each process gets an equal share)."""
    return max(d for d in range(1, max(1, devices) + 1) if batch_size % d == 0)


def latest_checkpoint(folder) -> Path | None:
    """The newest whole checkpoint (one with its state file) under ``folder``, a previous
    session's output: its checkpoints/step-NNNNNN folders, there or one or two folders
    deeper (as Kaggle mounts a kernel's output). None: it holds none."""
    if not folder or not Path(folder).is_dir():
        return None
    root = Path(folder)
    found = [p for depth in ("", "*/", "*/*/")
             for p in root.glob(f"{depth}{CHECKPOINTS_DIR}/step-*")
             if p.name[5:].isdigit() and (p / STATE_FILE).is_file()]
    return max(found, key=lambda p: int(p.name[5:]), default=None)


def run_job(job: dict, out_dir: Path, device: str, dtype, clock=None) -> dict:
    """A training job's document, run in this process (one of the engine's processes): the
    model loaded, the pictures the document names (found where they are, checked by the
    host), the run continued from the newest checkpoint under ``resume_from`` if the
    document names a previous session's output. ``clock`` (plan.SessionClock) ends it early,
    after a checkpoint, when the session's time is nearly up. The first process records the
    weights in its manifest part as the job's one item; a session that ends early records
    none, and the next one continues."""
    import os

    from .manifest import PartLog
    from .pipelines import load_pipeline

    t0 = time.monotonic()
    out_dir = Path(out_dir)
    settings = {**DEFAULTS, **job["training"]}
    examples = [{"file": e["file"], "text": e["text"], "name": e.get("name")}
                for e in job["examples"]]
    _optimizer(bool(settings["use_8bit_adam"]))  # bitsandbytes missing: said before the model loads
    pipe = load_pipeline(job["model"], device, dtype)
    pipe.set_progress_bar_config(disable=True)
    previous = mounted(job.get("resume_from"))
    trainer = Trainer(pipe, examples, settings, out_dir, device, previous)
    part = None
    if trainer.rank == 0:
        (out_dir / PARTS_DIR).mkdir(parents=True, exist_ok=True)
        header = {"engine_version": ENGINE_VERSION, "kind": WEIGHTS, "job_id": job.get("job_id"),
                  "run_id": job.get("run_id"), "model": job["model"]["id"],
                  "method": settings["method"], "name": settings["name"],
                  "processes_total": trainer.world}
        part = PartLog(out_dir / PARTS_DIR / "rank-00.jsonl", header, {
            "rank": 0, "run_id": job.get("run_id"), "session": job.get("session", 1),
            "device": device, "dtype": str(dtype).replace("torch.", ""),
            "device_name": _device_name(device),
            "model_load_seconds": round(time.monotonic() - t0, 4)})
    start = latest_checkpoint(previous)
    # the tests' faults: the session fails after N steps (its checkpoints kept), as
    # generation's does; or its time is up after N steps (the emulator's short session)
    fail_after = int(os.environ.get("IMGGENHUB_ENGINE_FAIL_AFTER", "-1"))
    up_after = int(os.environ.get("IMGGENHUB_ENGINE_STOP_AFTER", "-1"))

    def stop(seconds: float) -> bool:
        if up_after >= 0 and trainer.step + 1 - trainer.first_step >= up_after:
            return True
        if clock is None:
            return False
        clock.lap(seconds)
        return clock.time_up()

    record = trainer.run(resume_from=start, stop=stop,
                         stop_after=fail_after if fail_after >= 0 else None)
    if part is not None:
        if record.get("weights"):
            path = out_dir / record["weights"]
            kohya = {"kohya": {"file": record["kohya"], "sha256": record["kohya_sha256"]}} \
                if record.get("kohya") else {}
            part.image({"index": 0, "file": path.name, "sha256": record["sha256"], **kohya,
                        "bytes": path.stat().st_size, "model": job["model"]["id"],
                        "method": settings["method"], "steps": record["steps"],
                        "token": settings.get("token"), "loss_first": record["loss_first"],
                        "loss_last": record["loss_last"], "seconds": record["seconds"]})
        part.update_process(seconds=round(time.monotonic() - t0, 4),
                            training_seconds=round(trainer.seconds, 4), steps=trainer.step,
                            session_steps=trainer.step - trainer.first_step)
    if fail_after >= 0 and not record.get("weights"):
        raise RuntimeError(f"injected failure at step {trainer.step} (IMGGENHUB_ENGINE_FAIL_AFTER)")
    return record


def main(argv: list[str] | None = None) -> int:
    """``python -m imggenhub.engine.training --data DIR --out DIR --model ID [--settings
    JSON] [--resume CHECKPOINT]``: one training run; under torchrun or accelerate launch,
    one process per device. The first process prints the run's record as its last line."""
    import argparse
    import os

    import torch

    from .pipelines import load_pipeline

    parser = argparse.ArgumentParser(description="imggenhub engine: train a LoRA or an embedding")
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--model", required=True)
    parser.add_argument("--settings", default="{}", help="JSON: the training settings")
    parser.add_argument("--instance-prompt", default=None)
    parser.add_argument("--resume", type=Path, default=None, help="a checkpoint folder")
    args = parser.parse_args(argv)
    settings = {**DEFAULTS, **json.loads(args.settings)}
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    if torch.cuda.is_available():
        torch.cuda.set_device(local)  # before the process group: NCCL on this rank's GPU
    if "RANK" in os.environ and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    examples = read_examples(args.data, args.instance_prompt)
    check_examples(examples, int(settings["resolution"]))
    pipe = load_pipeline({"id": args.model, "pipeline": "auto", "variant": None}, device, dtype)
    pipe.set_progress_bar_config(disable=True)
    trainer = Trainer(pipe, examples, settings, args.out, device)
    record = trainer.run(resume_from=args.resume)
    if trainer.rank == 0:
        # the figures, not the captions or the settings (those are in training.json)
        shown = {k: v for k, v in record.items() if k not in ("settings", "examples")}
        print(json.dumps({**shown, "share": trainer.share, "model_seconds": round(trainer.model_seconds, 3),
                          "loop_seconds": round(trainer.seconds, 3), "processes": trainer.world}),
              flush=True)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
