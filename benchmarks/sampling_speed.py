"""Sampling speed: the course's `generate` against `StableDiffusionPipeline.__call__`. Run on demand:
`python benchmarks/sampling_speed.py [--device cuda] [--record FILE.json]` (lecture 8 shows the record in
data/lectures/08_sampling/sampling_speed.json).

Both get the same components, scheduler, prompts and generators (so they compute the same images); the table gives the
median seconds of `--repeats` runs per scheduler and batch size, and the ratio ours / pipeline (target: at most 1.05)."""
import argparse, json, statistics, time

import torch

from sdcourse.core import get_device
from sdcourse.sampling import SCHEDULERS, generate, make_scheduler, seed_generators
from sdcourse.data import eval_prompts
from sdcourse.training import load_pipeline


def paired_medians(ours, theirs, repeats, device):
    "Median seconds of `ours` and of `theirs`, timed alternately so that drift in the machine's speed hits both alike."
    ours(); theirs()  # warm up
    times = ([], [])
    for _ in range(repeats):
        for fn, out in ((ours, times[0]), (theirs, times[1])):
            if device.type == "cuda": torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda": torch.cuda.synchronize()
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 64])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--record", default=None, help="also write the table to this JSON file")
    args = parser.parse_args()
    device = get_device(args.device)
    pipe = load_pipeline(device=device)
    generate(pipe, eval_prompts(4), steps=args.steps)  # the process's first UNet calls are slow: keep them out of the table
    print(f"{args.steps} steps, guidance {args.guidance}, {device}, torch {torch.__version__}, median of {args.repeats}")
    print("| scheduler | images | ours (s) | pipeline (s) | ours / pipeline |\n|---|---|---|---|---|")
    rows = []
    for name in SCHEDULERS:
        pipe.scheduler = make_scheduler(name, pipe.scheduler.config)
        for n in args.batch_sizes:
            prompts = eval_prompts(n)
            ours, theirs = paired_medians(lambda: generate(pipe, prompts, steps=args.steps, guidance_scale=args.guidance, seed=0),
                                          lambda: pipe(prompts, num_inference_steps=args.steps, guidance_scale=args.guidance,
                                                       generator=seed_generators(0, n)), args.repeats, device)
            print(f"| {name} | {n} | {ours:.3f} | {theirs:.3f} | {ours / theirs:.3f} |", flush=True)
            rows.append(dict(scheduler=name, images=n, ours_s=ours, pipeline_s=theirs))
    if args.record:
        meta = dict(device=str(device), threads=torch.get_num_threads(), torch=torch.__version__, steps=args.steps, guidance=args.guidance,
                    repeats=args.repeats, command="python benchmarks/sampling_speed.py --record ...")
        with open(args.record, "w") as f: json.dump(dict(meta, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
