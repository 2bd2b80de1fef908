import pytest, torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from sdcourse.attention import MultiHeadAttention, attention, merge_heads, split_heads
from sdcourse.core import make_generator
from sdcourse.exercises import check_attention, check_split_heads


def test_attention_equals_sdpa():
    g = make_generator(0)
    for shape_q, shape_k in (((2, 5, 16), (2, 7, 16)), ((1, 4, 64, 8), (1, 4, 77, 8))):
        q, k, v = torch.randn(*shape_q, generator=g), torch.randn(*shape_k, generator=g), torch.randn(*shape_k, generator=g)
        assert torch.allclose(attention(q, k, v), F.scaled_dot_product_attention(q, k, v), atol=1e-6)


def test_heads_split_and_merge():
    x = torch.randn(2, 6, 8)
    parts = split_heads(x, 4)
    assert parts.shape == (2, 4, 6, 2) and torch.equal(parts[1, 3], x[1, :, 6:8]) and torch.equal(merge_heads(parts), x)


@pytest.mark.parametrize("context_dim", [None, 64])
def test_module_loads_into_diffusers_attention(context_dim):
    g = make_generator(1)
    ours = MultiHeadAttention(32, heads=4, context_dim=context_dim).eval()
    theirs = Attention(query_dim=32, cross_attention_dim=context_dim, heads=4, dim_head=8).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 64, 32, generator=g)
    ctx = torch.randn(2, 77, context_dim, generator=g) if context_dim else None
    with torch.no_grad():
        out, scores = ours(x, ctx, return_scores=True)
        assert torch.allclose(out, theirs(x, encoder_hidden_states=ctx), atol=1e-5)
    assert scores.shape == (2, 4, 64, 77 if context_dim else 64)
    assert torch.allclose(scores.sum(-1), torch.ones(2, 4, 64))


def test_bad_shapes_say_what_is_expected():
    with pytest.raises(ValueError, match=r"dim \(30\) must be divisible by heads \(4\)"): MultiHeadAttention(30, 4)
    cross = MultiHeadAttention(32, 4, context_dim=64)
    with pytest.raises(ValueError, match=r"x must be \[B, n, 32\]"): cross(torch.zeros(1, 10, 16), torch.zeros(1, 77, 64))
    with pytest.raises(ValueError, match=r"context must be \[B=1, m, 64\].*got \[1, 77, 32\]"): cross(torch.zeros(1, 10, 32), torch.zeros(1, 77, 32))
    with pytest.raises(ValueError, match=r"context must be \[B=1, m, 64\].*got \[2, 77, 64\]"): cross(torch.zeros(1, 10, 32), torch.zeros(2, 77, 64))


def test_attention_checkers():
    ref = lambda q, k, v: (q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5).softmax(-1) @ v
    assert check_attention(ref) and check_attention(lambda q, k, v: F.scaled_dot_product_attention(q, k, v))
    cases = [(lambda q, k, v: (q @ k.transpose(-2, -1)).softmax(-1) @ v, "not divided by sqrt(d_k)"),
             (lambda q, k, v: (q @ k.transpose(-2, -1) / q.shape[-1]).softmax(-1) @ v, "divided by d_k"),
             (lambda q, k, v: (q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5).softmax(-2) @ v, "over the queries"),
             (lambda q, k, v: (q @ k / q.shape[-1] ** 0.5).softmax(-1) @ v, "k.transpose(-2, -1)")]
    for fn, says in cases:
        result = check_attention(fn)
        assert not result and says in result.message, result


def test_split_heads_checkers():
    assert check_split_heads(lambda x, h: x.view(x.shape[0], x.shape[1], h, -1).transpose(1, 2))
    cases = [(lambda x, h: x.view(x.shape[0], h, x.shape[1], -1), "mixes positions into heads"),
             (lambda x, h: x.view(x.shape[0], x.shape[1], -1, h).permute(0, 3, 1, 2), "split the wrong way round"),
             (lambda x, h: x.view(x.shape[0], x.shape[1], h, -1), "returned shape [2, 3, 4, 2]")]
    for fn, says in cases:
        result = check_split_heads(fn)
        assert not result and says in result.message, result


def test_cross_attention_probe_learns_to_find_the_named_object():
    "The probe lecture 5 ships finds the named object as its training run did; and training moves a fresh probe the same way, a few steps in."
    import json
    from sdcourse.attention import CrossAttentionProbe, make_probe_data, probe_pointing_accuracy, train_probe
    from sdcourse.core import load_weights, shipped_path
    from sdcourse.text import load_text_encoder
    from sdcourse.vae import load_vae
    vae, (encoder, tokenizer) = load_vae(device="cpu"), load_text_encoder(device="cpu")
    train, test = make_probe_data(vae, encoder, tokenizer, n=128), make_probe_data(vae, encoder, tokenizer, n=64, seed=1)
    assert train["latents"].shape == (128, 4, 8, 16) and train["context"].shape == (128, 77, 64) and train["masks"].shape == (128, 8, 16)
    shipped = load_weights(CrossAttentionProbe(), shipped_path("lectures", "05_attention", "probe.safetensors"))
    assert probe_pointing_accuracy(shipped, test) > 0.7  # 83% on these 64 held-out pairs in lecture 5
    assert json.loads(shipped_path("lectures", "05_attention", "probe.json").read_text())["losses"][-1] < 0.1
    torch.manual_seed(0)
    probe = CrossAttentionProbe()
    losses = train_probe(probe, train, steps=60)
    assert losses[-1] < losses[0] * 0.6  # it learns: the loss falls (0.74 to 0.05 over the shipped run's 600 steps)
