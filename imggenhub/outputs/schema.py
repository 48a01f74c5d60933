"""The manifest as the host relies on it. A manifest that comes from a server is data: each
field the host reads (to verify and join the files, to reckon what is owed, to draw the
gallery, the contact sheets and the sweep grids) is checked for its type and bounds here,
strictly (a text where a number goes is refused, never coerced), before any of them reads
it; the counts are bounded so that no loop over them runs away. Other fields are kept as
they are."""

from __future__ import annotations

import math
from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from ..engine.wire import IMAGE_PARAMS

MAX_ITEMS = 10_000  # images, bundles, owed items: a job's most images (job.spec.MAX_IMAGES)
MAX_PROCESSES = 1_000  # engine processes over every session and shard of a run
MAX_AXES = 8  # sweep axes: as many as there are sweepable parameters (job.axes.SWEEPABLE)
MAX_CELLS = 100  # a sweep's cells a prompt (job.sweeps.MAX_SWEEP_CELLS)
MAX_NAME = 64  # characters of a sweep axis name

STRICT = ConfigDict(extra="allow", strict=True)
Scalar = Union[str, int, float, bool, None]  # a value shown or compared, never a container
Index = Annotated[int, Field(ge=0, lt=MAX_ITEMS)]


class Named(BaseModel):
    """A LoRA, an embedding or a refiner as a record names it (the gallery's command)."""

    model_config = STRICT

    name: Scalar = None
    file: Scalar = None
    token: Scalar = None
    model: Scalar = None
    scale: Scalar = None
    start: Scalar = None


class _Additions(BaseModel):
    """What an image and a job alike may carry on top of the base model."""

    model_config = STRICT

    loras: list[Named] | None = Field(None, max_length=MAX_ITEMS)
    embeddings: list[Named] | None = Field(None, max_length=MAX_ITEMS)
    refiner: Named | None = None


class Companion(BaseModel):
    """A file that goes with an item: a trained LoRA's copy in kohya's keys."""

    model_config = STRICT

    file: str = Field(max_length=255)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class _Image(_Additions):
    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)
    index: Index | None = None
    prompt: str | None = None
    model: Scalar = None
    device: Scalar = None
    bundle: Scalar = None
    score: float | None = None
    seconds: float | None = None
    cell: dict[str, Scalar] | None = Field(None, max_length=MAX_AXES)
    sweep_of: Index | None = None
    kohya: Companion | None = None


# One manifest entry: the fields above, and each image parameter (engine.wire.IMAGE_PARAMS,
# the one list of them) as a value shown or compared; other fields are kept as they are.
ImageRecord = create_model("ImageRecord", __base__=_Image,
                           **{name: (Scalar, None) for name in IMAGE_PARAMS})


class Process(BaseModel):
    model_config = STRICT

    session: int | None = None
    seconds: float | None = None
    model_load_seconds: float | None = None
    run_id: str | None = None


class Manifest(_Additions):

    job_id: str | None = None
    run_id: str | None = None
    images: list[ImageRecord] = Field(max_length=MAX_ITEMS)
    bundles: list[dict[str, Any]] | None = Field(None, max_length=MAX_ITEMS)
    processes: list[Process] | None = Field(None, max_length=MAX_PROCESSES)
    planned_images: int | None = Field(None, ge=0, le=MAX_ITEMS)
    remaining: list[list[int]] | None = Field(None, max_length=MAX_ITEMS)
    sweep: list[list[Any]] | None = Field(None, max_length=MAX_AXES)
    model: Scalar = None
    backend: Scalar = None
    scheduler_flag: Scalar = None
    score_model: Scalar = None
    score_mean: float | None = None
    complete: bool | None = None

    @field_validator("remaining")
    @classmethod
    def _ranges(cls, ranges):
        """[start, end) pairs within a job, owing at most a job's items in all."""
        if ranges is None:
            return ranges
        if any(len(r) != 2 or not 0 <= r[0] <= r[1] <= MAX_ITEMS for r in ranges):
            raise ValueError(f"each range must be [start, end] with 0 <= start <= end <= "
                             f"{MAX_ITEMS}")
        if sum(b - a for a, b in ranges) > MAX_ITEMS:
            raise ValueError(f"the ranges owe more than the {MAX_ITEMS} items a job may hold")
        return ranges

    @field_validator("sweep")
    @classmethod
    def _axes(cls, axes):
        """[[name, [values...]], ...]: names are short texts, values are scalars, and the
        cells a prompt (the product of the value counts) are at most MAX_CELLS."""
        if axes is None:
            return axes
        for axis in axes:
            if len(axis) != 2 or not isinstance(axis[0], str) or not 0 < len(axis[0]) <= MAX_NAME \
                    or not isinstance(axis[1], list) or not axis[1]:
                raise ValueError(f"each axis must be [name, [values]], its name a text of 1 to "
                                 f"{MAX_NAME} characters")
            if any(isinstance(v, (list, dict)) for v in axis[1]):
                raise ValueError(f"the values of the axis {axis[0][:MAX_NAME]!r} must be texts or "
                                 "numbers")
        cells = math.prod(len(values) for _, values in axes)
        if cells > MAX_CELLS:
            raise ValueError(f"the sweep makes {cells} cells a prompt, more than {MAX_CELLS}")
        return axes

    @model_validator(mode="after")
    def _grids(self):
        """The sweep's grids hold at most a job's images: the prompts swept times the cells
        (a tile each) stay within MAX_ITEMS."""
        if self.sweep:
            prompts = len({r.sweep_of for r in self.images if r.sweep_of is not None})
            cells = math.prod(len(values) for _, values in self.sweep)
            if prompts * cells > MAX_ITEMS:
                raise ValueError(f"its sweep grids would hold {prompts * cells} tiles, more than "
                                 f"the {MAX_ITEMS} images a job may hold")
        return self


BRANCHES = {"str", "int", "float", "bool", "none", "list[...]", "dict[str,...]"}


def first_problem(exc) -> str:
    """A pydantic ValidationError's first complaint, with where it is ('images.3.score')."""
    error = exc.errors(include_url=False)[0]
    # a union's error names the branch it tried last ('score.float'): not a place
    where = ".".join(str(p) for p in error.get("loc", ()) if p not in BRANCHES)
    message = error.get("msg", "invalid").removeprefix("Value error, ")
    return f"{where}: {message}" if where else message
