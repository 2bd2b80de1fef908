"""Training on several processes (issue #39): two CPU processes (gloo, launched by torchrun as `accelerate launch` would) train the model one
process trains, with the same global batch: the same losses and weights to 1e-5 after 50 steps; evaluations and checkpoints are written once,
by the main process; a checkpoint made by two processes resumes in one; a process that stops answering fails the others within seconds."""
import json, os, subprocess, sys, time
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "ddp_train.py"


def launch(out, processes, *args, timeout=300, env=None):
    "tests/ddp_train.py OUT in `processes` processes under torchrun (gloo on the CPU), each on one thread."
    run = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), SCRIPT]
    return subprocess.run([*map(str, run), str(out), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "SDCOURSE_PROGRESS": "0", **(env or {})})


def in_this_process(out, **kwargs):
    "The same run in this test's own process: one process, without paying for Python and torch to start again."
    import importlib.util
    spec = importlib.util.spec_from_file_location("ddp_train", SCRIPT)
    module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
    module.train(out, **kwargs)


def weights_gap(a, b):
    a, b = load_file(str(a / "weights.safetensors")), load_file(str(b / "weights.safetensors"))
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    in_this_process(root / "one")
    result = launch(root / "two", 2)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return root


def test_two_processes_train_the_model_one_process_trains(runs):
    one, two = (json.loads((runs / name / "history.json").read_text()) for name in ("one", "two"))
    assert [h["step"] for h in one] == [h["step"] for h in two] == list(range(1, 51))
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(one, two)) < 1e-5  # the global batch's loss, step by step
    assert all(a["lr"] == b["lr"] for a, b in zip(one, two))  # the schedule steps once a step, not once a process
    assert weights_gap(runs / "one", runs / "two") < 1e-5


def test_each_process_trains_its_own_half_of_every_global_batch(runs):
    "Without the slicing both processes would train on the whole batch: the same weights, twice the work, and a batch N times smaller than asked."
    whole = (runs / "one" / "samples0.log").read_text().splitlines()
    first, second = ((runs / "two" / f"samples{rank}.log").read_text().splitlines() for rank in (0, 1))
    assert len(whole) == len(first) == len(second) == 50
    for w, a, b in zip(whole, first, second):
        assert len(a.split()) == len(b.split()) == 4 and a.split() + b.split() == w.split()  # process 0: the first 4 of 8, process 1: the last 4


def test_evaluations_and_checkpoints_are_the_main_processs(runs):
    for name in ("one", "two"):
        assert (runs / name / "evals.log").read_text().split() == ["0"] * 3  # steps 20, 40 and 50: once each, by process 0
        assert (runs / name / "checkpoints.log").read_text().splitlines() == ["0 25", "0 50"]


def test_a_checkpoint_of_two_processes_resumes_in_one(runs, tmp_path):
    in_this_process(tmp_path / "resumed", resume_from=runs / "two" / "ck25.safetensors")
    assert weights_gap(tmp_path / "resumed", runs / "one") < 1e-5  # 25 steps on two processes, 25 on one: the uninterrupted run


def test_a_process_that_stops_answering_fails_the_others_within_seconds(tmp_path):
    start = time.time()
    result = launch(tmp_path / "stall", 2, "--stall-rank", 1, "--stall-step", 3, env={"SDCOURSE_COLLECTIVE_TIMEOUT": "5"}, timeout=180)
    seconds = time.time() - start
    assert result.returncode != 0 and seconds < 120, (seconds, result.stderr[-2000:])  # torch's default would wait 30 minutes
    assert "TimeoutError: process 0 of 2 stopped at step 4: it waited 5 s for the others at a collective they never reached" in result.stderr, result.stderr[-3000:]


def test_the_train_command_runs_unchanged_on_two_processes_and_writes_once(tmp_path):
    "`sdcourse train` under torchrun (accelerate launch starts processes the same way): one folder, one record, one checkpoint, one report."
    import shutil
    from sdcourse.pipeline import main
    sdcourse = shutil.which("sdcourse") or str(Path(sys.executable).parent / "sdcourse")
    argv = ["train", "--steps", "4", "--n-images", "16", "--n-eval", "1"]
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", sdcourse, *argv[:1], str(tmp_path / "two"), *argv[1:]],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1", "SDCOURSE_PROGRESS": "0"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stdout.count("adherence on training prompts") == 1  # the main process reports; the other returns quietly
    assert "Grad strides" not in result.stderr  # DDP's note on the 1x1 convolutions' gradient layout is harmless: not shown to the user
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two", "two-checkpoint.safetensors"]
    record = json.loads((tmp_path / "two" / "unet" / "training.json").read_text())
    assert record["steps"] == 4 and len([h for h in record["history"] if "loss" in h]) >= 2
    assert main([argv[0], str(tmp_path / "one"), *argv[1:]]) == 0  # the same run in one process (this one)
    one, two = (load_file(str(tmp_path / n / "unet" / "diffusion_pytorch_model.safetensors")) for n in ("one", "two"))
    assert max((one[k] - two[k]).abs().max().item() for k in one) < 1e-5


@pytest.mark.parametrize("flag,name", [("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")])
def test_a_sharded_launch_is_refused_in_one_line(monkeypatch, tmp_path, flag, name):
    "`accelerate launch --use_fsdp` (or DeepSpeed) sets this flag; the trainers keep whole weights, so they say so before any work."
    from sdcourse.core import UsageError
    monkeypatch.setenv(flag, "true")
    with pytest.raises(UsageError, match=f"^{name} shards the weights .* launch them with DDP"):
        in_this_process(tmp_path / "sharded")
    assert not (tmp_path / "sharded" / "ck.safetensors").exists()


def test_readme_launches_only_commands_that_run_on_several_processes():
    "README's launch lines name `sdcourse train`, `finetune` or `train-lora` (the trainers with data parallelism), each an existing command."
    import re
    from sdcourse.pipeline import cli_parser
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Train on several GPUs or machines")[1].split("\n## ")[0]
    launched = re.findall(r"\$\(which sdcourse\) ([a-z-]+)", section)
    commands = cli_parser()._subparsers._group_actions[0].choices
    assert set(launched) == {"train", "finetune", "train-lora"} and all(c in commands for c in launched)
    for command in launched: assert "accelerate launch" in commands[command].description + (commands[command].format_help())
