import json
from pathlib import Path

import pytest, torch

from sdcourse.core import make_generator, shipped_path
from sdcourse.data import heldout_images
from sdcourse.vae import (ScratchVAE, check_vae_input, decode_latents, encode_images, kl_divergence,
                          load_scratch_vae, load_vae, make_vae, posterior, reconstruction_mse, reparameterize, save_scratch_vae,
                          train_vae, vae_loss)

VAE_DIR = shipped_path("sdcourse-tiny", "vae")


@pytest.fixture(scope="module")
def vae():
    return load_vae(device="cpu")


@pytest.fixture(scope="module")
def test_images():
    return heldout_images()


def test_shipped_vae_compresses_48x(vae, test_images):
    "SD's 48x compression; lecture 3 measures the held-out reconstruction MSE itself (under the bar, not worse than recorded)."
    z = encode_images(vae, test_images[:2], sample=False)
    assert z.shape == (2, 4, 8, 8) and test_images[0].numel() / z[0].numel() == 48
    lecture = json.loads((Path(__file__).resolve().parents[1] / "nbs" / "03_vae.ipynb").read_text())
    assert any('vae_record["heldout_mse"] * 1.05' in "".join(c["source"]) for c in lecture["cells"])


def test_scaling_factor_gives_unit_variance_latents(vae, test_images):
    z = encode_images(vae, test_images[:250], generator=make_generator(0))  # 64,000 latent values: the std to within 1%
    assert abs(z.std().item() - 1) < 0.1 and abs(z.mean().item()) < 0.5  # scaled, not centred (as in SD)
    assert abs(vae.config.scaling_factor - json.loads((VAE_DIR / "training.json").read_text())["scaling_factor"]) < 1e-6


def test_encoding_is_the_from_scratch_maths(vae, test_images):
    x = test_images[:4]
    with torch.no_grad():
        dist = vae.encode(x).latent_dist
        mu, logvar = posterior(vae, x)
        eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(3))
        assert torch.allclose(dist.sample(generator=torch.Generator().manual_seed(3)), reparameterize(mu, logvar, eps), atol=1e-5)
        assert torch.allclose(dist.kl(), kl_divergence(mu, logvar), rtol=1e-4, atol=1e-3)
        z = encode_images(vae, x, sample=False)
        assert torch.allclose(decode_latents(vae, z), vae.decode(mu).sample.clamp(-1, 1), atol=1e-5)
        unclamped = decode_latents(vae, z * 3, clamp=False)  # latents pushed out of range decode past [-1, 1]; clamp=False keeps that visible
        assert torch.allclose(unclamped, vae.decode(mu * 3).sample, atol=1e-5) and unclamped.abs().max() > 1


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    D = torch.distributions
    ref = D.kl_divergence(D.Normal(mu, (0.5 * logvar).exp()), D.Normal(0.0, 1.0)).sum((1, 2, 3))
    assert torch.allclose(kl_divergence(mu, logvar), ref, atol=1e-4)
    assert torch.all(kl_divergence(torch.zeros(2, 4), torch.zeros(2, 4)) == 0)


def test_same_seed_same_latents(vae, test_images):
    a = encode_images(vae, test_images[:3], generator=make_generator(5))
    b = encode_images(vae, test_images[:3], generator=make_generator(5))
    c = encode_images(vae, test_images[:3], generator=make_generator(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_training_reduces_the_loss_and_both_vaes_share_the_loop(test_images):
    for model in (ScratchVAE(), make_vae()):
        torch.manual_seed(0)
        hist = train_vae(model, test_images[:64], steps=12, batch_size=16, lr=2e-3, beta=1e-4)
        assert sum(h["mse"] for h in hist[-3:]) < sum(h["mse"] for h in hist[:3])
        loss, mse, kl = vae_loss(model, test_images[:4], beta=0.5)
        assert torch.isclose(loss, mse + 0.5 * kl)


def test_scratch_vae_round_trip_and_wrong_config(tmp_path):
    model = ScratchVAE(channels=(8, 16, 32, 64))
    path = save_scratch_vae(model, tmp_path / "v.safetensors")
    again = load_scratch_vae(path)
    assert again.config == model.config and all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    with pytest.raises(ValueError, match="does not fit ScratchVAE.*file has shape"):
        load_scratch_vae(path, channels=(8, 16, 32, 32))
    assert [p.name for p in tmp_path.iterdir()] == ["v.safetensors"]


@pytest.mark.parametrize("images, message", [
    (torch.zeros(1, 3, 60, 64), "divisible by the VAE's downsampling factor 8, got 60x64"),
    (torch.zeros(1, 4, 64, 64), r"\[B, 3, H, W\] tensor, got Tensor \[1, 4, 64, 64\]"),
    (torch.zeros(3, 64, 64), r"\[B, 3, H, W\]"),
    (torch.full((1, 3, 64, 64), 255.0), r"must lie in \[-1, 1\]"),
])
def test_bad_images(vae, images, message):
    with pytest.raises(ValueError, match=message): encode_images(vae, images)
    with pytest.raises(ValueError, match=message): check_vae_input(ScratchVAE(), images)


def test_bad_latents(vae):
    with pytest.raises(ValueError, match=r"latents must be a \[B, 4, h, w\] tensor, got \[1, 3, 8, 8\]"):
        decode_latents(vae, torch.zeros(1, 3, 8, 8))


def test_vae_folder_is_safetensors_only():
    files = sorted(p.name for p in VAE_DIR.iterdir())
    assert files == ["config.json", "diffusion_pytorch_model.safetensors", "training.json"]
