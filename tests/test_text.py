import json, warnings

import pytest, torch

from sdcourse.core import shipped_path
from sdcourse.data import ShapesDataset
from sdcourse.text import (MAX_LENGTH, build_tokenizer, contrastive_loss, encode_prompts, learn_bpe, load_mini_clip,
                           load_text_encoder, make_mini_clip, retrieval_accuracy, text_encoder_from_clip, tokenize, unknown_words, word_symbols)
from sdcourse.data import dataset_images


@pytest.fixture(scope="module")
def shipped():
    encoder, tokenizer = load_text_encoder(device="cpu")
    clip, _ = load_mini_clip(device="cpu")
    return tokenizer, encoder, clip


def test_tokenizer_is_deterministic_and_matches_the_shipped_one(shipped):
    a, b = build_tokenizer(), build_tokenizer()
    assert a.get_vocab() == b.get_vocab() == shipped[0].get_vocab()
    prompt = "a small red circle in the top left corner"
    assert a(prompt).input_ids == shipped[0](prompt).input_ids


def test_bpe_is_deterministic_and_merges_the_most_frequent_pair():
    counts = {"low": 5, "lower": 2, "newest": 6, "widest": 3}
    merges = learn_bpe(counts, 10)
    assert merges == learn_bpe(dict(reversed(list(counts.items()))), 10)
    # 'e s' and 's t</w>' both occur 9 times (newest, widest), more than any other pair: the tie goes to the smaller pair
    assert merges[:2] == [("e", "s"), ("es", "t</w>")]
    assert word_symbols("low") == ("l", "o", "w</w>")


def test_tokenizer_frames_pads_and_truncates_like_sd(shipped):
    tokenizer = shipped[0]
    ids = tokenize(tokenizer, ["a red circle in the center", ""])
    assert ids.shape == (2, MAX_LENGTH) and tokenizer.model_max_length == 77
    assert ids[0, 0] == tokenizer.bos_token_id and ids[1, 1] == tokenizer.eos_token_id
    assert tokenizer.pad_token_id == tokenizer.eos_token_id and (ids[1, 1:] == tokenizer.eos_token_id).all()
    # every course word is a single token
    words = "a small red circle in the top left corner".split()
    assert len(tokenizer("a small red circle in the top left corner").input_ids) == len(words) + 2
    with pytest.warns(UserWarning, match="prompt 0 has .* tokens; only the first 77"):
        long = tokenize(tokenizer, "a red circle and " * 30)
    assert long.shape == (1, 77) and long[0, -1] == tokenizer.eos_token_id
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tokenize(tokenizer, "a red circle")  # short prompts do not warn


@pytest.mark.parametrize("bad", [3, None, ["a red circle", 3], [b"bytes"]])
def test_non_string_prompts(shipped, bad):
    with pytest.raises(TypeError, match="prompts must be a str or a list of str"): tokenize(shipped[0], bad)


def test_causal_mask_and_pooled_output(shipped):
    tokenizer, encoder, _ = shipped
    with torch.no_grad():
        a = encoder(tokenize(tokenizer, "a big green square in the top left corner"))
        b = encoder(tokenize(tokenizer, "a big green square in the bottom right corner"))
    assert torch.allclose(a.last_hidden_state[0, :7], b.last_hidden_state[0, :7])
    assert not torch.allclose(a.last_hidden_state[0, 7], b.last_hidden_state[0, 7])
    eos = tokenize(tokenizer, "a big green square in the top left corner")[0].tolist().index(tokenizer.eos_token_id)
    assert torch.allclose(a.pooler_output[0], a.last_hidden_state[0, eos])
    assert encode_prompts(encoder, tokenizer, ["", "a red circle in the center"]).shape == (2, 77, encoder.config.hidden_size)


def test_shipped_text_encoder_is_mini_clips_text_half(shipped):
    tokenizer, encoder, clip = shipped
    ids = tokenize(tokenizer, ["a red circle in the center", "a blue star at the lower left"])
    with torch.no_grad():
        assert torch.allclose(encoder(ids).last_hidden_state, clip.text_model(input_ids=ids).last_hidden_state, atol=1e-6)
        assert torch.allclose(text_encoder_from_clip(clip)(ids).last_hidden_state, encoder(ids).last_hidden_state, atol=1e-6)


def test_hand_written_infonce_equals_clipmodel_loss(shipped):
    tokenizer = shipped[0]
    clip = make_mini_clip(tokenizer).eval()
    ds = ShapesDataset(8)
    images = dataset_images(8)
    with torch.no_grad():
        out = clip(input_ids=tokenize(tokenizer, [ds[i]["text"] for i in range(8)]), pixel_values=torch.nn.functional.avg_pool2d(images, 2), return_loss=True)
    assert abs(out.loss.item() - contrastive_loss(out.logits_per_text).item()) < 1e-5


def test_mini_clip_retrieval_not_worse_than_recorded(shipped):
    tokenizer, _, clip = shipped
    record = json.loads((shipped_path("mini-clip") / "training.json").read_text())["retrieval"]
    for split in ("train", "heldout"):
        images = dataset_images(256, split, seed=1)
        captions = [ShapesDataset(256, split, seed=1)[i]["text"] for i in range(256)]
        got = retrieval_accuracy(clip, tokenizer, images, captions)
        for way in ("image_to_caption", "caption_to_image"):
            assert got[way] >= record[split][way] - 0.02, (split, way, got, record[split])
        assert got["image_to_caption"] > 20 / 256  # far above chance


def test_unknown_words_are_the_words_the_tokenizer_cuts():
    _, tokenizer = load_text_encoder()
    assert unknown_words(tokenizer, "A big GREEN square, in the top left corner!") == []
    assert unknown_words(tokenizer, "please draw a crimson oval, crimson! 42 times") == ["crimson", "oval", "times"]  # the caption language has "please draw"
    assert unknown_words(tokenizer, "Please draw a big triangle coloured green on a dark background.") == []
    assert unknown_words(tokenizer, "a rød circle 🙂, in the centre.") == ["rød", "🙂"]  # non-ASCII: a word in pieces, an emoji in byte tokens
    tokenizer.add_tokens(["<thing>"])  # a textual-inversion word is the tokenizer's own, not an unknown word
    assert unknown_words(tokenizer, "a red <thing>, a thing") == ["thing"]
