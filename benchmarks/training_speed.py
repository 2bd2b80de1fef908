"""Training speed of sdcourse-tiny's UNet. Run on demand: `python benchmarks/training_speed.py [--device cuda] [--record FILE.json]`
(lecture 7 shows the record in data/lectures/07_training/training_speed.json).

Prints training steps per second at one batch size with the cached latents and text embeddings of lecture 7 and
without them (the frozen VAE and text encoder run on every batch), and the time the shipped run took to reach 90%
prompt adherence on every attribute, read from its training record."""
import argparse, json, time

import torch

from sdcourse.core import get_device, shipped_path
from sdcourse.schedules import NoiseSchedule
from sdcourse.text import encode_prompts, load_text_encoder
from sdcourse.training import cache_training_data, diffusion_loss, first_at, training_batch, training_minutes
from sdcourse.unet import make_unet
from sdcourse.data import dataset_images
from sdcourse.vae import encode_images, load_vae


def steps_per_second(step, repeats, device):
    step(); step()  # warm up
    if device.type == "cuda": torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats): step()
    if device.type == "cuda": torch.cuda.synchronize()
    return repeats / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--n-images", type=int, default=1024, help="images to cache and to draw batches from")
    parser.add_argument("--record", default=None, help="also write the measurements to this JSON file")
    args = parser.parse_args()
    device, bs = get_device(args.device), args.batch_size
    vae, (text_encoder, tokenizer) = load_vae(device=device), load_text_encoder(device=device)
    cache = cache_training_data(vae, text_encoder, tokenizer, n_images=args.n_images)
    images = dataset_images(args.n_images)
    unet, schedule = make_unet().to(device).train(), NoiseSchedule.named("scaled_linear", device=device)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    state = {"step": 0}

    def update(x0, context, t, noise):
        loss = diffusion_loss(unet, schedule, x0, context, t, noise)
        loss.backward(); optimizer.step(); optimizer.zero_grad()

    def cached():
        state["step"] += 1
        update(*(v.to(device) for v in training_batch(cache, state["step"], bs)))

    def uncached():
        state["step"] += 1
        _, _, t, noise = training_batch(cache, state["step"], bs)
        idx = torch.randint(len(images), (bs,))
        x0 = encode_images(vae, images[idx].to(device))  # the frozen VAE, every step
        context = encode_prompts(text_encoder, tokenizer, [cache["captions"][i] for i in idx.tolist()])
        update(x0, context, t.to(device), noise.to(device))

    with_cache, without = steps_per_second(cached, args.repeats, device), steps_per_second(uncached, args.repeats, device)
    print(f"sdcourse-tiny UNet training on {device} ({torch.get_num_threads()} CPU threads), batch {bs}")
    print("| data | steps/s | images/s |\n|---|---|---|")
    print(f"| cached latents and text embeddings | {with_cache:.2f} | {with_cache * bs:,.0f} |")
    print(f"| VAE and text encoder on every batch | {without:.2f} | {without * bs:,.0f} |")
    print(f"caching makes a step {with_cache / without:.1f}x faster")
    record = json.loads(shipped_path("sdcourse-tiny", "unet", "training.json").read_text())
    hit = first_at(record)
    print(f"shipped run ({record['device']}): every attribute >= 90% on training pairs first at step "
          + (f"{hit['step']}, after {training_minutes(hit):.1f} minutes of training" if hit else "- never reached"))
    if args.record:
        meta = dict(device=str(device), threads=torch.get_num_threads(), torch=torch.__version__, batch_size=bs, repeats=args.repeats,
                    command="python benchmarks/training_speed.py --record ...")
        with open(args.record, "w") as f: json.dump(dict(meta, cached_steps_per_s=with_cache, uncached_steps_per_s=without), f, indent=1)


if __name__ == "__main__":
    main()
