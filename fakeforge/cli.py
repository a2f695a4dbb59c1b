"""The `fakeforge` console script: one subcommand per stage, each living in its own module.

Subcommand modules are imported only when used, so `fakeforge ls` or `fakeforge validate` start
fast and never load torch models.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# name -> (module, function adding arguments, function running the command, one-line help)
COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "build": ("fakeforge.builder.cli", "add_build_arguments", "run_build",
              "build real/fake image sets as WebDataset shards from a build config"),
    "validate": ("fakeforge.builder.cli", "add_validate_arguments", "run_validate",
                 "check build/generator configs without loading any model"),
    "verify": ("fakeforge.shards.verify", "add_arguments", "run",
               "check a built dataset folder against its manifest"),
    "audit": ("fakeforge.audit", "add_arguments", "run",
              "shortcut audit: do format features alone (size, JPEG quality...) separate real from fake?"),
    "push": ("fakeforge.push", "add_arguments", "run",
             "upload a verified build (card, manifest, shards) to a Hugging Face hub dataset repo"),
    "ls": ("fakeforge.builder.cli", "add_ls_arguments", "run_ls",
           "list registered generators, generator presets, attacks, detectors and tiny twins"),
    "zoo": ("fakeforge.zoo_cli", "add_arguments", "run",
            "model zoos: list hub models into a models file; per-model counts of a built zoo set"),
    "tiny-models": ("fakeforge.tiny.cli", "add_arguments", "run",
                    "build the tiny random-weight twins of every model family (offline)"),
    "train": ("detector.cli", "add_train_arguments", "run_train", "train a detector on shard sets"),
    "stats": ("detector.cli", "add_stats_arguments", "run_stats",
              "compute per-channel mean/std of training shards"),
    "detect": ("detector.cli", "add_detect_arguments", "run_detect", "classify images or folders"),
    "eval": ("detector.cli", "add_eval_arguments", "run_eval",
             "per-set accuracy/AUC/AP table over shard sets or folders"),
    "demo": ("fakeforge.pipeline", "add_demo_arguments", "run_demo",
             "the whole workflow offline on CPU in minutes (tiny twins, real sample photos) -> report.html"),
    "run": ("fakeforge.pipeline", "add_arguments", "run",
            "run a whole pipeline config: build -> verify -> stats -> train -> eval -> report (resumable)"),
    "report": ("detector.eval.report", "add_arguments", "run",
               "self-contained report.html/report.md from one or more eval folders, side by side"),
    "convert-antifakeprompt": ("detector.cli", "add_convert_arguments", "run_convert",
                               "convert an official AntifakePrompt LAVIS checkpoint"),
    "convert-dire": ("detector.cli", "add_convert_dire_arguments", "run_convert_dire",
                     "convert a released DIRE classifier (.pth) into a DIRE checkpoint folder"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The CLI parser; only `command`'s module is imported (the others just show their one-line help)."""
    parser = argparse.ArgumentParser(prog="fakeforge", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, add_fn, _run, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if name == command:
            getattr(importlib.import_module(module), add_fn)(p)
    return parser


def main(argv: list[str] | None = None, exiting: bool | None = None) -> int:
    """Entry point of the `fakeforge` console script; returns the process exit code. Ctrl-C and SIGTERM
    at any moment end in one line and exit 130 / 143 (`fakeforge.interrupts`). `exiting` (default: when
    `argv` is None, i.e. the console script) says the process ends on return."""
    from fakeforge.interrupts import guarded

    exiting = argv is None if exiting is None else exiting
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    return guarded(f"fakeforge {command}" if command in COMMANDS else "fakeforge", lambda: _main(argv, command),
                   exiting=exiting)


def _main(argv: list[str], command: str | None) -> int:
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not args.command:
        parser.print_help()
        return 2
    module, _add, run_fn, _help = COMMANDS[args.command]
    from fakeforge.config import ConfigError
    from fakeforge.registry import UnknownNameError

    try:
        return int(getattr(importlib.import_module(module), run_fn)(args) or 0)
    except (ConfigError, UnknownNameError, FileNotFoundError) as exc:
        for line in (exc.problems if isinstance(exc, ConfigError) else [str(exc)]):
            print(f"fakeforge {args.command}: error: {line}", file=sys.stderr)
        return 2

if __name__ == "__main__":
    sys.exit(main())
