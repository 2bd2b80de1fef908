"""The site's sources: every lecture in the sidebar with a title and a description, an Open-in-Colab badge and a Colab-only install
cell, and internal links that resolve. Then the site as Quarto renders it, checked on what `nbdev-proc-nbs` makes of the notebooks:
no stray maths, relative links that land on a heading, figures with alt text at 100 dpi, and nothing wider than a phone's screen."""
import base64, io, json, re, struct, subprocess, sys, types
from pathlib import Path

import nbformat, pytest, yaml

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
LECTURES = sorted(NBS.glob("[0-9][0-9]*_*.ipynb"))  # 07_training, then its second part 07b_sdcourse_tiny
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


def css_rules(css):
    "{selector: declarations} of a style sheet (comments dropped; a rule with several selectors is listed under each)."
    rules = {}
    for selectors, body in re.findall(r"([^{}]+)\{([^}]*)\}", re.sub(r"/\*.*?\*/", "", css, flags=re.S)):
        for selector in selectors.split(","): rules[" ".join(selector.split())] = rules.get(" ".join(selector.split()), "") + body
    return rules


def declares(rules, selector, *declarations):
    return selector in rules and all(d in rules[selector] for d in declarations)


def test_site_styles_keep_code_lines_wrap_output_and_the_site_has_a_favicon():
    rules = css_rules((NBS / "styles.css").read_text())
    assert declares(rules, ".cell-output pre", "white-space: pre-wrap")  # printed output is prose: its long lines wrap
    # Code keeps its lines and scrolls sideways: a wrapped line would restart at column 0, and Python would look mis-indented.
    assert declares(rules, "div.sourceCode", "overflow-x: auto") and declares(rules, "div.sourceCode pre code", "white-space: pre;")
    assert not any("pre-wrap" in body for selector, body in rules.items() if "sourceCode" in selector)
    assert declares(rules, "#quarto-sidebar .sidebar-item .menu-text", "white-space: normal")  # long sidebar titles wrap on a phone
    quarto = yaml.safe_load((ROOT / "_quarto.yml").read_text())
    assert (NBS / quarto["website"]["favicon"]).exists()


# The site as Quarto renders it. `nbdev-proc-nbs` turns the notebooks into the pages Quarto reads (`_proc/`): it runs the
# show_doc cells and links every backticked name of the library to its documentation. The checks below read those pages.

def page_markdown(page):
    "The markdown of a processed page, as pandoc reads it: its markdown cells and its code cells' markdown outputs (show_doc, tables)."
    for cell in page["cells"]:
        if cell["cell_type"] == "markdown": yield "".join(cell["source"])
        for output in cell.get("outputs", []):
            if "text/markdown" in output.get("data", {}): yield "".join(output["data"]["text/markdown"])


FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
CODE_SPAN = re.compile(r"(`+)(?!`).+?(?<!`)\1(?!`)", re.S)
INLINE_MATHS = re.compile(r"(?<![\\$])\$(?![\s$])((?:\\.|[^$\\])+?)(?<![\s\\])\$(?!\d)")  # pandoc's tex_math_dollars rule


def stray_dollars(markdown):
    """The places where pandoc (so Quarto) would read dollars as maths that are not maths. A `$` in HTML `<code>` is text and must
    be escaped (`\\$`): pandoc reads markdown between HTML tags, so two of them make one maths span that swallows everything
    between them. Outside code, a `$...$` span that holds an HTML tag, a table row or an environment variable is not maths either."""
    text = CODE_SPAN.sub("", FENCE.sub("", markdown))
    found = [m.group(0) for m in re.finditer(r"<code>(.*?)</code>", text, re.S) if re.search(r"(?<!\\)\$", m.group(1))]
    text = re.sub(r"(?<!\\)\$\$.+?\$\$", "", text, flags=re.S)  # display maths
    for m in INLINE_MATHS.finditer(text):
        tex = m.group(1)
        if re.search(r"</?[A-Za-z]|\n\s*\n|\n\s*\|", tex) or re.match(r"[A-Z][A-Z0-9]{2,}_[A-Z0-9_]*[A-Z0-9]\b", tex): found.append(m.group(0)[:120])
    return found


def test_the_dollar_check_finds_what_swallowed_the_api_page():
    swallowed = ("| [<code>get_device</code>](00_core.ipynb#get_device) | function | else <code>$SDCOURSE_DEVICE</code>, else CUDA |\n"
                 "| [<code>cache_dir</code>](00_core.ipynb#cache_dir) | function | (<code>$SDCOURSE_CACHE</code> or <code>~/.cache/sdcourse</code>) |")
    assert len(stray_dollars(swallowed)) >= 2 and stray_dollars("set $SDCOURSE_CACHE$ to move the cache")
    maths = (r"At step $t$ the noise $\epsilon \sim \mathcal N(0, I)$ and $$x_t = \sqrt{\bar\alpha_t}\, x_0$$ cost \$5; "
             r"`$SDCOURSE_CACHE` and <code>\$SDCOURSE\_DEVICE</code> are text, $w > 1$ extrapolates, $W_O$ projects.")
    assert stray_dollars(maths) == []


def test_no_dollars_are_read_as_maths_that_are_not(processed):
    found = {name: hits for name, page in processed.items() if (hits := [h for md in page_markdown(page) for h in stray_dollars(md)])}
    assert not found, f"dollars that Quarto would read as maths (escape them as \\$): {found}"


def own_site():
    "The address nbdev writes before a page's name when it links a name to its documentation (doc_host and doc_baseurl, in sdcourse/_modidx.py)."
    from sdcourse._modidx import d
    return d["settings"]["doc_host"].rstrip("/") + "/" + d["settings"]["doc_baseurl"].strip("/") + "/"


def anchors_of(page):
    "The ids of a processed page's headings (show_doc's included), as pandoc makes them, or as `{#id}` sets them."
    found = set()
    for md in page_markdown(page):
        for m in re.finditer(r"^#{1,6}\s+(.*?)\s*(?:\{#([\w.-]+)[^}]*\})?\s*$", FENCE.sub("", md), re.M):
            found.add(m.group(2) or slug(re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1))))
    return found


def site_links(processed):
    "(page, target) for every markdown link on the processed pages, the ones nbdev made from backticked names included."
    for name, page in processed.items():
        for md in page_markdown(page):
            for m in re.finditer(r"\]\(([^)\s]+)\)", FENCE.sub("", md)): yield name, m.group(1)


def test_links_to_the_course_are_relative_and_land_on_a_heading(processed):
    """nbdev links names to the published site's absolute address; the Lua filter that _quarto.yml runs makes those links relative,
    so that the site works wherever it is served. Every link to a page of the course, relative or made so, must land on a page and a
    heading that exist (a method without its own documentation has no heading: link its class)."""
    from nbdev.config import nbpath2html
    site, lua = own_site(), (NBS / "relative-links.lua").read_text()
    assert "relative-links.lua" in yaml.safe_load((ROOT / "_quarto.yml").read_text()).get("filters", []), "_quarto.yml does not run the filter"
    assert f'local site = "{site}"' in lua, f"the filter does not rewrite {site}, the address nbdev writes"
    pages = {**{name: name for name in processed}, **{nbpath2html(name).name: name for name in processed}}  # 08_sampling.ipynb, sampling.html
    anchors = {name: anchors_of(page) for name, page in processed.items()}
    made_relative, problems = 0, []
    for name, target in site_links(processed):
        if target.startswith(site): target, made_relative = target[len(site):] or "index.html", made_relative + 1
        elif re.match(r"[a-z][a-z0-9+.-]*:", target): continue  # another site
        file, _, anchor = target.partition("#")
        dest = pages.get(file) if file else name
        if dest is None: problems.append(f"{name}: {target}: no such page")
        elif anchor and anchor not in anchors[dest]: problems.append(f"{name}: {target}: no heading #{anchor} on {dest}")
    assert made_relative > 100  # nbdev's links from backticked names are all there, and all made relative
    assert not problems, "\n".join(problems)


@pytest.mark.skipif(__import__("shutil").which("pandoc") is None, reason="pandoc is not installed (Quarto brings its own)")
def test_the_filter_makes_course_links_relative():
    site = own_site()
    text = f"[`generate`]({site}sampling.html#generate), [home]({site}) and [elsewhere](https://example.org/{site})"
    html = subprocess.run(["pandoc", "-f", "markdown", "-t", "html", "--lua-filter", str(NBS / "relative-links.lua")], input=text,
                          capture_output=True, text=True, check=True).stdout
    assert 'href="sampling.html#generate"' in html and 'href="index.html"' in html and f'href="https://example.org/{site}"' in html


def cell_options(source):
    "A cell's Quarto options (`#| fig-alt: ...` lines at its top), read as YAML; nbdev's directives without a colon are left out."
    options = {}
    for line in source.splitlines():
        if not line.startswith("#|"): break
        if m := re.match(r"#\|\s*([\w-]+):\s*(.*)$", line): options[m.group(1)] = yaml.safe_load(m.group(2))
    return options


def figure_cells(path):
    "(index, cell) for the code cells of `path` that draw a figure: a PNG or a JPEG among their saved outputs."
    return [(i, c) for i, c in enumerate(cells(path)) if c.cell_type == "code" and any(k.startswith("image/") for o in c.get("outputs", []) for k in o.get("data", {}))]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_figure_has_alt_text(path):
    "Quarto puts a cell's `fig-alt` on its figure: what the figure shows, for a reader who cannot see it, each in its own words."
    alts = []
    for i, cell in figure_cells(path):
        alt = cell_options(cell.source).get("fig-alt")
        assert isinstance(alt, str) and len(alt.split()) >= 8, f"{path.name}, cell {i}: no `#| fig-alt:` of at least 8 words describing the figure"
        assert not re.match(r"(a |the )?(figure|image|plot|picture|chart)\b", alt, re.I), f"{path.name}, cell {i}: say what it shows, not what it is: {alt!r}"
        alts.append(alt)
    assert len(set(alts)) == len(alts), f"{path.name}: two figures share one alt text"


def test_alt_text_reaches_the_pages(processed):
    "nbdev keeps Quarto's cell options on the pages it makes, so every figure on the site carries its alt text."
    for name, page in processed.items():
        for i, cell in enumerate(page["cells"]):
            if cell["cell_type"] == "code" and any(k.startswith("image/") for o in cell.get("outputs", []) for k in o.get("data", {})):
                assert "fig-alt" in cell_options("".join(cell["source"])), f"{name}, cell {i}: a figure without its alt text on the page"


def png_info(data):
    "(width, height, dpi or None) of a PNG's bytes."
    width, height = struct.unpack(">II", data[16:24])
    at = 8
    while at < len(data):
        size, kind = struct.unpack(">I4s", data[at:at + 8])
        if kind == b"pHYs":
            x, _, unit = struct.unpack(">IIB", data[at + 8:at + 17])
            return width, height, round(x * 0.0254) if unit == 1 else None
        if kind == b"IDAT": break
        at += 12 + size
    return width, height, None


def test_figures_are_saved_at_100_dpi_and_small():
    "Figures at the resolution the page shows them (100 dpi; 200 made every figure four times the bytes), none heavy, all of them light."
    sizes = {}
    for path in NOTEBOOKS:
        for i, cell in figure_cells(path):
            for output in cell.outputs:
                if "image/png" not in output.get("data", {}): continue
                data = base64.b64decode(output["data"]["image/png"])
                width, _, dpi = png_info(data)
                assert (dpi or 100) <= 100 and width <= 1400, f"{path.name}, cell {i}: {width} pixels wide at {dpi} dpi: save figures at 100 dpi"
                sizes[f"{path.name}, cell {i}"] = len(data)
    assert len(sizes) >= 60
    heavy = {k: v for k, v in sizes.items() if v > 400_000}
    assert not heavy and sum(sizes.values()) < 7_000_000, (heavy, sum(sizes.values()))  # 10.4 MB at 200 dpi, 5.9 MB at 100


def test_a_rendered_page_saves_every_notebooks_figures_at_100_dpi():
    """`nbdev-test` (execnb's shell) saves 'retina' PNGs, at twice a figure's dpi, and runs several notebooks in one process; with
    sdcourse.core imported, a 4-inch figure is 400 pixels wide (100 dpi) in the first notebook and in the next."""
    script = ("import os; os.environ['IN_TEST'] = '1'\nfrom execnb.shell import CaptureShell\n"
              "cell = 'import sdcourse.core\\nimport matplotlib.pyplot as plt\\nplt.figure(figsize=(4, 3)); plt.plot([0, 1]);'\n"
              "for notebook in range(2):\n    shell = CaptureShell()\n"
              "    print([o['data']['image/png'] for o in shell.run(cell) if 'image/png' in o.get('data', {})][0])\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "MPLBACKEND": "agg"})
    pngs = [base64.b64decode(line) for line in r.stdout.split()]
    assert len(pngs) == 2, r.stderr[-2000:]
    assert [png_info(p)[0] for p in pngs] == [pytest.approx(400, abs=40)] * 2, [png_info(p) for p in pngs]


def test_grid_captions_are_readable_where_the_page_shows_them():
    """An 8-column grid with long captions, as the lectures draw them, saved as the site saves it (100 dpi, tight): shown in the
    page's 800-pixel column its caption text is at least 9 pixels high, and neighbouring captions do not overlap."""
    import matplotlib
    matplotlib.use("agg")
    from PIL import Image
    from sdcourse.core import show_images
    caption = "a picture of a large blue triangle in the lower left corner, white background"
    fig = show_images([Image.new("RGB", (64, 64), "white")] * 16, [caption] * 16, ncols=8, size=1.6)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    width = png_info(buffer.getvalue())[0]
    points = min(ax.title.get_fontsize() for ax in fig.axes if ax.get_title())
    assert points * 100 / 72 * min(1, 800 / width) >= 9, f"{points}-point captions in a {width}-pixel figure"
    boxes = sorted((ax.title.get_window_extent() for ax in fig.axes[:8]), key=lambda b: b.x0)
    assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:])), "captions overlap"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_empty_output_under_a_cell(path):
    "An output with no data renders as an empty box under its cell (execnb saves one for a cell ending in a widget: `display(widget)`)."
    empty = [i for i, c in enumerate(cells(path)) if c.cell_type == "code" for o in c.get("outputs", [])
             if o.get("output_type") in ("execute_result", "display_data") and not o.get("data")]
    assert not empty, f"{path.name}: code cells {empty} leave an empty output"


def glyphs(tex):
    "About how many symbols wide TeX renders: a command is one symbol (`\\alpha`, `\\lVert`); spacing, sizing and font commands none."
    tex = re.sub(r"\\(big|Big|bigg|Bigg|left|right|mathrm|mathbf|mathcal|operatorname|text|textrm|bar|hat|tilde|frac|quad|qquad)(?![a-zA-Z])|\\[,;:! ]", "", tex)
    return len(re.sub(r"[{}^_\s\\]", "", re.sub(r"\\[a-zA-Z]+", "x", tex)))


def test_what_cannot_wrap_scrolls_in_its_own_box(processed):
    """No page is wider than a phone's screen (390 px): display maths and tables scroll sideways inside their own box. The widest
    equation and the widest table on the site are of the kinds the style sheet boxes (pandoc's display maths, a markdown table),
    inline maths stays short enough to fit, and a click on a figure enlarges it (Quarto's lightbox)."""
    rules = css_rules((NBS / "styles.css").read_text())
    assert declares(rules, ".math.display", "display: block", "overflow-x: auto") and declares(rules, 'mjx-container[display="true"]', "overflow-x: auto")
    assert declares(rules, "#quarto-document-content table", "display: block", "overflow-x: auto")
    assert declares(rules, "#quarto-document-content .table a", "word-break: normal")  # no more "Personali-sation"
    markdown = {name: "\n".join(CODE_SPAN.sub("", FENCE.sub("", md)) for md in page_markdown(page)) for name, page in processed.items()}
    display = max((len(m.group(1)), name) for name, md in markdown.items() for m in re.finditer(r"(?<!\\)\$\$(.+?)\$\$", md, re.S))
    assert display[0] > 60, display  # this equation is wider than a phone: it is in the box .math.display makes
    inline = max((glyphs(m.group(1)), m.group(1)) for md in markdown.values() for m in INLINE_MATHS.finditer(re.sub(r"\$\$.+?\$\$", "", md, flags=re.S)))
    assert inline[0] <= 44, f"inline maths cannot scroll, and a phone's line holds about 44 symbols; put this on its own line ($$): {inline[1]}"
    rows = [(len(line), name) for name, md in markdown.items() for line in md.splitlines() if re.match(r"\s*\|.*\|\s*$", line)]
    assert max(rows)[0] > 100 and not re.search(r"<table", "\n".join(markdown.values())), "tables are markdown tables, which the rule boxes"
    assert yaml.safe_load((ROOT / "_quarto.yml").read_text())["format"]["html"]["lightbox"] == "auto"


def test_the_index_starts_from_a_generated_picture():
    """The course home opens with what the course builds: before any section, its first figure is a grid that sdcourse-tiny generates
    (`load_sd`) and lecture 1's grader grades, then one line per lecture says which part of that call the lecture opens up."""
    index = cells(NBS / "index.ipynb")
    (first, cell), *_ = figure_cells(NBS / "index.ipynb")
    alt = cell_options(cell.source).get("fig-alt", "")
    assert "generated" in alt and "load_sd(" in cell.source and "grade(" in cell.source, f"the index's first figure is not a generated, graded grid: {alt!r}"
    headings = [c.source for c in index[:first] if c.cell_type == "markdown" and re.search(r"^#{2,}\s", c.source, re.M)]
    assert not headings, f"sections before the picture: {headings}"
    after = next(c.source for c in index[first + 1:] if c.cell_type == "markdown")
    lectures = {p.name.split("_")[0] for p in LECTURES if p.name < "90"}  # the numbered lectures, not the exercises and CLI pages
    missing = lectures - set(re.findall(r"\]\((\d\d[a-z]?)_\w+\.ipynb\)", after))
    assert not missing, f"the lines after the picture link no lecture {sorted(missing)}"


def prose_words(text):
    "Words of prose in a markdown cell: maths, code, HTML tags and link targets left out."
    for pattern in (r"\$\$.+?\$\$", r"\$[^$\n]+\$", r"```.*?```", r"`[^`\n]*`", r"<[^>]+>"):
        text = re.sub(pattern, " ", text, flags=re.S)
    text = re.sub(r"\]\([^)]*\)", "]", text)
    return len(re.findall(r"[A-Za-z]+(?:['’-][A-Za-z]+)*|\d[\d,.]*", text))


def test_prose_words_leave_out_maths_and_code():
    assert prose_words("Two words $x_t = \\sqrt{a}$ `q_sample(x0)` [here](08b_samplers.ipynb#dpm), 1,500 steps.\n$$\\hat x_0$$") == 5


@pytest.mark.parametrize("path", [p for p in LECTURES if p.name < "90"], ids=lambda p: p.name)
def test_a_lecture_is_one_sitting(path):
    "Issue #38: no lecture over about 4,000 words of prose (07 and 08 were split in two: 07b and 08b)."
    words = sum(prose_words(c.source) for c in cells(path) if c.cell_type == "markdown")
    assert words <= 4000, f"{path.name} has {words} words of prose; split it or cut it"


def visible_code_lines(source):
    "Lines of a code cell the page shows: none for a hidden cell (`#| hide`, `#| echo: false`, `#| include: false`) or a folded one."
    if re.search(r"#\|\s*(hide\b|echo:\s*false|include:\s*false|code-fold:\s*true)", source): return 0
    return len([line for line in source.splitlines() if not line.startswith("#|")])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_visible_code_cell_is_longer_than_60_lines(path):
    "A wall of code is split one function a cell, each with its sentence (issue #38); builders of tables and silent checks are hidden."
    long = {c.id: visible_code_lines(c.source) for c in cells(path) if c.cell_type == "code" and visible_code_lines(c.source) > 60}
    assert not long, f"{path.name}: visible code cells over 60 lines: {long}"
    assert visible_code_lines("#| echo: false\n" + "x = 1\n" * 80) == 0 and visible_code_lines("x = 1\n" * 61) == 61
