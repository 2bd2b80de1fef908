import json, os, subprocess, sys, tempfile
from pathlib import Path

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


# The site as Quarto renders it, shared by tests/test_site.py and tests/test_repo.py: one `nbdev-proc-nbs` build a run.
ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"


def sources_digest():
    "A hash of everything the processed pages depend on: the notebooks and site files, the settings, the library, nbdev's version."
    import hashlib, nbdev
    digest = hashlib.sha256(nbdev.__version__.encode())
    files = [*NBS.rglob("*"), ROOT / "pyproject.toml", ROOT / "_quarto.yml", *(ROOT / "sdcourse").glob("*.py")]
    for path in sorted(p for p in files if p.is_file() and not p.is_symlink() and not any(part.startswith(".") or part == "__pycache__" for part in p.relative_to(ROOT).parts)):
        digest.update(str(path.relative_to(ROOT)).encode() + path.read_bytes())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def processed():
    """{page: notebook} as `nbdev-proc-nbs` makes them (what Quarto renders), built from a copy of the sources in the temporary
    folder, so that it never touches the checkout's `_proc/`. The two `pytest -n 2` workers share one build through a lock, and a run
    whose sources have not changed reuses it (about 20 s saved each time)."""
    import fcntl, shutil, tempfile, time
    build = Path(tempfile.gettempdir()) / f"sdcourse-site-{sources_digest()}"
    for old in build.parent.glob("sdcourse-site-*"):  # builds of earlier sources (19 MB each), once a day old
        if old != build and time.time() - old.stat().st_mtime > 86_400: shutil.rmtree(old, ignore_errors=True)
    build.mkdir(exist_ok=True)
    with open(build / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (build / "done").exists():
            source = build / "src"
            shutil.rmtree(source, ignore_errors=True)
            shutil.copytree(NBS, source / "nbs", symlinks=True, ignore=shutil.ignore_patterns(".*", "__pycache__"))
            for name in ("pyproject.toml", "_quarto.yml"): shutil.copy2(ROOT / name, source / name)
            r = subprocess.run([str(Path(sys.executable).parent / "nbdev-proc-nbs")], cwd=source, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
            assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
            (build / "done").touch()
    pages = {p.name: json.loads(p.read_text()) for p in sorted((build / "src" / "_proc").glob("*.ipynb"))}
    assert {p.name for p in NBS.glob("*.ipynb")} <= set(pages)
    return pages


