"""Drives the official aot-benchmark DeAOT engine frame by frame, as its evaluator does, for side-by-side
measurements (``benchmarks/gpu_speed.py --official PATH``). Nothing of the official code is copied here:
it is imported from the checkout the user points at, and run as it is.

Per frame this makes the official evaluator's calls (``networks/managers/evaluator.py``): the dataset's
float32 frame through ``MultiRestrictSize`` and ``MultiToTensor``, then ``match_propogate_one_frame``,
``decode_current_logits`` at the original size, softmax, arg-max, nearest resize to the input size and
``update_memory``. Two spans are timed: ``network`` (propagation to memory update, the official FPS
counter's span) and ``total`` (with the CPU preprocessing and the upload).

    python benchmarks/official_aot.py --official /path/to/aot-benchmark --check   # agreement with the goldens
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from benchdata import SHARED

# our variant name -> the official config module under configs/models/
OFFICIAL_MODELS = {"deaott": "deaott", "deaots": "deaots", "deaotb": "deaotb", "deaotl": "deaotl",
                   "r50_deaotl": "r50_deaotl", "swinb_deaotl": "swinb_deaotl"}


class OfficialEngine:
    """The official DeAOT of ``checkout`` on ``device`` with official-keyed weights ``state``."""

    def __init__(self, checkout: str | Path, model: str, state: dict, device: torch.device,
                 max_long_edge: float = 1040, long_term_gap: int | None = None) -> None:
        sys.path.insert(0, str(Path(checkout).resolve()))
        cwd = os.getcwd()
        os.chdir(tempfile.gettempdir())  # the official config makes result folders under the working directory
        try:
            config = importlib.import_module("configs.pre_ytb_dav").EngineConfig("bench", OFFICIAL_MODELS[model])
        finally:
            os.chdir(cwd)
        config.TEST_MAX_LONG_EDGE = max_long_edge
        config.TEST_MAX_SHORT_EDGE = None
        config.TEST_FLIP, config.TEST_MULTISCALE = False, [1.0]
        if long_term_gap is not None:
            config.TEST_LONG_TERM_MEM_GAP = long_term_gap
        models = importlib.import_module("networks.models")
        engines = importlib.import_module("networks.engines")
        self.transforms = importlib.import_module("dataloaders.video_transforms")
        self.config, self.device = config, device
        self.model = models.build_vos_model(config.MODEL_VOS, config).to(device).eval()
        self.model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
        gpu = device.index if device.type == "cuda" else None
        self.engine = engines.build_engine(config.MODEL_ENGINE, phase="eval", aot_model=self.model, gpu_id=gpu,
                                           long_term_mem_gap=config.TEST_LONG_TERM_MEM_GAP,
                                           short_term_mem_skip=config.TEST_SHORT_TERM_MEM_SKIP)
        self.engine.eval()

    def _input(self, frame: np.ndarray) -> torch.Tensor:
        c = self.config
        sample = {"current_img": frame.astype(np.float32), "meta": {}}
        samples = self.transforms.MultiRestrictSize(c.TEST_MAX_SHORT_EDGE, c.TEST_MAX_LONG_EDGE, c.TEST_FLIP,
                                                    c.TEST_MULTISCALE, c.MODEL_ALIGN_CORNERS)(sample)
        samples = self.transforms.MultiToTensor()(samples)
        return samples[0]["current_img"][None].float().to(self.device, non_blocking=True)

    @torch.no_grad()
    def start(self, frame: np.ndarray, labels: np.ndarray) -> None:
        image = self._input(frame)
        label = torch.from_numpy(labels.astype(np.float32))[None, None].to(self.device)
        label = F.interpolate(label, size=image.shape[2:], mode="nearest")
        self.size = frame.shape[:2]
        self.engine.add_reference_frame(image, label, frame_step=0, obj_nums=[int(labels.max())])

    @torch.no_grad()
    def step(self, frame: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, float, float]:
        """One frame: (logits at the model's output stride, label map at the original size, seconds of the
        network span, seconds in all)."""
        began = time.perf_counter()
        image = self._input(frame)
        self._sync()
        start = time.perf_counter()
        engine = self.engine
        engine.match_propogate_one_frame(image)
        logits = engine.decode_current_logits(tuple(self.size))
        label = torch.argmax(torch.softmax(logits, dim=1), dim=1, keepdim=True).float()
        engine.update_memory(F.interpolate(label, size=engine.input_size_2d, mode="nearest"))
        self._sync()
        end = time.perf_counter()
        raw = engine.aot_engines[0].pred_id_logits if hasattr(engine, "aot_engines") else None
        return raw, label[0, 0], end - start, end - began

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def check(checkout: Path, shared: Path) -> int:
    """The driver against the goldens: the official engine, driven by it, must give the golden logits."""
    import cv2

    spec = importlib.util.spec_from_file_location("seeded_weights", shared / "golden/seeded_weights.py")
    sw = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sw)
    gold = np.load(shared / "golden/deaot/deaott/car-shadow.npz")
    keys = json.loads((shared / "golden/deaot/deaott/keys.json").read_text())
    official = OfficialEngine(checkout, "deaott", sw.seeded_state_dict(keys), torch.device("cpu"),
                              max_long_edge=float(gold["max_long_edge"]))
    root = shared / "data/davis"
    frames = [cv2.cvtColor(cv2.imread(str(root / "JPEGImages/480p/car-shadow" / f)), cv2.COLOR_BGR2RGB)
              for f in gold["frames"]]
    mask = (cv2.imread(str(root / "Annotations/480p/car-shadow/00000.png"), cv2.IMREAD_GRAYSCALE) > 0)
    official.start(frames[0], mask.astype(np.uint8))
    worst = 0.0
    for t in range(1, len(frames)):
        raw, label, _, _ = official.step(frames[t])
        used = int(mask.max()) + 1  # the official engine masks unused ids with -1e10 in place
        worst = max(worst, float(np.abs(raw[0, :used].numpy() - gold["logits4x"][t - 1][:used]).max()))
    print(f"official engine driven by benchmarks/official_aot.py vs the goldens: max |dlogit| {worst:.2e}")
    return 0 if worst <= 2e-4 else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="an aot-benchmark checkout")
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--check", action="store_true", help="compare with the DeAOT goldens")
    args = parser.parse_args()
    raise SystemExit(check(args.official, args.shared) if args.check else 0)
