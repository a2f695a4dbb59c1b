"""Zoo planning and per-sample settings without any model: model assignment, rank assignment, distributions,
and the one-line refusals of bad zoo entries before any model loads."""
from __future__ import annotations

from collections import Counter

import pytest
from builder_helpers import write_build_config

from fakeforge.builder.config import resolve_build
from fakeforge.builder.plan import ShardJob
from fakeforge.builder.zoo_plan import assign_jobs, assign_models, plan_zoo_shards
from fakeforge.config import ConfigError
from fakeforge.sources import Record
from generators import sampling

KEYS = [f"zoo-{i}-{i * 7}" for i in range(4000)]


def test_weighted_shares_follow_the_weights():
    owner = Counter(assign_models(KEYS, [("a", 1.0), ("b", 3.0)]))
    assert 0.22 < owner["a"] / len(KEYS) < 0.28
    assert assign_models(KEYS, [("a", 1.0), ("b", 3.0)]) == assign_models(KEYS, [("a", 1.0), ("b", 3.0)])


def test_adding_a_model_moves_only_the_samples_it_wins():
    five = [(f"m{i}", 1.0) for i in range(5)]
    before = assign_models(KEYS, five)
    after = assign_models(KEYS, five + [("new", 1.0)])
    moved = [(b, a) for b, a in zip(before, after) if b != a]
    assert all(a == "new" for _, a in moved)  # nobody else's samples reshuffle
    assert 0.13 < len(moved) / len(KEYS) < 0.20  # about 1/6 move, to the new model
    removed = assign_models(KEYS, five[1:])
    assert all(b == r for b, r in zip(before, removed) if b != "m0")  # removing one moves only its own


def test_zoo_shards_hold_one_model_each():
    records = [Record(image_id=str(i), image_path=None, caption_id=str(i), caption="c") for i in range(50)]
    jobs = plan_zoo_shards("zoo", records, 4, [("a", 1.0), ("b", 1.0), ("c", 2.0)])
    assert [j.index for j in jobs] == list(range(len(jobs)))
    assert sum(len(j.records) for j in jobs) == 50 and all(len(j.records) <= 4 for j in jobs)
    order = [j.model for j in jobs]
    assert order == sorted(order, key="abc".index)  # each model's shards are consecutive


def _zoo_jobs(n_models: int, per_model: int = 10, big: dict | None = None):
    jobs, idx = [], 0
    for m in range(n_models):
        n = (big or {}).get(m, per_model)
        for start in range(0, n, 10):
            rec = [Record(image_id=str(k), image_path=None, caption_id="0", caption="") for k in range(start, min(n, start + 10))]
            jobs.append((None, ShardJob("zoo", idx, rec, model=f"m{m:03d}")))
            idx += 1
    return jobs


def test_100_models_on_4_ranks_each_loaded_once_about_25_per_rank():
    jobs = _zoo_jobs(100, per_model=30)  # three shard jobs per model
    per_rank = [{job.model for _, job in assign_jobs(jobs, r, 4)} for r in range(4)]
    assert sum(len(m) for m in per_rank) == 100  # no model on two ranks
    assert set().union(*per_rank) == {f"m{m:03d}" for m in range(100)}
    assert all(24 <= len(m) <= 26 for m in per_rank)
    assert assign_jobs(jobs, 2, 4) == assign_jobs(jobs, 2, 4)


def test_a_large_model_is_split_over_ranks_small_ones_are_not():
    jobs = _zoo_jobs(6, big={0: 400})  # model 0 has 400 of 450 samples
    owners: dict[str, set] = {}
    for r in range(4):
        for _, job in assign_jobs(jobs, r, 4):
            owners.setdefault(job.model, set()).add(r)
    assert len(owners["m000"]) >= 3
    assert all(len(v) == 1 for k, v in owners.items() if k != "m000")


def test_plain_sets_keep_job_i_on_rank_i_mod_world():
    jobs = [(None, ShardJob("s", i, [])) for i in range(7)]
    assert [j.index for _, j in assign_jobs(jobs, 1, 3)] == [1, 4]


def test_draws_depend_on_the_key_only_and_respect_bounds():
    space = {"num_inference_steps": {"choice": [4, 25, 50]}, "guidance_scale": {"uniform": [3.0, 12.0]},
             "call_kwargs.max_sequence_length": {"int_uniform": [128, 130]}}
    draws = [sampling.draw(space, k) for k in KEYS[:600]]
    assert draws == [sampling.draw(space, k) for k in KEYS[:600]]
    assert {d["num_inference_steps"] for d in draws} == {4, 25, 50}
    assert {d["call_kwargs.max_sequence_length"] for d in draws} == {128, 129, 130}
    assert all(3.0 <= d["guidance_scale"] <= 12.0 for d in draws)
    for name in space:  # each setting's draw is its own: adding or removing another setting leaves it alone
        assert [sampling.draw({name: space[name]}, k)[name] for k in KEYS[:600]] == [d[name] for d in draws]
    order = sampling.grouped_order({"num_inference_steps": {"choice": [1, 2]}}, KEYS[:20])
    sigs = [sampling.draw({"num_inference_steps": {"choice": [1, 2]}}, KEYS[i])["num_inference_steps"]
            for i in order]
    assert sigs == sorted(sigs, key=[sigs[0], 3 - sigs[0]].index)  # equal settings next to each other


def _zoo_config(tmp_path, models, **gen):
    return write_build_config(tmp_path / "b.yaml", tmp_path / "out",
                              [{"name": "zoo", "generator": {"type": "zoo", "models": models, **gen}}])


@pytest.mark.parametrize("models, expected", [
    ([{"preset": "sd2", "num_inference_steps": {"choice": []}}], "sets.0.generator.models.0 (sd2).num_inference_steps"),
    ([{"preset": "sd2", "guidance_scale": {"uniform": [9.0, 3.0]}}], "low 9.0 > high 3.0"),
    ([{"preset": "sd2", "num_inference_steps": {"choice": [0, 2]}}], "the value 0 is not valid"),
    ([{"preset": "sd2", "scheduler": {"choice": ["DDIMScheduler", "NoSuchScheduler"]}}], "unknown scheduler 'NoSuchScheduler'"),
    (["sd2", "no_such_preset"], "unknown generator 'no_such_preset'"),
    (["sd2", "sd2"], "duplicate model name 'sd2'"),
    ([{"preset": "sd2", "weight": 0}], "weight = 0 must be a number > 0"),
    ([{"name": "x", "type": "text2image", "model_id": "m", "pipeline": "NoSuchPipeline"}], "NoSuchPipeline"),
])
def test_bad_zoo_entries_are_one_line_before_any_model_loads(tmp_path, models, expected):
    with pytest.raises(ConfigError) as err:
        resolve_build(_zoo_config(tmp_path, models), tiny=True)
    lines = err.value.problems
    assert len(lines) == 1 and expected in lines[0], lines
    assert "sets.0.generator.models." in lines[0], lines  # names the entry


def test_models_file_csv_and_the_set_hash_covers_every_model(tmp_path):
    (tmp_path / "models.csv").write_text("name,preset,weight\na,sd2,1\nb,sd20,2.5\n")
    one = resolve_build(_zoo_config(tmp_path, [], models_file=str(tmp_path / "models.csv")), tiny=True)
    cfg = one.sets[0].generator_cfg
    assert [(m["name"], m["weight"]) for m in cfg.models] == [("a", 1.0), ("b", 2.5)]
    (tmp_path / "models.csv").write_text("name,preset,weight\na,sd2,1\nb,sd20,3\n")
    two = resolve_build(_zoo_config(tmp_path, [], models_file=str(tmp_path / "models.csv")), tiny=True)
    assert one.sets[0].set_hash != two.sets[0].set_hash  # a changed models file is a changed set
    budget = resolve_build(_zoo_config(tmp_path, [], models_file=str(tmp_path / "models.csv"), failure_budget=2),
                           tiny=True)
    assert budget.sets[0].set_hash == two.sets[0].set_hash  # the budget decides acceptance, not content


def test_a_plain_set_with_fixed_settings_keeps_its_hash(tmp_path):
    path = write_build_config(tmp_path / "b.yaml", tmp_path / "out", [{"name": "sd2", "generator": "sd2"}])
    resolved = resolve_build(path, tiny=True)
    assert "sample" not in resolved.sets[0].settings["generator"]
