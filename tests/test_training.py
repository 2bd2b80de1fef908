import dataclasses, inspect, json, os, subprocess, sys

import pytest, torch
from pathlib import Path
import safetensors.torch

from sdcourse.core import shipped_path
from sdcourse.text import encode_prompts, load_text_encoder
from sdcourse.data import TRAIN_PHRASINGS, course_dataset, eval_prompts
from sdcourse.training import (ADHERENCE_GROUPS, GRADED_ATTRIBUTES, adherence, first_at, training_minutes, cache_training_data, generate_images, images_cache, load_checkpoint, load_pipeline,
                               train_course_unet, train_unet, training_batch, TrainConfig, TINY_RECIPE)
from sdcourse.unet import make_unet
from sdcourse.data import dataset_images
from sdcourse.vae import load_vae


@pytest.fixture(scope="module")
def parts():
    return load_vae(device="cpu"), *load_text_encoder(device="cpu")  # vae, text_encoder, tokenizer


@pytest.fixture(scope="module")
def cache(parts):
    vae, text_encoder, tokenizer = parts
    return cache_training_data(vae, text_encoder, tokenizer, n_images=128)


def test_images_cache_is_the_training_cache_of_any_images(parts, cache):
    vae, text_encoder, tokenizer = parts
    images, captions = dataset_images(128), list(course_dataset(128)["text"])
    mine = images_cache(vae, text_encoder, tokenizer, images, captions, batch_size=50)  # batches of 50: the same numbers as one pass
    assert mine["captions"] == cache["captions"] == captions and mine["scaling_factor"] == cache["scaling_factor"]
    for key in ("mu", "logvar", "embeddings", "empty"): torch.testing.assert_close(mine[key], cache[key], atol=1e-5, rtol=0)
    assert mine["mu"].shape == (128, 4, 8, 8) and mine["embeddings"].shape[:2] == (128, 77)
    # other images give another cache: negated images (lecture 10's "negative" style) move the posterior
    assert (images_cache(vae, text_encoder, tokenizer, -images[:8], captions[:8])["mu"] - cache["mu"][:8]).abs().max() > 0.1
    with pytest.raises(ValueError, match="captions has 7 entries for 8 images"): images_cache(vae, text_encoder, tokenizer, images[:8], captions[:7])


def fresh(seed=0):
    torch.manual_seed(seed)
    return make_unet()


def losses(history): return [h["loss"] for h in history]


def test_batches_are_a_function_of_seed_and_step(cache):
    x0, context, t, noise = training_batch(cache, 3, 2048)
    assert x0.shape == noise.shape == (2048, 4, 8, 8) and context.shape == (2048, 77, 64) and t.shape == (2048,)
    assert 0 <= t.min() and t.max() <= 999 and 0.9 < x0.std() < 1.1
    dropped = (context == cache["empty"]).flatten(1).all(1).float().mean().item()
    assert abs(dropped - 0.1) < 0.025
    assert all(torch.equal(a, b) for a, b in zip(training_batch(cache, 3, 16), training_batch(cache, 3, 16)))
    assert not torch.equal(training_batch(cache, 3, 16)[3], training_batch(cache, 4, 16)[3])
    assert not torch.equal(training_batch(cache, 3, 16, seed=1)[3], training_batch(cache, 3, 16)[3])
    assert (training_batch(cache, 3, 512, p_uncond=0.0)[1] == cache["empty"]).flatten(1).all(1).sum() == 0


def test_training_lowers_the_loss(cache):
    history = train_unet(fresh(), cache, steps=30, batch_size=32, warmup=5)[1]
    assert sum(losses(history)[-5:]) / 5 < 0.8 * sum(losses(history)[:5]) / 5


def test_resume_continues_the_same_loss_curve(cache, tmp_path):
    ck = tmp_path / "ck.safetensors"
    straight = train_unet(fresh(), cache, steps=6, batch_size=8, warmup=2)[1]
    calls = iter(range(1, 100))
    def killed_in_step_5(unet):
        if next(calls) == 5: raise KeyboardInterrupt
        return {}
    with pytest.raises(KeyboardInterrupt):
        train_unet(fresh(), cache, steps=6, batch_size=8, warmup=2, checkpoint=ck, checkpoint_every=3, eval_fn=killed_in_step_5, eval_every=1)
    resumed_unet = fresh(seed=1)
    ema, resumed = train_unet(resumed_unet, cache, steps=6, batch_size=8, warmup=2, checkpoint=ck, resume=True)
    assert losses(resumed) == losses(straight) and [h["lr"] for h in resumed] == [h["lr"] for h in straight]
    assert ema.optimization_step == 6


def test_gradient_accumulation_updates_with_the_mean_gradient_of_its_micro_batches(cache, monkeypatch):
    "grad_accum=2: one optimizer step per two micro-batches, with the gradient of their mean loss (what one double batch would give)."
    import copy
    from sdcourse.schedules import NoiseSchedule
    from sdcourse.training import diffusion_loss
    unet = fresh()
    by_hand = copy.deepcopy(unet)
    seen, real_step = [], torch.optim.AdamW.step
    def spy(self, *args, **kwargs):
        seen.append([p.grad.clone() for p in self.param_groups[0]["params"]])
        return real_step(self, *args, **kwargs)
    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    history = train_unet(unet, cache, steps=2, batch_size=4, warmup=1, grad_accum=2, ema_decay=0.0, max_grad_norm=1e9)[1]  # no clipping: a sum would show
    assert [h["step"] for h in history] == [1, 2] and len(seen) == 2  # one update per two micro-batches
    schedule = NoiseSchedule.named("scaled_linear", device="cpu")
    by_hand.train()
    losses = [diffusion_loss(by_hand, schedule, *training_batch(cache, micro, 4, 0, 0.1, schedule.T)) for micro in (0, 1)]  # step 0's two
    ((losses[0] + losses[1]) / 2).backward()
    for mine, theirs in zip(seen[0], by_hand.parameters()): torch.testing.assert_close(mine, theirs.grad, rtol=1e-4, atol=1e-7)


def test_a_killed_save_leaves_the_last_good_checkpoint(cache, tmp_path, monkeypatch):
    ck = tmp_path / "ck.safetensors"
    train_unet(fresh(), cache, steps=2, batch_size=8, warmup=1, checkpoint=ck)
    good = ck.read_bytes()
    def dying_save_file(tensors, filename, metadata=None):
        open(filename, "wb").write(b"half")
        raise KeyboardInterrupt
    monkeypatch.setattr(safetensors.torch, "save_file", dying_save_file)
    with pytest.raises(KeyboardInterrupt):
        train_unet(fresh(), cache, steps=4, batch_size=8, warmup=1, checkpoint=ck, resume=True, checkpoint_every=1)
    assert ck.read_bytes() == good and sorted(p.name for p in tmp_path.iterdir()) == ["ck.safetensors"]
    monkeypatch.undo()
    assert load_checkpoint(ck, fresh(), *_ema_and_optimizer())[0] == 2


def _ema_and_optimizer():
    from diffusers.training_utils import EMAModel
    unet = make_unet()
    return EMAModel(unet.parameters()), torch.optim.AdamW(unet.parameters())


def test_bad_checkpoints_raise_clear_errors_and_touch_nothing(cache, tmp_path):
    ck = tmp_path / "ck.safetensors"
    train_unet(fresh(), cache, steps=2, batch_size=8, warmup=1, checkpoint=ck)
    good = ck.read_bytes()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train_unet(fresh(), cache, steps=4, checkpoint=tmp_path / "missing.safetensors", resume=True)
    (tmp_path / "bad.safetensors").write_bytes(good[: len(good) // 3])
    with pytest.raises(ValueError, match="not a complete sdcourse checkpoint"):
        train_unet(fresh(), cache, steps=4, checkpoint=tmp_path / "bad.safetensors", resume=True)
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(ValueError, match="not a complete sdcourse checkpoint"):
        train_unet(fresh(), cache, steps=4, checkpoint=tmp_path / "junk.safetensors", resume=True)
    with pytest.raises(ValueError, match="another config: block_out_channels"):
        train_unet(make_unet(block_out_channels=(32, 64, 96)), cache, steps=4, checkpoint=ck, resume=True)
    assert ck.read_bytes() == good


def test_nan_loss_stops_before_a_checkpoint(cache, tmp_path):
    ck = tmp_path / "ck.safetensors"
    train_unet(fresh(), cache, steps=2, batch_size=8, warmup=1, checkpoint=ck)
    good = ck.read_bytes()
    poisoned = {**cache, "mu": cache["mu"] * float("nan")}
    with pytest.raises(FloatingPointError, match="at step 2"):
        train_unet(fresh(), poisoned, steps=4, batch_size=8, warmup=1, checkpoint=ck, resume=True, checkpoint_every=1)
    assert ck.read_bytes() == good


@pytest.mark.parametrize("kwargs,match", [(dict(steps=0), "steps must be"), (dict(p_uncond=1.0), r"p_uncond must be a finite number in \[0, 1\)"),
                                          (dict(mixed_precision="fp8"), "mixed_precision=.fp8. is not accepted; choose one of"),
                                          (dict(grad_accum=0), "grad_accum must be")])
def test_bad_training_arguments(cache, kwargs, match):
    with pytest.raises(ValueError, match=match): train_unet(fresh(), cache, **{"steps": 2, **kwargs})
    with pytest.raises(ValueError, match=match): TrainConfig(**{"steps": 2, **kwargs})  # checked when the recipe is made


def test_a_recipe_is_a_config_or_keywords_and_keywords_change_a_config(cache):
    recipe = TrainConfig(steps=2, batch_size=8, warmup=1, lr=1e-3)
    losses = lambda history: [h["loss"] for h in history]
    by_config = losses(train_unet(fresh(), cache, recipe)[1])
    assert by_config == losses(train_unet(fresh(), cache, steps=2, batch_size=8, warmup=1)[1])
    changed = losses(train_unet(fresh(), cache, recipe, seed=1)[1])  # the same recipe but for the seed: other batches
    assert changed != by_config and recipe.seed == 0  # the config itself is frozen, unchanged
    with pytest.raises(TypeError, match="learning_rate"): train_unet(fresh(), cache, steps=2, learning_rate=1e-3)
    with pytest.raises(TypeError, match="config must be a TrainConfig"): train_unet(fresh(), cache, 2)  # steps is not positional


def test_long_captions_are_truncated_with_a_warning(parts):
    _, text_encoder, tokenizer = parts
    with pytest.warns(UserWarning, match="only the first 77"):
        c = encode_prompts(text_encoder, tokenizer, ["a red circle in the top left " * 20])
    assert c.shape == (1, 77, 64)


def test_retrain_command_runs_a_few_steps_and_saves_a_loadable_pipeline(tmp_path):
    pipe, record = train_course_unet(steps=2, n_images=64, eval_every=None, n_eval=4, out=tmp_path / "tiny", checkpoint=tmp_path / "ck.safetensors")
    assert record["steps"] == 2 and set(record["adherence"]) >= {"train", "heldout"} and (tmp_path / "ck.safetensors").exists()
    saved = json.loads((tmp_path / "tiny" / "unet" / "training.json").read_text())
    assert saved["command"].startswith("python -c") and "train_course_unet(steps=2)" in saved["command"]
    assert {f.name: saved[f.name] for f in dataclasses.fields(TrainConfig)} == dataclasses.asdict(dataclasses.replace(TINY_RECIPE, steps=2))  # the recipe, by name
    loaded = load_pipeline(tmp_path / "tiny", device="cpu")
    for a, b in zip(loaded.unet.parameters(), pipe.unet.parameters()): assert torch.equal(a, b.cpu())


def test_a_given_text_encoder_is_used_frozen_and_recorded(tmp_path):
    "Lecture 7b's control: train_course_unet(text_encoder=...) caches captions with that encoder, never trains it, ships it, and says so in the record."
    from transformers import CLIPTextModel
    from sdcourse.core import seeded
    from sdcourse.text import load_text_encoder
    trained, tokenizer = load_text_encoder(device="cpu")
    with seeded(0): random_encoder = CLIPTextModel(trained.config).eval()
    before = {k: v.clone() for k, v in random_encoder.state_dict().items()}
    pipe, record = train_course_unet(steps=2, n_images=64, eval_every=None, n_eval=4, out=tmp_path / "random", checkpoint=tmp_path / "ck.safetensors",
                                     text_encoder=(random_encoder, tokenizer))
    assert all(torch.equal(v, random_encoder.state_dict()[k]) for k, v in before.items()) and not any(p.requires_grad for p in random_encoder.parameters())
    shipped = load_pipeline(tmp_path / "random", device="cpu").text_encoder.state_dict()
    assert all(torch.equal(shipped[k], v) for k, v in before.items())  # the pipeline carries the given encoder, not lecture 4's
    assert any(not torch.equal(shipped[k], v) for k, v in trained.state_dict().items())
    assert record["text_encoder"] == "given by the caller" and "text_encoder=" in record["command"]


def test_shipped_model_loads_with_from_pretrained_in_a_fresh_process(tmp_path):
    script = ("import sys, numpy as np, torch; from diffusers import StableDiffusionPipeline; "
              f"pipe = StableDiffusionPipeline.from_pretrained({str(shipped_path('sdcourse-tiny'))!r}); "
              "image = pipe('a red circle in the top left', num_inference_steps=20, generator=torch.Generator().manual_seed(0)).images[0]; "
              f"image.save({str(tmp_path / 'out.png')!r})")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, capture_output=True, timeout=300)
    from PIL import Image
    from sdcourse.data import grade
    image = Image.open(tmp_path / "out.png").convert("RGB")
    assert image.size == (64, 64)
    assert grade(image, "a red circle in the top left") == {"colour": True, "shape": True, "position": True}


def test_same_seed_same_images():
    pipe = load_pipeline(device="cpu")
    prompts = eval_prompts(4)
    a, b = generate_images(pipe, prompts, seed=3), generate_images(pipe, prompts, seed=3)
    c = generate_images(pipe, prompts, seed=4)
    import numpy as np
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    assert not all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, c))


def test_the_shipped_record_covers_what_lecture_7b_remeasures():
    "Lecture 7b draws the held-out images with the shipped model, checks them against this record and shows the record's other rows: the record must hold them."
    record = json.loads(shipped_path("sdcourse-tiny", "unet", "training.json").read_text())
    assert record["adherence"].keys() >= set(ADHERENCE_GROUPS) and record["phrasings"] == list(TRAIN_PHRASINGS)
    assert all(record["adherence"]["train"][k] >= 0.9 for k in GRADED_ATTRIBUTES), record["adherence"]["train"]
    lecture = json.loads((Path(__file__).resolve().parents[1] / "nbs" / "07b_sdcourse_tiny.ipynb").read_text())
    assert any('heldout_now[k] - record["adherence"]["heldout"][k]' in "".join(c["source"]) for c in lecture["cells"])  # the check lives there now


def test_training_leaves_the_callers_global_generator_alone(cache):
    unet = fresh()
    torch.manual_seed(123); expected = torch.rand(3)
    torch.manual_seed(123)
    train_unet(unet, cache, steps=2, batch_size=8, warmup=1, seed=5)
    assert torch.equal(torch.rand(3), expected)  # the stream continues as if training had not run


def test_min_snr_loss_is_diffusers_weighting_and_only_reweights(cache):
    "Min-SNR-gamma as diffusers' train_text_to_image.py computes it (compute_snr, then min(snr, gamma) / snr per image), and gamma = inf is the plain loss."
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr
    from sdcourse.schedules import NoiseSchedule
    from sdcourse.training import diffusion_loss
    schedule = NoiseSchedule.named("scaled_linear", device="cpu")
    x0, context, t, noise = training_batch(cache, 0, 64)
    unet = fresh()
    with torch.no_grad():
        ours = diffusion_loss(unet, schedule, x0, context, t, noise, min_snr_gamma=5.0)
        snr = compute_snr(DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012), t)
        weights = torch.stack([snr, 5.0 * torch.ones_like(t)], dim=1).min(dim=1)[0] / snr
        pred = unet(schedule.q_sample(x0, t, noise), t, encoder_hidden_states=context).sample
        theirs = (torch.nn.functional.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3)) * weights).mean()
        plain = diffusion_loss(unet, schedule, x0, context, t, noise)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=0)
    assert ours < plain  # every weight is <= 1, and < 1 wherever SNR > 5 (the low-noise steps)
    torch.testing.assert_close(diffusion_loss(unet, schedule, x0, context, t, noise, min_snr_gamma=float(1e9)), plain, rtol=1e-6, atol=0)
    assert TrainConfig(steps=1, min_snr_gamma=5).min_snr_gamma == 5
    with pytest.raises(ValueError, match=r"min_snr_gamma must be a finite number in \(0"): TrainConfig(steps=1, min_snr_gamma=0)
    weighted = losses(train_unet(fresh(), cache, steps=2, batch_size=8, warmup=1, min_snr_gamma=5.0)[1])
    assert weighted != losses(train_unet(fresh(), cache, steps=2, batch_size=8, warmup=1)[1])  # the recipe reaches the loss


def test_the_history_keeps_evaluation_time_apart(cache):
    "`eval_seconds` is the time spent in `eval_fn`, cumulative, so `seconds - eval_seconds` is the training alone (lecture 7's time to 0.90)."
    import time
    def slow_eval(unet):
        time.sleep(0.3)
        return {"score": 1.0}
    _, history = train_unet(fresh(), cache, steps=3, batch_size=8, warmup=1, eval_fn=slow_eval, eval_every=1)
    assert [h["eval_seconds"] for h in history] == sorted(h["eval_seconds"] for h in history)  # it only grows
    assert all(h["eval_seconds"] <= h["seconds"] for h in history)  # `seconds` is taken after the step's evaluation: it holds every evaluation so far
    assert 0.9 <= history[-1]["eval_seconds"] < history[-1]["seconds"]  # three evaluations of 0.3 s, inside the total
    assert training_minutes(history[-1]) == pytest.approx((history[-1]["seconds"] - history[-1]["eval_seconds"]) / 60)


def test_first_at_finds_the_first_evaluation_where_every_attribute_passes():
    scores = lambda group, worst: {f"{group}_{k}": (worst if k == "size" else 1.0) for k in (*GRADED_ATTRIBUTES, "all")}
    history = [dict(step=1, loss=0.1, seconds=60.0), dict(step=2, seconds=120.0, eval_seconds=30.0, **scores("train", 0.89), **scores("heldout", 0.5)),
               dict(step=3, seconds=240.0, eval_seconds=60.0, **scores("train", 0.9), **scores("heldout", 0.95))]
    record = dict(history=history)
    assert first_at(record)["step"] == 3 and first_at(record, "heldout")["step"] == 3  # 0.89 in one attribute is not enough; 0.9 is
    assert first_at(record, bar=0.8)["step"] == 2 and first_at(record, "heldout", bar=0.99) is None and first_at(record, "new_phrasings") is None
    assert training_minutes(first_at(record)) == 3.0 and training_minutes(history[0]) == 1.0  # 240 s less 60 s of measuring; no evaluation yet
    shipped = json.loads(shipped_path("sdcourse-tiny", "unet", "training.json").read_text())
    assert first_at(shipped)["step"] == 1500 and 8 < training_minutes(first_at(shipped)) < 10  # lecture 7's "step 1,500, 8.6 minutes of training"


# The trainers and their recipes (issue #36): one `TrainConfig` each, changed by keyword, never the caller's random stream.
from sdcourse.control import CONTROLNET_RECIPE, control_cache, train_controlnet
from sdcourse.core import make_recipe, seeded
from sdcourse.fewer_steps import LCM_LORA_RECIPE, LCM_RECIPE, distill_lcm, train_flow_unet
from sdcourse.lora import FINETUNE_RECIPE, add_lora, finetune
from sdcourse.personalisation import TEXTUAL_INVERSION_RECIPE, personalise, textual_inversion
from sdcourse.text import MINI_CLIP_RECIPE, train_course_text_encoder, train_mini_clip
from sdcourse.training import compare_pixel_latent
from sdcourse.vae import VAE_RECIPE, ScratchVAE, train_course_vae, train_vae

TRAINERS = [train_vae, train_course_vae, train_mini_clip, train_course_text_encoder, train_unet, train_course_unet, compare_pixel_latent, finetune,
            textual_inversion, personalise, train_controlnet, distill_lcm, train_flow_unet]


@pytest.mark.parametrize("trainer", TRAINERS, ids=lambda f: f.__name__)
def test_every_trainer_takes_a_recipe_or_its_fields(trainer):
    "A `config` (a TrainConfig) and `**changes` (its fields by keyword), and no argument of its own that repeats a field."
    params = inspect.signature(trainer).parameters
    assert "config" in params and any(p.kind is p.VAR_KEYWORD for p in params.values()), trainer.__name__
    assert not {f.name for f in dataclasses.fields(TrainConfig)} & set(params), trainer.__name__


def test_the_default_recipes_are_the_shipped_runs():
    "Each trainer's default recipe is the one its shipped model was trained with (as the records in data/ say)."
    for recipe, folder in ((VAE_RECIPE, ("sdcourse-tiny", "vae")), (TINY_RECIPE, ("sdcourse-tiny", "unet")), (MINI_CLIP_RECIPE, ("mini-clip",)),
                           (CONTROLNET_RECIPE, ("sdcourse-tiny-controlnet",)), (LCM_LORA_RECIPE, ("sdcourse-tiny-lcm-lora",))):
        record = json.loads(shipped_path(*folder, "training.json").read_text())
        assert {k: v for k, v in dataclasses.asdict(recipe).items() if k in record} == {k: record[k] for k in dataclasses.asdict(recipe) if k in record}, folder
    assert (LCM_RECIPE.lr, LCM_LORA_RECIPE.lr) == (1e-5, 1e-4) and (FINETUNE_RECIPE.steps, FINETUNE_RECIPE.lr, FINETUNE_RECIPE.ema_decay) == (1000, 1e-2, 0.0)
    assert (TEXTUAL_INVERSION_RECIPE.lr, TEXTUAL_INVERSION_RECIPE.max_grad_norm) == (5e-3, None)


def test_a_trainer_refuses_what_it_has_no_use_for():
    images = dataset_images(8)
    with pytest.raises(ValueError, match="train_vae has no use for ema_decay=0.99; it runs with ema_decay=0.0"): train_vae(ScratchVAE(), images, ema_decay=0.99)
    with pytest.raises(TypeError, match="train_vae got 'learning_rate', which is neither"): train_vae(ScratchVAE(), images, learning_rate=1e-3)
    with pytest.raises(TypeError, match="config must be a TrainConfig"): train_vae(ScratchVAE(), images, 10)  # steps is not positional
    with seeded(0): a, b = ScratchVAE(), ScratchVAE()
    b.load_state_dict(a.state_dict())  # the same initial weights
    assert losses(train_vae(a, images, steps=2, batch_size=4, device="cpu")) == losses(train_vae(b, images, dataclasses.replace(VAE_RECIPE, steps=2, batch_size=4), device="cpu"))


def test_a_trainer_and_add_lora_leave_the_global_generator_alone(cache):
    """What a trainer draws from torch's global generator (new weights, peft's LoRA) it draws from a seeded copy (`core.seeded`): the caller's
    stream is where it was, and the run is a function of its recipe's seed, whatever the caller's generator held."""
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    unet = make_unet()  # (this draws: the test's own model)
    drawn = torch.random.get_rng_state()
    add_lora(unet, r=2, seed=3)
    train_unet(unet, cache, steps=1, batch_size=4, device="cpu")
    a, _ = train_flow_unet(cache, steps=1, batch_size=4, device="cpu")
    assert torch.equal(torch.random.get_rng_state(), drawn) and not torch.equal(before, drawn)
    torch.manual_seed(7)  # another global state: the same run
    b, _ = train_flow_unet(cache, steps=1, batch_size=4, device="cpu")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with seeded(3): first = torch.rand(3)
    with seeded(3): assert torch.equal(torch.rand(3), first)


def test_only_core_seeds_the_global_generators():
    "No library module but core calls torch.manual_seed, np.random.seed or random.seed (torch.Generator(...).manual_seed is a local generator)."
    import ast
    root = Path(__file__).resolve().parents[1] / "sdcourse"
    def seeding_calls(source):
        found = []
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.Call): continue
            parts, f = [], node.func
            while isinstance(f, ast.Attribute): parts.append(f.attr); f = f.value
            if not isinstance(f, ast.Name): continue  # e.g. torch.Generator().manual_seed(...): a generator of one's own
            name = ".".join([f.id] + parts[::-1])
            if parts and parts[0] in ("manual_seed", "manual_seed_all", "seed") and f.id in ("torch", "np", "numpy", "random"): found.append((node.lineno, name))
        return found
    assert seeding_calls("import torch\ntorch.manual_seed(0)\nnp.random.seed(1)\ng = torch.Generator().manual_seed(2)") == [(2, "torch.manual_seed"), (3, "np.random.seed")]
    offenders = {p.name: calls for p in sorted(root.glob("*.py")) if p.name != "core.py" and (calls := seeding_calls(p.read_text()))}
    assert not offenders, f"seed the global generators only in core (`seeded`, `seed_everything`): {offenders}"
    assert seeding_calls((root / "core.py").read_text())  # core does: the check reads what it should
