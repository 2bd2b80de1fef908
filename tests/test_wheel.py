"The release build (sdist, then the wheel from it) carries the trained model: installed into a fresh virtual environment, with no checkout and no network, `sdcourse generate` works."
import os, shutil, subprocess, sys, sysconfig, tarfile, zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(cmd, **kw):
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert result.returncode == 0, f"{cmd} failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def test_wheel_installs_into_a_fresh_venv_and_generates_offline(tmp_path):
    # build from a copy, so that no stale build/ folder of the checkout can leak old files into the wheel
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "_proc", "_docs", ".cache", "__pycache__"))
    # as the release workflow builds it: the sdist first, then the wheel from the sdist (so the sdist is proven complete)
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", tmp_path / "dist", source])
    sdist, = (tmp_path / "dist").glob("sdcourse-*.tar.gz")
    with tarfile.open(sdist) as tar: in_sdist = tar.getnames()
    assert any(n.endswith("data/sdcourse-tiny/unet/diffusion_pytorch_model.safetensors") for n in in_sdist)
    assert any(n.endswith("README.md") for n in in_sdist) and not any("/nbs/" in n for n in in_sdist)
    wheel, = (tmp_path / "dist").glob("sdcourse-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"sdcourse/core.py", "sdcourse/pipeline.py", "sdcourse/__init__.py"} <= set(names)
    assert not [n for n in names if n.endswith(".ipynb") or n.startswith("tests/")]
    for shipped in ("sdcourse/shipped/sdcourse-tiny/unet/diffusion_pytorch_model.safetensors",
                    "sdcourse/shipped/lectures/10_lora/stars/pytorch_lora_weights.safetensors",
                    "sdcourse/shipped/sdcourse-tiny-controlnet/diffusion_pytorch_model.safetensors",
                    "sdcourse/shipped/sdcourse-tiny-lcm-lora/pytorch_lora_weights.safetensors",
                    "sdcourse/shipped/lectures/15_fewer_steps/flow-unet/diffusion_pytorch_model.safetensors",
                    "sdcourse/shipped/sdcourse-tiny-sd3/transformer/diffusion_pytorch_model.safetensors"):
        assert shipped in names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pkl", ".ckpt"))]  # safetensors only
    megabytes = wheel.stat().st_size / 1e6
    print(f"wheel: {wheel.name}, {megabytes:.1f} MB")
    assert megabytes < 30

    # a fresh environment that reuses the heavy dependencies already installed here (torch, diffusers, ...)
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", venv])
    python, sdcourse = venv / "bin" / "python", venv / "bin" / "sdcourse"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "outer_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # this venv's packages, not its editable sdcourse
    run([python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel])

    empty = tmp_path / "elsewhere"
    empty.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SDCOURSE_CACHE": str(tmp_path / "cache"), "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
    where = run([python, "-c", "import sdcourse, sdcourse.core as c; print(sdcourse.__file__); print(c.shipped_path('sdcourse-tiny'))"], cwd=empty, env=env)
    module, model = where.stdout.split()
    assert module.startswith(str(venv)) and model.startswith(str(venv)) and model.endswith("sdcourse/shipped/sdcourse-tiny"), where.stdout
    from sdcourse.control import mask_image
    from sdcourse.data import Attributes, render_with_mask
    mask_image(render_with_mask(Attributes("red", "circle", "center", "large", "white"))[1]).save(empty / "mask.png")  # where the prompt asks
    # the console script (lecture 91's light front door), lecture 14's option and lecture 15's LCM-LoRA through the wheel's entry points, at once
    run([sdcourse, "generate", "a large red circle in the center", "--control", "mask.png", "--scheduler", "lcm", "-o", "out.png"], cwd=empty, env=env)
    graded = run([sdcourse, "grade", "out.png"], cwd=empty, env=env)
    assert graded.stdout.startswith("PASS out.png"), graded.stdout
    recipe = __import__("json").loads(__import__("PIL.Image", fromlist=["Image"]).open(empty / "out.png").text["sdcourse"])
    assert recipe["controlnet"] == "sdcourse-tiny-controlnet" and recipe["lcm_lora"] == "sdcourse-tiny-lcm-lora", recipe
