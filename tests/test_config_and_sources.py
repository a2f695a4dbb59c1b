"""Config plumbing, registries and the COCO / Flickr30k readers."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
from builder_helpers import write_coco

from fakeforge.config import ConfigError, apply_overrides, config_hash, from_dict
from fakeforge.registry import Registry, UnknownNameError
from fakeforge.sources import SourceConfig, load_records
from fakeforge.sources.coco import read_coco_captions
from fakeforge.sources.flickr30k import read_flickr30k


@dataclass
class Inner:
    size: int = 1


@dataclass
class Outer:
    name: str = "x"
    ratio: float = 0.5
    inner: Inner = field(default_factory=Inner)
    tags: list[str] = field(default_factory=list)


def test_overrides_parse_yaml_values_and_list_indices():
    data = {"a": {"b": 1}, "sets": [{"n": 1}, {"n": 2}]}
    out = apply_overrides(data, ["a.b=3", "a.c=[1, 2]", "sets.1.n=true", "new.key=hello"])
    assert out == {"a": {"b": 3, "c": [1, 2]}, "sets": [{"n": 1}, {"n": True}], "new": {"key": "hello"}}
    assert data["a"]["b"] == 1  # input untouched
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(data, ["novalue"])
    with pytest.raises(ConfigError, match="index"):
        apply_overrides(data, ["sets.5.n=1"])


def test_from_dict_names_the_bad_key_and_value():
    cfg = from_dict(Outer, {"ratio": 1, "inner": {"size": 4}, "tags": ["a"]})
    assert cfg.ratio == 1.0 and cfg.inner.size == 4
    with pytest.raises(ConfigError, match=r"'inner.size' = 'big' must be an integer"):
        from_dict(Outer, {"inner": {"size": "big"}})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['colour'\]"):
        from_dict(Outer, {"colour": "red"})
    assert config_hash({"a": 1, "b": 2}) == config_hash({"b": 2, "a": 1})


def test_registry_lists_valid_names_and_close_matches():
    reg = Registry("widget")
    reg.register("alpha", "json:dumps")
    reg.register("beta", "json:loads")
    assert reg.get("alpha") is json.dumps
    with pytest.raises(UnknownNameError) as err:
        reg.get("alpah")
    assert "Did you mean 'alpha'" in str(err.value) and "alpha, beta" in str(err.value)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("alpha", "json:loads")


def test_coco_reader_and_deterministic_selection(tmp_path):
    captions, images = write_coco(tmp_path, n=6, captions=3)
    by_image = read_coco_captions(captions, images)
    assert len(by_image) == 6 and all(len(v) == 3 for v in by_image.values())
    cfg = SourceConfig(kind="coco", captions_file=str(captions), images_dir=str(images), limit=4, seed=1)
    a, b = load_records(cfg, tmp_path), load_records(cfg, tmp_path)
    assert a == b and len(a) == 4 and len({r.image_id for r in a}) == 4
    other = load_records(SourceConfig(kind="coco", captions_file=str(captions), limit=4, seed=2), tmp_path)
    assert {r.image_id for r in other} != {r.image_id for r in a} or [r.caption_id for r in other] != [
        r.caption_id for r in a]
    every = load_records(SourceConfig(kind="coco", captions_file=str(captions), captions_per_image="all"), tmp_path)
    assert len(every) == 18
    assert a[0].image_path.endswith(".jpg")


@pytest.mark.parametrize("content,message", [
    ("{not json", "not valid JSON"),
    (json.dumps({"images": []}), "'images' and 'annotations'"),
    (json.dumps({"images": [{"id": 1}], "annotations": []}), "images\\[0\\] needs 'id' and 'file_name'"),
    (json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"id": 1, "image_id": 2,
                                                                                "caption": "x"}]}),
     "unknown image_id 2"),
])
def test_coco_reader_rejects_malformed_files(tmp_path, content, message):
    path = tmp_path / "captions.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        read_coco_captions(path, None)
    with pytest.raises(ConfigError, match="not found"):
        read_coco_captions(tmp_path / "missing.json", None)


def test_flickr30k_karpathy_json_and_results_csv(tmp_path):
    karpathy = {"dataset": "flickr30k", "images": [
        {"filename": "1000092795.jpg", "split": "test", "sentences": [{"raw": "Two young guys", "sentid": 0},
                                                                       {"raw": "Two men outside", "sentid": 1}]},
        {"filename": "10002456.jpg", "split": "train", "sentences": [{"raw": "Several men", "sentid": 5}]}]}
    path = tmp_path / "dataset_flickr30k.json"
    path.write_text(json.dumps(karpathy))
    test_only = read_flickr30k(path, tmp_path, split="test")
    assert list(test_only) == ["1000092795"] and len(test_only["1000092795"]) == 2
    assert len(read_flickr30k(path, tmp_path)) == 2
    csv_path = tmp_path / "results.csv"
    csv_path.write_text("image_name| comment_number| comment\n1000092795.jpg| 0| Two young guys , with | a pipe\n"
                        "1000092795.jpg| 1| Two men\n")
    rows = read_flickr30k(csv_path, tmp_path)
    assert [r.caption for r in rows["1000092795"]] == ["Two young guys , with | a pipe", "Two men"]
    bad = tmp_path / "bad.csv"
    bad.write_text("name,caption\nx.jpg,hi\n")
    with pytest.raises(ConfigError, match="header"):
        read_flickr30k(bad, tmp_path)


@pytest.mark.parametrize("name", ["antifakeprompt_train", "antifakeprompt_train_lama", "antifakeprompt_test",
                                  "cocofake"])
def test_paper_configs_store_reals_and_fakes_at_one_size_and_encoding(name):
    """What the README promises: every set of a paper config comes out at the same size with the same final
    encoding, whether it starts as a 640x427 COCO photo, a 500x333 Flickr photo or a 768/1024 px fake."""
    import io

    from PIL import Image

    from fakeforge.builder.config import resolve_build_collect

    resolved, _problems = resolve_build_collect(name)             # (missing checkpoints do not matter here)
    policy = resolved.config.image
    outputs = set()
    for size in ((640, 427), (427, 640), (500, 333), (768, 768), (1024, 1024)):
        data, info = policy.encode(Image.new("RGB", size, (120, 80, 40)))
        img = Image.open(io.BytesIO(data))
        outputs.add((img.size, img.format, info["quality"], info["width"], info["height"]))
    assert outputs == {((256, 256), "JPEG", 95, 256, 256)}
