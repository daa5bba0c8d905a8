"""Fixtures and hooks; the helpers the test modules share are in helpers.py."""

import os
import subprocess

import pytest
import torch

from .helpers import SMOKE

SHARED_SCOPES = ("module", "package", "session")


def pytest_configure(config):
    """Under pytest-xdist (`make test` runs a worker per core), each worker and the runs it starts take one
    thread: as many busy threads as cores, not a worker's worth of threads on each."""
    if "PYTEST_XDIST_WORKER" in os.environ:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """`gpu` tests need a CUDA device: skipped, with the reason, where torch sees none (CI, a laptop).
    A test using a module's or the session's fixture runs on the worker that holds it (xdist's loadgroup):
    the runs such a fixture makes are made once."""
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
        fixtures = getattr(item, "_fixtureinfo", None)
        if fixtures and any(d.scope in SHARED_SCOPES for defs in fixtures.name2fixturedefs.values() for d in defs):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


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
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], capture_output=True
    ).returncode:
        pytest.skip("mounting a tmpfs needs root")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)
