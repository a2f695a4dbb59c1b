"""Where a dataset lives: a local folder or any fsspec URL (s3://, gs://, file://, ...).

`Store` gives the builder, `verify` and the readers one small set of operations on a dataset root,
with paths relative to it ("sd2/000003.tar"). Two implementations of the same contract:

* local folders (a plain path or file://): written in place with temp names, fsync and atomic
  renames, exactly as before;
* object stores and other fsspec filesystems: no atomic rename exists, so a file is made in a local
  staging folder and uploaded whole (`upload`), its size read back and compared; callers write the
  done-marker only after every upload checked out. Listings give sizes, so checking that a finished
  shard is whole costs one LIST per set, not one request per tar.

Credentials are never part of a Store: fsspec backends read them from their usual places (for S3:
AWS_* variables, ~/.aws/credentials, instance roles; the endpoint from AWS_ENDPOINT_URL or
FSSPEC_S3_ENDPOINT_URL). URLs are shown with any `user:password@` part removed (`redact_url`).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import IO

from fakeforge.config import ConfigError
from fakeforge.files import write_atomic as write_file_atomic  # noqa: F401  (the one atomic write)

LOCAL_PROTOCOLS = (None, "file", "local")
_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@")


def redact_url(url: str | Path) -> str:
    """`url` without any `user:password@` part (safe for logs, manifests and configs)."""
    return _USERINFO.sub(r"\1", str(url))


def is_url(location: str | Path) -> bool:
    """True for a URL with a non-local fsspec protocol ("s3://b/x"), False for paths and file:// URLs."""
    from fsspec.core import split_protocol

    return not isinstance(location, Path) and split_protocol(str(location))[0] not in LOCAL_PROTOCOLS


def filesystem_for(url: str, what: str = "output"):
    """(fsspec filesystem, root path) of `url`; ConfigError naming the URL for an unknown protocol or a
    backend package that is not installed."""
    import fsspec
    from fsspec.core import split_protocol
    from fsspec.registry import known_implementations

    protocol = split_protocol(url)[0]
    try:
        fsspec.get_filesystem_class(protocol)
    except ValueError:
        raise ConfigError(f"{what} '{redact_url(url)}': unknown URL protocol '{protocol}://' (fsspec knows "
                          f"{', '.join(sorted(p for p in fsspec.available_protocols() if len(p) > 1)[:12])}, ...)"
                          ) from None
    except ImportError:
        err = known_implementations.get(protocol, {}).get("err", "")
        package = known_implementations.get(protocol, {}).get("class", "").split(".")[0] or "its fsspec backend"
        raise ConfigError(f"{what} '{redact_url(url)}': protocol '{protocol}://' needs the package '{package}' "
                          f"(pip install {package}){'; ' + err if err else ''}") from None
    return fsspec.core.url_to_fs(url)



def sha256_of(fh: IO[bytes], chunk: int = 1 << 20) -> str:
    """Hex sha256 of what a binary reader yields, read in chunks."""
    h = hashlib.sha256()
    while block := fh.read(chunk):
        h.update(block)
    return h.hexdigest()


class Store:
    """A dataset root (local folder or fsspec URL); every path argument is relative to it."""

    def __init__(self, location: str | Path, what: str = "output"):
        from fsspec.core import split_protocol

        text = str(location)
        protocol, rest = split_protocol(text)
        self.local = protocol in LOCAL_PROTOCOLS
        self.what = what
        if self.local:
            self.root = Path(rest if protocol else text)
            self.protocol = "file"
            self.fs = None
        else:
            import logging

            for noisy in ("aiobotocore", "botocore", "s3fs"):  # "found credentials in ..." lines at INFO
                logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger(noisy).level))
            self.fs, root = filesystem_for(text, what)
            self.root = root.rstrip("/")
            self.protocol = protocol
        self.display = str(self.root) if self.local else redact_url(f"{protocol}://{self.root}")

    def __str__(self) -> str:
        return self.display

    # -- names ----------------------------------------------------------------------------------------
    def path(self, rel: str = "") -> str:
        """The filesystem path of `rel` (a local path, or the fsspec path without protocol)."""
        if self.local:
            return str(self.root / rel) if rel else str(self.root)
        return f"{self.root}/{rel}" if rel else self.root

    def url(self, rel: str = "") -> Path | str:
        """What a user or webdataset opens: a local Path, or a URL string."""
        if self.local:
            return self.root / rel if rel else self.root
        return f"{self.protocol}://{self.path(rel)}"

    def show(self, rel: str = "") -> str:
        """`rel` for messages (credentials removed)."""
        return redact_url(str(self.url(rel)))

    # -- reading --------------------------------------------------------------------------------------
    def fresh(self, method: str, path: str, **kw):
        """`fs.ls` / `fs.info` from the store itself, never from fsspec's listing cache: the build lists
        and uploads in different threads, and a listing cached by one must not hide another's upload."""
        try:
            return getattr(self.fs, method)(path, refresh=True, **kw)
        except TypeError:  # a backend without the `refresh` argument
            self.fs.invalidate_cache(path)
            return getattr(self.fs, method)(path, **kw)

    def exists(self, rel: str = "") -> bool:
        return Path(self.path(rel)).exists() if self.local else self.fs.exists(self.path(rel))

    def is_dir(self, rel: str = "") -> bool:
        return Path(self.path(rel)).is_dir() if self.local else self.fs.isdir(self.path(rel))

    def read_bytes(self, rel: str) -> bytes | None:
        """The file's bytes, or None when it does not exist."""
        try:
            if self.local:
                return Path(self.path(rel)).read_bytes()
            return self.fs.cat_file(self.path(rel))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def read_json(self, rel: str) -> dict | None:
        """Parsed JSON, None when missing; ValueError when present but not a JSON object."""
        data = self.read_bytes(rel)
        if data is None:
            return None
        value = json.loads(data)
        if not isinstance(value, dict):
            raise ValueError(f"'{self.show(rel)}' is not a JSON object")
        return value

    def read_many(self, rels: list[str]) -> dict[str, bytes | None]:
        """Several files at once (concurrent requests on object stores); missing ones map to None."""
        if self.local or not rels:
            return {r: self.read_bytes(r) for r in rels}
        got = self.fs.cat([self.path(r) for r in rels], on_error="return")
        out = {}
        for r in rels:
            value = got.get(self.path(r))
            out[r] = value if isinstance(value, bytes) else None
        return out

    def listdir(self, rel: str = "") -> dict[str, int]:
        """Files directly in folder `rel`: name -> size in bytes ({} for a missing folder)."""
        if self.local:
            out = {}
            try:
                with os.scandir(self.path(rel)) as it:
                    for e in it:
                        try:
                            if e.is_file():
                                out[e.name] = e.stat().st_size
                        except OSError:
                            continue
            except (FileNotFoundError, NotADirectoryError):
                pass
            return out
        try:
            entries = self.fresh("ls", self.path(rel), detail=True)
        except FileNotFoundError:
            return {}
        return {e["name"].rstrip("/").rsplit("/", 1)[-1]: int(e.get("size") or 0) for e in entries
                if e.get("type") == "file"}

    def subdirs(self, rel: str = "") -> list[str]:
        """Names of the folders directly in `rel`, sorted."""
        if self.local:
            p = Path(self.path(rel))
            return sorted(d.name for d in p.iterdir() if d.is_dir()) if p.is_dir() else []
        try:
            entries = self.fresh("ls", self.path(rel), detail=True)
        except FileNotFoundError:
            return []
        return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory")

    def open_read(self, rel: str) -> IO[bytes]:
        """A streaming binary reader (object stores: ranged reads with read-ahead, never the whole file)."""
        if self.local:
            return open(self.path(rel), "rb")
        return self.fs.open(self.path(rel), "rb", block_size=8 << 20, cache_type="readahead")

    def sha256(self, rel: str) -> str:
        with self.open_read(rel) as fh:
            return sha256_of(fh)

    # -- writing --------------------------------------------------------------------------------------
    def makedirs(self, rel: str = "") -> None:
        if self.local:
            Path(self.path(rel)).mkdir(parents=True, exist_ok=True)
        # object stores have no folders: a key's prefix exists once an object is under it

    def write_json(self, rel: str, data: dict) -> None:
        """Replace `rel` with `data` as a whole: local temp file + fsync + rename; one PUT on object stores."""
        self.write_bytes(rel, json.dumps(data, indent=1).encode())

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Replace `rel` with `data` as a whole (local: a temp name unique to this process, fsync, rename)."""
        if not self.local:
            self.fs.pipe_file(self.path(rel), data)
            return
        path = Path(self.path(rel))
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file_atomic(path, data)

    def upload(self, local_file: Path, rel: str) -> int:
        """Move a finished local file to `rel` and return its size. Local: an atomic rename in the same
        folder. Object stores: upload, then read the size back; a mismatch is an EIO OSError."""
        size = Path(local_file).stat().st_size
        if self.local:
            os.replace(local_file, self.path(rel))
            return size
        self.fs.put_file(str(local_file), self.path(rel))
        remote = self.fresh("info", self.path(rel)).get("size")
        if remote != size:
            raise OSError(errno.EIO, f"uploaded '{self.show(rel)}' has {remote} bytes, the local file {size}")
        Path(local_file).unlink(missing_ok=True)
        return size

    def remove(self, rel: str) -> None:
        """Remove one file (no error when it is not there)."""
        try:
            if self.local:
                Path(self.path(rel)).unlink()
            else:
                self.fs.rm_file(self.path(rel))
        except FileNotFoundError:
            pass

    def remove_tree(self, rel: str) -> None:
        if self.local:
            shutil.rmtree(self.path(rel), ignore_errors=True)
        elif self.fs.exists(self.path(rel)):
            self.fs.rm(self.path(rel), recursive=True)

    def move_tree(self, src: str, dst: str, last: str | None = None) -> None:
        """Move folder `src` to `dst` (which must not exist). Local: one rename. Object stores: copy every
        object (`last` after all the others), then delete the source."""
        if self.local:
            os.replace(self.path(src), self.path(dst))
            return
        names = sorted(self.listdir(src), key=lambda n: n == last)
        for name in names:
            self.fs.copy(self.path(f"{src}/{name}"), self.path(f"{dst}/{name}"))
        self.remove_tree(src)

    def check_writable(self) -> None:
        """ConfigError (before any work) when the output cannot be written: a file in the way, a read-only
        folder, a bucket that does not exist, missing or refused credentials."""
        if self.local:
            out = self.root
            if out.exists() and not out.is_dir():
                raise ConfigError(f"output '{out}' is a file, not a folder; choose another --output")
            anchor = out
            while not anchor.exists() and anchor != anchor.parent:
                anchor = anchor.parent
            if not os.access(anchor, os.W_OK | os.X_OK):
                raise ConfigError(f"output '{out}' cannot be written: '{anchor}' is read-only or not writable "
                                  "for this user")
            return
        probe = f".fakeforge-write-test-{os.getpid()}"
        try:
            if self.fs.isfile(self.root):
                raise ConfigError(f"output '{self}' is a file, not a folder; choose another --output")
            self.fs.pipe_file(self.path(probe), b"")
            self.fs.rm_file(self.path(probe))
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - backends raise their own types (botocore, google.auth...)
            raise ConfigError(describe_access_error(self, exc)) from None


def describe_access_error(store: Store, exc: BaseException) -> str:
    """One line for a failed first access to an object store: missing bucket, credentials, permissions."""
    name = type(exc).__name__
    bucket = store.root.split("/", 1)[0]
    text = str(exc)
    if name in ("NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError") or \
            "credentials" in text.lower() and "unable to locate" in text.lower():
        return (f"output '{store}': no credentials for {store.protocol}:// ({name}); set them the usual way "
                "(for S3: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws/credentials)")
    if isinstance(exc, FileNotFoundError) or "NoSuchBucket" in text or "bucket does not exist" in text.lower():
        return f"output '{store}': bucket '{bucket}' does not exist (create it first, or fix the URL)"
    if isinstance(exc, PermissionError) or "AccessDenied" in text or "Forbidden" in text:
        return f"output '{store}': access denied writing to bucket '{bucket}' ({text.splitlines()[0][:200]})"
    return f"output '{store}' cannot be written: {name}: {text.splitlines()[0][:200] if text else ''}"
