"""CPU speed (and agreement) of our VMOS against HQTrack's official code, side by side in one process.

Both models get the same weights (ours, random, copied through the family key map, so the official load
is strict), the same frames of a clip and the same settings (gap 50, skip 4, cap 6, no TTA). Each frame is
timed from the raw RGB frame to the updated memory: the official ``MultiRestrictSize_`` + ``MultiToTensor``
+ ``match_propogate_one_frame`` + ``decode_current_logits`` + softmax/arg-max + ``update_memory`` (the
tracker's ``track`` without its final resize), against our ``VOSEngine.step``. Runs are interleaved over
rounds, the first propagated frame of every run is discarded, and medians are reported with the
interquartile range. The calibration workload is the golden README's (vmos §8): compare its median with
the README's 25 ms to see how loaded the host is.

The official code is not part of this project. Prepare a checkout of jiawen-zhu/HQTrack (commit 5ff90b3)
as its golden README §1-4 describes: build ``packages/Pytorch-Correlation-extension`` with ``setup_cpu.py``
(put ``#include <c10/cuda/CUDAGuard.h>`` under ``#ifdef USE_CUDA``). The two other changes are made here at
import time, without touching the checkout: a stand-in for the missing ``DCNv3`` CUDA module, and the
encoder's ``DCNv3`` class replaced by the official ``DCNv3_pytorch`` (same parameters, pure-PyTorch core).

    python benchmarks/vmos_vs_official.py --official /path/to/HQTrack --clip ../shared/data/davis \\
        --threads 2 --json vmos_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from benchdata import SHARED, calibration_ms

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def load_official(root: Path):
    """Import HQTrack's model, engine and transforms from ``root`` (see the module docstring)."""
    corr = root / "packages" / "Pytorch-Correlation-extension" / "Correlation_Module"
    for p in (str(root), str(corr)):
        if p not in sys.path:
            sys.path.insert(0, p)
    sys.modules.setdefault("DCNv3", types.ModuleType("DCNv3"))  # the CUDA op, never called on this path
    import networks.encoders.ops_dcnv3.modules as opsm

    opsm.DCNv3 = opsm.DCNv3_pytorch  # INTERN_T asks for core_op='DCNv3'
    import importlib

    import dataloaders.video_transforms as tr
    from networks.engines import build_engine
    from networks.models import build_vos_model

    cwd = os.getcwd()
    os.chdir(tempfile.gettempdir())  # the config object makes result folders relative to the working directory
    try:
        cfg = importlib.import_module("configs.ytb_vip_dav_deaot_internT").EngineConfig("default",
                                                                                         "internT_msdeaotl_v2")
    finally:
        os.chdir(cwd)
    return cfg, build_vos_model, build_engine, tr


class Official:
    def __init__(self, root: Path, state: dict, max_long_edge: float) -> None:
        cfg, build_vos_model, build_engine, tr = load_official(root)
        cfg.TEST_MAX_LONG_EDGE = max_long_edge
        self.cfg, self.build_engine, self.tr = cfg, build_engine, tr
        self.model = build_vos_model(cfg.MODEL_VOS, cfg).eval()
        self.model.load_state_dict(state, strict=True)

    def start(self, frame: np.ndarray, mask: np.ndarray) -> None:
        cfg, tr = self.cfg, self.tr
        self.transform = lambda s: tr.MultiToTensor()(tr.MultiRestrictSize_(
            cfg.TEST_MAX_SHORT_EDGE, cfg.TEST_MAX_LONG_EDGE, False, False, [1.0], cfg.MODEL_ALIGN_CORNERS)(s))
        self.engine = self.build_engine(cfg.MODEL_ENGINE, phase="eval", aot_model=self.model,
                                        long_term_mem_gap=cfg.TEST_LONG_TERM_MEM_GAP,
                                        short_term_mem_skip=cfg.TEST_SHORT_TERM_MEM_SKIP)
        sample = self.transform({"current_img": frame, "current_label": mask})[0]
        img = sample["current_img"].unsqueeze(0).float()
        label = F.interpolate(sample["current_label"].unsqueeze(0).float(), size=img.shape[2:], mode="nearest")
        self.engine.add_reference_frame(img, label, frame_step=0, obj_nums=int(label.max()))

    def step(self, frame: np.ndarray) -> torch.Tensor:
        h, w = frame.shape[:2]
        sample = self.transform({"current_img": frame, "meta": {"height": h, "width": w, "flip": False}})[0]
        img = sample["current_img"].unsqueeze(0).float()
        self.engine.match_propogate_one_frame(img)
        logits = self.engine.decode_current_logits((h, w))
        label = torch.argmax(torch.softmax(logits, dim=1), dim=1, keepdim=True).float()
        self.engine.update_memory(F.interpolate(label, size=self.engine.input_size_2d, mode="nearest"))
        return self.engine.aot_engines[0].pred_id_logits


class Ours:
    def __init__(self, model, max_long_edge: float) -> None:
        from trek_tracker.inference.engine import EngineConfig

        self.model, self.config = model, EngineConfig(max_long_edge=max_long_edge)

    def start(self, frame: np.ndarray, mask: np.ndarray) -> None:
        from trek_tracker.inference.engine import VOSEngine

        self.engine = VOSEngine(self.model, self.config)
        self.engine.add_reference(frame, mask)

    def step(self, frame: np.ndarray) -> torch.Tensor:
        return self.engine.step(frame).logits[0]


def run(tracker, frames, mask) -> tuple[list[float], list[torch.Tensor]]:
    with torch.inference_mode():
        tracker.start(frames[0], mask)
        times, logits = [], []
        for frame in frames[1:]:
            t = time.perf_counter()
            out = tracker.step(frame)
            times.append(1000 * (time.perf_counter() - t))
            logits.append(out.clone())
    return times, logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, default=None, help="HQTrack checkout (omit: ours only)")
    parser.add_argument("--clip", type=Path, default=SHARED / "data" / "davis",
                        help="DAVIS root (JPEGImages/480p, Annotations/480p)")
    parser.add_argument("--sequence", default="car-shadow")
    parser.add_argument("--frames", type=int, default=7, help="frames including the reference")
    parser.add_argument("--max-long-edge", type=float, action="append", default=None,
                        help="long-edge cap; repeat for several cases (default: 480 and 1040)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from PIL import Image

    from trek_tracker.modeling.registry import build_model

    names = sorted(os.listdir(args.clip / "JPEGImages/480p" / args.sequence))[: args.frames]
    frames = [cv2.cvtColor(cv2.imread(str(args.clip / "JPEGImages/480p" / args.sequence / n)), cv2.COLOR_BGR2RGB)
              for n in names]
    mask = (np.array(Image.open(args.clip / "Annotations/480p" / args.sequence / "00000.png")) > 0).astype(np.uint8)
    torch.manual_seed(0)
    model = build_model("vmos").eval()
    state = {model.official_key(k): v for k, v in model.state_dict().items()}
    cases = args.max_long_edge or [480.0, 1040.0]
    trackers = {}
    for edge in cases:
        trackers[("ours", edge)] = Ours(model, edge)
        if args.official is not None:
            trackers[("official", edge)] = Official(args.official, state, edge)
    times: dict = {k: [] for k in trackers}
    agree: dict = {}
    calib = []
    for _ in range(args.rounds):
        calib.append(calibration_ms())
        for edge in cases:
            logits = {}
            for who in ("ours", "official"):
                if (who, edge) in trackers:
                    t, logits[who] = run(trackers[(who, edge)], frames, mask)
                    times[(who, edge)] += t[1:]  # the first propagated frame is discarded
            if "official" in logits:
                k = int(mask.max()) + 1  # channels past the objects are masked (-1e10) by the official engine
                agree[edge] = max(float((a[:, :k] - b[:, :k]).abs().max())
                                  for a, b in zip(logits["ours"], logits["official"], strict=True))
    rows = []
    for (who, edge), ts in times.items():
        q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
        rows.append({"impl": who, "max_long_edge": edge, "median_ms": round(statistics.median(ts), 1),
                     "iqr_ms": [round(q[0], 1), round(q[2], 1)], "n": len(ts),
                     "max_abs_logit_diff": agree.get(edge)})
    result = {"threads": args.threads, "calibration_median_ms": round(statistics.median(calib), 1),
              "sequence": args.sequence, "frames": args.frames, "rounds": args.rounds, "rows": rows,
              "torch": torch.__version__}
    print(f"threads {args.threads}, calibration median {result['calibration_median_ms']} ms "
          "(golden README vmos §8: 25 ms on an idle host)")
    print(f"{'impl':9s} {'long edge':>9s} {'median ms':>10s} {'IQR ms':>16s} {'n':>3s} {'max|dlogit|':>12s}")
    for r in rows:
        diff = "-" if r["max_abs_logit_diff"] is None else f"{r['max_abs_logit_diff']:.1e}"
        print(f"{r['impl']:9s} {r['max_long_edge']:9.0f} {r['median_ms']:10.1f} "
              f"{r['iqr_ms'][0]:7.1f}-{r['iqr_ms'][1]:<8.1f} {r['n']:3d} {diff:>12s}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
