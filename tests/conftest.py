import os, tempfile

# Tests never write into the learner's real cache, nor sign manifests with the learner's key, unless CI chose where (it sets both).
if "SDCOURSE_CACHE" not in os.environ:
    os.environ["SDCOURSE_CACHE"] = tempfile.mkdtemp(prefix="sdcourse-test-cache-")
    os.environ.setdefault("SDCOURSE_CONFIG", tempfile.mkdtemp(prefix="sdcourse-test-config-"))
os.environ.setdefault("MPLBACKEND", "Agg")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `pytest -n 2`: one process per core, each on one thread (more threads would only contend)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    torch.set_num_threads(1)

import pytest


@pytest.fixture(scope="module")
def pipe():
    "sdcourse-tiny on the CPU, loaded once per test module; a test that changes its pipeline loads its own."
    from sdcourse.training import load_pipeline
    return load_pipeline(device="cpu")


@pytest.fixture
def no_progress_bars(monkeypatch):
    "Progress bars go to stderr too; where stderr must hold an error alone, a module uses this fixture (`pytestmark`)."
    monkeypatch.setenv("SDCOURSE_PROGRESS", "0")
