"""Time and memory of naive attention against PyTorch's fused scaled_dot_product_attention as the sequence grows.

Run on demand: `python benchmarks/attention_cost.py [--device cuda]`. Prints a markdown table."""
import argparse, time

import torch
import torch.nn.functional as F

from sdcourse.attention import attention
from sdcourse.core import get_device


def ms_per_call(fn, repeats, device):
    fn()
    if device.type == "cuda": torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats): fn()
    if device.type == "cuda": torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = get_device(args.device)
    print(f"self-attention, batch 1, {args.heads} heads of {args.head_dim} dims, float32, on {device} ({torch.get_num_threads()} CPU threads)")
    print("| positions (latent side) | score matrix | naive ms | SDPA ms | naive / SDPA |\n|---|---|---|---|---|")
    for side in (16, 32, 48, 64):
        n = side * side
        q, k, v = (torch.randn(1, args.heads, n, args.head_dim, device=device) for _ in range(3))
        naive = ms_per_call(lambda: attention(q, k, v), args.repeats, device)
        fused = ms_per_call(lambda: F.scaled_dot_product_attention(q, k, v), args.repeats, device)
        mb = args.heads * n * n * 4 / 2**20
        print(f"| {n:,} ({side}x{side}) | {mb:,.0f} MB | {naive:,.1f} | {fused:,.1f} | {naive / fused:.1f}x |")


if __name__ == "__main__":
    main()
