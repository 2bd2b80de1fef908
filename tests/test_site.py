"The site's sources: every lecture in the sidebar with a title and a description, an Open-in-Colab badge and a Colab-only install cell, and internal links that resolve."
import re, sys, types
from pathlib import Path

import nbformat, pytest, yaml

NBS = Path(__file__).resolve().parents[1] / "nbs"
LECTURES = sorted(NBS.glob("[0-9][0-9]_*.ipynb"))
NOTEBOOKS = sorted(NBS.glob("*.ipynb"))


def cells(path): return nbformat.read(path, as_version=4).cells


def sidebar_entries(node):
    if isinstance(node, str): yield node
    elif isinstance(node, dict): yield from sidebar_entries(node.get("contents", []))
    elif isinstance(node, list):
        for item in node: yield from sidebar_entries(item)


def slug(heading):
    "Pandoc's (and so Quarto's) automatic identifier for a heading."
    text = re.sub(r"[^\w\s.-]", "", heading.lower().replace("`", ""))
    return re.sub(r"^[^a-z]+", "", re.sub(r"\s+", "-", text.strip()))


def anchors(path):
    return {slug(m.group(1)) for c in cells(path) if c.cell_type == "markdown" for m in re.finditer(r"^#+\s+(.*)$", c.source, re.M)}


def test_lectures_exist():
    assert len(LECTURES) >= 12


def test_every_notebook_is_in_the_sidebar_in_teaching_order():
    sidebar = yaml.safe_load((NBS / "sidebar.yml").read_text())
    listed = list(sidebar_entries(sidebar["website"]["sidebar"]["contents"]))
    assert sorted(listed) == sorted(p.name for p in NOTEBOOKS)
    assert [n for n in listed if n[:2].isdigit()] == [p.name for p in LECTURES]  # numbered in teaching order


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_front_matter_has_a_title_and_a_one_line_description(path):
    first = cells(path)[0]
    assert first.cell_type == "markdown"
    title, blank, description, *rest = first.source.strip().splitlines() + ["", ""]
    assert re.fullmatch(r"# \S.*", title) and blank == "" and re.fullmatch(r"> \S.*", description) and not "".join(rest).strip(), first.source[:200]


@pytest.mark.parametrize("path", LECTURES, ids=lambda p: p.name)
def test_colab_badge_and_install_cell(path, monkeypatch):
    badge, install = cells(path)[1:3]
    assert badge.cell_type == "markdown" and f'href="https://colab.research.google.com/github/sdcourse/sdcourse/blob/main/nbs/{path.name}"' in badge.source
    assert "![" not in badge.source  # a markdown image alone in a paragraph renders as a captioned figure; the badge is an inline HTML link
    assert install.cell_type == "code"
    calls = []
    shell = types.SimpleNamespace(run_line_magic=lambda *args: calls.append(args))
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(install.source, {"get_ipython": lambda: shell})
    assert calls == []  # not on Colab: nothing happens
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    exec(install.source, {"get_ipython": lambda: shell})
    assert calls == [("pip", "install -q sdcourse")]


def internal_links():
    for path in NOTEBOOKS:
        for c in cells(path):
            if c.cell_type != "markdown": continue
            for m in re.finditer(r"\]\(([^)\s]+)\)", c.source):
                target = m.group(1)
                if not re.match(r"[a-z]+:", target): yield path, target


def test_internal_links_resolve():
    links = list(internal_links())
    assert len(links) >= 12  # the index links every lecture
    for path, target in links:
        file, _, anchor = target.partition("#")
        page = NBS / file if file else path
        assert page.exists(), f"{path.name} links to {target!r}: no such file"
        if anchor: assert anchor in anchors(page), f"{path.name} links to {target!r}: no heading with that id in {page.name}"


def test_api_reference_lists_every_public_name():
    "The committed API page (generated from the library) is current: every exported name of every module is on it."
    import importlib
    page = "".join(o["data"].get("text/markdown", "") for c in cells(NBS / "api.ipynb") if c.cell_type == "code" for o in c.get("outputs", []) if "data" in o)
    headings = "\n".join(c.source for c in cells(NBS / "api.ipynb") if c.cell_type == "markdown")  # markdown cells: in the page's table of contents
    for lecture in LECTURES:
        match = re.search(r"#\|\s*default_exp\s+(\w+)", "\n".join(c.source for c in cells(lecture)))
        if match is None: continue
        module = importlib.import_module(f"sdcourse.{match.group(1)}")
        assert f"## sdcourse.{match.group(1)}" in headings, f"api.ipynb has no section for sdcourse.{match.group(1)}"
        missing = [name for name in module.__all__ if f"<code>{name}</code>" not in page]
        assert not missing, f"api.ipynb does not list {missing} from sdcourse.{match.group(1)}: re-run it"


def test_site_styles_wrap_long_lines_and_the_site_has_a_favicon():
    css = (NBS / "styles.css").read_text()
    assert re.search(r"\.cell-output pre[^{]*\{[^}]*white-space: pre-wrap", css) and "div.sourceCode pre" in css  # long lines wrap, none cut off
    assert ".sidebar-item" in css and "white-space: normal" in css  # long sidebar titles wrap on a phone
    quarto = yaml.safe_load((NBS.parent / "_quarto.yml").read_text())
    assert (NBS / quarto["website"]["favicon"]).exists()
