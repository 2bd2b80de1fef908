"The project's own promises: notebooks and library in sync, the site builds, the wheel carries the library."
import ast, json, os, re, subprocess, sys, tomllib
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(*cmd, cwd=ROOT, **kw):
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, **kw)


def test_export_and_clean_change_nothing(tmp_path):
    """CI's sync check: the library is what the notebooks export, and the notebooks are clean. It runs on a copy of the sources, so the
    tests running beside it (`pytest -n 2`) never read a module or a notebook while nbdev rewrites it."""
    import shutil
    for name in ("nbs", "sdcourse"):
        shutil.copytree(ROOT / name, tmp_path / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints", "shipped"))
    for name in ("pyproject.toml", "_quarto.yml"): shutil.copy2(ROOT / name, tmp_path / name)
    sources = lambda root: {p.relative_to(root).as_posix(): p.read_bytes() for d in ("nbs", "sdcourse") for p in sorted((root / d).rglob("*"))
                            if p.is_file() and not p.is_symlink() and "__pycache__" not in p.parts and "shipped" not in p.parts}
    before = sources(tmp_path)
    assert before == sources(ROOT) and any(f.endswith(".ipynb") for f in before) and "sdcourse/training.py" in before
    for tool in ("nbdev-export", "nbdev-clean"):
        r = _run(str(BIN / tool), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    after = sources(tmp_path)
    changed = sorted(f for f in before.keys() | after.keys() if before.get(f) != after.get(f))
    assert not changed, f"nbdev-export / nbdev-clean changed {changed}: edit the notebooks, export, clean, and commit"
    (tmp_path / "sdcourse" / "training.py").write_text("stale")  # the check can fail: a module out of step with its notebook is rewritten
    assert _run(str(BIN / "nbdev-export"), cwd=tmp_path).returncode == 0 and sources(tmp_path) == before


def test_site_sources_build(processed):
    "`nbdev-proc-nbs` turns every notebook into a page Quarto can render (the build the site tests share, from conftest.py)."
    assert {p.name for p in (ROOT / "nbs").glob("*.ipynb")} <= set(processed)


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
    assert "nbdev-test" in test_command and "pytest -n 2 tests/" in test_command  # pytest-xdist: one process per core
    assert test_command in ci and 'pip install -q -e ".[dev]"' in ci and "torch==2.13.0" in ci


EXCEPTION = "exercises"  # the last notebook's checkers: every lecture's exercise cell imports them (the one declared exception, notebooks only)


def lecture_of_modules():
    "{module: lecture number}, from each numbered notebook's `default_exp`; each module must be exported by exactly one notebook."
    owners = {}
    for path in sorted((ROOT / "nbs").glob("[0-9][0-9]_*.ipynb")):
        for m in re.finditer(r"#\| default_exp (\w+)", path.read_text()): owners.setdefault(m.group(1), []).append(path.name)
    twice = {m: nbs for m, nbs in owners.items() if len(nbs) != 1}
    assert not twice, f"modules exported by more than one notebook: {twice}"
    return {m: int(nbs[0][:2]) for m, nbs in owners.items()}


def sdcourse_imports(source, package_relative=False):
    "The sdcourse modules a piece of Python imports, anywhere in it (inside functions too): `from .x`, `from sdcourse.x`, `import sdcourse.x`."
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and package_relative: found |= {node.module} if node.module else {a.name for a in node.names}
            elif node.level == 0 and (node.module or "").startswith("sdcourse."): found.add(node.module.split(".")[1])
            elif node.level == 0 and node.module == "sdcourse": found |= {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("sdcourse.")}
    return found


def notebook_code(path):
    "A notebook's code cells as one Python source (magics and shell lines left out)."
    cells = json.loads(path.read_text())["cells"]
    return "\n".join(l for c in cells if c["cell_type"] == "code" for l in "".join(c["source"]).splitlines() if not l.lstrip().startswith(("%", "!")))


def order_violations(lecture, imports, notebooks=False):
    "(importer, imported) pairs where the imported module belongs to a later lecture (the exercises exception aside, for notebooks)."
    return sorted((who, used) for who, uses in imports.items() for used in uses
                  if used in lecture and used != who and lecture[used] > lecture[who] and not (notebooks and used == EXCEPTION))


def test_modules_and_notebooks_import_only_earlier_lectures():
    "One lecture, one module; a module, and a lecture's notebook, import only from earlier lectures (read with ast, not regexes)."
    lecture = lecture_of_modules()
    modules = {m: sdcourse_imports((ROOT / "sdcourse" / f"{m}.py").read_text(), package_relative=True) for m in lecture}
    assert sum(map(len, modules.values())) > 20  # the check reads the relative imports nbdev writes
    assert not order_violations(lecture, modules), f"modules import later lectures: {order_violations(lecture, modules)}"
    notebooks = {m: sdcourse_imports(notebook_code(next((ROOT / "nbs").glob(f"{n:02d}_*.ipynb")))) for m, n in lecture.items()}
    assert not order_violations(lecture, notebooks, notebooks=True), f"notebooks import later lectures: {order_violations(lecture, notebooks, True)}"
    assert not [m for m, uses in modules.items() if EXCEPTION in uses and m != EXCEPTION], "only notebooks may import the exercises"


def test_the_order_check_fails_on_a_planted_backward_import():
    lecture = lecture_of_modules()
    planted = "import torch\nfrom .core import check_int\ndef f():\n    from .pipeline import load_sd  # lecture 11, from lecture 2\n"
    imports = {"schedules": sdcourse_imports(planted, package_relative=True)}
    assert order_violations(lecture, imports) == [("schedules", "pipeline")]
    assert order_violations(lecture, {"vae": sdcourse_imports("from sdcourse.lora import LoRALinear")}, notebooks=True) == [("vae", "lora")]
    assert order_violations(lecture, {"vae": sdcourse_imports("from sdcourse.exercises import check_kl_divergence")}, notebooks=True) == []
    assert order_violations(lecture, {"vae": {"exercises"}}) == [("vae", "exercises")]  # the exception is for notebooks only
