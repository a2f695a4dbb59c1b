"""Build-time degrade sets (`generator: {type: degrade, of: SET, ops: ...}`): each sample is the original set's
sample with the same record, degraded exactly as the robustness eval degrades it, labelled like the original,
the original's metadata and the chain recorded; a changed original changes the copy; bad `of` refused."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from builder_helpers import set_samples as samples
from builder_helpers import write_build_config
from PIL import Image

from fakeforge.builder.config import resolve_build
from fakeforge.builder.runner import build
from fakeforge.config import ConfigError
from fakeforge.degrade import parse_chain
from fakeforge.shards.verify import verify_dataset

SETS = [{"name": "photos", "generator": "real"}, {"name": "sd2", "generator": "sd2"},
        {"name": "sd2_q30", "generator": {"type": "degrade", "of": "sd2", "ops": "jpeg:30+noise:6"}},
        {"name": "photos_half", "generator": {"type": "degrade", "of": "photos", "ops": "resize:0.5"}}]


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_dir):
    root = tmp_path_factory.mktemp("degrade_sets")
    cfg = write_build_config(root / "b.yaml", root / "out", SETS)
    build(resolve_build(str(cfg), tiny=True, tiny_root=tiny_dir), progress=False)
    return root


def test_copies_are_the_originals_degraded_labelled_and_recorded(built):
    out = built / "out"
    assert verify_dataset(out)["samples"] == 32
    for name, of, ops in (("sd2_q30", "sd2", "jpeg:30+noise:6"), ("photos_half", "photos", "resize:0.5")):
        copies, originals = samples(out / name), samples(out / of)
        assert len(copies) == len(originals) == 8
        chain = parse_chain(ops)
        for key, sample in copies.items():
            source_key = of + key[len(name):]
            meta, original_meta = json.loads(sample["json"]), json.loads(originals[source_key]["json"])
            assert meta["label"] == original_meta["label"] == ("real" if of == "photos" else "fake")
            assert meta["set"] == name and meta["generator_type"] == "degrade"
            assert meta["degrade"] == {"of": of, "chain": chain.spec(), "source_key": source_key}
            assert meta["original"] == original_meta
            # what the robustness eval scores for that image under the same chain (stored losslessly: PNG)
            expected = chain.apply(Image.open(io.BytesIO(originals[source_key]["png"])).convert("RGB"), key=source_key)
            got = Image.open(io.BytesIO(sample["png"])).convert("RGB")
            assert np.array_equal(np.asarray(got), np.asarray(expected)), key
    halves = samples(out / "photos_half")
    assert {Image.open(io.BytesIO(s["png"])).size for s in halves.values()} == {(32, 32)}


def test_a_changed_original_is_a_changed_copy(built, tiny_dir):
    cfg = write_build_config(built / "c.yaml", built / "other", SETS)
    changed = [dict(SETS[0]), {"name": "sd2", "generator": {"preset": "sd2", "num_inference_steps": 3}}, *SETS[2:]]
    cfg2 = write_build_config(built / "c2.yaml", built / "other", changed)
    before = {r.name: r.set_hash for r in resolve_build(str(cfg), tiny=True, tiny_root=tiny_dir).sets}
    after = {r.name: r.set_hash for r in resolve_build(str(cfg2), tiny=True, tiny_root=tiny_dir).sets}
    assert before["sd2"] != after["sd2"] and before["sd2_q30"] != after["sd2_q30"]
    assert before["photos_half"] == after["photos_half"] and before["photos"] == after["photos"]


@pytest.mark.parametrize("sets, expected", [
    ([{"name": "a", "generator": {"type": "degrade", "of": "nope", "ops": "jpeg:50"}}],
     "sets.0.generator.of (set 'a'): 'nope' is not a set listed before this one"),
    ([{"name": "a", "generator": {"type": "degrade", "of": "b", "ops": "jpeg:50"}},
      {"name": "b", "generator": {"type": "degrade", "of": "a", "ops": "blur:1"}}],
     "'b' is not a set listed before this one"),                                          # a loop
    ([{"name": "a", "generator": {"type": "degrade", "of": "a", "ops": "jpeg:50"}}], "'a' is not a set listed before"),
    ([{"name": "r", "generator": "real"}, {"name": "a", "generator": {"type": "degrade", "of": "r", "ops": "jpeg:500"}}],
     "jpeg: quality = 500"),
    ([{"name": "r", "generator": "real"}, {"name": "a", "generator": {"type": "degrade", "of": "r"}}],
     "names no operation"),
    ([{"name": "r", "generator": "real"},
      {"name": "a", "source": {"limit": 3}, "generator": {"type": "degrade", "of": "r", "ops": "jpeg:50"}}],
     "set 'r' reads another source"),
    ([{"name": "z", "generator": {"type": "zoo", "models": ["sd2", "sd14"]}},
      {"name": "a", "generator": {"type": "degrade", "of": "z", "ops": "jpeg:50"}}], "'z' is a zoo set"),
])
def test_bad_of_or_ops_is_one_line_before_any_model_loads(tmp_path, tiny_dir, sets, expected):
    cfg = write_build_config(tmp_path / "b.yaml", tmp_path / "out", sets)
    with pytest.raises(ConfigError) as err:
        resolve_build(str(cfg), tiny=True, tiny_root=tiny_dir)
    assert expected in str(err.value), str(err.value)
    assert not (tmp_path / "out").exists()


def test_two_ranks_write_the_same_copies(built, tiny_dir):
    """Job i of a set runs on rank i mod N for the original and the copy alike, and a rank runs its sets in
    order: each rank finds the original shards its copies need, and the bytes equal a one-process build."""
    cfg = write_build_config(built / "r.yaml", built / "ranks", SETS)
    resolved = resolve_build(str(cfg), tiny=True, tiny_root=tiny_dir)
    for rank in range(2):
        build(resolved, progress=False, rank=rank, world_size=2)
    assert build(resolved, progress=False)["shards_skipped"] == 8
    for name in ("sd2_q30", "photos_half"):
        assert samples(built / "ranks" / name) == samples(built / "out" / name)
