"""A failed set is a failed build: first-batch stop, failure budget, verify on failures and empty sets,
programming errors never become per-sample data, per-sample seeds derived from the key."""
from __future__ import annotations

import json
import tarfile

import pytest
from builder_helpers import write_build_config, write_coco

from fakeforge.builder.config import resolve_build
from fakeforge.builder.plan import sample_seed
from fakeforge.builder.runner import BuildFailed, build
from fakeforge.cli import main as cli_main
from fakeforge.config import ConfigError
from fakeforge.shards.verify import VerifyError, verify_dataset
from fakeforge.sources import Record
from fakeforge.tiny import build_tiny
from generators import generator_config, load_preset
from generators.base import GeneratorFailure, GenRequest, is_sample_error

SD2 = {"name": "sd2", "generator": "sd2"}


def _cli_build(cfg, tiny_dir, *extra):
    return cli_main(["build", "--config", str(cfg), "--tiny", "--tiny-dir", tiny_dir, "--no-progress", *extra])


def _coco_with_bad_images(root, n=8, bad=(2, 5)):
    captions, images = write_coco(root, n=n, captions=1)
    for i in bad:
        (images / f"{i:012d}.jpg").write_bytes(b"not a jpeg")
    return {"kind": "coco", "captions_file": str(captions), "images_dir": str(images)}


def test_broken_call_kwargs_stop_the_build_naming_the_set(tmp_path, tiny_dir, capsys):
    sets = [{"name": "real", "generator": "real"},
            {"name": "sd2", "generator": {"preset": "sd2", "call_kwargs": {"num_images_per_prompt": 2}}}]
    cfg = write_build_config(tmp_path / "c.yaml", tmp_path / "out", sets, {"kind": "demo", "limit": 8})
    assert _cli_build(cfg, tiny_dir) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fakeforge build: error: set 'sd2': the generator failed ")
    assert "ValueError" in err[0] and "generators" in err[0]
    assert not list((tmp_path / "out" / "sd2").glob("*.done.json")), "stopped at the first batch"
    assert cli_main(["verify", str(tmp_path / "out")]) == 1


def test_same_error_on_every_sample_of_the_first_batch_stops_the_set(tmp_path, tiny_dir, capsys):
    """Impossible mask bounds fail each sample with one identical SampleError: a config problem, not data."""
    captions, images = write_coco(tmp_path / "coco", n=6, captions=1)
    src = {"kind": "coco", "captions_file": str(captions), "images_dir": str(images)}
    sets = [{"name": "ip", "generator": {"preset": "sd2_inpaint", "mask": {"min_area": 0.985, "max_area": 0.99,
                                                                          "max_tries": 2}}}]
    cfg = write_build_config(tmp_path / "c.yaml", tmp_path / "out", sets, src, shards={"max_count": 6})
    assert _cli_build(cfg, tiny_dir) == 1
    err = capsys.readouterr().err
    assert "set 'ip': the first 2 sample(s) all failed in the generator with the same error" in err
    assert "could not draw a 'box' mask with area in [0.985, 0.99] on a 40x32 image" in err
    assert not (tmp_path / "out" / "ip" / "000000.done.json").exists()


def test_failure_budget_fails_the_build_and_verify_then_retry_fixes_it(tmp_path, tiny_dir, capsys):
    src = _coco_with_bad_images(tmp_path / "coco")
    cfg = write_build_config(tmp_path / "c.yaml", tmp_path / "out", [{"name": "real", "generator": "real"}], src)
    assert _cli_build(cfg, tiny_dir) == 1                       # 2 of 8 failed: 25 % > the default 5 %
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fakeforge build: error: set 'real': 2 of 8 samples failed (25.0% > max_failed_fraction 5%); "
                   "most common errors: 2x ImageLoadError: cannot read image '...': UnidentifiedImageError: "
                   "cannot identify image file '...'"]
    with pytest.raises(VerifyError, match=r"set 'real': 2 of 8 samples failed, over the build's max_failed_fraction"):
        verify_dataset(tmp_path / "out")
    assert cli_main(["verify", str(tmp_path / "out")]) == 1

    loose = write_build_config(tmp_path / "l.yaml", tmp_path / "out", [{"name": "real", "generator": "real"}], src,
                               max_failed_fraction=0.25)        # the budget does not enter the config hash
    assert _cli_build(loose, tiny_dir) == 0
    capsys.readouterr()
    assert cli_main(["verify", str(tmp_path / "out")]) == 0
    assert "(real=6 (2 failed)); 2 failed samples within the build's budget" in capsys.readouterr().out

    write_coco(tmp_path / "coco", n=8, captions=1)               # the user fixes the images
    assert _cli_build(cfg, tiny_dir, "--retry-failed") == 0
    assert verify_dataset(tmp_path / "out")["sets"] == {"real": 8}


def test_a_set_with_no_sample_is_an_error_even_with_an_unlimited_budget(tmp_path, tiny_dir, capsys):
    src = _coco_with_bad_images(tmp_path / "coco", n=3, bad=(1, 2, 3))
    cfg = write_build_config(tmp_path / "c.yaml", tmp_path / "out", [{"name": "real", "generator": "real"}], src,
                             max_failed_fraction=1.0)
    assert _cli_build(cfg, tiny_dir) == 1
    assert "fakeforge build: error: set 'real' holds 0 samples: all 3 failed; most common errors: 3x " \
        "ImageLoadError" in capsys.readouterr().err
    with pytest.raises(VerifyError, match=r"set 'real' holds 0 samples \(3 failed"):
        verify_dataset(tmp_path / "out")


def test_programming_errors_are_never_per_sample_data(tiny_dir):
    build_tiny("sd2", tiny_dir)
    reqs = [GenRequest(key=f"k{i}", prompt="a cat", seed=i) for i in range(2)]
    for call_kwargs, kind in (({"guidance_scale": "high"}, "TypeError"), ({"num_images_per_prompt": 2}, "ValueError")):
        cls, cfg = generator_config({**load_preset("sd2"), "call_kwargs": call_kwargs}, tiny=True, tiny_root=tiny_dir)
        gen = cls(cfg, "cpu")
        gen.load()
        with pytest.raises(GeneratorFailure, match=f"^{kind}: "):
            gen.generate_safe(reqs)
        with pytest.raises(GeneratorFailure, match=f"^{kind}: "):
            gen.generate_safe(reqs[:1])
    import torch

    assert is_sample_error(torch.OutOfMemoryError("CUDA out of memory"))
    assert not any(is_sample_error(e) for e in (TypeError("x"), AttributeError("x"), ImportError("x"), ValueError("x")))
    with pytest.raises(ConfigError, match=r"generator.call_kwargs: StableDiffusionPipeline takes no argument\(s\) "
                                          r"\['not_an_argument'\]; valid: .*guidance_scale"):
        generator_config({**load_preset("sd2"), "call_kwargs": {"not_an_argument": 1}})


def test_captions_that_are_not_strings_are_per_sample_errors(tmp_path, tiny_dir):
    captions, images = write_coco(tmp_path / "coco", n=5, captions=1)
    data = json.loads(captions.read_text())
    for ann, bad in zip(data["annotations"][1:], (None, 5, ["a", "list"], "   ")):
        ann["caption"] = bad
    captions.write_text(json.dumps(data))
    src = {"kind": "coco", "captions_file": str(captions), "images_dir": str(images)}
    cfg = write_build_config(tmp_path / "c.yaml", tmp_path / "out", [SD2], src, max_failed_fraction=1.0,
                             shards={"max_count": 5})
    summary = build(resolve_build(str(cfg), tiny=True, tiny_root=tiny_dir), progress=False)
    assert summary["written"] == 1 and summary["failed"] == 4
    stats = json.loads((tmp_path / "out" / "sd2" / "000000.done.json").read_text())
    assert sorted(f["error"] for f in stats["failures"]) == sorted([
        "caption None is not a non-empty string", "caption 5 is not a non-empty string",
        "caption ['a', 'list'] is not a non-empty string", "caption '   ' is not a non-empty string"])


def test_per_sample_seeds_differ_and_derive_from_the_key(tmp_path, tiny_dir):
    captions, images = write_coco(tmp_path / "coco", n=4, captions=2)
    src = {"kind": "coco", "captions_file": str(captions), "images_dir": str(images), "captions_per_image": "all"}
    cfg = write_build_config(tmp_path / "c.yaml", tmp_path / "out", [SD2], src, seed=11, shards={"max_count": 8})
    build(resolve_build(str(cfg), tiny=True, tiny_root=tiny_dir), progress=False)
    with tarfile.open(tmp_path / "out" / "sd2" / "000000.tar") as tf:
        metas = [json.loads(tf.extractfile(m).read()) for m in tf if m.name.endswith(".json")]
    assert len(metas) == 8
    seeds = [m["seed"] for m in metas]
    assert len(set(seeds)) == 8, "every sample has its own seed"
    for m in metas:
        _set, image_id, caption_id = m["key"].split("-")
        assert (image_id, caption_id) == (m["source_image_id"], str(m["caption_id"]))
        assert m["seed"] == sample_seed("sd2", Record(image_id, caption_id, "", None), 11)
        assert m["seed"] != sample_seed("sd2", Record(image_id, caption_id, "", None), 12)


def test_build_failed_is_raised_in_process(tmp_path, tiny_dir):
    src = _coco_with_bad_images(tmp_path / "coco", n=4, bad=(4,))
    cfg = write_build_config(tmp_path / "c.yaml", tmp_path / "out", [{"name": "real", "generator": "real"}], src)
    with pytest.raises(BuildFailed, match=r"^set 'real': 1 of 4 samples failed"):
        build(resolve_build(str(cfg)), progress=False)
