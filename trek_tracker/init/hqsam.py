"""HQ-SAM (SysCV ``segment-anything-hq``), box-prompted, through our own predictor over its modules.

HQ-SAM is SAM with one more output token (the "HQ" token), whose mask is decoded from a feature that adds
early ViT features (the first global-attention block's output) to the decoder's upscaled embedding. Its
official predictor returns, per prompt, the chosen SAM mask **plus** the HQ mask (logits summed):
``multimask_output=True`` sums the best of SAM's tokens 1..3 (by predicted IoU) with the HQ token, which is
what HQTrack asks for; ``False`` sums token 0 with it; ``hq_token_only`` returns the HQ mask alone.

Like :mod:`trek_tracker.init.sam`, :class:`HQSamBoxPredictor` decodes every token in one call and keeps
the image embedding (and the early ViT features) for all prompts on a frame. Only the package's modeling
files are imported (no torchvision, and not its ``modeling/__init__``, which registers TinyViT models in
timm's global registry).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trek_tracker.errors import CheckpointError, InputError
from trek_tracker.init.sam import SamBoxPredictor, load_sam_state, read_sam_state

HQSAM_MODELS = ("vit_b", "vit_l", "vit_h")
# (embed dim, depth, heads, global attention blocks) of SAM's ViTs (the official build_sam_vit_*).
_VIT = {
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
}
_EMBED_DIM_TO_MODEL = {v[0]: k for k, v in _VIT.items()}
_PACKAGE = "segment_anything_hq"


def hqsam_modules() -> types.SimpleNamespace:
    """The HQ-SAM modeling classes (``Sam``, ``ImageEncoderViT``, ``PromptEncoder``, ``MaskDecoderHQ``,
    ``TwoWayTransformer``, ``LayerNorm2d``), imported file by file from the installed package."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("segment-anything-hq is not installed (pip install segment-anything-hq)")
    root = Path(list(spec.submodule_search_locations)[0])
    for name, path in ((f"_trek_{_PACKAGE}", root), (f"_trek_{_PACKAGE}.modeling", root / "modeling")):
        if name not in sys.modules:  # bare packages: their __init__ files are not run
            package = types.ModuleType(name)
            package.__path__ = [str(path)]
            sys.modules[name] = package
    base = f"_trek_{_PACKAGE}.modeling"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mods = {m: importlib.import_module(f"{base}.{m}") for m in
                ("sam", "image_encoder", "prompt_encoder", "mask_decoder_hq", "transformer", "common")}
    return types.SimpleNamespace(
        Sam=mods["sam"].Sam, ImageEncoderViT=mods["image_encoder"].ImageEncoderViT,
        PromptEncoder=mods["prompt_encoder"].PromptEncoder, MaskDecoderHQ=mods["mask_decoder_hq"].MaskDecoderHQ,
        TwoWayTransformer=mods["transformer"].TwoWayTransformer, LayerNorm2d=mods["common"].LayerNorm2d,
    )


def build_hqsam(model: str) -> torch.nn.Module:
    """An HQ-SAM of size ``model`` (``vit_b``/``vit_l``/``vit_h``) with untrained weights, built as the
    package's ``build_sam_vit_*`` builds it (1024 input, 16 px patches, 256-d prompts)."""
    if model not in _VIT:
        raise InputError(f"unknown HQ-SAM model {model!r}; choose one of {', '.join(HQSAM_MODELS)}")
    dim, depth, heads, global_attn = _VIT[model]
    m = hqsam_modules()
    encoder = m.ImageEncoderViT(depth=depth, embed_dim=dim, img_size=1024, mlp_ratio=4,
                                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=heads, patch_size=16,
                                qkv_bias=True, use_rel_pos=True, global_attn_indexes=global_attn, window_size=14,
                                out_chans=256)
    prompt = m.PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024),
                             mask_in_chans=16)
    decoder = m.MaskDecoderHQ(num_multimask_outputs=3,
                              transformer=m.TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
                              transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256, vit_dim=dim)
    return m.Sam(image_encoder=encoder, prompt_encoder=prompt, mask_decoder=decoder,
                 pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375]).eval()


def hqsam_model_from_state(state: dict[str, torch.Tensor]) -> str:
    """``vit_b`` / ``vit_l`` / ``vit_h`` of an HQ-SAM state dict; a plain SAM file is refused."""
    pos = state.get("image_encoder.pos_embed")
    if pos is None:
        raise CheckpointError("not a SAM checkpoint: image_encoder.pos_embed is missing")
    if "mask_decoder.hf_token.weight" not in state:
        raise CheckpointError("a plain SAM checkpoint, not HQ-SAM (no mask_decoder.hf_token): give it as the SAM "
                              "checkpoint instead")
    model = _EMBED_DIM_TO_MODEL.get(int(pos.shape[-1]))
    if model is None:
        raise CheckpointError(f"unknown HQ-SAM encoder width {pos.shape[-1]} (expected 768, 1024 or 1280)")
    return model


def load_hqsam(checkpoint: str | Path, model: str | None = None, device: str = "cpu") -> torch.nn.Module:
    """Build HQ-SAM of size ``model`` (inferred when None) and load ``checkpoint`` strictly, without
    executing pickled code."""
    state = read_sam_state(checkpoint, "HQ-SAM")
    try:
        inferred = hqsam_model_from_state(state)
    except CheckpointError as err:
        raise CheckpointError(f"{checkpoint}: {err}") from None
    if model is not None and model != inferred:
        raise CheckpointError(f"{checkpoint} holds an HQ-SAM {inferred}, not {model}")
    return load_sam_state(build_hqsam(inferred), state, checkpoint, f"HQ-SAM {inferred}", device)


@dataclass
class HQSamOutput:
    """Every token of one HQ-SAM decoder call, at frame resolution (logits; a pixel is in a mask at > 0).

    ``sam_logits`` (4, H, W): SAM's tokens (0 single-mask, 1..3 multimask); ``hq_logits`` (H, W): the HQ
    token; ``iou_predictions`` (4,): SAM's predicted IoUs (the HQ token has none).
    """

    sam_logits: np.ndarray
    hq_logits: np.ndarray
    iou_predictions: np.ndarray

    def best_multimask(self) -> int:
        return 1 + int(np.argmax(self.iou_predictions[1:]))

    def combined(self, multimask: bool = True, hq_token_only: bool = False) -> tuple[np.ndarray, float]:
        """The official predictor's mask and score: SAM's chosen token + the HQ token (or the HQ token alone),
        with the chosen token's predicted IoU."""
        k = self.best_multimask() if multimask else 0
        logits = self.hq_logits if hq_token_only else self.sam_logits[k] + self.hq_logits
        return logits, float(self.iou_predictions[k])


class HQSamBoxPredictor(SamBoxPredictor):
    """Box prompts on one image; ``set_image`` runs the ViT once and keeps its early features for the HQ
    token."""

    def __init__(self, model: torch.nn.Module, device: str | torch.device | None = None) -> None:
        super().__init__(model, device)
        self.interm: torch.Tensor | None = None

    @torch.no_grad()
    def set_image(self, image: np.ndarray) -> None:
        self.interm = None
        encoder = self.model.image_encoder
        captured: dict[str, Any] = {}

        def split(module, args, output):  # HQ-SAM's encoder returns (embedding, early features)
            captured["interm"] = output[1]
            return output[0]

        handle = encoder.register_forward_hook(split)
        try:
            super().set_image(image)
        finally:
            handle.remove()
        self.interm = captured["interm"][0]

    @torch.no_grad()
    def predict_box_hq(self, box_xyxy) -> HQSamOutput:
        """Decode SAM's four tokens and the HQ token for a box ``[x0, y0, x1, y1]`` in frame pixels."""
        if self.embedding is None or self.interm is None or self.original_size is None:
            raise RuntimeError("HQSamBoxPredictor.set_image must be called first")
        (h, w), (newh, neww) = self.original_size, self.input_size
        box = self._prompt_box(box_xyxy)
        decoder = self.model.mask_decoder
        sparse, dense = self.model.prompt_encoder(points=None, boxes=box, masks=None)
        hq_features = decoder.embedding_encoder(self.embedding) + decoder.compress_vit_feat(
            self.interm.permute(0, 3, 1, 2))
        low_res, iou = decoder.predict_masks(image_embeddings=self.embedding,
                                             image_pe=self.model.prompt_encoder.get_dense_pe(),
                                             sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                             hq_features=hq_features)
        full = self.model.postprocess_masks(low_res, (newh, neww), (h, w))[0].float().cpu().numpy()
        return HQSamOutput(sam_logits=full[:4], hq_logits=full[4], iou_predictions=iou[0].float().cpu().numpy())

    def predict_box(self, box_xyxy, mask_input: np.ndarray | None = None):
        raise NotImplementedError("HQ-SAM: use predict_box_hq")


