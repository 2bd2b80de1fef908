"""Encode/decode speed of the shipped sdcourse-tiny VAE. Run on demand: `python benchmarks/vae_speed.py [--device cuda] [--record FILE.json]`
(lecture 3 shows the record in data/lectures/03_vae/vae_speed.json).

Prints a table of images per second for encoding (posterior mean) and decoding, at a few batch sizes."""
import argparse, json, time

import torch

from sdcourse.core import get_device
from sdcourse.vae import decode_latents, encode_images, load_vae


def images_per_second(fn, batch, repeats, device):
    fn(); fn()  # warm up
    if device.type == "cuda": torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats): fn()
    if device.type == "cuda": torch.cuda.synchronize()
    return batch * repeats / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--record", default=None, help="also write the table to this JSON file")
    args = parser.parse_args()
    device = get_device(args.device)
    vae = load_vae(device=device)
    print(f"sdcourse-tiny VAE on {device} ({torch.get_num_threads()} CPU threads), 64x64 images <-> 4x8x8 latents")
    print("| batch | encode images/s | decode images/s |\n|---|---|---|")
    rows = []
    for batch in (1, 16, 32, 48, 64):
        x = torch.rand(batch, 3, 64, 64, device=device) * 2 - 1
        z = encode_images(vae, x, sample=False)
        enc = images_per_second(lambda: encode_images(vae, x, sample=False), batch, args.repeats, device)
        dec = images_per_second(lambda: decode_latents(vae, z), batch, args.repeats, device)
        print(f"| {batch} | {enc:,.0f} | {dec:,.0f} |")
        rows.append(dict(batch=batch, encode_per_s=enc, decode_per_s=dec))
    if args.record:
        meta = dict(device=str(device), threads=torch.get_num_threads(), torch=torch.__version__, repeats=args.repeats,
                    command="python benchmarks/vae_speed.py --record ...")
        with open(args.record, "w") as f: json.dump(dict(meta, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
