import hashlib, multiprocessing as mp

import numpy as np, pytest, torch
from PIL import Image

from sdcourse.data import (CAPTION_PHRASINGS, COLOURS, HELDOUT_COMBOS, HELDOUT_PHRASINGS, NEW_SHAPE, PHRASINGS, POSITIONS, SHAPES, SPLITS,
                           TRAIN_PHRASINGS, Attributes, ShapesDataset, make_caption, sample_attributes, template_caption,
                           example_caption, example_mask, export_imagefolder, eval_prompts, grade, grader_accuracy, load_imagefolder, make_example, parse_caption, read_caption,
                           unknown_caption_words, word_hint,
                           read_attributes, render)


def test_grader_is_right_on_2000_dataset_images():
    "The issue's bar: at least 0.99 per attribute on 2,000 images that include held-out combinations."
    items = [ShapesDataset(1600)[i] for i in range(1600)] + [ShapesDataset(400, "heldout")[i] for i in range(400)]
    acc = grader_accuracy([o["image"] for o in items], [o["text"] for o in items])
    assert {"colour", "shape", "position"} <= acc.keys()
    assert min(acc.values()) >= 0.99, acc


def test_grader_reads_stars_and_other_sizes():
    for size, split in ((64, "concept"), (32, "train"), (128, "heldout")):
        ex = [make_example(i, split, size=size) for i in range(100)]
        acc = grader_accuracy([e[0] for e in ex], [e[1] for e in ex])
        assert min(acc.values()) >= 0.99, (size, split, acc)


def test_grader_catches_each_wrong_attribute():
    image, _, a = make_example(11)
    assert all(grade(image, f"a {a.colour} {a.shape} in the {a.position}").values())
    other_colour = next(c for c in COLOURS if c != a.colour)
    other_shape = next(s for s in SHAPES if s != a.shape)
    other_position = next(p for p in POSITIONS if p != a.position)
    assert grade(image, f"a {other_colour} {a.shape} in the {a.position}") == dict(colour=False, shape=True, position=True)
    assert grade(image, f"a {a.colour} {other_shape} in the {a.position}") == dict(colour=True, shape=False, position=True)
    assert grade(image, f"a {a.colour} {a.shape} in the {other_position}") == dict(colour=True, shape=True, position=False)
    wrong_size = "small" if a.size == "large" else "large"
    assert grade(image, f"a {wrong_size} {a.colour} {a.shape} in the {a.position}")["size"] is False


def test_blank_image_grades_wrong_not_crash():
    blank = Image.new("RGB", (64, 64), (25, 25, 25))
    assert read_attributes(blank) == dict(colour=None, shape=None, position=None, size=None, background="black")
    assert not any(grade(blank, "a red circle in the center").values())


def test_same_seed_same_bytes_other_seed_other_image():
    digest = lambda i, seed, split="train": hashlib.sha256(make_example(i, split, seed)[0].tobytes()).hexdigest()
    assert digest(5, 0) == digest(5, 0) and make_example(5, seed=0)[1] == make_example(5, seed=0)[1]
    assert digest(5, 0) != digest(5, 1)
    assert digest(5, 0, "train") != digest(5, 0, "heldout")
    assert len({digest(i, 0) for i in range(1000)}) == 1000


def test_splits_keep_their_promises():
    train = [make_example(i)[2] for i in range(3000)]
    assert not any((a.colour, a.shape) in HELDOUT_COMBOS or a.shape == NEW_SHAPE for a in train)
    assert {a.colour for a in train} == set(COLOURS) and {a.shape for a in train} == set(SHAPES)
    heldout = [make_example(i, "heldout")[2] for i in range(300)]
    assert {(a.colour, a.shape) for a in heldout} == set(HELDOUT_COMBOS)
    assert {make_example(i, "concept")[2].shape for i in range(50)} == {NEW_SHAPE}


def test_captions_parse_back_to_their_attributes():
    for split in SPLITS:
        for i in range(500):
            _, caption, a = make_example(i, split)
            parsed = parse_caption(caption)
            assert {"colour", "shape", "position"} <= parsed.keys()
            assert all(getattr(a, k) == v for k, v in parsed.items()), caption
    assert parse_caption("A BIG Green Square, in the upper left corner.") == dict(size="large", colour="green", shape="square", position="top left")


@pytest.mark.parametrize("caption, message", [
    ("a red blue circle in the center", "two colours"),
    ("a red circle square in the center", "two shapes"),
    ("kindly, and quickly", "names no attribute"),
    ("", "names no attribute"),
    ("a galaxy " * 100_000, "names no attribute"),
])
def test_malformed_captions_say_what_is_accepted(caption, message):
    with pytest.raises(ValueError, match=message) as error: parse_caption(caption)
    assert len(str(error.value)) < 600  # an 800 kB caption is not echoed whole


@pytest.mark.parametrize("caption, graded, ignored", [
    ("a pink circle in the center", dict(shape="circle", position="center"), ["pink"]),
    ("a red circle in the center of the galaxy", dict(colour="red", shape="circle", position="center"), ["galaxy"]),
    ("a red circle in the top", dict(colour="red", shape="circle"), ["top"]),  # half a position names none of the five
    ("a red circle in the middle left", dict(colour="red", shape="circle"), ["middle", "left"]),
    ("a red circle", dict(colour="red", shape="circle"), []),
    ("a crimson circle, kindly, in the top left", dict(shape="circle", position="top left"), ["crimson", "kindly"]),
])
def test_captions_are_graded_on_what_they_name_and_say_what_they_ignore(caption, graded, ignored):
    assert read_caption(caption) == (graded, ignored) and unknown_caption_words(caption) == ignored
    assert grade(make_example(0)[0], caption).keys() == graded.keys()


def test_grader_bad_images_say_what_is_accepted():
    caption = "a red circle in the center"
    image = make_example(0)[0]
    with pytest.raises(ValueError, match="must be an RGB image, got mode 'RGBA'"): grade(image.convert("RGBA"), caption)
    with pytest.raises(ValueError, match="must be square with a side in \\[32, 512\\].*64x48"): grade(image.resize((64, 48)), caption)
    with pytest.raises(ValueError, match="got 16x16"): grade(image.resize((16, 16)), caption)
    with pytest.raises(ValueError, match="uint8 of shape \\[H, W, 3\\]"): grade(np.zeros((64, 64, 3), np.float32), caption)
    with pytest.raises(TypeError, match="PIL image or a uint8 array"): grade([[0]], caption)
    with pytest.raises(TypeError, match="caption must be a str"): grade(image, 3)
    assert grade(np.asarray(image), make_example(0)[1]) == grade(image, make_example(0)[1])


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(n="10"), TypeError, "n must be an int, got str"),
    (dict(n=0), ValueError, "n must be an int in \\[1, inf\\]"),
    (dict(n=10, seed=1.0), TypeError, "seed must be an int, got float"),
    (dict(n=10, seed=-2), ValueError, "seed must be an int in \\[0, inf\\]"),
    (dict(n=10, split="test"), ValueError, "split='test' is not accepted; choose one of \\('train', 'heldout', 'concept'\\)"),
    (dict(n=10, size=60), ValueError, "size must be a multiple of 8"),
    (dict(n=10, size=1024), ValueError, "size must be an int in \\[32, 512\\]"),
])
def test_dataset_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message): ShapesDataset(**kwargs)


def test_dataset_items_and_index_errors():
    ds = ShapesDataset(5, "heldout", seed=2, size=32)
    item = ds[4]
    assert set(item) == {"image", "text", "colour", "shape", "position", "size", "background"}
    assert item["image"].size == (32, 32) and item["image"].mode == "RGB"
    assert np.array_equal(np.asarray(ds[-1]["image"]), np.asarray(item["image"]))
    with pytest.raises(IndexError, match="out of range for 5"): ds[5]
    with pytest.raises(ValueError, match="shape='hexagon'"): render(Attributes("red", "hexagon", "center", "small", "white"))


def test_export_and_load_with_datasets(tmp_path, capfd):
    import datasets
    folder = export_imagefolder(tmp_path / "shapes", 40, split="heldout", seed=3)
    lines = (folder / "metadata.csv").read_text().splitlines()
    assert lines[0] == "file_name,text" and len(lines) == 41
    datasets.enable_progress_bars(); capfd.readouterr()  # (what the export printed is not what this checks)
    ds = load_imagefolder(folder, cache=tmp_path / "hf")
    assert capfd.readouterr().err == "" and not datasets.utils.are_progress_bars_disabled()  # no "Downloading data" bars; the caller's setting kept
    assert len(ds) == 40 and set(ds.column_names) == {"image", "text"}
    by_name = {row.split(",", 1)[0]: row.split(",", 1)[1].strip('"') for row in lines[1:]}
    assert by_name["00007.png"] == make_example(7, "heldout", 3)[1]
    assert {ds[i]["text"] for i in range(40)} == {make_example(i, "heldout", 3)[1] for i in range(40)}
    with pytest.raises(FileNotFoundError, match="no metadata.csv"): load_imagefolder(tmp_path)


def test_export_never_mixes_datasets(tmp_path):
    folder = export_imagefolder(tmp_path / "a", 10, seed=0)
    before = sorted(p.name for p in folder.iterdir())
    assert export_imagefolder(folder, 10, seed=0) == folder  # same dataset: reused
    with pytest.raises(FileExistsError, match="holds another dataset"): export_imagefolder(folder, 12, seed=0)
    assert sorted(p.name for p in folder.iterdir()) == before  # refused means untouched
    export_imagefolder(folder, 12, seed=1, overwrite=True)
    assert len(list(folder.glob("*.png"))) == 12 and "seed\": 1" in (folder / "sdcourse_dataset.json").read_text()
    mine = tmp_path / "mine"; mine.mkdir(); (mine / "photo.png").write_bytes(b"mine")
    with pytest.raises(FileExistsError, match=r"holds files sdcourse did not write \(photo.png\)"): export_imagefolder(mine, 5, overwrite=True)
    assert (mine / "photo.png").read_bytes() == b"mine"


def _export(path):
    export_imagefolder(path, 300, seed=5)


def test_concurrent_exports_of_the_same_dataset(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_export, args=(tmp_path / "shared",)) for _ in range(2)]
    for p in procs: p.start()
    for p in procs: p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert len(list((tmp_path / "shared").glob("*.png"))) == 300
    assert not list(tmp_path.glob(".shared.tmp-*"))  # no half-written leftovers


def test_golden_dataset_bytes():
    "The shipped models were trained on these exact pixels and captions: any change to rendering or captions shows here first."
    import hashlib
    digest, pixels = hashlib.sha256(), hashlib.sha256()
    for split in ("train", "heldout", "concept"):
        for i in range(4):
            image, caption = make_example(i, split, seed=0)[:2]
            digest.update(np.asarray(image).tobytes()); digest.update(caption.encode()); pixels.update(np.asarray(image).tobytes())
    assert digest.hexdigest() == GOLDEN, digest.hexdigest()
    assert pixels.hexdigest() == GOLDEN_PIXELS, pixels.hexdigest()  # the VAE was trained on these; the caption language left them alone


@pytest.mark.parametrize("split", SPLITS)
def test_a_caption_alone_is_the_caption_of_its_example(split):
    for seed in (0, 1, 5):
        assert [example_caption(i, split, seed) for i in range(100)] == [make_example(i, split, seed)[1] for i in range(100)]
    assert eval_prompts(30, split) == [make_example(i, split, 1)[1] for i in range(30)]  # the test captions: seed 1, as before


GOLDEN = "a575399d9df2614cfecf27aa3bb7eb0ab8b769267d328219cb13e5f108551f7a"  # 4 images and captions per split, seed 0
GOLDEN_PIXELS = "c00702e61e95d65e27583598819d506db74a4e74e7c9423b5f05f7f580a37929"  # the images alone: the same before and after the caption language


@pytest.mark.parametrize("split", SPLITS)
def test_example_mask_is_the_exact_coverage_of_the_drawn_shape(split):
    for index in range(5):
        image, _, attrs = make_example(index, split, seed=3)
        mask = example_mask(index, split, seed=3)
        assert mask.shape == (64, 64) and mask.min() == 0 and mask.max() == 1
        pixels = np.asarray(image, dtype=np.float64)
        fg, bg = pixels[mask == 1].mean(0), pixels[mask == 0].mean(0)
        assert np.ptp(pixels[mask == 1], axis=0).max() == 0 and np.ptp(pixels[mask == 0], axis=0).max() == 0  # one colour inside, one outside
        assert np.abs(np.round(bg * (1 - mask[..., None]) + fg * mask[..., None]) - pixels).max() <= 1  # the image is the mask's blend of the two
        assert np.linalg.norm(fg - COLOURS.get(attrs.colour, fg)) < 25
    with pytest.raises(ValueError, match="split"): example_mask(0, "nope")


def test_word_hints_name_the_attribute_and_the_course_words():
    assert word_hint("Crimson") == "for the colour, the course's captions say red, orange, yellow, green, blue, purple"
    assert word_hint("tiny") == "for the size, the course's captions say small, little, large, big"
    assert word_hint("zebra") is None and word_hint("red") is None  # unknown, and a course word: no hint


def test_dataset_tensors_are_the_exported_examples_as_models_take_them():
    from sdcourse.data import dataset_tensors, heldout_images
    images, captions = dataset_tensors(6, "heldout", seed=2)
    assert images.shape == (6, 3, 64, 64) and images.dtype == torch.float32 and images.min() >= -1 and images.max() <= 1
    assert captions == [make_example(i, "heldout", 2)[1] for i in range(6)]
    assert torch.equal(images[3], torch.from_numpy(np.asarray(make_example(3, "heldout", 2)[0])).permute(2, 0, 1) / 127.5 - 1)  # the PNG round trip is lossless
    assert heldout_images(3).shape == (6, 3, 64, 64)


def _words(text):
    import re
    return set(re.findall(r"[a-z]+|[^a-z\s]", text.lower()))


def test_the_caption_language_says_every_attribute_in_every_family():
    "Each family's captions read back (grader) to the attributes they were made from, and vary: a family is not one sentence."
    rng = np.random.default_rng(7)
    for family in PHRASINGS:
        captions = set()
        for split in SPLITS:
            for _ in range(200):
                attrs = sample_attributes(rng, split)
                caption = make_caption(attrs, rng, family)
                parsed = parse_caption(caption)
                assert {"colour", "shape", "position"} <= parsed.keys() and all(getattr(attrs, k) == v for k, v in parsed.items()), (family, caption)
                captions.add(caption)
        assert len(captions) > 300, family


def test_held_out_phrasings_are_new_constructions_of_known_words():
    "The split of the families: disjoint, every family in one of them, and no held-out family uses a word the training families never do."
    assert set(TRAIN_PHRASINGS).isdisjoint(HELDOUT_PHRASINGS) and set(TRAIN_PHRASINGS) | set(HELDOUT_PHRASINGS) == set(PHRASINGS)
    assert set(CAPTION_PHRASINGS) <= set(TRAIN_PHRASINGS)
    rng = np.random.default_rng(0)
    seen = lambda families: set().union(*(_words(make_caption(sample_attributes(rng, sp), rng, families)) for sp in SPLITS for _ in range(3000)))
    trained, held_out = seen(TRAIN_PHRASINGS), seen(HELDOUT_PHRASINGS)
    assert held_out <= trained, held_out - trained
    # and the constructions are new: in training captions the colour never follows "in" or a shape and a comma, and no caption opens with the background
    training = [make_caption(sample_attributes(rng, "train"), rng, TRAIN_PHRASINGS).lower() for _ in range(3000)]
    assert not any(f"in {c}" in t for t in training for c in COLOURS)
    assert not any(f"{s}, {c}" in t for t in training for s in SHAPES for c in COLOURS)
    assert not any(t.startswith(("on a", "against", "white", "black", "light", "dark")) for t in training)
    assert any(f"in {c}," in make_caption(sample_attributes(rng, "train"), rng, "in colour").lower() for _ in range(20) for c in COLOURS)


def test_one_family_takes_no_draw_so_the_templates_are_the_captions_of_before():
    "The template family alone draws exactly what the six templates always did: the shipped models' captions are unchanged (golden hash)."
    for seed in range(20):
        a, b = np.random.default_rng(seed), np.random.default_rng(seed)
        attrs = sample_attributes(np.random.default_rng(seed))
        assert make_caption(attrs, a, "template") == template_caption(attrs, b) and a.random() == b.random()  # same draws, same stream after


def test_bad_phrasings_are_refused_by_name():
    attrs, rng = sample_attributes(np.random.default_rng(0)), np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"phrasings='sonnet' is not accepted; choose one of \('template',"): make_caption(attrs, rng, "sonnet")
    with pytest.raises(ValueError, match="phrasings is empty"): make_caption(attrs, rng, ())
    with pytest.raises(ValueError, match="phrasings="): eval_prompts(5, phrasings=["template", "limerick"])


def test_eval_prompts_in_other_phrasings_ask_for_the_same_images():
    "Same index, same attributes: only the sentence changes (so a score on new phrasings compares with the templates' image for image)."
    for split in SPLITS:
        plain, other = eval_prompts(50, split), eval_prompts(50, split, phrasings=HELDOUT_PHRASINGS)
        assert all(p != o for p, o in zip(plain, other))  # the templates never make a held-out family's sentence
        for o, i in zip(other, range(50)):
            attrs = make_example(i, split, seed=1)[2]
            assert all(getattr(attrs, k) == v for k, v in parse_caption(o).items()), o


def test_an_export_remembers_its_phrasings(tmp_path, monkeypatch):
    "The same images captioned in other families are another dataset: a cached export is never handed out with the wrong captions."
    import sdcourse.data as data
    monkeypatch.setenv("SDCOURSE_CACHE", str(tmp_path))
    before = list(data.course_dataset(8)["text"])
    other = ("template",) if data.CAPTION_PHRASINGS != ("template",) else TRAIN_PHRASINGS
    export_imagefolder(tmp_path / "mine", 8)
    monkeypatch.setattr(data, "CAPTION_PHRASINGS", other)
    after = list(data.course_dataset(8)["text"])
    assert after == [example_caption(i) for i in range(8)] and after != before
    with pytest.raises(FileExistsError, match="holds another dataset"): export_imagefolder(tmp_path / "mine", 8)


def test_convex_check_rejects_a_spark_the_grader_reads_as_a_diamond():
    "Lecture 1's second opinion: a concave spark passes the grader as a diamond; at 4x resolution its solidity is far below a diamond's."
    import math
    from PIL import ImageDraw
    from sdcourse.data import convex_check, estimate_alpha, finer_coverage
    from sdcourse.exercises import reference
    solidity = reference("solidity")
    def spark(inner):
        c = Image.new("L", (256, 256), 0)
        ImageDraw.Draw(c).polygon([(128 + (80 if k % 2 == 0 else 80 * inner) * math.cos(k * math.pi / 4 - math.pi / 2),
                                    128 + (80 if k % 2 == 0 else 80 * inner) * math.sin(k * math.pi / 4 - math.pi / 2)) for k in range(8)], fill=255)
        a = np.asarray(c.resize((64, 64), Image.BOX), dtype=np.float32)[..., None] / 255
        return Image.fromarray(np.round(255 * (1 - a) + np.array([220, 50, 47]) * a).astype(np.uint8), "RGB")
    image = spark(0.45)
    assert read_attributes(image)["shape"] == "diamond" and not convex_check(image, solidity)
    for shape in SHAPES:  # every convex shape the dataset draws passes, large and small
        for size in ("large", "small"):
            drawn = render(Attributes("blue", shape, "center", size, "white"), 64, np.random.default_rng(0))
            assert convex_check(drawn, solidity), (shape, size)
    alpha = estimate_alpha(image)[2]
    assert finer_coverage(alpha).shape == (256, 256) and abs(finer_coverage(alpha).mean() - alpha.mean()) < 0.01  # resampled, not rescaled
    assert convex_check(Image.new("RGB", (64, 64), (255, 255, 255)), solidity)  # a blank image has no shape to reject


def test_the_labelled_generated_images_are_graded_as_lecture_1_reports():
    "The 104 labelled images ship with the course: every file is there, and the grader passes no image a person fails at w = 1 and fails none a person passes."
    import json
    from sdcourse.core import shipped_path
    folder = shipped_path("lectures", "01_data", "generated")
    labels = json.loads((folder / "labels.json").read_text())["images"]
    assert len(labels) == 104 and all((folder / o["file"]).is_file() for o in labels)
    for o in labels:
        graded = grade(Image.open(folder / o["file"]).convert("RGB"), o["caption"])
        if o["right"] is True: assert all(graded.values()), o["file"]  # the grader never fails an image a person passes
        if o["guidance_scale"] == 1 and o["side"] == 64 and o["right"] is False: assert not all(graded.values()), o["file"]
