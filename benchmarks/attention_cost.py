"""Time and memory of naive attention against PyTorch's fused scaled_dot_product_attention as the sequence grows.

Run on demand: `python benchmarks/attention_cost.py [--device cuda] [--record FILE.json]`. Prints a markdown table; `--record` also
writes it as JSON (lecture 5 shows the record in data/lectures/05_attention/attention_cost.json)."""
import argparse, json, platform, time

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
    parser.add_argument("--record", default=None, help="also write the table to this JSON file")
    args = parser.parse_args()
    device = get_device(args.device)
    print(f"self-attention, batch 1, {args.heads} heads of {args.head_dim} dims, float32, on {device} ({torch.get_num_threads()} CPU threads)")
    print("| positions (latent side) | score matrix | naive ms | SDPA ms | naive / SDPA |\n|---|---|---|---|---|")
    rows = []
    for side in (16, 32, 48, 64):
        n = side * side
        q, k, v = (torch.randn(1, args.heads, n, args.head_dim, device=device) for _ in range(3))
        naive = ms_per_call(lambda: attention(q, k, v), args.repeats, device)
        fused = ms_per_call(lambda: F.scaled_dot_product_attention(q, k, v), args.repeats, device)
        mb = args.heads * n * n * 4 / 2**20
        print(f"| {n:,} ({side}x{side}) | {mb:,.0f} MB | {naive:,.1f} | {fused:,.1f} | {naive / fused:.1f}x |")
        rows.append(dict(positions=n, side=side, score_matrix_mb=mb, naive_ms=naive, sdpa_ms=fused))
    if args.record:
        meta = dict(device=str(device), threads=torch.get_num_threads(), torch=torch.__version__, cpu=platform.processor() or platform.machine(),
                    heads=args.heads, head_dim=args.head_dim, repeats=args.repeats, command="python benchmarks/attention_cost.py --record ...")
        with open(args.record, "w") as f: json.dump(dict(meta, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
