"""CLI of the dataset builder: `fakeforge build`, `fakeforge validate`, `fakeforge ls`."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from fakeforge.config import ConfigError

log = logging.getLogger("fakeforge.builder")

BUILD_EPILOG = """examples:
  fakeforge build --tiny                                  # embedded demo source, tiny twins, runs/default
  fakeforge build --config antifakeprompt_test --tiny --demo-data   # dry-run a paper recipe anywhere
  fakeforge build --config configs/build/my.yaml --set sets.1.generator.num_inference_steps=30
  accelerate launch build_dataset.py --config antifakeprompt_test   # one process per GPU
  fakeforge build --config C --output s3://bucket/prefix       # any fsspec URL (credentials: the usual ones)
  fakeforge build --config C --rank $SLURM_ARRAY_TASK_ID --world-size 8   # one job-array task, then once plain
Rerun the same command to resume: finished shards are skipped, broken ones redone. Add a set to the
config (or raise a limit) and rerun: only the new work is done.
Exit codes: 0 complete, 1 build failed (see the summary), 2 bad configuration or folder in use,
130 interrupted (Ctrl-C), 143 terminated (SIGTERM)."""


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None,
                        help="build config: a YAML path or a name under configs/build/ (default: 'default')")
    parser.add_argument("--output", default=None,
                        help="output folder or fsspec URL, e.g. s3://bucket/prefix (overrides the config's 'output')")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N source images of each set")
    parser.add_argument("--tiny", action="store_true", help="swap every model id for its tiny random-weight twin")
    parser.add_argument("--tiny-dir", default=None, help="where tiny twins live (default $FAKEFORGE_TINY_DIR "
                                                         "or ~/.cache/fakeforge/tiny)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. source.limit=100 (repeatable)")
    parser.add_argument("--retry-failed", action="store_true",
                        help="also redo finished shards that recorded failed samples")
    parser.add_argument("--verify-existing", action="store_true",
                        help="check the sha256 of every finished shard before skipping it (default: sizes only)")
    parser.add_argument("--demo-data", action="store_true",
                        help="replace every source with the built-in sample photos (8 a set; output gets a _demo "
                             "suffix): with --tiny, any build config dry-runs offline in minutes")
    parser.add_argument("--rebuild-set", dest="rebuild_sets", action="append", default=[], metavar="NAME",
                        help="rebuild this set although its settings changed (built beside the old one and "
                             "swapped in when complete; repeatable)")
    parser.add_argument("--prune", action="store_true",
                        help="delete sets on disk that this config no longer names (default: keep them, with a "
                             "warning, in the manifest)")
    parser.add_argument("--rank", type=int, default=None,
                        help="this process's slot among --world-size independent processes (job arrays; "
                             "accelerate/torchrun set ranks themselves)")
    parser.add_argument("--world-size", type=int, default=None, help="number of independent processes (see --rank)")
    parser.add_argument("--log-every", type=float, default=30.0, metavar="SECONDS",
                        help="when stderr is not a terminal: one progress line per rank every SECONDS (default 30)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    parser.epilog = BUILD_EPILOG


def run_build(args: argparse.Namespace) -> int:
    import errno

    from fakeforge.builder.config import resolve_build
    from fakeforge.builder.runner import BuildFailed, build

    if not args.log_every > 0:
        raise ConfigError(f"--log-every {args.log_every} must be a positive number of seconds")
    resolved = resolve_build(args.config, args.overrides, tiny=args.tiny, limit=args.limit, output=args.output,
                             tiny_root=args.tiny_dir, demo_data=args.demo_data)
    _refuse_output_inside_a_dataset(resolved.output)
    try:
        summary = build(resolved, progress=not args.no_progress, retry_failed=args.retry_failed,
                        verify_existing=args.verify_existing, rebuild_sets=args.rebuild_sets, prune=args.prune,
                        rank=args.rank, world_size=args.world_size, log_every=args.log_every)
    except BuildFailed as exc:
        for line in str(exc).splitlines():
            print(f"fakeforge build: error: {line}", file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        import shutil

        where = Path(exc.filename or str(resolved.output))
        try:
            free = f"{shutil.disk_usage(where if where.is_dir() else where.parent).free / 2**20:.1f} MiB free"
        except OSError:
            free = "free space unknown"
        print(f"fakeforge build: error: disk full writing '{where}' ({free}); free some space and rerun the same "
              "command to resume", file=sys.stderr)
        return 1
    if summary.get("manifest") is not None:
        from fakeforge.shards.store import redact_url

        print(f"wrote {redact_url(resolved.output)} ({sum(v['count'] for v in summary['manifest'].values())} samples); "
              f"check it with: fakeforge verify {redact_url(resolved.output)}")
    return 0


def _refuse_output_inside_a_dataset(output) -> None:
    """A local output inside another finished dataset (a folder above it holds manifest.json) would mix
    its tars into that dataset's set folders: refused in one line."""
    from fakeforge.shards.store import is_url

    if is_url(output):
        return
    here = Path(output).absolute()
    for parent in here.parents:
        if (parent / "manifest.json").is_file():
            raise ConfigError(f"output '{output}' is inside the dataset '{parent}' (it has a manifest.json); "
                              "build into a folder outside it")


def add_validate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("configs", nargs="*", metavar="CONFIG",
                        help="build configs (paths or names); default: every file in configs/build/, "
                             "configs/generators/ and configs/attacks/")
    parser.add_argument("--tiny", action="store_true", help="validate with the tiny-twin overrides applied")
    parser.epilog = "examples:\n  fakeforge validate\n  fakeforge validate configs/build/antifakeprompt_train.yaml"


def run_validate(args: argparse.Namespace) -> int:
    """Check build configs and generator presets without loading any model; exit 1 if any has a problem.

    Every config and every set is checked; each problem is printed on its own line with its dotted key."""
    from fakeforge.builder.validate import validate_target
    from fakeforge.config import CONFIG_ROOT
    from generators import ATTACK_PRESET_DIR, PRESET_DIR

    targets = args.configs or [str(p) for p in sorted((CONFIG_ROOT / "build").glob("*.yaml"))
                               + sorted(PRESET_DIR.glob("*.yaml")) + sorted(ATTACK_PRESET_DIR.glob("*.yaml"))]
    failed = 0
    for target in targets:
        report = validate_target(target, args.tiny)
        if report.problems:
            failed += 1
            for problem in report.problems:
                print(f"FAIL {report.kind:6s} {target}: {problem}", file=sys.stderr)
        else:
            print(f"ok   {report.kind:6s} {target}{': ' + report.detail if report.detail else ''}")
        for note in report.notes:
            print(f"note {report.kind:6s} {target}: {note}")
    if failed:
        print(f"{failed} of {len(targets)} config(s) have problems", file=sys.stderr)
    return 1 if failed else 0


def add_ls_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", nargs="?", default="all",
                        choices=["all", "generators", "presets", "builds", "attacks", "detectors", "robustness",
                                 "tiny"])


def run_ls(args: argparse.Namespace) -> int:
    """Print the registries and named configs."""
    import importlib

    from fakeforge.config import CONFIG_ROOT, load_yaml
    from fakeforge.twins import TWINS
    from generators import ATTACK_PRESET_DIR, GENERATORS, PRESET_DIR, attack_preset_names, preset_names

    def section(title, rows):
        print(title)
        for name, text in rows:
            print(f"  {name:24s} {text}")

    w = args.what
    if w in ("all", "presets"):
        section("generators (presets in configs/generators/):",
                [(n, load_yaml(PRESET_DIR / f"{n}.yaml").get("description", "")) for n in preset_names()])
    if w in ("all", "generators"):
        section("generator types:", [(n, GENERATORS.help(n)) for n in GENERATORS.names()])
    if w in ("all", "builds"):
        section("build configs (configs/build/):", [(p.stem, load_yaml(p).get("description", ""))
                                                    for p in sorted((CONFIG_ROOT / "build").glob("*.yaml"))])
    if w in ("all", "presets", "attacks"):
        section("attack presets (configs/attacks/, used like generator presets):",
                [(n, load_yaml(ATTACK_PRESET_DIR / f"{n}.yaml").get("description", "")) for n in attack_preset_names()])
    for kind, module, attr in (("attacks", "attacks", "ATTACKS"), ("detectors", "detector", "DETECTORS")):
        if w in ("all", kind):
            try:
                reg = getattr(importlib.import_module(module), attr)
                section(f"{kind}:", [(n, reg.help(n)) for n in reg.names()])
            except (ImportError, AttributeError):
                section(f"{kind}:", [])
    if w in ("all", "detectors"):
        configs = sorted((CONFIG_ROOT / "detector").glob("*.yaml"))
        section("detector configs (configs/detector/; fakeforge train --config NAME):",
                [(c.stem, f"[{d.get('detector')}] {d.get('description', '')}") for c in configs
                 for d in [load_yaml(c)]])
    if w in ("all", "robustness"):
        from fakeforge.protocols import protocol_dir, protocol_names

        section("robustness protocols (configs/robustness/; fakeforge eval --robustness NAME):",
                [(n, load_yaml(protocol_dir() / f"{n}.yaml").get("description", "")) for n in protocol_names()])
    if w in ("all", "tiny"):
        section("tiny twins:", [(n, TWINS.help(n)) for n in TWINS.names()])
    return 0
