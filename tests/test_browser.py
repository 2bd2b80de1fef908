"""The widgets in a real browser: JupyterLab on loopback, headless Chromium (Debian's, through Playwright), the notebook's
widget cell run, a control moved, and the displayed image checked to change. Screenshots go to .cache/screenshots/."""
import ast, os, re, shutil, signal, socket, subprocess, sys, time, secrets, urllib.request
from pathlib import Path

import nbformat, pytest

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / ".cache" / "screenshots"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REQUIRED = os.environ.get("SDCOURSE_BROWSER_TEST") == "required"  # .ci/run sets it: there a missing browser is a failure, not a skip
try: from playwright.sync_api import sync_playwright
except ImportError: sync_playwright = None
if (CHROMIUM is None or sync_playwright is None) and not REQUIRED:
    pytest.skip("needs Debian's chromium and playwright (both installed by .ci/run)", allow_module_level=True)


def widget_notebook(name, marker, folder):
    """A copy of nbs/`name` cut to what the cell that shows the widget needs: the setup and `export` cells (imports and definitions,
    quick) and the cells that assign a name the widget cell reads (`pipe = load_pipeline()`); the lecture's demonstrations in between,
    which `nbdev-test` runs anyway, are left out (they made lecture 8's copy take a minute)."""
    nb = nbformat.read(ROOT / "nbs" / name, as_version=4)
    end = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and marker in c.source)
    names = [n for n in ast.walk(ast.parse(nb.cells[end].source)) if isinstance(n, ast.Name)]
    reads = {n.id for n in names if isinstance(n.ctx, ast.Load)} - {n.id for n in names if isinstance(n.ctx, ast.Store)}
    def needed(cell):
        if re.search(r"^#\|\s*(slow|cuda|eval:\s*false)", cell.source, re.M): return False
        if re.search(r"^#\|\s*(hide|export|default_exp)", cell.source, re.M): return True
        code = "\n".join(l for l in cell.source.splitlines() if not l.startswith("#|"))
        return any(isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store) and n.id in reads for n in ast.walk(ast.parse(code)))
    nb.cells = [c for c in nb.cells[:end] if c.cell_type == "code" and needed(c)] + [nb.cells[end]]
    for c in nb.cells: c.outputs, c.execution_count = [], None
    nbformat.write(nb, folder / name)
    return name


def wait_for(server, url, log, seconds=90):
    "Wait until `url` answers; fail with the server's log if it exits or does not answer in time."
    deadline = time.time() + seconds
    while time.time() < deadline and server.poll() is None:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError: time.sleep(0.5)
    raise RuntimeError("JupyterLab did not start:\n" + log.read_text()[-3000:])


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    "JupyterLab serving a temporary folder on 127.0.0.1 with a random token; stopped (with its kernels) afterwards."
    folder = tmp_path_factory.mktemp("lab")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    token = secrets.token_hex(16)
    env = {**os.environ, "MPLBACKEND": "module://matplotlib_inline.backend_inline", "JUPYTER_CONFIG_DIR": str(folder / ".config"),
           "JUPYTER_RUNTIME_DIR": str(folder / ".runtime")}
    server = subprocess.Popen([sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
                               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={folder}", "--ServerApp.open_browser=False", "--allow-root",
                               "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
                              cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=open(folder / "server.log", "w"), start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(server, f"{url}/api/status?token={token}", folder / "server.log")
        yield url, token, folder
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try: server.wait(timeout=20)
        except subprocess.TimeoutExpired: os.killpg(server.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield chromium
        chromium.close()


def wait_for_last_cell(page, status, timeout_s):
    "Wait until the last cell (the widget's) shows an execution count; fail early if the kernel idles before that (an error stopped Run All)."
    prompt, deadline, idle_since = page.locator(".jp-Notebook .jp-CodeCell .jp-InputPrompt").last, time.time() + timeout_s, None
    while not re.fullmatch(r"\[\d+\]:", prompt.inner_text().strip()):
        idle_since = (idle_since or time.time()) if status("Idle").count() else None
        if idle_since and time.time() - idle_since > 15: raise AssertionError("Run All stopped before the widget cell: a cell failed?")
        if time.time() > deadline: raise AssertionError(f"the widget cell had not run after {timeout_s} s")
        time.sleep(0.5)


def run_notebook(browser, lab, name, timeout_s=600):
    "Open `name` in JupyterLab, run all its cells, and wait until the kernel is idle again."
    url, token, _ = lab
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{url}/lab/workspaces/{Path(name).stem}/tree/{name}?reset&token={token}")  # a fresh workspace per notebook
    page.locator(".jp-Notebook").first.wait_for(timeout=60_000)
    select = page.get_by_role("button", name="Select", exact=True)  # JupyterLab may ask which kernel to start
    try: select.wait_for(timeout=5_000)
    except Exception: pass
    else: select.click()
    status = lambda state: page.get_by_text(f"Python 3 (ipykernel) | {state}")
    status("Idle").wait_for(timeout=120_000)  # the kernel has started
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_text("Run All Cells", exact=True).click()
    try: wait_for_last_cell(page, status, timeout_s)
    except Exception:
        page.screenshot(path=str(SHOTS / f"{name}-failed.png"))
        raise
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr'] >> text=Traceback")
    assert errors.count() == 0, errors.first.inner_text()[-2000:]
    return page


def image_changes(page, image, act, shot, timeout_s=60):
    "Screenshot, `act` on a control, and wait until the `image` locator shows different pixels; screenshot again."
    SHOTS.mkdir(parents=True, exist_ok=True)
    image.scroll_into_view_if_needed()
    before = image.get_attribute("src")
    page.screenshot(path=str(SHOTS / f"{shot}-before.png"))
    act()
    deadline = time.time() + timeout_s
    while time.time() < deadline and image.get_attribute("src") == before: time.sleep(0.25)
    page.screenshot(path=str(SHOTS / f"{shot}-after.png"))
    return before is not None and image.get_attribute("src") != before


def test_schedule_widget_redraws_when_t_moves(browser, lab):
    name = widget_notebook("02_forward.ipynb", "ScheduleWidget(", lab[2])
    page = run_notebook(browser, lab, name)
    widget = page.locator(".jp-Notebook .jp-CodeCell").last.locator(".jp-OutputArea-output")  # the widget cell's output
    slider = widget.locator(".widget-slider .noUi-target").first
    figure = widget.locator(".widget-output img").first
    figure.wait_for(timeout=60_000)
    readout = widget.locator(".widget-readout").first
    t_before = readout.inner_text()

    def move_t():
        box = slider.bounding_box()
        page.mouse.click(box["x"] + 0.9 * box["width"], box["y"] + box["height"] / 2)  # click the track near its end: t ~ 900

    assert image_changes(page, figure, move_t, "schedule-widget"), "the figure did not change when t moved"
    assert readout.inner_text() != t_before and int(readout.inner_text()) > 800


def test_guidance_widget_regenerates_when_guidance_moves(browser, lab):
    name = widget_notebook("08_sampling.ipynb", "GuidanceWidget(", lab[2])
    page = run_notebook(browser, lab, name)
    widget = page.locator(".jp-Notebook .jp-CodeCell").last.locator(".jp-OutputArea-output")  # the widget cell's output
    grid = widget.locator(".widget-image").first
    grid.wait_for(timeout=60_000)
    slider = widget.locator(".widget-slider .noUi-target").first  # guidance scale, the first slider

    def lower_guidance():
        box = slider.bounding_box()
        page.mouse.click(box["x"] + 0.02 * box["width"], box["y"] + box["height"] / 2)  # guidance ~ 0: unconditional

    assert image_changes(page, grid, lower_guidance, "guidance-widget"), "the image grid did not change when the guidance scale moved"
