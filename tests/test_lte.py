"""LTE: official checkpoint layouts and key names, the Fourier-feature math, the generator on its twin, bad files."""
from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fakeforge.config import ConfigError
from fakeforge.tiny import build_tiny
from generators import generator_config, load_preset
from generators.base import GenRequest
from generators.checkpoint_file import MissingCheckpointError
from generators.liif_net import make_coord, upsample
from generators.lte import load_lte
from generators.lte_net import build_from_args

MLP3 = {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [256, 256, 256]}}
EDSR_ARGS = {"encoder_spec": {"name": "edsr-baseline", "args": {"no_upsampling": True}}, "imnet_spec": MLP3,
             "hidden_dim": 256}  # configs/train-div2k/train_edsr-baseline-lte.yaml
RDN_ARGS = {"encoder_spec": {"name": "rdn", "args": {"no_upsampling": True}}, "imnet_spec": MLP3, "hidden_dim": 256}


def official_keys(encoder: str) -> list[str]:
    """State-dict keys of jaewon-lee-b/lte's models/{edsr,rdn,lte,mlp}.py, in registration order."""
    wb = ("weight", "bias")
    if encoder == "edsr-baseline":
        keys = [f"encoder.{m}.{p}" for m in ("sub_mean", "add_mean") for p in wb]
        keys += [f"encoder.head.0.{p}" for p in wb]
        keys += [f"encoder.body.{i}.body.{j}.{p}" for i in range(16) for j in (0, 2) for p in wb]
        keys += [f"encoder.body.16.{p}" for p in wb]
    else:  # RDN, config B: 16 blocks of 8 convs
        keys = [f"encoder.SFENet{n}.{p}" for n in (1, 2) for p in wb]
        for i in range(16):
            keys += [f"encoder.RDBs.{i}.convs.{c}.conv.0.{p}" for c in range(8) for p in wb]
            keys += [f"encoder.RDBs.{i}.LFF.{p}" for p in wb]
        keys += [f"encoder.GFF.{j}.{p}" for j in (0, 1) for p in wb]
    keys += [f"{m}.{p}" for m in ("coef", "freq") for p in wb] + ["phase.weight"]
    keys += [f"imnet.layers.{2 * i}.{p}" for i in range(4) for p in wb]
    return keys


def _save_official(path, args, seed=0):
    torch.manual_seed(seed)
    model = build_from_args(args)
    opt = torch.optim.Adam(model.parameters())
    torch.save({"model": {"name": "lte", "args": args, "sd": model.state_dict()},
                "optimizer": {"name": "adam", "args": {"lr": 1e-4}, "sd": opt.state_dict()}, "epoch": 1000}, path)
    return path


@pytest.fixture(scope="module")
def edsr_file(tmp_path_factory):
    return _save_official(tmp_path_factory.mktemp("lte") / "edsr-baseline-lte.pth", EDSR_ARGS)


@pytest.mark.parametrize("args,encoder", [(EDSR_ARGS, "edsr-baseline"), (RDN_ARGS, "rdn")])
def test_official_key_names_shapes_and_loading(tmp_path, args, encoder):
    path = _save_official(tmp_path / "x.pth", args)
    sd = torch.load(path, weights_only=True)["model"]["sd"]
    assert list(sd) == official_keys(encoder)
    assert tuple(sd["coef.weight"].shape) == (256, 64, 3, 3) and tuple(sd["phase.weight"].shape) == (128, 2)
    assert tuple(sd["imnet.layers.0.weight"].shape) == (256, 256) and tuple(sd["imnet.layers.6.weight"].shape) == (3, 256)
    model, loaded_args = load_lte(path)
    assert loaded_args["encoder_spec"]["name"] == encoder
    out = upsample(model, torch.rand(1, 3, 6, 5), 24, 20)
    assert out.shape == (1, 3, 24, 20) and 0 <= out.min() and out.max() <= 1


def test_bare_state_dict_and_safetensors_load_the_same_network(tmp_path, edsr_file):
    from safetensors.torch import save_file

    sd = torch.load(edsr_file, weights_only=True)["model"]["sd"]
    torch.save(sd, tmp_path / "bare.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "w.safetensors"),
              metadata={"lte_args": json.dumps(EDSR_ARGS)})
    ref, _ = load_lte(edsr_file)
    x = torch.rand(1, 3, 7, 6)
    for name in ("bare.pth", "w.safetensors"):
        model, _ = load_lte(tmp_path / name)
        assert torch.equal(upsample(model, x, 28, 24), upsample(ref, x, 28, 24))


def naive_lte_query(model, inp, y, x, cell_h, cell_w):
    """LTE's prediction at one (y, x) in [-1, 1], written out with explicit indices and loops (normalised input)."""
    feat = model.encoder(inp)
    coef, freq = model.coef(feat)[0], model.freq(feat)[0]
    h, w = feat.shape[-2:]
    hidden = coef.shape[0]
    preds, areas = [], []
    for vy, vx in [(-1, -1), (-1, 1), (1, -1), (1, 1)]:
        sy = min(max(y + vy / h + 1e-6, -1 + 1e-6), 1 - 1e-6)
        sx = min(max(x + vx / w + 1e-6, -1 + 1e-6), 1 - 1e-6)
        i, j = min(int((sy + 1) / 2 * h), h - 1), min(int((sx + 1) / 2 * w), w - 1)   # nearest latent cell
        ry, rx = (y - (-1 + (2 * i + 1) / h)) * h, (x - (-1 + (2 * j + 1) / w)) * w
        basis = []
        for k in range(hidden // 2):
            phase = model.phase.weight[k, 0] * cell_h * h + model.phase.weight[k, 1] * cell_w * w
            basis.append(freq[2 * k, i, j] * ry + freq[2 * k + 1, i, j] * rx + phase)
        basis = torch.stack(basis)
        fourier = torch.cat([torch.cos(math.pi * basis), torch.sin(math.pi * basis)])
        preds.append(model.imnet((coef[:, i, j] * fourier)[None])[0])
        areas.append(abs(ry * rx) + 1e-9)
    total = sum(areas)
    out = sum(p * (a / total) for p, a in zip(preds, areas[::-1]))
    grid = torch.tensor([[[[x, y]]]], dtype=inp.dtype)
    return out + F.grid_sample(inp, grid, mode="bilinear", padding_mode="border", align_corners=False)[0, :, 0, 0]


def test_fourier_features_match_an_index_by_index_reference():
    from fakeforge.tiny.port_twins import TINY_LTE_ARGS

    torch.manual_seed(3)
    model = build_from_args(TINY_LTE_ARGS).eval()
    inp = torch.rand(1, 3, 5, 4) * 2 - 1
    coord = make_coord((15, 12)).unsqueeze(0)
    cell = torch.empty_like(coord)
    cell[..., 0], cell[..., 1] = 2 / 15, 2 / 12
    with torch.no_grad():
        fast = model.query_rgb(model.gen_feat(inp), coord, cell)[0]
        for q in (0, 7, 50, 179):
            y, x = coord[0, q].tolist()
            ref = naive_lte_query(model, inp, y, x, 2 / 15, 2 / 12)
            assert torch.allclose(fast[q], ref, atol=1e-5), q


def test_zero_mlp_gives_the_bilinear_skip_plus_the_bias():
    from fakeforge.tiny.port_twins import TINY_LTE_ARGS

    model = build_from_args(TINY_LTE_ARGS).eval()
    last = model.imnet.layers[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(0.1)                           # blend weights sum to 1: every pixel gets exactly +0.1
    x = torch.rand(1, 3, 6, 6) * 0.5
    out = upsample(model, x, 12, 12)
    bilinear = F.interpolate(x * 2 - 1, size=(12, 12), mode="bilinear", align_corners=False) * 0.5 + 0.5
    assert torch.allclose(out, bilinear + 0.05, atol=1e-5)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("kind,match", [
    ("text", r"torch.load.weights_only=True. failed"),
    ("pickle", r"torch.load.weights_only=True. failed"),
    ("liif", "holds a 'liif' model, not 'lte'"),
    ("swinir", "encoder 'swinir' is not supported .*SwinIR-LTE is not ported"),
    ("wrong_keys", r"expected but missing: phase.weight; found but unexpected: phase.bias"),
    ("not_lte", r"does not hold LTE weights.*found encoder.conv.weight"),
    ("wrong_widths", "weights do not fit the LTE network"),
])
def test_wrong_files_give_clear_config_errors(tmp_path, edsr_file, kind, match):
    path = tmp_path / "x.pth"
    ckpt = torch.load(edsr_file, weights_only=True)
    if kind == "text":
        path.write_text("not a checkpoint")
    elif kind == "pickle":
        path.write_bytes(pickle.dumps(Image.new("RGB", (2, 2))))
    elif kind == "liif":
        torch.save({"model": {"name": "liif", "args": {}, "sd": {}}}, path)
    elif kind == "swinir":
        ckpt["model"]["args"] = {**EDSR_ARGS, "encoder_spec": {"name": "swinir", "args": {"no_upsampling": True}}}
        torch.save(ckpt, path)
    elif kind == "wrong_keys":
        sd = ckpt["model"]["sd"]
        sd["phase.bias"] = torch.zeros(128)
        del sd["phase.weight"]
        torch.save(ckpt, path)
    elif kind == "not_lte":
        torch.save({"encoder.conv.weight": torch.zeros(3)}, path)
    else:
        ckpt["model"]["args"] = {**EDSR_ARGS, "hidden_dim": 128}
        torch.save(ckpt, path)
    with pytest.raises(ConfigError, match=match):
        load_lte(path)


class RunsCode:
    """Unpickling this calls `func(*args)`: the classic pickle code-execution payload."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def test_a_checkpoint_that_would_run_code_is_refused_and_nothing_runs(tmp_path, edsr_file):
    """An official-layout torch.save checkpoint with a code-running object inside (a tampered download):
    torch.load(weights_only=True) refuses it before anything runs."""
    import os

    marker = tmp_path / "ran"
    ckpt = torch.load(edsr_file, weights_only=True)
    ckpt["epoch"] = RunsCode(os.system, f"touch {marker}")
    torch.save(ckpt, tmp_path / "evil.pth")
    with pytest.raises(ConfigError, match=r"torch.load.weights_only=True. failed"):
        load_lte(tmp_path / "evil.pth")
    assert not marker.exists(), "the checkpoint ran code"


# ---------------------------------------------------------------- generator on the tiny twin


@pytest.fixture(scope="module")
def gen(tiny_dir):
    build_tiny("lte", tiny_dir)
    cls, cfg = generator_config(load_preset("lte_x4"), tiny=True, tiny_root=tiny_dir)
    g = cls(cfg, "cpu")
    g.load()
    return g


def _request(key, img, image_id="9"):
    return GenRequest(key, "caption", seed=0, source_image_id=image_id, image=img, meta={"image_id": image_id})


def test_generator_exact_sizes_determinism_and_bad_inputs(gen):
    rng = np.random.default_rng(0)
    srcs = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in [(64, 48), (67, 45)]]
    res = gen.generate_safe([_request(f"k{i}", s, str(i)) for i, s in enumerate(srcs)]
                            + [_request("small", Image.new("RGB", (10, 40))), _request("gray", Image.new("L", (40, 32)))])
    assert res[0].image.size == (64, 48) and res[0].extra["lr_size"] == [16, 12]
    assert res[1].image.size == (64, 44) and res[1].extra["sr_crop_box"] == [1, 0, 65, 44]
    assert res[2].error and "smaller than min_size=16" in res[2].error
    assert res[3].image.mode == "RGB" and res[3].image.size == (40, 32)
    again = gen.generate_safe([_request("k0", srcs[0], "0")])[0]
    assert np.array_equal(np.asarray(again.image), np.asarray(res[0].image))
    assert gen.settings()["model_file"].endswith("lte.pth")


def test_cell_clipping_above_the_training_scale(gen):
    from dataclasses import replace

    g = type(gen)(replace(gen.config, scale=6.0), "cpu")
    g.model = gen.model
    x = torch.rand(1, 3, 5, 5)
    assert torch.equal(g.render(x, 30, 30), upsample(gen.model, x, 30, 30, cell_factor=1.5))
    assert not torch.equal(g.render(x, 30, 30), upsample(gen.model, x, 30, 30))
    assert torch.equal(gen.render(x, 20, 20), upsample(gen.model, x, 20, 20))        # x4: no clipping


def test_missing_checkpoint_message(monkeypatch):
    monkeypatch.delenv("FAKEFORGE_LTE_MODEL", raising=False)
    with pytest.raises(MissingCheckpointError, match="edsr-baseline-lte.pth.*jaewon-lee-b/lte"):
        generator_config(load_preset("lte_x4"))
