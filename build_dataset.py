"""Build real/fake image sets as WebDataset shards (same as `fakeforge build`).

    python build_dataset.py --config CONFIG [--output DIR] [--limit N] [--tiny] [--set key=value ...]
    accelerate launch build_dataset.py --config CONFIG      # one process per GPU, disjoint shards
"""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the build; returns the exit code."""
    from fakeforge.cli import main as cli_main

    return cli_main(["build", *(sys.argv[1:] if argv is None else argv)], exiting=argv is None)


if __name__ == "__main__":
    sys.exit(main())
