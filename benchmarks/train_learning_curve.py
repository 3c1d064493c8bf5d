"""Learning curve of a tiny model trained on CPU on the shared DAVIS clips.

Trains ``test_deaot_tiny`` with ``configs/train/tiny_cpu_video.toml`` (4 sequences; car-shadow held out
for validation) and prints the loss and the held-out J&F as training goes. A few minutes on 2 cores:

    python benchmarks/train_learning_curve.py --steps 400 --val-every 100 --out runs/learning_curve
    python benchmarks/train_learning_curve.py --seed 1 --steps 150 --val-every 50   # another seed

Writes the run folder (log.csv, log.jsonl, loss.png, checkpoints) under ``--out``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchdata import SHARED

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0, help="train.seed: model initialisation and clips.")
    parser.add_argument("--val-every", type=int, default=100)
    parser.add_argument("--data", default=str(SHARED / "data" / "davis"))
    parser.add_argument("--out", default="runs/learning_curve")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the README's figures: 1)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args()

    from trek_tracker.train.config import load_config
    from trek_tracker.train.loop import train

    cfg = load_config(REPO / "configs" / "train" / "tiny_cpu_video.toml", [
        f'data.0.root="{args.data}"', f'val.root="{args.data}"', f'out="{args.out}"',
        f"train.steps={args.steps}", f"val.every={args.val_every}", f"train.threads={args.threads}",
        f"train.seed={args.seed}",
        *args.overrides])
    from trek_tracker.errors import UserError

    t0 = time.perf_counter()
    try:
        records = train(cfg, resume=False, progress=True)
    except UserError as err:  # an --out that holds a run: one line, not a traceback
        raise SystemExit(f"train_learning_curve: {err}") from None
    wall = time.perf_counter() - t0

    val = {r["step"]: r for r in records if r["kind"] == "val"}
    print(f"\n{'step':>6} {'loss':>8} {'frame':>8} {'lr':>10} {'J&F':>7}")
    for r in records:
        if r["kind"] == "train":
            v = val.get(r["step"])
            jf = f"{v['J&F']:.3f}" if v else ""
            print(f"{r['step']:>6} {r['loss']:>8.4f} {r['frame_loss']:>8.4f} {r['lr']:>10.2e} {jf:>7}")
    first, last = val.get(0), val[max(val)]
    print(f"\nseed {args.seed}, held-out J&F: {first['J&F']:.3f} at step 0 -> {last['J&F']:.3f} at step {last['step']} "
          f"({wall:.0f} s); curve: {Path(args.out) / 'loss.png'}")


if __name__ == "__main__":
    main()
