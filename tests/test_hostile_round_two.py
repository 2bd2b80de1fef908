"""Hostile input, round two (issue #35): files that appear while a command works, manifests that forge authorship, files that merely look
like the course's own, and the last tracebacks and silent wrong results. Each test fails on the code before that issue."""
import hashlib, json, os, shutil, signal, subprocess, sys, threading, time
from pathlib import Path

import numpy as np
import pytest, torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file, save_file

import sdcourse.data, sdcourse.personalisation, sdcourse.pipeline
from sdcourse.core import MANIFEST, foreign_files, load_weights, save_tensors, shipped_path
from sdcourse.data import make_example
from sdcourse.lora import LORA_FILE
from sdcourse.pipeline import main, png_info, reproduce

pytestmark = pytest.mark.usefixtures("no_progress_bars")  # stderr must hold the error alone
STARS = shipped_path("lectures", "10_lora", "stars")


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_example(0, "train", seed=4)[0].save(tmp_path / "source.png")
    return tmp_path


def run(argv, capsys):
    "main(argv) in-process: (exit code, stdout, stderr); usage errors (argparse) come back as their exit code too."
    capsys.readouterr()
    try: code = main([str(a) for a in argv])
    except SystemExit as e: code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err, *says):
    return err.count("\n") == 1 and "Traceback" not in err and all(s in err for s in says)


def appears_during(monkeypatch, owner, name, write):
    """Make `owner.name` (a function the command calls while it works) let another thread run `write()`, a user's real concurrent write,
    and wait for it to finish before going on: the file appears after every check the command made before the work."""
    real = getattr(owner, name)
    def wrapped(*args, **kwargs):
        writer = threading.Thread(target=write)
        writer.start(); writer.join()
        monkeypatch.setattr(owner, name, real)  # once
        return real(*args, **kwargs)
    monkeypatch.setattr(owner, name, wrapped)


# 1. Data loss: a file created while the command works is never replaced

@pytest.mark.parametrize("n", [1, 2])
def test_a_png_that_appears_while_generate_samples_is_never_replaced(n, home, capsys, monkeypatch):
    target = home / ("race.png" if n == 1 else "race-1.png")
    appears_during(monkeypatch, sdcourse.pipeline, "generate", lambda: target.write_text("PRECIOUS"))
    code, _, err = run(["generate", "a red circle", "--steps", "2", "-n", n, "-o", "race.png"], capsys)
    assert code == 1 and one_line(err, target.name) and target.read_text() == "PRECIOUS", err
    assert not [p for p in home.iterdir() if p.name.startswith(".")]  # no temporary file left
    appears_during(monkeypatch, sdcourse.pipeline, "generate", lambda: target.write_text("PRECIOUS, again"))
    assert run(["generate", "a red circle", "--steps", "2", "-n", n, "-o", "race.png", "--overwrite"], capsys)[0] == 0
    assert png_info(target)["prompt"] == "a red circle"  # with --overwrite, asked for


def test_a_folder_that_appears_while_dataset_exports_is_never_replaced(home, capsys, monkeypatch):
    def user_makes_it():
        (home / "ds").mkdir(); (home / "ds" / "mine.txt").write_text("PRECIOUS")
    appears_during(monkeypatch, sdcourse.data.ShapesDataset, "__getitem__", user_makes_it)
    code, _, err = run(["dataset", "ds", "--n-images", "3"], capsys)
    assert code == 1 and one_line(err, "'ds'", "nothing was written") and (home / "ds" / "mine.txt").read_text() == "PRECIOUS", err
    assert sorted(p.name for p in (home / "ds").iterdir()) == ["mine.txt"] and not [p for p in home.iterdir() if p.name.startswith(".")]


def test_a_file_that_appears_while_textual_inversion_trains_is_never_replaced(home, capsys, monkeypatch):
    appears_during(monkeypatch, sdcourse.personalisation, "textual_inversion", lambda: (home / "star.safetensors").write_text("PRECIOUS"))
    code, _, err = run(["train-textual-inversion", "star.safetensors", "--steps", "1"], capsys)
    assert code == 1 and one_line(err, "star.safetensors") and (home / "star.safetensors").read_text() == "PRECIOUS", err


def _forge(folder, files):
    "A manifest listing `files` of `folder` with their real SHA-256 and size, as an archive or a shared folder might bring, signed by no one."
    entries = {f: dict(sha256=hashlib.sha256((folder / f).read_bytes()).hexdigest(), bytes=(folder / f).stat().st_size) for f in files}
    (folder / MANIFEST).write_text(json.dumps(dict(kind="imagefolder", files=entries, signature="f" * 64)))


@pytest.mark.parametrize("command", [["dataset", "shared", "--n-images", "2", "--overwrite"], ["train-lora", "shared", "--steps", "1", "--overwrite"]])
def test_a_manifest_with_the_real_hash_of_a_users_file_cannot_authorise_deleting_it(command, home, capsys, monkeypatch):
    (home / "shared").mkdir(); (home / "shared" / "thesis.tex").write_text("three years of work")
    _forge(home / "shared", ["thesis.tex"])
    monkeypatch.setattr(sdcourse.pipeline, "load_sd", lambda *a, **k: pytest.fail("the model was loaded before the folder was refused"))
    code, _, err = run(command, capsys)
    assert code == 1 and one_line(err, "'shared'", "did not write", "vouches for none", "thesis.tex") and "--overwrite" not in err, err
    assert (home / "shared" / "thesis.tex").read_text() == "three years of work"


def test_a_manifest_signed_with_another_users_key_cannot_authorise_a_deletion(home, capsys, monkeypatch):
    monkeypatch.setenv("SDCOURSE_CONFIG", str(home / "alice-config"))
    assert run(["dataset", "ds", "--n-images", "2"], capsys)[0] == 0  # Alice's export, signed with her key...
    (home / "ds" / "00000.png").write_bytes(b"Bob's own file, same name")  # ...and Bob's file in it, the manifest copied along
    monkeypatch.setenv("SDCOURSE_CONFIG", str(home / "bob-config"))
    code, _, err = run(["dataset", "ds", "--n-images", "2", "--overwrite"], capsys)
    assert code == 1 and one_line(err, "did not write") and (home / "ds" / "00000.png").read_bytes() == b"Bob's own file, same name", err


@pytest.mark.parametrize("name, tensor, replaced", [("weights", torch.zeros(1, 64), False),  # any 2-D tensor: not this word's file
                                                    ("<star>", torch.zeros(1, 32), False),   # the word, but another encoder's width
                                                    ("<star>", torch.zeros(1, 64), True)])  # its own file: replaced with --overwrite
def test_train_textual_inversion_replaces_only_its_own_words_file(name, tensor, replaced, home, capsys):
    save_file({name: tensor}, str(home / "out.safetensors"))
    before = (home / "out.safetensors").read_bytes()
    code, _, err = run(["train-textual-inversion", "out.safetensors", "--steps", "1", "--overwrite"], capsys)
    if replaced: assert code == 0 and (home / "out.safetensors").read_bytes() != before, err
    else: assert code == 1 and one_line(err, "is not a textual-inversion file for '<star>'") and (home / "out.safetensors").read_bytes() == before, err


# 2. Tracebacks and silent wrong results

def test_img2img_control_is_sized_by_the_image_being_drawn(home, capsys):
    Image.new("RGB", (128, 128), "white").save(home / "big.png")
    mask = Image.new("L", (128, 128)); ImageDraw.Draw(mask).ellipse((30, 30, 90, 90), fill=255); mask.save(home / "mask.png")
    code, _, err = run(["img2img", "big.png", "a red circle in the center", "--control", "mask.png", "--steps", "2", "-o", "a.png"], capsys)
    assert code == 0 and Image.open(home / "a.png").size == (128, 128), err
    mask.resize((64, 64)).save(home / "small.png")
    code, _, err = run(["img2img", "big.png", "a red circle", "--control", "small.png", "--steps", "2", "-o", "b.png"], capsys)
    assert code == 1 and one_line(err, "control is 64x64 but the images to draw are 128x128"), err


def test_type_errors_a_user_can_cause_are_one_line(home, capsys, pipe):
    code, _, err = run(["generate", "a red \udcff circle", "-o", "a.png"], capsys)  # a terminal in another encoding: argv holds surrogates
    assert code == 1 and one_line(err, "not UTF-8 text"), err
    pipe.save_pretrained(home / "model")
    (home / "model" / "model_index.json").write_text("[1, 2]")
    code, _, err = run(["generate", "a red circle", "--model", "model", "-o", "b.png"], capsys)
    assert code == 1 and one_line(err, "model_index.json holds a JSON list"), err


def test_a_failed_allocation_is_one_line(home, capsys, monkeypatch):
    def no_memory(*args, **kwargs): raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to allocate 11 GB")
    monkeypatch.setattr(sdcourse.pipeline, "generate", no_memory)
    code, _, err = run(["generate", "a red circle", "-o", "a.png"], capsys)
    assert code == 1 and one_line(err, "out of memory"), err
    monkeypatch.setattr(sdcourse.pipeline, "generate", lambda *a, **k: {}["a bug"])
    with pytest.raises(KeyError): main(["generate", "a red circle", "-o", "b.png"])  # a bug keeps its traceback


def test_the_reference_images_of_evaluate_are_streamed(monkeypatch):
    import sdcourse.evaluation as ev
    batches = []
    real = ev.image_features
    monkeypatch.setattr(ev, "image_features", lambda images, clip=None, batch_size=500: batches.append(len(images)) or real(images, clip, batch_size))
    monkeypatch.setattr(ev, "real_images", lambda *a, **k: pytest.fail("50,000 reference images held at once"))
    examples = [make_example(i, "train", 9) for i in range(4)]
    result = ev.evaluate_images([im for im, *_ in examples], [caption for _, caption, _ in examples], reference_n=1100)
    assert result["reference_images"] == 1100 and batches == [500, 500, 100, 4]  # the reference in bounded batches, then the images


def test_ctrl_c_while_torch_imports_is_one_line(tmp_path):
    child = ("import signal; signal.signal(signal.SIGINT, signal.default_int_handler); print('ready', flush=True); "
             "from sdcourse.cli import main; raise SystemExit(main(['generate', 'a red circle', '-o', 'never.png']))")
    proc = subprocess.Popen([sys.executable, "-c", child], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"  # Python is up, with its Ctrl-C handler
    time.sleep(0.2); proc.send_signal(signal.SIGINT)  # well inside the import of torch
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and err.count("\n") == 1 and "interrupted" in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []
    import tomllib
    scripts = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["sdcourse"] == "sdcourse.cli:main"  # the installed command enters through the light module


def _stars_copy(home, **changes):
    "A copy of the shipped star LoRA with its metadata or tensors changed."
    tensors, meta = load_file(str(STARS / LORA_FILE)), None
    from safetensors import safe_open
    with safe_open(str(STARS / LORA_FILE), "pt") as f: meta = f.metadata()
    adapter = json.loads(meta["lora_adapter_metadata"])
    adapter.update(changes.pop("adapter", {}))
    tensors.update(changes.pop("tensors", {}))
    (home / "lora").mkdir(exist_ok=True)
    save_file(tensors, str(home / "lora" / LORA_FILE), metadata=dict(meta, lora_adapter_metadata=json.dumps(adapter)))
    return home / "lora"


def test_a_lora_whose_metadata_rank_differs_from_its_tensors_is_one_line(home, capsys):
    _stars_copy(home, adapter={"unet.r": 4})  # its tensors have rank 8
    code, _, err = run(["generate", "a red star", "--lora", "lora", "--steps", "2", "-o", "a.png"], capsys)
    assert code == 1 and one_line(err, "metadata declares rank 4", "rank 8"), err


def test_a_concept_lora_is_not_taken_for_an_lcm_lora(home, capsys):
    code, _, err = run(["generate", "a red circle", "--scheduler", "lcm", "--lcm-lora", STARS, "-o", "a.png"], capsys)
    assert code == 1 and one_line(err, "is not an LCM-LoRA", "--lora") and not (home / "a.png").exists(), err


@pytest.mark.parametrize("argv, code_, says", [
    (["--control-scale", "2"], 2, "--control-scale needs --control"),
    (["--controlnet", "somewhere"], 2, "--controlnet needs --control"),
    (["--lora-strength", "0.5"], 2, "--lora-strength needs --lora"),
    (["--lcm-lora", "somewhere"], 2, "--lcm-lora needs --scheduler lcm"),
    (["--negative", "blue", "--scheduler", "lcm"], 2, "--negative needs a guidance other than 1"),
    (["--negative", "blue", "--guidance", "1"], 2, "--negative needs a guidance other than 1"),
    (["--embedding", str(shipped_path("lectures", "13_personalisation", "star.safetensors"))], 1, "the prompt never uses '<star>'"),
])
def test_an_option_that_would_change_nothing_is_refused(argv, code_, says, home, capsys):
    code, _, err = run(["generate", "a red circle in the center", "-o", "a.png", *argv], capsys)
    assert code == code_ and one_line(err, says) and not (home / "a.png").exists(), err


def test_reproduce_says_when_a_file_that_made_the_image_changed(home, capsys):
    shutil.copytree(STARS, home / "stars")
    assert run(["generate", "a red star in the center", "--steps", "4", "--lora", "stars", "-o", "s.png"], capsys)[0] == 0
    with __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("error", UserWarning)
        reproduce(home / "s.png")  # nothing changed: no warning
    _stars_copy(home, tensors={k: v * 2 for k, v in load_file(str(STARS / LORA_FILE)).items()})  # another LoRA under the same name
    shutil.rmtree(home / "stars"); (home / "lora").rename(home / "stars")
    with pytest.warns(UserWarning, match="the lora it records changed since it was made"): reproduce(home / "s.png")


def test_dataset_repairs_its_own_export_with_a_file_gone(home, capsys):
    assert run(["dataset", "ds", "--n-images", "3"], capsys)[0] == 0
    (home / "ds" / "00001.png").unlink()
    code, _, err = run(["dataset", "ds", "--n-images", "3"], capsys)
    assert code == 0 and "1 file(s) missing" in err and (home / "ds" / "00001.png").is_file() and foreign_files(home / "ds") == [], err


def test_a_control_mask_drawn_in_the_alpha_channel_is_read_from_it():
    from sdcourse.control import control_images
    shape = Image.new("L", (64, 64)); ImageDraw.Draw(shape).ellipse((16, 16, 48, 48), fill=255)
    white = Image.new("RGBA", (64, 64), (255, 255, 255, 0)); white.putalpha(shape)  # all white: the circle lives in alpha alone
    assert torch.equal(control_images(white, 1, (64, 64)), control_images(shape.convert("RGB"), 1, (64, 64)))


def test_every_scheduler_works_at_its_smallest_and_largest_step_counts(pipe):
    from types import SimpleNamespace
    from diffusers import LCMScheduler
    from sdcourse.sampling import SCHEDULERS, generate, make_scheduler, max_steps
    fake = SimpleNamespace(unet=lambda x, t, encoder_hidden_states: SimpleNamespace(sample=0.1 * x), vae=pipe.vae, text_encoder=pipe.text_encoder,
                           tokenizer=pipe.tokenizer, scheduler=pipe.scheduler)  # the scheduler's arithmetic is what breaks, not the network
    fake.unet.config, fake.unet.device, fake.unet.dtype = pipe.unet.config, pipe.unet.device, pipe.unet.dtype
    schedulers = {name: make_scheduler(name, pipe.scheduler.config) for name in SCHEDULERS} | {"lcm": LCMScheduler.from_config(pipe.scheduler.config)}
    most = {name: max_steps(s) for name, s in schedulers.items()}
    assert most == dict(ddpm=1000, ddim=1000, **{"dpm++": 999}, euler=1000, pndm=1000, lms=1000, lcm=50)
    for name, scheduler in schedulers.items():
        for steps in (1, most[name]):
            latents = generate(fake, "a red circle", steps=steps, guidance_scale=1.0, scheduler=scheduler, output_type="latent")
            assert torch.isfinite(latents).all(), (name, steps)
        with pytest.raises(ValueError, match=rf"steps must be an int in \[1, {most[name]}\]"):
            generate(fake, "a red circle", steps=most[name] + 1, guidance_scale=1.0, scheduler=scheduler)


# 3. Clearer errors: the cause named, before the work

def test_lcm_lora_failures_name_their_cause(home, capsys, pipe):
    code, _, err = run(["generate", "a red circle", "--scheduler", "lcm", "--lcm-lora", "nowhere", "-o", "a.png"], capsys)
    assert code == 1 and one_line(err, "no LCM-LoRA at") and "another base model" not in err, err
    (home / "bad").mkdir(); (home / "bad" / LORA_FILE).write_bytes(b"not safetensors")
    code, _, err = run(["generate", "a red circle", "--scheduler", "lcm", "--lcm-lora", "bad", "-o", "a.png"], capsys)
    assert code == 1 and one_line(err, "not a readable safetensors file") and "another base model" not in err, err


def test_a_controlnet_with_nan_weights_is_refused_when_it_loads(home, capsys, monkeypatch):
    from sdcourse.control import CONTROLNET, load_controlnet
    controlnet = load_controlnet()
    with torch.no_grad(): controlnet.controlnet_mid_block.weight[0, 0] = float("nan")
    controlnet.save_pretrained(home / "cn")
    Image.new("RGB", (64, 64)).save(home / "mask.png")
    monkeypatch.setattr(sdcourse.pipeline, "generate", lambda *a, **k: pytest.fail("sampled with a broken ControlNet"))
    code, _, err = run(["generate", "a red circle", "--control", "mask.png", "--controlnet", "cn", "-o", "a.png"], capsys)
    assert code == 1 and one_line(err, "ControlNet", "controlnet_mid_block.weight holds NaN"), err


def test_an_embedding_that_overflows_the_text_encoder_is_named(home, capsys):
    save_tensors({"<huge>": torch.full((1, 64), 1e30)}, home / "huge.safetensors")
    code, _, err = run(["generate", "a red <huge> in the center", "--embedding", "huge.safetensors", "-o", "a.png"], capsys)
    assert code == 1 and one_line(err, "huge.safetensors", "makes the text encoder overflow"), err


def test_misnamed_causes_are_named_right(home, capsys, pipe):
    (home / "real").mkdir(); (home / "real" / "a.txt").write_text("mine")
    os.symlink(home / "real", home / "link")
    code, _, err = run(["dataset", "link", "--n-images", "2"], capsys)
    assert code == 1 and one_line(err, "is a symbolic link") and "is a file" not in err, err
    (home / "models").mkdir()
    code, _, err = run(["generate", "a red circle", "--model", "models/nope", "-o", "a.png"], capsys)
    assert code == 1 and one_line(err, "models/nope", "no such folder") and "hub id, it is not in the local cache" not in err, err
    pipe.save_pretrained(home / "novae"); shutil.rmtree(home / "novae" / "vae")
    code, _, err = run(["generate", "a red circle", "--model", "novae", "-o", "a.png"], capsys)
    assert code == 1 and one_line(err, "has no vae/ folder") and "config.json" not in err, err


@pytest.mark.parametrize("rows, says", [("file_name,text\n00000.png,a red circle,extra\n", "line 2: 3 fields"),
                                        ("name,caption\n00000.png,a red circle\n", "must name the columns file_name,text"),
                                        ("file_name,text\nmissing.png,a red circle\n", "line 2: no image 'missing.png'")])
def test_a_malformed_metadata_csv_is_named_with_its_line_before_the_model_loads(rows, says, home, capsys, monkeypatch):
    (home / "imgs").mkdir(); make_example(0)[0].save(home / "imgs" / "00000.png")
    (home / "imgs" / "metadata.csv").write_text(rows)
    monkeypatch.setattr(sdcourse.pipeline, "load_sd", lambda *a, **k: pytest.fail("the model was loaded before the images were checked"))
    code, _, err = run(["finetune", "out", "--images", "imgs", "--steps", "1"], capsys)
    assert code == 1 and one_line(err, "metadata.csv", says), err


def test_a_lora_with_an_extra_tensor_is_named(home, capsys):
    _stars_copy(home, tensors={"unet.something.else": torch.zeros(2)})
    code, _, err = run(["generate", "a red star", "--lora", "lora", "-o", "a.png"], capsys)
    assert code == 1 and one_line(err, "'unet.something.else'", "no LoRA layer's") and "diffusers" not in err.lower(), err


def test_a_huge_caption_is_not_echoed_whole(home, capsys):
    code, _, err = run(["grade", "source.png", "--caption", "sparkly " * 100_000], capsys)
    assert code == 1 and len(err) < 1000 and "names no attribute" in err, len(err)


def test_checks_come_before_the_work(home, capsys, monkeypatch):
    monkeypatch.setattr(sdcourse.pipeline, "load_sd", lambda *a, **k: pytest.fail("the model was loaded before the output was checked"))
    monkeypatch.setattr(sdcourse.personalisation, "load_sd", lambda *a, **k: pytest.fail("the model was loaded before the output was checked"))
    (home / "ro").mkdir()
    writable = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path).name != "ro" and writable(path, mode))  # as for a user, not root
    code, _, err = run(["train-textual-inversion", "ro/star.safetensors", "--steps", "1"], capsys)
    assert code == 1 and one_line(err, "'ro'", "not writable"), err
    monkeypatch.setattr(os, "access", writable)
    code, _, err = run(["finetune", ".", "--steps", "1"], capsys)
    assert code == 1 and one_line(err, "the folder you are working in"), err


@pytest.mark.parametrize("option, says", [("--control-scale", "argument --control-scale: must be a finite number in [0, 5], got -1e9"),
                                          ("--guidance", "argument --guidance: must be a finite number in [0, 50], got -1e9")])
def test_negative_numbers_in_scientific_notation_are_values_not_options(option, says, home, capsys):
    assert run(["generate", "a red circle", "-o", "a.png", option, "-1e9"], capsys)[:1] == (2,)
    code, _, err = run(["generate", "a red circle", "-o", "a.png", option, "-1e9"], capsys)
    assert one_line(err, says), err


def test_library_errors_name_the_argument(tmp_path, pipe):
    from sdcourse.evaluation import fid, kid
    from sdcourse.lora import check_lora_fits
    with pytest.raises(ValueError, match="features1 holds NaN or infinite values"): fid(torch.full((5, 4), float("nan")), torch.randn(5, 4))
    with pytest.raises(ValueError, match=r"features2 must be \[N, D\] with N >= 2"): kid(torch.randn(5, 4), torch.randn(1, 4))
    with pytest.raises(TypeError, match="module must be a torch.nn.Module, got str"): load_weights("weights.safetensors", tmp_path / "w.safetensors")
    shutil.copy(STARS / LORA_FILE, tmp_path / "STARS.SAFETENSORS")
    check_lora_fits(pipe.unet, tmp_path / "STARS.SAFETENSORS")  # an upper-case suffix is still safetensors


# 4. Permissions: the umask, for every file sdcourse writes

def test_every_output_gets_the_permissions_the_umask_gives(home, capsys):
    old = os.umask(0o027)
    try:
        assert run(["train-lora", "lora", "--steps", "1"], capsys)[0] == 0
        assert run(["train-textual-inversion", "star.safetensors", "--steps", "1"], capsys)[0] == 0
        assert run(["generate", "a red circle", "--steps", "2", "-o", "a.png"], capsys)[0] == 0
    finally: os.umask(old)
    files = [home / "lora" / LORA_FILE, home / "lora" / MANIFEST, home / "star.safetensors", home / "a.png"]
    assert {f.name: oct(f.stat().st_mode & 0o777) for f in files} == {f.name: "0o640" for f in files}
    assert oct((home / "lora").stat().st_mode & 0o777) == "0o750"
