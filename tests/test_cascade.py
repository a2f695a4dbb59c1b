"""The cascade generator (DeepFloyd IF) on its tiny twin: real diffusers IF pipelines, shared embeddings."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from fakeforge.config import ConfigError
from fakeforge.tiny import build_tiny
from generators import generator_config, load_preset
from generators.base import GenRequest


@pytest.fixture(scope="module")
def twin(tiny_dir):
    return build_tiny("deepfloyd_if", tiny_dir)


def _load(preset, tiny_dir, **overrides):
    raw = dict(load_preset(preset), **overrides)
    cls, cfg = generator_config(raw, tiny=True, tiny_root=tiny_dir)
    gen = cls(cfg, "cpu")
    gen.load()
    return gen


@pytest.fixture(scope="module")
def if2(twin, tiny_dir):
    return _load("deepfloyd_if", tiny_dir)


def _requests(n, seed0=0):
    return [GenRequest(key=f"k{i}", prompt=f"a red cat number {i} on a beach", seed=seed0 + i) for i in range(n)]


def _arr(img):
    return np.asarray(img, dtype=np.int16)


def test_two_stages_give_stage_ii_size_and_distinct_seeds(if2):
    res = if2.generate_safe(_requests(3))
    assert [r.error for r in res] == [None] * 3
    assert all(r.image.size == (32, 32) for r in res)            # twin: stage I 16 px -> stage II 32 px
    assert np.abs(_arr(res[0].image) - _arr(res[1].image)).mean() > 0.5
    assert res[0].extra["cascade_stages"] == ["stage_I", "stage_II"]


def test_embeddings_are_computed_once_and_shared(if2):
    assert if2.pipes["stage_II"].text_encoder is None             # stage II is loaded without its T5
    calls = []
    hook = if2.pipes["stage_I"].text_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        if2.generate_safe(_requests(3))
    finally:
        hook.remove()
    assert len(calls) == 2                                        # one batched call for prompts, one for ""


def test_same_as_the_hand_written_diffusers_chain(if2, twin):
    """The cascade equals calling the two IF pipelines by hand, each encoding the prompt itself."""
    from diffusers import IFPipeline, IFSuperResolutionPipeline

    reqs = _requests(2, seed0=5)
    ours = if2.generate_safe(reqs)
    p1 = IFPipeline.from_pretrained(twin / "stage_I")
    p2 = IFSuperResolutionPipeline.from_pretrained(twin / "stage_II")
    for p in (p1, p2):
        p.set_progress_bar_config(disable=True)
    gens = [torch.Generator("cpu").manual_seed(r.seed) for r in reqs]
    prompts = [r.prompt for r in reqs]
    low = p1(prompt=prompts, num_inference_steps=2, guidance_scale=7.0, generator=gens, output_type="pt").images
    high = p2(prompt=prompts, image=low, num_inference_steps=2, guidance_scale=4.0, noise_level=250, generator=gens,
              output_type="np").images
    for res, arr in zip(ours, high):
        expected = np.clip(np.rint(arr * 255), 0, 255).astype(np.int16)
        assert np.abs(_arr(res.image) - expected).max() <= 1


def test_same_seed_same_image_regardless_of_batch(if2):
    """Seeds are per sample and unrelated to each other (the builder derives them from sample keys):
    a sample's image depends on its own seed only, not on its neighbours' seeds or its position."""
    reqs = [GenRequest(key=f"k{i}", prompt=f"a red cat number {i} on a beach", seed=s)
            for i, s in enumerate([907, 13, 4242])]
    batch = if2.generate_safe(reqs)
    alone = if2.generate_safe(reqs[2:])
    assert np.abs(_arr(batch[2].image) - _arr(alone[0].image)).max() <= 2


def test_per_stage_steps_and_stage_iii(twin, tiny_dir):
    raw = load_preset("deepfloyd_if_1024")
    raw["stages"][0]["num_inference_steps"], raw["stages"][1]["num_inference_steps"] = 3, 2
    raw["stages"][2]["num_inference_steps"] = 1
    raw["tiny"] = {"batch_size": 2}                                # no global step override
    gen = _load("deepfloyd_if_1024", tiny_dir, stages=raw["stages"], tiny=raw["tiny"])
    counts = {}
    hooks = [gen.pipes[name].unet.register_forward_hook(lambda *a, n=name: counts.__setitem__(n, counts.get(n, 0) + 1))
             for name in gen.pipes]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = gen.generate_safe(_requests(2))
    finally:
        for h in hooks:
            h.remove()
    # IF's [-1, 1] tensors reach the SD upscaler as the [0, 1] it expects (diffusers warns otherwise)
    assert not [w for w in caught if "[-1,1]" in str(w.message)]
    assert counts == {"stage_I": 3, "stage_II": 2, "stage_III": 1}  # CFG runs batched: one UNet call per step
    assert all(r.error is None and r.image.size == (128, 128) for r in res)


@pytest.mark.parametrize("change,match", [
    (lambda r: r["stages"][1].update(pipeline="NoSuchPipeline"), "stage 'stage_II': pipeline = 'NoSuchPipeline'"),
    (lambda r: r["stages"][1].update(name="stage_I"), "stage names must be unique"),
    (lambda r: r.update(prompt_encoder="stage_III"), "prompt_encoder = 'stage_III' must name a stage"),
    (lambda r: r["stages"][0].update(call_kwargs={"image": 1}), r"call_kwargs \['image'\] are set by the cascade"),
    (lambda r: r["stages"][1].update(height=64), "height/width apply to the first stage only"),
    (lambda r: r["stages"][0].update(model_id=None), "stage 'stage_I' needs a model_id"),
    (lambda r: r["stages"][0].update(pipeline="DDPMPipeline"),
     "takes no prompt_embeds"),
    (lambda r: r.update(stages=[]), "at least one pipeline stage"),
    (lambda r: r["stages"][0].update(scheduler="NoScheduler"), "unknown scheduler 'NoScheduler'"),
])
def test_bad_cascade_configs_fail_before_loading(change, match):
    raw = load_preset("deepfloyd_if_1024")
    change(raw)
    with pytest.raises(ConfigError, match=match):
        generator_config(raw)


def test_value_range_conversion_between_stages():
    from generators.cascade import convert_range

    x = torch.tensor([-1.0, 0.0, 1.0])
    assert torch.equal(convert_range(x, "IFSuperResolutionPipeline", "StableDiffusionUpscalePipeline"),
                       torch.tensor([0.0, 0.5, 1.0]))
    assert torch.equal(convert_range(x, "IFPipeline", "IFSuperResolutionPipeline"), x)
    assert torch.equal(convert_range(torch.tensor([0.0, 1.0]), "StableDiffusionPipeline", "IFSuperResolutionPipeline"),
                       torch.tensor([-1.0, 1.0]))
