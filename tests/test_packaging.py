"""A non-editable install works: the named configs ship inside the wheel and every package is listed."""
from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_ROOTS = ("fakeforge", "generators", "attacks", "detector")


def _listed_packages() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])


def test_every_package_folder_is_listed_in_pyproject():
    found = {".".join(p.parent.relative_to(ROOT).parts) for top in PACKAGE_ROOTS
             for p in (ROOT / top).rglob("__init__.py") if "__pycache__" not in p.parts}
    missing = sorted(found - _listed_packages())
    assert not missing, f"add these packages to [tool.setuptools] packages in pyproject.toml: {missing}"


def test_config_root_is_found_through_the_package():
    from fakeforge.config import CONFIG_ROOT

    assert (CONFIG_ROOT / "build" / "default.yaml").is_file()
    assert (CONFIG_ROOT / "generators" / "sd2.yaml").is_file()


def test_wheel_install_has_configs_and_builds_outside_the_checkout(tmp_path, tiny_dir):
    """Build the wheel, install it (no deps) into a fresh venv that sees the test environment's
    packages, then run `fakeforge ls` and the default tiny build from a folder outside the checkout."""
    src = tmp_path / "src"
    top_level_junk = {".git", ".venv", "runs", "build", "dist", ".pytest_cache"}

    def ignore(folder, names):
        junk = top_level_junk if Path(folder) == ROOT else set()
        return [n for n in names if n in junk or n == "__pycache__" or n.endswith(".egg-info")]

    shutil.copytree(ROOT, src, ignore=ignore)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), str(src)], check=True, capture_output=True)
    wheel = next(wheels.glob("fakeforge-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    venv_site = next(venv.glob("lib/python*/site-packages"))
    # The test environment's packages are appended after the venv's own site-packages; its .pth files
    # (the editable install of this checkout) are not processed, so `fakeforge` comes from the wheel.
    deps = dict.fromkeys([*site.getsitepackages(), *(p for p in sys.path if p.endswith("site-packages"))])
    (venv_site / "deps.pth").write_text("\n".join(deps) + "\n")
    py = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", str(wheel)],
                   check=True, capture_output=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "FAKEFORGE_TINY_DIR": tiny_dir, "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    where = subprocess.run([str(py), "-c", "import fakeforge.config as c; print(c.CONFIG_ROOT)"], cwd=work,
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert str(venv_site) in where, f"configs resolved from {where}, not from the installed wheel"
    fakeforge = venv / "bin" / "fakeforge"
    ls = subprocess.run([str(fakeforge), "ls"], cwd=work, env=env, capture_output=True, text=True)
    assert ls.returncode == 0, ls.stderr
    assert "antifakeprompt_train" in ls.stdout and "sd2_inpaint" in ls.stdout
    build = subprocess.run([str(fakeforge), "build", "--tiny", "--no-progress"], cwd=work, env=env,
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-2000:]
    verify = subprocess.run([str(fakeforge), "verify", "runs/default"], cwd=work, env=env, capture_output=True,
                            text=True)
    assert verify.returncode == 0 and verify.stdout.startswith("OK"), verify.stderr


@pytest.mark.parametrize("name", ["build", "generators", "detector"])
def test_shipped_config_folders_are_not_empty(name):
    from fakeforge.config import CONFIG_ROOT

    assert list((CONFIG_ROOT / name).glob("*.yaml"))
