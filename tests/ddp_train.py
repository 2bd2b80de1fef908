"""A tiny training run for tests/test_many_processes.py: `python tests/ddp_train.py OUT` (one process) or, unchanged,
`torchrun --nproc_per_node 2 tests/ddp_train.py OUT` (two; `accelerate launch` starts processes the same way). It trains the course UNet for
50 steps on a made-up cache with an evaluation every 20 steps and a checkpoint every 25; it logs the samples each process trained on, which
process evaluated and which wrote each checkpoint, and the main process writes the final weights and the loss history.
`--stall-rank R --stall-step S`: process R stops answering at step S (it sleeps); `--resume-from CK`: continue the run a checkpoint holds
(made by any number of processes)."""
import argparse, json, os, time
from pathlib import Path

import torch


def train(out, stall_rank=None, stall_step=3, resume_from=None):
    import sdcourse.training as training
    from sdcourse.core import save_weights, seeded
    from sdcourse.unet import make_unet
    out, rank = Path(out), int(os.environ.get("RANK", "0"))
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    n = 64
    cache = dict(mu=torch.randn(n, 4, 8, 8, generator=g), logvar=torch.full((n, 4, 8, 8), -4.0), scaling_factor=1.0,
                 embeddings=torch.randn(n, 77, 64, generator=g), empty=torch.zeros(77, 64), captions=[f"caption {i}" for i in range(n)])
    real = training.save_checkpoint
    def save(path, unet, ema, optimizer, step, *args, **kwargs):  # which process writes each checkpoint; the one of step 25 is kept as ck25 too
        with open(out / "checkpoints.log", "a") as f: f.write(f"{rank} {step}\n")
        written = real(path, unet, ema, optimizer, step, *args, **kwargs)
        if step == 25: (out / "ck25.safetensors").write_bytes(Path(path).read_bytes())
        return written
    def eval_fn(unet):  # which process evaluates
        with open(out / "evals.log", "a") as f: f.write(f"{rank}\n")
        return dict(mean_weight=sum(p.abs().mean().item() for p in unet.parameters()))
    calls = []
    def loss_fn(unet, schedule, *tensors, **kwargs):
        if rank == stall_rank and len(calls) == stall_step: time.sleep(600)  # this process stops answering
        calls.append(1)
        with open(out / f"samples{rank}.log", "a") as f:  # which samples this process trained on at this step: one number per latent
            f.write(" ".join(f"{v:.4f}" for v in tensors[0].flatten(1).sum(1).tolist()) + "\n")
        return training.diffusion_loss(unet, schedule, *tensors, **kwargs)
    with seeded(0): unet = make_unet()
    checkpoint = out / "ck.safetensors"
    if resume_from: checkpoint.write_bytes(Path(resume_from).read_bytes())
    training.save_checkpoint = save  # train_unet looks it up in its module at each checkpoint
    try:
        ema, history = training.train_unet(unet, cache, steps=50, batch_size=8, warmup=5, lr=1e-3, checkpoint=checkpoint, checkpoint_every=25,
                                           resume=bool(resume_from), eval_fn=eval_fn, eval_every=20, device="cpu", loss_fn=loss_fn)
    finally: training.save_checkpoint = real
    if rank == 0:
        save_weights(unet, out / "weights.safetensors")
        (out / "history.json").write_text(json.dumps([dict(step=h["step"], loss=h["loss"], lr=h["lr"]) for h in history]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out"); parser.add_argument("--stall-rank", type=int, default=None); parser.add_argument("--stall-step", type=int, default=3)
    parser.add_argument("--resume-from", default=None)
    args = parser.parse_args()
    train(args.out, args.stall_rank, args.stall_step, args.resume_from)
