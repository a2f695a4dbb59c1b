"""`fakeforge tiny-models`: build the tiny random-weight twins offline."""
from __future__ import annotations

import argparse
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, help="folder for the twins (default $FAKEFORGE_TINY_DIR or "
                                                    "~/.cache/fakeforge/tiny)")
    parser.add_argument("--only", nargs="*", default=None, metavar="NAME", help="build only these twins")
    parser.add_argument("--force", action="store_true", help="rebuild twins that already exist")
    parser.epilog = "examples:\n  fakeforge tiny-models --out tiny\n  fakeforge tiny-models --only sd2 sd3"


def run(args: argparse.Namespace) -> int:
    from fakeforge.tiny import TWINS, build_tiny, tiny_root

    root = args.out or tiny_root()
    names = args.only or TWINS.names()
    for name in names:
        TWINS.check(name)
    for name in names:
        start = time.time()
        path = build_tiny(name, root, force=args.force)
        print(f"{name:22s} {path}  ({time.time() - start:.1f} s)")
    return 0
