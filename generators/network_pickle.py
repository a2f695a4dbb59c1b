"""Read StyleGAN-XL / StyleGAN3 network pickles without executing anything from the file.

An official network pickle (`pickle.dump({'G': ..., 'D': ..., 'G_ema': ..., ...})`) rebuilds every
network by calling `torch_utils.persistence._reconstruct_persistent_obj`, which *executes the Python
source code stored inside the pickle*. `NetworkPickleReader` is a `pickle.Unpickler` whose `find_class`
hands out only:

  * inert stand-ins: `_reconstruct_persistent_obj` becomes a record of (class name, state) whose stored
    source is kept as text and never run; classes of the networks' own packages (torch.nn modules,
    timm, the official `training.` / `pg_modules.` / `dnnlib` classes) become empty records that
    only store their state, and are never imported;
  * tensors: `torch.storage._load_from_bytes` becomes `torch.load(weights_only=True)` on the embedded
    bytes, `torch._utils._rebuild_tensor_v2` / `_rebuild_parameter` rebuild plain tensors;
  * plain data: OrderedDict, set, numpy arrays and scalars of non-object dtypes, `_codecs.encode` for
    latin-1 (how protocol 2 stores bytes).

Any other global (os.system, builtins.eval, subprocess, getattr, ...) raises `UnsafePickleError` at the
moment the pickle names it, before it could be called; persistent ids are refused too.
`extract_generator` then walks the records of `G_ema` into a spec (hyperparameters) and a state dict.
"""
from __future__ import annotations

import io
import pickle
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from fakeforge.config import ConfigError

#: packages whose classes may appear in a network pickle as data (they become inert records, never imported)
INERT_PREFIXES = ("torch.nn.modules.", "timm.", "training.", "pg_modules.", "feature_networks.", "dnnlib.",
                  "torch_utils.")


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asks for something that could run code; it is refused and nothing from it runs."""


class Inert:
    """An object of a class the pickle names: only its state is kept (nothing of the class is imported)."""

    _qualname = "?"

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state

    def __repr__(self) -> str:
        return f"<inert {self._qualname}>"


class InertDict(dict):
    """A dict subclass named by the pickle (e.g. dnnlib.EasyDict): kept as a plain dict."""

    def __setstate__(self, state):
        self.state = state


class Persistent:
    """A `persistence.persistent_class` object: class name and state; its module source is never executed."""

    def __init__(self, class_name: str, state: dict, source_chars: int):
        self.class_name, self.state, self.source_chars = class_name, state, source_chars

    def __repr__(self) -> str:
        return f"<persistent {self.class_name}>"


def _reconstruct_persistent_obj(meta) -> Persistent:
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict):
        raise UnsafePickleError("a persistent object without the expected {type: 'class', class_name, state} meta")
    return Persistent(str(meta.get("class_name")), meta["state"], len(str(meta.get("module_src") or "")))


def _load_storage(data):
    if not isinstance(data, (bytes, bytearray)):
        raise UnsafePickleError("_load_from_bytes expects bytes")
    return torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, *rest):
    if hooks:
        raise UnsafePickleError("tensor with backward hooks refused")
    if isinstance(storage, torch.storage.TypedStorage):
        with warnings.catch_warnings():  # torch.load returns the legacy TypedStorage the pickle stored
            warnings.simplefilter("ignore", UserWarning)
            dtype, storage = storage.dtype, storage.untyped()
    else:
        raise UnsafePickleError(f"tensor storage of unexpected type {type(storage).__name__}")
    return torch.empty((0,), dtype=dtype).set_(storage, offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, hooks=None, *rest):
    if not isinstance(data, torch.Tensor) or hooks:
        raise UnsafePickleError("parameter that is not a plain tensor refused")
    return data


def _encode(text, encoding="utf-8"):
    if encoding != "latin1" or not isinstance(text, str):
        raise UnsafePickleError(f"_codecs.encode with {encoding!r} refused")
    return text.encode("latin1")


def _check_dtype(dtype, align=False, copy=False) -> np.dtype:
    if isinstance(dtype, str) and dtype.startswith("O"):
        raise UnsafePickleError("numpy object arrays refused")
    dtype = np.dtype(dtype, align, copy) if not isinstance(dtype, np.dtype) else dtype
    if dtype.hasobject:
        raise UnsafePickleError("numpy object arrays refused")
    return dtype


class _NdArray:
    """Stand-in for numpy.ndarray during unpickling: rebuilt from raw bytes by `__setstate__`."""

    def __setstate__(self, state):
        _version, shape, dtype, fortran, raw = state
        dtype = _check_dtype(dtype)
        if not isinstance(raw, (bytes, bytearray)):
            raise UnsafePickleError("numpy array data that is not raw bytes refused")
        arr = np.frombuffer(bytes(raw), dtype=dtype)
        self.value = arr.reshape(shape, order="F" if fortran else "C").copy()


def _ndarray_reconstruct(cls, shape, typecode):
    if cls is not _NdArray:
        raise UnsafePickleError("numpy _reconstruct of a class other than ndarray refused")
    return _NdArray()


def _scalar(dtype, data=None):
    dtype = _check_dtype(dtype)
    return np.frombuffer(bytes(data), dtype=dtype)[0]


def _reconstructor(cls, base, state=None):
    if not (isinstance(cls, type) and issubclass(cls, (Inert, InertDict))) or state is not None:
        raise UnsafePickleError("copyreg._reconstructor of a class that is not an inert record refused")
    return cls.__new__(cls)


_SAFE = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("_codecs", "encode"): _encode,
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("builtins", "object"): object,
    ("numpy", "ndarray"): _NdArray,
    ("numpy", "dtype"): _check_dtype,
    ("numpy.core.multiarray", "_reconstruct"): _ndarray_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _ndarray_reconstruct,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
}


class NetworkPickleReader(pickle.Unpickler):
    """A pickle.Unpickler that builds data and inert records only (see the module docstring)."""

    def find_class(self, module: str, name: str):
        if (module, name) in _SAFE:
            return _SAFE[(module, name)]
        if module.startswith(INERT_PREFIXES) and name.isidentifier() and not name.startswith("_"):
            base = InertDict if (module, name) == ("dnnlib.util", "EasyDict") else Inert
            return type(name, (base,), {"_qualname": f"{module}.{name}"})
        raise UnsafePickleError(f"refused: the pickle asks for '{module}.{name}', which is neither a tensor, plain "
                                "data nor a known network class; nothing from the file was run")

    def persistent_load(self, pid):
        raise UnsafePickleError("persistent ids are refused")


def read_network_pickle(path: str | Path):
    """The top-level object of a network pickle, read with NetworkPickleReader."""
    with open(path, "rb") as fh:
        return NetworkPickleReader(fh).load()


def _plain(value):
    """Numpy stand-ins and scalars -> plain Python values (lists for arrays)."""
    if isinstance(value, _NdArray):
        return value.value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _module_state(obj, where: str) -> dict:
    """The nn.Module state (__dict__) of a persistent or inert record."""
    state = obj.state if isinstance(obj, (Persistent, Inert)) else None
    if not isinstance(state, dict) or "_parameters" not in state:
        raise ConfigError(f"network pickle: '{where}' is not a torch module record (got {type(obj).__name__})")
    return state


def _tensors(obj, prefix: str, out: dict) -> None:
    """Parameters and buffers of a record tree into `out` under state-dict names (None buffers skipped)."""
    state = _module_state(obj, prefix or "G_ema")
    for group in ("_parameters", "_buffers"):
        for name, t in (state.get(group) or {}).items():
            if t is not None:
                out[f"{prefix}{name}"] = t
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            _tensors(child, f"{prefix}{name}.", out)


def _fc_spec(obj, where: str) -> dict:
    s = _module_state(obj, where)
    return {"in_features": int(s["in_features"]), "out_features": int(s["out_features"]),
            "activation": str(s["activation"]), "weight_gain": float(_plain(s["weight_gain"])),
            "bias_gain": float(_plain(s["bias_gain"])), "bias": s["_parameters"].get("bias") is not None}


_LAYER_KEYS = ("is_torgb", "is_critically_sampled", "use_fp16", "in_channels", "out_channels", "in_size", "out_size",
               "in_sampling_rate", "out_sampling_rate", "in_cutoff", "out_cutoff", "in_half_width", "out_half_width",
               "conv_kernel", "conv_clamp", "up_factor", "down_factor", "padding")


def extract_generator(data, key: str = "G_ema") -> tuple[dict, dict]:
    """(spec, state dict) of the StyleGAN3-style generator `key` of an unpickled network pickle."""
    if not isinstance(data, dict) or key not in data:
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ConfigError(f"network pickle has no '{key}' (found {found})")
    g = data[key]
    gs = _module_state(g, key)
    cls = getattr(g, "class_name", "?")
    mods = gs.get("_modules") or {}
    if not {"mapping", "synthesis"} <= set(mods):
        raise ConfigError(f"network pickle: {key} ({cls}) has no mapping/synthesis (found modules {sorted(mods)})")
    ms, ss = _module_state(mods["mapping"], "mapping"), _module_state(mods["synthesis"], "synthesis")
    mm = ms.get("_modules") or {}
    c_dim = int(ms["c_dim"])
    mapping = {k: int(ms[k]) for k in ("z_dim", "c_dim", "w_dim", "num_ws", "num_layers")}
    mapping["fc"] = {name: _fc_spec(child, f"mapping.{name}") for name, child in mm.items()
                     if name.startswith("fc") or name == "embed_proj"}
    mapping["embed"] = None
    if c_dim > 0:
        emb = _module_state(mm["embed"], "mapping.embed")
        mapping["embed"] = {"num_embeddings": int(emb["num_embeddings"]), "embedding_dim": int(emb["embedding_dim"])}
    sm = ss.get("_modules") or {}
    ins = _module_state(sm["input"], "synthesis.input")
    layer_names = [str(n) for n in ss["layer_names"]]
    layers = []
    for name in layer_names:
        ls = _module_state(sm[name], f"synthesis.{name}")
        layer = {k: _plain(ls[k]) for k in _LAYER_KEYS}
        layer["name"] = name
        layer["affine"] = _fc_spec(ls["_modules"]["affine"], f"synthesis.{name}.affine")
        for buf in ("up_filter", "down_filter"):
            t = ls["_buffers"].get(buf)
            layer[f"{buf}_shape"] = None if t is None else list(t.shape)
        layers.append(layer)
    synthesis = {"num_ws": int(ss["num_ws"]), "img_resolution": int(ss["img_resolution"]),
                 "img_channels": int(ss["img_channels"]), "output_scale": float(_plain(ss["output_scale"])),
                 "layers": layers,
                 "input": {"w_dim": int(ins["w_dim"]), "channels": int(ins["channels"]), "size": _plain(ins["size"]),
                           "sampling_rate": float(_plain(ins["sampling_rate"])),
                           "bandwidth": float(_plain(ins["bandwidth"])),
                           "affine": _fc_spec(ins["_modules"]["affine"], "synthesis.input.affine")}}
    spec = {"class_name": cls, "z_dim": int(gs["z_dim"]), "c_dim": int(gs["c_dim"]), "w_dim": int(gs["w_dim"]),
            "img_resolution": int(gs["img_resolution"]), "img_channels": int(gs["img_channels"]),
            "mapping": mapping, "synthesis": synthesis}
    state: dict = {}
    _tensors(g, "", state)
    return spec, state
