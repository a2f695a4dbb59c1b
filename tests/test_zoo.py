"""Zoo sets on tiny twins: five models in one set (one with per-sample settings, one that cannot load, one
that runs out of memory above batch 1), model failures recorded with their class, the failure budget,
--retry-failed redoing only the failed model, samples independent of the batch size (pixels up to kernel
rounding) and bytes independent of the rank count."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zoo_helpers
from builder_helpers import set_samples, write_build_config
from PIL import Image

from fakeforge.builder.config import resolve_build
from fakeforge.builder.runner import BuildFailed, build
from fakeforge.cli import main as cli_main
from fakeforge.shards.manifest import collect_stats
from fakeforge.shards.verify import verify_dataset as verify

MIXED = {"name": "sd14_mixed", "preset": "sd14", "num_inference_steps": {"choice": [1, 2]},
         "scheduler": {"choice": ["DDIMScheduler", "EulerDiscreteScheduler"]}, "guidance_scale": {"choice": [5.0, 7.5]}}


def zoo_models(broken: Path) -> list:
    return ["sd2", MIXED, {"preset": "sd20", "weight": 2},
            {"name": "oom", "preset": "sd2", "type": "oom_text2image"},
            {"name": "broken", "type": "text2image", "model_id": str(broken), "pipeline": "StableDiffusionPipeline"}]


def zoo_config(path: Path, out: Path, models: list, limit: int = 16, **gen) -> Path:
    return write_build_config(path, out, [{"name": "zoo", "generator": {"type": "zoo", "models": models, **gen}}],
                              source={"kind": "demo", "limit": limit}, image={"format": "png", "size": 32,
                                                                                "resize": "center_crop"})


def samples(out: Path) -> dict[str, dict]:
    """key -> {png bytes, json} of every sample under `out/zoo`."""
    return set_samples(out / "zoo")


@pytest.fixture(scope="module")
def zoo_build(tmp_path_factory, tiny_dir):
    root = tmp_path_factory.mktemp("zoo")
    cfg = zoo_config(root / "zoo.yaml", root / "out", zoo_models(root / "missing_model"), failure_budget=1)
    zoo_helpers.OomText2Image.calls.clear()
    summary = build(resolve_build(cfg, tiny=True, tiny_root=tiny_dir), progress=False)
    return root, cfg, summary, list(zoo_helpers.OomText2Image.calls)


def test_zoo_set_builds_verifies_and_records_each_model(zoo_build):
    root, _cfg, summary, _calls = zoo_build
    assert verify(root / "out")["samples"] == summary["manifest"]["zoo"]["count"]
    models = summary["models"]["zoo"]
    assert set(models) == {"sd2", "sd14_mixed", "sd20", "oom", "broken"}
    assert all(m["written"] == m["planned"] > 0 for n, m in models.items() if n != "broken")
    made = samples(root / "out")
    metas = [json.loads(s["json"]) for s in made.values()]
    assert {m["model"] for m in metas} == {"sd2", "sd14_mixed", "sd20", "oom"}
    for meta in metas:
        assert meta["model_id"].startswith("tiny-twin:") and len(meta["model_hash"]) == 16
        assert meta["settings"]["model_id"] == meta["model_id"]
    mixed = [m for m in metas if m["model"] == "sd14_mixed"]
    assert mixed and all(set(m["sampled"]) == {"num_inference_steps", "scheduler", "guidance_scale"} for m in mixed)
    assert all(m["sampled"]["num_inference_steps"] in (1, 2) for m in mixed)
    assert not any("sampled" in m for m in metas if m["model"] != "sd14_mixed")


def test_broken_model_is_one_recorded_failure_with_its_class(zoo_build):
    root, _cfg, summary, _calls = zoo_build
    failure = summary["models"]["zoo"]["broken"]["failure"]
    assert failure["class"] == "missing" and "model_index.json" in failure["reason"] and failure["traceback"]
    shards = [st for st in collect_stats(root / "out", "zoo") if st.get("model") == "broken"]
    assert shards and all(st["written"] == 0 and st["model_failure"]["class"] == "missing" for st in shards)
    assert summary["manifest"]["zoo"]["failed"] == 0  # a model failure is not counted as failed samples


def test_card_zoo_report_and_stats_show_per_model_counts(zoo_build, capsys):
    root, _cfg, summary, _calls = zoo_build
    card = (root / "out" / "README.md").read_text()
    assert "### Models of set zoo" in card and "| broken | 0 | 0 | missing: ConfigError" in card
    sd2 = summary["models"]["zoo"]["sd2"]["written"]
    assert f"| sd2 | {sd2} | 0 | - |" in card
    capsys.readouterr()
    assert cli_main(["zoo", "report", str(root / "out")]) == 0
    out = capsys.readouterr().out
    assert "set zoo: 5 models" in out and "FAILED [missing]" in out
    assert cli_main(["stats", "--sets", str(root / "out"), "--max-images", "4"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["models"]["zoo"]["sd2"]["written"] == sd2 and stats["models"]["zoo"]["broken"]["failure"]


def test_out_of_memory_halves_that_models_batch_and_retries(zoo_build):
    _root, _cfg, summary, calls = zoo_build
    halving = [calls[0]]
    while halving[-1] > 1:
        halving.append(halving[-1] // 2)
    assert calls[0] >= 2 and calls[:len(halving)] == halving  # e.g. 4 -> OOM -> 2 -> OOM -> 1, then it works
    assert set(calls[len(halving):]) <= {1} and summary["models"]["zoo"]["oom"]["failure"] is None
    assert summary["models"]["zoo"]["oom"]["written"] >= 2


def test_over_budget_is_one_line_then_retry_failed_redoes_only_that_model(zoo_build, tiny_dir):
    root, cfg, _summary, _calls = zoo_build
    with pytest.raises(BuildFailed) as err:  # same set, no budget for a failed model
        build(resolve_build(cfg, ["sets.0.generator.failure_budget=0"], tiny=True, tiny_root=tiny_dir), progress=False)
    lines = str(err.value).splitlines()
    assert len(lines) == 1 and "1 of 5 models failed" in lines[0] and "broken [missing]" in lines[0]
    before = {p.name: p.stat().st_mtime_ns for p in (root / "out" / "zoo").glob("*.tar")}
    shutil.copytree(Path(tiny_dir) / "sd2", root / "missing_model")  # the model is there now
    summary = build(resolve_build(cfg, tiny=True, tiny_root=tiny_dir), progress=False, retry_failed=True)
    broken_shards = [st for st in collect_stats(root / "out", "zoo") if st.get("model") == "broken"]
    assert summary["shards_redone"] == len(broken_shards) and summary["shards_skipped"] == summary["shards_mine"] - len(
        broken_shards)
    after = {p.name: p.stat().st_mtime_ns for p in (root / "out" / "zoo").glob("*.tar")}
    assert {n: t for n, t in after.items() if n in before} == before  # every other model's tars untouched
    assert summary["models"]["zoo"]["broken"]["failure"] is None and summary["models"]["zoo"]["broken"]["written"] > 0
    assert verify(root / "out")["samples"] == 16


def test_each_model_loads_once_and_a_nan_model_is_one_failure(tiny_dir):
    from fakeforge.twins import ensure_tiny
    from generators import generator_config
    from generators.base import GenRequest
    from generators.zoo import ModelFailure

    ensure_tiny("sd2", tiny_dir)
    cls, cfg = generator_config({"type": "zoo", "models": ["sd2", {"name": "nan", "preset": "sd2",
                                                                   "type": "nan_text2image"}]}, tiny=True,
                                tiny_root=tiny_dir)
    zoo = cls(cfg)
    reqs = [GenRequest(key=f"zoo-{i}-0", prompt="a cat", seed=i) for i in range(3)]
    assert zoo.activate("sd2") is None and zoo.activate("sd2") is None
    assert all(r.image is not None and r.extra["model"] == "sd2" for r in zoo.generate_safe(reqs))
    assert zoo.loads == ["sd2"]  # activating the current model again does not reload it
    assert zoo.activate("nan") is None
    with pytest.raises(ModelFailure) as err:
        zoo.generate_safe(reqs)
    assert err.value.info["class"] == "NaN" and "NaN" in err.value.info["reason"]
    zoo.fail("nan", err.value, "generate")
    assert zoo.activate("nan")["class"] == "NaN" and zoo.loads == ["sd2", "nan"]  # not retried in this run


def test_every_model_over_budget_fails_with_one_line(tmp_path, tiny_dir):
    cfg = zoo_config(tmp_path / "z.yaml", tmp_path / "out", ["sd2", {"name": "broken", "type": "text2image",
                     "model_id": str(tmp_path / "nope"), "pipeline": "StableDiffusionPipeline"}], limit=4)
    with pytest.raises(BuildFailed) as err:
        build(resolve_build(cfg, tiny=True, tiny_root=tiny_dir), progress=False)
    assert "over failure_budget (0 allowed)" in str(err.value) and len(str(err.value).splitlines()) == 1


def test_samples_same_with_batch_1_or_4_and_bytes_same_with_1_or_2_ranks(tmp_path, tiny_dir):
    import torch

    before = torch.get_num_threads()  # image bytes depend on the thread count: the session's fixed two threads
    torch.set_num_threads(2)  # (module fixtures elsewhere drop to one thread for speed)
    try:
        _bytes_same(tmp_path, tiny_dir)
    finally:
        torch.set_num_threads(before)


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


def _bytes_same(tmp_path, tiny_dir):
    models = lambda bs: [{"preset": "sd2", "batch_size": bs}, {**MIXED, "batch_size": bs},  # noqa: E731
                         {"preset": "sd20", "batch_size": bs}]
    runs = {}
    for name, bs, ranks in (("b4", 4, 1), ("b1", 1, 1), ("r2", 4, 2)):
        cfg = zoo_config(tmp_path / f"{name}.yaml", tmp_path / name, models(bs), limit=12)
        resolved = resolve_build(cfg, tiny=True, tiny_root=tiny_dir)
        if ranks == 1:
            build(resolved, progress=False)
        else:
            for r in range(ranks):
                build(resolved, progress=False, rank=r, world_size=ranks)
            final = build(resolved, progress=False)
            assert final["shards_skipped"] == final["shards_total"]  # the plain run only writes the manifest
        runs[name] = samples(tmp_path / name)
    assert len(runs["b4"]) == 12
    assert runs["r2"] == runs["b4"]  # same batch size on 1 or 2 ranks: image and metadata bytes
    # Batch 1 vs 4: the same keys, seeds, drawn settings and metadata; the pixels are the same up to the
    # rounding of differently shaped batched kernels (one pixel one level apart on an AVX-512/AMX Xeon,
    # none on other CPUs). A seed or a setting that depended on the batch would change nearly every pixel.
    assert runs["b1"].keys() == runs["b4"].keys()
    for key, sample in runs["b4"].items():
        assert runs["b1"][key]["json"] == sample["json"], key
        a, b = _pixels(sample["png"]), _pixels(runs["b1"][key]["png"])
        assert a.shape == b.shape and np.abs(a - b).max() <= 2 and (a != b).mean() < 0.01, \
            (key, int(np.abs(a - b).max()), float((a != b).mean()))
