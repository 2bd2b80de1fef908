import pytest, torch
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel

from sdcourse.core import make_generator
from sdcourse.unet import (TimeResBlock, ScratchUNet, SpatialTransformer, TransformerBlock, UNET_CONFIG, load_unet, make_unet,
                           parameter_counts, timestep_embedding)

TOL = 1e-5  # float32 rounding: the blocks compute the same sums in a different order


@pytest.fixture(scope="module")
def unet():
    return load_unet(device="cpu")


def test_timestep_embedding_equals_diffusers():
    t = torch.randint(0, 1000, (64,), generator=make_generator(0))
    for dim in (8, 32, 320):
        ours, theirs = timestep_embedding(t, dim), get_timestep_embedding(t, dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        assert (ours - theirs).abs().max() < 1e-6
    assert torch.equal(timestep_embedding(t, 256, shift=1), get_timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=1))  # DiT's (lecture 16)
    with pytest.raises(ValueError, match="dim must be even"): timestep_embedding(t, 33)


@pytest.mark.parametrize("c_in,c_out", [(32, 32), (32, 64), (128, 64)])
def test_resblock_equals_resnetblock2d(c_in, c_out):
    g = make_generator(c_in + c_out)
    theirs = ResnetBlock2D(in_channels=c_in, out_channels=c_out, temb_channels=128, groups=16, eps=1e-5).eval()
    ours = TimeResBlock(c_in, c_out, 128, groups=16).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x, temb = torch.randn(3, c_in, 4, 4, generator=g), torch.randn(3, 128, generator=g)
    with torch.no_grad(): assert (ours(x, temb) - theirs(x, temb)).abs().max() < TOL


def test_transformer_blocks_equal_diffusers():
    g = make_generator(1)
    theirs = BasicTransformerBlock(dim=32, num_attention_heads=4, attention_head_dim=8, cross_attention_dim=64, activation_fn="geglu").eval()
    ours = TransformerBlock(32, 4, 64).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    h, c = torch.randn(2, 64, 32, generator=g), torch.randn(2, 77, 64, generator=g)
    with torch.no_grad(): assert (ours(h, c) - theirs(h, encoder_hidden_states=c)).abs().max() < TOL
    theirs = Transformer2DModel(num_attention_heads=4, attention_head_dim=8, in_channels=32, cross_attention_dim=64, norm_num_groups=16).eval()
    ours = SpatialTransformer(32, 4, 64, groups=16).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 32, 8, 8, generator=g)
    with torch.no_grad(): assert (ours(x, c) - theirs(x, encoder_hidden_states=c).sample).abs().max() < TOL


def test_scratch_unet_equals_the_trained_diffusers_unet(unet):
    g = make_generator(2)
    scratch = ScratchUNet.from_diffusers(unet)
    x, c = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 77, 64, generator=g)
    t = torch.tensor([0, 250, 500, 999])
    with torch.no_grad():
        assert (scratch(x, t, c) - unet(x, t, encoder_hidden_states=c).sample).abs().max() < TOL
        assert (scratch(x, 500, c) - unet(x, 500, encoder_hidden_states=c).sample).abs().max() < TOL  # an int timestep broadcasts
    assert parameter_counts(scratch) == parameter_counts(unet)
    assert parameter_counts(unet)["total"] == sum(p.numel() for p in unet.parameters())


def test_scratch_unet_matches_other_configs():
    "Not just the shipped shape: two levels per block, attention everywhere, more channels."
    torch.manual_seed(0)
    theirs = make_unet(layers_per_block=2, block_out_channels=(32, 48), down_block_types=("CrossAttnDownBlock2D",) * 2,
                       up_block_types=("CrossAttnUpBlock2D",) * 2).eval()
    ours = ScratchUNet.from_diffusers(theirs)
    x, c = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 64)
    with torch.no_grad(): assert (ours(x, 10, c) - theirs(x, 10, encoder_hidden_states=c).sample).abs().max() < TOL


def test_bad_input_names_what_was_expected(unet):
    scratch = ScratchUNet.from_diffusers(unet)
    c = torch.randn(1, 77, 64)
    with pytest.raises(ValueError, match=r"x must be \[B, 4, H, W\]"): scratch(torch.randn(1, 3, 8, 8), 5, c)
    with pytest.raises(ValueError, match="divisible by 4"): scratch(torch.randn(1, 4, 6, 6), 5, c)
    with pytest.raises(ValueError, match="context must be"): scratch(torch.randn(1, 4, 8, 8), 5, torch.randn(1, 77, 32))
    with pytest.raises(ValueError, match="one flag per level"): ScratchUNet(attention=(True,))
    mirrored_wrong = make_unet(up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))
    with pytest.raises(ValueError, match="must mirror"): ScratchUNet.from_diffusers(mirrored_wrong)
    with pytest.raises(ValueError, match="divisible"): make_unet(block_out_channels=(32, 64, 72))


def test_shipped_unet_has_the_course_config(unet):
    for k, v in UNET_CONFIG.items():
        got = unet.config[k]
        assert (tuple(got) if isinstance(got, (list, tuple)) else got) == v, (k, got, v)
    assert unet.config.cross_attention_dim == 64  # the text encoder's hidden size


def test_scratch_unet_equals_diffusers_on_an_sd15_shaped_network():
    "Stable Diffusion v1.5's UNet layout (four levels, two layers each, 8 heads), narrowed so that it runs in a second."
    from sdcourse.pipeline import SD15_UNET_CONFIG, unet_parity
    narrow = {**SD15_UNET_CONFIG, "block_out_channels": (32, 64, 64, 64), "cross_attention_dim": 48, "sample_size": 16}
    result = unet_parity(narrow, seed=3)
    assert result["max_difference"] < 1e-5 and result["parameters"] > 1_000_000, result


@pytest.mark.slow
def test_sd15_configurations_build_the_published_sizes():
    "The configurations lecture 11 builds at full size give Stable Diffusion v1.5's parameter counts (860 M, 84 M, 123 M)."
    import gc
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    from sdcourse.pipeline import SD15_TEXT_CONFIG, SD15_UNET_CONFIG, SD15_VAE_CONFIG
    count = lambda model: sum(p.numel() for p in model.parameters())
    sizes = {}
    for name, build in (("unet", lambda: UNet2DConditionModel(**SD15_UNET_CONFIG)), ("vae", lambda: AutoencoderKL(**SD15_VAE_CONFIG)),
                        ("text_encoder", lambda: CLIPTextModel(CLIPTextConfig(**SD15_TEXT_CONFIG)))):
        with torch.device("meta"): sizes[name] = count(build())  # shapes only: no memory, no random initialisation of a billion numbers
        gc.collect()
    assert sizes == {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}
