"""Training throughput (samples/s) of a model with the official clip shape, on synthetic data.

Times the unrolled step (5 frames, 465x465, per-GPU batch 2 as in the reports: 8 GPUs x 2) with AMP on
CUDA, after warm-up steps, so data loading is not part of the number:

    python benchmarks/train_throughput.py --model r50_deaotl --batch 2 --steps 20

Prints samples/s and peak GPU memory. On CPU it runs without AMP (for smoke tests only).
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="r50_deaotl")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--size", type=int, default=465)
    parser.add_argument("--objects", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--no-amp", action="store_true")
    parser.add_argument("--predicted-memory", action="store_true", help="Second half of training.")
    args = parser.parse_args()

    import torch

    from trek_tracker.modeling.registry import build_model
    from trek_tracker.train.schedule import OptimConfig, build_optimizer
    from trek_tracker.train.step import UnrolledStep

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = device.type == "cuda" and not args.no_amp
    model = build_model(args.model).to(device).train()
    step = UnrolledStep(model)
    opt = build_optimizer(model, OptimConfig())
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, args.frames, 3, args.size, args.size, generator=g).to(device)
    labels = torch.randint(0, args.objects + 1, (args.batch, args.frames, args.size // 8, args.size // 8),
                           generator=g)
    labels = torch.nn.functional.interpolate(labels.float(), size=(args.size, args.size)).long().to(device)
    num = torch.full((args.batch,), args.objects, device=device)

    def one() -> None:
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            out = step(images, labels, num, gt_memory=not args.predicted_memory,
                       long_term_gap=model.config.train_long_term_gap)
        scaler.scale(out.loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        one()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        one()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    rate = args.steps * args.batch / dt
    mem = f", peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device.type == "cuda" else ""
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"{args.model} on {name}, AMP {'on' if amp else 'off'}: batch {args.batch} x {args.frames} frames "
          f"{args.size}x{args.size}: {rate:.2f} samples/s ({dt / args.steps * 1000:.0f} ms/step){mem}")


if __name__ == "__main__":
    main()
