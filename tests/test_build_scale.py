"""The builder at scale on a local disk: per-set identity (add, refuse, rebuild, keep, prune), growing a set
by raising its limit, resuming with another number of processes (torchrun 4 ranks, then 1; job-array
ranks), and one progress line per interval when the log is not a terminal."""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from builder_helpers import keys_of, write_build_config, write_coco

from fakeforge.builder.config import resolve_build
from fakeforge.builder.runner import build
from fakeforge.cli import main as cli_main
from fakeforge.config import ConfigError
from fakeforge.shards.verify import VerifyError, verify_dataset

ROOT = Path(__file__).resolve().parent.parent
REAL = {"name": "real", "generator": "real"}
SD2 = {"name": "sd2", "generator": {"preset": "sd2", "batch_size": 2}}


def _build(cfg, tiny_dir, **kw):
    overrides = kw.pop("overrides", None)
    return build(resolve_build(str(cfg), overrides, tiny=True, tiny_root=tiny_dir), progress=False, **kw)


def _members(out: Path) -> dict[str, bytes]:
    """Every member of every tar (name -> bytes): images and json, so equal means equal samples."""
    found = {}
    for tar in sorted(Path(out).glob("*/*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf:
                if m.isfile():
                    found[m.name] = tf.extractfile(m).read()
    return found


def _digests(folder: Path) -> dict[str, tuple[str, int]]:
    """name -> (sha256, mtime_ns) of every tar in a set folder: unchanged means not rewritten."""
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.glob("*.tar"))}


# ------------------------------------------------------------------ per-set identity


def test_adding_a_set_builds_only_it_then_changes_are_refused_or_rebuilt(tmp_path, tiny_dir, caplog):
    src = {"kind": "demo", "limit": 8}
    cfg = write_build_config(tmp_path / "c.yaml", tmp_path / "out", [REAL], src)
    first = _build(cfg, tiny_dir)
    real_before = _digests(tmp_path / "out" / "real")
    hash_one = json.loads((tmp_path / "out" / "manifest.json").read_text())["config_hash"]

    cfg2 = write_build_config(tmp_path / "c2.yaml", tmp_path / "out", [REAL, SD2], src)
    added = _build(cfg2, tiny_dir)
    assert first["written"] == 8 and added["written"] == 8 and added["shards_skipped"] == 2, added
    assert _digests(tmp_path / "out" / "real") == real_before, "the finished set is not touched"
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert set(manifest["sets"]) == {"real", "sd2"} and manifest["config_hash"] != hash_one
    record = json.loads((tmp_path / "out" / "sd2" / "_set.json").read_text())
    assert record["set_hash"] == manifest["sets"]["sd2"]["set_hash"] and record["name"] == "sd2"
    assert verify_dataset(tmp_path / "out")["samples"] == 16
    clean = write_build_config(tmp_path / "clean.yaml", tmp_path / "clean", [REAL, SD2], src)
    _build(clean, tiny_dir)
    assert _members(tmp_path / "out") == _members(tmp_path / "clean"), "extending equals a clean build"
    clean_manifest = json.loads((tmp_path / "clean" / "manifest.json").read_text())
    assert clean_manifest["config_hash"] == manifest["config_hash"], "the dataset hash is the hash over its sets"

    steps = ["sets.1.generator.num_inference_steps=3"]
    with pytest.raises(ConfigError) as refused:
        _build(cfg2, tiny_dir, overrides=steps)
    text = str(refused.value)
    assert "set 'sd2' in '" in text and "generator.num_inference_steps: 2 -> 3" in text
    assert "--rebuild-set sd2" in text and "real" not in text.split("changed:")[1]
    assert cli_main(["build", "--config", str(cfg2), "--tiny", "--no-progress", "--rebuild-set", "nope"]) == 2

    sd2_dir = tmp_path / "out" / "sd2"
    sd2_before = _digests(sd2_dir)
    rebuilt = _build(cfg2, tiny_dir, overrides=steps, rebuild_sets=["sd2"])
    assert rebuilt["written"] == 8 and rebuilt["shards_skipped"] == 2, "only sd2 is rebuilt"
    assert _digests(tmp_path / "out" / "real") == real_before
    assert _digests(sd2_dir).keys() == sd2_before.keys() and _digests(sd2_dir) != sd2_before
    assert not list(tmp_path.glob("out/.rebuild-*")), "the rebuild was swapped in"
    new = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert new["sets"]["sd2"]["set_hash"] != manifest["sets"]["sd2"]["set_hash"]
    assert new["sets"]["real"]["set_hash"] == manifest["sets"]["real"]["set_hash"]
    assert verify_dataset(tmp_path / "out")["samples"] == 16
    assert _build(cfg2, tiny_dir, overrides=steps)["written"] == 0, "the rebuilt set is now the set"

    # a set the config no longer names: kept, with a warning, and still in the manifest; --prune deletes it
    caplog.clear()
    only_sd2 = write_build_config(tmp_path / "c3.yaml", tmp_path / "out",
                                  [{"name": "sd2", "generator": {"preset": "sd2", "batch_size": 2,
                                                                 "num_inference_steps": 3}}], src)
    assert _build(only_sd2, tiny_dir)["written"] == 0
    assert "set 'real' in '" in caplog.text and "is not in this config: kept on disk and in the manifest" in caplog.text
    assert set(json.loads((tmp_path / "out" / "manifest.json").read_text())["sets"]) == {"real", "sd2"}
    assert verify_dataset(tmp_path / "out")["samples"] == 16
    _build(only_sd2, tiny_dir, prune=True)
    assert not (tmp_path / "out" / "real").exists()
    assert set(json.loads((tmp_path / "out" / "manifest.json").read_text())["sets"]) == {"sd2"}
    assert verify_dataset(tmp_path / "out")["samples"] == 8


def test_an_interrupted_rebuild_leaves_the_old_set_usable_and_resumes(tmp_path, tiny_dir):
    """kill -9 during `--rebuild-set`: the old set, its manifest and `verify` are untouched; rerunning the
    same command finishes the rebuild in `.rebuild-sd2` and swaps it in."""
    slow = {"name": "sd2", "generator": {"preset": "sd2", "batch_size": 1}}
    cfg = write_build_config(tmp_path / "c.yaml", tmp_path / "out", [slow], {"kind": "demo", "limit": 8},
                             shards={"max_count": 1})
    _build(cfg, tiny_dir)
    before = _digests(tmp_path / "out" / "sd2")
    manifest = (tmp_path / "out" / "manifest.json").read_bytes()
    args = [sys.executable, "-m", "fakeforge.cli", "build", "--config", str(cfg), "--tiny", "--no-progress",
            "--set", "sets.0.generator.num_inference_steps=3", "--rebuild-set", "sd2"]
    env = dict(os.environ, FAKEFORGE_TINY_DIR=tiny_dir, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    child = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    staged = tmp_path / "out" / ".rebuild-sd2"
    deadline = time.time() + 180
    while len(list(staged.glob("*.done.json"))) < 2 and time.time() < deadline and child.poll() is None:
        time.sleep(0.02)
    child.kill()
    out = child.communicate()[0].decode()
    assert 2 <= len(list(staged.glob("*.done.json"))) < 8, out[-2000:]
    assert _digests(tmp_path / "out" / "sd2") == before
    assert (tmp_path / "out" / "manifest.json").read_bytes() == manifest
    assert verify_dataset(tmp_path / "out")["samples"] == 8, "the old dataset stays whole during a rebuild"
    with pytest.raises(ConfigError, match="built with other settings"):
        _build(cfg, tiny_dir, overrides=["sets.0.generator.num_inference_steps=3"])
    again = _build(cfg, tiny_dir, overrides=["sets.0.generator.num_inference_steps=3"], rebuild_sets=["sd2"])
    assert again["shards_skipped"] >= 2 and again["written"] == 8 - again["shards_skipped"]
    assert not staged.exists() and verify_dataset(tmp_path / "out")["samples"] == 8
    assert _digests(tmp_path / "out" / "sd2") != before


def test_names_that_claim_one_folder_and_edited_records_are_refused(tmp_path, tiny_dir):
    cfg = write_build_config(tmp_path / "c.yaml", tmp_path / "out", [REAL, {"name": "REAL", "generator": "real"}])
    with pytest.raises(ConfigError, match="sets 'real' and 'REAL' would claim the same folder"):
        resolve_build(str(cfg))
    cfg = write_build_config(tmp_path / "c.yaml", tmp_path / "out", [REAL], {"kind": "demo", "limit": 4})
    _build(cfg, tiny_dir)
    record_path = tmp_path / "out" / "real" / "_set.json"
    good = record_path.read_text()
    record = json.loads(good)
    record["settings"]["seed"] = 5                                  # an edited record no longer hashes right
    record_path.write_text(json.dumps(record))
    with pytest.raises(VerifyError, match=r"set 'real': the settings in 'real/_set.json' do not hash"):
        verify_dataset(tmp_path / "out")
    record_path.write_text(json.dumps(dict(json.loads(good), name="Real")))   # what a case-insensitive store shows
    with pytest.raises(ConfigError, match=r"folder '.*/out/real' holds set 'Real' but the config's set 'real' "
                                          r"claims it"):
        _build(cfg, tiny_dir)
    record_path.write_text(good)
    manifest_path = tmp_path / "out" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["sets"]["real"]["set_hash"] = "0" * 16
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(VerifyError, match=r"manifest.json': config_hash \w+ is not the hash over its sets' hashes"):
        verify_dataset(tmp_path / "out")
    from fakeforge.shards.manifest import dataset_hash

    manifest["config_hash"] = dataset_hash(manifest["sets"])
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(VerifyError, match="the manifest says set hash 0000000000000000, its record"):
        verify_dataset(tmp_path / "out")


# ------------------------------------------------------------------ growing a set


def test_raising_the_limit_keeps_finished_shards_and_equals_a_clean_build(tmp_path, tiny_dir, caplog):
    captions, images = write_coco(tmp_path / "coco", n=90, captions=2)
    src = {"kind": "coco", "captions_file": str(captions), "images_dir": str(images), "limit": 40}
    shards = {"max_count": 16, "max_size_mb": 64}
    cfg = write_build_config(tmp_path / "c.yaml", tmp_path / "out", [REAL], src, shards=shards)
    _build(cfg, tiny_dir)
    small = _digests(tmp_path / "out" / "real")
    assert sorted(small) == ["000000.tar", "000001.tar", "000002.tar"]
    small_keys = keys_of(tmp_path / "out")
    small_hash = json.loads((tmp_path / "out" / "manifest.json").read_text())["config_hash"]

    grown = _build(cfg, tiny_dir, overrides=["source.limit=80"])
    assert grown["shards_skipped"] == 2 and grown["shards_redone"] == 1 and grown["written"] == 48
    assert "redoing shard real/000002: it holds 8 planned samples, the plan now has 16 (the set grew)" in caplog.text
    after = _digests(tmp_path / "out" / "real")
    for name in ("000000.tar", "000001.tar"):
        assert after[name] == small[name], f"{name} is reused byte for byte (same sha256 and mtime)"
    assert set(small_keys) < set(keys_of(tmp_path / "out")) and len(keys_of(tmp_path / "out")) == 80

    clean = write_build_config(tmp_path / "clean.yaml", tmp_path / "clean", [REAL], dict(src, limit=80),
                               shards=shards)
    _build(clean, tiny_dir)
    assert _members(tmp_path / "out") == _members(tmp_path / "clean")
    ours, theirs = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("out", "clean"))
    assert [t["sha256"] for t in ours["sets"]["real"]["tars"]][2:] == \
        [t["sha256"] for t in theirs["sets"]["real"]["tars"]][2:]
    assert ours["config_hash"] == theirs["config_hash"] and verify_dataset(tmp_path / "out")["samples"] == 80
    assert ours["config_hash"] != small_hash, "a grown set is another dataset: its hash changes"
    with pytest.raises(ConfigError, match=r"set 'real' in '.*' holds a plan of 80 samples \(limit 80\), this config "
                                          r"plans 40 \(limit 40\): a set only grows; rerun with --rebuild-set real"):
        _build(cfg, tiny_dir)


# ------------------------------------------------------------------ other numbers of processes


def test_torchrun_4_ranks_interrupted_then_1_process_gives_a_clean_builds_keys(tmp_path, tiny_dir):
    """torchrun with 4 CPU processes (gloo) is stopped mid-build (SIGTERM to the launcher); one process
    resumes it. The keys equal a clean one-process build's. The ranks' stderr is not a terminal,
    so each rank logs progress lines (never tqdm redraws)."""
    from fakeforge.tiny import ensure_tiny

    ensure_tiny("sd2", tiny_dir)
    sets = [{"name": "sd2", "generator": {"preset": "sd2", "batch_size": 1, "num_inference_steps": 8}}]
    src = {"kind": "demo", "limit": 16}
    cfg = write_build_config(tmp_path / "four.yaml", tmp_path / "four", sets, src, shards={"max_count": 1})
    env = dict(os.environ, FAKEFORGE_TINY_DIR=tiny_dir, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "4", str(ROOT / "build_dataset.py"),
              "--config", str(cfg), "--tiny", "--log-every", "0.5"]
    child = subprocess.Popen(launch, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    set_dir = tmp_path / "four" / "sd2"
    deadline = time.time() + 240
    ranks = set()
    while time.time() < deadline and child.poll() is None and (len(ranks) < 4 or len(ranks) == 0):
        ranks = {json.loads(p.read_text())["rank"] for p in set_dir.glob("*.done.json") if _readable(p)}
        time.sleep(0.05)
    os.killpg(child.pid, signal.SIGTERM)
    out = child.communicate(timeout=120)[0].decode()
    done = len(list(set_dir.glob("*.done.json")))
    assert ranks == {0, 1, 2, 3} and done < 16, f"every rank wrote a shard, the build was cut short: {done}\n{out[-3000:]}"
    assert "\r" not in out, "no tqdm redraws in a non-terminal log"
    for r in range(4):
        assert re.search(rf"build\[{r}\]: \d+/\d+ images \([\d.]+%\), [\d.]+ img/s, ETA ", out), (r, out[-3000:])
    assert not (tmp_path / "four" / "manifest.json").exists()

    resumed = _build(cfg, tiny_dir)
    assert resumed["shards_skipped"] == done and resumed["written"] == 16 - done
    clean = write_build_config(tmp_path / "one.yaml", tmp_path / "one", sets, src, shards={"max_count": 1})
    _build(clean, tiny_dir)
    assert _members(tmp_path / "four").keys() == _members(tmp_path / "one").keys()  # image bytes may differ:
    # the ranks ran with 1 thread each, this process with 2 (float sums depend on the thread count)
    assert verify_dataset(tmp_path / "four")["samples"] == 16


def _readable(p: Path) -> bool:
    try:
        json.loads(p.read_text())
        return True
    except (OSError, ValueError):
        return False


def test_job_array_ranks_then_one_plain_run_writes_the_manifest(tmp_path, tiny_dir, caplog):
    """--rank/--world-size (a SLURM job array without torchrun): three independent processes at once, each
    with its own lock slot; no manifest until the plain run, which skips everything."""
    cfg = write_build_config(tmp_path / "c.yaml", tmp_path / "out", [REAL], {"kind": "demo", "limit": 12},
                             shards={"max_count": 2})
    env = dict(os.environ, FAKEFORGE_TINY_DIR=tiny_dir, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-m", "fakeforge.cli", "build", "--config", str(cfg), "--no-progress",
                               "--rank", str(r), "--world-size", "3"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(3)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert all("its shards are done. Once every rank has finished, run the same command once" in o for o in outs)
    ranks = sorted(json.loads(p.read_text())["rank"] for p in (tmp_path / "out" / "real").glob("*.done.json"))
    assert ranks == [0, 0, 1, 1, 2, 2] and not (tmp_path / "out" / "manifest.json").exists()
    final = _build(cfg, tiny_dir)
    assert final["written"] == 0 and final["shards_skipped"] == 6
    clean = write_build_config(tmp_path / "clean.yaml", tmp_path / "clean", [REAL], {"kind": "demo", "limit": 12},
                               shards={"max_count": 2})
    _build(clean, tiny_dir)
    assert _members(tmp_path / "out") == _members(tmp_path / "clean")
    assert verify_dataset(tmp_path / "out")["samples"] == 12
    for bad, message in ((["--rank", "3", "--world-size", "3"], "--rank 3 --world-size 3: need 0 <= rank < "),
                         (["--rank", "1"], "--rank and --world-size go together")):
        assert cli_main(["build", "--config", str(cfg), "--no-progress", *bad]) == 2


def test_a_file_url_output_is_the_local_folder(tmp_path, tiny_dir):
    cfg = write_build_config(tmp_path / "c.yaml", f"file://{tmp_path}/out", [REAL], {"kind": "demo", "limit": 2})
    resolved = resolve_build(str(cfg), tiny=True, tiny_root=tiny_dir)
    assert resolved.output == tmp_path / "out"
    build(resolved, progress=False)
    assert (tmp_path / "out" / "manifest.json").is_file() and not (tmp_path / "file:").exists()
    assert verify_dataset(f"file://{tmp_path}/out")["samples"] == 2


def test_credentials_in_an_output_url_are_written_nowhere(tmp_path, tiny_dir, capsys):
    """A `user:password@` part of an output URL (ftp://, https:// and other fsspec protocols take
    credentials there) is removed from everything the build writes. memory:// (fsspec's in-process store)
    keeps the whole URL as its path, which makes it a real remote store for this check."""
    import fsspec

    url = "memory://alice:hunter2@bucket-creds/ds"
    cfg = write_build_config(tmp_path / "c.yaml", url, [REAL], {"kind": "demo", "limit": 2})
    fs = fsspec.filesystem("memory")
    try:
        assert _build(cfg, tiny_dir)["written"] == 2
        written = {p: fs.cat_file(p) for p in fs.find("/alice:hunter2@bucket-creds/ds")}
        assert {p.rsplit("/", 1)[-1] for p in written} >= {"build_config.yaml", "manifest.json", "000000.tar"}
        assert [p for p, data in written.items() if b"hunter2" in data] == []
        # verify reads with the URL as given (credentials included) and prints it without them
        from fakeforge.cli import main

        assert main(["verify", url]) == 0
        out = capsys.readouterr()
        assert out.out.startswith("OK memory://bucket-creds/ds:") and "hunter2" not in out.out + out.err
    finally:
        fs.rm("/alice:hunter2@bucket-creds", recursive=True)


def test_a_swap_cut_short_is_finished_by_the_next_run(tmp_path, tiny_dir):
    """The state a crash leaves halfway through swapping a finished rebuild in (old set deleted, rebuild
    not yet moved): the next run, with or without --rebuild-set, finishes the swap before anything else."""
    import shutil

    cfg = write_build_config(tmp_path / "c.yaml", tmp_path / "out", [REAL], {"kind": "demo", "limit": 4})
    _build(cfg, tiny_dir)
    clean = _members(tmp_path / "out")
    staged = tmp_path / "out" / ".rebuild-real"
    shutil.copytree(tmp_path / "out" / "real", staged)
    record = json.loads((staged / "_set.json").read_text())
    (staged / "_set.json").write_text(json.dumps({**record, "complete": True}))
    shutil.rmtree(tmp_path / "out" / "real")
    assert _build(cfg, tiny_dir)["written"] == 0
    assert not staged.exists() and "complete" not in json.loads((tmp_path / "out" / "real" / "_set.json").read_text())
    assert _members(tmp_path / "out") == clean and verify_dataset(tmp_path / "out")["samples"] == 4
