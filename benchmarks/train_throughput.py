"""Training throughput, peak memory and the projected time of each ready config on 8 GPUs.

Times the unrolled step with the official clip shape (5 frames, the config's crop, per-GPU batch 2 as in
the reports: 8 GPUs x 2 = 16) on synthetic data after warm-up steps, so data loading is not part of the
number, then projects each ready config's wall time on 8 GPUs as ``steps x time per step`` (one micro-batch
of 2 per GPU and step; the all-reduce of DDP is not included, so this is a lower bound):

    python benchmarks/train_throughput.py --precision bf16            # phase 2 of R50-DeAOTL and R50-MSDeAOT
    python benchmarks/train_throughput.py --precision bf16 --configs all --steps 30

``--precision``: fp32, fp16 (autocast + gradient scaling, the official AMP) or bf16 (autocast, no scaling;
Hopper). On CPU it runs in fp32 for smoke tests only.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHASE2 = {"r50_deaotl": "phase2_r50_deaotl_trek150.toml", "r50_msdeaot": "phase2_r50_msdeaot_visor.toml"}
ALL = ["phase1_static.toml", "phase2_r50_deaotl_ytb_dav.toml", "phase2_r50_deaotl_trek150.toml",
       "phase2_swinb_deaotl_trek150.toml", "phase2_r50_msdeaot_visor.toml"]


def measure(model_name: str, *, batch: int, frames: int, size: int, objects: int, steps: int, warmup: int,
            precision: str, predicted_memory: bool, device) -> dict:
    import torch

    from trek_tracker.modeling.registry import build_model
    from trek_tracker.train.schedule import OptimConfig, build_optimizer
    from trek_tracker.train.step import UnrolledStep

    cuda = device.type == "cuda"
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision) if cuda else None
    model = build_model(model_name).to(device).train()
    step = UnrolledStep(model)
    opt = build_optimizer(model, OptimConfig())
    scaler = torch.amp.GradScaler("cuda", enabled=dtype is torch.float16)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, frames, 3, size, size, generator=g).to(device)
    labels = torch.randint(0, objects + 1, (batch, frames, max(1, size // 8), max(1, size // 8)), generator=g)
    labels = torch.nn.functional.interpolate(labels.float(), size=(size, size)).long().to(device)
    num = torch.full((batch,), objects, device=device)
    perm = torch.stack([torch.cat([torch.zeros(1, dtype=torch.long), torch.randperm(10, generator=g) + 1])
                        for _ in range(batch)]).to(device)

    def one() -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = step(images, labels, num, gt_memory=not predicted_memory, id_perm=perm,
                       long_term_gap=model.config.train_long_term_gap)
        scaler.scale(out.loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        one()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    if cuda:
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    return {"model": model_name, "size": size, "sec_per_step": dt, "samples_per_s": batch / dt,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
            "precision": precision if cuda else "fp32"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="r50_deaotl,r50_msdeaot",
                        help="Comma-separated models to time at phase-2 settings (ignored with --configs).")
    parser.add_argument("--configs", default=None,
                        help="'all' or comma-separated config files under configs/train to time and project.")
    parser.add_argument("--batch", type=int, default=2, help="Per-GPU batch (reports: 2).")
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--size", type=int, default=None, help="Crop side (default: each config's crop).")
    parser.add_argument("--objects", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--gpus", type=int, default=8, help="GPUs of the projection (global batch 16).")
    parser.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="bf16")
    parser.add_argument("--predicted-memory", action="store_true", help="Second half of training.")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (CPU runs).")
    parser.add_argument("--json", type=Path, default=None, help="Also write the device and every row here.")
    args = parser.parse_args()

    import torch

    from trek_tracker.train.config import load_config

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.configs:
        names = ALL if args.configs == "all" else [c for c in args.configs.split(",") if c]
    else:
        names = [PHASE2.get(m, m) for m in args.models.split(",") if m]
    rows = []
    for name in names:
        if name.endswith(".toml"):
            cfg = load_config(REPO / "configs" / "train" / name)
            model, size, steps, batch = cfg.model.name, cfg.augment.crop[0], cfg.train.steps, cfg.train.batch_size
        else:  # a bare model name (e.g. test_deaot_tiny for a CPU smoke run)
            model, size, steps, batch, name = name, 465, 100_000, 16, f"({name})"
        res = measure(model, batch=args.batch, frames=args.frames, size=args.size or size, objects=args.objects,
                      steps=args.steps, warmup=args.warmup, precision=args.precision,
                      predicted_memory=args.predicted_memory, device=device)
        accumulate = max(1, batch // (args.batch * args.gpus))
        res.update(config=name, hours_8gpu=steps * accumulate * res["sec_per_step"] / 3600)
        rows.append(res)
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    precision = args.precision if device.type == "cuda" else "fp32"
    print(f"device: {gpu}; per-GPU batch {args.batch} x {args.frames} frames; {precision}; memory from "
          f"{'predictions' if args.predicted_memory else 'ground truth'}")
    print(f"{'config':<36} {'model':<14} {'crop':>5} {'samples/s':>10} {'ms/step':>8} {'peak GiB':>9} "
          f"{'8-GPU hours':>12}")
    for r in rows:
        print(f"{r['config']:<36} {r['model']:<14} {r['size']:>5} {r['samples_per_s']:>10.2f} "
              f"{r['sec_per_step'] * 1000:>8.0f} {r['peak_gib']:>9.1f} {r['hours_8gpu']:>12.1f}")
    if args.json:
        rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]
        args.json.write_text(json.dumps({"device": gpu, "precision": precision, "batch": args.batch,
                                         "frames": args.frames, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
