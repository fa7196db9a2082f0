import os
import tempfile

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
# Probed minimum input sizes are cached on disk; tests probe afresh into a cache of their own.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="modeldoctor-test-cache-")


@pytest.fixture
def one_thread():
    """Two threads on a shared two-core machine stall in OpenMP spin waits; tiny tests run on one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def mnist5k():
    from modeldoctor.data.sources import load_data

    return load_data("mnist5k")
