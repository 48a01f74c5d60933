"""The plan and the manifest's one merge: shares (shards x sessions x resume) are subsets of
the plan, what is owed is the share minus a manifest, and merging parts, sessions and shards
in any order gives the same manifest."""

from __future__ import annotations

import itertools
import json

import pytest

from imggenhub.outputs import artifacts
from imggenhub.engine import Plan, merge, merge_manifest, plan_images
from imggenhub.engine.manifest import PartLog


def _job(counts, only=None):
    doc = {"seed": 7, "model": {"id": "tiny-random"},
           "prompts": [{"prompt": f"p{i}", "num_images": n, "steps": 1, "guidance": 1.0}
                       for i, n in enumerate(counts)]}
    if only is not None:
        doc["only"] = only
    return doc


def _records(indices):
    return [{"index": i, "file": f"{i + 1:04d}-x.png", "sha256": "0" * 64, "bytes": 1}
            for i in indices]


@pytest.mark.parametrize("total,shards,processes", [(10, 2, 2), (7, 3, 2), (5, 2, 3), (1, 1, 2)])
def test_shards_times_processes_cover_the_plan_once(total, shards, processes):
    plan = Plan.of(_job([total]))
    cover = [i for k in range(shards) for r in range(processes)
             for i in Plan.of(_job([total], plan.split(k, shards).ranges()))
             .split(r, processes).indices]
    assert sorted(cover) == list(range(total))  # each image once, by exactly one process
    assert all(plan.split(k, shards).indices == tuple(sorted(plan.split(k, shards).indices))
               for k in range(shards))  # contiguous, in the job's order


def test_owed_is_the_share_minus_the_manifest_through_sessions():
    """A shard of 6 of 10 images, a first session that makes 2 of them, a second (its rest)
    that makes 3 more, a resume that makes the last: each session's share is the one before
    minus what is here, and the last owes nothing."""
    plan = Plan.of(_job([4, 6]))
    shard = Plan.of(_job([4, 6], plan.split(1, 2).ranges()))
    assert shard.indices == (5, 6, 7, 8, 9) and shard.total == 10
    here = {"images": _records([5, 8])}
    second = shard.minus(here)
    assert second.indices == (6, 7, 9) and second.ranges() == [[6, 8], [9, 10]]
    here["images"] += _records([6, 7])
    third = Plan.of(_job([4, 6], second.ranges())).minus(here)
    assert third.indices == (9,)
    assert not third.minus({"images": _records([9])})
    assert len(shard.minus(None)) == 5 and shard.minus([5, 6, 7, 8, 9]).indices == ()


def test_tasks_keep_the_whole_plans_indices_seeds_and_files():
    job = _job([3, 3])
    whole = {t["index"]: t for t in plan_images(job)}
    rest = Plan.of(job).minus({"images": _records([0, 1, 4])})
    assert [t["index"] for t in rest.tasks(job)] == [2, 3, 5]
    assert all(t == whole[t["index"]] for t in rest.tasks(job))


def test_a_manifest_without_indices_owes_its_whole_share():
    """A server's manifest may lack indices: its records name none, so nothing counts as made."""
    plan = Plan.whole(3)
    assert plan.minus({"images": [{"file": "a.png"}, {"index": "1"}]}).indices == (0, 1, 2)


def test_merge_is_one_for_parts_sessions_and_shards_in_any_order():
    """Three pieces (two shards' sessions and an overlap) merged in every order: the same
    images, each once by index, the processes each once, bundles by file, and what is owed."""
    a = {"job_id": "j", "run_id": "r", "planned_images": 6, "images": _records([0, 1]),
         "processes": [{"rank": 0, "session": 1}], "bundles": [{"file": "bundles/a.tar"}]}
    b = {"job_id": "j", "run_id": "r", "planned_images": 6, "images": _records([1, 4]),
         "processes": [{"rank": 0, "session": 2}]}
    c = {"job_id": "j", "run_id": "r", "planned_images": 6, "images": _records([5]),
         "processes": [{"rank": 0, "session": 1}], "bundles": [{"file": "bundles/c.tar"}]}
    results = []
    for order in itertools.permutations([a, b, c]):
        merged = None
        for piece in order:
            merged = artifacts.combine(merged, piece)
        results.append(merged)
    first = results[0]
    assert [r["index"] for r in first["images"]] == [0, 1, 4, 5]
    assert first["remaining"] == [[2, 4]] and first["complete"] is False
    assert [b["file"] for b in first["bundles"]] == ["bundles/a.tar", "bundles/c.tar"]
    for other in results[1:]:
        assert other["images"] == first["images"] and other["remaining"] == first["remaining"]
        assert sorted(map(json.dumps, other["processes"])) == sorted(map(json.dumps,
                                                                          first["processes"]))
    done = artifacts.combine(first, {**b, "images": _records([2, 3])})
    assert done["complete"] is True and done["remaining"] == []


def test_engine_parts_merge_with_an_old_manifest_and_say_what_the_share_owes(tmp_path):
    """The engine's parts (two processes, one torn last line) join a manifest an earlier
    merge wrote; with the job, the share's remaining is the share minus the images."""
    job = _job([6], only=[[2, 6]])
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"job_id": "j", "run_id": "r", "images": _records([2]), "processes": [{"rank": 0}]}))
    (tmp_path / ".parts").mkdir()
    for rank, indices in ((0, [3]), (1, [5])):
        part = PartLog(tmp_path / ".parts" / f"rank-0{rank}.jsonl", {"job_id": "j",
                       "run_id": "r", "model": "m"}, {"rank": rank, "session": 2})
        for record in _records(indices):
            part.image(record)
    with open(tmp_path / ".parts" / "rank-01.jsonl", "a") as fh:
        fh.write('{"image": {"index": 4, "fi')  # a crash mid-line: skipped
    manifest = merge_manifest(tmp_path, job)
    assert [r["index"] for r in manifest["images"]] == [2, 3, 5]
    assert manifest["planned_images"] == 6 and manifest["remaining"] == [[4, 5]]
    assert manifest["complete"] is False and manifest["model"] == "m"
    assert len(manifest["processes"]) == 3 and not (tmp_path / ".parts").exists()
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest


def test_a_manifest_written_before_joins_a_new_session(tmp_path):
    """A folder's manifest as the engine wrote it before the plan and the one merge (its
    remaining counted the session's share, no bundles key): read, joined with the next
    session's, and what is owed counted over the whole job."""
    old = {"engine_version": 3, "job_id": "j", "run_id": "r", "model": "tiny-random",
           "processes_total": 1, "loras": [], "embeddings": [], "scheduler_flag": None,
           "processes": [{"rank": 0, "session": 1}], "images": _records([0, 1]),
           "planned_images": 5, "remaining": [[2, 3]], "complete": False}
    artifacts.write_manifest(tmp_path, old)
    here = artifacts.read_manifest(tmp_path)
    assert here == old
    new = {**old, "processes": [{"rank": 0, "session": 2}], "images": _records([2, 3]),
           "remaining": []}
    joined = artifacts.combine(here, new)
    assert [r["index"] for r in joined["images"]] == [0, 1, 2, 3]
    assert joined["remaining"] == [[4, 5]] and joined["complete"] is False
    assert len(joined["processes"]) == 2 and "bundles" not in joined
    assert Plan.whole(5).minus(joined).indices == (4,)
