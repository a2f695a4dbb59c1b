"""Per-sample settings on a plain set (sd2 twin): each sample is made with exactly the values drawn for it,
whatever its batch, and records them."""
from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
from builder_helpers import write_build_config

from fakeforge.builder.config import resolve_build
from fakeforge.builder.runner import build
from generators import generator_config, resolve_generator_spec, sampling
from generators.base import GenRequest

SPACE = {"num_inference_steps": {"choice": [1, 2]}, "scheduler": {"choice": ["DDIMScheduler", "EulerDiscreteScheduler"]}}


def _generator(tiny_dir, **settings):
    from fakeforge.twins import ensure_tiny

    ensure_tiny("sd2", tiny_dir)
    cls, cfg = generator_config(resolve_generator_spec({"preset": "sd2", **settings}), tiny=True, tiny_root=tiny_dir)
    gen = cls(cfg)
    gen.load()
    return gen


@pytest.fixture(scope="module")
def varied(tiny_dir):
    return _generator(tiny_dir, **SPACE)


def _requests(n):
    return [GenRequest(key=f"s-{i}-0", prompt=f"a red cat {i}", seed=100 + i) for i in range(n)]


def test_each_sample_is_made_with_its_drawn_values(varied, tiny_dir):
    reqs = _requests(6)
    out = varied.generate_varied(reqs)
    drawn = [sampling.draw(varied.config.sample, r.key) for r in reqs]
    assert [o.extra["sampled"] for o in out] == drawn
    assert len({sampling.signature(d) for d in drawn}) >= 3  # the batch really mixes settings
    for values in {sampling.signature(d): d for d in drawn}.values():
        fixed = _generator(tiny_dir, **values)  # the same values as a plain fixed config
        idx = [i for i, d in enumerate(drawn) if d == values]
        ref = fixed.generate_safe([reqs[i] for i in idx])
        for i, r in zip(idx, ref):
            assert np.array_equal(np.asarray(out[i].image), np.asarray(r.image)), values
    assert varied.config.num_inference_steps == 1 and varied.config.scheduler == "DDIMScheduler"  # restored


def test_draws_do_not_depend_on_the_batch(varied):
    reqs = _requests(4)
    whole = varied.generate_varied(reqs)
    alone = [varied.generate_varied([r])[0] for r in reqs]
    assert [w.extra["sampled"] for w in whole] == [a.extra["sampled"] for a in alone]
    for a, b in zip(whole, alone):  # per-sample generators: batching changes at most float rounding
        assert np.abs(np.asarray(a.image, dtype=np.int16) - np.asarray(b.image, dtype=np.int16)).max() <= 2
    again = varied.generate_varied(reqs)  # a cached, reused scheduler keeps no state between calls
    assert all(np.array_equal(np.asarray(a.image), np.asarray(b.image)) for a, b in zip(whole, again))


def test_a_plain_set_records_the_drawn_values_in_every_sample(tmp_path, tiny_dir):
    cfg = write_build_config(tmp_path / "b.yaml", tmp_path / "out", [
        {"name": "sd2", "generator": {"preset": "sd2", "guidance_scale": {"choice": [5.0, 9.0]},
                                      "size": {"choice": [[64, 64], [64, 48]]}}}], source={"kind": "demo", "limit": 6})
    resolved = resolve_build(cfg, tiny=True, tiny_root=tiny_dir)
    assert resolved.sets[0].settings["generator"]["sample"]["size"] == {"choice": [[64, 64], [64, 48]]}
    build(resolved, progress=False)
    metas = []
    for tar in sorted((tmp_path / "out" / "sd2").glob("*.tar")):
        with tarfile.open(tar) as tf:
            metas += [json.loads(tf.extractfile(m).read()) for m in tf.getmembers() if m.name.endswith(".json")]
    assert len(metas) == 6
    for meta in metas:
        assert meta["sampled"] == sampling.draw(meta["settings"]["sample"], meta["key"])
        assert meta["generated_size"] == meta["sampled"]["size"]  # [width, height] as drawn
