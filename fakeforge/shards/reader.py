"""Find and read the shard sets that the dataset builder writes, on a local disk or at any fsspec URL.

Layout of a built dataset (a folder, or a prefix such as s3://bucket/data/v1):

    OUT/manifest.json              counts per set, sha256 per tar, set hashes (written at the end of a build)
    OUT/build_config.yaml          the resolved build config of the last build
    OUT/<set>/_set.json            the set's record: its settings and their hash
    OUT/<set>/NNNNNN.tar           WebDataset shards: <key>.<jpg|png|webp>, <key>.json, maybe <key>.mask.png
    OUT/<set>/NNNNNN.done.json     per-shard done-marker (written after the tar is complete; .stats.json before 0.2)

Local shards are returned as `Path`s (as before); shards behind a URL as URL strings. Either kind goes
to `webdataset.WebDataset` as `str(tar)`: importing this module registers an fsspec opener for every
fsspec protocol webdataset does not handle itself, so s3:// shards are streamed with ranged reads and
never downloaded whole. `open_shard`, `shard_id` and `shard_fingerprint` work on both kinds.
"""
from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import IO, Callable, Iterator

from fakeforge.shards.store import Store, is_url

IMAGE_KEYS = ("jpg", "png", "webp", "jpeg")
Shard = Path | str


def _fsspec_gopen(url, mode="rb", bufsize=8192, **kw):
    """webdataset opener for fsspec URLs: a streaming reader (read-ahead blocks, no full download)."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(str(url))
    return fs.open(path, mode, block_size=8 << 20, cache_type="readahead")


def _register_webdataset_schemes() -> None:
    import importlib

    try:
        import fsspec

        module = importlib.import_module("webdataset.gopen")  # the module (the package exports a function too)
    except ImportError:
        return
    schemes = getattr(module, "gopen_schemes", None)
    if schemes is None:
        return
    for protocol in fsspec.available_protocols():
        if protocol not in schemes and protocol not in ("file", "local"):
            schemes[protocol] = _fsspec_gopen
    if "gs" in schemes and schemes["gs"] is not _fsspec_gopen:
        import importlib.util

        if importlib.util.find_spec("gcsfs") is not None:  # prefer gcsfs (credentials as usual) over gsutil
            schemes["gs"] = _fsspec_gopen


_register_webdataset_schemes()


def _url_store(url: str) -> Store:
    return Store(url.rstrip("/"), what="shard path")


def list_tars(path: str | Path) -> list[Shard]:
    """Complete tar shards at `path`: a .tar file, a set folder, or a dataset folder (all sets)."""
    if is_url(path):
        text = str(path).rstrip("/")
        store = _url_store(text)
        if text.endswith(".tar"):
            if not store.fs.isfile(store.root):
                raise FileNotFoundError(f"shard not found: '{store}'")
            return [text]
        found = sorted(p for p in store.fs.find(store.root) if p.endswith(".tar"))
        if not found and not store.fs.exists(store.root):
            raise FileNotFoundError(f"shard path not found: '{store}'")
        return [f"{store.protocol}://{p}" for p in found if not _hidden(p[len(store.root):])]
    path = Path(path)
    if path.is_file():
        if path.suffix != ".tar":
            raise ValueError(f"'{path}' is not a .tar shard")
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"shard path not found: '{path}'")
    return sorted(p for p in path.rglob("*.tar") if p.is_file() and not _hidden(str(p.relative_to(path))))


def _hidden(rel: str) -> bool:
    """Folders starting with '.' hold work in progress (a set being rebuilt), never a set."""
    return any(part.startswith(".") for part in rel.strip("/").split("/")[:-1])


def find_sets(path: str | Path) -> dict[str, list[Shard]]:
    """Map set name -> tar shards. A folder of tars is one set (named after the folder); a dataset
    folder with one subfolder per set gives one entry per subfolder; `NAME=PATH` names a set explicitly.
    PATH may be an fsspec URL (s3://bucket/prefix)."""
    text = str(path)
    if "=" in text.split("://", 1)[0] and not Path(text).exists():
        name, p = text.split("=", 1)
        return {name: list_tars(p)}
    if is_url(text):
        return _find_url_sets(text.rstrip("/"))
    path = Path(path)
    if path.is_file():
        return {path.parent.name: list_tars(path)}
    if not path.is_dir():
        raise FileNotFoundError(f"shard path not found: '{path}'")
    direct = sorted(path.glob("*.tar"))
    if direct:
        return {path.name: direct}
    sets = {sub.name: sorted(sub.glob("*.tar")) for sub in sorted(path.iterdir())
            if sub.is_dir() and not sub.name.startswith(".")}
    sets = {k: v for k, v in sets.items() if v}
    if not sets:
        raise FileNotFoundError(f"no .tar shards found under '{path}'")
    return sets


def _find_url_sets(url: str) -> dict[str, list[str]]:
    store = _url_store(url)
    name = store.root.rsplit("/", 1)[-1]
    if url.endswith(".tar"):
        return {store.root.rsplit("/", 2)[-2]: list_tars(url)}
    direct = sorted(n for n in store.listdir() if n.endswith(".tar"))
    if direct:
        return {name: [str(store.url(n)) for n in direct]}
    sets = {}
    for sub in store.subdirs():
        if sub.startswith("."):
            continue
        tars = sorted(n for n in store.listdir(sub) if n.endswith(".tar"))
        if tars:
            sets[sub] = [str(store.url(f"{sub}/{n}")) for n in tars]
    if not sets:
        raise FileNotFoundError(f"no .tar shards found under '{store}'")
    return sets


def open_shard(tar: Shard) -> IO[bytes]:
    """A streaming binary reader of one shard (local file, or ranged reads from a URL)."""
    if is_url(tar):
        return _fsspec_gopen(str(tar))
    return open(tar, "rb")


def iter_members(tars: list[Shard], select: Callable[[str, str], bool] | None = None
                 ) -> Iterator[tuple[str, str, bytes]]:
    """(key, extension, bytes) of the file members of tar shards, streamed in order (local files or URLs).
    The key is the member's base name up to its first dot, as webdataset splits it; the extension is
    lower-cased. `select(key, extension)` picks the members that are read; the others are skipped unread.
    Stop early by leaving the loop: the shard being read is closed."""
    for tar in tars:
        with open_shard(tar) as fh, tarfile.open(fileobj=fh, mode="r|") as tf:
            for member in tf:
                key, dot, ext = Path(member.name).name.partition(".")
                if not member.isfile() or not dot:
                    continue
                ext = ext.lower()
                if select is None or select(key, ext):
                    yield key, ext, tf.extractfile(member).read()


def shard_id(tar: Shard) -> str:
    """A stable identity of a shard's location: the resolved local path, or the URL."""
    return str(tar) if is_url(tar) else str(Path(tar).resolve())


def shard_fingerprint(tar: Shard) -> str:
    """Location, size and version (mtime, or the object's ETag) of a shard: changes when the shard does."""
    if is_url(tar):
        store = _url_store(str(tar))
        info = store.fresh("info", store.root)
        version = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified")
        return f"{tar}|{info.get('size')}|{version}"
    st = Path(tar).stat()
    return f"{Path(tar).resolve()}|{st.st_size}|{st.st_mtime_ns}"


def read_manifest(path: str | Path) -> dict:
    """The manifest.json of a dataset folder or URL."""
    store = Store(path, what="dataset")
    data = store.read_bytes("manifest.json")
    if data is None:
        raise FileNotFoundError(f"no manifest.json in '{store}' (is the build finished? rerun the build command)")
    return json.loads(data)


def sample_image_bytes(sample: dict) -> tuple[str, bytes]:
    """(extension, bytes) of the image member of a raw webdataset sample."""
    for ext in IMAGE_KEYS:
        if ext in sample:
            return ext, sample[ext]
    raise KeyError(f"sample '{sample.get('__key__')}' has no image member (looked for {IMAGE_KEYS})")
