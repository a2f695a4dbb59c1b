"""StyleGAN-XL: the restricted network-pickle reader, the official pickle layout, the port, the generator."""
from __future__ import annotations

import io
import os
import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch

from fakeforge.config import ConfigError
from fakeforge.tiny import build_tiny
from fakeforge.tiny.port_twins import TINY_SGXL_HPARAMS, official_network_pickle, tiny_stylegan_xl
from generators import generator_config, load_preset
from generators.base import GenRequest
from generators.checkpoint_file import MissingCheckpointError
from generators.network_pickle import NetworkPickleReader, UnsafePickleError, read_network_pickle
from generators.stylegan_xl import convert_to_safetensors, load_stylegan_xl


class RunsCode:
    """Unpickling this calls `func(*args)`: the classic pickle code-execution payload."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])   # 2 names builtins '__builtin__'
@pytest.mark.parametrize("payload", ["os.system", "builtins.exec", "builtins.getattr", "subprocess.call",
                                     "nested", "numpy_object"])
def test_pickles_that_would_run_code_are_refused_and_nothing_runs(tmp_path, payload, protocol):
    marker = tmp_path / "pwned"
    shell = f"touch {marker}"
    import subprocess

    obj = {"os.system": RunsCode(os.system, shell),
           "builtins.exec": RunsCode(exec, f"open({str(marker)!r}, 'w').close()"),
           "builtins.getattr": RunsCode(getattr, "text", "upper"),
           "subprocess.call": RunsCode(subprocess.call, ["touch", str(marker)]),
           "nested": {"G_ema": {"state": [1, RunsCode(os.system, shell)]}},
           "numpy_object": np.array([RunsCode(os.system, shell)], dtype=object)}[payload]
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    with pytest.raises(UnsafePickleError, match="refused"):
        read_network_pickle(path)
    assert not marker.exists(), "the refused pickle ran code"
    with pytest.raises(ConfigError, match="was refused"):   # the generator's loader says so in one line
        load_stylegan_xl(path)
    assert not marker.exists()


def test_stored_module_source_is_never_executed(tmp_path):
    """The official format carries Python source per network; the reader keeps it as text only."""
    from fakeforge.tiny import port_twins

    marker = tmp_path / "source_ran"
    model, spec = tiny_stylegan_xl()
    old = port_twins._MODULE_SOURCE_NOTE
    port_twins._MODULE_SOURCE_NOTE = f"open({str(marker)!r}, 'w').close()\nimport os\nos.system('touch {marker}')\n"
    try:
        official_network_pickle(model, spec, TINY_SGXL_HPARAMS, tmp_path / "net.pkl")
    finally:
        port_twins._MODULE_SOURCE_NOTE = old
    loaded, _ = load_stylegan_xl(tmp_path / "net.pkl")
    assert not marker.exists() and loaded.c_dim == 1000


@pytest.fixture(scope="module")
def twin_pickle(tiny_dir):
    return build_tiny("stylegan_xl", tiny_dir) / "network.pkl"


def official_keys(spec) -> list[str]:
    """State-dict keys of the official G_ema (training/networks_stylegan3_resetting.py), in module order."""
    keys = ["mapping.w_avg", "mapping.embed.weight", "mapping.embed_proj.weight", "mapping.embed_proj.bias"]
    keys += [f"mapping.fc{i}.{p}" for i in range(2) for p in ("weight", "bias")]
    keys += [f"synthesis.input.{k}" for k in ("weight", "transform", "freqs", "phases", "affine.weight",
                                              "affine.bias")]
    for layer in spec["synthesis"]["layers"]:
        n = layer["name"]
        keys += [f"synthesis.{n}.{k}" for k in ("weight", "bias", "magnitude_ema", "affine.weight", "affine.bias")]
        keys += [f"synthesis.{n}.{f}" for f in ("up_filter", "down_filter") if layer[f"{f}_shape"] is not None]
    return keys


def test_twin_is_an_official_layout_network_pickle(twin_pickle):
    globals_named = set()

    class Recording(NetworkPickleReader):
        def find_class(self, module, name):
            globals_named.add(f"{module}.{name}")
            return super().find_class(module, name)

    with open(twin_pickle, "rb") as fh:
        Recording(fh).load()
    assert {"torch_utils.persistence._reconstruct_persistent_obj", "torch._utils._rebuild_parameter",
            "torch._utils._rebuild_tensor_v2", "torch.nn.modules.sparse.Embedding",
            "collections.OrderedDict"} <= globals_named
    data = read_network_pickle(twin_pickle)
    assert set(data) == {"G", "D", "G_ema", "augment_pipe", "training_set_kwargs"}
    assert data["G_ema"].class_name == "Generator" and data["G_ema"].source_chars > 0
    model, spec = load_stylegan_xl(twin_pickle)
    assert sorted(model.state_dict()) == sorted(official_keys(spec))
    assert [lay["name"] for lay in spec["synthesis"]["layers"]] == ["L0_36_16", "L1_36_16", "L2_36_16", "L3_16_16",
                                                                   "L4_16_3"]
    assert spec["synthesis"]["layers"][0]["padding"] and spec["mapping"]["embed"] == {"num_embeddings": 1000,
                                                                                      "embedding_dim": 8}


def test_pickle_roundtrip_gives_the_same_network_outputs(tmp_path):
    model, spec = tiny_stylegan_xl(seed=3)
    official_network_pickle(model, spec, TINY_SGXL_HPARAMS, tmp_path / "n.pkl")
    loaded, _ = load_stylegan_xl(tmp_path / "n.pkl")
    z, classes = model.latents([1, 2]), torch.tensor([5, 999])
    with torch.no_grad():
        assert torch.equal(model(model.ws(z, classes, 0.7)), loaded(loaded.ws(z, classes, 0.7)))
    out = convert_to_safetensors(tmp_path / "n.pkl", tmp_path / "n.safetensors")
    again, _ = load_stylegan_xl(out)
    with torch.no_grad():
        assert torch.equal(again(again.ws(z, classes, 0.7)), loaded(loaded.ws(z, classes, 0.7)))


def test_wrong_networks_name_expected_and_found_keys(tmp_path):
    model, spec = tiny_stylegan_xl()
    layer = model.synthesis.L1_36_16
    layer.register_buffer("noise_const", torch.zeros(2))       # a key the port does not know
    del layer._parameters["bias"]
    official_network_pickle(model, spec, TINY_SGXL_HPARAMS, tmp_path / "x.pkl")
    with pytest.raises(ConfigError, match=r"expected but missing: synthesis.L1_36_16.bias; found but unexpected: "
                                          r"synthesis.L1_36_16.noise_const"):
        load_stylegan_xl(tmp_path / "x.pkl")
    (tmp_path / "nog.pkl").write_bytes(pickle.dumps({"G": 1, "D": 2}))
    with pytest.raises(ConfigError, match=r"no 'G_ema' \(found \['D', 'G'\]\)"):
        load_stylegan_xl(tmp_path / "nog.pkl")
    (tmp_path / "text.pkl").write_text("not a pickle")
    with pytest.raises(ConfigError, match="not a readable network pickle"):
        load_stylegan_xl(tmp_path / "text.pkl")


# ---------------------------------------------------------------- the generator on its twin


@pytest.fixture(scope="module")
def gen(twin_pickle, tiny_dir):
    cls, cfg = generator_config(load_preset("stylegan_xl"), tiny=True, tiny_root=tiny_dir)
    g = cls(cfg, "cpu")
    g.load()
    return g


def _with(gen, **changes):
    g = type(gen)(replace(gen.config, **changes), "cpu")
    g.model, g.spec = gen.model, gen.spec
    return g


def _reqs(seeds, meta=None):
    return [GenRequest(f"k{s}", "unused caption", seed=s, meta=dict(meta or {})) for s in seeds]


def _arr(res):
    return np.asarray(res.image, dtype=np.int16)


def test_random_classes_and_latents_follow_the_official_script(gen):
    res = gen.generate_safe(_reqs([0, 1, 2**31 - 1]))
    assert all(r.error is None and r.image.size == (16, 16) for r in res)
    for r, s in zip(res, [0, 1, 2**31 - 1]):
        assert r.extra["class_index"] == np.random.RandomState(s).randint(low=0, high=1000, size=1)[0]
    z = gen.model.latents([7])
    assert torch.equal(z, torch.from_numpy(np.random.RandomState(7).randn(1, 8)))
    with torch.no_grad():
        direct = gen.model(gen.model.ws(z, torch.tensor([res[0].extra["class_index"]]), 1.0))
    assert np.abs(_arr(gen.generate_safe(_reqs([7]))[0])).sum() > 0 and direct.shape == (1, 3, 16, 16)


def test_uint8_conversion_truncates_like_the_official_script():
    from generators.sgxl_net import to_uint8

    x = torch.tensor([-1.0, -0.999, 0.0, 0.999, 1.0, 2.0]).view(1, 1, 1, 6).repeat(1, 3, 1, 1)
    assert to_uint8(x)[0, 0, :, 0].tolist() == [0, 0, 127, 254, 255, 255]


def test_truncation_zero_gives_the_class_average_image(gen):
    g0 = _with(gen, truncation_psi=0.0, class_labels=207)
    a, b = g0.generate_safe(_reqs([1, 2]))
    assert np.array_equal(_arr(a), _arr(b)) and a.extra["class_index"] == 207
    g1 = _with(gen, truncation_psi=1.0, class_labels=207)
    c, d = g1.generate_safe(_reqs([1, 2]))
    assert not np.array_equal(_arr(c), _arr(d))


def test_per_sample_synthesis_does_not_depend_on_the_batch(gen):
    batch = gen.generate_safe(_reqs([3, 4, 5]))
    alone = gen.generate_safe(_reqs([4]))[0]
    assert np.array_equal(_arr(batch[1]), _arr(alone))
    fast = _with(gen, per_sample=False).generate_safe(_reqs([3, 4, 5]))
    assert max(np.abs(_arr(x) - _arr(y)).max() for x, y in zip(fast, batch)) <= 1


def test_class_lists_wordnet_ids_and_source_labels(gen):
    listed = _with(gen, class_labels=[1, 2]).generate_safe(_reqs(range(6)))
    assert {r.extra["class_index"] for r in listed} <= {1, 2}
    pytest.importorskip("timm")
    wn = _with(gen, class_labels=["n01440764"]).generate_safe(_reqs([0]))[0]
    assert wn.extra["class_index"] == 0
    src = _with(gen, class_labels="source")
    ok, wnid, unknown, missing, text = src.generate_safe(
        _reqs([0], {"class_index": 417}) + _reqs([1], {"class_index": "n01443537"}) + _reqs([2], {"class_index": 1234})
        + _reqs([3]) + _reqs([4], {"class_index": "cat"}))
    assert ok.extra["class_index"] == 417 and wnid.extra["class_index"] == 1
    assert unknown.error == "class id 1234 is not an ImageNet class (0-999)"
    assert missing.error == "source record has no 'class_index' field (class_labels: source)"
    assert "neither an ImageNet class index" in text.error


@pytest.mark.parametrize("labels,match", [
    (1000, r"class_labels = 1000: class id 1000 is not an ImageNet class \(0-999\)"),
    ([3, -1], r"class_labels.1 = -1: class id -1 is not an ImageNet class"),
    ("n99999999", r"'n99999999' is not one of the 1000 ImageNet WordNet ids|needs timm"),
    ("everything", r"class_labels = 'everything'.*or use 'random' / 'source'"),
    ([], "empty list"),
])
def test_unknown_class_ids_fail_before_loading(labels, match):
    with pytest.raises(ConfigError, match=match):
        generator_config(dict(load_preset("stylegan_xl"), class_labels=labels))


def test_missing_checkpoint_message(monkeypatch):
    monkeypatch.delenv("FAKEFORGE_SGXL_MODEL", raising=False)
    with pytest.raises(MissingCheckpointError, match="imagenet256.pkl.*autonomousvision/stylegan-xl"):
        generator_config(load_preset("stylegan_xl"))


def test_persistent_ids_are_refused():
    """A persistent id points outside the pickle stream (torch.load resolves them to storages); the reader
    takes tensors only through `_load_from_bytes`, so any persistent id is refused."""
    class WithPersistentId(pickle.Pickler):
        def persistent_id(self, obj):
            return "storage-0" if obj == "outside" else None

    buf = io.BytesIO()
    WithPersistentId(buf, protocol=2).dump({"G_ema": "outside"})
    with pytest.raises(UnsafePickleError, match="persistent ids are refused"):
        NetworkPickleReader(io.BytesIO(buf.getvalue())).load()


def test_reader_is_a_plain_unpickler_for_plain_data():
    data = {"a": [1, 2.5, "x", (3, None)], "t": torch.arange(3.0), "n": np.arange(4, dtype=np.int16)}
    out = NetworkPickleReader(io.BytesIO(pickle.dumps(data, protocol=2))).load()
    assert out["a"] == [1, 2.5, "x", (3, None)] and torch.equal(out["t"], data["t"])
    assert out["n"].value.tolist() == [0, 1, 2, 3]


def test_reference_ops_are_convolutions_with_zero_insertion():
    import scipy.signal

    from generators.sgxl_ops import filtered_lrelu, upfirdn2d

    x = torch.rand(1, 2, 5, 6, dtype=torch.float64)
    f = torch.tensor([1.0, 2.0, 4.0])
    got = upfirdn2d(x, f, padding=(1, 1, 1, 1))
    want = scipy.signal.convolve2d(x[0, 0].numpy(), np.outer(f, f), mode="same")     # a true convolution
    assert np.allclose(got[0, 0].numpy(), want)
    up = upfirdn2d(x, None, up=2)                                                         # zero insertion
    assert up.shape == (1, 2, 10, 12) and torch.equal(up[..., ::2, ::2], x) and up[..., 1::2, :].abs().sum() == 0
    b = torch.tensor([0.5, -0.5], dtype=torch.float64)
    y = filtered_lrelu(x - 0.5, None, None, b, 1, 1, [0, 0, 0, 0], gain=2.0, slope=0.2, clamp=0.3)
    z = (x - 0.5) + b.view(1, 2, 1, 1)
    assert torch.allclose(y, (torch.where(z > 0, z, 0.2 * z) * 2).clamp(-0.3, 0.3))
