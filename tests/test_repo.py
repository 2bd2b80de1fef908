"The project's own promises: notebooks and library in sync, the site builds, the wheel carries the library."
import hashlib, os, re, subprocess, sys, tomllib, zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(*cmd, cwd=ROOT, **kw):
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, **kw)


def _snapshot():
    files = _run("git", "ls-files", "-co", "--exclude-standard").stdout.split()
    return {f: hashlib.sha256((ROOT / f).read_bytes()).hexdigest() for f in files if (ROOT / f).is_file()}


def test_export_and_clean_change_nothing():
    "CI's sync check: the library is what the notebooks export, and the notebooks are clean."
    before = _snapshot()
    for tool in ("nbdev-export", "nbdev-clean"):
        r = _run(str(BIN / tool))
        assert r.returncode == 0, r.stderr
    after = _snapshot()
    changed = sorted(f for f in before.keys() | after.keys() if before.get(f) != after.get(f))
    assert not changed, f"nbdev-export / nbdev-clean changed {changed}: edit the notebooks, export, clean, and commit"


def test_site_sources_build():
    r = _run(str(BIN / "nbdev-proc-nbs"), stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    notebooks = {p.name for p in (ROOT / "nbs").glob("*.ipynb")}
    assert notebooks and notebooks <= {p.name for p in (ROOT / "_proc").glob("*.ipynb")}


def test_settings_live_in_pyproject():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    nbdev = cfg["tool"]["nbdev"]
    assert nbdev["tst_flags"] == ["notest", "slow", "cuda"]  # a list: the string "slow|cuda" silently runs flagged cells
    assert not (ROOT / "settings.ini").exists()
    deps = cfg["project"]["dependencies"]
    assert not [d for d in deps if "==" in d], "runtime dependencies are ranges, not pins"
    link = ROOT / "nbs" / "_quarto.yml"
    assert link.is_symlink() and os.readlink(link) == "../_quarto.yml"


def test_ci_runs_readme_commands():
    readme, ci = (ROOT / "README.md").read_text(), (ROOT / ".ci" / "run").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    assert len(blocks) == 2, "README has exactly two command blocks: set up and start, run the tests"
    setup, tests = blocks
    assert 'pip install -e ".[dev]"' in setup and "jupyter lab nbs/" in setup
    main_job = [line for line in setup.splitlines() if line.startswith("sdcourse ")]
    assert main_job and all(line in ci for line in main_job), "CI runs README's sdcourse commands verbatim"
    assert setup.strip().splitlines()[-1] == "jupyter lab nbs/" and setup.strip().splitlines()[-2].startswith("sdcourse ")
    test_command = tests.strip().splitlines()[-1]
    assert "nbdev-test" in test_command and "pytest tests/" in test_command
    assert test_command in ci and 'pip install -q -e ".[dev]"' in ci and "torch==2.13.0" in ci


def test_every_notebook_exports_its_own_module():
    "One lecture, one module, and a module imports only from earlier lectures."
    order = sorted(p.stem for p in (ROOT / "nbs").glob("[0-9][0-9]_*.ipynb"))
    modules = {}
    for stem in order:
        m = re.search(r"#\| default_exp (\w+)", (ROOT / "nbs" / f"{stem}.ipynb").read_text())
        assert m, f"{stem} exports no module"
        modules[m.group(1)] = stem
    for mod, stem in modules.items():
        src = (ROOT / "sdcourse" / f"{mod}.py").read_text()
        for used in re.findall(r"from sdcourse\.(\w+) import|import sdcourse\.(\w+)", src):
            used = used[0] or used[1]
            if used == mod: continue  # e.g. a training record quoting its own command
            assert modules[used] < stem, f"sdcourse.{mod} ({stem}) imports sdcourse.{used} from a later lecture"
