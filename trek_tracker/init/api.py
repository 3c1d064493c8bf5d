"""Box -> first-frame mask: the one entry point the pipeline calls.

``BoxToMask(InitConfig(...), device)(image, box)`` returns the chosen mask, the init actually used, a
message for the user when a checkpoint was missing or a fallback fired, and JSON-ready details (winner,
every candidate's scores, parameters) for ``run.json``. It keeps the loaded networks for repeated calls
(benchmarks, evaluation runs); :meth:`BoxToMask.load` opens them up front, so that a bad checkpoint is
reported before a run writes anything.

Methods (docs/init.md#methods): ``fused`` (SAM and/or HQ-SAM + Alpha-Refine, docs/init.md#fusion-rule),
``sam``, ``hqsam``, ``ar``, ``grabcut`` (no weights), ``box`` (the filled box), and ``auto``: fused when a SAM
(or HQ-SAM) and an AR checkpoint are given, else whichever one is given, else grabcut, always with a message
naming what is missing. HQ-SAM's candidates are scored like SAM's (docs/init.md#hq-sam).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from trek_tracker.errors import CheckpointError, InputError, memory_errors
from trek_tracker.geometry import Box, box_to_mask
from trek_tracker.init.fusion import Candidate, FusionConfig, FusionResult, combined_candidates, fuse

METHODS = ("auto", "fused", "sam", "hqsam", "ar", "grabcut", "box")
# "anysam": a SAM or an HQ-SAM checkpoint (fused takes the candidates of whichever are given).
_NEEDS = {"fused": ("anysam", "ar"), "sam": ("sam",), "hqsam": ("hqsam",), "ar": ("ar",), "grabcut": (),
          "box": ()}
_OPTION = {"sam": "--sam-checkpoint", "hqsam": "--hqsam-checkpoint", "anysam": "--sam-checkpoint",
           "ar": "--ar-checkpoint"}
# What needs less memory than each method (an out-of-memory error says it; the tracking hints do not apply).
_SAM_HINT = "--init ar or --init grabcut (no SAM), or a smaller SAM or HQ-SAM (e.g. sam_vit_b)"
_MEMORY_HINT = {"fused": _SAM_HINT, "sam": _SAM_HINT, "hqsam": _SAM_HINT, "ar": "--init grabcut (no weights)",
                "grabcut": "--init box", "box": "--init box"}


@dataclass
class InitConfig:
    """How to turn the first box into a mask."""

    method: str = "auto"  # auto | fused | sam | ar | grabcut | box
    sam_checkpoint: str | None = None  # path or registry name
    sam_model: str | None = None  # vit_b | vit_l | vit_h; inferred from the checkpoint when None
    ar_checkpoint: str | None = None  # path or registry name
    ar_model: str | None = None  # seg384 | secm; inferred from the checkpoint when None
    hqsam_checkpoint: str | None = None  # HQ-SAM (path or registry name, e.g. sam_hq_vit_h)
    hqsam_model: str | None = None  # vit_b | vit_l | vit_h; inferred from the checkpoint when None
    sam_second_pass: bool = False  # re-decode with the best multimask candidate's low-res logits
    ar_threshold: float = 0.5
    grabcut_iterations: int = 5
    fusion: FusionConfig = field(default_factory=FusionConfig)


@dataclass
class InitResult:
    mask: np.ndarray  # bool (H, W), the chosen first-frame mask
    method: str  # the init actually used (after fallbacks): fused | sam | ar | grabcut | box
    message: str | None  # for the user, e.g. "SAM checkpoint missing (--sam-checkpoint): used grabcut"
    details: dict[str, Any]  # JSON-serialisable: requested/used method, winner, candidate scores, parameters


def choose_method(config: InitConfig, have_sam: bool = False, have_ar: bool = False,
                  have_hqsam: bool = False) -> tuple[str, str | None]:
    """The method to run and, for ``auto``, a message naming any missing checkpoint.

    ``have_sam`` / ``have_ar`` / ``have_hqsam`` count networks handed over already loaded, as if their
    checkpoint was given.
    """
    if config.method not in METHODS:
        raise InputError(f"unknown init method {config.method!r}; choose one of {', '.join(METHODS)}")
    have = {
        "sam": have_sam or config.sam_checkpoint is not None,
        "hqsam": have_hqsam or config.hqsam_checkpoint is not None,
        "ar": have_ar or config.ar_checkpoint is not None,
    }
    have["anysam"] = have["sam"] or have["hqsam"]
    if config.method != "auto":
        missing = [k for k in _NEEDS[config.method] if not have[k]]
        if missing:
            opts = " and ".join(_OPTION[k] for k in missing)
            raise CheckpointError(
                f"--init {config.method} needs {opts}; give it, or use --init grabcut (needs no weights)"
            )
        return config.method, None
    if have["anysam"] and have["ar"]:
        return "fused", None
    if have["sam"]:
        return "sam", "Alpha-Refine checkpoint missing (--ar-checkpoint): used sam instead of fused"
    if have["hqsam"]:
        return "hqsam", "Alpha-Refine checkpoint missing (--ar-checkpoint): used hqsam instead of fused"
    if have["ar"]:
        return "ar", "SAM checkpoint missing (--sam-checkpoint): used ar instead of fused"
    return (
        "grabcut",
        "SAM and Alpha-Refine checkpoints missing (--sam-checkpoint, --ar-checkpoint): used grabcut",
    )


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"the first frame must be RGB uint8 (H, W, 3), got {image.dtype} {image.shape}")
    return image


class BoxToMask:
    """Loads the networks a method needs once; call it with ``(image, box)`` for an :class:`InitResult`.

    ``sam_model`` (a ``segment_anything`` ``Sam``), ``hqsam_model`` (an HQ-SAM ``Sam``) and ``ar_network``
    (``ARSegMask`` / ``SEcm``) may be passed already built, e.g. by tests or by a caller that shares them
    between runs.
    """

    def __init__(self, config: InitConfig | None = None, device: str = "cpu", *, sam_model=None,
                 ar_network=None, hqsam_model=None) -> None:
        self.config = config or InitConfig()
        self.device = str(device)
        self.method, self.message = choose_method(self.config, sam_model is not None, ar_network is not None,
                                                  hqsam_model is not None)
        self._sam = None
        if sam_model is not None:
            from trek_tracker.init.sam import SamBoxPredictor

            self._sam = SamBoxPredictor(sam_model, self.device)
        self._hqsam = None
        if hqsam_model is not None:
            from trek_tracker.init.hqsam import HQSamBoxPredictor

            self._hqsam = HQSamBoxPredictor(hqsam_model, self.device)
        self._ar_net = ar_network

    def load(self) -> BoxToMask:
        """Open the networks the chosen method needs now (a missing or wrong checkpoint fails here)."""
        with memory_errors(f"while loading the networks of --init {self.method}", _MEMORY_HINT[self.method]):
            if self.method == "sam" or (self.method == "fused" and self._have("sam")):
                self.sam_predictor()
            if self.method == "hqsam" or (self.method == "fused" and self._have("hqsam")):
                self.hqsam_predictor()
            if self.method in ("ar", "fused"):
                self.ar_network()
        return self

    # -- model loading (lazy) -------------------------------------------------------------------------------
    def sam_predictor(self):
        if self._sam is None:
            from trek_tracker.init.sam import SamBoxPredictor, load_sam
            from trek_tracker.weights import resolve_checkpoint

            path = resolve_checkpoint(self.config.sam_checkpoint, kind="sam")
            self._sam = SamBoxPredictor(load_sam(path, self.config.sam_model, self.device))
        return self._sam

    def hqsam_predictor(self):
        if self._hqsam is None:
            from trek_tracker.init.hqsam import HQSamBoxPredictor, load_hqsam
            from trek_tracker.weights import resolve_checkpoint

            path = resolve_checkpoint(self.config.hqsam_checkpoint, kind="hqsam")
            self._hqsam = HQSamBoxPredictor(load_hqsam(path, self.config.hqsam_model, self.device))
        return self._hqsam

    def _have(self, kind: str) -> bool:
        if kind == "sam":
            return self._sam is not None or self.config.sam_checkpoint is not None
        return self._hqsam is not None or self.config.hqsam_checkpoint is not None

    def ar_network(self):
        if self._ar_net is None:
            from trek_tracker.init.alpha_refine.checkpoint import load_alpha_refine
            from trek_tracker.weights import resolve_checkpoint

            path = resolve_checkpoint(self.config.ar_checkpoint, kind="alpha_refine")
            self._ar_net = load_alpha_refine(path, self.config.ar_model)
        return self._ar_net

    # -- candidates -----------------------------------------------------------------------------------------
    def _sam_candidates(self, image: np.ndarray, box: np.ndarray) -> tuple[list[Candidate], dict]:
        predictor = self.sam_predictor()
        predictor.set_image(image)
        xyxy = [box[0], box[1], box[0] + box[2], box[1] + box[3]]
        out = predictor.predict_box(xyxy)
        cands = [
            Candidate(f"sam_{k}", out.logits[k] > 0, float(np.clip(out.iou_predictions[k], 0, 1)), "sam")
            for k in range(out.logits.shape[0])
        ]
        best = out.best_multimask()
        info = {
            "sam_iou_predictions": [round(float(v), 6) for v in out.iou_predictions],
            "sam_stability": [round(float(v), 6) for v in out.stability],
            "sam_best_multimask": best,
        }
        best_logits, best_conf = out.logits[best], float(np.clip(out.iou_predictions[best], 0, 1))
        if self.config.sam_second_pass:
            second = predictor.predict_box(xyxy, mask_input=out.low_res_logits[best][None])
            k = second.best_multimask()
            conf = float(np.clip(second.iou_predictions[k], 0, 1))
            cands.append(Candidate("sam_refined", second.logits[k] > 0, conf, "sam"))
            info["sam_second_pass_iou"] = round(float(second.iou_predictions[k]), 6)
        return cands, {"best_logits": best_logits, "best_conf": best_conf, **info}

    def _hqsam_candidates(self, image: np.ndarray, box: np.ndarray) -> tuple[list[Candidate], dict]:
        """HQ-SAM's masks as the official predictor gives them: SAM's best multimask token + the HQ token
        (HQTrack's call), SAM's single-mask token + the HQ token, and the HQ token alone; each with the
        predicted IoU of the SAM token it uses (the HQ-only mask: the best multimask token's)."""
        predictor = self.hqsam_predictor()
        predictor.set_image(image)
        out = predictor.predict_box_hq([box[0], box[1], box[0] + box[2], box[1] + box[3]])
        cands = []
        for name, multimask, hq_only in (("hqsam", True, False), ("hqsam_single", False, False),
                                         ("hqsam_hq", True, True)):
            logits, conf = out.combined(multimask=multimask, hq_token_only=hq_only)
            cands.append(Candidate(name, logits > 0, float(np.clip(conf, 0, 1)), "hqsam"))
        best_logits, best_conf = out.combined(multimask=True)
        info = {"hqsam_iou_predictions": [round(float(v), 6) for v in out.iou_predictions],
                "hqsam_best_multimask": out.best_multimask()}
        return cands, {"best_logits": best_logits, "best_conf": float(np.clip(best_conf, 0, 1)), **info}

    def _ar_candidate(self, image: np.ndarray, box: np.ndarray) -> tuple[Candidate, np.ndarray]:
        from trek_tracker.init.alpha_refine.refiner import AlphaRefine

        ar = AlphaRefine(self.ar_network(), self.device)
        ar.initialize(image, box)
        prob = ar.get_mask(image, box)
        mask = prob > self.config.ar_threshold
        conf = float(prob[mask].mean()) if mask.any() else 0.0
        return Candidate(f"ar_{ar.model_name}", mask, conf, "ar"), prob

    # -- the call -------------------------------------------------------------------------------------------
    def __call__(self, image: np.ndarray, box: Box | np.ndarray) -> InitResult:
        """The first-frame mask of ``box`` on ``image`` (RGB uint8). Running out of memory is an
        :class:`~trek_tracker.errors.OutOfMemory` that names the init and what needs less."""
        with memory_errors(f"while making the first-frame mask (--init {self.method})", _MEMORY_HINT[self.method]):
            return self._mask(image, box)

    def _mask(self, image: np.ndarray, box: Box | np.ndarray) -> InitResult:
        image = _check_image(image)
        shape = image.shape[:2]
        box = np.asarray(Box.of(box).in_frame(shape), dtype=np.float64)
        method, message = self.method, self.message
        details: dict[str, Any] = {
            "requested": self.config.method,
            "box": [float(v) for v in box],
            "params": {
                "ar_threshold": self.config.ar_threshold,
                "sam_second_pass": self.config.sam_second_pass,
                **asdict(self.config.fusion),
            },
        }
        if method == "box":
            return self._result(box_to_mask(box, shape), "box", message, details, winner="box")
        candidates: list[Candidate] = []
        sam_info = None
        if method == "sam" or (method == "fused" and self._have("sam")):
            sam_cands, sam_info = self._sam_candidates(image, box)
            candidates += sam_cands
            details["sam"] = {k: v for k, v in sam_info.items() if k not in ("best_logits", "best_conf")}
            details["sam"]["model"] = self.config.sam_model or _sam_name(self._sam)
        if method == "hqsam" or (method == "fused" and self._have("hqsam")):
            hq_cands, hq_info = self._hqsam_candidates(image, box)
            candidates += hq_cands
            details["hqsam"] = {k: v for k, v in hq_info.items() if k not in ("best_logits", "best_conf")}
            details["hqsam"]["model"] = self.config.hqsam_model or _sam_name(self._hqsam)
            sam_info = sam_info or hq_info  # the combined masks use SAM's best mask, else HQ-SAM's
        if method in ("ar", "fused"):
            ar_cand, ar_prob = self._ar_candidate(image, box)
            candidates.append(ar_cand)
            details["ar"] = {"model": ar_cand.name[3:], "confidence": round(ar_cand.confidence, 6)}
        if method == "fused":
            candidates += combined_candidates(
                sam_info["best_logits"],
                sam_info["best_conf"],
                ar_prob,
                ar_cand.confidence,
                self.config.ar_threshold,
            )
        if method == "grabcut":
            from trek_tracker.init.grabcut import grabcut_mask

            gc = grabcut_mask(image, box, self.config.grabcut_iterations)
            candidates.append(Candidate("grabcut", gc, 1.0, "grabcut"))
        fused = fuse(candidates, box, shape, self.config.fusion)
        used = _used_method(method, fused)
        if fused.fallback is not None:
            note = f"{method} init: {fused.fallback}"
            message = f"{message}; {note}" if message else note
        details.update(fused.to_dict())
        return self._result(fused.mask, used, message, details, winner=fused.winner)

    @staticmethod
    def _result(mask: np.ndarray, used: str, message: str | None, details: dict, winner: str) -> InitResult:
        details["method"] = used
        details.setdefault("winner", winner)
        details["message"] = message
        details["mask_area"] = int(mask.sum())
        return InitResult(mask=mask.astype(bool), method=used, message=message, details=details)


def _sam_name(predictor) -> str | None:
    if predictor is None:
        return None
    from trek_tracker.init.sam import _EMBED_DIM_TO_MODEL

    return _EMBED_DIM_TO_MODEL.get(int(predictor.model.image_encoder.pos_embed.shape[-1]), "custom")


def _used_method(method: str, fused: FusionResult) -> str:
    """The init actually used: the requested one, or the fallback's source when a fallback fired."""
    if fused.fallback is None:
        return method
    return fused.source if fused.source in ("ar", "box") else method
