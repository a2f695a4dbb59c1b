"""The reconstruct generator: VAE round trip, DRCT empty-mask inpainting and img2img keep the real image's
size and id, on the tiny twins."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fakeforge.config import ConfigError
from fakeforge.twins import build_tiny
from generators import generator_config, load_preset
from generators.base import GenRequest
from generators.reconstruct import pad_to_multiple

PRESETS = ["vae_sd2", "dr_sd15", "dr_sd2", "dr_sdxl", "sd2_img2img_rec"]


def _gen(raw, tiny_dir):
    build_tiny(raw["tiny_twin"], tiny_dir)
    cls, cfg = generator_config(raw, tiny=True, tiny_root=tiny_dir)
    gen = cls(cfg, device="cpu")
    gen.load()
    return gen


def _photo(w, h, seed=0):
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, w, dtype=np.float32)[None, :, None] * np.ones((h, 1, 3), np.float32)
    return Image.fromarray(np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8))


def _requests():
    sizes = [(37, 29), (32, 32), (90, 54)]  # odd sizes (padding), a multiple of 8, one over max_size 64
    return [GenRequest(key=f"k{i}", prompt="a cat", seed=i, source_image_id=f"img{i}", image=_photo(w, h, i))
            for i, (w, h) in enumerate(sizes)]


@pytest.mark.parametrize("preset", PRESETS)
def test_reconstruction_keeps_size_and_id(preset, tiny_dir):
    gen = _gen(load_preset(preset), tiny_dir)
    reqs = _requests()
    results = gen.generate_safe(reqs)
    for req, res in zip(reqs, results):
        assert res.error is None, res.error
        assert res.image.size == req.image.size, preset
        assert res.extra["source_image_id"] == req.source_image_id
        assert res.extra["mode"] == gen.config.mode
    assert results[0].extra["padding"] == [3, 3] and results[1].extra["padding"] == [0, 0]
    assert results[2].extra["working_size"] == [64, 38]  # longer side capped, resized back to 90x54
    again = gen.generate_safe(reqs[:1])[0]
    assert np.array_equal(np.asarray(again.image), np.asarray(results[0].image)), "a rerun is identical"


@pytest.mark.parametrize("index", [0, 1])  # 37x29 (padded to 40x32, cropped back) and 32x32
def test_vae_mode_is_the_vae_round_trip_aligned_pixel_for_pixel(tiny_dir, index):
    import torch

    gen = _gen(load_preset("vae_sd2"), tiny_dir)
    req = _requests()[index]
    out = np.asarray(gen.generate_safe([req])[0].image, dtype=np.float32) / 255
    padded, _ = pad_to_multiple(req.image)
    x = torch.from_numpy(np.asarray(padded, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        ref = gen.vae.decode(gen.vae.encode(x).latent_dist.mode()).sample
    ref = ((ref[0].permute(1, 2, 0).numpy() + 1) / 2).clip(0, 1)[: req.image.height, : req.image.width]
    assert out.shape == ref.shape and np.abs(out - ref).max() <= 1 / 255 + 1e-6
    assert gen.settings()["mode"] == "vae" and gen.pipe is None


def test_inpaint_empty_uses_an_all_zero_mask_and_an_empty_prompt(tiny_dir):
    gen = _gen(load_preset("dr_sd2"), tiny_dir)
    seen = {}
    real_call = type(gen.pipe).__call__

    def spy(pipe, **kwargs):
        seen.update(kwargs)
        return real_call(pipe, **kwargs)

    type(gen.pipe).__call__ = spy
    try:
        res = gen.generate_safe(_requests()[1:2])[0]
    finally:
        type(gen.pipe).__call__ = real_call
    assert seen["prompt"] == [""] and all(np.asarray(m).max() == 0 for m in seen["mask_image"])
    assert (seen["num_inference_steps"], seen["guidance_scale"]) == (2, 7.5)  # tiny steps; DRCT's guidance
    assert res.extra["prompt_kind"] == "empty"
    assert load_preset("dr_sd15")["num_inference_steps"] == 50


def test_img2img_strength_moves_the_result_away_from_the_source(tiny_dir):
    raw = load_preset("sd2_img2img_rec")
    req = _requests()[1:2]
    src = np.asarray(req[0].image, dtype=np.int16)

    def run(strength):
        gen = _gen(dict(raw, tiny=dict(raw["tiny"], strength=strength)), tiny_dir)
        assert gen.config.strength == strength
        return np.asarray(gen.generate_safe(req)[0].image, dtype=np.int16)

    light, full = run(0.25), run(1.0)
    assert np.abs(light - src).mean() < np.abs(full - src).mean()


def test_bad_reconstruct_configs():
    with pytest.raises(ConfigError, match="'generator.mode' = 'diffuse' is not one of"):
        generator_config(dict(load_preset("vae_sd2"), mode="diffuse"))
    with pytest.raises(ConfigError, match="generator.strength = 0"):
        generator_config(dict(load_preset("sd2_img2img_rec"), strength=0))
    with pytest.raises(ConfigError, match="lora and prompt do not apply"):
        generator_config(dict(load_preset("vae_sd2"), prompt="caption"))


def test_pad_to_multiple():
    img, pad = pad_to_multiple(Image.new("RGB", (9, 16), (255, 0, 0)))
    assert img.size == (16, 16) and pad == (7, 0) and img.getpixel((12, 3)) == (0, 0, 0)
