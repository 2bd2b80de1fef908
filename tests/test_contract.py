"""Lecture 11 as a platform (issue #36): the sampling options' contract, exercised pair by pair through the command line; the registry in
pyproject.toml against the code; no lecture borrowing another's private names; and one safe loader on every path from a file to weights."""
import ast, importlib, itertools, json, pkgutil, re, shutil, tomllib, warnings
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest, torch
from PIL import Image, ImageDraw

import sdcourse
from sdcourse.core import shipped_path
from sdcourse.pipeline import COMMANDS_GROUP, OPTIONS_GROUP, Command, SamplingOption, main, png_info, reproduce, sampling_options

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("no_progress_bars")

# How a user asks for each sampling option: a later lecture that adds one adds its line here (the test below fails until it does).
ASK = {"lora": ["--lora", str(shipped_path("lectures", "10_lora", "stars"))],
       "embedding": ["--embedding", str(shipped_path("lectures", "13_personalisation", "star.safetensors"))],
       "control": ["--control", "{mask}"],
       "lcm": ["--scheduler", "lcm"]}


@pytest.fixture(scope="module")
def mask(tmp_path_factory):
    path = tmp_path_factory.mktemp("mask") / "mask.png"
    image = Image.new("L", (64, 64)); ImageDraw.Draw(image).ellipse((16, 16, 48, 48), fill=255); image.save(path)
    return path


def test_every_registered_option_is_asked_for_here():
    assert {o.name for o in sampling_options()} == set(ASK)


@pytest.mark.parametrize("pair", [pair for pair in itertools.combinations(sorted(ASK), 2)] + [tuple(sorted(ASK))], ids="+".join)
def test_every_combination_of_options_works_through_the_command(pair, mask, tmp_path):
    out = tmp_path / "out.png"
    asked = [a.format(mask=mask) for name in pair for a in ASK[name]]
    assert main(["generate", "a red <star> in the center", "-o", str(out), "--steps", "2", *asked]) == 0
    recipe = png_info(out)
    recorded = {"lora": "lora", "embedding": "embedding", "control": "control", "lcm": "lcm_lora"}
    assert all(recorded[name] in recipe and recorded[name] in recipe["fingerprints"] for name in pair), recipe
    if len(pair) < len(ASK): return
    with warnings.catch_warnings():  # all four at once: the recipe alone makes the same image, every option applied in the same order
        warnings.filterwarnings("error", message=".*changed since it was made")  # and every file it records is found unchanged
        again = reproduce(out)
    assert np.array_equal(np.asarray(again), np.asarray(Image.open(out).convert("RGB")))


def test_img2img_and_inpaint_take_every_option_at_once(mask, tmp_path):
    from sdcourse.data import make_example
    make_example(0)[0].save(tmp_path / "source.png")
    everything = [a.format(mask=mask) for name in sorted(ASK) for a in ASK[name]]
    assert main(["img2img", str(tmp_path / "source.png"), "a red <star> in the center", "-o", str(tmp_path / "a.png"), "--steps", "2", *everything]) == 0
    assert main(["inpaint", str(tmp_path / "source.png"), str(mask), "a red <star>", "-o", str(tmp_path / "b.png"), "--steps", "2", *everything]) == 0


def test_options_apply_in_the_order_of_what_they_change_not_of_their_names():
    from sdcourse.pipeline import CHANGES
    order = [o.changes for o in sampling_options()]
    assert order == sorted(order, key=CHANGES.index) and [o.name for o in sampling_options()] == ["embedding", "lora", "lcm", "control"]


def test_two_options_that_change_the_same_exclusive_thing_are_refused_before_any_work(capsys):
    from sdcourse.pipeline import UsageError, chosen_options
    twin = SamplingOption("twin", "unet wrapper", lambda p: None, active=lambda o: True, apply=lambda pipe, o: {})
    with pytest.raises(UsageError, match="the options control and twin both change the unet wrapper"):
        chosen_options(sampling_options() + [twin], dict(control="mask.png"))
    with pytest.raises(ValueError, match="changes='the moon' is not accepted"):
        SamplingOption("odd", "the moon", None, None, None)


def _module_objects(kind):
    "Every `kind` (SamplingOption or Command) a library module defines at its top level, as 'sdcourse.module:NAME'."
    found = set()
    for info in pkgutil.iter_modules(sdcourse.__path__):
        module = importlib.import_module(f"sdcourse.{info.name}")
        assigned = {t.id for n in ast.parse(Path(module.__file__).read_text()).body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        found |= {f"sdcourse.{info.name}:{name}" for name in assigned if isinstance(getattr(module, name, None), kind)}
    return found


def test_the_registry_in_pyproject_matches_the_code_and_the_installed_metadata():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for group, kind, builtin in ((OPTIONS_GROUP, SamplingOption, {"sdcourse.pipeline:LORA_OPTION"}), (COMMANDS_GROUP, Command, set())):
        declared = project["entry-points"][group]
        assert {f"{name}" for name in declared} == {e.name for e in entry_points(group=group)}, "reinstall: the installed metadata is stale"
        assert set(declared.values()) == _module_objects(kind) - builtin, f"{group}: pyproject.toml and the code disagree"
        for name, target in declared.items():
            obj = next(e for e in entry_points(group=group) if e.name == name).load()
            assert isinstance(obj, kind) and obj.name == name, (name, target)


def private_imports(source, own=None):
    "The private names (`_x`) `source` imports from sdcourse modules other than `own`."
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and (node.module.startswith("sdcourse") or node.level):
            module = node.module.removeprefix("sdcourse.").removeprefix("sdcourse")
            if module != own: found += [f"{module}.{a.name}" for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    return found


def test_no_module_and_no_lecture_imports_a_private_name_of_another():
    for path in sorted((ROOT / "sdcourse").glob("*.py")):
        assert private_imports(path.read_text(), path.stem) == [], path.name
    for path in sorted((ROOT / "nbs").glob("*.ipynb")):
        own = re.search(r"#\|\s*default_exp\s+(\w+)", path.read_text())
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] != "code": continue
            code = "\n".join(l for l in "".join(cell["source"]).splitlines() if not l.lstrip().startswith(("%", "!")))
            try: found = private_imports(code, own and own.group(1))
            except SyntaxError: continue
            assert found == [], f"{path.name} imports {found}"
    assert private_imports("from sdcourse.pipeline import _bounded, main\nfrom .core import _sha256", "data") == ["pipeline._bounded", "core._sha256"]


# One safe loader: a pickle whose payload would create a file is given to every public loader; none may run it

class Payload:
    "Unpickling this calls open(marker, 'w'): it creates the marker file."
    def __init__(self, marker): self.marker = str(marker)
    def __reduce__(self): return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory):
    "Copies of the shipped models (a pipeline, a ControlNet, mini-CLIP, a LoRA, an embedding) whose every weights file is a pickle with a payload."
    root = tmp_path_factory.mktemp("poisoned")
    marker = root / "PAYLOAD-RAN"
    def poison(folder):
        for file in list(folder.rglob("*.safetensors")):
            torch.save({"weight": Payload(marker)}, file.with_suffix(".bin").with_name(file.name.replace(".safetensors", ".bin")))
            file.unlink()
    for name in ("sdcourse-tiny", "sdcourse-tiny-controlnet", "mini-clip", "sdcourse-tiny-lcm-lora", "sdcourse-tiny-sd3"):
        shutil.copytree(shipped_path(name), root / name); poison(root / name)
    shutil.copytree(shipped_path("lectures", "15_fewer_steps", "flow-unet"), root / "flow-unet"); poison(root / "flow-unet")
    torch.save({"<star>": Payload(marker)}, root / "star.bin")
    torch.save({"weight": Payload(marker)}, root / "weights.bin")
    (root / "fake.safetensors").write_bytes((root / "weights.bin").read_bytes())  # a pickle under a safetensors name
    return root, marker


def loader_calls(root, pipe):
    "How each public loader is called on the poisoned files: {qualified name: call}."
    from sdcourse import control, core, fewer_steps, lora, personalisation, pipeline, text, training, transformers, unet, vae
    from diffusers.training_utils import EMAModel
    tiny = root / "sdcourse-tiny"
    model = unet.make_unet()
    return {
        "core.read_safetensors": lambda: core.read_safetensors(root / "weights.bin"),
        "core.load_weights": lambda: core.load_weights(torch.nn.Linear(2, 2), root / "fake.safetensors"),
        "core.load_pretrained": lambda: core.load_pretrained(type(pipe.unet), tiny / "unet"),
        "vae.load_vae": lambda: vae.load_vae(tiny / "vae"),
        "vae.load_scratch_vae": lambda: vae.load_scratch_vae(root / "weights.bin"),
        "unet.load_unet": lambda: unet.load_unet(tiny / "unet"),
        "text.load_text_encoder": lambda: text.load_text_encoder(tiny),
        "text.load_mini_clip": lambda: text.load_mini_clip(root / "mini-clip"),
        "training.load_pipeline": lambda: training.load_pipeline(tiny),
        "training.load_checkpoint": lambda: training.load_checkpoint(root / "fake.safetensors", model, EMAModel(model.parameters()),
                                                                     torch.optim.AdamW(model.parameters())),
        "pipeline.load_sd": lambda: pipeline.load_sd(tiny),
        "lora.load_lora": lambda: lora.load_lora(pipe, root / "weights.bin", "poison"),
        "lora.lora_metadata": lambda: lora.lora_metadata(root / "fake.safetensors"),
        "personalisation.read_embedding": lambda: personalisation.read_embedding(root / "star.bin", 64),
        "personalisation.load_embedding": lambda: personalisation.load_embedding(pipe, root / "fake.safetensors"),
        "control.load_controlnet": lambda: control.load_controlnet(root / "sdcourse-tiny-controlnet"),
        "fewer_steps.load_flow_pipeline": lambda: fewer_steps.load_flow_pipeline(root / "flow-unet"),
        "fewer_steps.with_lcm": lambda: fewer_steps.with_lcm(pipe, root / "sdcourse-tiny-lcm-lora"),
        "lora.check_lora_fits": lambda: lora.check_lora_fits(pipe.unet, root / "fake.safetensors"),
        "transformers.load_sd3": lambda: transformers.load_sd3(root / "sdcourse-tiny-sd3"),
    }


NOT_WEIGHTS = {"data.load_imagefolder", "evaluation.read_images_with_captions", "core.read_manifest", "data.read_caption", "data.read_attributes"}


def test_every_public_loader_refuses_a_pickle_and_never_runs_it(poisoned, pipe):
    root, marker = poisoned
    calls = loader_calls(root, pipe)
    public = {f"{info.name}.{name}" for info in pkgutil.iter_modules(sdcourse.__path__) for name in getattr(importlib.import_module(f"sdcourse.{info.name}"), "__all__", [])
              if re.match(r"(load|read)_", name) and callable(getattr(importlib.import_module(f"sdcourse.{info.name}"), name))}
    assert public - NOT_WEIGHTS <= set(calls), f"a loader without a test here: {sorted(public - NOT_WEIGHTS - set(calls))}"
    for name, call in calls.items():
        with pytest.raises((ValueError, OSError)) as refused: call()
        message = str(refused.value)
        assert "\n" not in message and re.search(r"safetensors|pickle", message), (name, message)
        assert not marker.exists(), f"{name} ran the pickle's payload"
    torch.load(root / "weights.bin", weights_only=False)  # the payload is real: unpickled, it makes the marker
    assert marker.exists()
