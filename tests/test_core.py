import numpy as np, pytest, torch
from PIL import Image

from sdcourse.core import (cache_dir, check_choice, check_int, get_device, make_generator, pil_to_tensor,
                           progress, seed_everything, show_images, signed_to_unit, tensor_to_pil, unit_to_signed)


def test_device_choice_and_override(monkeypatch):
    monkeypatch.delenv("SDCOURSE_DEVICE", raising=False)
    assert get_device().type in ("cuda", "mps", "cpu")
    assert get_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("SDCOURSE_DEVICE", "cpu")
    assert get_device() == torch.device("cpu")


@pytest.mark.parametrize("bad, message", [("tpu", "use one of"), ("gpu", "use one of"), (3.5, "use one of")])
def test_device_bad_names(bad, message):
    with pytest.raises(ValueError, match=message): get_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_missing_cuda_says_what_is_available():
    with pytest.raises(ValueError, match=r"not available on this machine; available: \[.*'cpu'\]"): get_device("cuda")


def test_checks_name_the_argument():
    assert check_int("n", np.int64(4), 1) == 4
    with pytest.raises(TypeError, match="n must be an int, got str"): check_int("n", "4")
    with pytest.raises(TypeError, match="n must be an int, got bool"): check_int("n", True)
    with pytest.raises(ValueError, match=r"n must be an int in \[1, 10\], got 11"): check_int("n", 11, 1, 10)
    with pytest.raises(ValueError, match=r"mode='x' is not accepted; choose one of \('a', 'b'\)"): check_choice("mode", "x", "ab")


def test_seeds_reproduce_and_differ():
    seed_everything(3); a = (torch.rand(4), np.random.rand(2))
    seed_everything(3); b = (torch.rand(4), np.random.rand(2))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    x = torch.randn(5, generator=make_generator(1))
    assert torch.equal(x, torch.randn(5, generator=make_generator(1)))
    assert not torch.equal(x, torch.randn(5, generator=make_generator(2)))
    with pytest.raises(TypeError, match="seed must be an int"): make_generator(1.0)
    with pytest.raises(ValueError, match="seed must be an int in"): seed_everything(-1)


def test_image_tensor_round_trip():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (8, 6, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    t = pil_to_tensor(img)
    assert t.shape == (3, 8, 6) and t.dtype == torch.float32 and 0 <= t.min() and t.max() <= 1
    assert np.array_equal(np.asarray(tensor_to_pil(t)), arr)
    batch = pil_to_tensor([img, img])
    assert batch.shape == (2, 3, 8, 6) and len(tensor_to_pil(batch)) == 2
    assert torch.allclose(signed_to_unit(unit_to_signed(t)), t)
    assert unit_to_signed(torch.tensor([0.0, 0.5, 1.0])).tolist() == [-1.0, 0.0, 1.0]
    assert signed_to_unit(torch.tensor([-3.0, 3.0])).tolist() == [0.0, 1.0]  # clamped
    assert pil_to_tensor(img.convert("L")).shape == (3, 8, 6)


def test_image_conversion_bad_input():
    with pytest.raises(TypeError, match="image must be a PIL image"): pil_to_tensor(np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match=r"x must have shape \[3, H, W\]"): tensor_to_pil(torch.zeros(4, 4))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"): tensor_to_pil(np.zeros((3, 4, 4)))


def test_show_images_grid():
    import matplotlib.pyplot as plt
    fig = show_images(torch.rand(5, 3, 8, 8), captions=list("abcde"), ncols=3)
    axes = [ax for ax in fig.axes if ax.images]
    assert len(fig.axes) == 6 and len(axes) == 5 and [ax.get_title() for ax in axes] == list("abcde")
    fig2 = show_images(torch.full((1, 3, 4, 4), -1.0), signed=True)
    assert fig2.axes[0].images[0].get_array().max() == 0  # -1 shows as black
    plt.close("all")
    with pytest.raises(ValueError, match="captions has 2 entries for 3 images"): show_images(torch.rand(3, 3, 4, 4), ["a", "b"])
    with pytest.raises(ValueError, match="images is empty"): show_images([])


def test_cache_dir_and_progress(monkeypatch, tmp_path):
    monkeypatch.setenv("SDCOURSE_CACHE", str(tmp_path / "c"))
    assert cache_dir("data", 1) == tmp_path / "c" / "data" / "1" and (tmp_path / "c" / "data" / "1").is_dir()
    monkeypatch.setenv("SDCOURSE_PROGRESS", "0")
    bar = progress(range(3))
    assert bar.disable and list(bar) == [0, 1, 2]


def test_weights_round_trip_atomically_and_refuse_other_configs(tmp_path):
    from sdcourse.core import load_weights, save_weights
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    path = save_weights(net, tmp_path / "w" / "net.safetensors", metadata={"steps": 3})
    again = load_weights(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)), path)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))
    assert [p.name for p in path.parent.iterdir()] == ["net.safetensors"]
    with pytest.raises(ValueError, match=r"0.weight: file has shape \[4, 3\], model expects \[4, 5\]"):
        load_weights(torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)), path)
    with pytest.raises(ValueError, match="missing 3.weight"):
        load_weights(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2), torch.nn.Linear(2, 2)), path)
    with pytest.raises(FileNotFoundError, match="no weights file"): load_weights(net, tmp_path / "missing.safetensors")
    assert path.read_bytes()[:8] != b"\x80\x04\x95"  # not a pickle


def test_a_failed_save_leaves_the_last_good_file(tmp_path, monkeypatch):
    import safetensors.torch
    from sdcourse.core import load_weights, save_weights
    net = torch.nn.Linear(2, 2)
    path = save_weights(net, tmp_path / "net.safetensors")
    good = path.read_bytes()
    def crash(*args, **kwargs):
        open(args[1], "wb").write(b"half a file")
        raise OSError("disk full")
    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(OSError, match="disk full"): save_weights(torch.nn.Linear(2, 2), path)
    assert path.read_bytes() == good and [p.name for p in tmp_path.iterdir()] == ["net.safetensors"]
    load_weights(torch.nn.Linear(2, 2), path)


def test_save_pretrained_atomic_replaces_only_its_own_folder_whole(tmp_path):
    from sdcourse.core import MANIFEST, save_pretrained_atomic
    class Thing:
        def __init__(self, text): self.text = text
        def save_pretrained(self, folder):
            folder.mkdir(parents=True); (folder / "config.json").write_text(self.text)
    save_pretrained_atomic(Thing("one"), tmp_path / "model")
    with pytest.raises(FileExistsError, match="holds an earlier sdcourse output.*--overwrite"): save_pretrained_atomic(Thing("two"), tmp_path / "model")
    save_pretrained_atomic(Thing("two"), tmp_path / "model", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary or old folder left
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json", MANIFEST]
    assert (tmp_path / "model" / "config.json").read_text() == "two"
    (tmp_path / "model" / "notes.txt").write_text("mine")  # a user's file inside: never replaced, even with overwrite
    with pytest.raises(FileExistsError, match=r"holds files sdcourse did not write \(notes.txt\)"):
        save_pretrained_atomic(Thing("three"), tmp_path / "model", overwrite=True)
    assert (tmp_path / "model" / "notes.txt").read_text() == "mine" and (tmp_path / "model" / "config.json").read_text() == "two"


def test_nested_outputs_count_as_ours_and_a_forged_nested_manifest_cannot_vouch_for_a_users_file(tmp_path, monkeypatch):
    import hashlib, json
    from sdcourse.core import MANIFEST, foreign_files, read_manifest, write_manifest
    for part in ("a", "b/c"):
        (tmp_path / part).mkdir(parents=True); (tmp_path / part / "w.bin").write_bytes(part.encode()); write_manifest(tmp_path / part, "x")
    assert foreign_files(tmp_path) == []
    (tmp_path / "b" / "notes.txt").write_text("mine")  # above c's manifest, below none: not ours
    (tmp_path / "a" / "w.bin").write_bytes(b"changed")  # listed, but not what sdcourse wrote
    (tmp_path / "d").mkdir(); (tmp_path / "d" / "thesis.tex").write_text("work")
    real = dict(sha256=hashlib.sha256(b"work").hexdigest(), bytes=4)  # the user's file with its real hash: a hash proves content, not authorship
    (tmp_path / "d" / MANIFEST).write_text(json.dumps({"kind": "x", "files": {"thesis.tex": real}, "signature": "0" * 64}))  # forged
    assert read_manifest(tmp_path / "d") is None
    assert foreign_files(tmp_path) == ["a/w.bin", "b/notes.txt", "d/sdcourse_manifest.json", "d/thesis.tex"]


def test_a_manifest_signed_with_another_users_key_vouches_for_nothing(tmp_path, monkeypatch):
    from sdcourse.core import foreign_files, read_manifest, write_manifest
    monkeypatch.setenv("SDCOURSE_CONFIG", str(tmp_path / "alice"))
    (tmp_path / "out").mkdir(); (tmp_path / "out" / "w.bin").write_bytes(b"weights"); write_manifest(tmp_path / "out", "x")
    assert read_manifest(tmp_path / "out") == ("x", {"w.bin": {"sha256": __import__("hashlib").sha256(b"weights").hexdigest(), "bytes": 7}})
    assert (tmp_path / "alice" / "manifest.key").stat().st_mode & 0o777 == 0o600  # readable by its user alone
    monkeypatch.setenv("SDCOURSE_CONFIG", str(tmp_path / "bob"))  # the folder arrives in Bob's shared folder, or from Alice's archive
    assert read_manifest(tmp_path / "out") is None and foreign_files(tmp_path / "out") == ["sdcourse_manifest.json", "w.bin"]
    monkeypatch.setenv("SDCOURSE_CONFIG", str(tmp_path / "alice"))
    record = __import__("json").loads((tmp_path / "out" / "sdcourse_manifest.json").read_text())
    record["files"]["thesis.tex"] = record["files"]["w.bin"]  # an edited manifest: the signature no longer checks
    (tmp_path / "out" / "sdcourse_manifest.json").write_text(__import__("json").dumps(record))
    assert read_manifest(tmp_path / "out") is None


def test_a_training_record_keeps_every_tenth_step_every_evaluation_and_the_last():
    from sdcourse.core import training_record
    history = [dict(step=i + 1, loss=1 / (i + 1)) for i in range(25)]
    history[13] |= dict(train_all=0.123456789)  # an evaluation at step 14
    record = training_record("python -c 'train()'", history, 61.6, "cpu", steps=25, lr=1e-3)
    assert [h["step"] for h in record["history"]] == [1, 11, 14, 21, 25]
    assert record["history"][2]["train_all"] == 0.123457 and record["history"][1]["loss"] == round(1 / 11, 6)
    assert record["command"] == "python -c 'train()'" and record["steps"] == 25 and record["train_seconds"] == 62
    assert record["device"] == "cpu" and record["torch"] == torch.__version__
    assert [h["step"] for h in training_record("c", history, 1, "cpu", every=20)["history"]] == [1, 14, 21, 25]
