import numpy as np
import pytest, torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

from sdcourse.data import make_example
from sdcourse.exercises import check_img2img_timesteps
from sdcourse.img2img import (check_strength, encode_source, img2img, img2img_timesteps, inpaint, latent_mask, masks, source_images,
                              start_index)
from sdcourse.sampling import SCHEDULERS, make_scheduler, seed_generators, to_images
from sdcourse.data import eval_prompts

IMAGES = [make_example(i, "train", seed=4)[0] for i in range(2)]
PROMPTS = eval_prompts(2)
SQUARE = Image.new("L", (64, 64), 0)
SQUARE.paste(255, (0, 0, 32, 32))


@pytest.fixture(scope="module")
def pipes(pipe):
    i2i, inp = StableDiffusionImg2ImgPipeline.from_pipe(pipe), StableDiffusionInpaintPipeline.from_pipe(pipe)
    for p in (i2i, inp): p.set_progress_bar_config(disable=True)
    return i2i, inp


def test_start_step():
    assert [start_index(10, s) for s in (0, 0.3, 0.58, 1.0)] == [10, 7, 5, 0]
    scheduler = make_scheduler("dpm++")
    assert len(img2img_timesteps(scheduler, 10, 0.0)) == 0
    assert img2img_timesteps(scheduler, 10, 0.3).tolist() == [300, 200, 100]
    assert torch.equal(img2img_timesteps(scheduler, 10, 1.0), scheduler.timesteps)
    for bad, error in ((1.5, ValueError), (-0.1, ValueError), ("0.5", TypeError), (True, TypeError), (float("nan"), ValueError)):
        with pytest.raises(error, match=r"strength must be a (finite )?number( in \[0, 1\])? \(0: keep the image, 1: start from pure noise\)"): check_strength(bad)


def test_source_images_match_diffusers_and_convert_modes():
    ours = source_images(IMAGES, 2)
    theirs = VaeImageProcessor(vae_scale_factor=8).preprocess(IMAGES)
    assert torch.equal(ours, theirs) and ours.stride() == theirs.stride()  # same values and same memory layout
    assert torch.equal(source_images(IMAGES[0].convert("RGBA"), 1), source_images(IMAGES[0], 1))
    grey = IMAGES[0].convert("L")
    out = source_images(grey, 1)
    assert out.shape == (1, 3, 64, 64) and torch.equal(out[:, 0], out[:, 1])
    with pytest.raises(ValueError, match="image is 60x64; the VAE needs .* multiples of 8"): source_images(IMAGES[0].resize((60, 64)), 1)
    with pytest.raises(ValueError, match="image has 2 entries for 3 prompts"): source_images(IMAGES, 3)
    with pytest.raises(ValueError, match="images of one size"): source_images([IMAGES[0], IMAGES[1].resize((32, 32))], 2)
    with pytest.raises(TypeError, match="image must be a PIL image or a list of them"): source_images(np.zeros((64, 64, 3)), 1)


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_img2img_equals_the_pipeline(pipe, pipes, name):
    for strength in (0.3, 0.75, 1.0):
        ours = img2img(pipe, IMAGES, PROMPTS, strength, steps=6, seed=5, scheduler=make_scheduler(name, pipe.scheduler.config), output_type="pt")
        pipes[0].scheduler = make_scheduler(name, pipe.scheduler.config)
        theirs = pipes[0](PROMPTS, image=IMAGES, strength=strength, num_inference_steps=6, guidance_scale=5.0,
                          generator=seed_generators(5, 2), output_type="pt").images
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_img2img_ends_and_seeds(pipe):
    roundtrip = to_images(pipe.vae, encode_source(pipe.vae, source_images(IMAGES, 2), seed_generators(0, 2)), "pt")
    assert torch.equal(img2img(pipe, IMAGES, PROMPTS, 0.0, output_type="pt"), roundtrip)
    from sdcourse.core import pil_to_tensor
    assert ((roundtrip - pil_to_tensor(IMAGES)) ** 2).mean() < 0.002  # the VAE round trip is close to the source
    a = img2img(pipe, IMAGES, PROMPTS, 0.5, steps=6, seed=3, output_type="pt")
    assert torch.equal(a, img2img(pipe, IMAGES, PROMPTS, 0.5, steps=6, seed=3, output_type="pt"))
    torch.testing.assert_close(a[1:], img2img(pipe, IMAGES[1:], PROMPTS[1:], 0.5, steps=6, seed=4, output_type="pt"), atol=1e-5, rtol=0)
    assert (a - roundtrip).abs().max() > 0.1  # strength 0.5 with another caption changes the image
    assert len(img2img(pipe, IMAGES[0], "a red circle", 0.5, steps=4)) == 1  # one image for one prompt


def test_masks_threshold_and_checks():
    ramp = Image.fromarray((np.linspace(0, 1, 64)[None].repeat(64, 0) * 255).astype(np.uint8))
    m = masks(ramp, 2, (64, 64))
    assert m.shape == (2, 1, 64, 64) and set(m.unique().tolist()) == {0.0, 1.0} and m.mean() == 0.5
    theirs = VaeImageProcessor(vae_scale_factor=8, do_normalize=False, do_binarize=True, do_convert_grayscale=True).preprocess(ramp)
    assert torch.equal(m[:1], theirs)
    assert torch.equal(masks(ramp.convert("RGB"), 1, (64, 64)), masks(ramp, 1, (64, 64)))  # colour masks are read as grey
    assert latent_mask(masks(SQUARE, 1, (64, 64))).shape == (1, 1, 8, 8) and latent_mask(masks(SQUARE, 1, (64, 64))).sum() == 16
    with pytest.raises(ValueError, match="mask is 32x32 but the image is 64x64"): masks(SQUARE.resize((32, 32)), 1, (64, 64))
    with pytest.raises(ValueError, match="mask has 3 entries for 2 prompts"): masks([SQUARE] * 3, 2, (64, 64))
    with pytest.raises(TypeError, match="mask must be a PIL image or a list of them"): masks(torch.ones(64, 64), 1, (64, 64))


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_inpaint_equals_the_pipeline(pipe, pipes, name):
    for strength in (0.75, 1.0):
        ours = inpaint(pipe, IMAGES, SQUARE, PROMPTS, strength, steps=6, seed=5, scheduler=make_scheduler(name, pipe.scheduler.config), output_type="pt")
        pipes[1].scheduler = make_scheduler(name, pipe.scheduler.config)
        theirs = pipes[1](PROMPTS, image=IMAGES, mask_image=[SQUARE] * 2, strength=strength, num_inference_steps=6, guidance_scale=5.0,
                          generator=seed_generators(5, 2), output_type="pt").images
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_inpaint_keeps_the_known_latent(pipe):
    z = inpaint(pipe, IMAGES, SQUARE, PROMPTS, steps=6, seed=2, output_type="latent")
    known = encode_source(pipe.vae, source_images(IMAGES, 2), seed_generators(2, 2))
    keep = 1 - latent_mask(masks(SQUARE, 2, (64, 64)))
    assert torch.equal(z * keep, known * keep)  # outside the mask, exactly the source's latent
    assert ((z - known) * (1 - keep)).abs().max() > 0.1  # inside, something new
    with pytest.raises(ValueError, match="strength=0.0 with steps=20 runs no step"): inpaint(pipe, IMAGES[0], SQUARE, "a red circle", strength=0.0)


def test_bad_input(pipe):
    with pytest.raises(ValueError, match=r"strength must be a finite number in \[0, 1\]"): img2img(pipe, IMAGES[0], "a red circle", strength=2)
    with pytest.raises(ValueError, match=r"steps must be an int in \[1, 999\]"): img2img(pipe, IMAGES[0], "a red circle", steps=0)
    with pytest.raises(ValueError, match=r"guidance_scale must be a finite number in \[0, inf\]"): inpaint(pipe, IMAGES[0], SQUARE, "a red circle", guidance_scale=-2)
    with pytest.raises(ValueError, match="output_type='np' is not accepted"): img2img(pipe, IMAGES[0], "a red circle", output_type="np")


def test_exercise_checker():
    assert check_img2img_timesteps(lambda ts, s: ts[len(ts) - int(len(ts) * s):])
    assert "reversed" in check_img2img_timesteps(lambda ts, s: ts[int(len(ts) * s):]).message
    assert "off by one" in check_img2img_timesteps(lambda ts, s: ts[len(ts) - int(len(ts) * s) + 1:]).message
    assert "noisiest" in check_img2img_timesteps(lambda ts, s: ts[:int(len(ts) * s)]).message
    assert "truncates" in check_img2img_timesteps(lambda ts, s: ts[len(ts) - round(len(ts) * s):]).message
