"""Segment Anything, box-prompted, through our own predictor over the official ``segment_anything`` models.

Why our own predictor (docs/init.md#sam-box-prompting): we want all four mask tokens of one decoder call
(the single-mask token 0 and the three multimask tokens) with their predicted IoUs and low-resolution logits,
an optional second pass fed with the best candidate's logits, and no dependency on torchvision (the package's
``__init__`` imports it; we import ``modeling`` and ``build_sam`` without it when it is absent).
The image embedding is computed once per ``set_image`` and reused for every prompt.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from trek_tracker.errors import CheckpointError, InputError, first_line, refused_class

_EMBED_DIM_TO_MODEL = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}


def _import_segment_anything() -> tuple[Any, Any]:
    """Return ``(segment_anything.modeling, segment_anything.build_sam)``, working without torchvision."""
    try:
        modeling = importlib.import_module("segment_anything.modeling")
        build_sam = importlib.import_module("segment_anything.build_sam")
        return modeling, build_sam
    except ModuleNotFoundError as err:
        if "torchvision" not in str(err):
            raise
    # The package __init__ imports the predictor (torchvision). Register a bare package object pointing at
    # the installed folder so that the submodules, which need only torch, import without it.
    spec = importlib.util.find_spec("segment_anything")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("segment_anything is not installed (pip install segment-anything)")
    for name in [n for n in sys.modules if n == "segment_anything" or n.startswith("segment_anything.")]:
        del sys.modules[name]
    package = types.ModuleType("segment_anything")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["segment_anything"] = package
    return importlib.import_module("segment_anything.modeling"), importlib.import_module("segment_anything.build_sam")


def sam_model_from_state(state: dict[str, torch.Tensor]) -> str:
    """``vit_b`` / ``vit_l`` / ``vit_h`` from the encoder width (``image_encoder.pos_embed``)."""
    pos = state.get("image_encoder.pos_embed")
    if pos is None:
        raise CheckpointError("not a SAM checkpoint: image_encoder.pos_embed is missing")
    model = _EMBED_DIM_TO_MODEL.get(int(pos.shape[-1]))
    if model is None:
        raise CheckpointError(f"unknown SAM encoder width {pos.shape[-1]} (expected 768, 1024 or 1280)")
    return model


def read_sam_state(checkpoint: str | Path, what: str = "SAM") -> dict[str, torch.Tensor]:
    """The state dict in a SAM-family ``checkpoint`` (SAM, HQ-SAM), read without executing pickled code."""
    path = Path(checkpoint)
    if not path.is_file():
        raise CheckpointError(f"{what} checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        # PyTorch's own text spans several lines (with terminal escapes) and advises weights_only=False: say
        # instead which kind of file this is and what to give.
        found = refused_class(err)
        if found:
            raise CheckpointError(f"{path} is not a loadable {what} state dict: it holds pickled objects "
                                  f"({found}), as Alpha-Refine and training checkpoints do; give {what}'s own "
                                  ".pth (trek-track weights list)") from None
        raise CheckpointError(f"{path} is not a loadable {what} state dict ({first_line(err)}): a damaged or "
                              "incomplete file?; download it again (trek-track weights list)") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state dict")
    return state


def load_sam_state(module: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path, what: str,
                   device: str = "cpu") -> torch.nn.Module:
    """``state`` into ``module`` strictly (every key on both sides), then to ``device`` in eval mode."""
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"{path} does not match {what}: missing {result.missing_keys[:5]}, "
                              f"unexpected {result.unexpected_keys[:5]}")
    return module.to(device).eval()


def load_sam(checkpoint: str | Path, model: str | None = None, device: str = "cpu") -> torch.nn.Module:
    """Build the official SAM of size ``model`` (inferred when None) and load ``checkpoint`` strictly."""
    state = read_sam_state(checkpoint)
    if "mask_decoder.hf_token.weight" in state:  # SAM's keys plus the HQ token's: a strict load names only those
        raise CheckpointError(f"{checkpoint} is an HQ-SAM checkpoint, not plain SAM: give it as --hqsam-checkpoint "
                              "instead of --sam-checkpoint")
    try:
        inferred = sam_model_from_state(state)
    except CheckpointError as err:
        raise CheckpointError(f"{checkpoint}: {err} (give SAM's own .pth: trek-track weights list)") from None
    if model is not None and model != inferred:
        raise CheckpointError(f"{checkpoint} holds a {inferred} SAM, but --sam-model {model} was given")
    _, build_sam = _import_segment_anything()
    return load_sam_state(build_sam.sam_model_registry[inferred](checkpoint=None), state, checkpoint,
                          f"SAM {inferred}", device)


@dataclass
class SamOutput:
    """All four mask tokens of one decoder call. Index 0 is the single-mask token, 1..3 the multimask ones."""

    logits: np.ndarray  # float32 (4, H, W) at frame resolution (threshold 0)
    iou_predictions: np.ndarray  # float32 (4,)
    low_res_logits: np.ndarray  # float32 (4, h, w), h = w = 4 x embedding size
    stability: np.ndarray = field(default_factory=lambda: np.zeros(4, np.float32))  # (4,), offset 1.0

    def best_multimask(self) -> int:
        """Index (1..3) of the multimask token with the highest predicted IoU."""
        return 1 + int(np.argmax(self.iou_predictions[1:]))


def stability_score(logits: torch.Tensor, offset: float = 1.0) -> torch.Tensor:
    """IoU of the masks thresholded at +offset and -offset (SAM's automatic-mask-generator cue)."""
    high = (logits > offset).flatten(-2).sum(-1).float()
    low = (logits > -offset).flatten(-2).sum(-1).float()
    return torch.where(low > 0, high / low.clamp(min=1), torch.zeros_like(low))


class SamBoxPredictor:
    """Box prompts on one image at a time; ``set_image`` runs the encoder once per frame."""

    def __init__(self, model: torch.nn.Module, device: str | torch.device | None = None) -> None:
        self.model = model.eval()
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model.to(self.device)
        self.target = int(model.image_encoder.img_size)
        self.embedding: torch.Tensor | None = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None

    def _resized_shape(self, h: int, w: int) -> tuple[int, int]:
        scale = self.target / max(h, w)
        return int(h * scale + 0.5), int(w * scale + 0.5)

    @torch.no_grad()
    def set_image(self, image: np.ndarray) -> None:
        """Encode an RGB uint8 (H, W, 3) image (PIL bilinear resize of the longest side, normalise, pad). After
        a refused image no image is set: boxes are not decoded on the previous one."""
        self.embedding = self.original_size = self.input_size = None
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(f"SAM needs an RGB uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
        h, w = image.shape[:2]
        newh, neww = self._resized_shape(h, w)
        resized = np.array(Image.fromarray(image).resize((neww, newh), Image.BILINEAR))
        x = torch.as_tensor(resized, device=self.device).permute(2, 0, 1)[None].float()
        x = (x - self.model.pixel_mean) / self.model.pixel_std
        x = F.pad(x, (0, self.target - neww, 0, self.target - newh))
        self.embedding = self.model.image_encoder(x)
        self.original_size, self.input_size = (h, w), (newh, neww)

    def _prompt_box(self, box_xyxy) -> torch.Tensor:
        """The box ``[x0, y0, x1, y1]`` in the resized image's pixels, as the prompt encoder takes it: scaled in
        float64, then cast, as the official ``ResizeLongestSide.apply_boxes`` does (scaling in float32 moves
        many coordinates by one unit in the last place)."""
        (h, w), (newh, neww) = self.original_size, self.input_size
        scale = np.array([neww / w, newh / h, neww / w, newh / h])
        box = np.asarray(box_xyxy, dtype=np.float64).reshape(1, 4) * scale
        return torch.as_tensor(box.astype(np.float32), device=self.device)

    @torch.no_grad()
    def predict_box(self, box_xyxy, mask_input: np.ndarray | None = None) -> SamOutput:
        """Decode all four tokens for a box ``[x0, y0, x1, y1]`` in frame pixels (optionally with logits)."""
        if self.embedding is None or self.original_size is None or self.input_size is None:
            raise RuntimeError("SamBoxPredictor.set_image must be called first")
        (h, w), (newh, neww) = self.original_size, self.input_size
        box = self._prompt_box(box_xyxy)
        masks = None
        if mask_input is not None:
            masks = torch.as_tensor(np.asarray(mask_input, dtype=np.float32), device=self.device).reshape(
                1, 1, *np.shape(mask_input)[-2:]
            )
        sparse, dense = self.model.prompt_encoder(points=None, boxes=box, masks=masks)
        low_res, iou = self.model.mask_decoder.predict_masks(
            image_embeddings=self.embedding,
            image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
        )
        full = self.model.postprocess_masks(low_res, (newh, neww), (h, w))[0]
        return SamOutput(
            logits=full.float().cpu().numpy(),
            iou_predictions=iou[0].float().cpu().numpy(),
            low_res_logits=low_res[0].float().cpu().numpy(),
            stability=stability_score(full).float().cpu().numpy(),
        )
