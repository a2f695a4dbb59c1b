"""The named configs shipped with fakeforge (installed as the package `fakeforge.configs`).

Subfolders hold one YAML file per named config: `build/`, `generators/`, `detector/`. Code finds
them through `fakeforge.config.CONFIG_ROOT` (importlib.resources), so a wheel install has them too.
"""
