"""`fakeforge verify DIR`: every set complete and within its failure budget, every tar readable, counts and
checksums match the manifest, no duplicate keys."""
from __future__ import annotations

import argparse
import json
import sys
import tarfile
from pathlib import Path

from fakeforge.shards.manifest import MANIFEST
from fakeforge.shards.reader import IMAGE_KEYS
from fakeforge.shards.writer import sha256_file


class VerifyError(Exception):
    """A dataset folder that does not match its manifest."""


def _read_tar(path: Path) -> dict[str, set[str]]:
    """key -> set of member extensions; raises VerifyError on an unreadable/truncated tar or unsafe names."""
    members: dict[str, set[str]] = {}
    try:
        with tarfile.open(path, "r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                name = m.name
                if name.startswith("/") or ".." in Path(name).parts:
                    raise VerifyError(f"shard '{path}' has an unsafe member path '{name}'")
                base = Path(name).name
                key, _, ext = base.partition(".")
                data = tf.extractfile(m).read()
                if len(data) != m.size:
                    raise VerifyError(f"shard '{path}' is truncated in member '{name}'")
                if ext == "json":
                    json.loads(data)
                members.setdefault(key, set()).add(ext)
    except (tarfile.TarError, EOFError, OSError, json.JSONDecodeError) as exc:
        raise VerifyError(f"shard '{path}' is not a readable tar: {exc}") from None
    return members


def read_manifest_checked(out_dir: Path) -> dict:
    """The manifest of `out_dir`, or VerifyError naming the file when it is missing, not JSON, or malformed."""
    mpath = out_dir / MANIFEST
    if not mpath.is_file():
        raise VerifyError(f"no {MANIFEST} in '{out_dir}': the build did not finish (rerun the build command)")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VerifyError(f"'{mpath}' is not readable JSON ({exc}); rerun the build command to rewrite it") from None
    sets = manifest.get("sets") if isinstance(manifest, dict) else None
    if not isinstance(sets, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("tars"), list) and
            all(isinstance(v.get(k), int) for k in ("count", "failed", "shard_jobs", "shard_jobs_done"))
            for v in sets.values()):
        raise VerifyError(f"'{mpath}' is malformed (expected 'sets' with counts and tars per set); rerun the "
                          "build command to rewrite it")
    return manifest


def verify_dataset(out_dir: str | Path, check_hashes: bool = True) -> dict:
    """Check a built dataset folder; returns a summary, raises VerifyError naming the first bad shard.

    Checks: every set finished all its shard jobs and holds at least one sample; no set has more
    failed samples than the build's `max_failed_fraction`; every tar listed exists with its recorded
    size and sha256 (unless `check_hashes` is False), reads as a tar with safe member names, holds the
    recorded number of samples, each with an image and a JSON; no key repeats; no unlisted tar."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise VerifyError(f"dataset folder not found: '{out_dir}'")
    manifest = read_manifest_checked(out_dir)
    max_failed = manifest.get("max_failed_fraction", 1.0)
    seen_keys: dict[str, str] = {}
    listed = set()
    summary = {"sets": {}, "failed": {}, "tars": 0, "samples": 0}
    for set_name, info in manifest["sets"].items():
        if info["shard_jobs_done"] != info["shard_jobs"]:
            raise VerifyError(f"set '{set_name}': {info['shard_jobs_done']} of {info['shard_jobs']} shard jobs "
                              "finished (rerun the build command to complete it)")
        total = info["count"] + info["failed"]
        if info["count"] == 0:
            raise VerifyError(f"set '{set_name}' holds 0 samples ({info['failed']} failed; their errors are in "
                              f"'{out_dir / set_name}/*.stats.json')")
        if isinstance(max_failed, (int, float)) and info["failed"] > max_failed * total:
            raise VerifyError(f"set '{set_name}': {info['failed']} of {total} samples failed, over the build's "
                              f"max_failed_fraction {max_failed:g} (errors in '{out_dir / set_name}/*.stats.json')")
        count = 0
        for t in info["tars"]:
            if not isinstance(t, dict) or not isinstance(t.get("name"), str) or ".." in Path(t["name"]).parts \
                    or Path(t["name"]).is_absolute():
                raise VerifyError(f"'{out_dir / MANIFEST}' lists a bad tar entry {t!r}")
            path = out_dir / t["name"]
            listed.add(path.resolve())
            if not path.is_file():
                raise VerifyError(f"shard '{path}' listed in the manifest is missing")
            if path.stat().st_size != t.get("bytes"):
                raise VerifyError(f"shard '{path}' has {path.stat().st_size} bytes, manifest says {t.get('bytes')}")
            if check_hashes and sha256_file(path) != t.get("sha256"):
                raise VerifyError(f"shard '{path}' sha256 does not match the manifest")
            members = _read_tar(path)
            if len(members) != t.get("count"):
                raise VerifyError(f"shard '{path}' holds {len(members)} samples, manifest says {t.get('count')}")
            for key, exts in members.items():
                if key in seen_keys:
                    raise VerifyError(f"duplicate key '{key}' in shard '{path}' (also in '{seen_keys[key]}')")
                seen_keys[key] = str(path)
                if "json" not in exts or not exts & set(IMAGE_KEYS):
                    raise VerifyError(f"sample '{key}' in shard '{path}' lacks its image or json ({sorted(exts)})")
            count += len(members)
            summary["tars"] += 1
        if count != info["count"]:
            raise VerifyError(f"set '{set_name}' holds {count} samples, manifest says {info['count']}")
        summary["sets"][set_name] = count
        summary["failed"][set_name] = info["failed"]
        summary["samples"] += count
    stray = [p for p in out_dir.glob("*/*.tar") if p.resolve() not in listed]
    if stray:
        raise VerifyError(f"shard '{stray[0]}' is not listed in the manifest ({len(stray)} stray tar(s))")
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="built dataset folder(s) holding manifest.json")
    parser.add_argument("--no-hash", action="store_true", help="skip the sha256 check (faster)")
    parser.epilog = "example:\n  fakeforge verify runs/demo"


def run(args: argparse.Namespace) -> int:
    status = 0
    for d in args.dirs:
        try:
            s = verify_dataset(d, check_hashes=not args.no_hash)
            sets = ", ".join(f"{k}={v}" + (f" ({s['failed'][k]} failed)" if s["failed"].get(k) else "")
                             for k, v in s["sets"].items())
            failed = sum(s["failed"].values())
            print(f"OK {d}: {s['samples']} samples in {s['tars']} tars ({sets})"
                  + (f"; {failed} failed samples within the build's budget, listed in */*.stats.json" if failed
                     else ""))
        except VerifyError as exc:
            print(f"FAILED {d}: {exc}", file=sys.stderr)
            status = 1
    return status
