"""Run All is safe: the lectures with long trainings, run with their `slow` cells as JupyterLab's "Run all" runs them (every
`RETRAIN` switch left off), finish in a few minutes and change nothing in the checkout or in what the course ships."""
import hashlib, os, subprocess, sys, time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def shipped_files():
    return {p.relative_to(ROOT).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((ROOT / "data").rglob("*")) if p.is_file()}


def git_status():
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT, capture_output=True, text=True).stdout


@pytest.mark.slow
def test_lectures_with_long_trainings_run_all_quickly_and_write_nothing(tmp_path):
    before, status = shipped_files(), git_status()
    start = time.time()
    result = subprocess.run([str(BIN / "nbdev-test"), "--flags", "slow", "--n-workers", "2", "--file-re", r"^(03|07|08|10|12|13|14|15)_.*\.ipynb$"],
                            cwd=ROOT, capture_output=True, text=True, env={**os.environ, "SDCOURSE_CACHE": str(tmp_path / "cache"), "MPLBACKEND": "Agg"})
    seconds = time.time() - start
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert seconds < 600, f"the lectures with long trainings took {seconds:.0f} s with their slow cells (their long runs take 25 minutes and more): a RETRAIN switch is on?"
    assert shipped_files() == before, "a lecture rewrote files in data/ (what the course ships)"
    assert git_status() == status, "a lecture changed the checkout"


def test_lecture_times_benchmark_times_a_lecture_and_fails_past_its_limit(tmp_path):
    script, env = ROOT / "benchmarks" / "lecture_times.py", {**os.environ, "SDCOURSE_CACHE": str(tmp_path / "cache"), "MPLBACKEND": "Agg"}
    ok = subprocess.run([sys.executable, script, "--only", "00"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0 and "| 00_core.ipynb |" in ok.stdout and "| **all 1** |" in ok.stdout, ok.stdout + ok.stderr
    over = subprocess.run([sys.executable, script, "--only", "00", "--limit", "0.5"], capture_output=True, text=True, env=env)
    assert over.returncode == 1 and "over 0 s: 00_core.ipynb" in over.stderr, over.stderr


def test_slow_cells_hold_no_import_line():
    """The site build (`nbdev-proc-nbs`) runs every cell that holds an import line, whatever its flags: a `#| slow` cell with one would
    start a long training while the site builds, or fail there (RETRAIN is defined in a cell it skips). Imports go in the hidden import cell."""
    import json, re
    offenders = []
    for path in sorted((ROOT / "nbs").glob("*.ipynb")):
        for i, cell in enumerate(json.loads(path.read_text())["cells"]):
            source = "".join(cell["source"])
            if cell["cell_type"] == "code" and re.search(r"^#\|\s*slow", source, re.M):
                offenders += [f"{path.name} cell {i}: {line.strip()}" for line in source.splitlines() if re.match(r"\s*(from\s+\S+\s+)?import\s", line)]
    assert not offenders, "slow cells with import lines: " + "; ".join(offenders)
