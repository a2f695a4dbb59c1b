"""Integrity under real faults: broken finished shards, interrupted redos, I/O errors injected into the tar
file object, three builds launched on one folder, a full disk, a read-only folder, colliding keys."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from builder_helpers import keys_of, write_build_config, write_coco
from PIL import Image

from fakeforge.builder.config import resolve_build
from fakeforge.builder.plan import escape_key_part, sample_key
from fakeforge.builder.runner import build
from fakeforge.cli import main as cli_main
from fakeforge.config import ConfigError
from fakeforge.shards.verify import VerifyError, verify_dataset
from fakeforge.shards.writer import ShardSink
from fakeforge.sources import Record

ROOT = Path(__file__).resolve().parent.parent
REAL = [{"name": "real", "generator": "real"}]
SD2_SLOW = [{"name": "sd2", "generator": {"preset": "sd2", "batch_size": 1}}]


def _build(cfg, tiny_dir, **kw):
    return build(resolve_build(str(cfg), tiny=True, tiny_root=tiny_dir), progress=False, **kw)


def _child(args: list[str], tiny_dir: str, **kw) -> subprocess.Popen:
    env = dict(os.environ, FAKEFORGE_TINY_DIR=tiny_dir, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "fakeforge.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _build_args(cfg: Path, tiny_dir: str) -> list[str]:
    return ["build", "--config", str(cfg), "--tiny", "--tiny-dir", tiny_dir, "--no-progress"]


# ------------------------------------------------------------------ finished shards that are no longer whole


def test_truncated_deleted_or_flipped_tar_is_rebuilt(tmp_path, tiny_dir, caplog):
    cfg = write_build_config(tmp_path / "c.yaml", tmp_path / "out", REAL, {"kind": "demo", "limit": 12})
    _build(cfg, tiny_dir)
    set_dir = tmp_path / "out" / "real"
    clean = keys_of(tmp_path / "out")
    tars = sorted(set_dir.glob("*.tar"))
    assert len(tars) == 3
    tars[0].write_bytes(tars[0].read_bytes()[:700])                 # truncated
    tars[1].unlink()                                                # deleted
    data = bytearray(tars[2].read_bytes())
    data[len(data) // 2] ^= 0xFF                                    # one flipped byte: same size
    tars[2].write_bytes(bytes(data))

    again = _build(cfg, tiny_dir)
    assert again["shards_redone"] == 2 and again["written"] == 8, "truncated and deleted tars are redone"
    assert "redoing shard real/000000: 000000.tar has 700 bytes" in caplog.text
    assert "redoing shard real/000001: 000001.tar is missing" in caplog.text
    with pytest.raises(VerifyError, match="000002.tar' sha256 does not match the manifest"):
        verify_dataset(tmp_path / "out")                            # a plain rerun checks sizes only
    checked = _build(cfg, tiny_dir, verify_existing=True)
    assert checked["shards_redone"] == 1 and "000002.tar does not match its recorded sha256" in caplog.text
    assert verify_dataset(tmp_path / "out")["samples"] == 12
    assert keys_of(tmp_path / "out") == clean
    shutil.copy(tars[1], set_dir / "000001-1.tar")                 # a stray part beside a finished shard
    with pytest.raises(VerifyError, match="000001-1.tar' is not listed in the manifest"):
        verify_dataset(tmp_path / "out")
    assert _build(cfg, tiny_dir)["shards_redone"] == 1
    assert "redoing shard real/000001: 000001-1.tar lies beside it but is not listed" in caplog.text
    assert verify_dataset(tmp_path / "out")["samples"] == 12 and keys_of(tmp_path / "out") == clean


def test_interrupted_retry_failed_then_plain_rerun_completes(tmp_path, tiny_dir):
    """Kill -9 a `--retry-failed` after it removed the shard's tar: the plain rerun must redo the shard."""
    captions, images = write_coco(tmp_path / "coco", n=4, captions=1)
    good = captions.read_text()
    data = json.loads(good)
    data["annotations"][1]["caption"] = None                        # a per-sample error
    captions.write_text(json.dumps(data))
    src = {"kind": "coco", "captions_file": str(captions), "images_dir": str(images)}
    cfg = write_build_config(tmp_path / "c.yaml", tmp_path / "out", SD2_SLOW, src, max_failed_fraction=0.5,
                             shards={"max_count": 4})
    assert _build(cfg, tiny_dir)["failed"] == 1
    captions.write_text(good)                                       # the user fixes the caption
    tar, marker = tmp_path / "out" / "sd2" / "000000.tar", tmp_path / "out" / "sd2" / "000000.done.json"
    assert tar.is_file() and marker.is_file()
    child = _child([*_build_args(cfg, tiny_dir), "--retry-failed"], tiny_dir)
    deadline = time.time() + 240
    while tar.exists() and time.time() < deadline and child.poll() is None:
        time.sleep(0.005)
    child.kill()
    out, err = child.communicate()
    assert not tar.exists(), f"the child should be killed while redoing the shard: {err[-2000:]}"
    assert not marker.exists(), "the done-marker goes before the tar"
    summary = _build(cfg, tiny_dir)
    assert summary["written"] == 4 and summary["shards_skipped"] == 0
    assert verify_dataset(tmp_path / "out")["samples"] == 4


# ------------------------------------------------------------------ write errors inside a shard


class FailingFile:
    """Wraps the real tar file object; its `fail_at`-th write raises EIO (once, for one file name)."""

    armed = True

    def __init__(self, fh, fail_at: int):
        self.fh, self.fail_at, self.writes = fh, fail_at, 0

    def write(self, data):
        self.writes += 1
        if FailingFile.armed and self.writes == self.fail_at:
            FailingFile.armed = False
            raise OSError(errno.EIO, "Input/output error (injected)")
        return self.fh.write(data)

    def __getattr__(self, name):
        return getattr(self.fh, name)


def test_write_error_drops_the_shard_and_the_rerun_completes_it(tmp_path, tiny_dir, monkeypatch, capsys):
    cfg = write_build_config(tmp_path / "c.yaml", tmp_path / "out", REAL, {"kind": "demo", "limit": 12})
    clean_cfg = write_build_config(tmp_path / "clean.yaml", tmp_path / "clean", REAL, {"kind": "demo", "limit": 12})
    _build(clean_cfg, tiny_dir)

    def opener(path, mode="r", *a, **k):
        fh = open(path, mode, *a, **k)
        return FailingFile(fh, fail_at=2) if Path(path).name.startswith("000001.tar") else fh

    FailingFile.armed = True
    monkeypatch.setattr(ShardSink, "open_file", staticmethod(opener))
    args = ["build", "--config", str(cfg), "--tiny", "--tiny-dir", tiny_dir, "--no-progress"]
    assert cli_main(args) == 1
    err = capsys.readouterr().err
    assert "shard real/000001 was not written: [Errno 5] Input/output error (injected)" in err
    set_dir = tmp_path / "out" / "real"
    assert sorted(p.name for p in set_dir.iterdir()) == [
        "000000.done.json", "000000.tar", "000002.done.json", "000002.tar", "_set.json"], "other shards go on"
    assert not (tmp_path / "out" / "manifest.json").exists() or \
        json.loads((tmp_path / "out" / "manifest.json").read_text())["sets"]["real"]["shard_jobs_done"] == 2
    assert cli_main(["verify", str(tmp_path / "out")]) == 1
    assert cli_main(args) == 0                                      # the fault is gone (armed once)
    assert verify_dataset(tmp_path / "out")["samples"] == 12
    assert keys_of(tmp_path / "out") == keys_of(tmp_path / "clean")


# ------------------------------------------------------------------ one writer per folder


def test_three_builds_launched_together_one_builds_the_others_exit(tmp_path, tiny_dir):
    """The first build takes the lock; two more launched while it holds it exit at once naming it.

    The first is started alone until it holds the lock and is then stopped (SIGSTOP) while the others run:
    a stopped process keeps its `flock`, so neither a loaded machine nor a fast one (where the first
    used to finish before the others had started, and they found a finished dataset) can reorder the
    launches. It is continued (SIGCONT) once both others have exited and must then finish its build."""
    from fakeforge.locking import OutputLock
    from fakeforge.tiny import ensure_tiny

    ensure_tiny("sd2", tiny_dir)
    long_sd2 = [{"name": "sd2", "generator": {"preset": "sd2", "batch_size": 1, "num_inference_steps": 20}}]
    cfg = write_build_config(tmp_path / "c.yaml", tmp_path / "out", long_sd2, {"kind": "demo", "limit": 8})
    first = _child(_build_args(cfg, tiny_dir), tiny_dir)
    lock = OutputLock(tmp_path / "out", "probe")
    deadline = time.time() + 300
    while lock.holder().get("pid") != first.pid and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert first.poll() is None, "the first build ended before it was seen holding the lock"
    os.kill(first.pid, signal.SIGSTOP)
    try:
        others = [_child(_build_args(cfg, tiny_dir), tiny_dir) for _ in range(2)]
        other_results = [(c.wait(timeout=300), *c.communicate()) for c in others]
    finally:
        os.kill(first.pid, signal.SIGCONT)
    results = [(first.wait(timeout=600), *first.communicate()), *other_results]
    assert [r[0] for r in results] == [0, 2, 2], [r[2][-1500:] for r in results]
    for code, _out, err in results[1:]:
        line = err.strip().splitlines()[-1]
        assert line.startswith("fakeforge build: error: output folder ") and \
            f"is in use by build (pid {first.pid} on " in line, err[-1500:]
        assert "Traceback" not in err
    assert verify_dataset(tmp_path / "out")["samples"] == 8


# ------------------------------------------------------------------ full disk, read-only folder, bad paths


def _can_mount_in_userns() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


needs_userns = pytest.mark.skipif(not _can_mount_in_userns(),
                                  reason="needs `unshare -rm` with tmpfs/bind mounts (user namespaces)")


def _noise_coco(root: Path, n: int, side: int = 160) -> dict:
    """A COCO source of incompressible noise PNGs (each ~77 KB when re-encoded as PNG)."""
    captions, images = write_coco(root, n=n, captions=1)
    rng = np.random.default_rng(0)
    for p in sorted(images.glob("*.jpg")):
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(p, format="PNG")
    return {"kind": "coco", "captions_file": str(captions), "images_dir": str(images)}


@needs_userns
def test_full_disk_is_one_line_and_the_rerun_resumes(tmp_path, tiny_dir):
    """A real full filesystem: a 600 KiB tmpfs mounted over the output's parent in a private mount namespace.
    The rerun happens after growing the tmpfs (remount), inside the same namespace."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cfg = write_build_config(tmp_path / "c.yaml", mnt / "out", REAL, _noise_coco(tmp_path / "coco", 12),
                             image={"format": "png"}, shards={"max_count": 4, "max_size_mb": 64})
    build = f"{sys.executable} -m fakeforge.cli build --config {cfg} --no-progress"
    script = (f"mount -t tmpfs -o size=600k tmpfs {mnt} || exit 99\n"
              f"{build} > {tmp_path}/first.out 2> {tmp_path}/first.err; echo $? > {tmp_path}/first.rc\n"
              f"ls {mnt}/out/real > {tmp_path}/listing.txt\n"
              f"mount -o remount,size=8m {mnt}\n"
              f"{build} > {tmp_path}/second.out 2> {tmp_path}/second.err; echo $? > {tmp_path}/second.rc\n"
              f"cp -a {mnt}/out {tmp_path}/copy\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", FAKEFORGE_TINY_DIR=tiny_dir, PYTHONPATH=str(ROOT))
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    read = lambda name: (tmp_path / name).read_text()  # noqa: E731
    err = read("first.err")
    assert read("first.rc").strip() == "1", err
    assert "Traceback" not in err
    errors = [ln for ln in err.splitlines() if ": error: " in ln]
    assert len(errors) == 1, err
    assert f"disk full: no space left for '{mnt}/out/real'" in errors[0] and " KiB free" in errors[0]
    assert not any(n.endswith(".tmp") for n in read("listing.txt").split())
    assert read("second.rc").strip() == "0", read("second.err")[-2000:]
    assert verify_dataset(tmp_path / "copy")["samples"] == 12


@needs_userns
def test_read_only_or_file_output_is_refused_before_any_work(tmp_path, capsys):
    cfg = write_build_config(tmp_path / "c.yaml", tmp_path / "ro" / "out", REAL, {"kind": "demo", "limit": 4})
    (tmp_path / "ro").mkdir()
    script = (f"mount --bind {tmp_path}/ro {tmp_path}/ro && mount -o remount,ro,bind {tmp_path}/ro || exit 99\n"
              f"exec {sys.executable} -m fakeforge.cli build --config {cfg} --no-progress\n")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT)))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"fakeforge build: error: output '{tmp_path}/ro/out' cannot be written: '{tmp_path}/ro' is read-only "
        "or not writable for this user"]
    (tmp_path / "file").write_text("x")
    assert cli_main(["build", "--config", str(cfg), "--output", str(tmp_path / "file")]) == 2
    assert capsys.readouterr().err.strip() == (f"fakeforge build: error: output '{tmp_path}/file' is a file, "
                                               "not a folder; choose another --output")


# ------------------------------------------------------------------ keys


def test_key_escaping_is_injective_and_keeps_digit_ids():
    ids = ["123", "a.b", "a_b", "a/b", "a-b", "a_2eb", "a__b", "a_5fb", "a b", "é", "_", "__", "-", ".", "",
           "a.b.c", "n01440764_10026", "x-1", "x_2d1"]
    escaped = [escape_key_part(i) for i in ids]
    assert len(set(escaped)) == len(ids)
    assert escape_key_part("000000397133") == "000000397133"
    for e in escaped:
        assert "-" not in e and "." not in e and all(c.isalnum() or c == "_" for c in e)
    # ids containing '-' cannot make two (image, caption) pairs collide either
    a = sample_key("s", Record("x-1", "2", "c", None))
    b = sample_key("s", Record("x", "1-2", "c", None))
    assert a != b and a.count("-") == b.count("-") == 2


def test_colliding_source_ids_are_refused_before_any_model_loads(tmp_path):
    captions, images = write_coco(tmp_path / "coco", n=3, captions=2)
    data = json.loads(captions.read_text())
    data["annotations"][3]["id"] = data["annotations"][2]["id"]     # image 2: both captions get id 200
    data["images"].append({"id": "a.b", "file_name": "000000000001.jpg"})
    data["images"].append({"id": "a_b", "file_name": "000000000001.jpg"})
    data["annotations"] += [{"id": 1, "image_id": "a.b", "caption": "x"}, {"id": 1, "image_id": "a_b", "caption": "y"}]
    captions.write_text(json.dumps(data))
    src = {"kind": "coco", "captions_file": str(captions), "images_dir": str(images), "captions_per_image": "all"}
    sets = [{"name": "sd2", "generator": {"preset": "sd2", "model_id": str(tmp_path / "no-such-model")}}]
    cfg = write_build_config(tmp_path / "c.yaml", tmp_path / "out", sets, src)
    with pytest.raises(ConfigError, match=r"^set 'sd2': 1 sample key\(s\) would repeat, from source ids image id "
                                          r"'2' caption id '200' \(2 records\)"):
        build(resolve_build(str(cfg)), progress=False)             # a model load would fail differently
    assert not (tmp_path / "out").exists()


def test_outputs_with_legacy_stats_json_markers_stay_finished(tmp_path, tiny_dir, caplog):
    """Outputs of earlier releases name the done-marker NNNNNN.stats.json: a rerun skips those shards, the
    manifest counts them, verify passes; a shard redone later gets a .done.json and loses the old marker."""
    cfg = write_build_config(tmp_path / "c.yaml", tmp_path / "out", REAL, {"kind": "demo", "limit": 12})
    _build(cfg, tiny_dir)
    set_dir = tmp_path / "out" / "real"
    clean = keys_of(tmp_path / "out")
    for marker in sorted(set_dir.glob("*.done.json")):
        marker.rename(marker.with_name(marker.name.replace(".done.json", ".stats.json")))
    (tmp_path / "out" / "manifest.json").unlink()
    again = _build(cfg, tiny_dir)
    assert again["shards_skipped"] == 3 and again["written"] == 0, "legacy markers count as done"
    assert "written by an earlier fakeforge" in caplog.text
    assert verify_dataset(tmp_path / "out")["samples"] == 12 and keys_of(tmp_path / "out") == clean
    (set_dir / "000001.tar").unlink()
    assert _build(cfg, tiny_dir)["shards_redone"] == 1
    assert sorted(p.name for p in set_dir.glob("000001.*")) == ["000001.done.json", "000001.tar"]
    assert verify_dataset(tmp_path / "out")["samples"] == 12 and keys_of(tmp_path / "out") == clean
