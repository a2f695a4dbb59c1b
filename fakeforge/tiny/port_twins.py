"""Tiny random-weight twins of the ported (non-diffusers) generators, written in the official file layouts.

  lte          out_dir/lte.pth: {'model': {'name': 'lte', 'args', 'sd'}, 'epoch'} as jaewon-lee-b/lte saves it
               (EDSR-baseline encoder of 2 blocks x 8 features, 16 Fourier channels, MLP 16-16)
  stylegan_xl  out_dir/network.pkl: a network pickle laid out as the official training code writes it
               ({'G', 'D', 'G_ema', ...}; networks as torch_utils.persistence objects carrying class name,
               module state and a source-code field), a 16 px, 1000-class StyleGAN-XL at toy width
Every builder takes the output folder and writes the twin there; fixed seeds make twins reproducible.
"""
from __future__ import annotations

from pathlib import Path

import torch

#: official-layout args of the tiny LTE (the real edsr-baseline-lte: 16 blocks, 64 features, hidden 256, MLP 3 x 256)
TINY_LTE_ARGS = {"encoder_spec": {"name": "edsr-baseline", "args": {"n_resblocks": 2, "n_feats": 8,
                                                                     "no_upsampling": True}},
                 "imnet_spec": {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [16, 16]}},
                 "hidden_dim": 16}


def build_lte(out_dir: Path) -> None:
    """A small LTE saved as the official checkpoint dict."""
    from generators.lte_net import build_from_args

    torch.manual_seed(0)
    model = build_from_args(TINY_LTE_ARGS)
    torch.save({"model": {"name": "lte", "args": TINY_LTE_ARGS, "sd": model.state_dict()}, "epoch": 0},
               Path(out_dir) / "lte.pth")


# ------------------------------------------------------------------ StyleGAN-XL: an official-layout network pickle

#: tiny StyleGAN-XL: 16 px ImageNet stem (1000 classes, embedding 1000 x 8), 4 synthesis layers, narrow widths
TINY_SGXL_HPARAMS = {"z_dim": 8, "c_dim": 1000, "w_dim": 16, "img_resolution": 16, "embed_dim": 8,
                     "channel_base": 256, "channel_max": 16, "num_layers": 4}
_MODULE_SOURCE_NOTE = "# (the official pickles store the network's Python source here; readers must never run it)\n"


class _ReconstructMarker:
    """Pickled as the global torch_utils.persistence._reconstruct_persistent_obj (see _official_pickler)."""

    def __call__(self, meta):  # never called: only its pickled name matters
        raise RuntimeError("not the official persistence module")


_RECONSTRUCT = _ReconstructMarker()


class _Persistent:
    """Pickles like an object of a `persistence.persistent_class` class: (_reconstruct_persistent_obj, (meta,))."""

    def __init__(self, class_name: str, state: dict):
        self.class_name, self.state = class_name, state

    def __reduce__(self):
        meta = {"type": "class", "version": 6, "module_src": _MODULE_SOURCE_NOTE, "class_name": self.class_name,
                "state": self.state}
        return _RECONSTRUCT, (meta,)


def _official_pickler(fh):
    import pickle

    class OfficialPickler(pickle._Pickler):  # the pure-Python pickler: lets us name a global without importing it
        dispatch = dict(pickle._Pickler.dispatch)

        def _save_marker(self, obj):
            self.write(pickle.GLOBAL + b"torch_utils.persistence\n_reconstruct_persistent_obj\n")
            self.memoize(obj)

        dispatch[_ReconstructMarker] = _save_marker

    return OfficialPickler(fh, protocol=4)


def _state(module, attrs: dict, children: dict, init_kwargs: dict) -> dict:
    """An nn.Module __dict__ as the official pickles hold it: parameters, buffers, child modules, attributes."""
    from collections import OrderedDict

    params = OrderedDict((k, v) for k, v in module._parameters.items())
    buffers = OrderedDict((k, v) for k, v in module._buffers.items())
    hooks = ("_backward_pre_hooks", "_backward_hooks", "_forward_hooks", "_forward_hooks_with_kwargs",
             "_forward_hooks_always_called", "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs",
             "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")
    return {"training": False, "_parameters": params, "_buffers": buffers, "_non_persistent_buffers_set": set(),
            **{h: OrderedDict() for h in hooks}, "_is_full_backward_hook": None,
            "_modules": OrderedDict(children), **attrs, "_init_args": (), "_init_kwargs": init_kwargs}


def _np2(v):
    import numpy as np

    return np.broadcast_to(np.asarray(v), [2])


def _fc(module, spec: dict) -> _Persistent:
    import numpy as np

    attrs = {"in_features": spec["in_features"], "out_features": spec["out_features"],
             "activation": spec["activation"], "weight_gain": np.float64(spec["weight_gain"]),
             "bias_gain": spec["bias_gain"]}
    return _Persistent("FullyConnectedLayer", _state(module, attrs, {}, {k: spec[k] for k in (
        "in_features", "out_features", "activation")}))


def official_network_pickle(model, spec: dict, hparams: dict, path: Path, extra: dict | None = None) -> None:
    """Write `model` (generators.sgxl_net.StyleGANXL) as an official StyleGAN-XL network pickle."""
    import numpy as np

    mp, sy = model.mapping, model.synthesis
    mspec, sspec = spec["mapping"], spec["synthesis"]
    mchildren = {"embed": mp.embed, "embed_proj": _fc(mp.embed_proj, mspec["fc"]["embed_proj"])}
    mchildren.update({f"fc{i}": _fc(getattr(mp, f"fc{i}"), mspec["fc"][f"fc{i}"]) for i in range(mp.num_layers)})
    mapping = _Persistent("MappingNetwork", _state(mp, {k: mspec[k] for k in ("z_dim", "c_dim", "w_dim", "num_ws",
                                                                            "num_layers")} | {"w_avg_beta": 0.998},
                                                   mchildren, {"num_layers": mp.num_layers}))
    ispec = sspec["input"]
    inp = _Persistent("SynthesisInput", _state(sy.input, {
        "w_dim": ispec["w_dim"], "channels": ispec["channels"], "size": _np2(ispec["size"][0]),
        "sampling_rate": np.float64(ispec["sampling_rate"]), "bandwidth": np.float64(ispec["bandwidth"])},
        {"affine": _fc(sy.input.affine, ispec["affine"])}, {}))
    children = {"input": inp}
    for lspec in sspec["layers"]:
        layer = getattr(sy, lspec["name"])
        attrs = {k: lspec[k] for k in ("is_torgb", "is_critically_sampled", "use_fp16", "in_channels", "out_channels",
                                       "in_sampling_rate", "out_sampling_rate", "conv_kernel", "conv_clamp",
                                       "up_factor", "down_factor", "padding")}
        attrs.update({k: np.float64(lspec[k]) for k in ("in_cutoff", "out_cutoff", "in_half_width", "out_half_width")})
        attrs.update(in_size=_np2(lspec["in_size"][0]), out_size=_np2(lspec["out_size"][0]), w_dim=spec["w_dim"],
                     filter_size=6, lrelu_upsampling=2, use_radial_filters=False, magnitude_ema_beta=0.999)
        children[lspec["name"]] = _Persistent("SynthesisLayer", _state(layer, attrs, {
            "affine": _fc(layer.affine, lspec["affine"])}, {}))
    synthesis = _Persistent("SynthesisNetwork", _state(sy, {
        "w_dim": spec["w_dim"], "num_ws": sspec["num_ws"], "img_resolution": sspec["img_resolution"],
        "img_channels": sspec["img_channels"], "num_layers": len(sspec["layers"]) - 1, "num_critical": 2,
        "margin_size": 10, "output_scale": sspec["output_scale"], "num_fp16_res": 4,
        "layer_names": [lay["name"] for lay in sspec["layers"]]}, children, {}))
    init_kwargs = {k: hparams[k] for k in ("z_dim", "c_dim", "w_dim", "img_resolution")} | {"img_channels": 3}
    g = _Persistent("Generator", _state(model, {k: spec[k] for k in ("z_dim", "c_dim", "w_dim", "img_resolution",
                                                                     "img_channels")} | {"num_ws": sspec["num_ws"]},
                                        {"mapping": mapping, "synthesis": synthesis}, init_kwargs))
    data = {"G": g, "D": torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), "G_ema": g, "augment_pipe": None,
            "training_set_kwargs": {"resolution": spec["img_resolution"], "use_labels": True}, **(extra or {})}
    with open(path, "wb") as fh:
        _official_pickler(fh).dump(data)


def tiny_stylegan_xl(seed: int = 0):
    """(model, spec) of a tiny random StyleGAN-XL with non-trivial averages and magnitudes."""
    from generators.sgxl_net import StyleGANXL, spec_from_hyperparameters

    spec, filters = spec_from_hyperparameters(**TINY_SGXL_HPARAMS)
    model = StyleGANXL(spec)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.named_parameters():
            t.copy_(torch.randn(t.shape, generator=g))
        for lname, (fu, fd) in filters.items():
            layer = getattr(model.synthesis, lname)
            layer.magnitude_ema.fill_(float(torch.rand(1, generator=g)) + 0.5)
            for buf, f in (("up_filter", fu), ("down_filter", fd)):
                if f is not None:
                    getattr(layer, buf).copy_(f)
        inp = model.synthesis.input  # the official initialisation of the Fourier features
        freqs = torch.randn([inp.channels, 2], generator=g)
        radii = freqs.square().sum(dim=1, keepdim=True).sqrt()
        inp.freqs.copy_(freqs / (radii * radii.square().exp().pow(0.25)) * inp.bandwidth)
        inp.phases.copy_(torch.rand([inp.channels], generator=g) - 0.5)
        model.mapping.w_avg.copy_(torch.randn(model.mapping.w_avg.shape, generator=g) * 0.1)
    return model.eval(), spec


def build_stylegan_xl(out_dir: Path) -> None:
    """out_dir/network.pkl: a tiny StyleGAN-XL written as the official training code pickles it."""
    model, spec = tiny_stylegan_xl()
    official_network_pickle(model, spec, TINY_SGXL_HPARAMS, Path(out_dir) / "network.pkl")
