"""Fixtures and hooks; the helpers the test modules share are in helpers.py."""
import subprocess

import pytest
import torch

from .helpers import SMOKE


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need a CUDA device: skipped, with the reason, where torch sees none (CI, a laptop)."""
    if not torch.cuda.is_available():
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


@pytest.fixture
def smoke():
    return list(SMOKE)


@pytest.fixture
def tiny_disk(tmp_path, request):
    """A tmpfs (root only) of 2 MiB, or of the size given by indirect parametrization: a disk that really
    fills up."""
    disk = tmp_path / "disk"
    disk.mkdir()
    size = getattr(request, "param", "2m")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)],
                      capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)
