"""The imggenhub engine: the code that runs beside the GPU, on Kaggle or here.

A small package of single-purpose modules (wire names, the plan, inputs, the manifest,
outputs, pipelines, the worker) that every rendered notebook writes out unchanged, one
readable cell per module, into a package ``imggenhub_engine`` beside it, and runs with ``python -m imggenhub_engine
--job JOB.json --out DIR``. It imports only the standard library at module level; torch,
diffusers, transformers, accelerate and Pillow are imported inside the functions that need
them, so the host side (planning, manifests) uses it without any of them installed.
"""

# The engine's public names, for the host and the tests.
from .inputs import (  # noqa: F401
    MAX_PIXELS, PictureTooLarge, open_picture, resolve_inputs, sha256_of, use_hf_token)
from .manifest import PartLog, merge, merge_manifest, write_json_atomic  # noqa: F401
from .outputs import Bundler, ImageWriter, a1111_parameters, save_png  # noqa: F401
from .pipelines import (  # noqa: F401
    apply_embeddings, apply_loras, derived_pipeline, enable_memory_savers, load_init_image,
    load_pipeline, load_refiner, set_scheduler)
from .scoring import DEFAULT_SCORE_MODEL, Scorer, build_tiny_clip  # noqa: F401
from .tiny import (  # noqa: F401
    build_tiny, build_tiny_kandinsky_pipeline, build_tiny_random_pipeline, build_tiny_sdxl_pipeline,
    build_tiny_sdxl_refiner)
from .memory import (  # noqa: F401
    FAMILIES, KAGGLE_T4X2, DoesNotFit, Machine, MemoryPlan, for_job, plan_memory)
from .plan import (  # noqa: F401
    Plan, SessionClock, batches, made, models_of, plan_images, ranges_of, slugify, split)
from .wire import (  # noqa: F401
    BUNDLES_DIR, ENGINE_PACKAGE, ENGINE_VERSION, ERROR_PREFIX, JOB_FILE, KAGGLE_INPUT, LOG_FILE, MANIFEST, OUTPUT_DIR,
    PARTS_DIR, PROGRESS_PREFIX, SCHEDULERS, SDXL_VAE_FP16_FIX, SEED_MODULUS, TINY_CLIP,
    TINY_FLUX, TINY_FLUX_FILL, TINY_KANDINSKY, TINY_SD3,
    TINY_RANDOM, TINY_SDXL, TINY_SDXL_REFINER, TINY_SHAPES, WEIGHTS, counted, images_text, log,
    progress_message)
from .worker import (  # noqa: F401
    count_processes, launch, main, notebook_main, run_training, run_worker)

MODULES = ("__init__", "wire", "plan", "memory", "versions", "inputs", "manifest", "outputs", "tiny", "pipelines",
           "scoring", "training", "worker", "__main__")
