import warnings

import pytest, torch
from diffusers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler

from sdcourse.exercises import check_ddim_step, check_guided_noise
from sdcourse.sampling import (SCHEDULERS, SPACINGS, GuidanceWidget, ScratchScheduler, ddim_step, ddpm_step, draw_noise, euler_step, generate,
                               grades, guided_noise, make_scheduler, measure_sampling, sampling_eval, sampling_timesteps, seed_generators, sigma_at, slerp)
from sdcourse.core import tensor_to_pil
from sdcourse.data import eval_prompts, grader_accuracy
from sdcourse.schedules import SCHEDULER_CONFIG
from sdcourse.unet import make_unet

PROMPTS = eval_prompts(4)


def step_counts(spacing): return (1, 10, 50, 999) if spacing == "leading" else (1, 10, 50, 1000)


@pytest.mark.parametrize("spacing", SPACINGS)
def test_timesteps_equal_diffusers(spacing):
    for steps in step_counts(spacing) + (7, 20):
        s = DDIMScheduler(**SCHEDULER_CONFIG, timestep_spacing=spacing); s.set_timesteps(steps)
        assert torch.equal(sampling_timesteps(steps, 1000, spacing), s.timesteps), steps


def test_timesteps_bad_input():
    with pytest.raises(ValueError, match="reaches timestep 1000"): sampling_timesteps(1000, 1000, "leading")
    with pytest.raises(ValueError, match=r"steps must be an int in \[1, 1000\]"): sampling_timesteps(0)
    with pytest.raises(ValueError, match="spacing='even' is not accepted"): sampling_timesteps(10, spacing="even")


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("variance", ["small", "large"])
def test_ddpm_step_equals_diffusers(spacing, variance):
    g = torch.Generator().manual_seed(0)
    for steps in step_counts(spacing)[1:]:
        s = DDPMScheduler(**SCHEDULER_CONFIG, clip_sample=False, timestep_spacing=spacing, variance_type=f"fixed_{variance}")
        s.set_timesteps(steps)
        for i in sorted({0, 1, steps // 2, steps - 2, steps - 1}):
            t, prev_t = int(s.timesteps[i]), (int(s.timesteps[i + 1]) if i + 1 < steps else -1)
            x_t, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
            theirs = s.step(eps, t, x_t, generator=torch.Generator().manual_seed(i)).prev_sample
            noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(i))
            torch.testing.assert_close(ddpm_step(x_t, eps, t, prev_t, s.alphas_cumprod, noise, variance), theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
def test_ddim_step_equals_diffusers(spacing, eta):
    g = torch.Generator().manual_seed(1)
    for steps in (5, 20, 50, 999):
        s = DDIMScheduler(**SCHEDULER_CONFIG, clip_sample=False, timestep_spacing=spacing); s.set_timesteps(steps)
        for t in s.timesteps[[0, steps // 2, -1]]:
            x_t, eps, noise = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
            theirs = s.step(eps, t, x_t, eta=eta, variance_noise=noise).prev_sample
            torch.testing.assert_close(ddim_step(x_t, eps, int(t), int(t) - 1000 // steps, s.alphas_cumprod, eta, noise), theirs, atol=1e-5, rtol=0)


def test_steps_properties():
    alpha_bar = DDPMScheduler(**SCHEDULER_CONFIG).alphas_cumprod
    x_t, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    # eta = 1 is DDPM's step with the posterior variance; t = 0 adds no noise; a missing noise tensor is an error, not a silent zero
    noise = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(ddim_step(x_t, eps, 500, 450, alpha_bar, 1.0, noise), ddpm_step(x_t, eps, 500, 450, alpha_bar, noise), atol=1e-5, rtol=0)
    torch.testing.assert_close(ddpm_step(x_t, eps, 0, -1, alpha_bar), ddpm_step(x_t, eps, 0, -1, alpha_bar, noise))
    with pytest.raises(ValueError, match="noise is needed for a DDPM step at t=500"): ddpm_step(x_t, eps, 500, 450, alpha_bar)
    with pytest.raises(ValueError, match="noise is needed for a DDIM step with eta=0.5"): ddim_step(x_t, eps, 500, 450, alpha_bar, 0.5)
    with pytest.raises(ValueError, match="variance='learned' is not accepted"): ddpm_step(x_t, eps, 500, 450, alpha_bar, noise, "learned")
    # w = 0 is the unconditional prediction, w = 1 the conditional one
    u, c = torch.randn(3), torch.randn(3)
    assert torch.equal(guided_noise(u, c, 0), u) and torch.allclose(guided_noise(u, c, 1), c)


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_generate_equals_the_pipeline(pipe, name):
    for w, negative in [(5.0, None), (7.5, ["a small blue circle", "", "a red square", "a star"])]:
        ours = generate(pipe, PROMPTS, negative, 6, w, seed=3, scheduler=make_scheduler(name, pipe.scheduler.config), output_type="pt")
        pipe.scheduler = make_scheduler(name, pipe.scheduler.config)
        theirs = pipe(PROMPTS, negative_prompt=negative, num_inference_steps=6, guidance_scale=w, generator=seed_generators(3, 4), output_type="pt").images
        pipe.scheduler = make_scheduler("dpm++", pipe.scheduler.config)
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


@pytest.mark.parametrize("spacing", SPACINGS)
def test_euler_equals_diffusers_over_whole_trajectories(spacing):
    g = torch.Generator().manual_seed(2)
    for steps in (1, 7, 20, 999 if spacing == "leading" else 1000):
        theirs, ours = EulerDiscreteScheduler(**SCHEDULER_CONFIG, timestep_spacing=spacing), ScratchScheduler("euler", dict(timestep_spacing=spacing))
        theirs.set_timesteps(steps); ours.set_timesteps(steps)
        torch.testing.assert_close(ours.timesteps, theirs.timesteps, atol=0, rtol=0)
        torch.testing.assert_close(ours.sigmas, theirs.sigmas, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(torch.as_tensor(ours.init_noise_sigma), torch.as_tensor(theirs.init_noise_sigma), atol=1e-5, rtol=0)
        x = torch.randn(2, 4, 8, 8, generator=g) * theirs.init_noise_sigma
        for t in theirs.timesteps:
            eps = torch.randn(2, 4, 8, 8, generator=g)
            torch.testing.assert_close(ours.scale_model_input(x, t), theirs.scale_model_input(x, t), atol=1e-6, rtol=0)
            expected = theirs.step(eps, t, x).prev_sample
            torch.testing.assert_close(ours.step(eps, t, x).prev_sample, expected, atol=1e-4, rtol=0)
            x = expected


def test_euler_is_ddim_in_sigma_space():
    alpha_bar = DDPMScheduler(**SCHEDULER_CONFIG).alphas_cumprod
    x_t, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    for t, prev_t in ((999, 949), (700, 600), (50, 0)):
        via_euler = euler_step(x_t / alpha_bar[t].sqrt(), eps, sigma_at(alpha_bar, t), sigma_at(alpha_bar, prev_t)) * alpha_bar[prev_t].sqrt()
        torch.testing.assert_close(via_euler, ddim_step(x_t, eps, t, prev_t, alpha_bar), atol=1e-5, rtol=0)
    # sigma_at interpolates between integer timesteps and equals the closed form on them
    sigma = ((1 - alpha_bar) / alpha_bar).sqrt()
    torch.testing.assert_close(sigma_at(alpha_bar, torch.tensor([0.0, 500.0, 999.0])), sigma[[0, 500, 999]])
    torch.testing.assert_close(sigma_at(alpha_bar, 500.25), 0.75 * sigma[500] + 0.25 * sigma[501])


def test_scratch_euler_add_noise_equals_diffusers():
    theirs = EulerDiscreteScheduler(**SCHEDULER_CONFIG, timestep_spacing="leading"); theirs.set_timesteps(10)
    ours = ScratchScheduler("euler"); ours.set_timesteps(10)
    x0, noise, t = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), theirs.timesteps[[0, 4, 9]]
    torch.testing.assert_close(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t), atol=1e-5, rtol=0)


def test_slerp_properties():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    torch.testing.assert_close(slerp(a, b, 0.0), a); torch.testing.assert_close(slerp(a, b, 1.0), b)
    # along the arc the norm stays between the ends' (a great circle for equal norms); the straight line sags by about 1/sqrt(2)
    for f in (0.25, 0.5, 0.75):
        assert min(a.norm(), b.norm()) * 0.97 < slerp(a, b, f).norm() < max(a.norm(), b.norm()) * 1.03
    assert torch.lerp(a, b, 0.5).norm() < 0.8 * a.norm()
    # for equal norms it is the great circle: the norm is kept exactly and equal steps turn equal angles
    b = b * a.norm() / b.norm()
    cos = lambda u, v: (u * v).sum() / (u.norm() * v.norm())
    torch.testing.assert_close(slerp(a, b, 0.3).norm(), a.norm())
    torch.testing.assert_close(cos(a, slerp(a, b, 0.25)), cos(slerp(a, b, 0.25), slerp(a, b, 0.5)), atol=1e-5, rtol=0)
    # (nearly) parallel inputs fall back to the straight line
    torch.testing.assert_close(slerp(a, 2 * a, 0.5), 1.5 * a)


@pytest.mark.parametrize("kind,eta,steps", [("ddim", 0.0, 10), ("ddim", 0.5, 10), ("ddpm", 0.0, 25), ("euler", 0.0, 10)])
def test_scratch_scheduler_equals_diffusers_in_the_loop(pipe, kind, eta, steps):
    ours = generate(pipe, PROMPTS[:2], steps=steps, scheduler=ScratchScheduler(kind, pipe.scheduler.config, eta=eta), eta=eta, output_type="pt")
    theirs = generate(pipe, PROMPTS[:2], steps=steps, scheduler=make_scheduler(kind, pipe.scheduler.config), eta=eta, output_type="pt")
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_scratch_scheduler_add_noise_equals_diffusers():
    ours, theirs = ScratchScheduler("ddim"), DDIMScheduler(**SCHEDULER_CONFIG)
    x0, noise, t = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.tensor([999, 500, 1])
    torch.testing.assert_close(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t), atol=1e-6, rtol=0)


def test_seeds_reproduce_images(pipe):
    first = generate(pipe, PROMPTS, steps=5, seed=11, output_type="pt")
    assert torch.equal(first, generate(pipe, PROMPTS, steps=5, seed=11, output_type="pt"))
    assert torch.equal(first[2:], generate(pipe, PROMPTS[2:], steps=5, seed=13, output_type="pt"))  # image i has seed + i
    assert (first - generate(pipe, PROMPTS, steps=5, seed=12, output_type="pt")).abs().max() > 0.1
    # a CPU generator gives the same starting noise whatever the device
    assert torch.equal(draw_noise((2, 4, 8, 8), seed_generators(0, 2), "cpu"), draw_noise((2, 4, 8, 8), [torch.Generator().manual_seed(i) for i in range(2)]))


def test_guidance_zero_is_the_unconditional_model(pipe):
    torch.testing.assert_close(generate(pipe, PROMPTS[:2], steps=5, guidance_scale=0, output_type="latent"),
                               generate(pipe, ["", ""], steps=5, guidance_scale=1, output_type="latent"))
    # a negative prompt changes the images
    plain = generate(pipe, PROMPTS[:2], steps=5, output_type="pt")
    assert (plain - generate(pipe, PROMPTS[:2], "a large red circle", steps=5, output_type="pt")).abs().max() > 0.05


def test_generate_outputs(pipe):
    images = generate(pipe, PROMPTS[0], steps=3)
    assert len(images) == 1 and images[0].size == (64, 64)
    assert generate(pipe, PROMPTS[:2], steps=3, output_type="latent").shape == (2, 4, 8, 8)
    assert generate(pipe, PROMPTS[:1], steps=3, height=96, width=128, output_type="pt").shape == (1, 3, 96, 128)
    torch.testing.assert_close(generate(pipe, PROMPTS[:1], steps=3, output_type="pt", show_progress=True), generate(pipe, PROMPTS[:1], steps=3, output_type="pt"))


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(steps=0), ValueError, r"steps must be an int in \[1, 999\], got 0"),
    (dict(steps=1001), ValueError, r"steps must be an int in \[1, 999\], got 1001"),
    (dict(steps=2.5), TypeError, "steps must be an int"),
    (dict(guidance_scale=-0.5), ValueError, r"guidance_scale must be a finite number in \[0, inf\] \(0: unconditional"),
    (dict(guidance_scale=float("nan")), ValueError, r"guidance_scale must be a finite number in \[0, inf\]"),
    (dict(guidance_scale=float("inf")), ValueError, r"guidance_scale must be a finite number in \[0, inf\]"),
    (dict(guidance_scale="5"), TypeError, r"guidance_scale must be a number \(0: unconditional, 1: conditional, > 1: guided\), got str"),
    (dict(height=60), ValueError, "height must be a positive multiple of 8"),
    (dict(width=0), ValueError, "width must be a positive multiple of 8"),
    (dict(negative_prompt=["a", "b", "c"]), ValueError, "negative_prompt has 3 entries for 2 prompts"),
    (dict(negative_prompt=3), TypeError, "negative_prompt must be None, a str or a list of str"),
    (dict(seed="1"), TypeError, "seed must be an int >= 0, a torch.Generator or a list"),
    (dict(seed=-1), ValueError, "seed must be an int >= 0"),
    (dict(seed=2**64), ValueError, "seed must be an int >= 0"),
    (dict(seed=[torch.Generator()]), ValueError, "seed is a list of 1 generators for 2 prompts"),
    (dict(scheduler="heun"), ValueError, r"scheduler='heun' is not accepted; choose one of \('ddpm', 'ddim', 'dpm\+\+', 'euler', 'pndm', 'lms', 'plms'\)"),
    (dict(output_type="np"), ValueError, "output_type='np' is not accepted"),
])
def test_generate_bad_input(pipe, kwargs, error, match):
    with pytest.raises(error, match=match): generate(pipe, PROMPTS[:2], **kwargs)


def test_generate_bad_prompts(pipe):
    for prompt in ([], None, ["ok", 3]):
        with pytest.raises(TypeError, match="prompt must be a str or a non-empty list of str"): generate(pipe, prompt)


def test_guidance_widget_updates_headless(pipe):
    widget = GuidanceWidget(pipe, prompt=PROMPTS[0], steps=4)
    first = widget.image.value
    assert first[:4] == b"\x89PNG" and len(widget.images) == 4 and widget.seconds > 0
    expected = generate(pipe, [PROMPTS[0]] * 4, [""] * 4, 4, 5.0, 0, make_scheduler("dpm++", pipe.scheduler.config), output_type="pil")
    assert [im.tobytes() for im in widget.images] == [im.tobytes() for im in expected]
    for control, value in [(widget.guidance_scale, 12.0), (widget.seed, 5), (widget.scheduler, "ddim"), (widget.negative_prompt, "a red circle"),
                           (widget.prompt, PROMPTS[1]), (widget.steps, 6)]:
        before = widget.image.value
        control.value = value
        assert widget.image.value != before, control.description
    assert "seeds 5 to 8, 6 ddim steps, guidance 12" in widget.info.value


def test_measure_sampling_equals_generating_and_grading_by_hand(pipe):
    r = measure_sampling(pipe, "ddim", 5, 5.0, n=6, batch_size=4)
    prompts = eval_prompts(6, "train")
    latents = torch.cat([generate(pipe, prompts[:4], None, 5, 5.0, 0, "ddim", output_type="latent"),
                         generate(pipe, prompts[4:], None, 5, 5.0, 4, "ddim", output_type="latent")])  # its batches and seeds
    with torch.no_grad(): decoded = torch.cat([pipe.vae.decode(z / pipe.vae.config.scaling_factor).sample for z in latents.split(4)])
    assert r["latent_std"] == pytest.approx(latents.std().item(), rel=1e-6)
    assert r["clipped"] == pytest.approx((decoded.abs() > 1).float().mean().item(), abs=1e-6)
    assert {k: r[k] for k in ("colour", "shape", "all")} == {k: v for k, v in grader_accuracy(tensor_to_pil((decoded / 2 + 0.5).clamp(0, 1)), prompts).items() if k in ("colour", "shape", "all")}
    assert r["seconds_per_image"] > 0


def test_exercise_checkers():
    assert check_guided_noise(lambda u, c, w: u + w * (c - u))
    assert "swapped" in check_guided_noise(lambda u, c, w: c + w * (u - c)).message
    assert "difference" in check_guided_noise(lambda u, c, w: w * c).message
    assert "eps_uncond is missing" in check_guided_noise(lambda u, c, w: w * (c - u)).message

    def ddim(x, e, t, p, ab):
        x0 = (x - (1 - ab[t]).sqrt() * e) / ab[t].sqrt()
        return ab[p].sqrt() * x0 + (1 - ab[p]).sqrt() * e
    assert check_ddim_step(ddim)
    assert "alpha_bar[prev_t]" in check_ddim_step(lambda x, e, t, p, ab: ddim(x, e, t, t - 1, ab)).message
    assert "off by one" in check_ddim_step(lambda x, e, t, p, ab: ddim(x, e, t - 1, p - 1, ab)).message
    assert "swapped" in check_ddim_step(lambda x, e, t, p, ab: ddim(x, e, p, t, ab)).message
    assert "raised" in check_ddim_step(lambda x, e, t, p, ab: x[99]).message


def test_generate_warns_about_words_the_model_never_learned(pipe):
    with pytest.warns(UserWarning) as caught:
        generate(pipe, "a crimson oval in the top left", negative_prompt="blurry", steps=2)
    message = str(caught[0].message)
    assert "'crimson' (for the colour, the course's captions say red, orange, yellow, green, blue, purple)" in message
    assert "'oval' (for the shape, the course's captions say circle, square, triangle, diamond)" in message and "'blurry'" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the course's own words: no warning (libraries' deprecation notes aside)
        generate(pipe, ["a big GREEN square, in the top left corner!", "a little purple diamond at the centre on a black background"], steps=2)


def test_control_characters_are_refused_by_name_and_place(pipe):
    "The tokenizer would drop them silently and join the words around them ('red\\x07circle' becomes one unknown word)."
    with pytest.raises(ValueError, match=r"prompt holds the control character U\+0007 at position 5"): generate(pipe, "a red\x07circle", steps=2)
    with pytest.raises(ValueError, match=r"negative_prompt holds the control character U\+200B"): generate(pipe, "a red circle", negative_prompt="blue\u200b", steps=2)
    assert len(generate(pipe, "a red circle\tin the\ncenter\r", steps=2)) == 1  # whitespace is whitespace


def test_sampling_eval_grades_what_the_trained_unet_draws_with_any_scheduler(pipe):
    ddim = make_scheduler("ddim", pipe.scheduler.config)
    scores = sampling_eval(pipe, ddim, steps=10, guidance_scale=3.0, prompt_sets={"mine": PROMPTS})(pipe.unet)
    expected = grader_accuracy(generate(pipe, PROMPTS, steps=10, guidance_scale=3.0, scheduler=ddim), PROMPTS)
    assert scores == {f"mine_{k}": v for k, v in expected.items()} and scores["mine_all"] >= 0.5
    untrained = make_unet().eval()  # the UNet under evaluation draws, not the pipeline's own
    assert sampling_eval(pipe, ddim, steps=10, guidance_scale=3.0, prompt_sets={"mine": PROMPTS})(untrained)["mine_all"] < scores["mine_all"]
    default = sampling_eval(pipe, n=2, steps=2)(pipe.unet)  # n held-back captions of the training and of the held-out pairs
    assert {"train_all", "heldout_all"} <= set(default) and all(k.split("_")[0] in ("train", "heldout") for k in default)


def test_measure_sampling_draws_what_it_is_asked_and_grades_the_captions(pipe):
    default = measure_sampling(pipe, "dpm++", 4, n=4, split="heldout")
    given = measure_sampling(pipe, "dpm++", 4, prompts=eval_prompts(4, "heldout"))
    assert grades(given) == grades(default) and set(default) - set(grades(default)) == {"seconds_per_image", "latent_std", "clipped"}
    other_words = [p.replace("circle", "ring").replace("square", "box") for p in PROMPTS]  # words the model never learned...
    renamed = measure_sampling(pipe, "dpm++", 4, prompts=PROMPTS, asked=other_words)  # ...graded against the captions
    assert grades(renamed) == grader_accuracy(generate(pipe, other_words, steps=4, scheduler="dpm++"), PROMPTS)  # drawn from `asked`, graded on `prompts`
    assert other_words != PROMPTS and grades(renamed) != grades(measure_sampling(pipe, "dpm++", 4, prompts=PROMPTS))
    with pytest.raises(ValueError, match="asked has 1 prompts for 4 captions"): measure_sampling(pipe, "dpm++", 4, prompts=PROMPTS, asked=PROMPTS[:1])


def test_plms_is_an_alias_of_pndm(pipe):
    "'plms' (SD 1.x's name for PNDM without its Runge-Kutta warm-up) makes the same scheduler as 'pndm' and draws the same images."
    from sdcourse.sampling import SCHEDULER_ALIASES, scheduler_name
    assert SCHEDULER_ALIASES == {"plms": "pndm"} and scheduler_name("plms") == "pndm" and scheduler_name("ddim") == "ddim"
    plms = make_scheduler("plms")
    assert type(plms).__name__ == "PNDMScheduler" and plms.config.skip_prk_steps and dict(plms.config) == dict(make_scheduler("pndm").config)
    a, b = (generate(pipe, PROMPTS[:2], steps=6, scheduler=name, output_type="pt") for name in ("plms", "pndm"))
    assert torch.equal(a, b)
    assert GuidanceWidget(pipe, scheduler="plms", steps=2, n_images=1).scheduler.value == "pndm"  # the widget lists each sampler once
