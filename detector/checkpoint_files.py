"""What a single checkpoint file is, told from its bytes without unpickling or executing anything.

`sniff(path)` reads a file's first bytes (and, for a PyTorch zip, its small `data.pkl` record) and says
what it is: an official AntifakePrompt LAVIS checkpoint, another PyTorch checkpoint, a plain Python
pickle (naming what it would import and call when loaded), a safetensors file, text, an empty file,
a damaged archive or unknown bytes. Pickle opcodes are walked with `pickletools.genops`, which only
parses. `not_a_detector_checkpoint` turns the answer into the one-line refusal of `eval`, `detect` and
every loader that wants a checkpoint folder.
"""
from __future__ import annotations

import io
import pickletools
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["FileKind", "not_a_detector_checkpoint", "sniff"]

LAVIS_KEYS = ("Qformer.bert.embeddings.train_word_embeddings.weight", "llm_model.model.train_embed_tokens.weight")
TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
HEAD_BYTES = 1 << 16
MAX_PICKLE_SCAN = 64 << 20
# what a PyTorch checkpoint of tensors and containers imports; anything else is code the file would run
SAFE_GLOBALS = ("torch.", "collections.OrderedDict", "_codecs.encode", "builtins.set", "numpy.")


@dataclass
class FileKind:
    """`kind`: empty, text, pickle, torch, torch_legacy, safetensors, zip, damaged or unknown; `text`: the
    description for a message ("a plain Python pickle ..."); `lavis`: it holds both LAVIS row keys;
    `imports`: globals a pickle would import that a tensor checkpoint never needs."""
    kind: str
    text: str
    lavis: bool = False
    imports: list[str] = field(default_factory=list)

    @property
    def is_torch(self) -> bool:
        return self.kind in ("torch", "torch_legacy")

    @property
    def plain_torch(self) -> bool:
        """A PyTorch file of tensors and containers only (what torch.load(weights_only=True) reads)."""
        return self.is_torch and not self.imports


def _walk_pickle(data: bytes) -> tuple[list[str], list[str], object]:
    """(globals, strings, first constant) of the first pickle in `data`; ValueError if it does not parse."""
    names, strings, memo, pushed = [], [], {}, None
    first_const, seen_ops, memo_n = None, 0, 0
    for op, arg, _pos in pickletools.genops(io.BytesIO(data)):
        seen_ops += 1
        if op.name in ("GLOBAL", "INST"):
            names.append(str(arg).replace(" ", "."))
        elif op.name == "STACK_GLOBAL":
            if len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
        elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING",
                         "BINSTRING", "STRING"):
            strings.append(str(arg))
            pushed = str(arg)
        elif op.name == "MEMOIZE":
            if pushed is not None:
                memo[memo_n] = pushed
            memo_n += 1
        elif op.name in ("BINPUT", "LONG_BINPUT", "PUT") and pushed is not None:
            memo[arg] = pushed
        elif op.name in ("BINGET", "LONG_BINGET", "GET") and arg in memo:
            strings.append(memo[arg])
        if op.name in ("LONG1", "LONG4", "LONG", "INT", "BININT", "BININT1", "BININT2") and first_const is None \
                and seen_ops <= 2:
            first_const = arg
        if op.name not in ("MEMOIZE", "BINPUT", "LONG_BINPUT", "PUT", "PROTO", "FRAME") and not op.name.endswith(
                ("UNICODE", "STRING", "UNICODE8")):
            pushed = None
    return names, strings, first_const


def _foreign(names: list[str]) -> list[str]:
    return sorted({n for n in names if not n.startswith(SAFE_GLOBALS)})


def _describe_pickle(data: bytes, what: str) -> FileKind:
    try:
        names, strings, first = _walk_pickle(data)
    except Exception as exc:  # noqa: BLE001 - any parse failure means a damaged stream
        return FileKind("damaged", f"{what} that is truncated/damaged ({type(exc).__name__})")
    foreign = _foreign(names)
    lavis = all(k in strings for k in LAVIS_KEYS)
    if what == "a PyTorch checkpoint (zip format)" or first == TORCH_LEGACY_MAGIC:
        kind = "torch" if what.startswith("a PyTorch") else "torch_legacy"
        what = what if kind == "torch" else "a PyTorch checkpoint (legacy format)"
        if foreign:
            return FileKind(kind, f"{what} whose pickle would import {', '.join(foreign)} when loaded (code; "
                                  "it is not run)", lavis, foreign)
        keys = "with the AntifakePrompt LAVIS rows" if lavis else "without the AntifakePrompt LAVIS rows " \
                                                                   f"({LAVIS_KEYS[0]}, {LAVIS_KEYS[1]})"
        return FileKind(kind, f"{what} {keys}", lavis)
    if foreign:
        return FileKind("pickle", f"a plain Python pickle (not a PyTorch checkpoint) that would import "
                                  f"{', '.join(foreign)} when loaded (code; it is not run)", False, foreign)
    return FileKind("pickle", "a plain Python pickle, not a PyTorch checkpoint")


def sniff(path: str | Path) -> FileKind:
    """What the file at `path` is, from its bytes; nothing in it is unpickled or run."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return FileKind("empty", "an empty file (0 bytes)")
    with path.open("rb") as fh:
        head = fh.read(HEAD_BYTES)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        try:
            with zipfile.ZipFile(path) as zf:
                pkl = [n for n in zf.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
                if not pkl:
                    return FileKind("zip", "a zip archive that is not a PyTorch checkpoint (no data.pkl)")
                info = zf.getinfo(pkl[0])
                if info.file_size > MAX_PICKLE_SCAN:
                    return FileKind("torch", "a PyTorch checkpoint (zip format)")
                data = zf.read(pkl[0])
        except (zipfile.BadZipFile, OSError, EOFError, KeyError) as exc:
            return FileKind("damaged", f"a zip/PyTorch file that is truncated/damaged ({exc})")
        return _describe_pickle(data, "a PyTorch checkpoint (zip format)")
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        data = head if size <= HEAD_BYTES else path.read_bytes()[:MAX_PICKLE_SCAN]
        return _describe_pickle(data, "a plain Python pickle")
    if len(head) >= 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < size:
        return FileKind("safetensors", "a safetensors file (tensors without the detector.json beside them)")
    try:
        sample = head.decode("utf-8") if size <= HEAD_BYTES else head[:-4].decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        sample = None
    if sample is not None and "\x00" not in sample:
        first = (sample.strip().splitlines() or [""])[0][:40]
        return FileKind("text", f"a text file (starting {first!r}), not a PyTorch checkpoint")
    return FileKind("unknown", f"a {size}-byte binary file of no known checkpoint format")


def not_a_detector_checkpoint(path: str | Path) -> str:
    """The one-line refusal for a single file given where a checkpoint folder is wanted: what the file is,
    and what to do (an official LAVIS file is converted first)."""
    kind = sniff(path)
    if kind.lavis and not kind.imports:
        return (f"'{path}' is an official AntifakePrompt LAVIS checkpoint ({kind.text}); convert it first: "
                f"fakeforge convert-antifakeprompt {path} --out DIR")
    return (f"'{path}' is not a detector checkpoint: it is {kind.text}. Pass a checkpoint folder (with "
            "detector.json) or 'zero-shot'; official AntifakePrompt LAVIS .pth files convert with "
            "`fakeforge convert-antifakeprompt`")
