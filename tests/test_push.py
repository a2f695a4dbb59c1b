"""`fakeforge push`: what a push would upload (card, _card/, manifest, the manifest's tars; never the lock,
temp or stray files), refusal of an unverified build, and the one-line offline refusal (exit 2). No hub or
server is contacted: huggingface_hub's own offline mode is what is exercised."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from builder_helpers import write_build_config

from fakeforge.builder.config import resolve_build
from fakeforge.builder.runner import build
from fakeforge.cli import main
from fakeforge.push import PushError, push, upload_selection

SETS = [{"name": "photos", "generator": "real"}, {"name": "sd2", "generator": "sd2"}]


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_dir):
    root = tmp_path_factory.mktemp("push")
    cfg = write_build_config(root / "b.yaml", root / "out", SETS, {"kind": "demo", "limit": 2},
                             image={"format": "jpeg", "quality": 95, "size": 32, "resize": "center_crop"})
    build(resolve_build(str(cfg), tiny=True, tiny_root=tiny_dir), progress=False)
    return root / "out"


def test_selection_is_card_card_pictures_manifest_and_listed_tars_only(built, tmp_path):
    out = tmp_path / "out"
    subprocess.run(["cp", "-a", str(built), str(out)], check=True)
    manifest = json.loads((out / "manifest.json").read_text())
    tars = {t["name"] for s in manifest["sets"].values() for t in s["tars"]}
    pictures = {p.relative_to(out).as_posix() for p in (out / "_card").rglob("*") if p.is_file()}
    assert tars and pictures
    # what must never go up: the lock, temp and partial files, a stray (unlisted) tar, other files
    (out / ".fakeforge.lock").write_text("")
    (out / "sd2" / "000009.tar.tmp").write_bytes(b"x")
    (out / "sd2" / "000009.tar").write_bytes(b"x")
    (out / "_card" / ".grid.png.tmp").write_bytes(b"x")
    (out / "notes.txt").write_text("x")
    assert upload_selection(out) == sorted({"README.md", "manifest.json"} | tars | pictures)


def test_an_unverified_build_is_refused_in_one_line(built, tmp_path, capsys):
    out = tmp_path / "out"
    subprocess.run(["cp", "-a", str(built), str(out)], check=True)
    tar = next((out / "sd2").glob("*.tar"))
    data = bytearray(tar.read_bytes())
    data[700] ^= 0xFF                                                    # one flipped byte
    tar.write_bytes(bytes(data))
    with pytest.raises(PushError, match="refusing to push an unverified build: shard .* sha256"):
        push(out, "me/x")
    manifest = json.loads((out / "manifest.json").read_text())
    tar.unlink()
    manifest["sets"]["sd2"]["shard_jobs_done"] -= 1                       # an incomplete build
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert main(["push", str(out), "--repo", "me/x"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("fakeforge push: error: refusing to push an unverified build: ") \
        and "shard jobs finished" in err


def test_offline_says_so_in_one_line_and_exits_2(built):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "fakeforge.cli", "push", str(built), "--repo", "me/afp"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "HF_HUB_OFFLINE is set" in lines[0] and r.stdout == ""
    assert not any(p.name.startswith(".cache") for p in Path(built).iterdir()), "nothing written into the build"
