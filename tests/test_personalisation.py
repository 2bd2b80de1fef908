"Lecture 13: textual inversion changes one row and loads in diffusers with identical images; DreamBooth's data; the shoot-out; the CLI; bad input."
import csv, json

import numpy as np
import pytest, torch

from sdcourse.core import save_tensors, shipped_path
from sdcourse.data import eval_prompts, make_example
from sdcourse.exercises import check_keep_rows
from sdcourse.lora import adaptation_scores, concept_cache, rename_concept
from sdcourse.personalisation import (IDENTIFIER, METHODS, PLACEHOLDER, add_token, init_row, dreambooth_cache, embedding_output, generated_prior, is_embedding_file, keep_rows,
                                      load_embedding, personalise, read_embedding, save_embedding, shape_cache, textual_inversion)
from sdcourse.pipeline import main, png_info, reproduce
from sdcourse.sampling import generate
from sdcourse.text import encode_prompts
from sdcourse.training import load_pipeline

STAR = shipped_path("lectures", "13_personalisation", "star.safetensors")


pytestmark = pytest.mark.usefixtures("no_progress_bars")  # stderr must hold the error alone


def pixels(images): return np.stack([np.asarray(im, dtype=np.int16) for im in images])


@pytest.fixture(scope="module")
def stars():
    pipe = load_pipeline()
    cache = concept_cache(pipe.vae, pipe.text_encoder, pipe.tokenizer, 5)
    return dict(cache, captions=rename_concept(cache["captions"], PLACEHOLDER))


def test_textual_inversion_changes_only_the_new_row(stars):
    pipe = load_pipeline()
    unet_before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    table_before = pipe.text_encoder.get_input_embeddings().weight.detach().clone()  # [V, D]
    init = table_before[pipe.tokenizer.convert_tokens_to_ids("diamond</w>")]
    vector, history = textual_inversion(pipe, stars, steps=5, lr=5e-2)
    table = pipe.text_encoder.get_input_embeddings().weight
    assert table.shape == (len(table_before) + 1, table_before.shape[1]) and len(history) == 5
    assert torch.equal(table[:-1], table_before)  # every old row exactly as it was
    assert torch.equal(table[-1], vector) and (vector - init).abs().max() > 1e-3  # the new row learned
    assert all(torch.equal(v, unet_before[k]) for k, v in pipe.unet.state_dict().items())
    assert not any(p.requires_grad for p in pipe.text_encoder.parameters()) and not table._backward_hooks  # nothing left switched on


def test_keep_rows_is_a_mask_and_not_in_place():
    grad = torch.randn(6, 3)
    out = keep_rows(grad, [1, 4])
    assert torch.equal(out[[1, 4]], grad[[1, 4]]) and not out[[0, 2, 3, 5]].any() and out is not grad


def test_course_loader_equals_diffusers_load_textual_inversion():
    ours, theirs = load_pipeline(), load_pipeline()
    token = load_embedding(ours, STAR)
    theirs.load_textual_inversion(str(STAR))
    assert token == PLACEHOLDER and ours.tokenizer.get_vocab() == theirs.tokenizer.get_vocab()
    assert torch.equal(ours.text_encoder.get_input_embeddings().weight, theirs.text_encoder.get_input_embeddings().weight)
    prompts = rename_concept(eval_prompts(4, "concept"), token)
    a, b = generate(ours, prompts, steps=6, seed=1), generate(theirs, prompts, steps=6, seed=1)
    assert np.array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(generate(load_pipeline(), eval_prompts(4, "concept"), steps=6, seed=1)))  # the word matters


def test_save_and_read_round_trip(tmp_path):
    vector = torch.randn(64)
    path = save_embedding(tmp_path / "w.safetensors", "<w>", vector)
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # written atomically: no temporary file left
    from safetensors.torch import load_file
    assert list(load_file(path)) == ["<w>"] and load_file(path)["<w>"].shape == (1, 64)  # diffusers' training-script layout
    token, back = read_embedding(path, 64)
    assert token == "<w>" and torch.equal(back, vector)
    save_tensors({"<flat>": vector}, tmp_path / "flat.safetensors")  # [D], as some tools write it
    assert torch.equal(read_embedding(tmp_path / "flat.safetensors", 64)[1], vector)


def test_bad_embeddings_and_tokens_are_refused(tmp_path):
    pipe = load_pipeline()
    words = len(pipe.tokenizer)
    save_tensors({"<wide>": torch.zeros(1, 32)}, tmp_path / "wide.safetensors")
    with pytest.raises(ValueError, match="is 32 wide; this text encoder's embeddings are 64 wide"): load_embedding(pipe, tmp_path / "wide.safetensors")
    torch.save({"<star>": torch.zeros(64)}, tmp_path / "pickled.bin")
    with pytest.raises(ValueError, match="never opens a pickle"): load_embedding(pipe, tmp_path / "pickled.bin")
    save_tensors({"a": torch.zeros(64), "b": torch.zeros(64)}, tmp_path / "two.safetensors")
    with pytest.raises(ValueError, match="holds 2 tensors"): load_embedding(pipe, tmp_path / "two.safetensors")
    save_tensors({"<nan>": torch.full((64,), float("nan"))}, tmp_path / "nan.safetensors")
    with pytest.raises(ValueError, match="finite floating-point"): load_embedding(pipe, tmp_path / "nan.safetensors")
    save_tensors({"<many>": torch.zeros(3, 64)}, tmp_path / "many.safetensors")
    with pytest.raises(ValueError, match=r"has shape \[3, 64\]"): load_embedding(pipe, tmp_path / "many.safetensors")
    for token in ("star", "diamond", "<|endoftext|>"):
        with pytest.raises(ValueError, match=f"token '{token}' is already in the tokenizer's vocabulary"): load_embedding(pipe, STAR, token=token)
    with pytest.raises(ValueError, match="one word without spaces"): add_token(pipe.text_encoder, pipe.tokenizer, "a b")
    with pytest.raises(ValueError, match="init_word must be a word the tokenizer keeps whole"): add_token(pipe.text_encoder, pipe.tokenizer, "<n>", "zebra")
    assert init_row(pipe.tokenizer, "diamond") == pipe.tokenizer.convert_tokens_to_ids("diamond</w>")
    assert len(pipe.tokenizer) == words  # every refusal came before the tokenizer changed
    load_embedding(pipe, STAR)
    with pytest.raises(ValueError, match="token '<star>' is already"): load_embedding(pipe, STAR)  # loaded twice


def test_dreambooth_cache_is_half_identifier_half_the_models_own_prior():
    pipe = load_pipeline()
    concept = concept_cache(pipe.vae, pipe.text_encoder, pipe.tokenizer, 3)
    prior = generated_prior(pipe, 6)
    cache = dreambooth_cache(pipe, concept, prior)
    assert len(cache["captions"]) == 6 + 6 and cache["mu"].shape[0] == 12  # 3 concept images x 2 + 6 prior images
    assert all(IDENTIFIER in c and "star" not in c for c in cache["captions"][:6]) and cache["captions"][6:] == prior["captions"]
    assert torch.allclose(cache["embeddings"][:3], encode_prompts(pipe.text_encoder, pipe.tokenizer, cache["captions"][:3]))
    assert torch.equal(cache["embeddings"][6:], prior["embeddings"])
    # the prior is the model's own samples: its latents decode near what generate draws for those captions, not the dataset's images
    drawn = generate(pipe, prior["captions"][:1], seed=5)[0]
    decoded = pipe.vae.decode(prior["mu"][:1] * 1.0).sample.clamp(-1, 1)  # [1, 3, 64, 64]
    assert np.abs(np.asarray(drawn, float) / 127.5 - 1 - decoded[0].permute(1, 2, 0).detach().numpy()).mean() < 0.1


def test_shape_cache_holds_one_known_shape():
    pipe = load_pipeline()
    cache = shape_cache(pipe, "triangle", 4)
    assert len(cache["captions"]) == 4 and all("triangle" in c for c in cache["captions"])
    with pytest.raises(ValueError, match="shape='star' is not accepted"): shape_cache(pipe, "star", 4)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_every_method_of_the_shoot_out_runs_and_reports(method):
    r = personalise(method, n_images=2, steps=2, n_eval=4, n_prior=4)
    assert r["method"] == method and r["trainable"] > 0 and r["megabytes"] > 0 and r["seconds"] > 0
    assert set(r["concept"]) >= {"shape", "all"} and set(r["train"]) >= {"shape", "all"} and np.isfinite(r["kid"])


def test_the_shipped_shoot_out_is_complete():
    "Every method and image count with three seeds (issue #37: an error bar per cell), and the prior's control at equal star steps."
    runs = json.loads(shipped_path("lectures", "13_personalisation", "shootout.json").read_text())
    assert sorted((r["method"], r["n_images"], r["seed"]) for r in runs) == sorted((m, n, s) for m in METHODS for n in (5, 10, 20) for s in (0, 1, 2))
    control = json.loads(shipped_path("lectures", "13_personalisation", "prior_control.json").read_text())
    assert sorted((r["method"], r["n_images"], r["steps"], r["seed"]) for r in control) == [("full fine-tuning", 20, 500, s) for s in (0, 1, 2)]
    assert all(0 <= r["concept"]["shape"] <= 1 and 0 <= r["train"]["all"] <= 1 for r in runs)
    ti = {r["n_images"]: r for r in runs if r["method"] == "textual inversion"}
    assert ti[20]["trainable"] == 64 and ti[20]["megabytes"] < 0.001
    assert read_embedding(STAR, 64)[0] == PLACEHOLDER
    assert read_embedding(shipped_path("lectures", "13_personalisation", "thing.safetensors"), 64)[0] == "<thing>"



@pytest.mark.slow
def test_the_shipped_star_word_scores_what_the_shoot_out_recorded():
    "The shipped `<star>` is the shoot-out's 20-image textual-inversion run: on the shipped model it grades as that run did (an embedding for another text encoder would not)."
    recorded = next(r for r in json.loads(shipped_path("lectures", "13_personalisation", "shootout.json").read_text())
                    if r["method"] == "textual inversion" and r["n_images"] == 20 and r["seed"] == 0)
    pipe = load_pipeline(device="cpu")
    now = adaptation_scores(pipe, 100, concept_word=load_embedding(pipe, STAR), splits=("concept",))["concept"]  # the star prompts: the artefact's check
    assert all(abs(now[k] - recorded["concept"][k]) <= 0.03 for k in ("colour", "shape", "position", "all")), (now, recorded["concept"])

def test_keep_rows_checker_passes_the_reference_and_names_mistakes():
    assert check_keep_rows(keep_rows)
    assert not check_keep_rows(lambda grad, rows: (_ for _ in ()).throw(NotImplementedError())).attempted
    def in_place(grad, rows):
        keep = grad[rows].clone(); grad.zero_(); grad[rows] = keep
        return grad
    for wrong, hint in ((lambda g, r: g - keep_rows(g, r), "inverted"), (lambda g, r: g, "nothing was masked"),
                        (lambda g, r: keep_rows(g, r[:1]), "only the first row"), (in_place, "changed grad in place"),
                        (lambda g, r: keep_rows(g, r)[r], "return a tensor of grad's shape"),
                        (lambda g, r: keep_rows(g, r) * 2, "not grad with every other row set to zero")):
        result = check_keep_rows(wrong)
        assert not result and hint in result.message, (hint, result.message)


# the command line

def test_train_textual_inversion_then_generate_with_the_embedding(tmp_path, capsys):
    out = tmp_path / "star.safetensors"
    assert main(["train-textual-inversion", str(out), "--steps", "2"]) == 0
    assert read_embedding(out, 64)[0] == PLACEHOLDER and "<star> learned from 20 images in 2 steps" in capsys.readouterr().out
    assert main(["generate", "a big red <star> in the center", "--embedding", str(out), "--steps", "4", "-o", str(tmp_path / "s.png")]) == 0
    info = png_info(tmp_path / "s.png")
    assert info["embedding"] == str(out.resolve()) and info["token"] == PLACEHOLDER
    assert np.array_equal(np.asarray(reproduce(tmp_path / "s.png")), np.asarray(__import__("PIL.Image").Image.open(tmp_path / "s.png").convert("RGB")))
    pipe = load_pipeline(); load_embedding(pipe, out)
    assert np.array_equal(pixels(generate(pipe, ["a big red <star> in the center"], steps=4)), pixels([reproduce(tmp_path / "s.png")]))
    make_example(0, "train", 4)[0].save(tmp_path / "source.png")
    assert main(["img2img", str(tmp_path / "source.png"), "a big red <star>", "--embedding", str(out), "--steps", "4", "-o", str(tmp_path / "i.png")]) == 0
    assert png_info(tmp_path / "i.png")["token"] == PLACEHOLDER  # the option reaches every sampling command
    assert main(["generate", "a big red circle", "--steps", "2", "-o", str(tmp_path / "plain.png")]) == 0
    assert "embedding" not in png_info(tmp_path / "plain.png")  # no option, no entry: older recipes stay as they were


def test_train_textual_inversion_on_an_imagefolder(tmp_path, capsys):
    folder = tmp_path / "mine"; folder.mkdir()
    with open(folder / "metadata.csv", "w", newline="") as f:
        rows = [("file_name", "text")]
        for i in range(3):
            image, caption, _ = make_example(i, "concept", 0)
            image.save(folder / f"{i}.png"); rows.append((f"{i}.png", caption.replace("star", "<my-star>")))
        csv.writer(f).writerows(rows)
    assert main(["train-textual-inversion", str(tmp_path / "mine.safetensors"), "--images", str(folder), "--token", "<my-star>", "--steps", "2"]) == 0
    assert "learned from 3 images" in capsys.readouterr().out and read_embedding(tmp_path / "mine.safetensors", 64)[0] == "<my-star>"
    code = main(["train-textual-inversion", str(tmp_path / "other.safetensors"), "--images", str(folder), "--token", "<other>", "--steps", "2"])
    assert code == 1 and "no caption in --images uses --token '<other>'" in capsys.readouterr().err and not (tmp_path / "other.safetensors").exists()


def test_textual_inversion_command_refuses_bad_input_before_any_work(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.safetensors").write_text("my notes")
    save_tensors({"a": torch.zeros(2), "b": torch.zeros(2)}, tmp_path / "weights.safetensors")
    for argv, message in ((["x.safetensors", "--images", "empty"], "'{t}/empty' has no metadata.csv (columns file_name,text)"),
                          (["x.safetensors", "--images", "missing"], "'{t}/missing' is not a folder"),
                          (["x.pt"], "must be a file name ending in .safetensors"),
                          (["notes.safetensors"], "exists; pass --overwrite"),
                          (["notes.safetensors", "--overwrite"], "is not a textual-inversion file for '<star>' (64 wide, as this model's); it is never replaced"),
                          (["weights.safetensors", "--overwrite"], "is not a textual-inversion file for '<star>'"),
                          (["x.safetensors", "--token", "star"], "token 'star' is already in the tokenizer's vocabulary"),
                          (["x.safetensors", "--init-word", "zebra"], "init_word must be a word the tokenizer keeps whole"),
                          (["nowhere/x.safetensors"], "does not exist; create it first")):
        argv = [str(tmp_path / a) if a.endswith(".safetensors") or a in ("empty", "missing") or a.startswith("nowhere") else a for a in argv]
        assert main(["train-textual-inversion", *argv, "--steps", "1"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message.format(t=tmp_path) in err, (message, err)
    assert (tmp_path / "notes.safetensors").read_text() == "my notes" and not (tmp_path / "x.safetensors").exists()
    assert embedding_output(STAR.with_name("star.safetensors"), overwrite=True)  # a textual-inversion file may be replaced with --overwrite
    assert is_embedding_file(STAR.with_name("star.safetensors"), "<star>", 64) and not is_embedding_file(tmp_path / "weights.safetensors", "a", 2)


def test_generate_refuses_a_bad_embedding_in_one_line(tmp_path, capsys):
    save_tensors({"<wide>": torch.zeros(1, 32)}, tmp_path / "wide.safetensors")
    torch.save({"<star>": torch.zeros(64)}, tmp_path / "pickled.bin")
    for file, message in (("wide.safetensors", "is 32 wide; this text encoder's embeddings are 64 wide"), ("pickled.bin", "never opens a pickle"),
                          ("missing.safetensors", "no weights file at")):
        code = main(["generate", "a <star>", "--embedding", str(tmp_path / file), "--steps", "2", "-o", str(tmp_path / "x.png")])
        err = capsys.readouterr().err
        assert code == 1 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "x.png").exists()
