"""Shared test setup: offline hub, fixed thread count, one session-wide folder of tiny twins."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _fixed_threads():
    import torch

    torch.set_num_threads(2)  # image bytes depend on the thread count; keep it fixed
    yield


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A session-wide twin folder, also exported as FAKEFORGE_TINY_DIR for code that builds on demand."""
    root = os.environ.get("FAKEFORGE_TEST_TINY_DIR") or str(tmp_path_factory.mktemp("tiny"))
    old = os.environ.get("FAKEFORGE_TINY_DIR")
    os.environ["FAKEFORGE_TINY_DIR"] = root
    yield root
    if old is None:
        os.environ.pop("FAKEFORGE_TINY_DIR", None)
    else:
        os.environ["FAKEFORGE_TINY_DIR"] = old


@pytest.fixture(scope="module")
def tiny_instructblip(tiny_dir):
    """Folder of the tiny InstructBLIP twin (built once per session in `tiny_dir`)."""
    from fakeforge.tiny import ensure_tiny

    return ensure_tiny("instructblip", tiny_dir)
