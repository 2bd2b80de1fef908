"The `sdcourse` command and the loader: every subcommand on tiny settings, the PNG recipe, and bad input as one line and a non-zero exit."
import csv, subprocess, time

import numpy as np
import pytest, torch
from PIL import Image

from sdcourse.data import make_example
from sdcourse.lora import load_lora
from sdcourse.core import shipped_path
from sdcourse.pipeline import cli_parser, fingerprint, hub_reachable, load_sd, main, png_info, reproduce, save_png
from sdcourse.sampling import generate

COMMANDS = ["generate", "img2img", "inpaint", "dataset", "train-vae", "train-text-encoder", "train", "finetune", "train-lora", "grade"]


@pytest.fixture
def source(tmp_path):
    make_example(0, "train", seed=4)[0].save(tmp_path / "source.png")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    mask.save(tmp_path / "mask.png")
    return tmp_path


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help_with_defaults(command, capsys):
    with pytest.raises(SystemExit) as exit: main([command, "--help"])
    assert exit.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: sdcourse {command}")
    if command != "grade": assert "(default:" in text and "--seed" in text
    assert ("--device" in text) == (command not in ("grade", "dataset"))  # only where a network runs


def test_top_level_help_lists_every_subcommand():
    text = cli_parser().format_help()
    assert all(c in text for c in COMMANDS)


def test_generate_records_its_recipe_and_reproduces(tmp_path, capsys):
    code, out, _ = run(["generate", "a large red circle in the center", "--seed", "3", "--steps", "12", "--scheduler", "ddim",
                        "--negative", "a black background", "-o", str(tmp_path / "c.png")], capsys)
    assert code == 0 and out.strip() == str(tmp_path / "c.png")
    info = png_info(tmp_path / "c.png")
    fingerprints = info.pop("fingerprints")
    assert info == dict(command="generate", prompt="a large red circle in the center", negative_prompt="a black background", seed=3, steps=12,
                        guidance_scale=5.0, scheduler="ddim", model="sdcourse-tiny", image_index=0)
    assert fingerprints == dict(model=fingerprint(shipped_path("sdcourse-tiny")))  # what made it, to tell later if it changed
    assert Image.open(tmp_path / "c.png").text["prompt"] == "a large red circle in the center"  # readable by any viewer
    assert np.array_equal(np.asarray(reproduce(tmp_path / "c.png")), np.asarray(Image.open(tmp_path / "c.png")))
    code, out, _ = run(["grade", str(tmp_path / "c.png")], capsys)
    assert code == 0 and out.startswith("PASS")
    code, out, _ = run(["grade", str(tmp_path / "c.png"), "--caption", "a blue square in the top left"], capsys)
    assert code == 0 and out.startswith("FAIL") and "colour=wrong" in out


def test_generate_several_images_seeds_each(tmp_path, capsys):
    code, out, _ = run(["generate", "a small blue diamond in the top right", "-n", "3", "--steps", "4", "--seed", "5", "-o", str(tmp_path / "d.png")], capsys)
    assert code == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["d-0.png", "d-1.png", "d-2.png"]
    assert [png_info(tmp_path / f"d-{i}.png")["seed"] for i in range(3)] == [5, 6, 7]


@pytest.mark.parametrize("scheduler", ["pndm", "lms", "plms"])
def test_generate_with_stable_diffusions_older_samplers(pipe, tmp_path, capsys, scheduler):
    "PNDM (PLMS, SD 1.x's default; 'plms' is accepted as its alias) and LMS from the command line: the image equals generate's, and its recipe reproduces it."
    code, _, _ = run(["generate", "a small blue diamond in the top right", "--steps", "8", "--scheduler", scheduler, "-o", str(tmp_path / "p.png")], capsys)
    assert code == 0 and png_info(tmp_path / "p.png")["scheduler"] == scheduler
    expected = generate(pipe, "a small blue diamond in the top right", steps=8, scheduler=scheduler)[0]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "p.png")), np.asarray(expected))
    assert np.array_equal(np.asarray(reproduce(tmp_path / "p.png")), np.asarray(expected))
    if scheduler == "plms":  # an alias: the same sampler as pndm, image for image
        assert np.array_equal(np.asarray(expected), np.asarray(generate(pipe, "a small blue diamond in the top right", steps=8, scheduler="pndm")[0]))


def test_console_script(tmp_path):
    result = subprocess.run(["sdcourse", "generate", "a green square in the center", "--steps", "4", "-o", "g.png"], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert png_info(tmp_path / "g.png")["steps"] == 4
    result = subprocess.run(["sdcourse", "paint"], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "invalid choice: 'paint'" in result.stderr


def test_img2img_and_inpaint(source, capsys):
    code, _, _ = run(["img2img", str(source / "source.png"), "a blue circle", "--strength", "0.5", "--steps", "6", "-o", str(source / "i.png")], capsys)
    assert code == 0 and png_info(source / "i.png")["strength"] == 0.5
    code, _, _ = run(["inpaint", str(source / "source.png"), str(source / "mask.png"), "a red square", "--steps", "6", "-o", str(source / "p.png")], capsys)
    assert code == 0 and png_info(source / "p.png")["mask"] == str(source / "mask.png")
    assert Image.open(source / "p.png").size == (64, 64)


def test_dataset_export(tmp_path, capsys):
    code, _, _ = run(["dataset", str(tmp_path / "ds"), "--n-images", "5", "--split", "concept"], capsys)
    rows = list(csv.DictReader(open(tmp_path / "ds" / "metadata.csv")))
    assert code == 0 and len(rows) == 5 and all("star" in r["text"] for r in rows)


def test_train_vae_and_train(tmp_path, capsys, monkeypatch):
    import sdcourse.vae
    real = sdcourse.vae.heldout_images
    monkeypatch.setattr(sdcourse.vae, "heldout_images", lambda n=500: real(8))  # the command's plumbing, not its 1,000-image evaluation
    code, out, _ = run(["train-vae", str(tmp_path / "vae"), "--steps", "2", "--n-images", "20"], capsys)
    assert code == 0 and (tmp_path / "vae" / "config.json").exists() and "reconstruction MSE" in out
    code, out, _ = run(["train", str(tmp_path / "tiny"), "--steps", "2", "--n-images", "16", "--n-eval", "2"], capsys)
    assert code == 0 and (tmp_path / "tiny" / "model_index.json").exists() and (tmp_path / "tiny-checkpoint.safetensors").exists()
    assert load_sd(tmp_path / "tiny", "cpu").unet.config.sample_size == 8


def test_finetune_and_train_lora(tmp_path, pipe, capsys):
    run(["dataset", str(tmp_path / "ds"), "--n-images", "4", "--split", "concept"], capsys)
    code, _, _ = run(["finetune", str(tmp_path / "ft"), "--images", str(tmp_path / "ds"), "--steps", "2"], capsys)
    tuned = load_sd(tmp_path / "ft", "cpu")
    assert code == 0 and any(not torch.equal(a, b) for a, b in zip(tuned.unet.parameters(), pipe.unet.parameters()))
    code, out, _ = run(["train-lora", str(tmp_path / "lora"), "--steps", "2", "--rank", "2"], capsys)
    assert code == 0 and (tmp_path / "lora" / "pytorch_lora_weights.safetensors").exists()
    load_lora(load_sd(device="cpu"), tmp_path / "lora", "mine")
    code, _, _ = run(["generate", "a red star in the center", "--steps", "4", "--lora", str(tmp_path / "lora"), "--lora-strength", "0.5",
                      "-o", str(tmp_path / "s.png")], capsys)
    assert code == 0 and png_info(tmp_path / "s.png")["lora_strength"] == 0.5


@pytest.mark.parametrize("argv, says", [
    (["generate", "  ", "-o", "{tmp}/x.png"], "the prompt is empty"),
    (["generate", "a red\x1bcircle", "-o", "{tmp}/x.png"], "prompt holds the control character U+001B at position 5"),
    (["generate", "a red circle", "-o", "{tmp}/missing/x.png"], "does not exist; create it first"),
    (["generate", "a red circle", "-o", "{tmp}/x.jpg"], "must be a file name ending in .png"),
    (["generate", "a red circle", "-o", "{tmp}/source.png"], "exists; pass --overwrite to replace it"),
    (["generate", "a red circle", "--model", "{tmp}", "-o", "{tmp}/x.png"], "is a folder but not a diffusers pipeline"),
    (["generate", "a red circle", "--model", "someone/not-downloaded", "-o", "{tmp}/x.png"], "the Hugging Face Hub cannot be reached"),
    (["img2img", "{tmp}/mask.txt", "a red circle", "-o", "{tmp}/x.png"], "cannot read"),
    (["img2img", "{tmp}/none.png", "a red circle", "-o", "{tmp}/x.png"], "no image at"),
    (["inpaint", "{tmp}/source.png", "{tmp}/small.png", "a red circle", "-o", "{tmp}/x.png"], "they must be the same size"),
    (["grade", "{tmp}/source.png"], "records no prompt"),
    (["dataset", "{tmp}/source.png", "--n-images", "2"], "source.png"),
])
def test_bad_input_is_one_line_and_exit_1(argv, says, source, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (source / "mask.txt").write_text("not an image")
    make_example(0, size=32)[0].save(source / "small.png")
    before = sorted(p.name for p in source.iterdir())
    code, out, err = run([a.format(tmp=source) for a in argv], capsys)
    assert code == 1 and says in err and err.count("\n") == 1 and err.startswith(f"sdcourse {argv[0]}: error:"), err
    assert sorted(p.name for p in source.iterdir()) == before  # nothing half-written


@pytest.mark.parametrize("argv, says", [
    (["paint"], "invalid choice: 'paint'"), (["generate", "a red circle"], "the following arguments are required: -o/--output"),
    (["generate", "a red circle", "-o", "x.png", "--steps", "0"], "argument --steps: must be a whole number in [1, 1000], got 0"),
    (["generate", "a red circle", "--guidance", "-1", "-o", "x.png"], "argument --guidance: must be a finite number in [0, 50], got -1"),
    (["generate", "a red circle", "--steps", "5000", "-o", "x.png"], "argument --steps"),
    (["img2img", "s.png", "a red circle", "--strength", "1.5", "-o", "x.png"], "argument --strength: must be a finite number in [0, 1]"), (["generate", "x", "-o", "x.png", "--bogus"], "unrecognized arguments"),
    (["generate", "x", "-o", "x.png", "--scheduler", "heun"], "invalid choice: 'heun'"), ([], "required: COMMAND"),
])
def test_usage_errors_are_one_line_and_exit_2(argv, says, capsys):
    with pytest.raises(SystemExit) as exit: main(argv)
    err = capsys.readouterr().err
    assert exit.value.code == 2 and says in err and err.count("\n") == 1, err


def test_load_sd_folder_round_trip_and_errors(tmp_path, pipe, monkeypatch):
    pipe.save_pretrained(tmp_path / "m")
    a = generate(pipe, "a red circle in the center", seed=1, steps=4, output_type="pt")
    b = generate(load_sd(tmp_path / "m", "cpu"), "a red circle in the center", seed=1, steps=4, output_type="pt")
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="no model_index.json"): load_sd(tmp_path, "cpu")
    with pytest.raises(FileNotFoundError, match="no such folder"): load_sd(tmp_path / "nope" / "deeper", "cpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not hub_reachable()
    start = time.time()
    with pytest.raises(ConnectionError, match="Pass a local folder"): load_sd("someone/not-downloaded", "cpu")
    assert time.time() - start < 10


def test_save_png_is_atomic_and_png_info_of_other_images(tmp_path, pipe):
    image = make_example(1)[0]
    save_png(image, tmp_path / "a.png", dict(prompt="x"))
    save_png(image, tmp_path / "a.png", dict(prompt="y"))  # replaces
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"] and png_info(tmp_path / "a.png") == {"prompt": "y"}
    image.save(tmp_path / "plain.png")
    assert png_info(tmp_path / "plain.png") == {}
    with pytest.raises(ValueError, match="holds no record of `sdcourse generate`"): reproduce(tmp_path / "plain.png")


def test_train_text_encoder_writes_three_parts_and_replaces_only_with_overwrite(tmp_path, capsys):
    code, out, err = run(["train-text-encoder", str(tmp_path / "text"), "--steps", "2", "--n-images", "64"], capsys)
    assert code == 0 and "held-out retrieval" in out, err
    from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer
    CLIPTokenizer.from_pretrained(tmp_path / "text" / "sdcourse-tiny" / "tokenizer")
    CLIPTextModel.from_pretrained(tmp_path / "text" / "sdcourse-tiny" / "text_encoder")
    assert (tmp_path / "text" / "mini-clip" / "training.json").exists() and CLIPModel.from_pretrained(tmp_path / "text" / "mini-clip")
    code, _, err = run(["train-text-encoder", str(tmp_path / "text"), "--steps", "2", "--n-images", "64"], capsys)
    assert code == 1 and "--overwrite" in err
    assert run(["train-text-encoder", str(tmp_path / "text"), "--steps", "2", "--n-images", "64", "--overwrite"], capsys)[0] == 0


def test_a_png_reproduces_from_any_folder_with_its_lora(tmp_path, capsys, monkeypatch):
    from sdcourse.core import shipped_path
    import shutil
    shutil.copytree(shipped_path("lectures", "10_lora", "stars"), tmp_path / "work" / "stars")
    monkeypatch.chdir(tmp_path / "work")  # relative paths on the command line...
    assert run(["generate", "a red star in the center", "--steps", "6", "--lora", "stars", "--lora-strength", "0.8", "-o", "s.png"], capsys)[0] == 0
    info = png_info(tmp_path / "work" / "s.png")
    assert info["lora"] == str(tmp_path / "work" / "stars") and info["model"] == "sdcourse-tiny"  # ...recorded absolute
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    again = reproduce(tmp_path / "work" / "s.png", device="cpu")
    assert np.array_equal(np.asarray(again), np.asarray(Image.open(tmp_path / "work" / "s.png")))
    plain = generate(load_sd(device="cpu"), "a red star in the center", steps=6, seed=0)[0]
    assert not np.array_equal(np.asarray(plain), np.asarray(again))  # the LoRA was applied, not dropped


def test_cli_warns_in_one_line_about_words_the_model_never_learned(tmp_path, capsys):
    assert main(["generate", "a crimson circle, kindly", "-o", str(tmp_path / "a.png")]) == 0
    warning, = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warning.startswith("sdcourse generate: warning: this model's tokenizer cuts 'crimson' (for the colour, the course's captions say red")
    assert "'kindly'" in warning and (tmp_path / "a.png").is_file()
    assert main(["generate", "a red circle in the center", "-o", str(tmp_path / "b.png")]) == 0
    assert "warning" not in capsys.readouterr().err
