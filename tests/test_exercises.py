"Every checker passes the reference solution and fails typical wrong ones with a message that says which."
import pytest, torch

from sdcourse.exercises import CheckResult, check_q_sample


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
