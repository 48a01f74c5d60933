"""The job spec: prompts.json forms, flags, overrides, hashing, and one-sentence errors."""

from __future__ import annotations

import json

import pytest

from imggenhub.errors import SpecError
from imggenhub.job.spec import Settings, load_prompts, parse_settings, prompts_from_flags
from imggenhub.job.resolve import build_job, job_from_inputs
from imggenhub.job.sweeps import parse_sweeps

from .adversarial import corpus
from .conftest import write_json


def test_list_of_strings_and_objects_with_overrides(tmp_path):
    path = write_json(tmp_path / "p.json", [
        "plain",
        {"prompt": "fox", "negative_prompt": "blur", "seed": 9, "num_images": 3, "width": 64,
         "height": 32, "steps": 2, "guidance": 1},
    ])
    settings = parse_settings(model="tiny-random", steps=6, guidance=4.5, negative_prompt="ugly",
                              num_images=2, seed=100)
    job = build_job(settings, load_prompts(path))
    plain, fox = job.prompts
    assert (plain.steps, plain.guidance, plain.negative_prompt, plain.num_images) == (6, 4.5, "ugly", 2)
    assert (plain.width, plain.height) == (64, 64)  # the tiny-random preset's size
    assert (fox.steps, fox.guidance, fox.negative_prompt, fox.num_images) == (2, 1.0, "blur", 3)
    assert (fox.width, fox.height, fox.seed) == (64, 32, 9)
    assert job.image_count == 5 and job.seed == 100


def test_preset_defaults_apply_and_flags_override():
    job = build_job(parse_settings(model="sdxl-turbo"), load_prompts_from(["x"]))
    assert (job.prompts[0].steps, job.prompts[0].guidance, job.prompts[0].width) == (1, 0.0, 512)
    job = build_job(parse_settings(model="stabilityai/stable-diffusion-xl-base-1.0", steps=40),
                    load_prompts_from(["x"]))
    assert job.model_name == "sdxl" and job.prompts[0].steps == 40 and job.prompts[0].width == 1024


def test_unknown_hub_id_gets_autopipeline_and_generic_defaults():
    job = build_job(parse_settings(model="someone/some-model_v2.1"), load_prompts_from(["x"]))
    assert job.model["pipeline"] == "auto" and job.model["id"] == "someone/some-model_v2.1"
    assert job.prompts[0].width is None and job.prompts[0].steps == 30


def load_prompts_from(items):
    from imggenhub.job.spec import prompts_from_flags

    return prompts_from_flags(items)


def test_prompt_flag_replaces_the_file_entirely(tmp_path):
    bad_file = tmp_path / "prompts.json"
    bad_file.write_text("{ not json")
    job = job_from_inputs(Settings(model="tiny-random", seed=1), ["only this"], bad_file)
    assert [p.prompt for p in job.prompts] == ["only this"]


def test_same_spec_same_hash_and_any_change_changes_it():
    a = build_job(parse_settings(model="tiny-random", seed=5), load_prompts_from(["a", "b"]))
    b = build_job(parse_settings(model="tiny-random", seed=5), load_prompts_from(["a", "b"]))
    c = build_job(parse_settings(model="tiny-random", seed=6), load_prompts_from(["a", "b"]))
    d = build_job(parse_settings(model="tiny-random", seed=5), load_prompts_from(["a", "b "]))
    assert a.job_id == b.job_id
    assert len({a.job_id, c.job_id, d.job_id}) == 3


def test_seed_is_random_when_not_given_and_recorded():
    seeds = {build_job(parse_settings(model="tiny-random"), load_prompts_from(["a"])).seed
             for _ in range(5)}
    assert len(seeds) > 1


def test_long_and_unicode_prompts_are_kept_exactly(tmp_path):
    prompts = corpus("/nonexistent/mark")
    job = build_job(parse_settings(model="tiny-random", seed=1),
                    load_prompts(write_json(tmp_path / "p.json", prompts)))
    assert [p.prompt for p in job.prompts] == prompts


BAD_FILES = [
    ("{ not json", "is not valid JSON"),
    ("[]", "non-empty JSON list"),
    ('{"prompt": "x"}', "non-empty JSON list"),
    ('["   "]', "the prompt is empty"),
    ('[""]', "the prompt is empty"),
    ("[1]", "must be a string or an object"),
    ('[{"negative_prompt": "x"}]', "'prompt' is missing"),
    ('[{"prompt": "x", "steps": "20"}]', "steps"),
    ('[{"prompt": "x", "steps": true}]', "steps"),
    ('[{"prompt": "x", "stpes": 20}]', "unknown field 'stpes'"),
    ('[{"prompt": "x", "steps": -3}]', "greater than or equal to 1"),
    ('[{"prompt": "x", "steps": 100000}]', "less than or equal to 500"),
    ('[{"prompt": "x", "width": 100}]', "not a multiple of 8"),
    ('[{"prompt": "x", "width": 99992, "height": 64}]', "outside"),
    ('[{"prompt": "x", "guidance": -1}]', "guidance"),
    ('[{"prompt": "x", "seed": -1}]', "seed"),
    ('[{"prompt": "x", "num_images": 0}]', "num_images"),
    ('["\\ud800 lone surrogate"]', "unpaired surrogate"),
]


@pytest.mark.parametrize("text,expected", BAD_FILES)
def test_bad_prompt_files_give_one_sentence(tmp_path, text, expected):
    path = tmp_path / "prompts.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SpecError) as info:
        build_job(parse_settings(model="tiny-random"), load_prompts(path))
    message = str(info.value)
    assert expected in message
    assert "\n" not in message  # one sentence, whatever it names
    assert str(path) in message or "prompt 1" in message  # the file, or the prompt in it


def test_missing_file_names_the_fix(tmp_path):
    with pytest.raises(SpecError, match="not found; create it, pass --prompts-file PATH, or give --prompt"):
        load_prompts(tmp_path / "nope.json")


@pytest.mark.parametrize("flags,expected", [
    ({"steps": 0}, "--steps"),
    ({"steps": 501}, "--steps"),
    ({"scheduler": "warp-drive"}, "unknown scheduler 'warp-drive'; choose one of dpm++"),
    ({"precision": "fp8"}, "--precision"),
    ({"batch_size": 0}, "--batch-size"),
    ({"seed": 2**32}, "--seed"),
    ({"model": "not a model"}, "neither a preset"),
])
def test_bad_flags_name_the_flag(flags, expected):
    with pytest.raises(SpecError) as info:
        build_job(parse_settings(**{"model": "tiny-random", **flags}), load_prompts_from(["x"]))
    assert expected in str(info.value)


def test_job_document_round_trips_as_json():
    job = build_job(parse_settings(model="tiny-random", seed=3), load_prompts_from(["x"]))
    doc = job.document()
    assert json.loads(json.dumps(doc)) == doc and doc["job_id"] == job.job_id


def test_the_image_parameters_are_spelled_once_for_host_and_engine():
    """The schema's image parameters are the engine's (wire.IMAGE_PARAMS), and the resolved
    prompt, the prompt item and the flags all take them from the one base."""
    from imggenhub.engine import plan_images
    from imggenhub.engine.wire import IMAGE_PARAMS, SWEEP_PARAMS
    from imggenhub.job.spec import ImageParams, PromptItem, ResolvedPrompt, Settings

    assert tuple(ImageParams.model_fields) == IMAGE_PARAMS
    for model in (PromptItem, Settings, ResolvedPrompt):
        assert set(IMAGE_PARAMS) <= set(model.model_fields)
    assert set(SWEEP_PARAMS) <= set(ResolvedPrompt.model_fields)
    job = build_job(parse_settings(model="tiny-random", seed=3, num_images=2),
                    prompts_from_flags(["a fox"]))
    [task, _] = plan_images(job.document())
    assert set(IMAGE_PARAMS + SWEEP_PARAMS) <= set(task)


@pytest.mark.parametrize("sweep", ["steps=0,2", "guidance=99,2", "size=0x64", "strength=1.5",
                                   "refiner-start=1.0"])
def test_a_swept_value_out_of_its_flags_range_is_one_sentence(sweep):
    with pytest.raises(SpecError, match=r"--sweep .* is out of range"):
        parse_sweeps([sweep])
