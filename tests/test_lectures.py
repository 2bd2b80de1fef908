"""Run All is safe: every lecture's long runs sit in `slow` cells behind a switch that is off, so JupyterLab's "Run all" does what
`nbdev-test` (which CI runs on every lecture) does, and changes nothing in the checkout or in what the course ships."""
import ast, hashlib, json, os, re, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LECTURES = sorted((ROOT / "nbs").glob("[0-9][0-9]*_*.ipynb"))


def shipped_files():
    return {p.relative_to(ROOT).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((ROOT / "data").rglob("*")) if p.is_file()}


def git_status():
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT, capture_output=True, text=True).stdout


def write_notebook(path, *sources):
    "A notebook at `path` whose code cells hold `sources`, for showing a check what it must catch; returns `path`."
    cells = [dict(cell_type="code", source=s, metadata={}, outputs=[], execution_count=None) for s in sources]
    path.write_text(json.dumps(dict(cells=cells)))
    return path


SWITCHES = ("RETRAIN", "FULL_SIZE")  # each lecture's visible switches for its long runs, off as shipped


def slow_cells(path):
    "Each `#| slow` cell of the notebook at `path` as (index, code without its directives), and every cell's source."
    cells = [("".join(c["source"]), c["cell_type"]) for c in json.loads(path.read_text())["cells"]]
    slow = [(i, "\n".join(l for l in s.splitlines() if not l.startswith("#|"))) for i, (s, kind) in enumerate(cells)
            if kind == "code" and re.search(r"^#\|\s*slow", s, re.M)]
    return slow, cells


def switched_off(path):
    """Why the slow cells of `path` are not all no-ops under Run All (an empty list when they are): each must be one `if SWITCH:` with no
    `else`, where SWITCH is one of `SWITCHES` and an earlier cell that is not slow sets it to False."""
    slow, cells = slow_cells(path)
    problems = []
    for i, code in slow:
        body = ast.parse(code).body
        if len(body) != 1 or not isinstance(body[0], ast.If) or not isinstance(body[0].test, ast.Name) or body[0].test.id not in SWITCHES or body[0].orelse:
            problems.append(f"{path.name} cell {i} is not one `if RETRAIN:` block (Run All would run it)")
            continue
        switch, earlier = body[0].test.id, "\n".join(s for j, (s, kind) in enumerate(cells[:i]) if kind == "code" and j not in dict(slow))
        if not re.search(rf"^{switch} = False\b", earlier, re.M):
            problems.append(f"{path.name} cell {i}: no earlier cell sets `{switch} = False`")
    return problems


def test_slow_cells_are_switched_off_in_every_lecture():
    """Run All (every cell, slow ones included) does what `nbdev-test` does, which CI runs on every lecture: each slow cell is one
    `if RETRAIN:` block and the lecture sets RETRAIN = False in a cell that is not slow."""
    assert sum(len(slow_cells(p)[0]) for p in LECTURES) >= 15  # the long runs of lectures 3-15
    assert [problem for p in LECTURES for problem in switched_off(p)] == []


def test_the_switch_check_catches_a_slow_cell_that_would_run(tmp_path):
    notebook = lambda *sources: switched_off(write_notebook(tmp_path / "nb.ipynb", *sources))
    assert notebook("RETRAIN = False", "#| slow\nif RETRAIN:\n    train()") == []
    assert "is not one `if RETRAIN:` block" in notebook("RETRAIN = False", "#| slow\nx = 1\nif RETRAIN:\n    train()")[0]
    assert "is not one `if RETRAIN:` block" in notebook("RETRAIN = False", "#| slow\nif RETRAIN: train()\nelse: measure()")[0]
    assert "is not one `if RETRAIN:` block" in notebook("RETRAIN = False", "#| slow\nif not RETRAIN:\n    train()")[0]
    assert "sets `RETRAIN = False`" in notebook("RETRAIN = True", "#| slow\nif RETRAIN:\n    train()")[0]
    assert "sets `RETRAIN = False`" in notebook("#| slow\nRETRAIN = False", "#| slow\nif RETRAIN:\n    train()")[-1]


def parsed_code_cells(path):
    "(index, is it `#| slow`, its syntax tree) of each code cell of `path`, indexed as `slow_cells` does, magics left out."
    return [(i, bool(re.search(r"^#\|\s*slow", source, re.M)), ast.parse("\n".join(l for l in source.splitlines() if not l.lstrip().startswith(("%", "!")))))
            for i, (source, kind) in enumerate(slow_cells(path)[1]) if kind == "code"]


def undefined_in_slow_cells(path):
    """Names a `#| slow` cell of `path` reads that no earlier cell (nor the cell itself, nor Python) defines: with the switch on, Run All
    would stop there with a NameError, after the long runs before it. A name the lecture exports further down must be imported first."""
    import builtins
    known, problems = set(dir(builtins)) | {"get_ipython", "display"}, []
    for i, slow, tree in parsed_code_cells(path):
        defined = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
        defined |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)} | {n.arg for n in ast.walk(tree) if isinstance(n, ast.arg)}
        defined |= {(a.asname or a.name).split(".")[0] for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
        if slow:
            read = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
            problems += [f"{path.name} cell {i} reads {name!r} before any cell defines it" for name in sorted(read - known - defined)]
        known |= defined
    return problems


def test_slow_cells_read_only_what_earlier_cells_define():
    "With RETRAIN = True, Run All reaches every slow cell with what it needs (lectures 10 and 15 used functions they export further down)."
    assert [problem for p in LECTURES for problem in undefined_in_slow_cells(p)] == []


def test_the_order_check_catches_a_name_defined_too_late(tmp_path):
    path = write_notebook(tmp_path / "nb.ipynb", "RETRAIN = False", "#| slow\nif RETRAIN:\n    save(train())", "#| export\ndef train(): pass")
    assert undefined_in_slow_cells(path) == ["nb.ipynb cell 1 reads 'save' before any cell defines it",
                                                              "nb.ipynb cell 1 reads 'train' before any cell defines it"]



def _top_level_names(tree):
    "The names a cell binds and reads in the notebook's own namespace, not inside its functions: (bound, read). A lambda or comprehension reads what it does not bind."
    bound, read, stack = set(), set(), [tree]
    while stack:
        for child in ast.iter_child_nodes(stack.pop()):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)): bound.add(child.name); continue
            if isinstance(child, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
                inner = list(ast.walk(child))
                read |= ({n.id for n in inner if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
                         - {n.id for n in inner if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)} - {n.arg for n in inner if isinstance(n, ast.arg)})
                continue
            if isinstance(child, ast.Name): (read if isinstance(child.ctx, ast.Load) else bound).add(child.id)
            if isinstance(child, (ast.Import, ast.ImportFrom)): bound |= {(a.asname or a.name).split(".")[0] for a in child.names}
            stack.append(child)
    return bound, read


def clobbered_by_slow_cells(path):
    """Names a `#| slow` cell of `path` rebinds that an earlier ordinary cell defined and a later one reads without defining it again:
    with the switch on, Run All would hand that later cell the long run's object instead of the lecture's (lecture 10's table read a
    pipeline where it expected a count)."""
    cells, problems = [(i, slow, *_top_level_names(tree)) for i, slow, tree in parsed_code_cells(path)], []
    for j, (i, slow, bound, _) in enumerate(cells):
        if not slow: continue
        earlier = set().union(*[b for _, s, b, _ in cells[:j] if not s])
        for name in sorted(bound & earlier):
            readers = [k for k, s, b, r in cells[j + 1:] if not s and name in r and name not in b]
            if readers: problems.append(f"{path.name} cell {i} rebinds {name!r}, which cell {readers[0]} reads")
    return problems


def test_slow_cells_leave_the_lectures_names_alone():
    "With RETRAIN = True, the cells after a long run see the same names as with it off."
    assert [problem for p in LECTURES for problem in clobbered_by_slow_cells(p)] == []


def test_the_names_check_catches_a_slow_cell_that_rebinds_a_name(tmp_path):
    sources = ["full = 3\nfor k in range(2): pass", "#| slow\nif RETRAIN:\n    full = load()\n    k = [k for k in range(3)]",
               "print(full, k)", "k = 1\nprint(k)", "def f(full): return full"]
    path = write_notebook(tmp_path / "nb.ipynb", *sources)
    assert clobbered_by_slow_cells(path) == ["nb.ipynb cell 1 rebinds 'full', which cell 2 reads", "nb.ipynb cell 1 rebinds 'k', which cell 2 reads"]
    sources[2] = "full = 4\nprint(full, [k for k in range(2)])"  # defines it again, and the comprehension's k is its own
    assert clobbered_by_slow_cells(write_notebook(path, *sources)) == []


def test_lectures_run_all_with_their_slow_cells_and_write_nothing(tmp_path):
    "Run All end to end, slow cells included, on the quickest lecture with a switch (FULL_SIZE in 11; every RETRAIN cell has the same `if` form)."
    before, status = shipped_files(), git_status()
    result = subprocess.run([str(BIN / "nbdev-test"), "--flags", "slow", "--n-workers", "1", "--file-re", r"^11_.*\.ipynb$"],
                            cwd=ROOT, capture_output=True, text=True, env={**os.environ, "SDCOURSE_CACHE": str(tmp_path / "cache"), "MPLBACKEND": "Agg"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert shipped_files() == before, "a lecture rewrote files in data/ (what the course ships)"
    assert git_status() == status, "a lecture changed the checkout"


def test_what_the_course_ships_is_as_committed():
    """CI runs every lecture (`nbdev-test`) before pytest, on a fresh clone: nothing in data/ may differ from the commit afterwards, so no
    lecture (and no test that ran before it) wrote into what the course ships. Locally, uncommitted files in data/ fail it too: commit them."""
    if not (ROOT / ".git").exists(): pytest.skip("not a git checkout")
    changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--", "data"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert changed == "", f"data/ differs from the last commit (a lecture or a test wrote there, or it is not committed yet):\n{changed[:2000]}"


def test_lecture_times_benchmark_times_a_lecture_and_fails_past_its_limit(tmp_path):
    "The script on a one-cell notebook (a lecture's run is the notebooks' own test): the table, the limit, and --save writing the outputs back."
    script, env = ROOT / "benchmarks" / "lecture_times.py", {**os.environ, "SDCOURSE_CACHE": str(tmp_path / "cache"), "MPLBACKEND": "Agg"}
    notebook = write_notebook(tmp_path / "00_tiny.ipynb", "print(6 * 7)")
    ok = subprocess.run([sys.executable, script, "--notebooks", notebook, "--save"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert ok.returncode == 0 and "| 00_tiny.ipynb |" in ok.stdout and "| **all 1** |" in ok.stdout, ok.stdout + ok.stderr
    assert "42" in json.dumps(json.loads(notebook.read_text())["cells"][0]["outputs"])  # saved with its output
    over = subprocess.run([sys.executable, script, "--notebooks", notebook, "--limit", "0.01"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert over.returncode == 1 and "over 0 s: 00_tiny.ipynb" in over.stderr, over.stderr


def test_slow_cells_hold_no_import_line():
    """The site build (`nbdev-proc-nbs`) runs every cell that holds an import line, whatever its flags: a `#| slow` cell with one would
    start a long training while the site builds, or fail there (RETRAIN is defined in a cell it skips). Imports go in the hidden import cell."""
    offenders = []
    for path in sorted((ROOT / "nbs").glob("*.ipynb")):
        for i, cell in enumerate(json.loads(path.read_text())["cells"]):
            source = "".join(cell["source"])
            if cell["cell_type"] == "code" and re.search(r"^#\|\s*slow", source, re.M):
                offenders += [f"{path.name} cell {i}: {line.strip()}" for line in source.splitlines() if re.match(r"\s*(from\s+\S+\s+)?import\s", line)]
    assert not offenders, "slow cells with import lines: " + "; ".join(offenders)
