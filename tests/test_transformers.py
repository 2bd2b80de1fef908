"Lecture 16: DiT, MMDiT and Flux's blocks equal diffusers'; the zero-token shortcut; the shipped SD3 folder through diffusers and the CLI; bad input."
import contextlib, io, json, os, shutil, subprocess, sys

import numpy as np
import pytest, torch
from PIL import Image

from sdcourse.core import shipped_path
from sdcourse.pipeline import main, model_kinds, png_info, reproduce
from sdcourse.sampling import to_images
from sdcourse.text import unknown_words
from sdcourse.transformers import (HELDOUT_FILLER, PUBLISHED, SD3_FOLDER, SD3_MAX_LENGTH, DiTBlock, ScratchDiT, ScratchMMDiT, SingleBlock, add_filler,
                                   adherence_prompts, compact_zero_tokens, default_attention, double_block_from_diffusers, filler_captions, filler_prompts,
                                   distil_text_encoder, encoder_states, filler_index, flux_ids, load_sd3, make_sd3_transformer, patchify, published_parameters,
                                   rope_tables, rotate, sd3_batch, sd3_flow_loss, sd3_generate, sd3_text_encoder, train_mmdit, unpatchify)

pytestmark = pytest.mark.usefixtures("no_progress_bars")  # stderr must hold the error alone
FOLDER = shipped_path(SD3_FOLDER)


def noisy(model):
    with torch.no_grad():
        for p in model.parameters(): p.normal_(0, 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def sd3(): return load_sd3(device="cpu")


def test_dit_equals_diffusers_within_1e_5():
    from diffusers import DiTTransformer2DModel
    torch.manual_seed(0)
    theirs = noisy(DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, num_layers=2, sample_size=8,
                                         patch_size=2, num_embeds_ada_norm=10, norm_num_groups=1))
    x, t, y = torch.randn(3, 4, 8, 8), torch.tensor([1, 500, 999]), torch.tensor([0, 3, 10])
    with torch.no_grad(): gap = (ScratchDiT.from_diffusers(theirs)(x, t, y) - theirs(x, t, y).sample).abs().max().item()
    assert gap < 1e-5, gap


def test_mmdit_equals_diffusers_within_1e_5_and_the_last_block_reads_text_only():
    from diffusers import SD3Transformer2DModel
    torch.manual_seed(0)
    theirs = noisy(SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=3, attention_head_dim=16, num_attention_heads=2,
                                         joint_attention_dim=64, caption_projection_dim=32, pooled_projection_dim=64, pos_embed_max_size=12, qk_norm="rms_norm"))
    ours = ScratchMMDiT.from_diffusers(theirs)
    assert ours.blocks[-1].text.last and not hasattr(ours.blocks[-1].text, "mlp")
    x, t, text, pooled = torch.randn(3, 4, 8, 8), torch.tensor([1.0, 500.0, 999.0]), torch.randn(3, 7, 64), torch.randn(3, 64)
    with torch.no_grad(): gap = (ours(x, t, text, pooled) - theirs(x, encoder_hidden_states=text, pooled_projections=pooled, timestep=t).sample).abs().max().item()
    assert gap < 1e-5, gap


def test_flux_rope_and_both_blocks_equal_diffusers():
    from diffusers.models.transformers.transformer_flux import FluxPosEmbed, FluxSingleTransformerBlock, FluxTransformerBlock
    torch.manual_seed(0)
    ids, axes = flux_ids(5, 4, 4), (4, 6, 6)
    ours_rope, theirs_rope = rope_tables(ids, axes), FluxPosEmbed(theta=10000, axes_dim=list(axes))(ids)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ours_rope, theirs_rope))
    text, image, c = torch.randn(2, 5, 32), torch.randn(2, 16, 32), torch.randn(2, 32)
    single, double = noisy(FluxSingleTransformerBlock(32, 2, 16)), noisy(FluxTransformerBlock(32, 2, 16))
    with torch.no_grad():
        t_text, t_image = single(image, text, c, image_rotary_emb=theirs_rope)
        assert (SingleBlock.from_diffusers(single)(torch.cat([text, image], 1), c, ours_rope) - torch.cat([t_text, t_image], 1)).abs().max() < 1e-5
        o_image, o_text = double_block_from_diffusers(double)(image, text, c, ours_rope)
        t_text, t_image = double(image, text, c, image_rotary_emb=theirs_rope)
        assert (o_image - t_image).abs().max() < 1e-5 and (o_text - t_text).abs().max() < 1e-5


def test_rope_scores_depend_on_the_offset_only():
    ids = torch.stack([torch.zeros(10), torch.zeros(10), torch.arange(10.0)], 1)  # ten tokens along one row
    cos, sin = rope_tables(ids, (4, 6, 6))
    q, k = torch.randn(1, 1, 1, 16).expand(1, 1, 10, 16), torch.randn(1, 1, 1, 16).expand(1, 1, 10, 16)
    scores = (rotate(q, cos, sin) * rotate(k, cos, sin).roll(-3, dims=2)).sum(-1)[0, 0, :7]  # q at j against k at j + 3
    assert torch.allclose(scores, scores[0].expand(7), atol=1e-5)


def test_adaln_zero_block_is_the_identity_and_patches_round_trip():
    block = DiTBlock(32, 2, 10)
    torch.nn.init.zeros_(block.ada.weight); torch.nn.init.zeros_(block.ada.bias)
    x = torch.randn(2, 16, 32)
    with torch.no_grad(): assert torch.equal(block(x, torch.tensor([3, 700]), torch.tensor([1, 10])), x)
    latent = torch.randn(2, 4, 8, 8)
    tokens = patchify(latent, 2).unflatten(-1, (4, 2, 2)).permute(0, 1, 3, 4, 2).flatten(2)  # the final layer's (row, column, channel) order
    assert torch.equal(unpatchify(tokens, 2, 4), latent)
    with pytest.raises(ValueError, match="p=3 must divide"): patchify(latent, 3)


def test_one_zero_token_counted_n_times_is_n_zero_tokens():
    torch.manual_seed(0)
    model = noisy(make_sd3_transformer(num_layers=2))
    x, t, pooled = torch.randn(2, 4, 8, 8), torch.tensor([300.0, 900.0]), torch.randn(2, 128)
    clip = torch.randn(2, 6, 128)
    full = lambda n: torch.cat([clip, torch.zeros(2, n, 128)], 1)
    with torch.no_grad():
        expected = model(x, encoder_hidden_states=full(40), pooled_projections=pooled, timestep=t).sample
        other = model(x, encoder_hidden_states=full(1), pooled_projections=pooled, timestep=t).sample
        compact = compact_zero_tokens(model, 40)(x, encoder_hidden_states=full(1), pooled_projections=pooled, timestep=t).sample
        again = default_attention(model)(x, encoder_hidden_states=full(1), pooled_projections=pooled, timestep=t).sample
    assert (compact - expected).abs().max() < 1e-4 and (other - expected).abs().max() > 1e-2  # the count matters, and log(n) gives it exactly
    assert torch.equal(again, other)


def test_filler_words_are_unknown_and_the_batches_drop_text_and_pooled_together(sd3):
    assert all(unknown_words(sd3.tokenizer, w) for w in HELDOUT_FILLER)
    assert filler_prompts(5) == filler_prompts(5) and all(any(w in p for w in HELDOUT_FILLER) for p in filler_prompts(20))
    made = filler_captions(["a red circle"] * 200)
    assert 0.4 < np.mean([m != "a red circle" for m in made]) < 0.6 and not any(w in m for m in made for w in HELDOUT_FILLER)  # FILLER_P = 0.5
    assert add_filler("x", np.random.default_rng(0), ("beautiful",)) in ("beautiful, x", "x, beautiful", "beautiful, beautiful, x", "x, beautiful, beautiful")
    n = 32
    cache = dict(mu=torch.randn(n, 4, 8, 8), logvar=torch.full((n, 4, 8, 8), -10.0), scaling_factor=0.6, embeddings=torch.randn(n, SD3_MAX_LENGTH + 2, 128),
                 empty=torch.zeros(SD3_MAX_LENGTH + 2, 128), captions=["c"] * n)  # the pooled vector rides as the last token
    a, b = sd3_batch(cache, 3, 16, p_uncond=0.5), sd3_batch(cache, 3, 16, p_uncond=0.5)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    dropped_text, dropped_pooled = (a[1] == 0).all(dim=(1, 2)), (a[2] == 0).all(dim=1)
    assert torch.equal(dropped_text, dropped_pooled) and 0 < dropped_text.sum() < 16
    assert a[1].shape == (16, SD3_MAX_LENGTH + 1, 128) and a[2].shape == (16, 128)
    loss = sd3_flow_loss(compact_zero_tokens(make_sd3_transformer()), type("S", (), {"T": 1000})(), *a)
    assert torch.isfinite(loss) and loss.item() > 0.5


def test_the_shipped_sd3_loads_in_a_fresh_process_offline_and_generates(tmp_path):
    script = f"""
import torch
from diffusers import StableDiffusion3Pipeline
pipe = StableDiffusion3Pipeline.from_pretrained({str(FOLDER)!r}, text_encoder_3=None, tokenizer_3=None, dtype=torch.float32, use_safetensors=True)
image = pipe("a large red circle in the center", num_inference_steps=8, generator=torch.Generator().manual_seed(0)).images[0]
image.save({str(tmp_path / "fresh.png")!r})
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert Image.open(tmp_path / "fresh.png").size == (64, 64)


def test_the_shipped_record_is_complete_and_ships_float16():
    record = json.loads((FOLDER / "transformer" / "training.json").read_text())
    quality = record["adherence"]
    assert quality["images"] == 200 and quality["weights"] == "float16, as shipped" and set(quality) >= {"train", "heldout", "new_phrasings", "filler"}
    assert all(0 <= quality[g]["all"] <= min(quality[g][k] for k in ("colour", "shape", "position")) for g in ("train", "heldout", "new_phrasings", "filler"))
    from safetensors import safe_open
    with safe_open(FOLDER / "transformer" / "diffusion_pytorch_model.safetensors", "pt") as f: assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16
    first, control = record["first_stage"], json.loads(shipped_path("lectures", "16_transformers", "unet-control.json").read_text())
    same = ("steps", "batch_size", "lr", "seed", "p_uncond", "sampling", "shift", "filler_p", "filler_words", "n_train_images")
    assert {k: control[k] for k in same} == {k: first[k] for k in same} and control["adherence"]["images"] == 200 and first["steps"] == 3500
    # the second stage and its control differ in the text encoder alone
    second = json.loads(shipped_path("lectures", "16_transformers", "second-stage-control.json").read_text())
    assert {k: second[k] for k in same + ("ema_decay", "warmup")} == {k: record[k] for k in same + ("ema_decay", "warmup")} and record["steps"] == 800
    assert record["text_encoder_distillation"]["steps"] == 2000 and second["text_encoder_distillation"] is None
    assert second["first_stage"]["adherence"] == first["adherence"]


def test_the_shipped_transformer_meets_issue_40s_bar():
    quality = json.loads((FOLDER / "transformer" / "training.json").read_text())["adherence"]
    assert quality["train"]["all"] >= 0.90 and quality["heldout"]["all"] >= 0.85 and quality["filler"]["all"] >= 0.85, quality


def test_filler_index_lines_a_caption_up_with_its_filler_and_distillation_teaches_a_copy(sd3):
    tokenizer, eos = sd3.tokenizer, sd3.tokenizer.eos_token_id
    ids = lambda texts: tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    clean, noisy = ids(["red circle left.", "red circle left."]), ids(["bla, red circle left.", "red circle left., bla foo"])
    index = filler_index(clean, noisy, eos)
    end = clean[0].tolist().index(eos)
    assert torch.equal(noisy[0][index[0] == 1], clean[0][1:2]) and (index[0, 1:4] == end).all()  # filler before: pieces read as the end of text
    assert torch.equal(index[1, :4], torch.arange(4)) and (index[1, 4:noisy[1].tolist().index(eos)] == end).all()  # after: the caption stays, ".," ends it
    assert torch.equal(filler_index(clean, clean, eos), torch.arange(clean.shape[1]).expand_as(clean))  # no filler: each token its own
    with pytest.raises(ValueError, match="caption 0 of clean_ids is not inside caption 0 of noisy_ids"): filler_index(ids(["blue square"]), ids(["red circle"]), eos)
    teacher, tok = sd3_text_encoder("cpu")
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = distil_text_encoder(teacher, tok, steps=3, batch_size=8, warmup=1)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items()) and not student.training
    assert student.config.distillation["steps"] == 3 and "distillation" in student.config.to_json_string()
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())
    with pytest.raises(ValueError, match="p_filler"): distil_text_encoder(teacher, tok, p_filler=1.5)
    with pytest.raises(ValueError, match="steps"): distil_text_encoder(teacher, tok, steps=0)


def test_the_shipped_encoder_is_distilled_keeps_clean_captions_and_shrugs_off_filler(sd3):
    assert sd3.text_encoder.config.distillation["steps"] == 2000 and sd3.text_encoder_2.config.distillation == sd3.text_encoder.config.distillation
    original, tok = sd3_text_encoder("cpu")
    clean = adherence_prompts(50)["new_phrasings"]
    noisy = ["highly detailed, masterpiece, " + c for c in clean]
    def moved(encoder):
        "How far the filler in front moves the caption's own token states, relative to the same encoder's states without it."
        with torch.no_grad(): (ids, states, _), (noisy_ids, noisy_states, _) = encoder_states(encoder, tok, clean), encoder_states(encoder, tok, noisy)
        index = filler_index(ids, noisy_ids, tok.eos_token_id)
        own = (index > 0) & (index < (ids == tok.eos_token_id).int().argmax(1, keepdim=True))  # the caption's tokens
        target = states.gather(1, index[..., None].expand_as(states))
        return ((noisy_states - target).norm(dim=-1) / target.norm(dim=-1))[own].mean().item()
    with torch.no_grad(): before, after = encoder_states(original, tok, clean)[1], encoder_states(sd3.text_encoder, tok, clean)[1]
    assert ((after - before).norm() / before.norm()).item() < 0.15  # clean captions read almost as before
    assert moved(sd3.text_encoder) < 0.3 * moved(original)  # measured: 0.14 against 0.83 on lecture 16's filler prompts


def test_generate_with_the_sd3_folder_reproduces_bit_identically(tmp_path, sd3):
    assert "StableDiffusion3Pipeline" in model_kinds()
    out = tmp_path / "sd3.png"
    assert main(["generate", "a small green triangle in the top left", "--model", str(FOLDER), "--steps", "8", "-o", str(out)]) == 0
    info = png_info(out)
    assert info["scheduler"] == "flow-euler" and info["steps"] == 8 and info["model"] == str(FOLDER.resolve())
    assert np.array_equal(np.asarray(reproduce(out)), np.asarray(Image.open(out).convert("RGB")))
    latents = sd3_generate(sd3, ["a small green triangle in the top left"], steps=8)
    assert np.abs(np.asarray(to_images(sd3.vae, latents)[0], dtype=int) - np.asarray(Image.open(out).convert("RGB"), dtype=int)).max() <= 1


def one_line_error(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code in (1, 2) and err and "\n" not in err and "Traceback" not in err, (code, err)
    return err


def test_sd3_bad_input_is_one_line(tmp_path, capsys, sd3):
    with pytest.raises(ValueError, match="holds a StableDiffusionPipeline, not an SD3 pipeline"): load_sd3(shipped_path("sdcourse-tiny"))
    forged = tmp_path / "forged"
    shutil.copytree(FOLDER, forged)
    (forged / "transformer" / "config.json").write_text((shipped_path("sdcourse-tiny", "unet", "config.json")).read_text())
    with pytest.raises(ValueError, match="whose transformer is a UNet2DConditionModel") as e: load_sd3(forged)
    assert "\n" not in str(e.value)
    pickled = tmp_path / "pickled"
    shutil.copytree(FOLDER, pickled)
    weights = pickled / "transformer" / "diffusion_pytorch_model.safetensors"
    torch.save({"w": torch.zeros(1)}, weights.with_suffix(".bin")); weights.unlink()
    with pytest.raises((ValueError, OSError), match="safetensors"): load_sd3(pickled)
    broken = tmp_path / "broken"
    shutil.copytree(FOLDER, broken)
    from safetensors.torch import load_file, save_file
    file = broken / "transformer" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(file); name = next(iter(tensors)); tensors[name] = torch.full_like(tensors[name], float("nan")); save_file(tensors, file)
    with pytest.raises(ValueError, match="holds NaN or infinite numbers"): load_sd3(broken)
    with pytest.raises(ValueError, match="guidance_scale must be 1 or more"): sd3_generate(sd3, ["a red circle"], guidance_scale=0.5)
    out = str(tmp_path / "x.png")
    assert "draws with its own sampler (flow-euler)" in one_line_error(["generate", "a red circle", "--model", str(FOLDER), "--scheduler", "ddim", "-o", out], capsys)
    assert "draws with generate only" in one_line_error(["img2img", out, "a red circle", "--model", str(FOLDER), "-o", out], capsys)
    assert "adapts a UNet" in one_line_error(["generate", "a red circle", "--model", str(FOLDER), "--lora", str(shipped_path("lectures", "10_lora", "stars")), "-o", out], capsys)
    assert "guidance_scale must be 1 or more" in one_line_error(["generate", "a red circle", "--model", str(FOLDER), "--guidance", "0.5", "-o", out], capsys)
    assert not (tmp_path / "x.png").exists()


def test_train_mmdit_smoke_writes_a_pipeline_sd3_loads(tmp_path):
    pipe, record = train_mmdit(n_images=32, steps=2, batch_size=4, warmup=1, eval_every=None, n_eval=2, out=tmp_path / "sd3", checkpoint=tmp_path / "ck.safetensors", device="cpu")
    assert record["steps"] == 2 and record["sampling"] == "logit-normal" and set(record["adherence"]) >= {"train", "heldout", "new_phrasings", "filler"}
    loaded = load_sd3(tmp_path / "sd3", device="cpu")
    assert loaded.tokenizer.model_max_length == SD3_MAX_LENGTH and loaded.text_encoder_3 is None
    assert type(loaded.transformer.attn_processors[next(iter(loaded.transformer.attn_processors))]).__name__ == "JointAttnProcessor2_0"
    student = distil_text_encoder(*sd3_text_encoder("cpu"), steps=1, batch_size=4, warmup=0)
    _, second = train_mmdit(init=tmp_path / "sd3" / "transformer", text_encoder=student, n_images=32, steps=1, batch_size=4, warmup=0, ema_decay=0.0, eval_every=None,
                            n_eval=2, out=tmp_path / "second", checkpoint=tmp_path / "ck2.safetensors", device="cpu")
    assert second["first_stage"]["steps"] == 2 and second["text_encoder_distillation"]["steps"] == 1 and "text_encoder=distil_text_encoder" in second["command"]
    assert load_sd3(tmp_path / "second", device="cpu").text_encoder.config.distillation["steps"] == 1


def test_published_configs_have_their_published_sizes():
    assert abs(published_parameters("SD3 Medium") / 2.03e9 - 1) < 0.02
    assert abs(published_parameters("FLUX.1 [dev]") / 11.9e9 - 1) < 0.02
    assert set(adherence_prompts(3)) == {"train", "heldout", "new_phrasings", "filler"}
