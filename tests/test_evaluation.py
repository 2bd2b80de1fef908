import csv

import numpy as np
import pytest, scipy.linalg, torch
from PIL import Image

from sdcourse.data import entropy_bits
from sdcourse.evaluation import (check_images, clip_score, diversity, evaluate_images, fid, frechet_distance, gaussian_stats, image_features, precision_recall,
                                 kid, mmd2_unbiased, read_images_with_captions, real_images, sqrtm_psd)
from sdcourse.exercises import check_frechet_distance
from sdcourse.pipeline import main, save_png
from sdcourse.text import load_mini_clip


@pytest.fixture(scope="module")
def clip():
    return load_mini_clip()


@pytest.fixture(scope="module")
def real():
    return real_images(600)


@pytest.fixture(scope="module")
def features(real, clip):
    return image_features(real[0], clip[0])


def test_frechet_distance_equals_scipy_and_the_closed_form(features):
    a, b = features[:300], features[300:]
    (mu1, s1), (mu2, s2) = gaussian_stats(a), gaussian_stats(b)
    cross = scipy.linalg.sqrtm(s1.numpy() @ s2.numpy()).real
    expected = float(((mu1 - mu2) ** 2).sum() + s1.trace() + s2.trace() - 2 * cross.trace())
    assert fid(a, b) == pytest.approx(expected, rel=1e-6)
    assert abs(fid(a, a)) < 1e-6  # identical sets (float64 rounding of eigenvalues)
    # shifted Gaussians: same covariance, means apart by d -> exactly |d|^2; diagonal covariances -> sum (sqrt(s1) - sqrt(s2))^2
    shift = torch.arange(64, dtype=torch.float64) / 64
    assert fid(a, a + shift) == pytest.approx(shift.square().sum().item(), rel=1e-6)
    v1, v2 = torch.rand(8, dtype=torch.float64) + 0.1, torch.rand(8, dtype=torch.float64) + 0.1
    assert frechet_distance(torch.zeros(8, dtype=torch.float64), torch.diag(v1), torch.ones(8, dtype=torch.float64), torch.diag(v2)) == \
        pytest.approx(8 + (v1.sqrt() - v2.sqrt()).square().sum().item(), rel=1e-9)
    # the symmetric square root really is one
    torch.testing.assert_close(sqrtm_psd(s1) @ sqrtm_psd(s1), s1)


def test_fid_is_biased_and_kid_is_not(features):
    # real vs real: FID is well above 0 for small sets and falls as they grow; KID's mean over resamples stays at 0
    assert fid(features[:100], features[300:400]) > 2 * fid(features[:300], features[300:600]) > 0
    g = torch.Generator().manual_seed(0)
    values = [mmd2_unbiased(*features[torch.randperm(600, generator=g)[:200]].split(100)) for _ in range(100)]
    mean, se = np.mean(values), np.std(values) / 10
    assert abs(mean) < 3 * se + 1e-3 and min(values) < 0  # unbiased: single estimates go below 0
    # different distributions: clearly positive
    assert kid(features[:300], features[300:] + 0.5)[0] > 10 * abs(kid(features[:300], features[300:])[0])


def test_mmd2_equals_the_sums_of_its_formula(features):
    x, y = features[:12], features[20:29]
    k = lambda u, v: (u @ v / len(u) + 1) ** 3
    xx = sum(k(x[i], x[j]) for i in range(12) for j in range(12) if i != j) / (12 * 11)
    yy = sum(k(y[i], y[j]) for i in range(9) for j in range(9) if i != j) / (9 * 8)
    xy = sum(k(x[i], y[j]) for i in range(12) for j in range(9)) / (12 * 9)
    assert mmd2_unbiased(x, y) == pytest.approx((xx + yy - 2 * xy).item(), rel=1e-9)


def test_clip_score_matching_vs_shuffled(real, clip):
    images, captions = real
    matching, shuffled = clip_score(images[:200], captions[:200], *clip), clip_score(images[:200], captions[200:400], *clip)
    assert 0 <= shuffled < matching <= 100 and matching - shuffled > 30
    # the formula, computed straight from transformers' CLIPModel: clamped per pair, then averaged
    model, tokenizer = clip
    feats = lambda o: o if isinstance(o, torch.Tensor) else o.pooler_output
    x = torch.nn.functional.interpolate(torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1) for im in images[:20]]), size=32, mode="area")
    ids = tokenizer(captions[200:220], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(feats(model.get_image_features(pixel_values=x)), feats(model.get_text_features(input_ids=ids)))
    assert clip_score(images[:20], captions[200:220], *clip) == pytest.approx((100 * cos.clamp(min=0)).mean().item(), abs=1e-3)


def test_diversity_and_entropy(features):
    assert diversity(features[:1].repeat(10, 1)) == pytest.approx(0, abs=1e-9)
    assert diversity(features[:100]) > 0.5
    assert entropy_bits(["a"] * 8) == 0 and entropy_bits(["a", "b"] * 4) == pytest.approx(1) and entropy_bits("abcd") == pytest.approx(2)
    assert entropy_bits(["a"] * 3 + ["b"]) == pytest.approx(0.8113, abs=1e-4)
    with pytest.raises(ValueError, match="values is empty"): entropy_bits([])


def test_evaluate_images_ranks_real_above_noise(real, clip):
    images, captions = real
    noise = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8)) for i in range(50)]
    good = evaluate_images(images[:50], captions[:50], images[300:600], *clip)
    bad = evaluate_images(noise, captions[:50], images[300:600], *clip)
    assert good["grader_all"] > 0.9 and bad["grader_all"] < 0.1
    assert good["clip_score"] > bad["clip_score"] and good["fid"] < bad["fid"] and good["kid"] < bad["kid"]
    assert good["precision"] > 0.8 and good["recall"] > 0.8 and bad["recall"] < good["recall"] - 0.2  # noise covers less of the real variety


def test_precision_and_recall_split_realism_from_variety(features):
    real, other = features[:200], features[200:400]
    same = precision_recall(real, other)
    assert same["precision"] > 0.8 and same["recall"] > 0.8  # two draws of the same data: realistic and varied
    assert precision_recall(real, real) == {"precision": 1.0, "recall": 1.0}  # every point lies in its own ball
    collapsed = precision_recall(real, real[:1].repeat(200, 1))  # one real image, 200 times: realistic, not varied
    assert collapsed["precision"] == 1.0 and collapsed["recall"] < 0.1
    shifted = precision_recall(real, other + 10 * other.std(0))  # moved off the data: neither
    assert shifted["precision"] == 0 and shifted["recall"] == 0
    swapped = precision_recall(other, real)
    assert swapped["precision"] == precision_recall(real, other)["recall"]  # the two are each other's mirror
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 199\]"): precision_recall(real, other, k=200)


@pytest.mark.parametrize("call,match", [
    (lambda im: check_images([im]), "images has 1 image; the metric needs at least 2"),
    (lambda im: check_images([im, im.resize((32, 32))]), r"images\[1\] is 32x32"),
    (lambda im: check_images([im, im.convert("RGBA")]), r"images\[1\] is a RGBA image; give RGB images"),
    (lambda im: check_images("pictures"), "images must be a list of PIL images"),
    (lambda im: clip_score([im, im], ["a", "b", "c"]), "captions has 3 entries for 2 images"),
    (lambda im: clip_score([im, im], "a caption"), "captions must be a list of str"),
    (lambda im: gaussian_stats(torch.zeros(1, 4)), r"features must be \[N, D\] with N >= 2"),
    (lambda im: kid(torch.zeros(10, 4), torch.zeros(10, 4), subset_size=11), r"subset_size must be an int in \[2, 10\]"),
    (lambda im: evaluate_images([im, im], ["a", "b"], reference=[im]), "reference has 1 image"),
])
def test_bad_input_names_the_argument(real, call, match):
    with pytest.raises((ValueError, TypeError), match=match): call(real[0][0])


def test_frechet_checker_passes_the_reference_and_names_mistakes():
    sqrtm = lambda s: torch.from_numpy(scipy.linalg.sqrtm(s.numpy()).real)
    assert check_frechet_distance(frechet_distance)
    assert not check_frechet_distance(lambda *a: (_ for _ in ()).throw(NotImplementedError())).attempted
    cases = [(lambda m1, s1, m2, s2: ((m1 - m2).norm() + (s1 + s2 - 2 * sqrtm(s1 @ s2)).trace()).item(), "squared"),
             (lambda m1, s1, m2, s2: ((m1 - m2).square().sum() + (s1 + s2).trace()).item(), "is missing: without it"),
             (lambda m1, s1, m2, s2: ((m1 - m2).square().sum() + (s1 + s2 - 2 * (s1 @ s2).sqrt()).trace()).item(), "elementwise"),
             (lambda m1, s1, m2, s2: ((m1 - m2).square().sum() + (s1 + s2 - 2 * sqrtm(s1) @ sqrtm(s2)).trace()).item(), "do not commute"),
             (lambda m1, s1, m2, s2: "a number", "return a number")]
    for wrong, hint in cases:
        result = check_frechet_distance(wrong)
        assert not result and hint in result.message, result


def write_pngs(folder, real, n):
    images, captions = real
    for i in range(n): save_png(images[i], folder / f"img-{i}.png", dict(command="generate", prompt=captions[i]))


def test_cli_evaluate_good_input(tmp_path, real, capsys):
    write_pngs(tmp_path, real, 12)
    assert main(["evaluate", str(tmp_path), "--reference-n", "200"]) == 0
    out = capsys.readouterr().out
    assert "12 images against 200 fresh course images" in out and "grader: 1.000" in out and "FID:" in out and "precision:" in out and "diversity:" in out
    # an imagefolder with metadata.csv works too, and so do single files
    folder = tmp_path / "imagefolder"; folder.mkdir()
    with open(folder / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f); w.writerow(["file_name", "text"])
        for i in range(5): real[0][i].save(folder / f"{i}.png"); w.writerow([f"{i}.png", real[1][i]])
    images, captions = read_images_with_captions([folder, tmp_path / "img-0.png"])
    assert len(images) == 6 and captions[:5] == real[1][:5] and captions[5] == real[1][0]


@pytest.mark.parametrize("setup,match", [
    (lambda d: None, "holds no PNG images and no metadata.csv"),
    (lambda d: Image.new("RGB", (64, 64)).save(d / "plain.png"), "records no prompt"),
    (lambda d: Image.new("RGB", (128, 128)).save(d / "big.png"), "is 128x128"),
    (lambda d: (d / "metadata.csv").write_text("name,caption\nx.png,a\n"), "must name the columns file_name,text"),
])
def test_cli_evaluate_bad_input(tmp_path, capsys, monkeypatch, setup, match):
    monkeypatch.setenv("SDCOURSE_PROGRESS", "0")  # the progress bar shares stderr
    setup(tmp_path)
    assert main(["evaluate", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sdcourse evaluate: error:") and match in err and len(err.strip().splitlines()) == 1


def test_cli_evaluate_needs_two_images_and_a_sane_reference(tmp_path, real, capsys):
    write_pngs(tmp_path, real, 1)
    assert main(["evaluate", str(tmp_path / "img-0.png")]) == 1
    assert "the metrics need at least 2" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e: main(["evaluate", str(tmp_path), "--reference-n", "1"])
    assert e.value.code == 2
