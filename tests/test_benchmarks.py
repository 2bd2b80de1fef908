"""Every benchmark script runs on tiny settings and writes the record its lecture reads (the timings themselves are not tested: speed lives in
the scripts). Each runs in this process, as `python benchmarks/X.py` would run it, so that the test does not pay for importing torch again."""
import contextlib, io, json, re, runpy, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(script, *args, tmp_path, monkeypatch=None):
    record = tmp_path / "record.json"
    argv, out = [str(ROOT / "benchmarks" / script), *map(str, args), "--record", str(record)], io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.setattr(sys, "argv", argv); mp.setenv("SDCOURSE_PROGRESS", "0")
        try: runpy.run_path(argv[0], run_name="__main__")
        except SystemExit as e: assert e.code in (0, None), f"{script} exited {e.code}: {out.getvalue()[-2000:]}"
    return out.getvalue(), json.loads(record.read_text())


@pytest.mark.slow
def test_attention_cost(tmp_path):
    out, record = run("attention_cost.py", "--heads", "1", "--head-dim", "8", "--repeats", "1", "--device", "cpu", tmp_path=tmp_path)
    assert "| positions (latent side) |" in out and [r["side"] for r in record["rows"]] == [16, 32, 48, 64]
    assert all(r["naive_ms"] > 0 and r["sdpa_ms"] > 0 for r in record["rows"]) and record["heads"] == 1


@pytest.mark.slow
def test_vae_speed(tmp_path):
    out, record = run("vae_speed.py", "--repeats", "1", "--device", "cpu", tmp_path=tmp_path)
    assert "| batch | encode images/s |" in out and all(r["encode_per_s"] > 0 and r["decode_per_s"] > 0 for r in record["rows"])


@pytest.mark.slow
def test_training_speed(tmp_path):
    out, record = run("training_speed.py", "--batch-size", "2", "--repeats", "1", "--n-images", "64", "--device", "cpu", tmp_path=tmp_path)
    assert "caching makes a step" in out and re.search(r"shipped run \(cpu\): .* first at step \d+, after \d+\.\d minutes of training", out), out
    assert record["cached_steps_per_s"] > 0 and record["uncached_steps_per_s"] > 0 and record["batch_size"] == 2


@pytest.mark.slow
def test_sampling_speed(tmp_path):
    out, record = run("sampling_speed.py", "--steps", "2", "--batch-sizes", "1", "--repeats", "1", "--device", "cpu", tmp_path=tmp_path)
    from sdcourse.sampling import SCHEDULERS
    assert "| scheduler | images |" in out and [r["scheduler"] for r in record["rows"]] == list(SCHEDULERS)
    assert all(r["ours_s"] > 0 and r["pipeline_s"] > 0 for r in record["rows"])


@pytest.mark.slow
def test_gpu_benchmark_runs_on_the_cpu_and_says_so(tmp_path):
    "Without CUDA the GPU benchmark runs sdcourse-tiny in float32 only, says that it measured no GPU, and still drives both widgets."
    out, record = run("gpu.py", "--steps", "2", "--repeats", "1", tmp_path=tmp_path)
    assert "no GPU" in out and record["full_size"] is False and [r["setup"] for r in record["rows"]] == ["float32 (SDPA)"]
    assert record["rows"][0]["step_ms"] > 0 and record["rows"][0]["images_per_s"] > 0
    assert "guidance widget drew 2 images" in out and "Figure(" not in out
