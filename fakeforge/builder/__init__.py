"""The dataset builder as one library call: `build(config, options) -> Manifest`.

`config` is a resolved build (`fakeforge.builder.config.resolve_build`) or a build config name/path, resolved
here with `overrides`, `tiny`, `demo_data`, `output` and `limit`. `options` (`BuildOptions`) say how to run:
resume flags, ranks, progress. `fakeforge build`, `build_dataset.py` and the pipeline are thin layers over it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fakeforge.builder.config import ResolvedBuild
    from fakeforge.builder.runner import BuildOptions
    from fakeforge.shards.manifest import Manifest


def build(config: "ResolvedBuild | str | None" = None, options: "BuildOptions | None" = None, *,
          overrides: list[str] | None = None, tiny: bool = False, demo_data: bool = False, output: str | None = None,
          limit: int | None = None, tiny_root: str | None = None) -> "Manifest | None":
    """Build (or resume, or extend) a dataset; returns its manifest, or None in a process that does not write
    it (a rank other than 0, an independent --rank/--world-size slot). Raises ConfigError before any model
    loads, BuildFailed when the dataset is incomplete or over its failure budget, KeyboardInterrupt /
    Terminated after dropping the unfinished shard."""
    from fakeforge.builder.config import ResolvedBuild, resolve_build
    from fakeforge.builder.runner import BuildOptions
    from fakeforge.builder.runner import build as run_build
    from fakeforge.shards.manifest import Manifest

    resolved = config if isinstance(config, ResolvedBuild) else resolve_build(
        config, overrides, tiny=tiny, limit=limit, output=output, tiny_root=tiny_root, demo_data=demo_data)
    summary = run_build(resolved, options or BuildOptions())
    return Manifest.read(resolved.config.output) if summary.get("manifest") is not None else None


__all__ = ["build"]
