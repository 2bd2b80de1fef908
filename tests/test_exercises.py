"Every checker passes the reference solution and fails typical wrong ones with a message that says which."
import pytest, torch
from diffusers.models.embeddings import get_timestep_embedding

from sdcourse.exercises import CheckResult, check_q_sample, check_timestep_embedding
from sdcourse.unet import timestep_embedding


def q_sample(x0, t, noise, alpha_bar):
    ab = alpha_bar[t].view(-1, 1, 1, 1)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def test_q_sample_reference_passes():
    result = check_q_sample(q_sample)
    assert isinstance(result, CheckResult) and result.passed and bool(result) and "PASS" in repr(result)


@pytest.mark.parametrize("wrong, says", [
    (lambda x0, t, n, ab: ab[t].view(-1, 1, 1, 1) * x0 + (1 - ab[t].view(-1, 1, 1, 1)).sqrt() * n, "scales it by sqrt(alpha_bar[t])"),
    (lambda x0, t, n, ab: ab[t].view(-1, 1, 1, 1).sqrt() * x0 + n, "noise is added unscaled"),
    (lambda x0, t, n, ab: ab[t].view(-1, 1, 1, 1).sqrt() * x0 + (1 - ab[t].view(-1, 1, 1, 1)) * n, "use its square root"),
    (lambda x0, t, n, ab: (1 - ab[t].view(-1, 1, 1, 1)).sqrt() * x0 + ab[t].view(-1, 1, 1, 1).sqrt() * n, "swapped"),
    (lambda x0, t, n, ab: q_sample(x0, (t - 1).clamp(min=0), n, ab), "off by one"),
    (lambda x0, t, n, ab: ab[t].sqrt() * x0 + (1 - ab[t]).sqrt() * n, "reshape it to [4, 1, 1, 1]"),
    (lambda x0, t, n, ab: q_sample(x0, t, n, ab).tolist(), "returned a list"),
    (lambda x0, t, n, ab: q_sample(x0, t, n, ab)[:, 0], "returned shape [4, 8, 8]"),
    (lambda x0, t, n, ab: q_sample(x0, t, n, ab) + 0.01, "differs from the reference by up to 0.01"),
])
def test_q_sample_typical_mistakes_fail_with_a_reason(wrong, says):
    result = check_q_sample(wrong)
    assert not result and says in result.message, result


from sdcourse.exercises import check_kl_divergence, check_reparameterize


def test_vae_references_pass():
    assert check_reparameterize(lambda mu, lv, eps: mu + (0.5 * lv).exp() * eps)
    assert check_kl_divergence(lambda mu, lv: 0.5 * (mu ** 2 + lv.exp() - 1 - lv).flatten(1).sum(1))


@pytest.mark.parametrize("wrong, says", [
    (lambda mu, lv, eps: mu + lv * eps, "used as if it were sigma"),
    (lambda mu, lv, eps: mu + lv.exp() * eps, "is the variance"),
    (lambda mu, lv, eps: mu + eps, "not scaled by sigma"),
    (lambda mu, lv, eps: (0.5 * lv).exp() * eps, "mu is missing"),
])
def test_reparameterize_mistakes(wrong, says):
    result = check_reparameterize(wrong)
    assert not result and says in result.message, result


@pytest.mark.parametrize("wrong, says", [
    (lambda mu, lv: -0.5 * (mu ** 2 + lv.exp() - 1 - lv).flatten(1).sum(1), "sign is flipped"),
    (lambda mu, lv: (mu ** 2 + lv.exp() - 1 - lv).flatten(1).sum(1), "factor 1/2 is missing"),
    (lambda mu, lv: 0.5 * (mu ** 2 + lv.exp() - 1 - lv).flatten(1).mean(1), "averages over"),
    (lambda mu, lv: 0.5 * (mu ** 2 + lv.exp() - 1 - lv), "sum them over every dimension but the batch"),
    (lambda mu, lv: 0.5 * (mu ** 2 + (2 * lv).exp() - 1 - 2 * lv).flatten(1).sum(1), "not exp(2 * logvar)"),
    (lambda mu, lv: 0.5 * (mu ** 2 + lv.exp() - lv).flatten(1).sum(1), "-1 inside the sum is missing"),
])
def test_kl_mistakes(wrong, says):
    result = check_kl_divergence(wrong)
    assert not result and says in result.message, result



def test_timestep_embedding_references_pass():
    assert check_timestep_embedding(lambda t, dim: timestep_embedding(t, dim))
    assert check_timestep_embedding(lambda t, dim: get_timestep_embedding(t, dim, flip_sin_to_cos=True, downscale_freq_shift=0))


def rising(t, dim, power):
    "The frequencies grow with k, written two ways a learner might (they differ in float32's last digits)."
    k = torch.arange(dim // 2) / (dim // 2)
    angles = t.float()[:, None] * (10_000 ** k if power else torch.exp(k * torch.log(torch.tensor(10_000.0))))
    return torch.cat([angles.cos(), angles.sin()], -1)


@pytest.mark.parametrize("wrong, says", [
    (lambda t, dim: get_timestep_embedding(t, dim, flip_sin_to_cos=False, downscale_freq_shift=0), "swapped"),
    (lambda t, dim: timestep_embedding(t, dim).view(-1, 2, dim // 2).transpose(1, 2).flatten(1), "interleaved"),
    (lambda t, dim: get_timestep_embedding(t, dim, flip_sin_to_cos=True, downscale_freq_shift=1), "divides by dim/2 - 1"),
    (lambda t, dim: rising(t, dim, power=True), "frequencies grow"),
    (lambda t, dim: rising(t, dim, power=False), "frequencies grow"),
    (lambda t, dim: timestep_embedding(t, dim)[:, :dim // 2], "shape [5, 8]"),
    (lambda t, dim: timestep_embedding(t.float() / 1000, dim), "differs from the reference"),
])
def test_timestep_embedding_mistakes(wrong, says):
    result = check_timestep_embedding(wrong)
    assert not result and says in result.message, result
