"""The GPU path, measured: Stable Diffusion 1.5's UNet, VAE and text encoder built from their published configs (lecture 11's
`SD15_*_CONFIG`; random weights, nothing downloaded), timed for one 512x512 denoising step and a whole 30-step generation in float32,
in bfloat16 (both with PyTorch's SDPA attention, diffusers' default) and in bfloat16 with `torch.compile`; images per second and peak
GPU memory. It also drives lecture 2's and lecture 8's widgets once on the device. Run on demand, never needed by the tests:
`python benchmarks/gpu.py [--steps 30] [--repeats 5] [--record FILE.json]`.

Without CUDA it runs the same code on the CPU with the shipped sdcourse-tiny (8x8 latents), float32 only, and says so: that checks
the script, not the speed of anything that matters."""
import argparse, contextlib, io, json, statistics, time

import torch

from sdcourse.core import get_device, quiet_libraries, seeded


def build(device, dtype, full):
    "UNet, VAE and text encoder: SD 1.5's from its configs with random weights (`full`), else the shipped sdcourse-tiny's."
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    from sdcourse.pipeline import SD15_TEXT_CONFIG, SD15_UNET_CONFIG, SD15_VAE_CONFIG
    from sdcourse.training import load_pipeline
    if full:
        with seeded(0):
            models = (UNet2DConditionModel(**SD15_UNET_CONFIG), AutoencoderKL(**SD15_VAE_CONFIG), CLIPTextModel(CLIPTextConfig(**SD15_TEXT_CONFIG)))
    else:
        pipe = load_pipeline(device="cpu")
        models = (pipe.unet, pipe.vae, pipe.text_encoder)
    return [m.to(device, dtype).eval() for m in models]  # the whole VAE in bfloat16 too, as the timings intend


def generation(unet, vae, text, steps, device, dtype):
    "One image as StableDiffusionPipeline makes it: encode a prompt and the empty one, `steps` guided DPM-Solver++ steps, decode."
    from diffusers import DPMSolverMultistepScheduler
    scheduler = DPMSolverMultistepScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    side = unet.config.sample_size
    ids = torch.randint(0, text.config.vocab_size, (2, text.config.max_position_embeddings), generator=torch.Generator().manual_seed(0)).to(device)
    def run():
        scheduler.set_timesteps(steps)  # each run starts the scheduler afresh
        context = text(ids).last_hidden_state  # [2, 77, D]: the prompt and the empty prompt
        latents = torch.randn(1, 4, side, side, generator=torch.Generator().manual_seed(0)).to(device, dtype)
        for t in scheduler.timesteps:
            eps = unet(torch.cat([latents] * 2), t, context).sample  # [2, 4, h, w]
            uncond, cond = eps.chunk(2)
            latents = scheduler.step(uncond + 7.5 * (cond - uncond), t, latents).prev_sample
        return vae.decode(latents / vae.config.scaling_factor).sample  # [1, 3, 8h, 8w]
    return run


def median_seconds(fn, repeats, device):
    "Median wall time of `fn` over `repeats` runs, after one warm-up run (the first runs compile kernels or tune them)."
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda": torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda": torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def measure(name, dtype, compiled, device, full, steps, repeats):
    "One row of the table: seconds per UNet step (batch 2: one guided image), per generation, images per second, peak memory."
    if device.type == "cuda": torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
    unet, vae, text = build(device, dtype, full)
    if compiled: unet = torch.compile(unet, mode="max-autotune-no-cudagraphs")
    side = unet.config.sample_size
    x = torch.randn(2, 4, side, side, device=device, dtype=dtype)  # [2, 4, 64, 64] at 512x512: the guided pair
    context = torch.randn(2, 77, unet.config.cross_attention_dim, device=device, dtype=dtype)
    step = median_seconds(lambda: unet(x, 500, context).sample, repeats, device)
    whole = median_seconds(generation(unet, vae, text, steps, device, dtype), max(1, repeats // 2), device)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return dict(setup=name, step_ms=step * 1000, generation_s=whole, images_per_s=1 / whole, peak_gib=peak)


def drive_widgets(device):
    "Lecture 2's schedule widget and lecture 8's guidance widget, once each, with the course model on `device`."
    from sdcourse.data import dataset_tensors
    from sdcourse.sampling import GuidanceWidget
    from sdcourse.schedules import ScheduleWidget
    from sdcourse.training import load_pipeline
    with contextlib.redirect_stdout(io.StringIO()):  # outside a notebook a widget's figure prints as text
        ScheduleWidget(dataset_tensors(4)[0].to(device)).t.value = 700  # redraws
        widget = GuidanceWidget(load_pipeline(device=device), n_images=2, steps=4)
        widget.guidance_scale.value = 7.5  # regenerates on the device
    return f"widgets: lecture 2's schedule widget redrew; lecture 8's guidance widget drew 2 images in {widget.seconds:.2f} s on {widget.pipe.device}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="denoising steps of a generation (default: 30)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--record", default=None, help="also write the table to this JSON file")
    args = parser.parse_args()
    quiet_libraries()
    device = get_device("cuda" if torch.cuda.is_available() else "cpu")
    full = device.type == "cuda"
    setups = [("float32 (SDPA)", torch.float32, False)]
    if full: setups += [("bfloat16 (SDPA)", torch.bfloat16, False), ("bfloat16 + torch.compile", torch.bfloat16, True)]
    card = torch.cuda.get_device_name() if full else "no GPU: the CPU, with sdcourse-tiny and float32 only (this checks the script, not a GPU's speed)"
    print(f"{'SD 1.5 at 512x512' if full else 'sdcourse-tiny at 64x64'}, {args.steps} steps, guidance 7.5; {card}; torch {torch.__version__}, median of {args.repeats}")
    print("| setup | one UNet step, batch 2 (ms) | generation (s) | images/s | peak memory (GiB) |\n|---|---:|---:|---:|---:|")
    rows = []
    for name, dtype, compiled in setups:
        row = measure(name, dtype, compiled, device, full, args.steps, args.repeats)
        print(f"| {name} | {row['step_ms']:.1f} | {row['generation_s']:.2f} | {row['images_per_s']:.2f} | {row['peak_gib']:.2f} |", flush=True)
        rows.append(row)
    print(drive_widgets(device))
    if args.record:
        meta = dict(device=str(device), card=card, full_size=full, torch=torch.__version__, steps=args.steps, repeats=args.repeats,
                    command="python benchmarks/gpu.py --record ...")
        with open(args.record, "w") as f: json.dump(dict(meta, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
