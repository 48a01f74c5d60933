"""Publishing trained weights to the Hugging Face Hub (``imggenhub publish``): the weights, a
model card (base model, method, trigger word, training settings, the loss curve, the
validation pictures, a diffusers snippet and the imggenhub command that remakes them) and
the samples, through ``huggingface_hub`` (``create_repo``, ``upload_folder``) with the token
from the usual places (``HF_TOKEN``, ``hf auth login``). What goes up is staged in a folder
of its own first, from a run's verified outputs: never the checkpoints, the kernel log, the
pictures trained on or their names, and never the token."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from ..engine import MANIFEST, sha256_of
from ..engine.training import METHODS
from ..errors import CredentialsError, ImggenhubError, SpecError, Unreachable
from ..job.models import HUB_ID
from . import artifacts

TAGS = ["text-to-image", "diffusers", "stable-diffusion", "imggenhub"]
SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,199}")


class PublishError(ImggenhubError):
    """The Hub refused the upload (a conflict, a bad request); one sentence."""


def trained_folder(manifest: dict, folder: Path) -> tuple[dict, Path]:
    """The record of a training run's weights and the file, checked against its sha256."""
    if manifest.get("kind") != "weights":
        raise SpecError(f"{folder} holds no trained weights (it is not a training run's folder).")
    record = next((r for r in manifest.get("images") or [] if r.get("index") == 0), None)
    if not manifest.get("complete") or record is None:
        raise SpecError(f"The training run in {folder} has not finished; 'imggenhub resume' it "
                        "first.")
    return record, _checked(folder, record)


def _checked(folder: Path, entry: dict) -> Path:
    """A weights file a manifest entry names (``file``, ``sha256``), there and unchanged."""
    path = folder / artifacts.safe_relative(entry["file"])
    if not path.is_file() or sha256_of(path) != entry["sha256"]:
        raise SpecError(f"The weights {entry['file']} in {folder} are missing or differ from "
                        "their manifest; download the run again.")
    return path


def _md(text: str) -> str:
    """User text in the card's markdown as text: its markup characters escaped, one line."""
    text = " ".join(str(text).split())
    return re.sub(r"([\\`*_{}\[\]<>()#+!|~])", r"\\\1", text)


def _trigger(training: dict) -> str | None:
    """The word that calls up what was learned: the token of an embedding; for a LoRA the
    caption every picture shares (an instance prompt), if they share one."""
    settings = training.get("settings") or {}
    if settings.get("method") == "textual-inversion":
        return settings.get("token")
    captions = {e.get("text") for e in training.get("examples") or []}
    return captions.pop() if len(captions) == 1 else None


def model_card(repo: str, record: dict, training: dict, manifest: dict, samples: list[str],
               kohya: str | None = None) -> str:
    """The README.md: YAML metadata, then what was trained, how, and how to use it
    (``kohya``: the name of the LoRA's copy in the UIs' keys, uploaded beside it)."""
    from huggingface_hub import ModelCard, ModelCardData

    settings = training.get("settings") or {}
    eight_bit = settings.get("use_8bit_adam") is True
    text_encoders = settings.get("train_text_encoder") is True  # a LoRA on them too
    method = settings.get("method") if settings.get("method") in METHODS else "lora"
    lora = method != "textual-inversion"
    # what a manifest says is data: a name that is not a plain model id or file name is not
    # written into the card's code
    base = str(manifest.get("model") or "")
    base = base if SAFE.fullmatch(base) else "MODEL"
    trigger = _trigger(training)
    weights = str(record["file"]) if SAFE.fullmatch(str(record["file"])) else "weights.safetensors"
    data = ModelCardData(
        base_model=base if HUB_ID.match(base) else None, library_name="diffusers",
        license="other" if not HUB_ID.match(base) else None,
        tags=TAGS + (["lora"] + (["dreambooth"] if method == "dreambooth-lora" else [])
                     if lora else ["textual_inversion"]),
        instance_prompt=trigger, ignore_metadata_errors=True)
    if lora:
        load = f"pipe.load_lora_weights({json.dumps(repo)}, weight_name={json.dumps(weights)})"
    elif training.get("text_encoders") == 2:  # SDXL: a vector for each text encoder
        load = (f"from huggingface_hub import hf_hub_download\nfrom safetensors.torch import load_file\n\n"
                f"state = load_file(hf_hub_download({json.dumps(repo)}, {json.dumps(weights)}))\n"
                f"pipe.load_textual_inversion(state[\"clip_l\"], token={json.dumps(trigger)}, "
                f"text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)\n"
                f"pipe.load_textual_inversion(state[\"clip_g\"], token={json.dumps(trigger)}, "
                f"text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)")
    else:
        load = (f"pipe.load_textual_inversion({json.dumps(repo)}, weight_name={json.dumps(weights)}, "
                f"token={json.dumps(trigger)})")
    prompt = trigger or "your prompt"
    def num(value):  # a figure from training.json, or nothing (it is the kernel's data)
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    settings = {k: num(settings.get(k)) for k in ("rank", "learning_rate", "resolution",
                                                   "batch_size", "seed")} | {
        k: settings.get(k) for k in ("token", "initializer", "validation_prompts")}
    training = {**training, **{k: num(training.get(k)) or 0 for k in
                               ("steps", "loss_first", "loss_last", "seconds")}}
    rows = [("method", method), ("base model", _md(base)), ("steps", training.get("steps")),
            ("rank", settings.get("rank") if lora else None),
            ("LoRA on", ("the UNet and the text encoders" if text_encoders else "the UNet")
             if lora else None),
            ("learning rate", settings.get("learning_rate")),
            ("resolution", settings.get("resolution")), ("batch size", settings.get("batch_size")),
            ("seed", settings.get("seed")), ("pictures", len(training.get("examples") or [])),
            ("loss, first and last 50 steps",
             f"{training.get('loss_first', 0):.4f} to {training.get('loss_last', 0):.4f}"),
            ("training time", f"{training.get('seconds', 0):.0f} s")]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows if v not in (None, ""))
    flags = [f"--model {base}" if " " not in base else "--model MODEL", f"--method {method}"]
    for flag, key in (("--steps", None), ("--rank", "rank"), ("--learning-rate", "learning_rate"),
                      ("--resolution", "resolution"), ("--batch-size", "batch_size"),
                      ("--seed", "seed")):
        value = training.get("steps") if key is None else settings.get(key)
        if value is not None and (key != "rank" or lora):
            flags.append(f"{flag} {value}")
    if eight_bit:
        flags.append("--use-8bit-adam")
    if text_encoders:
        flags.append("--train-text-encoder")
    if method == "textual-inversion":
        word = re.compile(r"[^\s`'\"\\]{1,64}")
        token, init = str(settings.get("token")), str(settings.get("initializer"))
        flags += [f"--token '{token if word.fullmatch(token) else 'TOKEN'}'",
                  f"--initializer {init if word.fullmatch(init) else 'WORD'}"]
    kohya_note = (f"\n\n`{kohya}` is the same LoRA in kohya's keys, for AUTOMATIC1111, ComfyUI "
                  "and the other UIs." if kohya and SAFE.fullmatch(kohya) else "")
    shown = "\n".join(f"![{_md(Path(s).stem)}]({s})" for s in samples)
    prompts = "\n".join(f"- {_md(p)}" for p in settings.get("validation_prompts") or [])
    body = f"""
# {_md(repo.split('/')[-1])}

A {'LoRA' if lora else 'textual-inversion embedding'} for `{base}`, trained with
imggenhub (`imggenhub train`).{f'''

Trigger: {_md(trigger)}''' if trigger else ''}

## Use it

```python
import torch
from diffusers import AutoPipelineForText2Image

pipe = AutoPipelineForText2Image.from_pretrained({json.dumps(base)}, torch_dtype=torch.float16).to("cuda")
{load}
image = pipe({json.dumps(prompt)}).images[0]
```

or `imggenhub generate --{'lora' if lora else 'embedding'} {weights}` with the file
downloaded.{kohya_note}

## Training

| setting | value |
|---|---|
{table}

![the loss, step by step](loss.png)

Made again by `imggenhub train --images DIR {' '.join(flags)}` on the same pictures.
"""
    if shown:
        body += f"\n## Validation pictures\n\n{prompts}\n\n{shown}\n"
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n{body}"))


def stage(folder: Path, repo: str, into: Path) -> list[str]:
    """What goes up, copied into ``into``: the weights, README.md, the loss curve and the
    validation pictures. Returns their names in the repo."""
    manifest = artifacts.read_manifest(folder)
    if manifest is None:
        raise SpecError(f"{folder} holds no {MANIFEST}; it is not a run's folder.")
    record, weights = trained_folder(manifest, folder)
    try:
        training = json.loads((folder / "training.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        training = {}
    training = training if isinstance(training, dict) else {}
    names = [record["file"]]
    shutil.copyfile(weights, into / record["file"])
    kohya = record.get("kohya")  # the same LoRA in the UIs' keys (checked by the schema)
    if kohya:  # uploaded under its own name: a plain file name, not a path
        if not SAFE.fullmatch(kohya["file"]) or "/" in kohya["file"]:
            raise SpecError(f"The weights {kohya['file']} in {folder} are missing or differ from "
                            "their manifest; download the run again.")
        shutil.copyfile(_checked(folder, kohya), into / kohya["file"])
        names.append(kohya["file"])
    for name in ("loss.png", "loss.csv"):
        if (folder / name).is_file():
            shutil.copyfile(folder / name, into / name)
            names.append(name)
    samples = []
    if (folder / "validation").is_dir():
        (into / "validation").mkdir()
        for picture in sorted((folder / "validation").glob("step-*.png")):
            shutil.copyfile(picture, into / "validation" / picture.name)
            samples.append(f"validation/{picture.name}")
    (into / "README.md").write_text(model_card(repo, record, training, manifest, samples[-1:],
                                               kohya["file"] if kohya else None),
                                    encoding="utf-8")
    return sorted(names + samples + ["README.md"])


def publish(folder: Path, repo: str, private: bool, on_event) -> dict:
    """Upload a training run's weights, card and samples to ``repo`` (made if it is not
    there). A re-publish of the same files makes no new commit."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    if not HUB_ID.match(repo):
        raise SpecError(f"--repo {repo[:80]!r} is not a Hub repo id like 'owner/name'.")
    token = get_token()
    if not token:
        raise CredentialsError("No Hugging Face token here: set HF_TOKEN or run 'hf auth login' "
                               "with a token that may write to the repo.")
    # HF_ENDPOINT read now, not when huggingface_hub was imported (another server: a mirror)
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
    with tempfile.TemporaryDirectory(prefix="imggenhub-publish-") as tmp:
        names = stage(Path(folder), repo, Path(tmp))
        try:
            url = api.create_repo(repo, private=private, exist_ok=True)
            on_event(f"uploading {len(names)} files to {url}")
            before = api.repo_info(repo).sha
            commit = api.upload_folder(repo_id=repo, folder_path=tmp,
                                       commit_message="Upload weights and card (imggenhub publish)")
        except HfHubHTTPError as exc:
            raise _sentence(exc, repo) from None
        except OSError as exc:  # requests' connection errors are OSErrors
            raise Unreachable(f"The Hub could not be reached ({type(exc).__name__}); nothing was "
                              "published.") from None
    changed = commit.oid != before
    return {"repo": repo, "url": str(url), "commit": commit.oid, "changed": changed,
            "files": names, "private": private}


def _sentence(exc, repo: str) -> ImggenhubError:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status == 401:
        return CredentialsError("The Hub did not accept the Hugging Face token (401); nothing was "
                                "published. Log in again ('hf auth login') or set HF_TOKEN.")
    if status == 403:
        return CredentialsError(f"The Hugging Face token may not write to {repo} (403); nothing "
                                "was published. Use a token with write access to its owner.")
    if status == 409:
        return PublishError(f"The Hub refused {repo} (409, a conflict: a repo of that name as "
                            "another type, or a concurrent commit); nothing was published.")
    if status is not None and status >= 500:
        return Unreachable(f"The Hub answered {status}; nothing was published. Try again later.")
    return PublishError(f"The Hub refused the upload to {repo} (HTTP {status}); nothing was "
                        "published.")
