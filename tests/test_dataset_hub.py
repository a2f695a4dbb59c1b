"""Hugging Face `datasets` on a built folder: `load_dataset(OUT)` gives every set with one schema, a set's
config gives that set; the card describes the manifest's tars only (a stray tar is ignored, named once)."""
from __future__ import annotations

import json
import logging

import pytest
import yaml
from builder_helpers import set_samples, write_build_config

from fakeforge.builder.config import resolve_build
from fakeforge.builder.runner import build

datasets = pytest.importorskip("datasets")

# a real set (JPEG), an inpainting set (mask.png members, diffusers settings) and a backdoor set (PNG unless
# told otherwise, its own JSON fields: distances, success, patch box)
SETS = [{"name": "photos", "generator": "real"}, {"name": "sd2ip", "generator": "sd2_inpaint"},
        {"name": "backdoor", "generator": "backdoor_badnets"}]


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_dir):
    root = tmp_path_factory.mktemp("hub")
    cfg = write_build_config(root / "b.yaml", root / "out", SETS, {"kind": "demo", "limit": 3},
                             image={"format": "jpeg", "quality": 95, "size": 32, "resize": "center_crop"})
    build(resolve_build(str(cfg), tiny=True, tiny_root=tiny_dir), progress=False)
    return root, cfg


def _load(out, *args, cache):
    return datasets.load_dataset(str(out), *args, split="train", cache_dir=str(cache))


def test_load_dataset_gives_every_set_with_one_schema_and_each_config_one_set(built):
    root, _cfg = built
    out = root / "out"
    every = _load(out, cache=root / "hf1")
    assert len(every) == 9
    flat = every.flatten()
    assert {"json.label", "json.set", "jpg", "png", "mask.png"} <= set(flat.column_names)
    by_set = {}
    for s, label in zip(flat["json.set"], flat["json.label"]):
        by_set.setdefault(s, set()).add(label)
    assert by_set == {"photos": {"real"}, "sd2ip": {"fake"}, "backdoor": {"fake"}}
    row = next(r for r in every if r["json"]["set"] == "backdoor")
    assert row["png"].size == (32, 32) and row["jpg"] is None
    row = next(r for r in every if r["json"]["set"] == "sd2ip")
    assert row["jpg"].size == (32, 32) and row["mask.png"] is not None and row["json"]["seed"] >= 0
    for name in ("sd2ip", "backdoor"):
        one = _load(out, name, cache=root / "hf1")
        assert len(one) == 3 and {r["set"] for r in one["json"]} == {name}
    assert "linf" in _load(out, "backdoor", cache=root / "hf1")[0]["json"], "a set's config keeps all its metadata"

    # the default config keeps every scalar (or list-of-scalar) field that all samples carry with one type,
    # with the values the tars hold (nested settings differ per generator: those stay in the set configs)
    in_tars = {key: json.loads(members["json"]) for folder in sorted(out.iterdir()) if folder.is_dir()
               for key, members in set_samples(folder).items()}

    def kind(value):
        return ("list", *sorted({type(v).__name__ for v in value})) if isinstance(value, list) else type(value).__name__

    shared = {k for k in set.intersection(*(set(meta) for meta in in_tars.values()))
              if len({kind(meta[k]) for meta in in_tars.values() if meta[k] is not None} - {"dict"}) == 1}
    assert {"label", "set", "caption_id", "seed", "generated_size", "source_size"} <= shared
    assert len(in_tars) == len(every)
    for row in every:
        meta = in_tars[row["__key__"]]
        assert {k: row["json"][k] for k in shared} == {k: meta[k] for k in shared}, row["__key__"]


def test_a_stray_tar_is_left_out_of_the_card_and_named_once(built, tiny_dir, caplog):
    root, cfg = built
    out = root / "out"
    stray = out / "sd2ip" / "000001.tar"
    stray.write_bytes((out / "sd2ip" / "000000.tar").read_bytes()[:3000])      # an interrupted copy
    with caplog.at_level(logging.WARNING, logger="fakeforge.builder"):
        build(resolve_build(str(cfg), tiny=True, tiny_root=tiny_dir), progress=False)
    lines = [r.getMessage() for r in caplog.records if "sd2ip/000001.tar" in r.getMessage()]
    assert len(lines) == 1 and "ignored 1 file(s) the manifest does not list" in lines[0], lines
    assert not [r for r in caplog.records if "could not write the dataset card" in r.getMessage()]
    text = (out / "README.md").read_text()
    header = yaml.safe_load(text.split("---")[1])
    files = [p for c in header["configs"] for d in c["data_files"] for p in d["path"]]
    assert "sd2ip/000001.tar" not in files and "sd2ip/000000.tar" in files
    assert "Shortcut audit" in text
    assert len(_load(out, cache=root / "hf2")) == 9
    stray.unlink()
