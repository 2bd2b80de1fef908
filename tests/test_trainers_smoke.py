"Two-step runs of the trainers and measurements that only the lectures' `slow` cells reach, so a broken one fails here and not in a learner's RETRAIN run."
import math

import pytest, torch

import sdcourse.lora, sdcourse.training
from sdcourse.lora import adaptation_scores, negative_cache
from sdcourse.text import load_mini_clip, load_text_encoder, text_encoder_from_clip, train_course_text_encoder
from sdcourse.training import compare_pixel_latent, images_cache, load_pipeline
from sdcourse.data import dataset_images
from sdcourse.data import course_dataset


@pytest.mark.slow
def test_train_course_text_encoder_writes_three_loadable_folders(tmp_path):
    clip, tokenizer, record = train_course_text_encoder(steps=2, n_images=64, batch_size=16, out=tmp_path)
    assert record["steps"] == 2 and math.isfinite(record["final_loss"]) and set(record["retrieval"]) == {"train", "heldout", "train_new_phrasings", "heldout_new_phrasings"}
    assert record["final_loss"] > record["history"][0]["loss"] / 5  # the mean of its 2 losses (dividing by 50 made it 25 times too small)
    encoder, tok = load_text_encoder(tmp_path / "sdcourse-tiny")
    clip2, tok2 = load_mini_clip(tmp_path / "mini-clip")
    assert tok.get_vocab() == tokenizer.get_vocab() == tok2.get_vocab()
    torch.testing.assert_close(encoder.state_dict(), text_encoder_from_clip(clip2).state_dict())  # the text half of the mini-CLIP saved beside it


@pytest.mark.slow
def test_compare_pixel_latent_reports_both_spaces(monkeypatch):
    # the course's UNet attends at full resolution: 4,096 tokens at 64x64 pixels, 14 s a step here. Attention only at the lowest
    # resolution keeps every line of compare_pixel_latent running, a hundred times faster.
    make_unet = sdcourse.training.make_unet
    monkeypatch.setattr(sdcourse.training, "make_unet", lambda **kw: make_unet(**kw, down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
                                                                                     up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D")))
    results = compare_pixel_latent(seconds=1, n_images=64, n_eval=(2, 2))
    assert set(results) == {"latent", "pixel"}
    for space, r in results.items():
        assert r["steps"] >= 1 and r["eval_images"] == 2 and r["activation_mb_per_image"] > 0 and math.isfinite(r["final_loss"]), space
        assert 0 <= r["adherence"]["all"] <= 1
    assert results["pixel"]["activation_mb_per_image"] > results["latent"]["activation_mb_per_image"]  # 64x64x3 against 8x8x4


def test_negative_cache_is_the_base_images_inverted():
    pipe = load_pipeline()
    negative = negative_cache(pipe.vae, pipe.text_encoder, pipe.tokenizer, n_images=4)
    images, captions = dataset_images(4, "train", 7), list(course_dataset(4, "train", 7)["text"])
    expected = images_cache(pipe.vae, pipe.text_encoder, pipe.tokenizer, -images, captions)
    assert negative["captions"] == captions
    torch.testing.assert_close(negative["mu"], expected["mu"])
    assert (negative["mu"] - images_cache(pipe.vae, pipe.text_encoder, pipe.tokenizer, images, captions)["mu"]).abs().max() > 0.1


def test_adaptation_scores_prompts_with_the_concept_word_and_grades_the_star(monkeypatch):
    pipe, asked = load_pipeline(), []
    real = sdcourse.lora.measure_sampling
    monkeypatch.setattr(sdcourse.lora, "measure_sampling", lambda pipe, scheduler, **kw: asked.append(kw["asked"]) or real(pipe, scheduler, 4, **kw))
    scores = adaptation_scores(pipe, n=3, concept_word="<star>")
    assert set(scores) == {"concept", "train"} and all(0 <= s["all"] <= 1 for s in scores.values())
    assert all("<star>" in p for p in asked[0]) and not any("<star>" in p for p in asked[1])
    assert scores["concept"]["shape"] == 0.0  # the base model draws no star, whatever the word: the grader checks for a star
