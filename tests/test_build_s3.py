"""Building into and reading from object storage, against a real S3 API: moto's server mode on a free
loopback port, reached through s3fs with the usual AWS_* environment variables. Bad URLs, a missing
bucket and missing credentials are refused before any work; a build is killed mid-way, a second launch
is refused by the lock object, the resume takes the stale lock over and completes; verify, stats,
train and eval read the shards from s3://; the secret key appears in no object and no log."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from builder_helpers import write_build_config

from fakeforge.cli import main as cli_main

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

ROOT = Path(__file__).resolve().parent.parent
SECRET = "fakeforge-test-SECRET-7d1e"
LEASE = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on 127.0.0.1:<free port>; yields the environment that points s3fs at it."""
    port = _free_port()
    log = open(tmp_path_factory.mktemp("moto") / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    env = {"AWS_ACCESS_KEY_ID": "fakeforge-test-key", "AWS_SECRET_ACCESS_KEY": SECRET,
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
           "AWS_EC2_METADATA_DISABLED": "true", "FAKEFORGE_LOCK_LEASE_S": str(LEASE)}
    yield env
    server.terminate()
    server.wait(timeout=30)
    log.close()


@pytest.fixture
def s3env(s3, monkeypatch):
    import s3fs

    for k, v in s3.items():
        monkeypatch.setenv(k, v)
    import fakeforge.locking

    monkeypatch.setattr(fakeforge.locking, "LEASE_SECONDS", float(LEASE))
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    yield fs
    s3fs.S3FileSystem.clear_instance_cache()


def _child(args, env, tiny_dir):
    full = dict(os.environ, **env, FAKEFORGE_TINY_DIR=tiny_dir, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "fakeforge.cli", *args], env=full, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_bad_urls_buckets_and_credentials_are_one_line_before_any_work(s3env, tmp_path, capsys, monkeypatch):
    s3env.mkdir("present")
    cfg = write_build_config(tmp_path / "c.yaml", tmp_path / "unused", [{"name": "real", "generator": "real"}],
                             {"kind": "demo", "limit": 2})
    cases = [("foo://bucket/x", "output 'foo://bucket/x': unknown URL protocol 'foo://'"),
             ("gs://bucket/x", ("output 'gs://bucket/x': protocol 'gs://' needs the package 'gcsfs' "
                                "(pip install gcsfs)")),
             ("s3://no-such-bucket/x", "output 's3://no-such-bucket/x': bucket 'no-such-bucket' does not exist")]
    for url, message in cases:
        if url.startswith("gs:") and _installed("gcsfs"):
            continue
        assert cli_main(["build", "--config", str(cfg), "--output", url, "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"fakeforge build: error: {message}"), err
    import s3fs

    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    s3fs.S3FileSystem.clear_instance_cache()
    assert cli_main(["build", "--config", str(cfg), "--output", "s3://present/x", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [("fakeforge build: error: output 's3://present/x': no credentials for s3:// (NoCredentialsError); "
                    "set them the usual way (for S3: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or "
                    "~/.aws/credentials)")], err
    assert not (tmp_path / "unused").exists()


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


@pytest.mark.slow
def test_build_to_s3_killed_locked_resumed_verified_then_trained_and_evaluated(s3, s3env, tmp_path, tiny_dir):
    from fakeforge.tiny import ensure_tiny

    ensure_tiny("sd2", tiny_dir)
    s3env.mkdir("data")
    url = "s3://data/sets/v1"
    sets = [{"name": "real", "generator": "real"},
            {"name": "sd2", "generator": {"preset": "sd2", "batch_size": 1, "num_inference_steps": 250}}]
    src = {"kind": "demo", "limit": 8}
    cfg = write_build_config(tmp_path / "c.yaml", url, sets, src, shards={"max_count": 1, "max_size_mb": 64})
    args = ["build", "--config", str(cfg), "--tiny", "--log-every", "1"]
    first = _child(args, s3, tiny_dir)
    deadline = time.time() + 240
    while time.time() < deadline and first.poll() is None and not s3env.exists("data/sets/v1/.fakeforge.lock"):
        time.sleep(0.1)
        s3env.invalidate_cache()
    holder = json.loads(s3env.cat_file("data/sets/v1/.fakeforge.lock"))
    assert holder["pid"] == first.pid and holder["purpose"] == "build"
    second = _child(args, s3, tiny_dir)                                 # launched twice: refused at once
    out2 = second.communicate(timeout=120)[0]
    assert second.returncode == 2, out2[-2000:]
    assert f"error: output 's3://data/sets/v1' is in use by build (pid {first.pid} on " in out2
    while time.time() < deadline and first.poll() is None and \
            len(s3env.glob("data/sets/v1/sd2/*.done.json")) < 2:
        time.sleep(0.1)
        s3env.invalidate_cache()
    first.send_signal(signal.SIGKILL)                                   # preempted without warning
    out1 = first.communicate(timeout=60)[0]
    s3env.invalidate_cache()
    done = len(s3env.glob("data/sets/v1/sd2/*.done.json"))
    assert 2 <= done < 8, out1[-2000:]
    assert not s3env.exists("data/sets/v1/manifest.json")
    assert "build[0]: " in out1 and "\r" not in out1, "progress as log lines"

    time.sleep(LEASE + 1)                                               # the dead holder's lease runs out
    resumed = _child(args, s3, tiny_dir)
    out3 = resumed.communicate(timeout=400)[0]
    assert resumed.returncode == 0, out3[-3000:]
    assert "taking over the lock of 's3://data/sets/v1'" in out3
    assert not s3env.exists("data/sets/v1/.fakeforge.lock"), "the lock object is removed at the end"
    verify = _child(["verify", url], s3, tiny_dir)
    vout = verify.communicate(timeout=120)[0]
    assert verify.returncode == 0 and f"OK {url}: 16 samples in 16 tars" in vout, vout
    local = write_build_config(tmp_path / "l.yaml", tmp_path / "local", sets[:1], src,
                               shards={"max_count": 1, "max_size_mb": 64})
    assert cli_main(["build", "--config", str(local), "--tiny", "--no-progress"]) == 0
    remote_manifest = json.loads(s3env.cat_file("data/sets/v1/manifest.json"))
    local_manifest = json.loads((tmp_path / "local" / "manifest.json").read_text())
    assert remote_manifest["sets"]["real"]["set_hash"] == local_manifest["sets"]["real"]["set_hash"]
    assert [(t["name"], t["sha256"]) for t in remote_manifest["sets"]["real"]["tars"]] == \
        [(t["name"], t["sha256"]) for t in local_manifest["sets"]["real"]["tars"]], "the same bytes as locally"

    # verify notices a damaged object, like a damaged file
    victim = "data/sets/v1/real/000001.tar"
    good = s3env.cat_file(victim)
    middle = len(good) // 2
    s3env.pipe_file(victim, good[:middle] + bytes([good[middle] ^ 0xFF]) + good[middle + 1:])  # one flipped byte
    assert cli_main(["verify", url]) == 1
    s3env.pipe_file(victim, good)

    # stats, train and eval read the shards from s3:// (webdataset streams them through fsspec)
    stats = tmp_path / "stats.json"
    assert cli_main(["stats", "--sets", url, "--image-size", "16", "--out", str(stats)]) == 0
    assert json.loads(stats.read_text())["images"] == 16
    run = tmp_path / "run"
    assert cli_main(["train", "--config", "antifakeprompt_tiny", "--out", str(run), "--set", f"data.train=[{url}]",
                     "--set", "train.epochs=1"]) == 0
    assert (run / "best").is_dir()
    ev = tmp_path / "eval"
    assert cli_main(["eval", "--checkpoint", str(run / "best"), "--sets", url, "--out", str(ev),
                     "--batch-size", "8"]) == 0
    res = json.loads((ev / "results.json").read_text())
    assert res["sets"]["real"]["n"] == 8 and res["sets"]["sd2"]["n"] == 8

    # credentials appear in no object and no output
    for path in s3env.find("data"):
        if path.endswith((".json", ".yaml", ".lock")):
            assert SECRET not in s3env.cat_file(path).decode(), path
    for text in (out1, out2, out3, vout):
        assert SECRET not in text


def test_small_build_to_s3_resumes_and_verifies(s3env, tmp_path, tiny_dir):
    """The default-suite check of the object-store path: build, rerun (everything skipped), verify, and
    the same shard bytes as a local build."""
    from fakeforge.builder.config import resolve_build
    from fakeforge.builder.runner import build
    from fakeforge.shards.verify import verify_dataset

    s3env.mkdir("small")
    sets = [{"name": "real", "generator": "real"}]
    cfg = write_build_config(tmp_path / "c.yaml", "s3://small/ds", sets, {"kind": "demo", "limit": 6})
    first = build(resolve_build(str(cfg), tiny=True, tiny_root=tiny_dir), progress=False)
    again = build(resolve_build(str(cfg), tiny=True, tiny_root=tiny_dir), progress=False)
    assert first["written"] == 6 and again["written"] == 0 and again["shards_skipped"] == 2
    assert verify_dataset("s3://small/ds")["samples"] == 6
    assert not s3env.exists("small/ds/.fakeforge.lock")
    local = write_build_config(tmp_path / "l.yaml", tmp_path / "local", sets, {"kind": "demo", "limit": 6})
    build(resolve_build(str(local), tiny=True, tiny_root=tiny_dir), progress=False)
    remote = json.loads(s3env.cat_file("small/ds/manifest.json"))
    here = json.loads((tmp_path / "local" / "manifest.json").read_text())
    assert remote["config_hash"] == here["config_hash"] and remote["sets"]["real"]["tars"] == here["sets"]["real"]["tars"]

    import webdataset as wds

    from fakeforge.shards.reader import find_sets, open_shard

    tars = find_sets("s3://small/ds")["real"]
    assert tars == ["s3://small/ds/real/000000.tar", "s3://small/ds/real/000001.tar"]
    samples = list(wds.WebDataset(tars, shardshuffle=False, empty_check=False).to_tuple("__key__", "json"))
    assert len(samples) == 6 and all(json.loads(meta)["set"] == "real" for _, meta in samples)
    with open_shard(tars[0]) as fh:
        assert fh.read() == (tmp_path / "local" / "real" / "000000.tar").read_bytes()
    for path in s3env.find("small"):                  # the credentials are in no object
        assert SECRET.encode() not in s3env.cat_file(path), path


def test_an_upload_that_arrives_short_drops_the_shard_and_the_rerun_completes_it(s3env, tmp_path, tiny_dir,
                                                                                  monkeypatch, capsys):
    """A real short upload: the store receives the shard's first half (written by s3fs to the real server).
    The size read back disagrees, so the shard is dropped, not marked done; the rerun completes it."""
    import s3fs

    s3env.mkdir("short")
    real_put = s3fs.S3FileSystem._put_file
    state = {"armed": True}

    async def short_put(self, lpath, rpath, *a, **k):
        if state["armed"] and rpath.endswith("000001.tar"):
            state["armed"] = False
            data = Path(lpath).read_bytes()
            return await self._pipe_file(rpath, data[: len(data) // 2])
        return await real_put(self, lpath, rpath, *a, **k)

    monkeypatch.setattr(s3fs.S3FileSystem, "_put_file", short_put)
    s3fs.S3FileSystem.clear_instance_cache()  # sync methods are bound when an instance is made
    cfg = write_build_config(tmp_path / "c.yaml", "s3://short/ds", [{"name": "real", "generator": "real"}],
                             {"kind": "demo", "limit": 12})
    args = ["build", "--config", str(cfg), "--tiny", "--tiny-dir", tiny_dir, "--no-progress"]
    assert cli_main(args) == 1
    err = capsys.readouterr().err
    assert "shard real/000001 was not written: [Errno 5] uploaded 's3://short/ds/real/000001.tar' has " in err, err
    s3env.invalidate_cache()
    assert not s3env.exists("short/ds/real/000001.done.json") and not s3env.exists("short/ds/real/000001.tar")
    assert s3env.exists("short/ds/real/000002.done.json"), "the other shards go on"
    assert cli_main(args) == 0
    from fakeforge.shards.verify import verify_dataset

    assert verify_dataset("s3://short/ds")["samples"] == 12


def test_a_stale_lock_object_is_taken_over_by_exactly_one_of_two(s3env):
    """Two launches find the same stale lock at once: the conditional overwrite (If-Match on the ETag they
    read) lets exactly one take it; the other is told who holds it. A live holder is never taken over."""
    import threading

    from fakeforge.locking import FolderLockedError, ObjectLock
    from fakeforge.shards.store import Store

    s3env.mkdir("locks")
    fresh = Store("s3://locks/fresh")

    def race(make_lock) -> list:
        """Two threads acquire a lock each at the same moment; ("won", lock) or ("refused", message) each."""
        results, barrier = [], threading.Barrier(2)

        def acquire():
            lock = make_lock()
            barrier.wait()
            try:
                lock.acquire()
                results.append(("won", lock))
            except FolderLockedError as exc:
                results.append(("refused", str(exc)))

        threads = [threading.Thread(target=acquire) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        return results

    results = race(lambda: ObjectLock(fresh, "build"))
    assert sorted(r[0] for r in results) == ["refused", "won"], "a conditional create: one of two wins"
    next(r[1] for r in results if r[0] == "won").release()

    store = Store("s3://locks/out")
    s3env.pipe_file("locks/out/.fakeforge.lock", json.dumps({"pid": 1, "host": "gone", "purpose": "build"}).encode())
    time.sleep(2.5)
    results = race(lambda: ObjectLock(store, "build", lease=2.0))
    assert sorted(r[0] for r in results) == ["refused", "won"], results
    winner = next(r[1] for r in results if r[0] == "won")
    time.sleep(2.5)                                  # past the lease: the winner's heartbeat keeps it fresh
    with pytest.raises(FolderLockedError, match="is in use by build"):
        ObjectLock(store, "build", lease=2.0).acquire()
    winner.check()
    winner.release()
    assert not s3env.exists("locks/out/.fakeforge.lock")


def test_many_small_shards_upload_while_the_next_is_listed(s3env, tmp_path, tiny_dir):
    """Uploads run in their own thread while the main thread lists the set folder for the next shard: a
    listing cached by one thread must never hide the other's upload (each shard's size check reads the
    object itself)."""
    from fakeforge.builder.config import resolve_build
    from fakeforge.builder.runner import build
    from fakeforge.shards.verify import verify_dataset

    s3env.mkdir("many")
    sets = [{"name": "sd2", "generator": {"preset": "sd2", "batch_size": 1, "num_inference_steps": 2}}]
    cfg = write_build_config(tmp_path / "c.yaml", "s3://many/ds", sets, {"kind": "demo", "limit": 24},
                             shards={"max_count": 1, "max_size_mb": 64})
    summary = build(resolve_build(str(cfg), tiny=True, tiny_root=tiny_dir), progress=False)
    assert summary["written"] == 24 and not summary["shard_errors"]
    assert verify_dataset("s3://many/ds")["samples"] == 24


def test_retry_failed_and_verify_existing_work_on_s3_as_on_disk(s3env, tmp_path, tiny_dir, caplog):
    """A failed sample (a broken source image) is fixed, then `--retry-failed` redoes only its shard; a
    flipped byte in an object is missed by the size check and found by `--verify-existing`."""
    from builder_helpers import write_coco
    from PIL import Image

    from fakeforge.builder.config import resolve_build
    from fakeforge.builder.runner import build
    from fakeforge.shards.verify import VerifyError, verify_dataset

    s3env.mkdir("retry")
    captions, images = write_coco(tmp_path / "coco", n=8, captions=1)
    broken = sorted(images.glob("*.jpg"))[3]
    broken.write_bytes(b"not an image")
    src = {"kind": "coco", "captions_file": str(captions), "images_dir": str(images)}
    cfg = write_build_config(tmp_path / "c.yaml", "s3://retry/ds", [{"name": "real", "generator": "real"}], src,
                             max_failed_fraction=0.5)

    def run(**kw):
        return build(resolve_build(str(cfg), tiny=True, tiny_root=tiny_dir), progress=False, **kw)

    assert run()["failed"] == 1
    Image.new("RGB", (40, 32), (9, 9, 9)).save(broken)
    assert run()["written"] == 0, "a plain rerun keeps finished shards"
    retried = run(retry_failed=True)
    assert retried["written"] == 4 and retried["shards_skipped"] == 1 and retried["failed"] == 0
    assert verify_dataset("s3://retry/ds")["samples"] == 8

    victim = "retry/ds/real/000000.tar"
    good = s3env.cat_file(victim)
    middle = len(good) // 2
    s3env.pipe_file(victim, good[:middle] + bytes([good[middle] ^ 0xFF]) + good[middle + 1:])
    assert run()["written"] == 0, "sizes match: a plain rerun skips it"
    with pytest.raises(VerifyError, match="000000.tar' sha256 does not match the manifest"):
        verify_dataset("s3://retry/ds")
    checked = run(verify_existing=True)
    assert checked["shards_redone"] == 1 and "000000.tar does not match its recorded sha256" in caplog.text
    assert verify_dataset("s3://retry/ds")["samples"] == 8
