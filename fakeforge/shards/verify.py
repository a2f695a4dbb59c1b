"""`fakeforge verify DIR|URL`: every set complete and within its failure budget, set hashes consistent, every
tar readable, counts and checksums match the manifest, no duplicate keys. Works on any fsspec URL: each tar
is streamed once (sha256 and members in the same pass), never downloaded whole."""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tarfile
from pathlib import Path

from fakeforge.config import ConfigError
from fakeforge.shards.manifest import MANIFEST, SET_RECORD, dataset_hash
from fakeforge.shards.reader import IMAGE_KEYS
from fakeforge.shards.store import Store


class VerifyError(Exception):
    """A dataset folder that does not match its manifest."""


class _HashingReader:
    """A read-only stream that hashes and counts what passes through it (one pass: hash + tar read)."""

    def __init__(self, fh):
        self.fh, self.h, self.n = fh, hashlib.sha256(), 0

    def read(self, size=-1):
        data = self.fh.read(size)
        self.h.update(data)
        self.n += len(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def _read_tar(store: Store, rel: str, set_hash: str | None = None) -> tuple[dict[str, set[str]], str, str | None]:
    """(key -> member extensions, sha256 of the whole file, problem or None) of one tar, streamed once: the
    hash covers every byte even when the tar is unreadable, so a corrupted tar is reported as a checksum
    mismatch first. Problems: an unreadable/truncated tar, unsafe names, a sample whose json names
    another set hash."""
    members: dict[str, set[str]] = {}
    shown = store.show(rel)
    problem = None
    with store.open_read(rel) as raw:
        fh = _HashingReader(raw)
        try:
            with tarfile.open(fileobj=fh, mode="r|") as tf:
                for m in tf:
                    if not m.isfile():
                        continue
                    name = m.name
                    if name.startswith("/") or ".." in Path(name).parts:
                        raise VerifyError(f"shard '{shown}' has an unsafe member path '{name}'")
                    key, _, ext = Path(name).name.partition(".")
                    data = tf.extractfile(m).read()
                    if len(data) != m.size:
                        raise VerifyError(f"shard '{shown}' is truncated in member '{name}'")
                    if ext == "json":
                        meta = json.loads(data)
                        if set_hash and isinstance(meta, dict) and meta.get("set_hash") not in (None, set_hash):
                            raise VerifyError(f"sample '{key}' in shard '{shown}' was made with set hash "
                                              f"{meta.get('set_hash')}, its set's is {set_hash}")
                    members.setdefault(key, set()).add(ext)
        except VerifyError as exc:
            problem = str(exc)
        except (tarfile.TarError, EOFError, OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            problem = f"shard '{shown}' is not a readable tar: {exc}"
        fh.drain()
    return members, fh.h.hexdigest(), problem


def read_manifest_checked(store: Store) -> dict:
    """The manifest of a dataset, or VerifyError naming the file when it is missing, not JSON, or malformed."""
    mpath = store.show(MANIFEST)
    try:
        data = store.read_bytes(MANIFEST)
    except OSError as exc:
        raise VerifyError(f"'{mpath}' cannot be read: {exc}") from None
    if data is None:
        raise VerifyError(f"no {MANIFEST} in '{store}': the build did not finish (rerun the build command)")
    try:
        manifest = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VerifyError(f"'{mpath}' is not readable JSON ({exc}); rerun the build command to rewrite it") from None
    sets = manifest.get("sets") if isinstance(manifest, dict) else None
    if not isinstance(sets, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("tars"), list) and
            all(isinstance(v.get(k), int) for k in ("count", "failed", "shard_jobs", "shard_jobs_done"))
            for v in sets.values()):
        raise VerifyError(f"'{mpath}' is malformed (expected 'sets' with counts and tars per set); rerun the "
                          "build command to rewrite it")
    return manifest


def _check_set_identity(store: Store, manifest: dict, set_name: str, info: dict) -> str | None:
    """The set's hash, checked three ways: the manifest's entry, the set's record in its folder, and the
    record's own settings (re-hashed). None for a manifest written before per-set hashes."""
    from fakeforge.config import config_hash

    want = info.get("set_hash")
    if want is None and str(manifest.get("format", "")).endswith("/1"):
        return None
    try:
        record = store.read_json(f"{set_name}/{SET_RECORD}")
    except ValueError as exc:
        raise VerifyError(f"set '{set_name}': its record '{store.show(f'{set_name}/{SET_RECORD}')}' is unreadable "
                          f"({exc})") from None
    if record is None:
        raise VerifyError(f"set '{set_name}': its record '{store.show(f'{set_name}/{SET_RECORD}')}' is missing")
    if record.get("set_hash") != want:
        raise VerifyError(f"set '{set_name}': the manifest says set hash {want}, its record "
                          f"'{set_name}/{SET_RECORD}' says {record.get('set_hash')}")
    if config_hash(record.get("settings")) != want:
        raise VerifyError(f"set '{set_name}': the settings in '{set_name}/{SET_RECORD}' do not hash to its set "
                          f"hash {want} (the record was edited)")
    return want


def verify_dataset(out_dir: str | Path, check_hashes: bool = True) -> dict:
    """Check a built dataset (a folder or an fsspec URL); returns a summary, raises VerifyError naming the
    first bad shard.

    Checks: every set finished all its shard jobs and holds at least one sample; no set has more
    failed samples than the build's `max_failed_fraction`; each set's hash agrees between the manifest,
    its record and the record's settings, and the dataset hash is the hash over the sets; every tar
    listed exists with its recorded size and sha256 (unless `check_hashes` is False), reads as a tar with
    safe member names, holds the recorded number of samples, each with an image and a JSON naming its
    set's hash; no key repeats; no unlisted tar. Each tar is streamed once (hash and members together)."""
    try:
        store = Store(out_dir, what="dataset")
    except ConfigError as exc:
        raise VerifyError(str(exc)) from None
    try:
        if not store.is_dir():
            raise VerifyError(f"dataset folder not found: '{store}'")
    except (OSError, ValueError) as exc:
        raise VerifyError(f"dataset '{store}' cannot be read: {type(exc).__name__}: {exc}") from None
    manifest = read_manifest_checked(store)
    if manifest.get("format") == "fakeforge-webdataset/2":
        want = dataset_hash({k: v for k, v in manifest["sets"].items()})
        if manifest.get("config_hash") != want:
            raise VerifyError(f"'{store.show(MANIFEST)}': config_hash {manifest.get('config_hash')} is not the hash "
                              f"over its sets' hashes ({want})")
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
                              f"'{store.show(set_name)}/*.done.json')")
        if isinstance(max_failed, (int, float)) and info["failed"] > max_failed * total:
            raise VerifyError(f"set '{set_name}': {info['failed']} of {total} samples failed, over the build's "
                              f"max_failed_fraction {max_failed:g} (errors in '{store.show(set_name)}/*.done.json')")
        set_hash = _check_set_identity(store, manifest, set_name, info)
        sizes = store.listdir(set_name)
        count = 0
        for t in info["tars"]:
            if not isinstance(t, dict) or not isinstance(t.get("name"), str) or ".." in Path(t["name"]).parts \
                    or Path(t["name"]).is_absolute() or Path(t["name"]).parent.as_posix() != set_name:
                raise VerifyError(f"'{store.show(MANIFEST)}' lists a bad tar entry {t!r}")
            name = Path(t["name"]).name
            shown = store.show(t["name"])
            listed.add(t["name"])
            if name not in sizes:
                raise VerifyError(f"shard '{shown}' listed in the manifest is missing")
            if sizes[name] != t.get("bytes"):
                raise VerifyError(f"shard '{shown}' has {sizes[name]} bytes, manifest says {t.get('bytes')}")
            try:
                members, digest, problem = _read_tar(store, t["name"], set_hash)
            except OSError as exc:
                raise VerifyError(f"shard '{shown}' cannot be read: {exc}") from None
            if check_hashes and digest != t.get("sha256"):
                raise VerifyError(f"shard '{shown}' sha256 does not match the manifest")
            if problem:
                raise VerifyError(problem)
            if len(members) != t.get("count"):
                raise VerifyError(f"shard '{shown}' holds {len(members)} samples, manifest says {t.get('count')}")
            for key, exts in members.items():
                if key in seen_keys:
                    raise VerifyError(f"duplicate key '{key}' in shard '{shown}' (also in '{seen_keys[key]}')")
                seen_keys[key] = shown
                if "json" not in exts or not exts & set(IMAGE_KEYS):
                    raise VerifyError(f"sample '{key}' in shard '{shown}' lacks its image or json ({sorted(exts)})")
            count += len(members)
            summary["tars"] += 1
        if count != info["count"]:
            raise VerifyError(f"set '{set_name}' holds {count} samples, manifest says {info['count']}")
        summary["sets"][set_name] = count
        summary["failed"][set_name] = info["failed"]
        summary["samples"] += count
    stray = [f"{d}/{n}" for d in store.subdirs() if not d.startswith(".")
             for n in store.listdir(d) if n.endswith(".tar") and f"{d}/{n}" not in listed]
    if stray:
        raise VerifyError(f"shard '{store.show(stray[0])}' is not listed in the manifest ({len(stray)} stray tar(s))")
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dirs", nargs="+", metavar="DIR",
                        help="built dataset folder(s) or URL(s) (s3://bucket/prefix) holding manifest.json")
    parser.add_argument("--no-hash", action="store_true", help="skip the sha256 check (faster)")
    parser.epilog = "example:\n  fakeforge verify runs/default"


def run(args: argparse.Namespace) -> int:
    from fakeforge.shards.store import redact_url

    status = 0
    for d in args.dirs:
        shown = redact_url(d)  # credentials in a URL are used for reading, never printed
        try:
            s = verify_dataset(d, check_hashes=not args.no_hash)
            sets = ", ".join(f"{k}={v}" + (f" ({s['failed'][k]} failed)" if s["failed"].get(k) else "")
                             for k, v in s["sets"].items())
            failed = sum(s["failed"].values())
            print(f"OK {shown}: {s['samples']} samples in {s['tars']} tars ({sets})"
                  + (f"; {failed} failed samples within the build's budget, listed in */*.done.json" if failed
                     else ""))
        except VerifyError as exc:
            print(f"FAILED {shown}: {exc}", file=sys.stderr)
            status = 1
    return status
