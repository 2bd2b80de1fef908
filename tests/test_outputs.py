"""The committed notebooks are what the site shows: every lecture saved with the outputs of a full run, and nothing in them
that a learner should not see (progress bars, terminal escape codes, widget reprs, paths of the machine that ran them)."""
import ast, json, re
from pathlib import Path

import pytest

NBS = Path(__file__).resolve().parents[1] / "nbs"
NOTEBOOKS = sorted(p for p in NBS.glob("*.ipynb") if not p.name.startswith(("_", ".")))

NOISE = {"a progress bar": re.compile(r"\d+%\|[^|\n]*\||\d+/\d+ \[\d\d:\d\d"),
         "a terminal escape code": re.compile(r"\x1b\["),
         "a widget's text repr": re.compile(r"\b(VBox|HBox|IntSlider|Dropdown)\(children=|\b(VBox|HBox)\(\("),
         "a path of the machine that ran it": re.compile(r"(/tmp/|/root/|/home/\w|/work/|/Users/|site-packages|[A-Z]:\\\\)"),
         "a memory address (another on every run)": re.compile(r"\bat 0x[0-9a-fA-F]+")}
NO_OUTPUT_FLAGS = ("#| slow", "#| cuda", "#| eval: false", "#| export", "#| exporti", "#| hide")
PRINTING = {"print", "display", "show_images", "image_row"}


def code_cells(path):
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


def output_texts(cell):
    for output in cell.get("outputs", []):
        if "text" in output: yield "".join(output["text"])
        for mime, value in output.get("data", {}).items():
            if mime.startswith("text/"): yield "".join(value)
        if output.get("output_type") == "error": yield "an error: " + output.get("ename", "")


def must_show_something(source):
    "Whether a cell visibly produces output: it prints, displays or draws, or ends in an expression that is not a test call."
    if any(flag in source for flag in NO_OUTPUT_FLAGS): return False
    lines = [l for l in source.splitlines() if not l.startswith(("#|", "%", "!"))]
    try: tree = ast.parse("\n".join(lines))
    except SyntaxError: return False
    if not tree.body: return False
    calls = {getattr(n.func, "id", getattr(n.func, "attr", "")) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    if calls & PRINTING or any(isinstance(n, ast.Attribute) and getattr(n.value, "id", "") == "plt" for n in ast.walk(tree)): return True
    last = tree.body[-1]
    if not isinstance(last, ast.Expr) or lines[-1].rstrip().endswith(";"): return False
    if isinstance(last.value, ast.Call):  # a call's value shows only for the course's own result-returning calls
        name = getattr(last.value.func, "id", getattr(last.value.func, "attr", ""))
        return name.startswith("check_")
    return isinstance(last.value, (ast.Name, ast.Attribute, ast.Subscript, ast.Tuple, ast.Compare, ast.BinOp, ast.Dict, ast.List))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_outputs_are_clean(path):
    for i, cell in enumerate(code_cells(path)):
        for text in output_texts(cell):
            for what, pattern in NOISE.items():
                found = pattern.search(text)
                assert not found, f"{path.name}, code cell {i}: its saved output holds {what} ({text[max(0, found.start() - 40):found.end() + 40]!r})"
            assert not text.startswith("an error"), f"{path.name}, code cell {i}: saved with an error"



def figures_shown_twice(path):
    "Code cells of `path` whose saved outputs hold the same image twice: a cell ending in a call that returns the figure it shows (`show_images(...)` without ';')."
    pngs = [[o["data"]["image/png"] for o in cell.get("outputs", []) if "image/png" in o.get("data", {})] for cell in code_cells(path)]
    return [i for i, images in enumerate(pngs) if len(images) != len(set(images))]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_figure_is_shown_twice(path):
    assert figures_shown_twice(path) == [], f"{path.name}, code cells {figures_shown_twice(path)}: the same image twice (end the line with ';')"


def test_the_twice_check_finds_a_doubled_figure(tmp_path):
    image = {"output_type": "display_data", "data": {"image/png": "iVBOR"}, "metadata": {}}
    cells = [dict(cell_type="code", source="show_images(x)", outputs=[image, dict(image, output_type="execute_result")]),
             dict(cell_type="code", source="show_images(y);", outputs=[image])]
    (tmp_path / "nb.ipynb").write_text(json.dumps(dict(cells=cells)))
    assert figures_shown_twice(tmp_path / "nb.ipynb") == [0]

@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_cell_that_shows_something_was_saved_with_its_output(path):
    empty = [i for i, cell in enumerate(code_cells(path)) if must_show_something("".join(cell["source"])) and not cell.get("outputs")]
    assert not empty, f"{path.name}: code cells {empty} show something when run but were committed without their output (re-run the notebook and save it)"


def test_the_scan_catches_what_it_claims_to():
    dirty = {"outputs": [{"output_type": "stream", "name": "stderr", "text": ["training:  45%|####5     | 9/20 [00:01<00:02, 5.1it/s]"]},
                         {"output_type": "stream", "name": "stdout", "text": ["\x1b[2K\r"]},
                         {"output_type": "execute_result", "data": {"text/plain": ["VBox(children=(HBox(children=(Dropdown(...),))))"]}},
                         {"output_type": "stream", "name": "stdout", "text": ["/tmp/tmpv1icvz3j/tri-0.png\n"]},
                         {"output_type": "execute_result", "data": {"text/markdown": ["{'template': <function template_caption at 0x7f4882d104a0>}"]}}]}
    found = {what for text in output_texts(dirty) for what, pattern in NOISE.items() if pattern.search(text)}
    assert found == set(NOISE)
    assert must_show_something("x = 1\nx") and must_show_something("print(1)") and must_show_something("check_q_sample(f)")
    assert not must_show_something("test_eq(1, 1)") and not must_show_something("#| slow\nprint(1)") and not must_show_something("x = 1")
