"""End-to-end dataset builds on tiny twins: determinism, resume after interruption, verify, bad input."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from builder_helpers import write_build_config, write_coco
from PIL import Image

from fakeforge.builder.config import resolve_build
from fakeforge.builder.runner import build
from fakeforge.cli import main as cli_main
from fakeforge.config import ConfigError
from fakeforge.locking import OutputLock
from fakeforge.shards.reader import find_sets
from fakeforge.shards.verify import VerifyError, verify_dataset

ROOT = Path(__file__).resolve().parent.parent
SETS = [{"name": "real", "generator": "real"}, {"name": "sd2", "generator": "sd2"}]


def _keys_and_bytes(out: Path) -> dict[str, bytes]:
    found = {}
    for tars in find_sets(out).values():
        for t in tars:
            with tarfile.open(t) as tf:
                for m in tf:
                    if m.name.endswith((".png", ".jpg")) and not m.name.endswith(".mask.png"):
                        found[m.name] = tf.extractfile(m).read()
    return found


def _build(cfg_path, tiny_dir, **kw):
    return build(resolve_build(str(cfg_path), tiny=True, tiny_root=tiny_dir, **kw), progress=False)


def _build_retry(cfg_path, tiny_dir):
    return build(resolve_build(str(cfg_path), tiny=True, tiny_root=tiny_dir), progress=False, retry_failed=True)


def test_build_is_deterministic_verified_and_readable(tmp_path, tiny_dir):
    cfg_a = write_build_config(tmp_path / "a.yaml", tmp_path / "a", SETS)
    cfg_b = write_build_config(tmp_path / "b.yaml", tmp_path / "b", SETS)
    summary = _build(cfg_a, tiny_dir)
    _build(cfg_b, tiny_dir)
    assert summary["written"] == 16 and summary["failed"] == 0
    a, b = _keys_and_bytes(tmp_path / "a"), _keys_and_bytes(tmp_path / "b")
    assert len(a) == 16 and a.keys() == b.keys()
    assert a == b, "same config, same hardware and threads: identical image bytes"
    assert verify_dataset(tmp_path / "a")["samples"] == 16
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["sets"]["real"]["label"] == "real" and manifest["sets"]["sd2"]["count"] == 8

    import webdataset as wds

    tars = [str(p) for p in sorted((tmp_path / "a" / "sd2").glob("*.tar"))]
    samples = list(wds.WebDataset(tars, shardshuffle=False, empty_check=False).decode("pil").to_tuple("png", "json"))
    assert len(samples) == 8
    image, meta = samples[0]
    assert image.size == (64, 64) and meta["label"] == "fake" and meta["set"] == "sd2"
    assert meta["model_id"].startswith("tiny-twin:sd2 (of stabilityai/stable-diffusion-2-1")
    assert {"seed", "caption", "source_image_id", "settings", "versions", "set_hash", "image"} <= set(meta)
    assert meta["set_hash"] == manifest["sets"]["sd2"]["set_hash"]
    listing = subprocess.run(["tar", "tf", tars[0]], capture_output=True, text=True, check=True).stdout.split()
    assert len(listing) == 8 and all(n.startswith("sd2-") for n in listing)


def test_rerun_skips_done_shards_and_refuses_other_config(tmp_path, tiny_dir):
    cfg = write_build_config(tmp_path / "c.yaml", tmp_path / "out", SETS)
    _build(cfg, tiny_dir)
    again = _build(cfg, tiny_dir)
    assert again["shards_skipped"] == again["shards_mine"] == 4 and again["written"] == 0
    with pytest.raises(ConfigError, match=r"set 'real' in '.*' was built with other settings .*changed: seed: 0 -> 7"
                                          r".*--rebuild-set real"):
        _build(cfg, tiny_dir, overrides=["seed=7"])


def _run_child(cfg: Path, tiny_dir: str) -> subprocess.Popen:
    env = dict(os.environ, FAKEFORGE_TINY_DIR=tiny_dir, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="2")
    return subprocess.Popen([sys.executable, str(ROOT / "build_dataset.py"), "--config", str(cfg), "--tiny",
                             "--no-progress"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_resume_after_sigint_sigterm_and_kill_9_gives_same_keys(tmp_path, tiny_dir):
    """Ctrl-C (exit 130) and SIGTERM (exit 143) drop the unfinished shard cleanly, with one log line and no
    temp file; kill -9 leaves debris that the rerun clears. The rerun gives the keys of a clean build."""
    sets = [{"name": "sd2", "generator": {"preset": "sd2", "batch_size": 1}}]
    source = {"kind": "demo", "limit": 10}
    clean = write_build_config(tmp_path / "clean.yaml", tmp_path / "clean", sets, source, shards={"max_count": 1})
    _build(clean, tiny_dir)
    cfg = write_build_config(tmp_path / "k.yaml", tmp_path / "killed", sets, source, shards={"max_count": 1})
    set_dir = tmp_path / "killed" / "sd2"
    for sig, wanted, code, line in ((signal.SIGINT, 2, 130, "interrupted (Ctrl-C)"),
                                    (signal.SIGTERM, 4, 143, "terminated (SIGTERM)"), (signal.SIGKILL, 6, -9, None)):
        child = _run_child(cfg, tiny_dir)
        deadline = time.time() + 120
        while time.time() < deadline and len(list(set_dir.glob("*.done.json"))) < wanted:
            time.sleep(0.02)
        child.send_signal(sig)
        out, _ = child.communicate(timeout=60)
        done = len(list(set_dir.glob("*.done.json")))
        assert wanted <= done < 10, f"the child should die mid-build (done shards: {done})"
        assert child.returncode == code, out.decode()[-2000:]
        assert not (tmp_path / "killed" / "manifest.json").exists()
        if line:
            text = out.decode()
            assert text.count(line) == 1 and "Traceback" not in text, text[-2000:]
            assert not list((tmp_path / "killed").rglob("*.tmp")), "no temp file after a clean stop"
    summary = _build(cfg, tiny_dir)                       # the rerun (in-process: one interpreter start less)
    assert summary["shards_skipped"] >= 6 and summary["written"] == 10 - summary["shards_skipped"]
    assert verify_dataset(tmp_path / "killed")["samples"] == 10
    assert _keys_and_bytes(tmp_path / "killed").keys() == _keys_and_bytes(tmp_path / "clean").keys()
    assert not list((tmp_path / "killed").rglob("*.tmp"))


def test_verify_catches_truncated_shard_and_duplicate_key(tmp_path, tiny_dir):
    cfg = write_build_config(tmp_path / "v.yaml", tmp_path / "v", SETS[:1])
    _build(cfg, tiny_dir)
    good = tmp_path / "v"
    dup = tmp_path / "dup"
    shutil.copytree(good, dup)
    manifest = json.loads((dup / "manifest.json").read_text())
    first = manifest["sets"]["real"]["tars"][0]
    shutil.copy(dup / first["name"], dup / "real" / "000099.tar")
    manifest["sets"]["real"]["tars"].append(dict(first, name="real/000099.tar"))
    manifest["sets"]["real"]["count"] += first["count"]
    (dup / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(VerifyError, match="duplicate key .* in shard .*000099.tar"):
        verify_dataset(dup)

    tar = good / first["name"]
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    with pytest.raises(VerifyError, match="000000.tar"):
        verify_dataset(good)
    assert cli_main(["verify", str(good)]) == 1
    assert cli_main(["verify", str(dup), "--no-hash"]) == 1


def test_corrupt_source_image_is_recorded_not_fatal(tmp_path, tiny_dir):
    captions, images = write_coco(tmp_path / "coco", n=4)
    (images / "000000000002.jpg").write_bytes(b"")  # zero-byte image
    src = {"kind": "coco", "captions_file": str(captions), "images_dir": str(images)}
    cfg = write_build_config(tmp_path / "r.yaml", tmp_path / "r", SETS[:1], src, max_failed_fraction=0.25)
    summary = _build(cfg, tiny_dir)
    assert summary["written"] == 3 and summary["failed"] == 1
    stats = json.loads((tmp_path / "r" / "real" / "000000.done.json").read_text())
    assert stats["failures"][0]["key"].startswith("real-2-") and "empty" in stats["failures"][0]["error"]
    assert verify_dataset(tmp_path / "r")["samples"] == 3
    Image.new("RGB", (40, 32), (1, 2, 3)).save(images / "000000000002.jpg")  # the user fixes the file
    assert _build(cfg, tiny_dir)["written"] == 0, "a plain rerun keeps finished shards"
    summary = _build_retry(cfg, tiny_dir)
    assert summary["written"] == 4 and summary["failed"] == 0
    assert verify_dataset(tmp_path / "r")["samples"] == 4


def test_overrides_reach_into_a_set_named_by_preset():
    r = resolve_build(None, ["sets.1.generator.num_inference_steps=3", "source.limit=4"], tiny=True)
    assert r.sets[1].generator_name == "sd2" and r.sets[1].generator_cfg.num_inference_steps == 3
    assert r.config.source.limit == 4
    assert r.hash != resolve_build(None, tiny=True).hash


def test_bad_inputs_stop_before_any_model_loads(tmp_path, tiny_dir, capsys):
    coco = tmp_path / "coco"
    captions, images = write_coco(coco, n=2)

    def cfg(sets=SETS, source=None, **top):
        return str(write_build_config(tmp_path / "bad.yaml", tmp_path / "o", sets, source, **top))

    with pytest.raises(ConfigError, match="captions file not found: '.*nope.json'"):
        _build(cfg(source={"kind": "coco", "captions_file": str(coco / "nope.json")}), tiny_dir)
    (coco / "broken.json").write_text("{")
    with pytest.raises(ConfigError, match="broken.json' is not valid JSON"):
        _build(cfg(source={"kind": "coco", "captions_file": str(coco / "broken.json")}), tiny_dir)
    with pytest.raises(ConfigError, match="2 of 2 images .* do not exist, e.g. '.*elsewhere"):
        _build(cfg(source={"kind": "coco", "captions_file": str(captions), "images_dir": str(tmp_path / "elsewhere")}),
               tiny_dir)
    with pytest.raises(ConfigError, match=r"^sets.0.generator \(set 'x'\): unknown generator 'sd5'.*Valid generators"):
        resolve_build(cfg(sets=[{"name": "x", "generator": "sd5"}]))
    with pytest.raises(ConfigError, match="unknown scheduler 'Nope'"):
        resolve_build(cfg(sets=[{"name": "x", "generator": {"preset": "sd2", "scheduler": "Nope"}}]))
    with pytest.raises(ConfigError, match="'shards.max_count' = 'ten' must be an integer"):
        resolve_build(cfg(shards={"max_count": "ten"}))
    with pytest.raises(ConfigError, match=r"^--limit -3 must be a positive integer$"):
        resolve_build(cfg(), limit=-3)
    assert not (tmp_path / "o").exists(), "nothing is written for a bad config"
    assert cli_main(["build", "--config", cfg(sets=[{"name": "x", "generator": "sd5"}])]) == 2
    assert "unknown generator 'sd5'" in capsys.readouterr().err
    from fakeforge.config import CONFIG_ROOT

    shipped = sorted(str(p) for p in (CONFIG_ROOT / "generators").glob("*.yaml"))  # every preset on its twin
    assert cli_main(["validate", "--tiny", str(CONFIG_ROOT / "build" / "default.yaml"), *shipped]) == 0


def test_two_processes_write_disjoint_shards_with_the_same_keys(tmp_path, tiny_dir):
    """torchrun with 2 CPU processes (gloo): ranks split the shard jobs; result equals a 1-process build."""
    one = write_build_config(tmp_path / "one.yaml", tmp_path / "one", SETS)
    _build(one, tiny_dir)
    two = write_build_config(tmp_path / "two.yaml", tmp_path / "two", SETS)
    env = dict(os.environ, FAKEFORGE_TINY_DIR=tiny_dir, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(ROOT / "build_dataset.py"),
              "--config", str(two), "--tiny", "--no-progress"]
    with OutputLock(tmp_path / "two", "build"):  # another job holds the folder: every rank of this one exits
        proc = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    message = f"fakeforge build: error: output folder '{tmp_path / 'two'}' is in use by build (pid {os.getpid()} on "
    assert proc.stderr.count(message) == 2, proc.stderr[-3000:]       # rank 0 and rank 1
    assert not list((tmp_path / "two").glob("*/*.tar")) and not (tmp_path / "two" / "build_config.yaml").exists()
    proc = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = {json.loads(p.read_text())["rank"] for p in (tmp_path / "two").glob("*/*.done.json")}
    assert ranks == {0, 1}
    assert verify_dataset(tmp_path / "two")["samples"] == 16
    assert _keys_and_bytes(tmp_path / "two").keys() == _keys_and_bytes(tmp_path / "one").keys()
