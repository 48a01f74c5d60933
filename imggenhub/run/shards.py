"""Shards: one run's images split over several sessions of its backend (Kaggle: kernels
``<slug>-1``, ``<slug>-2``, ...), each a run record of its own kept inside the run's folder,
with its share of the plan. The driver advances them as a group (pushed together, followed
together, downloaded into the run's one folder, where their manifests join into one); the
run's own state sums them up (``lifecycle.summary``). A failed shard is pushed again alone
by ``resume`` (the images not yet here)."""

from __future__ import annotations

from ..engine import images_text
from . import runs
from .runs import Run


def share(job, shards: int) -> list[list[list[int]]]:
    """Each shard's image indices, as ranges: contiguous, in the job's order."""
    from ..engine import Plan

    plan = Plan.of(job.document())
    return [plan.split(k, shards).ranges() for k in range(shards)]


def start(job, parent: Run, impl, prepared, shards: int, on_event) -> None:
    """Make the shards' records and notebooks (each prepared as a run is) under ``parent``."""
    made = []
    for k, ranges in enumerate(share(job, shards), start=1):
        child = Run(run_id=f"{parent.run_id}/shard-{k}", backend=parent.backend,
                    job_id=job.job_id, image_count=sum(b - a for a, b in ranges),
                    out_dir=parent.out_dir, session_timeout_seconds=parent.session_timeout_seconds,
                    shard=k, only=ranges)
        child.notebook_dir.mkdir(parents=True, exist_ok=True)  # prepare writes its notebook
        impl.prepare(job, child, prepared,
                     lambda message, k=k: on_event(f"[shard {k}/{shards}] {message}"))
        made.append(runs.save(child))
        parent.shards.append(child.run_id)
    hours = [c.estimate_hours for c in made if c.estimate_hours is not None]
    parent.estimate_hours = round(sum(hours), 3) if hours else None
    parent.kernel_ref = None
    on_event(f"{shards} shards: " + ", ".join(f"{c.kernel_ref} ({images_text(c.image_count)})"
                                              for c in made))
