"Every benchmark script runs on tiny settings and writes the record its lecture reads (the timings themselves are not tested: speed lives in the scripts)."
import json, os, re, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(script, *args, tmp_path):
    record = tmp_path / "record.json"
    result = subprocess.run([sys.executable, ROOT / "benchmarks" / script, *args, "--record", record], capture_output=True, text=True,
                            env={**os.environ, "SDCOURSE_PROGRESS": "0"}, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout, json.loads(record.read_text())


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
