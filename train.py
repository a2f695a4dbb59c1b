"""Train a fake-image detector: `python train.py --config CONFIG [--set key=value ...] [--tiny] [--resume]`.

The same as `fakeforge train`; works under `accelerate launch train.py ...` too.
"""
from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, build the trainer from the config and fit; returns the exit code (130 / 143
    after Ctrl-C / SIGTERM at any moment, with one line)."""
    from fakeforge.interrupts import guarded

    return guarded("train.py", lambda: _main(argv), exiting=argv is None)


def _main(argv: list[str] | None) -> int:
    from detector.cli import add_train_arguments, run_train
    from fakeforge.config import ConfigError
    from fakeforge.registry import UnknownNameError

    parser = argparse.ArgumentParser(prog="train.py", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return run_train(args)
    except (ConfigError, UnknownNameError, FileNotFoundError) as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
