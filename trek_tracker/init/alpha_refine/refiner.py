"""Alpha-Refine behind one interface (docs/init.md#alpha-refine-networks): ``initialize(frame, box)`` and
``get_mask(frame, box)``, for either network, and ``refine_box(frame, box)`` for SEcm.

Frames are RGB uint8 (H, W, 3); boxes ``[x, y, w, h]`` in frame pixels. The per-target state (the
reference kernel) lives here, not in the network modules.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from trek_tracker.errors import InputError
from trek_tracker.init.alpha_refine.crop import (
    CropGeometry,
    box_in_crop,
    corner_box_to_frame,
    crop_geometry,
    crop_image,
    normalise,
    paste_back,
)
from trek_tracker.init.alpha_refine.secm import SEcm

SEARCH_FACTOR = 2.0


@dataclass
class ARCropOutput:
    """One refinement on one crop: the crop, its network outputs and where it sits in the frame."""

    crop_uint8: np.ndarray
    mask_crop: np.ndarray  # float32 (S, S) probabilities
    mask_full: np.ndarray  # float32 (H, W) probabilities, 0 outside the crop
    geometry: CropGeometry
    corner_crop_xyxy: np.ndarray | None = None  # SEcm only
    corner_frame_xywh: np.ndarray | None = None


class AlphaRefine:
    """Stateful wrapper around an AR network (``ARSegMask`` or ``SEcm``) for one target."""

    def __init__(self, network: torch.nn.Module, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        self.input_size = int(network.input_size)
        self.kernel: torch.Tensor | None = None
        self.template_crop: np.ndarray | None = None

    @property
    def model_name(self) -> str:
        return "secm" if isinstance(self.network, SEcm) else "seg384"

    @staticmethod
    def _check(frame: np.ndarray, box) -> np.ndarray:
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise InputError(f"Alpha-Refine needs an RGB uint8 (H, W, 3) frame, got {frame.dtype} {frame.shape}")
        box = np.asarray(box, dtype=np.float64).reshape(-1)
        if box.size != 4 or not np.all(np.isfinite(box)) or box[2] <= 0 or box[3] <= 0:
            raise InputError(f"box must be [x, y, w, h] with w, h > 0, got {box.tolist()}")
        return box

    @torch.no_grad()
    def initialize(self, frame: np.ndarray, box) -> None:
        """Crop the template around ``box`` and compute the reference kernel."""
        box = self._check(frame, box)
        geo = crop_geometry(box, frame.shape[:2], SEARCH_FACTOR, self.input_size)
        crop = crop_image(frame, geo)
        self.template_crop = crop
        template = normalise(crop).to(self.device)
        self.kernel = self.network.reference_kernel(template, box_in_crop(box, geo).to(self.device))

    @torch.no_grad()
    def run(self, frame: np.ndarray, box, branches=("mask",)) -> ARCropOutput:
        """Crop around ``box``, run the requested branches, map the outputs back to the frame."""
        if self.kernel is None:
            raise RuntimeError("AlphaRefine.initialize must be called before get_mask/refine_box")
        box = self._check(frame, box)
        geo = crop_geometry(box, frame.shape[:2], SEARCH_FACTOR, self.input_size)
        crop = crop_image(frame, geo)
        out = self.network(normalise(crop).to(self.device), self.kernel, branches=branches)
        mask_crop = out["mask"][0, 0].float().cpu().numpy() if "mask" in out else np.zeros((1, 1), np.float32)
        full = paste_back(mask_crop, geo, frame.shape[:2]).astype(np.float32) if "mask" in out else mask_crop
        result = ARCropOutput(crop_uint8=crop, mask_crop=mask_crop, mask_full=full, geometry=geo)
        if "corner" in out:
            corner = out["corner"][0].float().cpu().numpy()
            result.corner_crop_xyxy = corner
            result.corner_frame_xywh = corner_box_to_frame(corner, box, geo, SEARCH_FACTOR)
        return result

    def get_mask(self, frame: np.ndarray, box) -> np.ndarray:
        """Full-frame float (H, W) foreground probabilities in [0, 1] for the crop around ``box``."""
        return self.run(frame, box, branches=("mask",)).mask_full

    def refine_box(self, frame: np.ndarray, box) -> np.ndarray:
        """SEcm's corner box for the crop around ``box``, as a frame ``[x, y, w, h]`` (official
        ``refine(mode='corner')``). seg384 has no box head: an :class:`InputError` says so."""
        if not isinstance(self.network, SEcm):
            raise InputError("the seg384 Alpha-Refine network has no box head: refining a box needs the SEcm "
                             "checkpoint (SEcmnet_ep0040-c.pth.tar)")
        return self.run(frame, box, branches=("corner",)).corner_frame_xywh
