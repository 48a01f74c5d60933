"""Preparing a job for Kaggle: what all its kernels share, once (the flags and template
checked, the owner, the local inputs hashed, the GPU hours against the quota, the Hub's word
on a gated model and the token shipped, the bundle decision), then each kernel's notebook
and metadata from it (a shard: the kernel <slug>-<n>, making its share)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import requests

from ...config import state_dir
from ...engine import KAGGLE_INPUT, KAGGLE_T4X2, DoesNotFit, Machine, counted, for_job, models_of
from ...engine.tiny import SHIPPED
from ...errors import CredentialsError, KaggleApiError, OverQuota, SpecError, Unreachable
from ...job.models import HUB_ID
from ...job.notebook import job_document
from ...run.runs import Run
from ..base import OnEvent
from . import api as kaggle_api
from . import estimate
from . import inputs as kaggle_inputs
from .meta import (
    PLACEHOLDER_OWNER,
    KernelOptions,
    kernel_metadata,
    load_metadata_template,
    split_kernel_id,
    write_metadata,
)

BUNDLE_THRESHOLD = 200  # images; from benchmarks/kaggle_download.py (see docs/kaggle.md)
GPU_SESSIONS = 2  # Kaggle runs at most 2 GPU sessions at once per account
AUTO_SHARD_MINUTES = 10.0  # --shards auto: split when the job's generation is this long

HUB_TIMEOUT = 15.0  # seconds to wait for the Hub's word on a model id before a push


@dataclass
class KaggleJob:
    """What a job's kernels share, prepared once (``prepare_job``)."""

    meta: dict  # the kernel metadata, owner filled in
    sources: list  # the datasets every kernel attaches
    shipment: kaggle_inputs.Shipment | None = None  # files on this machine, as a dataset
    token_file: str | None = None  # where the kernel finds the shipped Hub token
    bundle: bool = False


def _token_from(variable: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,99}", variable):
        raise SpecError(f"--hf-token-env {variable[:40]!r} is not an environment variable name.")
    token = os.environ.get(variable, "").strip()
    if not token:
        raise SpecError(f"--hf-token-env {variable}: the variable {variable} is not set or empty; "
                        "export your Hugging Face token in it.")
    return token


def check_memory(doc: dict, machine, where: str, on_event: OnEvent) -> list:
    """FLUX and SD 3.5 planned for the remote's machine (``where``: its name, said) before
    anything is pushed: a job that cannot fit is one sentence here, not an out-of-memory
    error an hour later. The plans (none for a model that needs none)."""
    plans = []
    for model in {m["id"]: m for m in models_of(doc)}.values():
        if not model.get("memory"):
            continue
        try:
            plan = for_job(doc, model, machine)
        except DoesNotFit as exc:
            raise SpecError(f"{exc} (planned for {where}).") from None
        on_event(f"{plan.line()} (on {where})")
        plans.append(plan)
    return plans


def prepare_job(backend, job, options, on_event: OnEvent, width: int = 1) -> "KaggleJob":
    """What every kernel of the job shares, done once: the flags and template checked,
    the owner, the local inputs hashed, the GPU hours against the quota, the Hub's word
    on the model and the token shipped, the bundle decision."""
    options = options or KernelOptions()
    given_token = _token_from(options.hf_token_env) if options.hf_token_env else None
    swept = [("--sweep model", p.model["id"]) for p in job.prompts if p.model]
    for flag, ref in (("--model", job.model["id"]), ("--refiner", (job.refiner or {}).get("id")),
                      *swept):
        if ref in SHIPPED:
            raise SpecError(f"{flag} {ref} ships with imggenhub and runs on this machine only "
                            "for now (--backend local); a Kaggle kernel cannot load it yet.")
        if ref and ref.startswith("/") and not ref.startswith(KAGGLE_INPUT + "/"):
            raise SpecError(f"{flag} {ref} is a folder on this machine, which a Kaggle kernel "
                            "cannot read; upload it to Kaggle as a dataset or model and give "
                            "its /kaggle/input/... path, or use --backend local.")
    template = load_metadata_template(options.template)
    meta = kernel_metadata(options, template=template)  # checked before any network
    doc = job_document(job)
    gpu = meta.get("enable_gpu")
    check_memory(doc, KAGGLE_T4X2 if gpu else Machine(cards=0, host_gib=KAGGLE_T4X2.host_gib),
                 f"Kaggle's {'2 x T4' if gpu else 'CPU'}", on_event)
    if meta["id"].startswith(PLACEHOLDER_OWNER + "/"):
        meta = kernel_metadata(options, backend.owner(), template)  # "your-kaggle-username"
    owner, _ = split_kernel_id(meta["id"])
    prepared = KaggleJob(meta=meta, sources=list(meta.get("dataset_sources") or []))
    prepared.shipment = kaggle_inputs.plan(job, owner)
    if prepared.shipment is not None:  # files here: the kernel reads them from a dataset
        doc = kaggle_inputs.kernel_document(doc, prepared.shipment)
        prepared.sources.append(prepared.shipment.ref)
        n = len(prepared.shipment.files)
        on_event(f"inputs: {counted(n, 'file')} on this machine {'goes' if n == 1 else 'go'} to "
                 f"Kaggle as the private dataset {prepared.shipment.ref}")
    hub = _ask_the_hub(backend, job, given_token, on_event)  # a mistyped id: here, not on a GPU
    if meta.get("enable_gpu"):  # before anything is uploaded (the token below)
        _check_quota(backend, doc, options, on_event, width)
    info = hub.get(job.model["id"]) or ({"gated": True} if _preset_gated(job) else None)
    token_env = options.hf_token_env or _token_wanted(job, info, on_event)
    if not token_env and info and info.get("gated"):  # it would fail in the kernel, GPU spent
        raise CredentialsError(
            f"{job.model['id']} is gated on the Hub: accept its terms there, then give a token "
            "that may read it with --hf-token-env VAR (or set HF_TOKEN); nothing was pushed.")
    if token_env:  # only on the user's word: the token goes to a private dataset
        token = given_token or _token_from(token_env)
        prepared.sources.append(kaggle_inputs.ship_token(
            kaggle_inputs.Shipper(backend, on_event), owner, token))
        prepared.token_file = kaggle_inputs.token_kernel_path()
    prepared.bundle = options.bundle if options.bundle is not None else \
        job.image_count >= BUNDLE_THRESHOLD
    return prepared


def width(backend, job, asked: int | None) -> int:
    """As many kernels as asked (auto: as many as Kaggle runs at once when the job's
    generation is long enough to gain from it), never more than the images."""
    if asked is None:
        guess = estimate.estimate(job.document(), history(backend))
        minutes = guess.seconds_per_image * guess.images / estimate.GPUS / 60
        asked = GPU_SESSIONS if minutes >= AUTO_SHARD_MINUTES and guess.images > 1 else 1
    return min(asked, job.image_count)


def prepare(backend, job, run: Run, prepared: "KaggleJob", on_event: OnEvent) -> None:
    """One kernel's notebook and metadata: its share of the job (a shard: the kernel
    <slug>-<n>), the shared inputs and token, its session's time."""
    meta = dict(prepared.meta)
    owner, slug = split_kernel_id(meta["id"])
    if run.shard is not None:  # a shard: a kernel of its own, <slug>-<n>, making its share
        meta["id"] = f"{owner}/{slug[:50 - 4]}-{run.shard}"
        meta["title"] = f"{meta['title']} {run.shard}"
    doc = job_document(job, run.run_id)
    if run.only is not None:
        doc["only"] = run.only
    if prepared.shipment is not None:
        doc = kaggle_inputs.kernel_document(doc, prepared.shipment)
        kaggle_inputs.save(run.notebook_dir, prepared.shipment)
    if prepared.token_file:
        doc["hf_token_file"] = prepared.token_file
    if prepared.bundle:  # many images: a few tar downloads instead of thousands of GETs
        doc["bundle"] = True
    if meta.get("enable_internet"):  # packages older than the job needs: pip-installed there
        doc["install_missing"] = True
    # the engine stops cleanly before the session's end; 'resume' pushes the rest
    doc["session_seconds"] = min(backend.tunables.session_seconds,
                                 run.session_timeout_seconds or backend.tunables.session_seconds)
    if meta.get("enable_gpu"):
        run.estimate_hours = estimate.estimate(doc, history(backend)).hours
    backend.render(run, job, doc)
    meta["dataset_sources"] = list(dict.fromkeys(prepared.sources))
    write_metadata(run.notebook_dir, meta)
    run.kernel_ref = meta["id"]


def history(backend):
    if backend.estimates is None:
        backend.estimates = estimate.read_history(
            state_dir(), kaggle_api.endpoint(backend.tunables))
    return backend.estimates


def _ask_the_hub(backend, job, given: str | None, on_event: OnEvent) -> dict[str, dict]:
    """Ask the Hub about each Hub model id of the job (the model, the refiner, a model
    sweep's) before anything is pushed, with the user's token (``given``: --hf-token-env's,
    else HF_TOKEN; public models need none). An id the Hub does not know is refused with a
    sentence and a "did you mean"; the Hub's word on each model it knows is returned
    (gated, private). A token the Hub refuses is said, and the Hub asked again without it.
    No answer (offline, HF_HUB_OFFLINE=1, a server error): a note, and Kaggle finds out."""
    from ...job.models import did_you_mean

    ids = [job.model["id"], (job.refiner or {}).get("id"),
           *((p.model or {}).get("id") for p in job.prompts)]
    ids = [i for i in dict.fromkeys(ids) if i and HUB_ID.match(i)]
    if not ids or os.environ.get("HF_HUB_OFFLINE") == "1":
        return {}
    token = given or os.environ.get("HF_TOKEN", "").strip()
    base = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    known: dict[str, dict] = {}

    def ask(model: str, token: str | None):
        return requests.get(f"{base}/api/models/{model}",
                            timeout=min(HUB_TIMEOUT, backend.tunables.http_timeout),
                            headers={"Authorization": f"Bearer {token}"} if token else {})

    for model in ids:
        try:
            resp = ask(model, token)
            if resp.status_code == 401 and token and not _not_found(resp):
                on_event("the Hub did not accept your Hugging Face token (expired or mistyped?); "
                         f"asking about {model} without it")
                token = None
                resp = ask(model, None)
        except (requests.RequestException, ValueError) as exc:  # ValueError: a header's text
            on_event(f"could not ask the Hub about {model} ({type(exc).__name__}); Kaggle will "
                     "find out whether it exists")
            return known  # the Hub is not reachable from here: not once per id
        if resp.status_code == 404 or (resp.status_code == 401 and _not_found(resp)):
            seen = "your token was sent" if token else "a private one needs HF_TOKEN set here"
            raise SpecError(f"The Hub has no model {model}{did_you_mean(model)}; nothing was "
                            f"pushed ({seen}).")
        try:
            info = resp.json() if resp.status_code == 200 else None
        except ValueError:
            info = None
        if not isinstance(info, dict):
            on_event(f"the Hub gave no usable answer about {model} (HTTP {resp.status_code}); "
                     "Kaggle will find out whether it exists")
            continue
        known[model] = info
    return known


def _not_found(resp) -> bool:
    """The Hub's way of saying an id is unknown (or hidden from this token): 404, or 401 with
    its RepoNotFound code; any other 401 is about the token itself."""
    return resp.status_code == 404 or resp.headers.get("X-Error-Code") == "RepoNotFound"


def _preset_gated(job) -> bool:
    """The preset says its model is gated (FLUX.1-dev, SD 3.5): its word where the Hub's is
    not heard (offline, no answer)."""
    from ...job.models import PRESETS

    preset = PRESETS.get(job.model_name)
    return bool(preset and preset.gated and preset.id == job.model["id"])


def _token_wanted(job, info: dict | None, on_event: OnEvent) -> str | None:
    """HF_TOKEN is set and the Hub says the model is gated or private: that is the user's
    word too ("HF_TOKEN" then), said in a line. Anything else: no token is sent."""
    model = job.model["id"]
    if not os.environ.get("HF_TOKEN", "").strip():
        return None
    if info is None:
        if HUB_ID.match(model) and os.environ.get("HF_HUB_OFFLINE") != "1":
            on_event(f"could not ask the Hub whether {model} is gated; to send your token, add "
                     "--hf-token-env HF_TOKEN")
        return None
    if info.get("gated") or info.get("private"):
        on_event(f"{model} is {'gated' if info.get('gated') else 'private'} on the Hub and "
                 "HF_TOKEN is set: the token goes to your private dataset "
                 f"{kaggle_inputs.TOKEN_SLUG}")
        return "HF_TOKEN"
    return None


def _check_quota(backend, doc: dict, options, on_event: OnEvent, width: int) -> None:
    """Say what the job will cost in GPU hours (over ``width`` sessions: each starts and
    loads the model) against what is left; stop if it is more."""
    guess = estimate.estimate(doc, history(backend), width)
    try:
        left = backend.quota(on_event)["gpu_hours_left"]
    except (Unreachable, KaggleApiError) as exc:
        on_event(f"{guess.sentence(None)}; the quota could not be read ({exc})")
        return
    if left is None:
        on_event(f"{guess.sentence(None)}; this week's quota left is unknown, so the job is "
                 "pushed unchecked")
        return
    on_event(guess.sentence(left))
    if guess.hours > left and not options.force:
        raise OverQuota(f"This job needs about {guess.hours:.2f} GPU h{guess.shares_text()}, "
                        f"more than the {left:.2f} "
                        "h left of this week's Kaggle quota; nothing was pushed. Make it "
                        "smaller, wait for the quota to refresh ('imggenhub quota'), or add "
                        "--force.")
