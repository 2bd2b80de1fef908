"Lecture 15: LCM and flow-matching samplers equal diffusers', the boundary condition, distillation and flow training, the shipped LCM-LoRA and flow model, the CLI; bad input."
import argparse, json, warnings

import numpy as np
import pytest, torch
from PIL import Image

from sdcourse.core import shipped_path
from sdcourse.data import eval_prompts
from sdcourse.exercises import check_consistency_scalings
from sdcourse.fewer_steps import (FLOW_UNET, LCM_LORA, VALIDATION_SEED, ScratchFlowScheduler, ScratchLCMScheduler, LCM_OPTION, consistency_loss,
                                  consistency_output, consistency_scalings, distill_lcm, flow_interpolate, flow_loss, flow_sigmas, lcm_batch, training_sigmas,
                                  lcm_timesteps, load_flow_pipeline, measure_metrics, measure_steps, solver_timesteps, teacher_step, train_flow_unet, with_lcm)
from sdcourse.pipeline import main, png_info, reproduce
from sdcourse.sampling import generate, measure_sampling, sampling_eval, set_steps
from sdcourse.schedules import NoiseSchedule
from sdcourse.training import cache_training_data, load_pipeline, make_pipeline
from sdcourse.unet import make_unet

pytestmark = pytest.mark.usefixtures("no_progress_bars")  # stderr must hold the error alone


@pytest.fixture(scope="module")
def lcm_pipe(): return with_lcm(load_pipeline(device="cpu"))


@pytest.fixture(scope="module")
def flow_pipe(): return load_flow_pipeline(device="cpu")


@pytest.fixture(scope="module")
def small(pipe): return cache_training_data(pipe.vae, pipe.text_encoder, pipe.tokenizer, 16)


def test_scalings_equal_lcm_scheduler_and_keep_the_boundary_condition():
    from diffusers import LCMScheduler
    lcm = LCMScheduler()
    for t in (0, 1, 19, 500, 999):
        assert torch.allclose(torch.stack(consistency_scalings(t)), torch.tensor(lcm.get_scalings_for_boundary_condition_discrete(torch.tensor(t))))
    c_skip, c_out = consistency_scalings(torch.tensor([0, 0]))
    assert c_skip.tolist() == [1.0, 1.0] and c_out.tolist() == [0.0, 0.0]
    alpha_bar, x, eps = NoiseSchedule.named().alpha_bar, torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    assert torch.equal(consistency_output(x, eps, torch.zeros(3, dtype=torch.long), alpha_bar), x)  # f(x, 0) = x, whatever the network says
    assert not torch.equal(consistency_output(x, eps, torch.full((3,), 500), alpha_bar), x)


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 7, 8, 20, 50])
def test_lcm_timesteps_equal_lcm_scheduler(steps):
    from diffusers import LCMScheduler
    lcm = LCMScheduler()
    lcm.set_timesteps(steps)
    assert torch.equal(lcm_timesteps(steps), lcm.timesteps)
    assert torch.isin(lcm_timesteps(steps), solver_timesteps()).all()


def test_scratch_lcm_sampler_equals_lcm_scheduler_and_the_diffusers_pipeline(lcm_pipe):
    prompts = eval_prompts(4)
    theirs = generate(lcm_pipe, prompts, steps=4, guidance_scale=1.0, output_type="pt")
    ours = generate(lcm_pipe, prompts, steps=4, guidance_scale=1.0, scheduler=ScratchLCMScheduler(dict(lcm_pipe.scheduler.config)), output_type="pt")
    reference = lcm_pipe(prompts, num_inference_steps=4, guidance_scale=1.0, output_type="pt",
                         generator=[torch.Generator().manual_seed(i) for i in range(4)]).images
    assert (ours - theirs).abs().max() < 1e-5 and (reference - theirs).abs().max() < 1e-5
    other = generate(lcm_pipe, prompts, steps=4, guidance_scale=1.0, seed=10, output_type="pt")
    assert (other - theirs).abs().max() > 0.1  # each step draws fresh noise from the image's own generator


@pytest.mark.parametrize("steps", [1, 2, 4, 20])
def test_flow_sampler_equals_flow_match_euler(flow_pipe, steps):
    from diffusers import FlowMatchEulerDiscreteScheduler
    shift = flow_pipe.scheduler.config.shift  # the shipped flow model's sampler carries the shift it was trained with
    for s in {1.0, 3.0, shift}:
        ours, theirs = ScratchFlowScheduler(shift=s), FlowMatchEulerDiscreteScheduler(shift=s)
        ours.set_timesteps(steps); set_steps(theirs, steps)
        assert torch.equal(ours.sigmas, theirs.sigmas) and torch.equal(ours.timesteps, theirs.timesteps)
    prompts = eval_prompts(3)
    a = generate(flow_pipe, prompts, steps=steps, output_type="pt")
    b = generate(flow_pipe, prompts, steps=steps, scheduler=ScratchFlowScheduler(shift=shift), output_type="pt")
    assert (a - b).abs().max() < 1e-5


def test_flow_grid_spends_no_step_on_nothing():
    "Flux's grid: N evenly spaced noise levels from 1 to 1 / N, then 0; diffusers' own grid ends at 1 / T, and its last step would change nothing."
    from diffusers import FlowMatchEulerDiscreteScheduler
    for steps in (1, 2, 4, 8):
        sigmas = flow_sigmas(steps)
        assert len(sigmas) == steps + 1 and sigmas[0] == 1 and sigmas[-1] == 0
        assert torch.allclose(sigmas[:-1] - sigmas[1:], torch.full((steps,), 1 / steps))  # equal steps, the last one too
    own = FlowMatchEulerDiscreteScheduler()
    own.set_timesteps(2)
    assert own.sigmas[-2] < 0.002  # what set_steps avoids: 1 -> 0.001 -> 0
    shifted = flow_sigmas(4, shift=3.0)
    assert torch.allclose(shifted, 3 * flow_sigmas(4) / (1 + 2 * flow_sigmas(4))) and (shifted >= flow_sigmas(4)).all()


def test_training_sigmas_uniform_and_logit_normal():
    from diffusers.training_utils import compute_density_for_timestep_sampling
    t = torch.arange(1000)
    assert torch.equal(training_sigmas(t), (t + 1).float() / 1000)  # the shipped uniform model's: sigma = (t + 1) / T
    logit_normal = training_sigmas(t, sampling="logit-normal")
    theirs = compute_density_for_timestep_sampling("logit_normal", 200_000, logit_mean=0.0, logit_std=1.0)
    q = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95])
    assert torch.allclose(torch.quantile(logit_normal, q), torch.quantile(theirs, q), atol=0.01)  # the same distribution as diffusers' SD3 scripts
    assert (training_sigmas(t, sampling="logit-normal", shift=3.0) > logit_normal).sum() > 990  # the shift moves training towards noise
    with pytest.raises(ValueError, match="sampling=.lognormal. is not accepted"): training_sigmas(t, sampling="lognormal")


def test_one_euler_step_with_the_true_velocity_is_exact():
    x0, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    flow = ScratchFlowScheduler()
    flow.set_timesteps(1)
    assert torch.allclose(flow.step(noise - x0, flow.timesteps[0], flow_interpolate(x0, noise, torch.ones(2))).prev_sample, x0, atol=1e-6)
    assert torch.equal(flow_interpolate(x0, noise, torch.zeros(2)), x0) and torch.equal(flow_interpolate(x0, noise, torch.ones(2)), noise)


def test_lcm_batch_puts_timesteps_on_the_grid_and_gives_the_empty_prompt(small):
    x0, context, uncond, t, noise = lcm_batch(small, 3, 32)
    assert torch.isin(t, solver_timesteps()).all() and len(set(t.tolist())) > 10
    assert torch.equal(uncond[0], small["empty"]) and uncond.shape == context.shape
    assert not (context == small["empty"]).all(dim=(1, 2)).any()  # no caption dropout: the student always sees its caption


def test_teacher_step_lands_on_the_path_of_a_perfect_teacher():
    "A 'teacher' that knows the noise: its DDIM step from x_t reaches exactly the noised x0 at the earlier timestep."
    alpha_bar, x0, noise = NoiseSchedule.named().alpha_bar, torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    schedule = NoiseSchedule.named()
    oracle = lambda x, t, encoder_hidden_states: type("Out", (), {"sample": torch.cat([noise, noise])})()
    t, prev = torch.tensor([519, 19]), torch.tensor([499, 0])
    x_prev = teacher_step(oracle, schedule.q_sample(x0, t, noise), t, prev, torch.zeros(2, 77, 64), torch.zeros(2, 77, 64), alpha_bar, 5.0)
    assert torch.allclose(x_prev, schedule.q_sample(x0, prev, noise), atol=1e-5)


def test_distillation_trains_only_the_student_and_lowers_the_loss_on_one_batch(pipe, small):
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    student, history = distill_lcm(pipe.unet, small, steps=2, lora_rank=4, batch_size=8)
    assert all(torch.equal(v, pipe.unet.state_dict()[k]) for k, v in before.items())  # the teacher is untouched
    lora = {n: p for n, p in student.named_parameters() if "lora_B" in n}
    assert lora and any(p.abs().sum() > 0 for p in lora.values())  # B starts at zero; it moved
    assert all(np.isfinite(h["loss"]) for h in history)
    full, _ = distill_lcm(pipe.unet, small, steps=2, batch_size=8)  # step 1 of a 2-step run has a learning rate above 0
    assert any(not torch.equal(p, pipe.unet.state_dict()[n]) for n, p in full.state_dict().items())
    loss_fn, schedule = consistency_loss(pipe.unet), NoiseSchedule.named()
    batch = lcm_batch(small, 0, 8)
    with torch.no_grad(): assert loss_fn(pipe.unet, schedule, *batch) > 0


def test_distillation_keeps_the_weights_of_the_best_validation(pipe, small):
    seen = []
    def eval_fn(unet):
        seen.append({k: v.clone() for k, v in unet.state_dict().items() if "lora_B" in k})
        return {"validation_all": 1.0 / len(seen)}  # the first evaluation is the best
    student, history = distill_lcm(pipe.unet, small, steps=4, lora_rank=4, batch_size=8, eval_fn=eval_fn, eval_every=2)
    kept = {k: v for k, v in student.state_dict().items() if "lora_B" in k}
    assert len(seen) == 2 and kept and all(torch.equal(kept[k], seen[0][k]) for k in kept)
    assert any(not torch.equal(seen[0][k], seen[1][k]) for k in kept)  # the last weights differ: they were not kept
    assert [h["validation_all"] for h in history if "validation_all" in h] == [1.0, 0.5]
    validation, test = eval_prompts(100, "train", seed=VALIDATION_SEED), eval_prompts(100)
    assert sum(v == t for v, t in zip(validation, test)) < 10  # stopping is chosen on other captions than the ones the lecture reports


def test_flow_training_runs_and_its_loss_is_the_velocity_error(pipe, small):
    from diffusers import FlowMatchEulerDiscreteScheduler
    prompts = {"some": eval_prompts(2)}
    unet, history = train_flow_unet(small, steps=2, batch_size=8, eval_fn=sampling_eval(pipe, FlowMatchEulerDiscreteScheduler(), 2, prompt_sets=prompts),
                                    eval_every=2)  # the flow model's evaluation during training: lecture 8's, with the flow sampler
    assert len(history) == 2 and all(np.isfinite(h["loss"]) for h in history) and 0 <= history[-1]["some_all"] <= 1
    schedule, x0, noise = NoiseSchedule.named(), torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)

    class Oracle(torch.nn.Module):  # predicts the true velocity: the loss must be zero
        def forward(self, x, t, encoder_hidden_states): return type("Out", (), {"sample": noise - x0})()
    assert flow_loss(Oracle(), schedule, x0, None, torch.tensor([0, 999]), noise) == 0
    assert flow_loss(Oracle(), schedule, x0, None, torch.tensor([0, 999]), noise, sampling="logit-normal", shift=3.0) == 0
    _, sd3_history = train_flow_unet(small, steps=2, batch_size=8, sampling="logit-normal", shift=3.0)  # SD3's recipe: the same seed, batches and noise...
    assert np.isfinite(sd3_history[0]["loss"]) and sd3_history[0]["loss"] != history[0]["loss"]  # ...at other noise levels, so another loss
    with pytest.raises(ValueError, match="sampling=.lognormal. is not accepted"): train_flow_unet(small, steps=2, batch_size=8, sampling="lognormal")


def test_shipped_lcm_lora_is_small_safetensors_for_sdcourse_tiny_and_keeps_its_score(lcm_pipe):
    folder = shipped_path(LCM_LORA)
    files = {p.name for p in folder.iterdir()}
    assert "pytorch_lora_weights.safetensors" in files and not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)
    assert sum(p.stat().st_size for p in folder.iterdir()) < 3e6
    measurements = json.loads(shipped_path("lectures", "15_fewer_steps", "measurements.json").read_text())
    recorded = measurements["LCM-LoRA, 4, train"]
    now = measure_sampling(lcm_pipe, None, 4, 1.0, 100)
    assert now["all"] >= recorded["all"] - 0.05, (now, recorded)
    assert recorded["all"] >= 0.9 * measurements["teacher, DPM-Solver++, 20, train"]["all"]
    one, control = measurements["LCM-LoRA, 1, heldout"]["all"], measurements["teacher, LCM sampler, w = 1, 1, heldout"]["all"]
    assert one - control > 2 * ((one * (1 - one) + control * (1 - control)) / 200) ** 0.5  # distilled: at 1 step it clearly beats the teacher under its sampler



@pytest.mark.slow
def test_the_shipped_flow_model_scores_what_lecture_15_recorded(flow_pipe):
    "Measured as the lecture measured it (the same 200 prompts, seeds, 4 Euler steps, guidance 5): a flow UNet left over from another base or dataset would not."
    recorded = json.loads(shipped_path("lectures", "15_fewer_steps", "measurements.json").read_text())["flow matching, Euler, 4, train"]
    now = measure_sampling(flow_pipe, None, 4, 5.0, 200, "train")
    assert all(abs(now[k] - recorded[k]) <= 0.03 for k in ("colour", "shape", "position", "background", "all")), (now, recorded)

@pytest.mark.slow
def test_few_steps_are_measured_for_every_model(pipe, lcm_pipe, flow_pipe):
    results = measure_steps({"LCM-LoRA": (lcm_pipe, None, 1.0), "flow": (flow_pipe, None, 5.0), "teacher": (pipe, "dpm++", 5.0)}, steps=(1, 4), n=20)
    assert len(results) == 3 * 2 * 2
    assert results["teacher, 4, train"]["unet_calls"] == 8 and results["LCM-LoRA, 4, train"]["unet_calls"] == 4
    assert results["LCM-LoRA, 4, train"]["all"] > results["teacher, 4, train"]["all"]  # the point of distillation
    metrics = measure_metrics({"LCM-LoRA": (lcm_pipe, None, 1.0), "teacher": (pipe, "dpm++", 5.0)}, settings=(("LCM-LoRA", 4), ("teacher", 20), ("LCM", 4)), n=20)
    assert set(metrics) == {"LCM-LoRA, 4", "teacher, 20"}  # a setting whose model is not given is left out
    assert metrics["LCM-LoRA, 4"]["grader_all"] >= 0.8 and metrics["LCM-LoRA, 4"]["images"] == 20 and 0 < metrics["teacher, 20"]["diversity"] < 2
    flow_record = json.loads((shipped_path(*FLOW_UNET) / "training.json").read_text())
    assert flow_record["steps"] == 3500 and flow_record["history"][-1]["train_all"] >= 0.9


def test_bad_input_is_refused_with_a_message(pipe, flow_pipe):
    with pytest.raises(ValueError, match=r"steps must be an int in \[1, 50\], got 51"): lcm_timesteps(51)
    with pytest.raises(ValueError, match=r"steps must be an int in \[1, 1000\], got 0"): flow_sigmas(0)
    with pytest.raises(ValueError, match="scheduler='ddpm' samples a model that predicts epsilon, but this model was trained to predict flow velocity"):
        generate(flow_pipe, "a red circle", scheduler="ddpm")
    with pytest.raises(ValueError, match="scheduler='ScratchFlowScheduler' samples a model that predicts flow velocity"):
        generate(pipe, "a red circle", scheduler=ScratchFlowScheduler())
    other = make_pipeline(make_unet(block_out_channels=(32, 32, 64)), pipe.vae, pipe.text_encoder, pipe.tokenizer)
    with pytest.raises(ValueError, match=r"\(a LoRA for another base model\?\)"): with_lcm(other)
    with pytest.raises(FileNotFoundError, match="no LCM-LoRA at '/nonexistent/lcm'"): with_lcm(load_pipeline(), "/nonexistent/lcm")
    with pytest.raises(ValueError, match="is not an LCM-LoRA"): with_lcm(load_pipeline(), shipped_path("lectures", "10_lora", "stars"))


def test_lcm_option_warns_about_steps_and_guidance_it_was_not_distilled_for():
    assert LCM_OPTION.schedulers == ("lcm",) and LCM_OPTION.changes == "scheduler" and not LCM_OPTION.active(dict(scheduler="dpm++"))
    assert LCM_OPTION.defaults == dict(steps=4, guidance_scale=1.0)
    with pytest.warns(UserWarning, match="gains nothing past 8"): LCM_OPTION.apply(load_pipeline(), dict(scheduler="lcm", steps=20))
    with pytest.warns(UserWarning, match="guidance 5 is already distilled"): LCM_OPTION.apply(load_pipeline(), dict(scheduler="lcm", guidance=5.0))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="--")  # none of the option's own warnings
        recipe = LCM_OPTION.apply(load_pipeline(), dict(scheduler="lcm", steps=4, guidance=None))
    assert recipe["lcm_lora"] == LCM_LORA and set(recipe["fingerprints"]) == {"lcm_lora"}


def test_cli_generate_with_lcm_and_reproduce(tmp_path, capsys):
    out = tmp_path / "lcm.png"
    assert main(["generate", "a large red circle in the center", "--scheduler", "lcm", "-o", str(out)]) == 0
    recipe = png_info(out)
    assert (recipe["scheduler"], recipe["steps"], recipe["guidance_scale"], recipe["lcm_lora"]) == ("lcm", 4, 1.0, LCM_LORA)
    assert np.array_equal(np.asarray(reproduce(out)), np.asarray(Image.open(out).convert("RGB")))
    assert main(["generate", "a large red circle in the center", "-o", str(tmp_path / "plain.png")]) == 0
    assert (png_info(tmp_path / "plain.png")["steps"], png_info(tmp_path / "plain.png")["guidance_scale"]) == (20, 5.0)  # the defaults without lcm
    assert main(["generate", "a red circle", "--scheduler", "lcm", "--steps", "30", "-o", str(tmp_path / "many.png")]) == 0
    assert "warning: --steps 30 with --scheduler lcm" in capsys.readouterr().err


def test_cli_bad_lcm_input(tmp_path, capsys):
    assert main(["generate", "a red circle", "--lcm-lora", str(tmp_path), "-o", str(tmp_path / "a.png")]) == 2  # it would change nothing
    assert "--lcm-lora needs --scheduler lcm" in capsys.readouterr().err
    assert main(["generate", "a red circle", "--scheduler", "lcm", "--lcm-lora", str(tmp_path), "-o", str(tmp_path / "b.png")]) == 1
    assert "no LCM-LoRA at" in capsys.readouterr().err
    assert main(["generate", "a red circle", "--scheduler", "lcm", "--steps", "60", "-o", str(tmp_path / "c.png")]) == 2  # a number outside its range
    assert "--steps 60 with --scheduler lcm: LCM samples on the 50 timesteps it was distilled on, so it takes 1 to 50 steps" in capsys.readouterr().err
    assert not list(tmp_path.glob("?.png"))


def test_consistency_scalings_checker_passes_the_reference_and_names_mistakes():
    assert check_consistency_scalings(consistency_scalings)
    assert not check_consistency_scalings(lambda t: (_ for _ in ()).throw(NotImplementedError())).attempted
    scaled = lambda t: t.float() * 10
    for wrong, hint in ((lambda t: consistency_scalings(t)[::-1], "swapped"),
                        (lambda t: consistency_scalings(t, timestep_scaling=1.0), "the timestep is not scaled"),
                        (lambda t: (0.5 / (scaled(t)**2 + 0.5), scaled(t) / (scaled(t)**2 + 0.5).sqrt()), "sigma_data is not squared"),
                        (lambda t: (consistency_scalings(t)[0], scaled(t) / (scaled(t)**2 + 0.25)), "lacks its square root"),
                        (lambda t: consistency_scalings(t + 1), "the boundary condition needs exactly (1, 0)"),
                        (lambda t: torch.stack(consistency_scalings(t)), "return a pair")):
        result = check_consistency_scalings(wrong)
        assert not result and hint in str(result), (hint, str(result))
