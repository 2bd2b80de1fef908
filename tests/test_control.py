"Lecture 14: ControlNet from scratch equals diffusers', starts as an exact no-op, trains only itself, steers the shape; the CLI; bad input."
import json

import numpy as np
import pytest, torch
from PIL import Image

from sdcourse.control import (CONTROLNET, ControlledUNet, ScratchControlNet, conflicting_masks, control_batch, control_cache, control_examples,
                              control_images, control_scores, draw_with_masks, full_caption, generate_with_control, load_controlnet, make_controlnet,
                              mask_image, shape_iou, train_controlnet, who_wins, zero_conv)
from sdcourse.core import shipped_path
from sdcourse.data import example_mask, make_example, read_attributes
from sdcourse.exercises import check_zero_conv
from sdcourse.pipeline import main, png_info, reproduce
from sdcourse.sampling import generate
from sdcourse.text import encode_prompts
from sdcourse.training import batch_indices, load_pipeline, training_batch
from sdcourse.unet import ScratchUNet, make_unet


pytestmark = pytest.mark.usefixtures("no_progress_bars")  # stderr must hold the error alone


@pytest.fixture(scope="module")
def shipped(): return load_controlnet()


def inputs(pipe, n=2):
    "Latents, timesteps, text and control images for a direct call of a ControlNet."
    g = torch.Generator().manual_seed(0)
    captions = [make_example(i, "train", 11)[1] for i in range(n)]
    control = control_images([mask_image(example_mask(i, "train", 11)) for i in range(n)], n, (64, 64))
    return torch.randn(n, 4, 8, 8, generator=g), torch.tensor([700, 30][:n]), encode_prompts(pipe.text_encoder, pipe.tokenizer, captions), control


def test_zero_conv_outputs_zero_and_learns():
    conv = zero_conv(8, 16)
    out = conv(torch.randn(2, 8, 4, 4))
    assert out.shape == (2, 16, 4, 4) and (out == 0).all()
    (out - 1).pow(2).mean().backward()  # any loss that wants the output to move
    assert conv.weight.grad.abs().sum() > 0 and conv.bias.grad.abs().sum() > 0


def test_scratch_controlnet_loads_strictly_both_ways_and_gives_diffusers_residuals(pipe, shipped):
    theirs = make_controlnet(pipe.unet)
    theirs.load_state_dict(ScratchControlNet.from_unet(pipe.unet).state_dict(), strict=True)
    ours = ScratchControlNet.from_diffusers(shipped)
    x, t, context, control = inputs(pipe)
    with torch.no_grad():
        down, mid = ours(x, t, context, control, scale=0.6)
        down_ref, mid_ref = shipped(x, t, encoder_hidden_states=context, controlnet_cond=control, conditioning_scale=0.6, return_dict=False)
    assert len(down) == len(down_ref) == 6
    for a, b in zip(down + [mid], list(down_ref) + [mid_ref]):
        assert a.shape == b.shape and (a - b).abs().max() < 1e-5 and b.abs().max() > 1e-3  # equal, and not trivially zero


def test_from_unet_copies_the_encoder_half_and_starts_at_zero(pipe):
    ours = ScratchControlNet.from_unet(pipe.unet)
    unet = pipe.unet.state_dict()
    copied = [k for k in ours.state_dict() if not k.startswith("controlnet_")]
    assert copied and all(torch.equal(ours.state_dict()[k], unet[k]) for k in copied)
    x, t, context, control = inputs(pipe)
    down, mid = ours(x, t, context, control)
    assert all((r == 0).all() for r in down + [mid])


def test_scratch_unet_adds_residuals_where_diffusers_does(pipe, shipped):
    x, t, context, control = inputs(pipe)
    with torch.no_grad():
        down, mid = shipped(x, t, encoder_hidden_states=context, controlnet_cond=control, return_dict=False)
        ours = ScratchUNet.from_diffusers(pipe.unet)(x, t, context, list(down), mid)
        theirs = pipe.unet(x, t, encoder_hidden_states=context, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        plain = pipe.unet(x, t, encoder_hidden_states=context).sample
    assert (ours - theirs).abs().max() < 1e-5 and (theirs - plain).abs().max() > 1e-3


def test_an_untrained_controlnet_is_an_exact_no_op(pipe):
    prompts = [make_example(i, "train", 11)[1] for i in range(3)]
    masks = [mask_image(example_mask(i, "train", 11)) for i in range(3)]
    plain = generate(pipe, prompts, output_type="pt")
    assert torch.equal(generate_with_control(pipe, make_controlnet(pipe.unet), masks, prompts, output_type="pt"), plain)


def test_generate_with_control_equals_the_diffusers_controlnet_pipeline(pipe, shipped):
    from diffusers import StableDiffusionControlNetPipeline
    reference = StableDiffusionControlNetPipeline(**pipe.components, controlnet=shipped, requires_safety_checker=False)
    reference.set_progress_bar_config(disable=True)
    prompts = [make_example(i, "train", 11)[1] for i in range(3)]
    controls = [mask_image(example_mask(i, "train", 11)) for i in range(3)]
    theirs = reference(prompts, image=controls, num_inference_steps=12, guidance_scale=4.0, controlnet_conditioning_scale=1.3, output_type="pt",
                       generator=[torch.Generator().manual_seed(5 + i) for i in range(3)]).images
    ours = generate_with_control(pipe, shipped, controls, prompts, control_scale=1.3, steps=12, guidance_scale=4.0, seed=5, output_type="pt")
    assert (ours - theirs).abs().max() < 1e-4
    assert pipe.unet.__class__.__name__ == "UNet2DConditionModel"  # the pipeline given is left as it was


def test_one_control_image_serves_every_prompt(pipe, shipped):
    prompts = [make_example(i, "train", 11)[1] for i in range(2)]
    mask = mask_image(example_mask(0, "train", 11))
    assert torch.equal(generate_with_control(pipe, shipped, mask, prompts, output_type="pt"),
                       generate_with_control(pipe, shipped, [mask, mask], prompts, output_type="pt"))


def test_control_batch_pairs_each_latent_with_its_own_mask(pipe):
    cache = control_cache(pipe, 40)
    x0, context, t, noise, control = control_batch(cache, step=3, batch_size=8, seed=2)
    idx, _ = batch_indices(cache, 3, 8, 2)
    for a, b in zip((x0, context, t, noise), training_batch(cache, 3, 8, 2, 0.5)): assert torch.equal(a, b)
    assert control.shape == (8, 3, 64, 64) and 0 <= control.min() and control.max() <= 1
    for j, i in enumerate(idx.tolist()):
        assert np.abs(control[j, 0].numpy() - example_mask(i)).max() <= 0.5 / 255 + 1e-6


@pytest.mark.slow
def test_training_changes_only_the_controlnet_and_resumes(pipe, tmp_path):
    fresh = load_pipeline()
    before = {k: v.clone() for k, v in fresh.unet.state_dict().items()}
    cache = control_cache(fresh, 40)
    controlnet, history = train_controlnet(fresh, cache, steps=3, batch_size=8, checkpoint=tmp_path / "ckpt.safetensors", eval_every=3)
    assert 0 < history[-1]["iou"] < 1 and "iou" not in history[0]  # measured every 3 steps, as asked
    assert len(history) == 3 and all(torch.equal(v, before[k]) for k, v in fresh.unet.state_dict().items())
    assert any(conv.weight.abs().sum() > 0 for conv in controlnet.controlnet_down_blocks)  # the zero convolutions left zero
    _, resumed = train_controlnet(load_pipeline(), cache, steps=5, batch_size=8, checkpoint=tmp_path / "ckpt.safetensors", resume=True)
    assert [h["step"] for h in resumed] == [1, 2, 3, 4, 5] and resumed[:3] == history


def test_shape_iou_of_the_dataset_and_of_a_blank_image():
    image, _, _ = make_example(4)
    assert shape_iou(image, example_mask(4)) > 0.9
    assert shape_iou(Image.new("RGB", (64, 64), (240, 240, 240)), example_mask(4)) == 0.0
    assert shape_iou(image, np.zeros((64, 64))) == 0.0


def test_conflicting_masks_change_one_attribute():
    _, attributes, _ = control_examples(6)
    for attribute in ("shape", "position", "size"):
        masks, values = conflicting_masks(attributes, attribute)
        assert all(v != getattr(a, attribute) for a, v in zip(attributes, values))
        images = [mask_image(m) for m in masks]  # white shapes on black: the grader reads their shape, place and size
        seen = [read_attributes(im) for im in images]
        assert [s[attribute] for s in seen] == values
        assert who_wins(images, attribute, [getattr(a, attribute) for a in attributes], values) == dict(text=0.0, mask=1.0, neither=0.0)
    assert full_caption(attributes[0]).startswith(f"a {attributes[0].size} {attributes[0].colour} {attributes[0].shape}")


@pytest.mark.slow
def test_control_draws_the_mask_far_better_than_text_alone(pipe, shipped):
    record = json.loads((shipped_path(CONTROLNET) / "training.json").read_text())
    captions, _, masks = control_examples(40)
    steered = control_scores(draw_with_masks(pipe, shipped, captions, masks), captions, masks)
    alone = control_scores(draw_with_masks(pipe, None, captions, masks), captions, masks)
    assert steered["iou"] >= record["iou_with"] - 0.05, (steered, record["iou_with"])
    assert steered["iou"] >= alone["iou"] + 0.15, (steered, alone)
    assert steered["colour"] >= 0.9  # the mask steers the shape; the words still choose the colour


def test_shipped_controlnet_is_small_safetensors_for_the_shipped_unet(pipe):
    folder = shipped_path(CONTROLNET)
    files = {p.name for p in folder.iterdir()}
    assert "diffusion_pytorch_model.safetensors" in files and not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)
    assert sum(p.stat().st_size for p in folder.iterdir()) < 4e6
    steered = ControlledUNet(pipe.unet, load_controlnet())  # refused with a ValueError if it were made for another UNet
    x, t, context, control = inputs(pipe)
    assert steered(x, t, context, control).sample.shape == (2, 4, 8, 8)


def test_bad_input_is_refused_with_a_message(pipe, shipped, tmp_path):
    mask = mask_image(example_mask(0))
    with pytest.raises(ValueError, match="control is 32x32 but the images to draw are 64x64"): control_images(mask.resize((32, 32)), 1, (64, 64))
    with pytest.raises(ValueError, match="control has 2 entries for 3 prompts"): control_images([mask, mask], 3, (64, 64))
    with pytest.raises(TypeError, match="control must be a PIL image or a list of them"): control_images(np.zeros((64, 64)), 1, (64, 64))
    assert torch.equal(control_images(mask.convert("L"), 1, (64, 64)), control_images(mask, 1, (64, 64)))
    with pytest.raises(ValueError, match=r"coverage must be a non-empty 2-D array of values in \[0, 1\]"): mask_image(np.full((4, 4), -1.0))
    with pytest.raises(ValueError, match=r"coverage must be a non-empty 2-D array"): mask_image(np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match=r"got shape \[0, 0\]$"): mask_image(np.zeros((0, 0)))
    other = make_controlnet(make_unet(block_out_channels=(32, 32, 64)))
    with pytest.raises(ValueError, match="controlnet_down_blocks.3 gives 32 channels where this UNet's skip connection 3 has 64"): ControlledUNet(pipe.unet, other)
    with pytest.raises(ValueError, match="scale must"): ControlledUNet(pipe.unet, shipped, scale=-1)
    with pytest.raises(ValueError, match="no control image"): ControlledUNet(pipe.unet, shipped)(*inputs(pipe)[:3])
    (tmp_path / "config.json").write_text((shipped_path(CONTROLNET) / "config.json").read_text())
    torch.save(shipped.state_dict(), tmp_path / "diffusion_pytorch_model.bin")
    with pytest.raises(ValueError, match="never opens a pickle"): load_controlnet(tmp_path)
    with pytest.raises(FileNotFoundError, match="no ControlNet folder at"): load_controlnet(tmp_path / "nowhere")


def test_cli_generate_with_control_and_reproduce(tmp_path):
    mask_image(example_mask(2)).save(tmp_path / "mask.png")
    Image.open(tmp_path / "mask.png").convert("L").save(tmp_path / "grey.png")  # another mode: converted, not refused
    out = tmp_path / "steered.png"
    assert main(["generate", "a blue square", "--control", str(tmp_path / "grey.png"), "--control-scale", "0.9", "-o", str(out)]) == 0
    recipe = png_info(out)
    assert recipe["control"] == str((tmp_path / "grey.png").resolve()) and recipe["control_scale"] == 0.9 and recipe["controlnet"] == CONTROLNET
    assert np.array_equal(np.asarray(reproduce(out)), np.asarray(Image.open(out).convert("RGB")))
    assert main(["generate", "a blue square", "--seed", "0", "-o", str(tmp_path / "plain.png")]) == 0
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "plain.png")), np.asarray(Image.open(out)))


def test_cli_bad_control_input(tmp_path, capsys):
    mask_image(np.zeros((128, 128))).save(tmp_path / "big.png")
    assert main(["generate", "a red circle", "--control", str(tmp_path / "big.png"), "-o", str(tmp_path / "a.png")]) == 1
    assert "control is 128x128 but the images to draw are 64x64" in capsys.readouterr().err
    assert main(["generate", "a red circle", "--controlnet", str(tmp_path), "-o", str(tmp_path / "b.png")]) == 2  # it would change nothing
    assert "--controlnet needs --control" in capsys.readouterr().err
    assert main(["generate", "a red circle", "--control", str(tmp_path / "missing.png"), "-o", str(tmp_path / "c.png")]) == 1
    assert "missing.png" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_: main(["generate", "a red circle", "--control", str(tmp_path / "big.png"), "--control-scale", "9"])
    assert exit_.value.code == 2 and "--control-scale" in capsys.readouterr().err
    assert not list(tmp_path.glob("?.png"))


def test_zero_conv_checker_passes_the_reference_and_names_mistakes():
    from torch import nn
    assert check_zero_conv(zero_conv)
    assert not check_zero_conv(lambda c_in, c_out: (_ for _ in ()).throw(NotImplementedError())).attempted

    def weights_only(c_in, c_out):
        conv = nn.Conv2d(c_in, c_out, 1); nn.init.zeros_(conv.weight); return conv

    def no_bias(c_in, c_out):
        conv = nn.Conv2d(c_in, c_out, 1, bias=False); nn.init.zeros_(conv.weight); return conv

    def three(c_in, c_out):
        conv = nn.Conv2d(c_in, c_out, 3, padding=1); nn.init.zeros_(conv.weight); nn.init.zeros_(conv.bias); return conv
    for wrong, hint in ((weights_only, "the bias is not"), (no_bias, "it has no bias"), (three, "its kernel is 3x3"),
                        (lambda c_in, c_out: zero_conv(c_in, c_out).requires_grad_(False), "do not require grad"),
                        (lambda c_in, c_out: nn.Conv2d(c_in, c_out, 1), "its output is not zero"),
                        (lambda c_in, c_out: zero_conv(c_out, c_in), "it maps 16 -> 8 channels"),
                        (lambda c_in, c_out: nn.Linear(c_in, c_out), "return an nn.Conv2d")):
        result = check_zero_conv(wrong)
        assert not result and hint in str(result), (hint, str(result))
