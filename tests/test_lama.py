"""LaMa runner and generator on the tiny TorchScript twin (real torch.jit file, no mocks)."""
from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from fakeforge.config import ConfigError
from fakeforge.tiny import build_tiny
from generators import generator_config, load_preset
from generators.base import GenRequest
from generators.checkpoint_file import MissingCheckpointError
from generators.lama import LamaRunner, load_torchscript

rng = np.random.default_rng(0)


@pytest.fixture(scope="module")
def twin(tiny_dir):
    return build_tiny("lama", tiny_dir)


@pytest.fixture(scope="module")
def runner(twin):
    return LamaRunner(load_torchscript(twin / "big-lama.pt", "cpu"))


def make_gen(twin, **over):
    raw = {**load_preset("lama"), **over}
    cls, cfg = generator_config(raw, tiny=True, tiny_root=twin.parent)
    gen = cls(cfg, "cpu")
    gen.load()
    return gen


def rand_img(w, h):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def hole(w, h, box):
    m = np.zeros((h, w), np.uint8)
    m[box[1]:box[3], box[0]:box[2]] = 255
    return m


def test_pad_crop_on_odd_sizes_keeps_known_pixels(runner):
    img, mask = rand_img(53, 37), hole(53, 37, (10, 5, 30, 20))
    (out,) = runner.run([img], [mask])
    assert out.shape == (37, 53, 3) and out.dtype == np.float32
    known = mask == 0
    assert np.array_equal(np.rint(out * 255).astype(np.uint8)[known], img[known])
    assert not np.allclose(out[~known] * 255, img[~known])


@pytest.mark.parametrize("mode,np_mode", [("symmetric", "symmetric"), ("reflect", "reflect")])
def test_pad_index_matches_numpy(mode, np_mode):
    r = LamaRunner(None, pad_mode=mode)
    for n, total in [(5, 8), (3, 8), (37, 40), (1, 8)]:
        if np_mode == "reflect" and n == 1:
            continue
        expect = np.pad(np.arange(n), (0, total - n), mode=np_mode)
        assert r._pad_index(n, total).tolist() == expect.tolist()


def test_batching_equals_one_by_one(runner):
    sizes = [(53, 37), (56, 40), (53, 37), (16, 16), (9, 11)]     # first three share the padded size 56x40
    imgs = [rand_img(w, h) for w, h in sizes]
    masks = [hole(w, h, (2, 2, w // 2, h // 2)) for w, h in sizes]
    batched = runner.run(imgs, masks)
    single = [runner.run([i], [m])[0] for i, m in zip(imgs, masks)]
    for (w, h), b, s in zip(sizes, batched, single):
        assert b.shape == (h, w, 3)
        np.testing.assert_allclose(b, s, atol=1e-6)


def request(key, img, seed, image_id="42"):
    return GenRequest(key, "a caption", seed=seed, source_image_id=image_id, image=img, meta={"image_id": image_id})


def test_generator_sizes_masks_metadata_determinism(twin):
    gen = make_gen(twin)
    srcs = [Image.fromarray(rand_img(w, h)) for w, h in [(53, 37), (64, 48), (40, 40)]]
    res = gen.generate_safe([request(f"k{i}", s, seed=i, image_id=str(100 + i)) for i, s in enumerate(srcs)])
    for i, (src, r) in enumerate(zip(srcs, res)):
        assert r.error is None and r.image.size == src.size and r.image.mode == "RGB"
        assert r.mask.shape == (src.height, src.width)
        assert 0.1 <= r.extra["mask_area_ratio"] <= 0.4 and r.extra["mask_strategy"] == "brush"
        assert r.extra["source_image_id"] == str(100 + i) and r.extra["source_size"] == list(src.size)
        known = r.mask == 0
        assert np.array_equal(np.asarray(r.image)[known], np.asarray(src)[known])
    again = gen.generate_safe([request("k0", srcs[0], seed=0, image_id="100")])[0]
    assert np.array_equal(np.asarray(again.image), np.asarray(res[0].image))
    assert np.array_equal(again.mask, res[0].mask)
    other = gen.generate_safe([request("k0", srcs[0], seed=1, image_id="100")])[0]
    assert not np.array_equal(other.mask, res[0].mask)


def bad_inputs(w=48, h=40):
    """Grayscale, CMYK, 16-bit, palette with transparency, EXIF-rotated: all as a user could hand them over."""
    rgb = Image.fromarray(rand_img(w, h))
    pal = rgb.convert("P", palette=Image.ADAPTIVE)
    pal.info["transparency"] = 0
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6                                               # rotate 90: stored h x w, upright w x h
    Image.fromarray(rand_img(h, w)).save(buf, format="JPEG", exif=exif)
    rotated = Image.open(io.BytesIO(buf.getvalue()))
    i16 = Image.fromarray((np.arange(w * h).reshape(h, w) * 30 % 65535).astype(np.uint16))
    return {"gray": rgb.convert("L"), "cmyk": rgb.convert("CMYK"), "16bit": i16, "palette": pal, "exif": rotated}


def test_bad_inputs_are_converted(twin):
    gen = make_gen(twin)
    inputs = bad_inputs()
    res = gen.generate_safe([request(k, im, seed=i) for i, (k, im) in enumerate(inputs.items())])
    for name, r in zip(inputs, res):
        assert r.error is None, name
        assert r.image.mode == "RGB" and r.image.size == (48, 40), name
        assert r.mask.shape == (40, 48), name


def test_unreadable_image_fails_alone(twin):
    buf = io.BytesIO()
    Image.fromarray(rand_img(64, 48)).save(buf, format="JPEG")
    truncated = Image.open(io.BytesIO(buf.getvalue()[: buf.tell() // 2]))   # opens lazily, fails when decoded
    res = make_gen(twin).generate_safe([request("bad", truncated, 0), request("ok", Image.fromarray(rand_img(40, 30)), 1)])
    assert res[0].error and "OSError" in res[0].error
    assert res[1].error is None and res[1].image.size == (40, 30)


def test_tiny_is_skipped_and_huge_is_capped(twin):
    gen = make_gen(twin, max_size=256)
    huge = Image.fromarray(np.tile(rand_img(150, 100), (10, 10, 1)))   # 1500 x 1000
    tiny = Image.fromarray(rand_img(8, 30))
    res = gen.generate_safe([request("t", tiny, 0), request("h", huge, 1)])
    assert res[0].error and "smaller than min_size=16" in res[0].error
    r = res[1]
    assert r.error is None and r.image.size == (1500, 1000) and r.extra["working_size"] == [256, 170]
    known = r.mask == 0
    assert np.array_equal(np.asarray(r.image)[known], np.asarray(huge)[known])  # source pixels pasted back


def test_missing_checkpoint_message(tmp_path, monkeypatch):
    monkeypatch.delenv("FAKEFORGE_LAMA_MODEL", raising=False)
    with pytest.raises(MissingCheckpointError, match="big-lama.pt .*simple-lama-inpainting"):
        generator_config(load_preset("lama"))
    with pytest.raises(ConfigError, match=f"not found: '{tmp_path / 'x.pt'}'"):
        generator_config({**load_preset("lama"), "model_path": str(tmp_path / "x.pt")})


def test_checkpoint_from_env(twin, monkeypatch):
    monkeypatch.setenv("FAKEFORGE_LAMA_MODEL", str(twin / "big-lama.pt"))
    cls, cfg = generator_config(load_preset("lama"))
    gen = cls(cfg, "cpu")
    gen.load()
    assert gen.model_file == twin / "big-lama.pt"


class _NotLama(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.script/save are marked deprecated in torch 2.14+
@pytest.mark.parametrize("kind", ["text", "pickle", "state_dict", "wrong_contract"])
def test_wrong_kind_of_file_is_a_config_error(tmp_path, kind):
    path = tmp_path / "big-lama.pt"
    if kind == "text":
        path.write_text("this is not a model\n")
    elif kind == "pickle":
        path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    elif kind == "state_dict":
        torch.save({"conv.weight": torch.zeros(3)}, path)
    else:
        torch.jit.save(torch.jit.script(_NotLama()), str(path))
    cls, cfg = generator_config({**load_preset("lama"), "model_path": str(path)})
    match = "without big-lama's call contract" if kind == "wrong_contract" else "is not a TorchScript archive"
    with pytest.raises(ConfigError, match=match):
        cls(cfg, "cpu").load()


def test_checkpoint_precedence_tiny_twin_then_model_path_then_env(twin, tmp_path, monkeypatch):
    """As the docstrings say: model_id (the twin folder --tiny sets) > model_path > $FAKEFORGE_LAMA_MODEL."""
    other = tmp_path / "other"
    other.mkdir()
    (other / "big-lama.pt").write_bytes((twin / "big-lama.pt").read_bytes())
    env_file = tmp_path / "env-lama.pt"
    env_file.write_bytes((twin / "big-lama.pt").read_bytes())
    monkeypatch.setenv("FAKEFORGE_LAMA_MODEL", str(env_file))
    _, tiny_cfg = generator_config({**load_preset("lama"), "model_path": str(other)}, tiny=True,
                                   tiny_root=twin.parent)
    assert tiny_cfg.checkpoint_path() == twin / "big-lama.pt"
    _, cfg = generator_config({**load_preset("lama"), "model_path": str(other)})
    assert cfg.checkpoint_path() == other / "big-lama.pt"
    _, cfg = generator_config(load_preset("lama"))
    assert cfg.checkpoint_path() == env_file


def test_runs_in_float32_and_says_so(twin):
    gen = make_gen(twin)
    assert gen.settings()["dtype_resolved"] == "float32"
    assert all(p.dtype == torch.float32 for p in gen.runner.model.parameters())
    with pytest.raises(ConfigError, match=r"^'?generator.dtype = 'float16': generator type 'lama' runs in float32"):
        make_gen(twin, dtype="float16")
