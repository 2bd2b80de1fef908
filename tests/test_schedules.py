import matplotlib
import numpy as np, pytest, torch
from diffusers import DDPMScheduler

from sdcourse.core import make_generator, pil_to_tensor, unit_to_signed
from sdcourse.data import make_example
from sdcourse.schedules import (DIFFUSERS_NAMES, BETA_SCHEDULES, NoiseSchedule, ScheduleWidget, ks_normal, make_betas,
                                schedule_figure)

matplotlib.use("Agg")


def test_worked_example_exact():
    "The lecture's worked example: x0 = 0.8, betas [0.1, 0.2, 0.3, 0.4], noises [-0.5, 0.3, -0.8, 0.9]."
    s = NoiseSchedule([0.1, 0.2, 0.3, 0.4], device="cpu")
    x, out = torch.tensor(0.8, dtype=torch.float64), []
    for t, eps in enumerate([-0.5, 0.3, -0.8, 0.9]):
        x = s.forward_step(x, t, torch.tensor(eps, dtype=torch.float64))
        out.append(x.item())
    assert np.allclose(out, [0.6008, 0.6716, 0.1237, 0.6650], atol=5e-5)
    assert abs(s.alpha_bar[-1].item() - 0.9 * 0.8 * 0.7 * 0.6) < 1e-6


def test_worked_example_rounded_by_hand_stays_within_rounding_of_the_library():
    "The lecture's whiteboard numbers (square roots and results rounded to 3 decimals) are the library's exact steps, up to that rounding."
    s, x, exact = NoiseSchedule([0.1, 0.2, 0.3, 0.4], device="cpu"), torch.tensor(0.8, dtype=torch.float64), []
    for t, eps in enumerate([-0.5, 0.3, -0.8, 0.9]):
        x = s.forward_step(x, t, torch.tensor(eps, dtype=torch.float64))
        exact.append(x.item())
    by_hand = [0.601, 0.671, 0.123, 0.664]
    assert all(abs(a - b) < 2e-3 for a, b in zip(exact, by_hand)), exact
    # and the four steps in one: q_sample at t = 3 with the noises combined as the closed form says
    alpha = 1 - s.betas.double()
    combined = sum(e * (alpha[i + 1:].prod() * s.betas[i].double()).sqrt() for i, e in enumerate([-0.5, 0.3, -0.8, 0.9])) / (1 - s.alpha_bar[3].double()).sqrt()
    assert abs(s.q_sample(torch.tensor(0.8, dtype=torch.float64), 3, combined).item() - exact[-1]) < 1e-6


@pytest.mark.parametrize("name", BETA_SCHEDULES)
def test_parity_with_diffusers(name):
    s = NoiseSchedule.named(name, device="cpu")
    kw = dict(beta_start=0.00085, beta_end=0.012) if name == "scaled_linear" else {}
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=DIFFUSERS_NAMES[name], **kw)
    g = make_generator(0)
    x0, noise = torch.randn(32, 4, 8, 8, generator=g), torch.randn(32, 4, 8, 8, generator=g)
    t = torch.randint(0, 1000, (32,), generator=g)
    assert torch.allclose(s.betas, ref.betas, atol=1e-6, rtol=0)
    assert torch.allclose(s.alpha_bar, ref.alphas_cumprod, atol=1e-6, rtol=0)
    assert torch.allclose(s.q_sample(x0, t, noise), ref.add_noise(x0, noise, t), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", BETA_SCHEDULES)
def test_variance_preserved_at_every_t(name):
    s, g = NoiseSchedule.named(name, device="cpu"), make_generator(1)
    x0 = torch.randn(100_000, generator=g)
    for t in (0, 100, 300, 600, 999):
        assert abs(s.q_sample(x0, t, torch.randn(x0.shape, generator=g)).var().item() - 1) < 0.02
        assert abs(s.forward_step(x0, t, torch.randn(x0.shape, generator=g)).var().item() - 1) < 0.02


@pytest.mark.parametrize("name", BETA_SCHEDULES)
def test_steps_and_closed_form_agree_in_distribution(name):
    s, g = NoiseSchedule.named(name, device="cpu"), make_generator(2)
    steps = torch.full((50_000,), 0.8)
    for t in range(400): steps = s.forward_step(steps, t, torch.randn(steps.shape, generator=g))
    closed = s.q_sample(torch.full((50_000,), 0.8), 399, torch.randn(50_000, generator=g))
    assert abs(steps.mean() - closed.mean()) < 0.02 and abs(steps.std() - closed.std()) < 0.02
    # the standardised samples of both are N(0, 1)
    mu, sd = s.sqrt_alpha_bar[399] * 0.8, s.sqrt_one_minus_alpha_bar[399]
    assert ks_normal((steps - mu) / sd) < 0.01 and ks_normal((closed - mu) / sd) < 0.01


@pytest.mark.parametrize("name", BETA_SCHEDULES)
def test_x_T_is_standard_normal(name):
    s, g = NoiseSchedule.named(name, device="cpu"), make_generator(3)
    data = unit_to_signed(pil_to_tensor([make_example(i)[0] for i in range(64)]))
    x_T = s.q_sample(data, s.T - 1, torch.randn(data.shape, generator=g))
    assert abs(x_T.mean().item()) < 0.01 and abs(x_T.std().item() - 1) < 0.01 and ks_normal(x_T) < 0.01


def test_ks_normal_can_tell():
    g = make_generator(4)
    assert ks_normal(torch.randn(100_000, generator=g)) < 0.01
    assert ks_normal(torch.randn(100_000, generator=g) * 1.2) > 0.03
    assert ks_normal(torch.rand(100_000, generator=g)) > 0.1


def test_q_sample_broadcasts_one_t_per_item():
    s = NoiseSchedule.named("linear", device="cpu")
    x0, noise = torch.ones(3, 2, 4, 4), torch.zeros(3, 2, 4, 4)
    out = s.q_sample(x0, torch.tensor([0, 500, 999]), noise)
    for i, t in enumerate((0, 500, 999)):
        assert torch.allclose(out[i], s.sqrt_alpha_bar[t].expand(2, 4, 4))
    assert torch.allclose(s.q_sample(x0, 500, noise), s.q_sample(x0, torch.tensor(500), noise))


@pytest.mark.parametrize("call, error, message", [
    (lambda s: s.q_sample(torch.zeros(2, 3), -1, torch.zeros(2, 3)), ValueError, r"t must lie in \[0, T-1\] = \[0, 999\], got values from -1"),
    (lambda s: s.q_sample(torch.zeros(2, 3), torch.tensor([0, 1000]), torch.zeros(2, 3)), ValueError, r"\[0, 999\], got values from 0 to 1000"),
    (lambda s: s.q_sample(torch.zeros(2, 3), torch.tensor([1, 2, 3]), torch.zeros(2, 3)), ValueError, "x has batch 2, t has shape \\[3\\]"),
    (lambda s: s.q_sample(torch.zeros(2, 3), torch.tensor([0.5, 1.0]), torch.zeros(2, 3)), TypeError, "integer timesteps"),
    (lambda s: s.q_sample(torch.zeros(2, 3), 1.5, torch.zeros(2, 3)), TypeError, "t must be an int"),
    (lambda s: s.q_sample(torch.zeros(2, 3), 0, torch.zeros(2, 4)), ValueError, "noise must have x0's shape"),
])
def test_bad_timesteps_and_shapes(call, error, message):
    with pytest.raises(error, match=message): call(NoiseSchedule.named("linear", device="cpu"))


def test_bad_schedules():
    with pytest.raises(ValueError, match=r"schedule='sigmoid' is not accepted; choose one of \('linear', 'scaled_linear', 'cosine'\)"):
        make_betas("sigmoid")
    for bad in ([0.1, 1.1], [0.0, 0.1], [-0.1, 0.1], [0.2, float("nan")]):
        with pytest.raises(ValueError, match=r"betas must lie in \(0, 1\]"): NoiseSchedule(bad)
    assert NoiseSchedule([0.1, 1.0]).alpha_bar[-1] == 0  # a schedule that ends in pure noise (zero terminal SNR) is allowed
    with pytest.raises(ValueError, match="1-d sequence"): NoiseSchedule([[0.1, 0.2]])
    with pytest.raises(ValueError, match=r"T must be an int in \[2, inf\]"): make_betas("linear", T=1)


def test_schedule_figure_for_given_controls():
    import matplotlib.pyplot as plt
    images = unit_to_signed(pil_to_tensor([make_example(i)[0] for i in range(3)]))
    fig = schedule_figure(images, "cosine", 250, compare="linear")
    assert len(fig.axes) == 2 * 3 + 2
    ab_ax = fig.axes[-2]
    markers = [l for l in ab_ax.lines if l.get_marker() == "o"]
    assert [m.get_xdata()[0] for m in markers] == [250, 250]
    assert abs(markers[0].get_ydata()[0] - NoiseSchedule.named("cosine").alpha_bar[250].item()) < 1e-6
    assert "t = 250: cosine" in fig._suptitle.get_text()
    plt.close("all")
    with pytest.raises(ValueError, match="t must be an int in \\[0, 999\\]"): schedule_figure(images, "linear", 1000)
    with pytest.raises(ValueError, match="compare='quadratic'"): schedule_figure(images, "linear", 10, compare="quadratic")


def test_widget_redraws_when_controls_change():
    images = unit_to_signed(pil_to_tensor([make_example(i)[0] for i in range(2)]))
    w = ScheduleWidget(images, seed=0)
    first = w.figure
    w.t.value = 123
    assert w.figure is not first and "t = 123: scaled_linear" in w.figure._suptitle.get_text()
    w.schedule.value = "cosine"
    assert "cosine" in w.figure._suptitle.get_text()
    w.compare.value = "none"
    assert len(w.figure.axes) == 2 + 2
    w.compare.value = "linear"
    assert len(w.figure.axes) == 2 * 2 + 2
