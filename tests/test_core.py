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
