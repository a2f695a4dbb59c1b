"""The tiny twin builders (one module per model family). The registry and the build-once logic live in
`fakeforge.twins` (the core layer, so generators and detectors can resolve a twin without importing these
builders); they are re-exported here for callers of the earlier name."""
from fakeforge.twins import MARKER, TWINS, build_tiny, builder_version, ensure_tiny, tiny_root

__all__ = ["MARKER", "TWINS", "build_tiny", "builder_version", "ensure_tiny", "tiny_root"]
