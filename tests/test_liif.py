"""LIIF: official checkpoint layout and key names, output sizes, the generator on its tiny twin, bad files."""
from __future__ import annotations

import json
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
from generators.liif import load_liif
from generators.liif_net import build_from_args, make_coord, upsample

OFFICIAL_ARGS = {"encoder_spec": {"name": "edsr-baseline", "args": {"no_upsampling": True}},
                 "imnet_spec": {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [256, 256, 256, 256]}}}
rng = np.random.default_rng(0)


def official_keys(n_blocks=16, n_linear=5):
    """The state-dict keys of yinboc/liif's edsr-baseline-liif.pth (models/edsr.py, models/mlp.py)."""
    keys = [f"encoder.{m}.{p}" for m in ("sub_mean", "add_mean") for p in ("weight", "bias")]
    keys += [f"encoder.head.0.{p}" for p in ("weight", "bias")]
    keys += [f"encoder.body.{i}.body.{j}.{p}" for i in range(n_blocks) for j in (0, 2) for p in ("weight", "bias")]
    keys += [f"encoder.body.{n_blocks}.{p}" for p in ("weight", "bias")]
    keys += [f"imnet.layers.{2 * i}.{p}" for i in range(n_linear) for p in ("weight", "bias")]
    return keys


@pytest.fixture(scope="module")
def official_file(tmp_path_factory):
    """A file in the official layout: {'model': {'name','args','sd'}, 'optimizer': {...}, 'epoch'}."""
    torch.manual_seed(0)
    model = build_from_args(OFFICIAL_ARGS)
    sd = model.state_dict()
    opt = torch.optim.Adam(model.parameters())
    path = tmp_path_factory.mktemp("liif") / "edsr-baseline-liif.pth"
    torch.save({"model": {"name": "liif", "args": OFFICIAL_ARGS, "sd": sd},
                "optimizer": {"name": "adam", "args": {"lr": 1e-4}, "sd": opt.state_dict()}, "epoch": 1000}, path)
    return path


def test_official_key_names_and_shapes(official_file):
    sd = torch.load(official_file, weights_only=True)["model"]["sd"]
    assert list(sd) == official_keys()
    assert tuple(sd["encoder.head.0.weight"].shape) == (64, 3, 3, 3)
    assert tuple(sd["imnet.layers.0.weight"].shape) == (256, 64 * 9 + 2 + 2)
    assert tuple(sd["imnet.layers.8.weight"].shape) == (3, 256)


def test_load_official_layout_and_output_size(official_file):
    model, args = load_liif(official_file)
    assert args["encoder_spec"]["args"]["n_resblocks"] == 16 and args["feat_unfold"] and args["cell_decode"]
    x = torch.rand(1, 3, 12, 17)
    out = upsample(model, x, 48, 68)                              # scale x input
    assert out.shape == (1, 3, 48, 68) and 0 <= out.min() and out.max() <= 1


def test_bare_state_dict_and_safetensors(tmp_path, official_file):
    from safetensors.torch import save_file

    sd = torch.load(official_file, weights_only=True)["model"]["sd"]
    torch.save(sd, tmp_path / "bare.pth")
    m1, _ = load_liif(tmp_path / "bare.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "w.safetensors"),
              metadata={"liif_args": json.dumps(OFFICIAL_ARGS)})
    m2, _ = load_liif(tmp_path / "w.safetensors")
    x = torch.rand(1, 3, 8, 8)
    assert torch.equal(upsample(m1, x, 20, 20), upsample(m2, x, 20, 20))


def test_query_chunks_do_not_change_the_result():
    from fakeforge.tiny.editing_twins import TINY_LIIF_ARGS

    model = build_from_args(TINY_LIIF_ARGS).eval()
    x = torch.rand(2, 3, 9, 7)
    assert torch.allclose(upsample(model, x, 27, 21, bsize=50), upsample(model, x, 27, 21, bsize=10**6), atol=1e-6)


def test_make_coord_pixel_centres():
    c = make_coord((2, 4))
    assert c.shape == (8, 2) and torch.allclose(c[0], torch.tensor([-0.5, -0.75]))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("kind,match", [
    ("text", "torch.load.weights_only=True. failed"),
    ("pickle", "torch.load.weights_only=True. failed"),
    ("other_dict", "not a LIIF checkpoint: expected"),
    ("other_model", "holds a 'metasr' model"),
    ("wrong_widths", "weights do not fit the LIIF network"),
])
def test_wrong_kind_of_file(tmp_path, official_file, kind, match):
    path = tmp_path / "x.pth"
    if kind == "text":
        path.write_text("not a checkpoint")
    elif kind == "pickle":
        path.write_bytes(pickle.dumps(Image.new("RGB", (2, 2))))   # a pickle that needs code to load
    elif kind == "other_dict":
        torch.save({"epoch": 3, "note": "hello"}, path)
    elif kind == "other_model":
        torch.save({"model": {"name": "metasr", "args": {}, "sd": {}}}, path)
    else:
        ckpt = torch.load(official_file, weights_only=True)
        ckpt["model"]["args"] = {**OFFICIAL_ARGS, "encoder_spec": {"name": "edsr-baseline",
                                                                    "args": {"n_feats": 32, "no_upsampling": True}}}
        torch.save(ckpt, path)
    with pytest.raises(ConfigError, match=match):
        load_liif(path)


# ---------------------------------------------------------------- generator on the tiny twin


@pytest.fixture(scope="module")
def gen(tiny_dir):
    build_tiny("liif", tiny_dir)
    cls, cfg = generator_config(load_preset("liif_x4"), tiny=True, tiny_root=tiny_dir)
    g = cls(cfg, "cpu")
    g.load()
    return g


def request(key, img, seed=0, image_id="9"):
    return GenRequest(key, "caption", seed=seed, source_image_id=image_id, image=img, meta={"image_id": image_id})


def test_twin_is_in_the_official_layout(tiny_dir):
    path = build_tiny("liif", tiny_dir) / "liif.pth"
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["model"]["name"] == "liif" and list(ckpt["model"]["sd"]) == official_keys(n_blocks=2, n_linear=3)


def test_generator_exact_sr_size_and_determinism(gen):
    srcs = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in [(64, 48), (67, 45)]]
    res = gen.generate_safe([request(f"k{i}", s, image_id=str(i)) for i, s in enumerate(srcs)])
    assert res[0].image.size == (64, 48) and res[0].extra["lr_size"] == [16, 12]
    assert res[1].image.size == (64, 44) and res[1].extra["sr_crop_box"] == [1, 0, 65, 44]   # multiple of 4
    assert res[1].extra["source_image_id"] == "1" and res[1].extra["sr_scale"] == 4.0 and res[1].mask is None
    again = gen.generate_safe([request("k0", srcs[0])])[0]
    assert np.array_equal(np.asarray(again.image), np.asarray(res[0].image))


def test_non_integer_scale_tiny_and_huge(gen):
    from dataclasses import replace

    g = type(gen)(replace(gen.config, scale=2.5), "cpu")
    g.model = gen.model
    huge = Image.fromarray(np.tile(rng.integers(0, 256, (100, 150, 3), dtype=np.uint8), (10, 10, 1)))
    res = g.generate_safe([request("a", Image.new("RGB", (101, 60), "red")), request("t", Image.new("RGB", (9, 40))),
                           request("h", huge)])
    assert res[0].image.size == (100, 60) and res[0].extra["lr_size"] == [40, 24]
    assert res[1].error and "smaller than min_size=16" in res[1].error
    # capped at 128x85, low-res 51x34, output round(51 * 2.5) x 34 * 2.5
    assert res[2].image.size == (128, 85) and res[2].extra["sr_resized_from"] == [1500, 1000]


def test_grayscale_and_palette_inputs(gen):
    pal = Image.new("P", (40, 32))
    pal.info["transparency"] = 0
    res = gen.generate_safe([request("g", Image.new("L", (40, 32), 90)), request("p", pal)])
    assert all(r.error is None and r.image.mode == "RGB" and r.image.size == (40, 32) for r in res)


def test_missing_checkpoint_message(monkeypatch):
    monkeypatch.delenv("FAKEFORGE_LIIF_MODEL", raising=False)
    with pytest.raises(MissingCheckpointError, match="edsr-baseline-liif.pth.*yinboc/liif"):
        generator_config(load_preset("liif_x4"))


def test_runs_in_float32_and_says_so(gen, tiny_dir):
    assert gen.settings()["dtype_resolved"] == "float32"
    assert all(p.dtype == torch.float32 for p in gen.model.parameters())
    with pytest.raises(ConfigError, match=r"generator.dtype = 'bfloat16': generator type 'liif' runs in float32"):
        generator_config({**load_preset("liif_x4"), "dtype": "bfloat16"}, tiny=True, tiny_root=tiny_dir)
