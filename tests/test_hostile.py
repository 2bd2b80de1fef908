"""Hostile input to the `sdcourse` command and the library: nothing a user made is ever lost, every failure a user can cause is one
line with the right exit code, absurd or non-finite values are refused before any work starts, and no black image is saved as a result."""
import json, os, signal, struct, subprocess, sys, time, tomllib, zlib
from pathlib import Path

import numpy as np
import pytest, torch
from PIL import Image
from safetensors.torch import save_file

from sdcourse.core import MANIFEST, foreign_files, get_device, load_weights
from sdcourse.data import make_example
from sdcourse.pipeline import main, open_image, png_info
from sdcourse.lora import LORA_FILE, add_lora

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("no_progress_bars")  # stderr must hold the error alone


@pytest.fixture
def home(tmp_path, monkeypatch):
    "A folder of the user's own: a document, a sub-folder, and a source image."
    monkeypatch.chdir(tmp_path)
    (tmp_path / "Documents" / "sub").mkdir(parents=True)
    (tmp_path / "Documents" / "thesis.tex").write_text("work")
    (tmp_path / "Documents" / "sub" / "data.csv").write_text("1,2")
    make_example(0, "train", seed=4)[0].save(tmp_path / "source.png")
    return tmp_path


def snapshot(folder):
    "Every file under `folder` (hidden ones included) with its bytes."
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def run(argv, capsys):
    "main(argv) in-process: (exit code, stdout, stderr); usage errors (argparse) come back as their exit code too."
    capsys.readouterr()  # what the test's own set-up printed is not the command's
    try: code = main([str(a) for a in argv])
    except SystemExit as e: code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err, *says):
    "stderr is exactly one line, with no traceback, saying each of `says`."
    return err.count("\n") == 1 and "Traceback" not in err and all(s in err for s in says)


# 1. Never destroy what the program did not write

@pytest.mark.parametrize("command", [["finetune", "--steps", "1"], ["train-lora", "--steps", "1"], ["train-vae", "--steps", "1", "--n-images", "10"],
                                     ["train", "--steps", "1", "--n-images", "8", "--n-eval", "1"], ["dataset", "--n-images", "3", "--overwrite"]])
def test_training_and_export_never_touch_a_users_folder(command, home, capsys):
    before = snapshot(home)
    code, _, err = run([command[0], "Documents", *command[1:]], capsys)
    assert code == 1 and one_line(err, "Documents", "holds files sdcourse did not write", "thesis.tex"), err
    assert snapshot(home) == before  # nothing moved, nothing added, nothing hidden beside it


@pytest.mark.parametrize("command", ["finetune", "train-vae", "train", "dataset"])
def test_a_file_at_the_output_is_refused_not_moved(command, home, capsys):
    (home / "model").write_text("my notes")
    before = snapshot(home)
    code, _, err = run([command, "model", "--steps" if command != "dataset" else "--n-images", "1"], capsys)
    assert code == 1 and one_line(err, "'model'", "is a file"), err
    assert snapshot(home) == before


def test_dataset_overwrite_removes_only_its_own_export(home, capsys):
    (home / "forged").mkdir()
    (home / "forged" / "sdcourse_dataset.json").write_text(json.dumps(dict(n=3, split="train", seed=0, size=64)))
    (home / "forged" / MANIFEST).write_text(json.dumps(dict(kind="imagefolder", files={"essay.txt": "0" * 64})))
    (home / "forged" / "essay.txt").write_text("mine")
    before = snapshot(home)
    code, _, err = run(["dataset", "forged", "--n-images", "4", "--overwrite"], capsys)  # a forged record cannot vouch for a user's file
    assert code == 1 and one_line(err, "essay.txt") and snapshot(home) == before
    assert run(["dataset", "ds", "--n-images", "5"], capsys)[0] == 0
    code, _, err = run(["dataset", "ds", "--n-images", "3"], capsys)
    assert code == 1 and one_line(err, "holds another dataset", "--overwrite")
    assert run(["dataset", "ds", "--n-images", "3", "--overwrite"], capsys)[0] == 0
    assert sorted(p.name for p in (home / "ds").glob("*.png")) == ["00000.png", "00001.png", "00002.png"]
    assert foreign_files(home / "ds") == [] and not list(home.glob(".ds*"))
    (home / "ds" / "mine.txt").write_text("added later")
    code, _, err = run(["dataset", "ds", "--n-images", "4", "--overwrite"], capsys)
    assert code == 1 and one_line(err, "mine.txt") and (home / "ds" / "mine.txt").read_text() == "added later"


def test_images_are_replaced_only_with_overwrite_and_the_input_never(home, capsys):
    assert run(["generate", "a red circle", "--steps", "2", "-o", "out.png"], capsys)[0] == 0
    first = (home / "out.png").read_bytes()
    code, _, err = run(["generate", "a blue square", "--steps", "2", "-o", "out.png"], capsys)
    assert code == 1 and one_line(err, "'out.png' exists", "--overwrite") and (home / "out.png").read_bytes() == first
    code, _, err = run(["generate", "a blue square", "--steps", "2", "-n", "2", "-o", "many.png"], capsys)
    assert code == 0 and run(["generate", "a blue square", "--steps", "2", "-n", "2", "-o", "many.png"], capsys)[0] == 1
    assert run(["generate", "a blue square", "--steps", "2", "-o", "out.png", "--overwrite"], capsys)[0] == 0
    assert png_info(home / "out.png")["prompt"] == "a blue square"
    source = (home / "source.png").read_bytes()
    for argv in (["img2img", "source.png", "a red circle", "-o", "source.png", "--overwrite"],
                 ["inpaint", "source.png", "source.png", "a red circle", "-o", "./source.png", "--overwrite"]):
        code, _, err = run(argv + ["--steps", "2"], capsys)
        assert code == 1 and one_line(err, "is an input image; it is never overwritten"), err
    assert (home / "source.png").read_bytes() == source


def test_ctrl_c_is_one_line_exit_130_and_leaves_no_temporary_files(home, capsys, monkeypatch):
    import sdcourse.data
    calls = iter(range(100))
    real = sdcourse.data.ShapesDataset.__getitem__
    def interrupted(self, i):
        if next(calls) == 3: raise KeyboardInterrupt
        return real(self, i)
    monkeypatch.setattr(sdcourse.data.ShapesDataset, "__getitem__", interrupted)
    code, out, err = run(["dataset", "ds", "--n-images", "10"], capsys)
    assert code == 130 and err == "sdcourse dataset: interrupted\n" and out == ""
    assert not (home / "ds").exists() and not [p for p in home.iterdir() if p.name.startswith(".")]


def test_a_real_sigint_in_a_subprocess(tmp_path):
    "Ctrl-C as a terminal sends it: exit 130, one line, and the half-written export is gone."
    # The child restores Python's own Ctrl-C handler first, as a terminal's shell would: a background job (a CI run started with &)
    # inherits SIGINT ignored. Done in the child's code rather than a preexec_fn, which is unsafe in a parent with threads (torch's).
    child = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); from sdcourse.pipeline import main; raise SystemExit(main())"
    proc = subprocess.Popen([sys.executable, "-c", child, "dataset", "ds", "--n-images", "100000"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "SDCOURSE_PROGRESS": "0"})
    deadline = time.time() + 120
    while not list(tmp_path.glob(".ds.tmp-*/00010.png")) and time.time() < deadline and proc.poll() is None: time.sleep(0.05)
    assert proc.poll() is None, f"the export ended (exit {proc.returncode}) before Ctrl-C could be sent: {proc.communicate()}"
    written = len(list(tmp_path.glob(".ds.tmp-*/*.png")))
    presses = 0
    while proc.poll() is None and presses < 3:  # a user whose first Ctrl-C seems lost presses it again; cleanup takes well under 30 s
        proc.send_signal(signal.SIGINT); presses += 1
        try: proc.wait(timeout=30)
        except subprocess.TimeoutExpired: pass
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 130 and err == "sdcourse dataset: interrupted\n", (proc.returncode, err, out, written, presses)
    assert list(tmp_path.iterdir()) == []


def test_temporary_files_of_a_killed_run_are_swept(home, capsys):
    (home / ".out.png.tmp-999999999").write_bytes(b"half a png")  # left by a process that no longer runs
    (home / f".out.png.tmp-{os.getppid()}").write_bytes(b"a live process's")  # still running: left alone
    assert run(["generate", "a red circle", "--steps", "2", "-o", "out.png"], capsys)[0] == 0
    assert sorted(p.name for p in home.glob(".out.png*")) == [f".out.png.tmp-{os.getppid()}"]


# 2. One line for every failure a user can cause

def _png_header(path, width, height):
    "A PNG whose header claims width x height (a decompression bomb needs no more than its header)."
    data = bytearray(_png_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def _png_bytes():
    import io
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("width, height, says", [(30000, 30000, "cannot read"), (8000, 8000, "at most 16,777,216")])
def test_huge_images_are_refused_before_they_are_decoded(width, height, says, home, capsys):
    _png_header(home / "big.png", width, height)
    code, _, err = run(["img2img", "big.png", "a red circle", "-o", "out.png"], capsys)
    assert code == 1 and one_line(err, "big.png", says), err
    code, _, err = run(["grade", "big.png", "--caption", "a red circle"], capsys)
    assert code == 1 and one_line(err.splitlines(True)[0], "big.png")


def test_an_input_too_large_for_the_model_is_refused(home, capsys):
    Image.new("RGB", (1024, 1024), "white").save(home / "large.png")
    code, _, err = run(["img2img", "large.png", "a red circle", "-o", "out.png"], capsys)
    assert code == 1 and one_line(err, "1024x1024", "at most 512 pixels a side"), err


def test_grade_reports_a_bad_file_and_goes_on(home, capsys):
    from PIL import PngImagePlugin
    make_example(1)[0].save(home / "plain.png")
    for name, record in (("list.png", "[1, 2]"), ("broken.png", "{not json")):
        meta = PngImagePlugin.PngInfo(); meta.add_text("sdcourse", record)
        make_example(1)[0].save(home / name, pnginfo=meta)
    assert run(["generate", "a red circle in the center", "--steps", "10", "-o", "good.png"], capsys)[0] == 0
    code, out, err = run(["grade", "list.png", "good.png", "broken.png", "plain.png", "missing.png"], capsys)
    assert code == 1 and out.count("\n") == 1 and "good.png" in out  # the good image is graded in between
    lines = err.splitlines()
    assert len(lines) == 5 and "Traceback" not in err
    assert "list.png" in lines[0] and "not an object" in lines[0] and "broken.png" in lines[1] and "not JSON" in lines[1]
    assert "plain.png" in lines[2] and "--caption" in lines[2] and "missing.png" in lines[3]
    assert lines[4] == "1/1 images match their captions; 4 could not be graded" or lines[4].startswith("0/1 images")


def _lora(home, pipe, tensors):
    (home / "lora").mkdir(exist_ok=True)
    save_file(tensors, str(home / "lora" / LORA_FILE))
    return home / "lora"


@pytest.mark.parametrize("damage, says", [
    ("truncated", "not a readable safetensors file"), ("fake", "not a readable safetensors file"), ("header bomb", "not a readable safetensors file"),
    ("empty", "holds no LoRA layers"), ("integer", "floating-point"), ("1-d", "needs a 2-d"), ("ranks", "different ranks"),
    ("nan", "NaN or infinite")])
def test_damaged_or_forged_lora_files(damage, says, home, pipe, capsys):
    layer = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    d_out, d_in = pipe.unet.get_submodule(layer).weight.shape
    a, b = torch.randn(4, d_in), torch.zeros(d_out, 4)
    tensors = {f"unet.{layer}.lora_A.weight": a, f"unet.{layer}.lora_B.weight": b}
    if damage == "integer": tensors[f"unet.{layer}.lora_A.weight"] = a.to(torch.int32)
    if damage == "1-d": tensors[f"unet.{layer}.lora_A.weight"] = a.flatten()
    if damage == "ranks": tensors[f"unet.{layer}.lora_B.weight"] = torch.zeros(d_out, 3)
    if damage == "nan": tensors[f"unet.{layer}.lora_B.weight"] = torch.full((d_out, 4), float("nan"))
    if damage == "empty": tensors = {"something.else": a}
    folder = _lora(home, pipe, tensors)
    file = folder / LORA_FILE
    if damage == "truncated": file.write_bytes(file.read_bytes()[:100])
    if damage == "fake": file.write_bytes(os.urandom(4000))
    if damage == "header bomb": file.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    code, _, err = run(["generate", "a red circle", "--steps", "2", "--lora", "lora", "-o", "out.png"], capsys)
    assert code == 1 and one_line(err, says), err
    assert not (home / "out.png").exists()


def test_a_lora_of_huge_values_is_reported_not_saved_black(home, pipe, capsys):
    layer = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    d_out, d_in = pipe.unet.get_submodule(layer).weight.shape
    _lora(home, pipe, {f"unet.{layer}.lora_A.weight": torch.full((4, d_in), 1e30), f"unet.{layer}.lora_B.weight": torch.full((d_out, 4), 1e30)})
    code, _, err = run(["generate", "a red circle", "--steps", "2", "--lora", "lora", "-o", "out.png"], capsys)
    assert code == 1 and one_line(err, "NaN or infinite", "nothing was saved"), err
    assert not (home / "out.png").exists()


def test_model_folders_load_from_safetensors_only(home, pipe, capsys):
    pipe.save_pretrained(home / "pickled", safe_serialization=False)
    assert list((home / "pickled" / "unet").glob("*.bin")) and not list((home / "pickled" / "unet").glob("*.safetensors"))
    code, _, err = run(["generate", "a red circle", "--steps", "2", "--model", "pickled", "-o", "out.png"], capsys)
    assert code == 1 and one_line(err, "safetensors") and "weights_only" not in err, err
    (home / "payload.bin").write_bytes(b"\x80\x04K\x01.")  # a pickle
    with pytest.raises(ValueError, match="not a readable safetensors file.*never opens a pickle"): load_weights(torch.nn.Linear(1, 1), home / "payload.bin")
    with pytest.raises(IsADirectoryError, match="is a folder; pass the .safetensors file"): load_weights(torch.nn.Linear(1, 1), home / "pickled")


def test_torch_lower_bound_excludes_the_bypassable_unpickler():
    "CVE-2025-32434: torch.load(weights_only=True) could run code in torch < 2.6."
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_dep = next(d for d in deps if d.startswith("torch"))
    lower = next(part for part in torch_dep.removeprefix("torch").split(",") if part.startswith(">="))
    assert tuple(int(x) for x in lower[2:].split(".")[:2]) >= (2, 6), torch_dep


@pytest.mark.parametrize("argv, says", [
    (["generate", "x", "-o", "o.png", "--guidance", "inf"], "argument --guidance: must be a finite number in [0, 50], got inf"),
    (["generate", "x", "-o", "o.png", "--guidance", "1e30"], "argument --guidance"),
    (["generate", "x", "-o", "o.png", "--guidance", "nan"], "argument --guidance"),
    (["generate", "x", "-o", "o.png", "--lora-strength", "nan"], "argument --lora-strength"),
    (["generate", "x", "-o", "o.png", "--lora-strength", "inf"], "argument --lora-strength"),
    (["generate", "x", "-o", "o.png", "-n", "1000000000"], "argument -n/--num-images: must be a whole number in [1, 100]"),
    (["generate", "x", "-o", "o.png", "--seed", "18446744073709551616"], "argument --seed: must be a whole number in [0, 4294967295]"),
    (["generate", "x", "-o", "o.png", "--seed", "-1"], "argument --seed"),
    (["generate", "x", "-o", "o.png", "--steps", "5000"], "argument --steps: must be a whole number in [1, 1000]"),
    (["img2img", "s.png", "x", "-o", "o.png", "--strength", "1.5"], "argument --strength: must be a finite number in [0, 1]"),
    (["finetune", "out", "--lr", "inf"], "argument --lr: must be a finite number in (0, 1]"),
    (["finetune", "out", "--lr", "0"], "argument --lr"),
    (["train-lora", "out", "--rank", "10000000"], "argument --rank: must be a whole number in [1, 256]"),
    (["dataset", "out", "--n-images", "1e9"], "argument --n-images: must be a whole number"),
    (["train", "out", "--n-images", "100000000"], "argument --n-images"),
])
def test_absurd_and_non_finite_values_are_usage_errors(argv, says, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(argv, capsys)
    assert code == 2 and one_line(err, says), err
    assert list(tmp_path.iterdir()) == []


def test_rank_above_every_layer_width_is_refused_by_the_library(pipe):
    import copy
    unet = copy.deepcopy(pipe.unet)
    widest = max(min(m.weight.shape) for n, m in unet.named_modules() if n.endswith(".to_q"))
    with pytest.raises(ValueError, match=rf"r must be an int in \[1, {widest}\]"): add_lora(unet, r=widest + 1)


@pytest.mark.parametrize("name, says", [("folder.png", "is a folder"), ("x" * 245 + ".png", "use at most 200"), (".png", "must be a file name ending in .png"),
                                        ("out.jpg", "must be a file name ending in .png")])
def test_output_paths_are_checked_before_any_work(name, says, home, capsys, monkeypatch):
    import sdcourse.pipeline
    (home / "folder.png").mkdir()
    monkeypatch.setattr(sdcourse.pipeline, "load_sd", lambda *a, **k: pytest.fail("the model was loaded before the output was checked"))
    code, _, err = run(["generate", "a red circle", "-o", name], capsys)
    assert code == 1 and one_line(err, says), err


def test_a_bad_device_variable_is_named(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("SDCOURSE_DEVICE", "bogus")
    with pytest.raises(ValueError, match="SDCOURSE_DEVICE='bogus' is not a device"): get_device()
    code, _, err = run(["generate", "a red circle", "-o", tmp_path / "o.png"], capsys)
    assert code == 1 and one_line(err, "SDCOURSE_DEVICE='bogus'")


def test_programming_errors_keep_their_traceback_and_debug_shows_every_one(home, capsys, monkeypatch):
    import sdcourse.pipeline
    monkeypatch.setattr(sdcourse.pipeline, "export_imagefolder", lambda *a, **k: {}["a bug"])
    with pytest.raises(KeyError): main(["dataset", "ds", "--n-images", "2"])
    monkeypatch.setenv("SDCOURSE_DEBUG", "1")
    with pytest.raises(FileNotFoundError): main(["img2img", "missing.png", "x", "-o", "o.png"])
    assert "SDCOURSE_DEBUG=1" in sdcourse.pipeline.cli_parser().format_help()


# 3. Finite, bounded models

def test_a_model_config_asking_for_a_huge_resolution_is_refused(home, pipe, capsys):
    pipe.save_pretrained(home / "huge")
    config = json.loads((home / "huge" / "unet" / "config.json").read_text())
    (home / "huge" / "unet" / "config.json").write_text(json.dumps({**config, "sample_size": 1024}))
    start = time.time()
    code, _, err = run(["generate", "a red circle", "--model", "huge", "-o", "out.png"], capsys)
    assert code == 1 and one_line(err, "8192x8192", "at most 2048") and time.time() - start < 30, err


def test_a_model_with_nan_weights_is_refused(home, pipe, capsys):
    import copy
    broken = copy.deepcopy(pipe)
    with torch.no_grad(): broken.unet.conv_out.weight[0, 0, 0, 0] = float("nan")
    broken.save_pretrained(home / "nan")
    code, _, err = run(["generate", "a red circle", "--model", "nan", "-o", "out.png"], capsys)
    assert code == 1 and one_line(err, "unet weight conv_out.weight holds NaN"), err
    assert not (home / "out.png").exists()


# 5. Images as users have them

def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (64, 32), "red")
    image.paste((0, 0, 255), (0, 0, 32, 32))  # blue on the left
    exif = Image.Exif(); exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    image.save(tmp_path / "phone.jpg", exif=exif.tobytes())
    seen = open_image(tmp_path / "phone.jpg")
    assert seen.size == (32, 64) and seen.getpixel((16, 5))[2] > 200  # blue is now on top


def test_sixteen_bit_images_and_masks_are_scaled_not_clipped(tmp_path):
    grey = np.array([[0, 1000, 32768, 65535]] * 4, dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "mask16.png")
    assert Image.open(tmp_path / "mask16.png").mode.startswith("I")
    seen = np.asarray(open_image(tmp_path / "mask16.png", "L"))
    assert seen[0].tolist() == [0, 4, 128, 255]  # PIL's own convert("L") would give [0, 255, 255, 255]: "keep" read as "repaint"


def test_outputs_get_the_usual_permissions(home, capsys):
    old = os.umask(0o022)
    try: assert run(["generate", "a red circle", "--steps", "2", "-o", "out.png"], capsys)[0] == 0
    finally: os.umask(old)
    assert (home / "out.png").stat().st_mode & 0o777 == 0o644


# 6. Training runs resume only what they were

def test_training_refuses_a_checkpoint_of_another_run(tmp_path):
    from sdcourse.text import load_text_encoder
    from sdcourse.training import cache_training_data, train_unet
    from sdcourse.unet import make_unet
    from sdcourse.vae import load_vae
    text_encoder, tokenizer = load_text_encoder(device="cpu")
    cache = cache_training_data(load_vae(device="cpu"), text_encoder, tokenizer, n_images=16)
    ck = tmp_path / "ck.safetensors"
    train_unet(make_unet(), cache, steps=3, batch_size=4, warmup=1, checkpoint=ck, seed=0)
    good = ck.read_bytes()
    with pytest.raises(ValueError, match=r"other settings \(seed=0 \(this run: 1\)\)"):
        train_unet(make_unet(), cache, steps=4, batch_size=4, warmup=1, checkpoint=ck, resume=True, seed=1)
    smaller = {k: v[:8] if torch.is_tensor(v) and len(v) == 16 else v[:8] if isinstance(v, list) else v for k, v in cache.items()}
    with pytest.raises(ValueError, match=r"n_images=16 \(this run: 8\)"):
        train_unet(make_unet(), smaller, steps=4, batch_size=4, warmup=1, checkpoint=ck, resume=True)
    with pytest.raises(ValueError, match="is at step 3, past the 2 steps asked for"):
        train_unet(make_unet(), cache, steps=2, batch_size=4, warmup=1, checkpoint=ck, resume=True)
    with pytest.warns(UserWarning, match="already at step 3: nothing left to train"):
        train_unet(make_unet(), cache, steps=3, batch_size=4, warmup=1, checkpoint=ck, resume=True)
    assert ck.read_bytes() == good


def test_train_uses_n_eval_at_the_end_and_refuses_to_resume_another_run(home, capsys):
    code, out, _ = run(["train", "tiny", "--steps", "2", "--n-images", "16", "--n-eval", "3"], capsys)
    record = json.loads((home / "tiny" / "unet" / "training.json").read_text())
    assert code == 0 and record["adherence"]["images"] == 3 and all(len(h) <= 4 for h in record["history"])  # no hidden 100-image eval
    before = snapshot(home)
    code, _, err = run(["train", "tiny", "--steps", "3", "--n-images", "16", "--seed", "1", "--overwrite"], capsys)
    assert code == 1 and one_line(err, "tiny-checkpoint.safetensors", "other settings (seed=0 (this run: 1))") and snapshot(home) == before, err
    code, _, err = run(["train", "tiny", "--steps", "2", "--n-images", "16", "--n-eval", "1"], capsys)
    assert code == 1 and one_line(err, "earlier sdcourse output", "--overwrite")
