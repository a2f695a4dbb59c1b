"""Text-to-image presets on their tiny twins: real diffusers pipelines loaded with from_pretrained."""
from __future__ import annotations

import numpy as np
import pytest

from fakeforge.config import ConfigError
from fakeforge.registry import UnknownNameError
from fakeforge.tiny import build_tiny
from generators import generator_config, load_preset, resolve_generator_spec
from generators.base import GenRequest

PRESETS = ["sd2", "sd3", "sdxl", "sd14", "playground_v25"]


def _load(name, tiny_dir):
    raw = load_preset(name)
    build_tiny(raw["tiny_twin"], tiny_dir)
    cls, cfg = generator_config(raw, tiny=True, tiny_root=tiny_dir)
    gen = cls(cfg, device="cpu")
    gen.load()
    return gen


def _requests(n, seed0=0):
    return [GenRequest(key=f"k{i}", prompt=f"a red cat number {i}", seed=seed0 + i) for i in range(n)]


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_runs_on_its_tiny_twin(preset, tiny_dir):
    gen = _load(preset, tiny_dir)
    assert gen.config.model_id.startswith(tiny_dir)
    results = gen.generate_safe(_requests(3))
    assert [r.error for r in results] == [None] * 3
    assert all(r.image.size == (64, 64) and r.image.mode == "RGB" for r in results)
    arrays = [np.asarray(r.image, dtype=np.int16) for r in results]
    assert np.abs(arrays[0] - arrays[1]).mean() > 0.5, "different seeds must give different images"
    settings = gen.settings()
    assert settings["safety_checker"] == "disabled" and settings["num_inference_steps"] == 2


def test_same_seed_same_image_regardless_of_batch(tiny_dir):
    gen = _load("sd2", tiny_dir)
    batch = gen.generate_safe(_requests(3))
    alone = gen.generate_safe(_requests(3)[1:2])
    a, b = np.asarray(batch[1].image, dtype=np.int16), np.asarray(alone[0].image, dtype=np.int16)
    assert np.abs(a - b).max() <= 2  # per-sample generators: batching does not change the sample


def test_nan_output_is_a_recorded_per_sample_error(tiny_dir):
    import torch

    gen = _load("sd2", tiny_dir)
    with torch.no_grad():
        gen.pipe.vae.decoder.conv_out.bias.fill_(float("nan"))
    results = gen.generate_safe(_requests(2))
    assert all(r.image is None and "NaN" in r.error for r in results)


def test_scheduler_swap_by_class_name(tiny_dir):
    raw = dict(load_preset("sd2"), scheduler="EulerAncestralDiscreteScheduler")
    build_tiny("sd2", tiny_dir)
    cls, cfg = generator_config(raw, tiny=True, tiny_root=tiny_dir)
    gen = cls(cfg, "cpu")
    gen.load()
    assert type(gen.pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"


def test_bad_generator_configs_fail_before_loading():
    with pytest.raises(UnknownNameError, match="Valid generators: .*sd2"):
        resolve_generator_spec("sd9")
    with pytest.raises(ConfigError, match="unknown scheduler 'NoSuchScheduler'"):
        generator_config(dict(load_preset("sd2"), scheduler="NoSuchScheduler"))
    with pytest.raises(ConfigError, match="'generator.num_inference_steps' = 'many'"):
        generator_config(dict(load_preset("sd2"), num_inference_steps="many"))
    with pytest.raises(ConfigError, match="not a diffusers pipeline class"):
        generator_config(dict(load_preset("sd2"), pipeline="os"))
    with pytest.raises(UnknownNameError, match="unknown generator type 'txt2img'"):
        generator_config({"type": "txt2img"})
